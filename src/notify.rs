//! systemd service notifications (`sd_notify(3)`).
//!
//! With `Type=notify` systemd only considers the service started once it says
//! `READY=1`, so dependants never see a daemon whose migrations have not run;
//! `RELOADING=1`/`READY=1` make `systemctl reload` observable, `STOPPING=1`
//! explains a slow drain, and `WATCHDOG=1` pings let systemd restart a daemon
//! that is alive but no longer working. Without `NOTIFY_SOCKET` (a terminal,
//! Docker, the tests) every call here is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::scheduler::Liveness;
use crate::store::Store;

/// Tells systemd start-up (or a reload) is complete; `status` is what
/// `systemctl status` shows.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd a reload began. `MONOTONIC_USEC` accompanies it because
/// systemd ≥ 253 uses it to match this message with the reload it requested.
pub fn reloading() {
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("reloading the configuration"),
    ];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// Tells systemd the shutdown began, so the drain is shown as such rather
/// than as a hung service.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("shutting down: finishing the pages in flight"),
    ]);
}

/// Sends `states`; a failure is logged, never fatal: losing a notification
/// must not take down a daemon whose syncs are fine.
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// The `WATCHDOG=1` pinger. It pings only while the daemon is healthy, so a
/// wedged database or a dead sync task makes systemd restart the service.
pub struct Watchdog {
    scheduler: watch::Sender<Option<Liveness>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts pinging at half of `WATCHDOG_USEC` (as `sd_watchdog_enabled(3)`
    /// recommends) if systemd asked for a watchdog for this process; does
    /// nothing otherwise.
    pub fn start(store: Store) -> Self {
        let (scheduler, rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = sd_notify::watchdog_enabled()
            .filter(|timeout| !timeout.is_zero())
            .map(|timeout| tokio::spawn(ping_loop(timeout / 2, store, rx, stop.clone())));
        Self {
            scheduler,
            stop,
            task,
        }
    }

    /// Makes the pings depend on this scheduler's tasks too (called again
    /// after each reload, with the new scheduler).
    pub fn watch(&self, liveness: Liveness) {
        self.scheduler.send_replace(Some(liveness));
    }

    /// Stops pinging (before the store closes, which would otherwise read as
    /// unhealthy and be logged as such).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

async fn ping_loop(
    every: Duration,
    store: Store,
    scheduler: watch::Receiver<Option<Liveness>>,
    stop: CancellationToken,
) {
    tracing::info!(?every, "systemd watchdog enabled");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_healthy = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let liveness = scheduler.borrow().clone();
        let problem = unhealthy(&store, liveness.as_ref(), every).await;
        match problem {
            None => {
                send(&[NotifyState::Watchdog]);
                if !was_healthy {
                    tracing::info!("healthy again: systemd watchdog pings resumed");
                }
            }
            Some(why) if was_healthy => {
                tracing::error!(reason = why, "unhealthy: systemd watchdog pings withheld");
                send(&[NotifyState::Status(why)]);
            }
            Some(_) => {}
        }
        was_healthy = problem.is_none();
    }
}

/// What is wrong with the daemon, if anything: the database does not answer
/// a trivial query within `budget`, or a scheduler task died.
pub async fn unhealthy(
    store: &Store,
    scheduler: Option<&Liveness>,
    budget: Duration,
) -> Option<&'static str> {
    match tokio::time::timeout(budget, store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Some("the database does not answer"),
        Err(_) => return Some("the database is too slow to answer"),
    }
    if scheduler.is_some_and(|l| !l.healthy()) {
        return Some("a sync task stopped unexpectedly");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_store_is_unhealthy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("x.db").display());
        let store = Store::open(&url).await.expect("open");
        let budget = Duration::from_secs(5);
        assert_eq!(unhealthy(&store, None, budget).await, None);
        store.close().await;
        assert_eq!(
            unhealthy(&store, None, budget).await,
            Some("the database does not answer")
        );
    }
}
