//! Replicas share due sources through the store's shared schedule (see
//! [`crate::store::SharedSchedule`]) instead of each ticking every source:
//! one task per daemon claims a batch of due sources sized to the sync
//! slots it has free, hands each to its runner, and the runner moves the
//! source to its next tick when the run is over.
//!
//! A claimed tick counts against the free slots from when it is handed
//! out until its runner asks for its sync slots (then the semaphore counts
//! it). A tick queued behind its own busy host counts for nothing: a slow
//! host's ticks never keep this daemon from claiming another host's. Each
//! claimer waits a random 0.5–1.5 claim intervals between polls, so that
//! no replica is always the first to see a due tick: the ticks spread. A daemon that dies leaves
//! its claims to lapse (after one lease TTL); the others then claim them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::{Grid, Trigger, Triggers};
use crate::model::SourceKey;
use crate::store::SharedSchedule;

/// How often a daemon with free slots looks for due sources when the last
/// claim found fewer than it asked for: the start lateness it adds at most,
/// and the "claim interval" of a takeover after a replica died.
pub(crate) const CLAIM_INTERVAL: Duration = Duration::from_millis(250);

/// When a claimed source this daemon does not know (removed from its
/// config, or added to another replica's first) is due again for the
/// others.
const UNKNOWN_BACKOFF: Duration = Duration::from_secs(60);

/// How long a failing claim query waits before the next attempt.
const CLAIM_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Claimed ticks handed to runners that have not asked for their sync
/// slots yet: what a claim is sized against besides the slots in use, and
/// the signal that a slot freed.
#[derive(Default)]
pub(crate) struct InFlight {
    n: AtomicUsize,
    freed: Notify,
}

impl InFlight {
    fn count(&self) -> usize {
        self.n.load(Ordering::Acquire)
    }

    fn add(&self) {
        self.n.fetch_add(1, Ordering::AcqRel);
    }

    fn release(&self) {
        // Never below zero, even if a release were counted twice.
        let _ = self
            .n
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.freed.notify_one();
    }
}

/// What a runner needs to finish the ticks it was handed: the shared
/// schedule, its source's grid (to compute the next tick) and the count
/// to release.
pub(crate) struct ClaimCtx {
    pub(crate) shared: SharedSchedule,
    pub(crate) grid: Grid,
    pub(crate) in_flight: Arc<InFlight>,
}

/// A claimed tick a runner took: released from [`InFlight`] when dropped
/// (the runner asks for its slots, or stops first).
pub(crate) struct ClaimGuard(Arc<InFlight>);

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl ClaimCtx {
    /// The runner took a claimed tick.
    pub(crate) fn guard(&self) -> ClaimGuard {
        ClaimGuard(self.in_flight.clone())
    }

    /// A claimed tick of `key` was run (or found its source busy): move
    /// the source to its next tick and free the claim. A failure leaves
    /// the claim to lapse: another daemon then runs the tick again, which
    /// syncing allows (runs are idempotent; the lease keeps them apart).
    pub(crate) async fn done(&self, key: &SourceKey) {
        let now = crate::time::now_us();
        let next = self.grid.next_after(now).unwrap_or(i64::MAX);
        // Boxed: the Postgres transaction's state is ~14 KB, and every
        // runner's task (see `run_loop`) would otherwise carry it inline
        // while it waits for its next tick, on SQLite too.
        if let Err(e) = Box::pin(self.shared.done(key, next)).await {
            tracing::warn!(tenant = %key.tenant, source = %key.source, error = %e,
                "could not move the source to its next tick: its claim will lapse");
        }
        // Its sync slot is free: the claimer may be waiting for one.
        self.in_flight.freed.notify_one();
    }

    /// Gives a pending claimed tick back when the runner stops without
    /// running it (the rows themselves are given back by the shutdown, or
    /// lapse for a source removed by a reload).
    pub(crate) fn forfeit(&self, leftover: Option<Trigger>) {
        if let Some(Trigger::Claimed { .. }) = leftover {
            self.in_flight.release();
        }
    }
}

/// Claims due sources for this daemon's runners until `stop`: batches
/// sized to the free sync `slots` minus the ticks handed out that have not
/// asked for theirs yet. `runners` is the current set of runners (a reload
/// sends a new one).
pub(crate) async fn claim_loop(
    shared: SharedSchedule,
    mut runners: watch::Receiver<Triggers>,
    in_flight: Arc<InFlight>,
    slots: Arc<Semaphore>,
    ttl: Duration,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let free = slots.available_permits().saturating_sub(in_flight.count());
        let mut wait = CLAIM_INTERVAL.mul_f64(rand::rng().random_range(0.5..1.5));
        if free > 0 {
            let started = Instant::now();
            match shared
                .claim(i64::try_from(free).unwrap_or(i64::MAX), ttl)
                .await
            {
                Ok(claimed) => {
                    crate::metrics::schedule_claimed(claimed.len(), started.elapsed());
                    let full = claimed.len() == free;
                    let current = runners.borrow_and_update().clone();
                    let unknown = hand_out(&current, claimed, &in_flight);
                    if !unknown.is_empty() {
                        let again = crate::time::now_us()
                            + i64::try_from(UNKNOWN_BACKOFF.as_micros()).unwrap_or(i64::MAX / 4);
                        if let Err(e) = shared.give_back(&unknown, Some(again)).await {
                            tracing::warn!(error = %e, "could not give back claims of unknown sources");
                        }
                    }
                    if full {
                        // More may be due: claim again at once.
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim due sources");
                    wait = CLAIM_ERROR_BACKOFF;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // A slot freed while all were busy: claim for it at once.
            _ = in_flight.freed.notified(), if free == 0 => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Hands each claimed source to its runner; returns the ones this daemon
/// has no runner for.
fn hand_out(
    runners: &Triggers,
    claimed: Vec<(SourceKey, i64)>,
    in_flight: &InFlight,
) -> Vec<SourceKey> {
    let mut unknown = Vec::new();
    for (key, due_us) in claimed {
        in_flight.add();
        match runners.claimed(&key, due_us) {
            Some(true) => {}
            // The runner already holds a claimed tick of this source (its
            // earlier claim lapsed under a slow run): one run does both.
            Some(false) => in_flight.release(),
            None => {
                in_flight.release();
                unknown.push(key);
            }
        }
    }
    unknown
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::Pending;
    use super::*;

    /// A claimed tick goes to its source's runner (replacing a pending
    /// "now": one run answers both), not twice to one runner, and a source
    /// without a runner is given back; the count follows.
    #[tokio::test]
    async fn claimed_ticks_go_to_their_runner_once_and_unknown_ones_come_back() {
        let a = SourceKey::new("t", "a");
        let b = SourceKey::new("t", "b");
        let pa = Arc::new(Pending::default());
        let pb = Arc::new(Pending::default());
        pb.offer(Trigger::Now);
        let runners = Triggers(Arc::new(BTreeMap::from([
            (a.clone(), pa.clone()),
            (b.clone(), pb.clone()),
        ])));
        let in_flight = InFlight::default();
        let unknown = hand_out(
            &runners,
            vec![
                (a.clone(), 10),
                (b.clone(), 20),
                (a.clone(), 30),
                (SourceKey::new("t", "gone"), 40),
            ],
            &in_flight,
        );
        assert_eq!(unknown, vec![SourceKey::new("t", "gone")]);
        assert_eq!(in_flight.count(), 2, "one per runner handed a tick");
        assert_eq!(pa.take().await, Trigger::Claimed { due_us: 10 });
        assert_eq!(
            pb.take().await,
            Trigger::Claimed { due_us: 20 },
            "the claimed tick replaced the pending run"
        );
        // A runner's released claim frees a slot, once.
        in_flight.release();
        in_flight.release();
        in_flight.release();
        assert_eq!(in_flight.count(), 0, "never below zero");
    }
}
