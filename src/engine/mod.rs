//! Runs one sync of one source: asks the source for pages, commits each page
//! with the progress that follows it, and records the run.
//!
//! Fetching the next pages overlaps with committing the current ones: the
//! progress a fetch starts from is known before the commit ends, and a
//! failure or a crash at any instant leaves the database at the last
//! committed page (the atomicity rule), so the overlap costs no safety.
//! Pages waiting when a commit ends are committed together, in one
//! transaction with the progress after the last of them.

mod reclaim;
mod redact;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::SourceKey;
use crate::sources::{Page, Source, SourceError};
use crate::store::{PageStats, RunOutcome, RunRecord, Store, StoreError};
pub use reclaim::{Activity, RECLAIM_AFTER};
pub use redact::Redactor;

/// Pages fetched ahead of the commit: bounds the memory of a run (a few
/// pages) while the fetcher never waits for a single commit.
const QUEUED_PAGES: usize = 4;

/// Pages after which a run counts as a large sync and widens the writer's
/// page cache until it ends (`Store::widen_cache`).
const WIDE_CACHE_AFTER_PAGES: u64 = 8;

/// Records above which a group commit takes no further waiting page.
const GROUP_RECORDS: usize = 1_000;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("credentials rejected for {key}: {source}")]
    Credentials { key: SourceKey, source: SourceError },
    #[error("{0}")]
    Source(SourceError),
    #[error("storing failed: {0}")]
    Store(#[from] StoreError),
}

/// The outcome of one run, as recorded in the `runs` table.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: String,
    pub outcome: RunOutcome,
    pub totals: RunRecord,
    pub elapsed: std::time::Duration,
}

/// Called after every committed page (progress bars, metrics).
pub type PageObserver = Arc<dyn Fn(&SourceKey, &PageStats, usize) + Send + Sync>;

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

        // Fetching runs ahead of committing by at most QUEUED_PAGES pages.
        // When the writer falls behind, it commits every page waiting in
        // one transaction (a group commit, up to GROUP_RECORDS records):
        // records and the progress after the last of them stay atomic, and
        // small pages stop paying one transaction each.
        let (tx, mut rx) = mpsc::channel::<Page>(QUEUED_PAGES);
        let store = self.store.clone();
        let observer = self.observer.clone();
        let writer_key = key.clone();
        let writer_kind = kind.to_string();
        let writer = async move {
            let mut acc = RunRecord::default();
            let mut widened = false;
            let written = async {
                let mut group: Vec<Page> = Vec::new();
                while let Some(page) = rx.recv().await {
                    let mut records = page.items();
                    group.push(page);
                    while records < GROUP_RECORDS {
                        let Ok(next) = rx.try_recv() else { break };
                        records += next.items();
                        group.push(next);
                    }
                    let stats = store
                        .commit_pages(&writer_key, &writer_kind, &group)
                        .await?;
                    for (page, stats) in group.drain(..).zip(stats) {
                        let n = page.items();
                        acc.pages += 1;
                        acc.upserted += stats.upserted;
                        acc.deleted += stats.deleted + stats.removed;
                        tracing::debug!(
                            received = n,
                            upserted = stats.upserted,
                            deleted = stats.deleted,
                            removed = stats.removed,
                            done = page.done,
                            "page committed"
                        );
                        if let Some(obs) = &observer {
                            obs(&writer_key, &stats, n);
                        }
                    }
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
                if tx.send(page).await.is_err() {
                    // The writer stopped on an error; it reports it.
                    return Ok(true);
                }
                if done {
                    return Ok(true);
                }
            }
        };
        let ((acc, written), fetched) = tokio::join!(writer, fetcher);
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
