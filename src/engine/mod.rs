//! Runs one sync of one source: asks the source for pages, commits each page
//! with the progress that follows it, and records the run.
//!
//! Fetching the next pages overlaps with committing the current ones: the
//! progress a fetch starts from is known before the commit ends, and a
//! failure or a crash at any instant leaves the database at the last
//! committed page (the atomicity rule), so the overlap costs no safety.
//! Pages waiting when a commit ends (or arriving within a few ms) are
//! committed together, in one transaction with the progress after the last
//! of them. The writer is a task of its own, and the fetcher keeps fetching
//! while a group commits: the two sides run on both cores at once.

mod reclaim;
mod redact;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::SourceKey;
use crate::sources::{Page, Source, SourceError};
use crate::store::{RunOutcome, RunRecord, Store, StoreError};
pub use reclaim::Activity;
pub use redact::{Redactor, TokenSlot};

/// Records (a page counts at least one) fetched ahead of the commit: bounds
/// the memory of a run to a few MB whatever the page size, while the
/// fetcher never waits for a single commit.
const QUEUED_RECORDS: usize = 4_096;

/// Pages after which a run counts as a large sync and widens the writer's
/// page cache until it ends (`Store::widen_cache`).
const WIDE_CACHE_AFTER_PAGES: u64 = 8;

/// How long the writer waits for more pages before committing a group
/// smaller than [`GROUP_RECORDS`] (never after the run's last page). Each
/// transaction costs a handful of round trips to the writer thread, each a
/// wake-up of two threads: small pages (Contentor's ~20 requests) committed
/// one by one spent more CPU on those than on their rows. A page reaches the
/// database at most this much later.
const GROUP_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// Records above which a group commit takes no further waiting page. Large
/// groups matter when the writer is the slower side (a listing in random id
/// order dirties an index page per row; one transaction writes each dirty
/// page once): 4,000 rows a transaction took ~30 % less CPU than 1,000 on
/// this machine.
const GROUP_RECORDS: usize = 4_000;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("credentials rejected for {key}: {source}")]
    Credentials { key: SourceKey, source: SourceError },
    #[error("{0}")]
    Source(SourceError),
    #[error("storing failed: {0}")]
    Store(#[from] StoreError),
    /// The task committing the pages panicked (a bug): nothing after the
    /// last committed page was stored.
    #[error("the page writer failed: {0}")]
    Writer(String),
}

/// The outcome of one run, as recorded in the `runs` table.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: String,
    pub outcome: RunOutcome,
    pub totals: RunRecord,
    pub elapsed: std::time::Duration,
}

/// Called after every committed page with the records it carried
/// (progress bars).
pub type PageObserver = Arc<dyn Fn(&SourceKey, usize) + Send + Sync>;

/// Everything a run needs besides the source itself.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    redactor: Redactor,
    observer: Option<PageObserver>,
    activity: Arc<Activity>,
}

impl Engine {
    pub fn new(store: Store, redactor: Redactor) -> Self {
        Self {
            store,
            redactor,
            observer: None,
            activity: Arc::default(),
        }
    }

    /// Adds a callback run after each committed page.
    pub fn with_observer(mut self, observer: PageObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The runs in progress; the daemon hands memory back when they stop
    /// (see [`Activity::reclaim_when_idle`]).
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Runs one sync of `source` until it is done, fails, or `stop` fires
    /// (then it ends after the page in flight). Never panics, never returns
    /// early without recording the run.
    pub async fn run(
        &self,
        key: &SourceKey,
        kind: &str,
        source: &dyn Source,
        stop: &CancellationToken,
    ) -> RunReport {
        self.run_scheduled(key, kind, source, stop, None).await
    }

    /// Same as [`Engine::run`] for a run answering a schedule tick that was
    /// due at `due_us` (µs since the epoch): the run's row keeps that
    /// instant, so that start lateness can be read from the database.
    pub async fn run_scheduled(
        &self,
        key: &SourceKey,
        kind: &str,
        source: &dyn Source,
        stop: &CancellationToken,
        due_us: Option<i64>,
    ) -> RunReport {
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let span = tracing::info_span!("sync", tenant = %key.tenant, source = %key.source, run_id = %run_id);
        // Boxed: the state of a run (HTTP, JSON, commit futures) is several
        // KB, and the task of every configured source would otherwise carry
        // it inline while it waits for its next tick, i.e. almost always.
        Box::pin(
            self.run_inner(key, kind, source, stop, run_id, due_us)
                .instrument(span),
        )
        .await
    }

    async fn run_inner(
        &self,
        key: &SourceKey,
        kind: &str,
        source: &dyn Source,
        stop: &CancellationToken,
        run_id: String,
        due_us: Option<i64>,
    ) -> RunReport {
        let started = Instant::now();
        let _active = self.activity.begin();
        let mut totals = RunRecord::default();
        if let Err(e) = self.store.start_run(key, kind, &run_id, due_us).await {
            // The run cannot even be recorded (locked or full disk): report
            // it and do not fetch anything we could not store.
            let msg = self.redactor.scrub(&format!("storing failed: {e}"));
            tracing::error!(error = %msg, "sync run could not start");
            totals.error = Some(msg);
            return RunReport {
                run_id,
                outcome: RunOutcome::Failed,
                totals,
                elapsed: started.elapsed(),
            };
        }
        let result = self.pages(key, kind, source, stop, &mut totals).await;
        let outcome = match result {
            Ok(true) => RunOutcome::Success,
            Ok(false) => RunOutcome::Cancelled,
            Err(e) => {
                let msg = self.redactor.scrub(&e.to_string());
                totals.error = Some(msg);
                RunOutcome::Failed
            }
        };
        let elapsed = started.elapsed();
        match outcome {
            RunOutcome::Success => tracing::info!(
                pages = totals.pages,
                upserted = totals.upserted,
                deleted = totals.deleted,
                elapsed_ms = elapsed.as_millis() as u64,
                "sync run succeeded"
            ),
            RunOutcome::Cancelled => tracing::warn!(
                pages = totals.pages,
                upserted = totals.upserted,
                "sync run stopped by shutdown after a committed page"
            ),
            RunOutcome::Failed => tracing::error!(
                pages = totals.pages,
                upserted = totals.upserted,
                error = totals.error.as_deref().unwrap_or_default(),
                "sync run failed; progress stays at the last committed page"
            ),
        }
        if let Err(e) = self.store.finish_run(&run_id, outcome, &totals).await {
            tracing::error!(error = %e, "could not record the end of the run");
        }
        crate::metrics::run_finished(key, kind, outcome, &totals, elapsed);
        RunReport {
            run_id,
            outcome,
            totals,
            elapsed,
        }
    }

    /// The page loop. `Ok(true)`: done; `Ok(false)`: stopped by shutdown.
    async fn pages(
        &self,
        key: &SourceKey,
        kind: &str,
        source: &dyn Source,
        stop: &CancellationToken,
        totals: &mut RunRecord,
    ) -> Result<bool, SyncError> {
        let stored = self.store.load_progress(key).await?;
        let mut progress = source.start_run(stored);

        // Fetching runs ahead of committing by at most QUEUED_RECORDS
        // records. The writer commits every page waiting, or arriving
        // within GROUP_LINGER, in one transaction (a group commit, up to
        // GROUP_RECORDS records): records and the progress after the last
        // of them stay atomic, and small pages stop paying one transaction
        // each. The queue holds pages with their share of the record
        // budget, released when the writer takes them into a commit: the
        // fetcher fills the queue again while the group commits (holding
        // the budget until the commit ended made the two sides take turns;
        // a run holds at most QUEUED_RECORDS + GROUP_RECORDS + a page).
        let (tx, mut rx) = mpsc::unbounded_channel::<(Page, OwnedSemaphorePermit)>();
        let budget = Arc::new(Semaphore::new(QUEUED_RECORDS));
        let held = budget.clone();
        let store = self.store.clone();
        let observer = self.observer.clone();
        let writer_key = key.clone();
        let writer_kind = kind.to_string();
        let writer = async move {
            let mut acc = RunRecord::default();
            let mut widened = false;
            let written = async {
                let mut group: Vec<Page> = Vec::new();
                let mut permits: Vec<OwnedSemaphorePermit> = Vec::new();
                while let Some((page, permit)) = rx.recv().await {
                    let linger_until = tokio::time::Instant::now() + GROUP_LINGER;
                    let mut records = page.items();
                    let mut last = page.done;
                    // Budget a page like the last one takes: with less left,
                    // the fetcher cannot queue one before this group commits
                    // and frees its share, so waiting for it is pointless.
                    let mut share = permit.num_permits();
                    group.push(page);
                    permits.push(permit);
                    while records < GROUP_RECORDS && !last {
                        let next = match rx.try_recv() {
                            Ok(next) => Some(next),
                            Err(mpsc::error::TryRecvError::Disconnected) => None,
                            Err(mpsc::error::TryRecvError::Empty)
                                if held.available_permits() < share =>
                            {
                                None
                            }
                            Err(mpsc::error::TryRecvError::Empty) => {
                                tokio::time::timeout_at(linger_until, rx.recv())
                                    .await
                                    .ok()
                                    .flatten()
                            }
                        };
                        let Some((next, permit)) = next else { break };
                        records += next.items();
                        last = next.done;
                        share = permit.num_permits();
                        group.push(next);
                        permits.push(permit);
                    }
                    // What the loop below reports of each page, taken
                    // before the pages move into the commit.
                    let shapes: Vec<(usize, bool)> =
                        group.iter().map(|p| (p.items(), p.done)).collect();
                    // The group leaves the queue: its budget goes back to
                    // the fetcher for the duration of the commit.
                    permits.clear();
                    let stats = store
                        .commit_pages(&writer_key, &writer_kind, std::mem::take(&mut group))
                        .await?;
                    acc.upserted += stats.upserted;
                    acc.deleted += stats.deleted + stats.removed;
                    for (received, done) in shapes.iter().copied() {
                        acc.pages += 1;
                        tracing::debug!(received, done, "page committed");
                        if let Some(obs) = &observer {
                            obs(&writer_key, received);
                        }
                    }
                    tracing::debug!(
                        pages = shapes.len(),
                        upserted = stats.upserted,
                        deleted = stats.deleted,
                        removed = stats.removed,
                        "group committed"
                    );
                    if !widened && acc.pages >= WIDE_CACHE_AFTER_PAGES {
                        match store.widen_cache().await {
                            Ok(()) => widened = true,
                            Err(e) => tracing::warn!(error = %e, "could not widen the page cache"),
                        }
                    }
                }
                Ok::<(), StoreError>(())
            }
            .await;
            if widened && let Err(e) = store.narrow_cache().await {
                tracing::warn!(error = %e, "could not narrow the page cache");
            }
            (acc, written)
        };
        let fetcher = async move {
            loop {
                if stop.is_cancelled() {
                    return Ok(false);
                }
                let page = source.fetch(&progress).await?;
                progress = page.next_progress.clone();
                let done = page.done;
                let share = page.items().clamp(1, QUEUED_RECORDS) as u32;
                let sent = match budget.clone().acquire_many_owned(share).await {
                    Ok(permit) => tx.send((page, permit)).is_ok(),
                    Err(_) => false,
                };
                if !sent {
                    // The writer stopped on an error; it reports it.
                    return Ok(true);
                }
                if done {
                    return Ok(true);
                }
            }
        };
        // Polled in this task beside the fetcher (`join!`), the writer saw
        // its statements' results only between two parses of a page, and
        // the sides took turns. If this run is dropped, the writer still
        // commits the pages already queued, then ends.
        let writer = tokio::spawn(writer.instrument(tracing::Span::current()));
        let fetched = fetcher.await;
        let (acc, written) = writer.await.map_err(|e| SyncError::Writer(e.to_string()))?;
        totals.pages = acc.pages;
        totals.upserted = acc.upserted;
        totals.deleted = acc.deleted;
        written?;
        fetched.map_err(|e: SourceError| {
            if e.is_credentials() {
                SyncError::Credentials {
                    key: key.clone(),
                    source: e,
                }
            } else {
                SyncError::Source(e)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use super::*;
    use crate::sources::{Phase, Progress, Record};

    const PAGES: usize = 24;
    const PER_PAGE: usize = 1_000;

    /// Pages of `PER_PAGE` records, as fast as asked for; records how far
    /// ahead of the commits (counted by the observer) each fetch started.
    struct Fast {
        fetched: AtomicUsize,
        committed: Arc<AtomicU64>,
        most_ahead: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Source for Fast {
        fn start_run(&self, _stored: Option<crate::sources::Progress>) -> Progress {
            Progress::default()
        }

        async fn fetch(&self, _progress: &Progress) -> Result<Page, SourceError> {
            let n = self.fetched.fetch_add(1, Ordering::SeqCst);
            let ahead = n * PER_PAGE - self.committed.load(Ordering::SeqCst) as usize;
            self.most_ahead.fetch_max(ahead, Ordering::SeqCst);
            let upserts = (0..PER_PAGE)
                .map(|i| Record {
                    id: format!("{n}-{i}"),
                    updated_at: "2024-01-01T00:00:00Z".into(),
                    updated_us: 1_704_067_200_000_000,
                    data: crate::sources::payload::from_value(&serde_json::json!({"n": n, "i": i}))
                        .expect("json"),
                })
                .collect();
            Ok(Page {
                upserts,
                done: n + 1 == PAGES,
                next_progress: Progress {
                    phase: Phase::Full,
                    state: serde_json::json!({ "page": n }),
                },
                ..Page::default()
            })
        }
    }

    /// The fetcher runs ahead of the commits by a bounded number of records,
    /// whatever the page size, and every page is stored.
    #[tokio::test]
    async fn fetching_ahead_is_bounded_by_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.expect("open");
        let committed = Arc::new(AtomicU64::new(0));
        let seen = committed.clone();
        let engine = Engine::new(store.clone(), Redactor::new(Vec::new())).with_observer(Arc::new(
            move |_key: &SourceKey, n: usize| {
                seen.fetch_add(n as u64, Ordering::SeqCst);
            },
        ));
        let source = Fast {
            fetched: AtomicUsize::new(0),
            committed: committed.clone(),
            most_ahead: AtomicUsize::new(0),
        };
        let key = SourceKey::new("t", "s");
        let report = engine
            .run(&key, "test", &source, &CancellationToken::new())
            .await;
        assert_eq!(report.outcome, crate::store::RunOutcome::Success);
        assert_eq!(report.totals.upserted, (PAGES * PER_PAGE) as u64);
        let ahead = source.most_ahead.load(Ordering::SeqCst);
        // The budget, plus the group being committed (its permits go back
        // to the fetcher when its commit starts).
        assert!(
            ahead <= QUEUED_RECORDS + GROUP_RECORDS + PER_PAGE,
            "fetched {ahead} records ahead of the commits"
        );
        // While a group commits, its budget is the fetcher's again: it
        // filled the queue behind the commit, beyond what the queue alone
        // holds.
        assert!(
            ahead > QUEUED_RECORDS,
            "the fetcher waited for the commits: at most {ahead} records ahead"
        );
        store.close().await;
    }
}
