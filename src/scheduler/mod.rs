//! When sources run. Each source has one runner task that owns its runs, so
//! two runs of the same source can never overlap: ticks from
//! tokio-cron-scheduler (and push notifications) only *ask* the runner to
//! run, through a one-slot pending request, and a request that arrives
//! while a run is in progress is coalesced into at most one follow-up run.
//! A global semaphore caps how many sources sync at once.
//!
//! On a store whose daemons share a schedule (Postgres: replicas), there
//! are no local ticks: [`claims`] claims due sources from the shared
//! schedule and hands them to the runners as [`Trigger::Claimed`].

mod claims;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, CronSchedule, Schedule, SourceConfig};
use crate::engine::Engine;
use crate::http::{HttpClient, origin};
use crate::model::SourceKey;
use crate::reporter::Reporter;
use crate::sources::{self, Source};
use crate::store::{SharedSchedule, StoreError};
use claims::{ClaimCtx, InFlight};

/// Why the scheduler could not start.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("scheduler: {0}")]
    Cron(#[from] JobSchedulerError),
    #[error("{0}")]
    Source(String),
    #[error("shared schedule: {0}")]
    Store(#[from] StoreError),
}

/// Why a run was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// A schedule tick that was due at `due_us` (µs since the epoch): wait a
    /// random jitter first. The run records the due instant, so that its
    /// start lateness is measurable (`runs.scheduled_at`).
    Tick { due_us: i64 },
    /// Start as soon as possible (start-up, push notification).
    Now,
    /// A tick due at `due_us` that this daemon claimed in the schedule its
    /// replicas share ([`claims`]): like a tick, and once run the source
    /// moves to its next tick there.
    Claimed { due_us: i64 },
}

/// A source's pending run request: at most one, and a request made while
/// one is pending is coalesced into it. A run in progress plus one pending
/// is all a source ever owes. (A `tokio::sync::mpsc` channel of one slot
/// does the same with ~1 KB of buffers per source; this is ~100 bytes.)
#[derive(Default)]
struct Pending {
    slot: std::sync::Mutex<Option<Trigger>>,
    ready: Notify,
}

impl Pending {
    /// Asks for a run; false if one was already pending (coalesced). A
    /// claimed tick replaces another pending request (one run answers
    /// both, and it must move the shared schedule on), except another
    /// claimed tick.
    fn offer(&self, t: Trigger) -> bool {
        {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            match (&*slot, t) {
                (None, _) => {}
                (Some(Trigger::Claimed { .. }), _) => return false,
                (Some(_), Trigger::Claimed { .. }) => {
                    *slot = Some(t);
                    return true;
                }
                (Some(_), _) => return false,
            }
            *slot = Some(t);
        }
        self.ready.notify_one();
        true
    }

    /// Takes the pending request, if any, without waiting.
    fn take_now(&self) -> Option<Trigger> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Waits for the pending request and takes it.
    async fn take(&self) -> Trigger {
        loop {
            if let Some(t) = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return t;
            }
            // notify_one stores a permit when nobody waits: an offer made
            // between the check above and this wait is not missed.
            self.ready.notified().await;
        }
    }
}

struct Runner {
    trigger: Arc<Pending>,
    /// Stops this source alone (reload) or with all the others (shutdown).
    stop: CancellationToken,
    task: JoinHandle<()>,
    reporter: Option<JoinHandle<()>>,
    /// The local tick job (none when the schedule is shared).
    job: Option<uuid::Uuid>,
}

/// The schedule this daemon shares with its replicas, and how it feeds its
/// runners from it.
struct Shared {
    schedule: SharedSchedule,
    in_flight: Arc<InFlight>,
    /// The runners the claim loop hands claimed ticks to.
    runners: watch::Sender<Triggers>,
    /// The claim loop, awaited at shutdown before the claims are given
    /// back (a claim it was making must not outlive the give-back).
    claimer: Option<JoinHandle<()>>,
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<SourceKey>,
    pub removed: Vec<SourceKey>,
    pub restarted: Vec<SourceKey>,
    pub unchanged: usize,
}

/// Cheap, cloneable way to ask the runners for an immediate run.
#[derive(Clone, Default)]
pub struct Triggers(Arc<BTreeMap<SourceKey, Arc<Pending>>>);

impl Triggers {
    /// Asks for a run of `key` as soon as possible, coalesced with one that
    /// is pending or running. Returns false for an unknown source.
    pub fn now(&self, key: &SourceKey) -> bool {
        match self.0.get(key) {
            Some(pending) => {
                pending.offer(Trigger::Now);
                true
            }
            None => false,
        }
    }

    /// Hands `key`'s runner a tick claimed in the shared schedule: `None`
    /// for a source without a runner here, `Some(false)` if its runner
    /// already holds a claimed tick.
    fn claimed(&self, key: &SourceKey, due_us: i64) -> Option<bool> {
        self.0
            .get(key)
            .map(|pending| pending.offer(Trigger::Claimed { due_us }))
    }
}

/// Whether a scheduler's tasks are all still running (see
/// [`Scheduler::liveness`]). Cheap to clone and to poll.
#[derive(Clone, Debug)]
pub struct Liveness {
    /// Each task with the token that stops it (its source's own token, so a
    /// source removed by a reload does not count as dead).
    tasks: Vec<(tokio::task::AbortHandle, CancellationToken)>,
}

impl Liveness {
    /// True while every runner and reporter task runs, except those told to
    /// stop (tasks ending then is the plan, not a failure).
    pub fn healthy(&self) -> bool {
        self.tasks
            .iter()
            .all(|(t, stop)| stop.is_cancelled() || !t.is_finished())
    }
}

/// The running set of scheduled sources.
pub struct Scheduler {
    cron: JobScheduler,
    runners: BTreeMap<SourceKey, Runner>,
    engine: Engine,
    http: HttpClient,
    limit: Arc<Semaphore>,
    /// Sync slots per upstream host (see [`Slots`]).
    host_slots: HashMap<String, Arc<Semaphore>>,
    jitter: Duration,
    stop: CancellationToken,
    /// Sources tokio-cron-scheduler's channels were sized for (see
    /// [`channel_size`]); a reload beyond it restarts the scheduler.
    capacity: usize,
    /// Set when the store's daemons share one schedule (Postgres).
    shared: Option<Shared>,
}

/// Size of tokio-cron-scheduler's internal channels for `sources` jobs.
/// They are broadcast channels: a job activation sent while the channel
/// holds `size` unread ones is *dropped* (the crate logs `Lagged` and the
/// tick is lost). The crate's default, 200, lost 1,447 of 10,000 ticks due
/// in one second (BENCHMARKS.md, scheduling accuracy); every job can be due
/// in the same poll, so the channels hold two activations per source.
fn channel_size(sources: usize) -> usize {
    sources.saturating_mul(2).max(1024)
}

impl Scheduler {
    /// Schedules every configured source and triggers a first run of each.
    pub async fn start(
        config: &Config,
        engine: Engine,
        http: HttpClient,
        stop: CancellationToken,
    ) -> Result<Self, SchedulerError> {
        let capacity = config.sources().count();
        let cron = JobScheduler::new_with_channel_size(channel_size(capacity)).await?;
        let mut me = Self {
            cron,
            runners: BTreeMap::new(),
            engine,
            http,
            limit: Arc::new(Semaphore::new(config.scheduler.max_concurrent_syncs.max(1))),
            host_slots: HashMap::new(),
            jitter: config.scheduler.jitter,
            stop,
            capacity,
            shared: None,
        };
        tokio::spawn(
            me.engine
                .activity()
                .clone()
                .reclaim_when_idle(me.engine.store().clone(), me.stop.child_token()),
        );
        if let Some(schedule) = me.engine.store().shared_schedule() {
            schedule.register(&schedule_rows(config)).await?;
            me.shared = Some(Shared {
                schedule,
                in_flight: Arc::default(),
                runners: watch::Sender::new(Triggers::default()),
                claimer: None,
            });
        }
        for source_cfg in config.sources() {
            me.add(source_cfg).await?;
        }
        let triggers = me.triggers();
        if let Some(shared) = &mut me.shared {
            shared.runners.send_replace(triggers);
            shared.claimer = Some(tokio::spawn(claims::claim_loop(
                shared.schedule.clone(),
                shared.runners.subscribe(),
                shared.in_flight.clone(),
                me.limit.clone(),
                config.scheduler.lease_ttl,
                me.stop.child_token(),
            )));
        }
        me.cron.start().await?;
        tracing::info!(
            sources = me.runners.len(),
            shared = me.shared.is_some(),
            "scheduler started"
        );
        Ok(me)
    }

    /// Starts one source: its runner, its schedule, its reporter, and a
    /// first run at once.
    async fn add(&mut self, cfg: &SourceConfig) -> Result<(), SchedulerError> {
        let stop = self.stop.child_token();
        let reporter = Reporter::for_source(self.engine.store(), &self.http, cfg)
            .map(|r| tokio::spawn(r.run(stop.clone())));
        let source = sources::build(cfg, &self.http, &stop).map_err(SchedulerError::Source)?;
        let endpoint = &cfg.endpoint;
        let http = &self.http;
        let host = self
            .host_slots
            .entry(origin(endpoint).unwrap_or_else(|| endpoint.to_string()))
            .or_insert_with(|| Arc::new(Semaphore::new(http.host_concurrency(endpoint))))
            .clone();
        let pending = Arc::new(Pending::default());
        let claims = self.shared.as_ref().map(|shared| ClaimCtx {
            shared: shared.schedule.clone(),
            grid: Grid::of(&cfg.key(), &cfg.schedule),
            in_flight: shared.in_flight.clone(),
        });
        let task = tokio::spawn(run_loop(
            crate::engine::Job::of(cfg),
            Arc::from(source),
            self.engine.clone(),
            pending.clone(),
            Slots {
                host,
                all: self.limit.clone(),
            },
            self.jitter,
            claims,
            stop.clone(),
        ));
        // A shared schedule says when the source runs, its first run
        // included; otherwise local ticks, and a first run at once.
        let job = if self.shared.is_none() {
            let job = tick_job(&cfg.key(), &cfg.schedule, pending.clone())?;
            pending.offer(Trigger::Now);
            Some(self.cron.add(job).await?)
        } else {
            None
        };
        self.runners.insert(
            cfg.key(),
            Runner {
                trigger: pending,
                stop,
                task,
                reporter,
                job,
            },
        );
        Ok(())
    }

    /// Applies a new configuration: added sources start, removed ones stop
    /// after their current page, changed ones restart, unchanged ones keep
    /// running undisturbed. The caller restarts the whole scheduler instead
    /// when global settings changed (see [`Scheduler::can_reload`]).
    ///
    /// `old` is the configuration the runners were started from (the last
    /// one applied): a source is unchanged when its section is equal in
    /// both. The runners keep no copy of their configuration (~1 KB each).
    pub async fn reload(
        &mut self,
        old: &Config,
        config: &Config,
        deadline: Duration,
    ) -> Result<ReloadSummary, SchedulerError> {
        let wanted: BTreeMap<SourceKey, &SourceConfig> =
            config.sources().map(|s| (s.key(), s)).collect();
        let before: BTreeMap<SourceKey, &SourceConfig> =
            old.sources().map(|s| (s.key(), s)).collect();
        let mut summary = ReloadSummary::default();
        let mut stopping = Vec::new();
        let keys: Vec<SourceKey> = self.runners.keys().cloned().collect();
        for key in keys {
            let keep = wanted
                .get(&key)
                .is_some_and(|cfg| before.get(&key) == Some(cfg));
            if keep {
                summary.unchanged += 1;
                continue;
            }
            if let Some(r) = self.runners.remove(&key) {
                if let Some(job) = &r.job {
                    let _ = self.cron.remove(job).await;
                }
                r.stop.cancel();
                stopping.push(r.task);
                stopping.extend(r.reporter);
                if wanted.contains_key(&key) {
                    summary.restarted.push(key);
                } else {
                    summary.removed.push(key);
                }
            }
        }
        // The old runs of a changed source end before its new runner starts:
        // two runs of one source never overlap.
        wait_all(stopping, deadline).await;
        for (key, cfg) in wanted {
            if !self.runners.contains_key(&key) {
                if !summary.restarted.contains(&key) {
                    summary.added.push(key);
                }
                self.add(cfg).await?;
            }
        }
        if let Some(shared) = &self.shared {
            shared.schedule.register(&schedule_rows(config)).await?;
            shared.runners.send_replace(self.triggers());
        }
        Ok(summary)
    }

    /// Whether `config` can be applied with [`Scheduler::reload`]: the
    /// global scheduling and HTTP settings are unchanged, and the sources
    /// still fit the channels sized at start (see `channel_size`).
    pub fn can_reload(&self, old: &Config, new: &Config) -> bool {
        old.scheduler == new.scheduler
            && old.http == new.http
            && old.storage == new.storage
            && new.sources().count() <= self.capacity.max(channel_size(0) / 2)
    }

    /// Asks for an immediate run of `key`; coalesced if one is running.
    /// Returns false for an unknown source.
    pub fn trigger(&self, key: &SourceKey) -> bool {
        self.triggers().now(key)
    }

    /// The engine runs are made with: webhooks commit through it too.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A handle that can ask for runs from elsewhere (webhooks), valid
    /// until this scheduler shuts down or reloads.
    pub fn triggers(&self) -> Triggers {
        Triggers(Arc::new(
            self.runners
                .iter()
                .map(|(k, r)| (k.clone(), r.trigger.clone()))
                .collect(),
        ))
    }

    /// A handle the systemd watchdog polls: a runner task that ended while
    /// nobody asked it to (a panic) means a source silently stopped syncing,
    /// which deserves a restart rather than a daemon that only looks alive.
    pub fn liveness(&self) -> Liveness {
        Liveness {
            tasks: self
                .runners
                .values()
                .flat_map(|r| {
                    std::iter::once(&r.task)
                        .chain(r.reporter.as_ref())
                        .map(|t| (t.abort_handle(), r.stop.clone()))
                })
                .collect(),
        }
    }

    /// Stops ticking, lets running syncs finish their page, and waits for
    /// them up to `deadline`. Returns false if some did not finish in time.
    pub async fn shutdown(mut self, deadline: Duration) -> bool {
        self.stop.cancel();
        for job in self.runners.values().filter_map(|r| r.job.as_ref()) {
            let _ = self.cron.remove(job).await;
        }
        if let Err(e) = self.cron.shutdown().await {
            tracing::warn!(error = %e, "cron scheduler did not stop cleanly");
        }
        let mut tasks: Vec<_> = std::mem::take(&mut self.runners)
            .into_values()
            .flat_map(|r| std::iter::once(r.task).chain(r.reporter))
            .collect();
        tasks.extend(self.shared.as_mut().and_then(|s| s.claimer.take()));
        let done = wait_all(tasks, deadline).await;
        if !done {
            tracing::warn!(?deadline, "syncs still running at the shutdown deadline");
        }
        if let Some(shared) = &self.shared {
            // Ticks claimed and not run go to the other replicas now rather
            // than when the claims lapse.
            if let Err(e) = shared.schedule.release_all().await {
                tracing::warn!(error = %e, "could not give back this daemon's claimed ticks");
            }
        }
        done
    }
}

/// Each source with its schedule and a fingerprint of its section, as the
/// shared schedule keeps them: a source whose section changed is due at
/// once, as a restarted runner runs at once on a local schedule.
fn schedule_rows(config: &Config) -> Vec<(SourceKey, String)> {
    config
        .sources()
        .map(|s| {
            let section = fnv1a(format!("{s:?}").bytes());
            (s.key(), format!("{:?} #{section:016x}", s.schedule))
        })
        .collect()
}

/// Waits for `tasks` up to `deadline`; false if some were still running.
async fn wait_all(tasks: Vec<JoinHandle<()>>, deadline: Duration) -> bool {
    tokio::time::timeout(deadline, futures::future::join_all(tasks))
        .await
        .is_ok()
}

/// How far ahead of an interval tick's due instant tokio-cron-scheduler is
/// asked to fire it. The crate polls every 500 ms against due instants kept
/// to the whole second, so a job fires up to ~0.5 s after it was due; fired
/// a second early instead, the runner waits the rest on a tokio timer (ms
/// resolution) and starts on time (`run_loop`).
const LEAD_US: i64 = 1_000_000;

/// A cron or interval job that only sends a tick to the runner, with the
/// instant the tick is due.
fn tick_job(
    key: &SourceKey,
    schedule: &Schedule,
    pending: Arc<Pending>,
) -> Result<Job, JobSchedulerError> {
    let grid = Grid::of(key, schedule);
    // Where the crate fires an interval job's first tick: a lead ahead of
    // the first grid point at least half an interval after now (the
    // start-up run is now).
    let first_fire_s = grid
        .first_due_after_start(crate::time::now_us())
        .map(|due| u64::try_from((due - LEAD_US).div_euclid(1_000_000)).unwrap_or(0));
    let send = move |_id, _sched| {
        // Computed when the crate fires the job, not when the future runs.
        let now = crate::time::now_us();
        let due_us = grid.due_for_fire_at(now).unwrap_or(now);
        // A run already pending: this tick is coalesced into it (and its
        // earlier due instant: lateness is never understated).
        pending.offer(Trigger::Tick { due_us });
        Box::pin(async {}) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    };
    let mut job = match schedule {
        Schedule::Every(d) => Job::new_repeated_async(*d, send)?,
        Schedule::Cron(cron) => Job::new_async(cron.expr(), send)?,
    };
    if let Some(first) = first_fire_s {
        // A repeated job's next tick is its previous one plus the interval,
        // so placing the first one places the whole grid.
        let mut data = job.job_data()?;
        data.next_tick = first;
        job.set_job_data(data)?;
    }
    Ok(job)
}

/// A stable offset of `key`'s interval grid, in whole seconds below
/// `every_s`: interval sources are spread over their interval instead of
/// all coming due in the same second (DESIGN.md §5: "spread sources"), the
/// way Prometheus spreads scrape targets. Stable across restarts and
/// platforms (FNV-1a of `tenant/source`), so a source keeps its phase.
fn phase_s(key: &SourceKey, every_s: u64) -> u64 {
    let name = key
        .tenant
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(key.source.bytes());
    fnv1a(name) % every_s.max(1)
}

/// FNV-1a: a hash that is the same on every build and platform.
fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// When a schedule's ticks are due, to tell the instant a tick answers.
/// An interval source's ticks are due at `phase + k * interval` seconds
/// since the epoch; the crate fires them [`LEAD_US`] early. A cron job's
/// ticks are the expression's occurrences; tokio-cron-scheduler fires them
/// at its first poll (every 500 ms) at or after that instant.
enum Grid {
    Every { phase_us: i64, every_us: i64 },
    Cron(CronSchedule),
}

impl Grid {
    fn of(key: &SourceKey, schedule: &Schedule) -> Self {
        match schedule {
            Schedule::Every(d) => {
                let every_s = d.as_secs().max(1);
                Grid::Every {
                    phase_us: i64::try_from(phase_s(key, every_s)).unwrap_or(0) * 1_000_000,
                    every_us: i64::try_from(every_s)
                        .unwrap_or(i64::MAX / 1_000_000)
                        .saturating_mul(1_000_000),
                }
            }
            Schedule::Cron(cron) => Grid::Cron(cron.clone()),
        }
    }

    /// The latest due instant at or before `now_us`, if any.
    fn due_at_or_before(&self, now_us: i64) -> Option<i64> {
        match self {
            Grid::Every { phase_us, every_us } => {
                if *every_us <= 0 {
                    return None;
                }
                Some(now_us - (now_us - phase_us).rem_euclid(*every_us))
            }
            Grid::Cron(cron) => cron.latest_at_or_before(now_us),
        }
    }

    /// The first tick after `now_us`: where a source moves once a claimed
    /// tick of it was run.
    fn next_after(&self, now_us: i64) -> Option<i64> {
        match self {
            Grid::Every { every_us, .. } => Some(self.due_at_or_before(now_us)? + every_us),
            Grid::Cron(cron) => cron.next_after(now_us),
        }
    }

    /// The due instant of a tick the crate fires at `now_us`: an interval
    /// tick fires a lead ahead of it.
    fn due_for_fire_at(&self, now_us: i64) -> Option<i64> {
        match self {
            Grid::Every { .. } => self.due_at_or_before(now_us + LEAD_US),
            _ => self.due_at_or_before(now_us),
        }
    }

    /// An interval grid's first tick for a runner started at `now_us`: the
    /// first grid point at least half an interval later, so that it does
    /// not repeat the start-up run; `None` for cron (the crate places it).
    fn first_due_after_start(&self, now_us: i64) -> Option<i64> {
        let Grid::Every { every_us, .. } = self else {
            return None;
        };
        let earliest = now_us + every_us / 2;
        let due = self.due_at_or_before(earliest)?;
        Some(if due < earliest { due + every_us } else { due })
    }
}

/// The semaphores a run must hold: its host's, then the global one.
struct Slots {
    host: Arc<Semaphore>,
    all: Arc<Semaphore>,
}

/// The one task that runs a source, one run at a time.
#[allow(clippy::too_many_arguments)]
async fn run_loop(
    job: crate::engine::Job,
    source: Arc<dyn Source>,
    engine: Engine,
    triggers: Arc<Pending>,
    slots: Slots,
    jitter: Duration,
    claims: Option<ClaimCtx>,
    stop: CancellationToken,
) {
    runs(
        &job,
        source.as_ref(),
        &engine,
        &triggers,
        slots,
        jitter,
        claims.as_ref(),
        &stop,
    )
    .await;
    if let Some(claims) = &claims {
        claims.forfeit(triggers.take_now());
    }
}

/// [`run_loop`]'s runs, until `stop`.
#[allow(clippy::too_many_arguments)]
async fn runs(
    job: &crate::engine::Job,
    source: &dyn Source,
    engine: &Engine,
    triggers: &Pending,
    slots: Slots,
    jitter: Duration,
    claims: Option<&ClaimCtx>,
    stop: &CancellationToken,
) {
    loop {
        let trigger = tokio::select! {
            t = triggers.take() => t,
            _ = stop.cancelled() => return,
        };
        // A claimed tick counts against the daemon's free slots until it
        // asks for its own (or the runner stops first).
        let (due_us, mut queued) = match trigger {
            Trigger::Tick { due_us } => (Some(due_us), None),
            Trigger::Claimed { due_us } => (Some(due_us), claims.map(ClaimCtx::guard)),
            Trigger::Now => (None, None),
        };
        if let Some(due) = due_us {
            // An interval tick fired ahead of its due instant (LEAD_US):
            // wait for it. Never earlier, even by a timer's rounding.
            loop {
                let ahead = due - crate::time::now_us();
                if ahead <= 0 {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_micros(ahead.unsigned_abs())) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
        if due_us.is_some() && !jitter.is_zero() {
            // A push notification arriving during the jitter wait starts the
            // run at once; it and the tick are one run.
            let wait = rand::rng().random_range(Duration::ZERO..=jitter);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = triggers.take() => {}
                _ = stop.cancelled() => return,
            }
        }
        let claimed = queued.is_some();
        drop(queued.take());
        // Host first: a run queued behind its busy host holds no global slot.
        let _host = tokio::select! {
            p = slots.host.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let _permit = tokio::select! {
            p = slots.all.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let attempt = engine.run_scheduled(job, source, stop, due_us).await;
        drop((_host, _permit));
        let key = &job.key;
        // A run cut short by the shutdown leaves its tick claimed: the
        // shutdown gives it back as it was due, and another replica runs
        // it at once, instead of the source waiting for its next tick.
        if let (true, Some(claims), false) = (claimed, claims, stop.is_cancelled()) {
            claims.done(key).await;
        }
        if let crate::engine::Attempt::Busy(holder) = attempt {
            // Another process (a manual `synchro sync`, a replica) is
            // syncing it: that run does this tick's work.
            tracing::info!(tenant = %key.tenant, source = %key.source, %holder,
                "tick skipped: the source is being synced by another run");
            crate::metrics::run_skipped(key);
            if due_us.is_none() {
                // A push notification (or the start-up run) asked for a
                // run *now*: the holder may have listed before the change
                // it announces. Run once the holder is done.
                if !wait_until_free(engine.store(), key, stop).await {
                    return;
                }
                triggers.offer(Trigger::Now);
            }
        }
    }
}

/// How often a runner looks whether another process's run of its source
/// ended.
const HELD_POLL: Duration = Duration::from_secs(1);

/// Waits until no live run holds `key`'s lease; false if `stop` fired
/// first. A database error is waited out like a held lease.
async fn wait_until_free(
    store: &crate::store::Store,
    key: &SourceKey,
    stop: &CancellationToken,
) -> bool {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HELD_POLL) => {}
            _ = stop.cancelled() => return false,
        }
        if let Ok(None) = store.lease_holder(key).await {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, source: &str) -> SourceKey {
        SourceKey {
            tenant: tenant.to_string(),
            source: source.to_string(),
        }
    }

    /// The size of the future `f` returns, without calling it.
    #[allow(clippy::too_many_arguments)]
    fn returned_size<A, B, C, D, E, F, G, H, R>(_: fn(A, B, C, D, E, F, G, H) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every configured source's task holds its runner's future for the
    /// daemon's lifetime, idle nearly all of it: 1,000 sources cost 1,000
    /// times its size. State of a few KB that it awaits (a run, a store
    /// statement) must be boxed, not inline (14 KB of an inline Postgres
    /// transaction once added 14 MB to an idle daemon of 1,000 sources).
    #[test]
    fn a_runner_task_stays_small_while_it_waits() {
        let size = returned_size(run_loop);
        eprintln!("run_loop future: {size} bytes");
        assert!(size <= 4096, "run_loop's future is {size} bytes");
    }

    #[test]
    fn an_interval_tick_answers_the_latest_grid_point_at_or_before_now() {
        let s = 1_000_000;
        let grid = Grid::Every {
            phase_us: 40 * s,
            every_us: 60 * s,
        };
        assert_eq!(grid.due_at_or_before(999 * s), Some(940 * s));
        assert_eq!(grid.due_at_or_before(1_000 * s), Some(1_000 * s));
        assert_eq!(grid.due_at_or_before(1_000 * s + 400_000), Some(1_000 * s));
        assert_eq!(grid.due_at_or_before(1_059 * s), Some(1_000 * s));
        assert_eq!(grid.due_at_or_before(1_060 * s), Some(1_060 * s));
        assert_eq!(grid.due_at_or_before(1_185 * s), Some(1_180 * s));
        // Fired a lead ahead (the crate's poll lands anywhere in the second
        // before), a tick answers the grid point ahead of it.
        assert_eq!(grid.due_for_fire_at(1_059 * s), Some(1_060 * s));
        assert_eq!(grid.due_for_fire_at(1_059 * s + 600_000), Some(1_060 * s));
    }

    #[test]
    fn an_interval_source_first_ticks_on_its_grid_at_least_half_an_interval_after_start() {
        let s = 1_000_000;
        for every_s in [1_i64, 2, 5, 60, 3_600] {
            let schedule = Schedule::Every(Duration::from_secs(every_s as u64));
            for (i, now) in [0, 7 * s + 123, 1_700_000_000 * s + 999_999]
                .into_iter()
                .enumerate()
            {
                let grid = Grid::of(&key("acme", &format!("s{i}")), &schedule);
                let first = grid.first_due_after_start(now).expect("interval");
                let every = every_s * s;
                assert!(first >= now + every / 2, "{every_s}s: {first} vs {now}");
                assert!(
                    first < now + every / 2 + every,
                    "{every_s}s: {first} vs {now}"
                );
                assert_eq!(grid.due_at_or_before(first), Some(first), "on the grid");
            }
        }
        let cron = Schedule::parse("0 * * * * *").expect("cron");
        assert_eq!(
            Grid::of(&key("a", "b"), &cron).first_due_after_start(0),
            None
        );
    }

    #[test]
    fn interval_sources_are_spread_over_their_interval_and_keep_their_phase() {
        let mut per_second = [0_usize; 60];
        for i in 0..10_000 {
            let k = key(&format!("t{:03}", i / 100), &format!("s{i:05}"));
            let p = phase_s(&k, 60);
            assert_eq!(p, phase_s(&k, 60), "stable");
            per_second[p as usize] += 1;
        }
        // 10,000 sources over 60 seconds: about 167 a second, none empty,
        // none carrying a herd.
        let (min, max) = (
            per_second.iter().min().copied().unwrap_or(0),
            per_second.iter().max().copied().unwrap_or(0),
        );
        assert!(min >= 100 && max <= 250, "{min}..{max}: {per_second:?}");
        assert_eq!(phase_s(&key("acme", "team"), 1), 0);
        // FNV-1a of "acme/team", computed independently: another build or
        // platform gives a source the same phase.
        assert_eq!(phase_s(&key("acme", "team"), 3_600), 1_817);
        assert_eq!(phase_s(&key("acme", "team"), 60), 17);
    }

    #[test]
    fn a_cron_tick_answers_the_latest_occurrence_at_or_before_now() {
        let grid = Grid::of(
            &key("a", "b"),
            &Schedule::parse("*/5 * * * *").expect("cron"),
        );
        // 2026-01-01T00:07:30Z → due 00:05:00; exactly 00:10:00 → itself.
        let t0 = 1_767_225_600_000_000;
        let s = 1_000_000;
        assert_eq!(grid.due_at_or_before(t0 + 450 * s), Some(t0 + 300 * s));
        assert_eq!(grid.due_at_or_before(t0 + 600 * s), Some(t0 + 600 * s));
    }

    #[tokio::test]
    async fn a_pending_request_coalesces_the_next_ones_until_taken() {
        let p = Arc::new(Pending::default());
        assert!(p.offer(Trigger::Now));
        assert!(!p.offer(Trigger::Tick { due_us: 5 }), "coalesced");
        assert_eq!(p.take().await, Trigger::Now, "the first request stays");
        // Taken: the next request is a new one, and a waiting taker wakes.
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.take().await }
        });
        tokio::task::yield_now().await;
        assert!(p.offer(Trigger::Tick { due_us: 7 }));
        let got = tokio::time::timeout(Duration::from_secs(10), waiter).await;
        assert!(
            matches!(got, Ok(Ok(Trigger::Tick { due_us: 7 }))),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn liveness_fails_when_a_task_ends_unasked_and_not_after_a_stop() {
        let stop = CancellationToken::new();
        let running = tokio::spawn(std::future::pending::<()>());
        let liveness = Liveness {
            tasks: vec![(running.abort_handle(), stop.clone())],
        };
        assert!(liveness.healthy());
        running.abort();
        let _ = running.await;
        assert!(!liveness.healthy(), "a dead task is unhealthy");
        stop.cancel();
        assert!(liveness.healthy(), "tasks ending after a stop is the plan");
    }
}
