//! Hands memory back to the OS once the daemon goes idle. A burst of runs
//! leaves SQLite's writer page cache full (up to 2 MB) and the allocator's
//! arenas holding the freed buffers of HTTP bodies, JSON and commits: ~5 MB
//! of RSS for nothing in an idle daemon of 1,000 sources
//! (docs/performance.md, idle daemon). After [`RECLAIM_AFTER`] without a
//! run, the writer drops its cache and the allocator returns its free pages.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How long no run must have been active before memory is handed back:
/// long enough that back-to-back runs never pay for it, short enough that
/// an idle daemon is small soon after its burst.
pub(crate) const RECLAIM_AFTER: Duration = Duration::from_secs(1);

/// Runs in progress, shared by every run of an engine.
#[derive(Default)]
pub struct Activity {
    active: AtomicUsize,
    /// Bumped by every run start: tells "still idle" from "idle again".
    started: AtomicU64,
    /// Woken when the last active run ends.
    idle: Notify,
    /// Times memory was handed back (tests).
    reclaims: AtomicU64,
}

impl Activity {
    /// Marks a run active until the guard drops (a cancelled run future
    /// included).
    pub fn begin(self: &Arc<Self>) -> ActiveRun {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.active.fetch_add(1, Ordering::SeqCst);
        ActiveRun(self.clone())
    }

    /// How many times memory was handed back.
    #[cfg(test)]
    fn reclaims(&self) -> u64 {
        self.reclaims.load(Ordering::SeqCst)
    }

    /// Until `stop`: each time the runs go idle and stay idle for
    /// `RECLAIM_AFTER` (one second), shrink the writer's cache and trim the heap.
    pub async fn reclaim_when_idle(self: Arc<Self>, store: Store, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.idle.notified() => {}
                _ = stop.cancelled() => return,
            }
            let started = self.started.load(Ordering::SeqCst);
            tokio::select! {
                _ = tokio::time::sleep(RECLAIM_AFTER) => {}
                _ = stop.cancelled() => return,
            }
            if self.active.load(Ordering::SeqCst) != 0
                || self.started.load(Ordering::SeqCst) != started
            {
                // A run started meanwhile; its end notifies again.
                continue;
            }
            if let Err(e) = store.release_memory().await {
                tracing::warn!(error = %e, "could not shrink the database cache");
            }
            trim_heap();
            self.reclaims.fetch_add(1, Ordering::SeqCst);
            tracing::debug!("idle: memory handed back");
        }
    }
}

/// A run in progress (see [`Activity::begin`]).
pub struct ActiveRun(Arc<Activity>);

impl Drop for ActiveRun {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_one();
        }
    }
}

/// Returns the allocator's free pages to the OS. glibc keeps memory freed
/// inside its arenas mapped (only the top of a heap shrinks by itself);
/// `malloc_trim` releases every whole free page. Elsewhere (musl) a no-op.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only walks the allocator's
    // own free lists under its locks; it is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn reclaims_reach(activity: &Activity, n: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            if activity.reclaims() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn memory_is_handed_back_once_the_last_run_ends_and_again_after_the_next_burst() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .expect("store");
        let activity = Arc::new(Activity::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(activity.clone().reclaim_when_idle(store, stop.clone()));

        let first = activity.begin();
        let second = activity.begin();
        drop(first);
        assert_eq!(activity.active.load(Ordering::SeqCst), 1);
        drop(second);
        assert!(
            reclaims_reach(&activity, 1).await,
            "the idle daemon reclaims"
        );

        // A later burst, with a run ending and another starting before the
        // idle delay is over: one more reclaim, after the last one ends.
        let a = activity.begin();
        drop(a);
        let b = activity.begin();
        drop(b);
        assert!(reclaims_reach(&activity, 2).await, "idle again");
        stop.cancel();
        assert!(task.await.is_ok(), "the task ends on stop");
    }
}
