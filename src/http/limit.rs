//! Per-host request budget: a rate (requests per second) and a cap on
//! requests in flight, shared by every source that talks to the same
//! upstream host (scheme, host and port).
//!
//! A thousand sources of a hundred tenants often point at the same two or
//! three upstreams; their schedules and the global `max_concurrent_syncs`
//! say nothing about how hard one upstream is hit. So every attempt (first
//! tries and retries alike) takes a [`HostPermit`] first:
//!
//! 1. a slot of the host's semaphore (FIFO), held until the response body is
//!    read, caps requests in flight;
//! 2. then its turn in the host's schedule, in FIFO order: "now", or
//!    "previous send + 1/rate" if that is later. Consecutive sends to a host
//!    are at least `1/rate` apart, measured from when the previous one was
//!    actually let through, so any window of one second holds at most `rate`
//!    of them (rounded up), with no burst above it, even when a waiter wakes
//!    up late on a busy machine (up to the timer's 1 ms resolution, which
//!    is forgiven so as not to lower the rate). A turn due in less than a
//!    third of the spacing (and less than that resolution) is not slept
//!    for: the timer would round the wait up to a whole millisecond (a
//!    request due in 10 µs at 10,000/s would wait ~1 ms), so the request goes
//!    at once and the schedule keeps its exact time. Early and late sends
//!    together stay under one spacing, so any window still holds at most
//!    one request more than the rate.
//!
//! The semaphore is taken before the send time so that requests released
//! together by a finished one do not leave together: each still gets its own
//! slot of the schedule. Time is tokio's, so the behaviour is testable with
//! a paused clock. A wait is abandoned as soon as the cancellation token
//! fires, and the next waiter takes the turn.
//!
//! Replicas share each host's budget: a daemon that sees N live daemons on
//! its database ([`BudgetShare`], set from the heartbeat) sends at most
//! rate/N requests a second and holds at most concurrency/N (at least one)
//! in flight, so that the cluster as a whole keeps to the configured
//! budget. The share follows the live count: a replica that dies leaves its
//! part to the others at their next heartbeat.
//!
//! Not the `governor` crate: its GCRA is the same idea, but its
//! clocks are not tokio's, so the paused-clock tests below would not work,
//! and a keyed limiter plus a semaphore per key would still be needed beside it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::HttpConfig;

/// Why no permit was given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    /// The cancellation token fired while waiting; nothing was sent.
    #[error("cancelled while waiting for the host's request budget")]
    Cancelled,
    /// The URL has no host to key a budget on (e.g. `data:`).
    #[error("URL without a host")]
    NoHost,
}

/// The right to send one request to a host now; dropping it frees the
/// host's in-flight slot, so keep it until the response is read.
#[derive(Debug)]
pub struct HostPermit {
    slot: Option<OwnedSemaphorePermit>,
    host: Arc<HostState>,
}

impl Drop for HostPermit {
    fn drop(&mut self) {
        // The host's share shrank while this request flew: its slot goes
        // instead of coming back.
        if let Some(slot) = self.slot.take()
            && self.host.owe_one()
        {
            slot.forget();
        }
    }
}

/// Among how many daemons each host's budget is divided: the live daemons
/// on the database (the heartbeat's count), 1 for a daemon alone. Cheap to
/// clone; clones share the value.
#[derive(Clone, Debug)]
pub struct BudgetShare(Arc<AtomicUsize>);

impl Default for BudgetShare {
    fn default() -> Self {
        Self(Arc::new(AtomicUsize::new(1)))
    }
}

impl BudgetShare {
    /// `daemons` live daemons share the budgets now (0 counts as 1).
    pub fn set(&self, daemons: usize) {
        self.0.store(daemons.max(1), Ordering::Relaxed);
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed).max(1)
    }
}

/// How late tokio's timer may wake a sleeper (its resolution).
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// The limits of one host.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Limits {
    /// Minimum time between two sends.
    spacing: Duration,
    concurrency: usize,
}

#[derive(Debug)]
struct HostState {
    slots: Arc<Semaphore>,
    /// The configured in-flight cap, before the share.
    concurrency: usize,
    /// The slots this daemon's share allows now, and how many slots in use
    /// must go when they come back (the share shrank under them).
    sized: Mutex<(usize, usize)>,
    spacing: Duration,
    /// When the last request was let through. Locked (FIFO) for the whole
    /// wait of the next one, so each waiter measures its spacing from the
    /// *actual* previous send: a waiter that wakes late cannot make the
    /// following ones go closer together to catch up.
    last_send: tokio::sync::Mutex<Option<Instant>>,
}

impl HostState {
    fn new(limits: Limits) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.concurrency)),
            concurrency: limits.concurrency,
            sized: Mutex::new((limits.concurrency, 0)),
            spacing: limits.spacing,
            last_send: tokio::sync::Mutex::new(None),
        }
    }

    /// Resizes the in-flight cap to this daemon's share of it: adds slots,
    /// or takes free ones away and owes the rest (see [`HostState::owe_one`]).
    fn resize(&self, share: usize) {
        let target = (self.concurrency / share).max(1);
        let mut sized = self.sized.lock().unwrap_or_else(|e| e.into_inner());
        let (size, owed) = &mut *sized;
        if target > *size {
            // Slots still owed are simply kept instead of added.
            let grow = target - *size;
            let kept = grow.min(*owed);
            *owed -= kept;
            self.slots.add_permits(grow - kept);
        } else if target < *size {
            *owed += *size - target;
        }
        *size = target;
        let taken = self.slots.forget_permits(*owed);
        *owed -= taken;
    }

    /// Whether a slot coming back must go (one is owed).
    fn owe_one(&self) -> bool {
        let mut sized = self.sized.lock().unwrap_or_else(|e| e.into_inner());
        if sized.1 > 0 {
            sized.1 -= 1;
            true
        } else {
            false
        }
    }

    /// Waits for this host's next turn in the rate schedule (its spacing
    /// times `share`) and takes it.
    async fn turn(&self, cancel: &CancellationToken, share: usize) -> Result<(), LimitError> {
        let spacing = self
            .spacing
            .saturating_mul(u32::try_from(share).unwrap_or(u32::MAX));
        let mut last = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(LimitError::Cancelled),
            l = self.last_send.lock() => l,
        };
        let Some(at) = last.map(|l| l + spacing) else {
            *last = Some(Instant::now());
            return Ok(());
        };
        let now = Instant::now();
        if at <= now {
            // Idle long enough: no credit is banked, the schedule restarts now.
            *last = Some(now);
            return Ok(());
        }
        if at - now <= TIMER_SLACK.min(spacing / 3) {
            // Too short a wait for the timer: go now, keep the schedule.
            *last = Some(at);
            return Ok(());
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(LimitError::Cancelled),
            _ = tokio::time::sleep_until(at) => {}
        }
        // The timer wakes up to a millisecond late: counting that rounding
        // against the host would lower the rate (by 1/6 at 200/s). A later
        // wake-up (a busy machine) restarts the schedule from now minus the
        // same slack, so actual sends stay within the slack of a sequence
        // spaced exactly `spacing` apart: at most one more in any window.
        let slack = TIMER_SLACK.min(spacing / 2);
        let now = Instant::now();
        *last = Some(at.max(now.checked_sub(slack).unwrap_or(now)));
        Ok(())
    }
}

/// The budgets of every host seen so far, created on first use.
#[derive(Debug)]
pub struct HostLimiter {
    default: Limits,
    overrides: HashMap<String, Limits>,
    hosts: Mutex<HashMap<String, Arc<HostState>>>,
    share: BudgetShare,
}

impl HostLimiter {
    /// Limits from `[http]`: the per-host defaults and `[http.hosts]`
    /// exceptions, for a daemon alone.
    #[cfg(test)]
    pub fn new(cfg: &HttpConfig) -> Self {
        Self::shared(cfg, BudgetShare::default())
    }

    /// Limits from `[http]`, divided among the daemons `share` counts.
    pub fn shared(cfg: &HttpConfig, share: BudgetShare) -> Self {
        let default = Limits {
            spacing: spacing(cfg.per_host_requests_per_second),
            concurrency: cfg.per_host_concurrency.max(1),
        };
        let overrides = cfg
            .hosts
            .iter()
            .map(|(host, o)| {
                let limits = Limits {
                    spacing: o.requests_per_second.map_or(default.spacing, spacing),
                    concurrency: o.concurrency.map_or(default.concurrency, |c| c.max(1)),
                };
                (host.clone(), limits)
            })
            .collect();
        Self {
            default,
            overrides,
            hosts: Mutex::new(HashMap::new()),
            share,
        }
    }

    /// Waits until `url`'s host may receive one more request (a free
    /// in-flight slot, then its turn in the rate schedule), or `cancel` fires.
    pub async fn acquire(
        &self,
        url: &url::Url,
        cancel: &CancellationToken,
    ) -> Result<HostPermit, LimitError> {
        let host = self.host(url)?;
        let share = self.share.get();
        host.resize(share);
        let slot = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(LimitError::Cancelled),
            s = host.slots.clone().acquire_owned() => s.map_err(|_| LimitError::Cancelled)?,
        };
        let permit = HostPermit {
            slot: Some(slot),
            host: host.clone(),
        };
        host.turn(cancel, share).await?;
        Ok(permit)
    }

    /// How many requests `url`'s host may have in flight: the scheduler
    /// lets no more syncs of that host run at once, so that a slow host
    /// holds at most that many of the global sync slots.
    pub fn concurrency(&self, url: &url::Url) -> usize {
        self.limits(url).concurrency
    }

    /// The budget of `url`'s origin, created with its limits on first use.
    fn host(&self, url: &url::Url) -> Result<Arc<HostState>, LimitError> {
        let origin = origin(url).ok_or(LimitError::NoHost)?;
        let mut hosts = self
            .hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(h) = hosts.get(&origin) {
            return Ok(h.clone());
        }
        let state = Arc::new(HostState::new(self.limits(url)));
        hosts.insert(origin, state.clone());
        Ok(state)
    }

    /// The limits configured for `url`'s host: `host:port`, then `host`,
    /// then the defaults.
    fn limits(&self, url: &url::Url) -> Limits {
        let Some(name) = url.host_str() else {
            return self.default;
        };
        url.port_or_known_default()
            .and_then(|p| self.overrides.get(&format!("{name}:{p}")))
            .or_else(|| self.overrides.get(name))
            .copied()
            .unwrap_or(self.default)
    }
}

/// `scheme://host:port` of `url` (port made explicit): the unit a budget
/// applies to. `None` for URLs without a host.
pub fn origin(url: &url::Url) -> Option<String> {
    let name = url.host_str()?;
    Some(match url.port_or_known_default() {
        Some(p) => format!("{}://{name}:{p}", url.scheme()),
        None => format!("{}://{name}", url.scheme()),
    })
}

/// Time between two sends at `rate` requests per second (validated > 0).
fn spacing(rate: f64) -> Duration {
    if rate.is_finite() && rate > 0.0 {
        Duration::from_secs_f64(1.0 / rate)
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::HostLimits;

    fn cfg(
        rate: f64,
        concurrency: usize,
        hosts: &[(&str, Option<f64>, Option<usize>)],
    ) -> HttpConfig {
        HttpConfig {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_retries: 0,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            per_host_requests_per_second: rate,
            per_host_concurrency: concurrency,
            hosts: hosts
                .iter()
                .map(|(h, r, c)| {
                    (
                        h.to_string(),
                        HostLimits {
                            requests_per_second: *r,
                            concurrency: *c,
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    /// Sends `n` requests to `target` at once (each holding its permit for
    /// `hold`) and returns the instants they were let through, relative to the start.
    async fn burst(
        limiter: Arc<HostLimiter>,
        target: &str,
        n: usize,
        hold: Duration,
    ) -> Vec<Duration> {
        let start = Instant::now();
        let cancel = CancellationToken::new();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let limiter = limiter.clone();
                let cancel = cancel.clone();
                let u = url(target);
                tokio::spawn(async move {
                    let permit = limiter.acquire(&u, &cancel).await.unwrap();
                    let at = start.elapsed();
                    tokio::time::sleep(hold).await;
                    drop(permit);
                    at
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out.sort();
        out
    }

    /// The most sends seen in any window of `len` (half-open, ending at a send).
    fn max_in_window(times: &[Duration], len: Duration) -> usize {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| times[..=i].iter().filter(|s| **s + len > *t).count())
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_to_one_host_is_spread_at_the_configured_rate() {
        let limiter = Arc::new(HostLimiter::new(&cfg(10.0, 100, &[])));
        let times = burst(limiter, "https://api.example.org/x", 35, Duration::ZERO).await;
        // The first goes at once, then one every 100 ms: 35 take 3.4 s.
        assert_eq!(times[0], Duration::ZERO);
        assert_eq!(*times.last().unwrap(), Duration::from_millis(3400));
        for pair in times.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(100), "{times:?}");
        }
        assert_eq!(max_in_window(&times, Duration::from_secs(1)), 10);
    }

    /// Two live daemons: each sends at half the rate and holds half the
    /// in-flight slots, so the two together keep to the configured budget.
    #[tokio::test(start_paused = true)]
    async fn a_daemon_sharing_a_host_with_another_keeps_to_half_its_budget() {
        let share = BudgetShare::default();
        share.set(2);
        let limiter = Arc::new(HostLimiter::shared(&cfg(10.0, 100, &[]), share));
        let times = burst(limiter, "https://api.example.org/x", 11, Duration::ZERO).await;
        assert_eq!(*times.last().unwrap(), Duration::from_secs(2), "{times:?}");
        assert_eq!(max_in_window(&times, Duration::from_secs(1)), 5);

        let share = BudgetShare::default();
        share.set(2);
        let limiter = Arc::new(HostLimiter::shared(&cfg(1_000_000.0, 4, &[]), share));
        // 6 requests holding their slot 1 s each, 2 at a time: 3 waves.
        let times = burst(
            limiter,
            "https://api.example.org/x",
            6,
            Duration::from_secs(1),
        )
        .await;
        let waves: Vec<u64> = times.iter().map(|t| t.as_secs()).collect();
        assert_eq!(waves, vec![0, 0, 1, 1, 2, 2], "{times:?}");
    }

    /// The share grows while requests are in flight (a replica joined):
    /// the slots they hold are taken away as they come back, not stacked.
    #[tokio::test(start_paused = true)]
    async fn slots_in_flight_when_the_share_grows_are_given_up_as_they_come_back() {
        let share = BudgetShare::default();
        let limiter = Arc::new(HostLimiter::shared(
            &cfg(1_000_000.0, 4, &[]),
            share.clone(),
        ));
        let cancel = CancellationToken::new();
        let u = url("http://127.0.0.1:9/a");
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(limiter.acquire(&u, &cancel).await.unwrap());
        }
        share.set(4);
        drop(held);
        // One slot is this daemon's share now.
        let first = limiter.acquire(&u, &cancel).await.unwrap();
        let second = tokio::time::timeout(Duration::from_secs(5), limiter.acquire(&u, &cancel));
        assert!(second.await.is_err(), "a second slot was given");
        drop(first);
        // Alone again: all four.
        share.set(1);
        let mut again = Vec::new();
        for _ in 0..4 {
            let p = tokio::time::timeout(Duration::from_secs(5), limiter.acquire(&u, &cancel));
            again.push(p.await.expect("a slot").unwrap());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_due_in_less_than_the_timer_resolution_is_not_slept_for() {
        // 10,000/s: one request every 100 µs, a tenth of a timer tick.
        let limiter = Arc::new(HostLimiter::new(&cfg(10_000.0, 4, &[])));
        let cancel = CancellationToken::new();
        let u = url("http://127.0.0.1:9/a");
        let start = Instant::now();
        drop(limiter.acquire(&u, &cancel).await.unwrap());
        // Due 20 µs from now: goes at once instead of at the next tick.
        tokio::time::advance(Duration::from_micros(80)).await;
        drop(limiter.acquire(&u, &cancel).await.unwrap());
        assert_eq!(start.elapsed(), Duration::from_micros(80));
        // The schedule kept its exact time (200 µs): due in 70 µs, too long
        // to go early, so this one sleeps (to the timer's tick).
        tokio::time::advance(Duration::from_micros(50)).await;
        drop(limiter.acquire(&u, &cancel).await.unwrap());
        assert!(
            start.elapsed() >= Duration::from_micros(200),
            "{:?}",
            start.elapsed()
        );
        // Sequential requests a little under the spacing apart keep to the
        // rate: never more than one above it in any window.
        let mut times = Vec::new();
        let t0 = Instant::now();
        for _ in 0..2_000 {
            drop(limiter.acquire(&u, &cancel).await.unwrap());
            times.push(t0.elapsed());
            tokio::time::advance(Duration::from_micros(90)).await;
        }
        assert!(max_in_window(&times, Duration::from_millis(10)) <= 101);
        let mean = *times.last().unwrap() / (times.len() as u32 - 1);
        assert!(mean >= Duration::from_micros(99), "{mean:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_host_sends_at_once_and_the_schedule_does_not_bank_credit() {
        let limiter = Arc::new(HostLimiter::new(&cfg(2.0, 4, &[])));
        let cancel = CancellationToken::new();
        let u = url("http://127.0.0.1:9/a");
        let start = Instant::now();
        drop(limiter.acquire(&u, &cancel).await.unwrap());
        assert_eq!(start.elapsed(), Duration::ZERO);
        // A long idle period earns no burst: the next two are still 500 ms apart.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let t0 = Instant::now();
        drop(limiter.acquire(&u, &cancel).await.unwrap());
        drop(limiter.acquire(&u, &cancel).await.unwrap());
        assert_eq!(t0.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn two_hosts_do_not_share_a_budget() {
        let limiter = Arc::new(HostLimiter::new(&cfg(10.0, 100, &[])));
        let a = tokio::spawn(burst(
            limiter.clone(),
            "https://a.example.org/",
            20,
            Duration::ZERO,
        ));
        let b = tokio::spawn(burst(
            limiter.clone(),
            "https://b.example.org/",
            20,
            Duration::ZERO,
        ));
        // Another port of the same name is another host as well.
        let c = tokio::spawn(burst(
            limiter,
            "https://a.example.org:8443/",
            20,
            Duration::ZERO,
        ));
        for times in [a.await.unwrap(), b.await.unwrap(), c.await.unwrap()] {
            // Alone at 10/s: 20 requests in 1.9 s, not 5.9 s for 60 shared.
            assert_eq!(*times.last().unwrap(), Duration::from_millis(1900));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_requests_never_exceed_the_cap() {
        let limiter = Arc::new(HostLimiter::new(&cfg(1000.0, 3, &[])));
        let cancel = CancellationToken::new();
        let now = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..30u64)
            .map(|i| {
                let (limiter, cancel, now, max) =
                    (limiter.clone(), cancel.clone(), now.clone(), max.clone());
                tokio::spawn(async move {
                    let u = url("https://api.example.org/");
                    let _permit = limiter.acquire(&u, &cancel).await.unwrap();
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50 + (i % 7) * 13)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn host_overrides_apply_by_name_or_by_name_and_port() {
        let limiter = Arc::new(HostLimiter::new(&cfg(
            100.0,
            8,
            &[
                ("slow.example.org", Some(2.0), Some(1)),
                ("127.0.0.1:8080", Some(4.0), None),
            ],
        )));
        let slow = burst(
            limiter.clone(),
            "https://slow.example.org/v1",
            5,
            Duration::ZERO,
        )
        .await;
        assert_eq!(*slow.last().unwrap(), Duration::from_secs(2));
        let local = burst(limiter.clone(), "http://127.0.0.1:8080/", 5, Duration::ZERO).await;
        assert_eq!(*local.last().unwrap(), Duration::from_secs(1));
        // Another port of 127.0.0.1 keeps the default.
        let other = burst(limiter.clone(), "http://127.0.0.1:8081/", 5, Duration::ZERO).await;
        assert_eq!(*other.last().unwrap(), Duration::from_millis(40));
        // Concurrency 1 on the slow host: holding each permit 1 s serialises them.
        let held = burst(
            limiter,
            "https://slow.example.org/v1",
            3,
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(
            held,
            [
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(2)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_request_gives_up_when_cancelled() {
        let limiter = Arc::new(HostLimiter::new(&cfg(1.0, 1, &[])));
        let cancel = CancellationToken::new();
        let u = url("https://api.example.org/");
        let held = limiter.acquire(&u, &cancel).await.unwrap();
        // Waiting for the in-flight slot.
        let waiting = {
            let (limiter, cancel, u) = (limiter.clone(), cancel.clone(), u.clone());
            tokio::spawn(async move { limiter.acquire(&u, &cancel).await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        cancel.cancel();
        assert_eq!(waiting.await.unwrap(), Err(LimitError::Cancelled));
        drop(held);
        // Waiting for its turn in the rate schedule.
        let cancel = CancellationToken::new();
        let waiting = {
            let (limiter, cancel, u) = (limiter.clone(), cancel.clone(), u.clone());
            tokio::spawn(async move { limiter.acquire(&u, &cancel).await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let start = Instant::now();
        cancel.cancel();
        assert_eq!(waiting.await.unwrap(), Err(LimitError::Cancelled));
        assert!(
            start.elapsed() < Duration::from_millis(1),
            "gave up at once"
        );
    }
}
