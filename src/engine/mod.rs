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

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::model::{Page, RunOutcome, RunRecord, SourceKey};
use crate::redact::Redactor;
use crate::sources::{Source, SourceError};
use crate::store::{Acquired, Holder, Lease, PageStats, Store, StoreError};
pub use reclaim::Activity;

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
pub(crate) enum SyncError {
    #[error("credentials rejected for {key}: {source}")]
    Credentials { key: SourceKey, source: SourceError },
    #[error("{0}")]
    Source(SourceError),
    #[error("storing failed: {0}")]
    Store(#[from] StoreError),
    /// The task committing the pages panicked (a bug): nothing after the
    /// last committed page was stored.
    #[error("the page writer failed: {0}")]
    Writer(#[source] tokio::task::JoinError),
    /// Another run took the source's lease over (this process was paused
    /// or cut off from the database past the lease's expiry).
    #[error(
        "lost the lease of {0} to another run (this process was paused or could not renew it); \
         stopped without committing more"
    )]
    LeaseLost(SourceKey),
    /// The upstream never ends the listing: more pages than allowed.
    #[error(
        "{key}: more than {max} pages in one run (max_pages_per_run); the upstream does not \
         end its listing (last position: {position})"
    )]
    TooManyPages {
        key: SourceKey,
        max: u64,
        position: String,
    },
    /// The upstream led back to a position this run already fetched from:
    /// following it would loop forever.
    #[error(
        "{key}: the upstream led back to a position this run already passed ({position}); \
         stopping instead of looping"
    )]
    Cycle { key: SourceKey, position: String },
    /// The source's code panicked on what the upstream sent (a bug): the
    /// run fails, the source keeps its schedule.
    #[error("{key}: the sync panicked: {message}")]
    Panicked { key: SourceKey, message: String },
}

/// What to run: which source, of which kind, within which bounds.
#[derive(Debug, Clone)]
pub struct Job {
    pub key: SourceKey,
    pub kind: &'static str,
    /// Pages one run may fetch before it fails (`max_pages_per_run`).
    pub max_pages: u64,
}

impl Job {
    /// The job of a configured source.
    pub fn of(cfg: &crate::config::SourceConfig) -> Self {
        Self {
            key: cfg.key(),
            kind: cfg.kind_name(),
            max_pages: cfg.max_pages_per_run,
        }
    }
}

/// Lease duration when none is configured (`[scheduler] lease_ttl`).
const DEFAULT_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// What asking for a run gave.
#[derive(Debug, Clone)]
pub enum Attempt {
    /// The run took place (whatever its outcome).
    Ran(RunReport),
    /// Another live run holds the source's lease: nothing was done.
    Busy(Holder),
}

impl Attempt {
    /// The report of a run that took place.
    pub fn ran(self) -> Option<RunReport> {
        match self {
            Attempt::Ran(r) => Some(r),
            Attempt::Busy(_) => None,
        }
    }
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
    lease_ttl: std::time::Duration,
}

impl Engine {
    pub fn new(store: Store, redactor: Redactor) -> Self {
        Self {
            store,
            redactor,
            observer: None,
            activity: Arc::default(),
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }

    /// How long a run's hold on its source lasts without renewal
    /// (`[scheduler] lease_ttl`).
    pub fn with_lease_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.lease_ttl = ttl;
        self
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
    /// (then it ends after the page in flight), unless another live run
    /// holds the source's lease ([`Attempt::Busy`]). Never panics, never
    /// returns early without recording a run it started.
    pub async fn run(&self, job: &Job, source: &dyn Source, stop: &CancellationToken) -> Attempt {
        self.run_scheduled(job, source, stop, None).await
    }

    /// Same as [`Engine::run`] for a run answering a schedule tick that was
    /// due at `due_us` (µs since the epoch): the run's row keeps that
    /// instant, so that start lateness can be read from the database.
    pub async fn run_scheduled(
        &self,
        job: &Job,
        source: &dyn Source,
        stop: &CancellationToken,
        due_us: Option<i64>,
    ) -> Attempt {
        let key = &job.key;
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let span = tracing::info_span!("sync", tenant = %key.tenant, source = %key.source, run_id = %run_id);
        // Boxed: the state of a run (HTTP, JSON, commit futures) is several
        // KB, and the task of every configured source would otherwise carry
        // it inline while it waits for its next tick, i.e. almost always.
        let run = Box::pin(
            self.run_inner(job, source, stop, run_id.clone(), due_us)
                .instrument(span.clone()),
        );
        // A panic escaping the run (fetch panics are caught closer, see
        // `pages`) still ends as a failed run: recorded, its lease freed,
        // counted, and the caller (the source's runner) lives on.
        match std::panic::AssertUnwindSafe(run).catch_unwind().await {
            Ok(attempt) => attempt,
            Err(panic) => {
                let err = SyncError::Panicked {
                    key: key.clone(),
                    message: panic_message(panic.as_ref()),
                };
                let totals = RunRecord {
                    error: Some(self.redactor.scrub(&err.to_string())),
                    ..RunRecord::default()
                };
                span.in_scope(|| {
                    tracing::error!(
                        error = totals.error.as_deref().unwrap_or_default(),
                        "sync run panicked"
                    )
                });
                crate::metrics::run_panicked(key);
                self.record_end(job, run_id, RunOutcome::Failed, totals, Default::default())
                    .instrument(span)
                    .await
            }
        }
    }

    /// Records the end of a started run (its row, which also frees its
    /// lease, and its metrics) and reports it.
    async fn record_end(
        &self,
        job: &Job,
        run_id: String,
        outcome: RunOutcome,
        totals: RunRecord,
        elapsed: std::time::Duration,
    ) -> Attempt {
        if let Err(e) = self
            .store
            .finish_run(&job.key, &run_id, outcome, &totals)
            .await
        {
            tracing::error!(error = %e, "could not record the end of the run");
        }
        crate::metrics::run_finished(&job.key, job.kind, outcome, &totals, elapsed);
        Attempt::Ran(RunReport {
            run_id,
            outcome,
            totals,
            elapsed,
        })
    }

    async fn run_inner(
        &self,
        job: &Job,
        source: &dyn Source,
        stop: &CancellationToken,
        run_id: String,
        due_us: Option<i64>,
    ) -> Attempt {
        let (key, kind) = (&job.key, job.kind);
        let started = Instant::now();
        let _active = self.activity.begin();
        let mut totals = RunRecord::default();
        // The lease first: a run held elsewhere writes nothing, not even
        // its start (the runs of a source never overlap in its history).
        let cannot_start = |e: StoreError, totals: &mut RunRecord| {
            // The run cannot even be recorded (locked or full disk): report
            // it and do not fetch anything we could not store.
            let msg = self.redactor.scrub(&format!("storing failed: {e}"));
            tracing::error!(error = %msg, "sync run could not start");
            totals.error = Some(msg);
        };
        // The lease holds at least `ttl` from when it was asked for.
        let held_since = tokio::time::Instant::now();
        let lease = match self.store.acquire_lease(key, &run_id, self.lease_ttl).await {
            Ok(Acquired::Taken(lease)) => lease,
            Ok(Acquired::Held(holder)) => return Attempt::Busy(holder),
            Err(e) => {
                cannot_start(e, &mut totals);
                return Attempt::Ran(RunReport {
                    run_id,
                    outcome: RunOutcome::Failed,
                    totals,
                    elapsed: started.elapsed(),
                });
            }
        };
        if let Err(e) = self.store.start_run(key, kind, &run_id, due_us).await {
            cannot_start(e, &mut totals);
            if let Err(e) = self.store.release_lease(&lease).await {
                tracing::warn!(error = %e, "could not free the lease; it lapses by itself");
            }
            return Attempt::Ran(RunReport {
                run_id,
                outcome: RunOutcome::Failed,
                totals,
                elapsed: started.elapsed(),
            });
        }
        let lost = Held::new(held_since, lease.ttl);
        // Aborted when dropped: a run that unwinds or is dropped stops
        // renewing its lease (it lapses; the journal frees it on a finish).
        let renewing = (self.store.clone(), lease.clone());
        let _renewal = AbortOnDrop(tokio::spawn(
            keep_lease(
                move || {
                    let (store, lease) = renewing.clone();
                    async move { store.renew_lease(&lease).await }
                },
                lease.ttl,
                held_since,
                lost.clone(),
            )
            .instrument(tracing::Span::current()),
        ));
        let result = self
            .pages(&lease, job, source, stop, &lost, &mut totals)
            .await;
        drop(_renewal);
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
        self.record_end(job, run_id, outcome, totals, elapsed).await
    }

    /// The page loop. `Ok(true)`: done; `Ok(false)`: stopped by shutdown.
    async fn pages(
        &self,
        lease: &Lease,
        job: &Job,
        source: &dyn Source,
        stop: &CancellationToken,
        lost: &Held,
        totals: &mut RunRecord,
    ) -> Result<bool, SyncError> {
        let (key, kind) = (&lease.key, job.kind);
        let max_pages = job.max_pages;
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
        let engine = self.clone();
        let writer_lease = lease.clone();
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
                    let stats = engine
                        .commit(
                            Committer::Run(&writer_lease),
                            &writer_kind,
                            std::mem::take(&mut group),
                        )
                        .await?;
                    acc.upserted += stats.upserted;
                    acc.deleted += stats.deleted + stats.removed;
                    for &(received, done) in &shapes {
                        acc.pages += 1;
                        tracing::debug!(received, done, "page committed");
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
            // Positions this run fetched from (hashes of the progress it
            // sent), with how often: a page leading back to one fetched
            // twice already is a cycle (A→B→A→B→A page tokens, a cursor
            // that loops). Twice, not once: a source may restart its
            // listing once within a run (a refused page token) and pass
            // the same positions again.
            let mut passed: std::collections::HashMap<u64, u8> = Default::default();
            let mut fetched: u64 = 0;
            loop {
                if stop.is_cancelled() {
                    return Ok(false);
                }
                if lost.is_lost() {
                    return Err(FetchEnd::LeaseLost);
                }
                if fetched >= max_pages {
                    return Err(FetchEnd::TooManyPages(position(&progress)));
                }
                let visits = passed.entry(progress_hash(&progress)).or_default();
                *visits = visits.saturating_add(1);
                fetched += 1;
                // A lease taken over ends the fetch at once: nothing it
                // brings could be committed. A panic in the source's code
                // (on what an upstream sent) fails the run, not the task.
                let fetch = std::panic::AssertUnwindSafe(source.fetch(&progress)).catch_unwind();
                let page = tokio::select! {
                    page = fetch => page,
                    _ = lost.lost.cancelled() => return Err(FetchEnd::LeaseLost),
                };
                let page = match page {
                    Ok(Ok(page)) => page,
                    // Shutdown cut the request or its back-off short: the
                    // run is cancelled, not failed (deploys during a sync
                    // raise no alert).
                    Ok(Err(e)) if stop.is_cancelled() => {
                        tracing::debug!(error = %e, "fetch ended by shutdown");
                        return Ok(false);
                    }
                    Ok(Err(e)) => return Err(FetchEnd::Source(e)),
                    Err(panic) => return Err(FetchEnd::Panicked(panic_message(panic.as_ref()))),
                };
                let seen = passed.get(&progress_hash(&page.next_progress)).copied();
                if !page.done && seen.unwrap_or(0) >= 2 {
                    return Err(FetchEnd::Cycle(position(&page.next_progress)));
                }
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
        let (acc, written) = writer.await.map_err(SyncError::Writer)?;
        totals.pages = acc.pages;
        totals.upserted = acc.upserted;
        totals.deleted = acc.deleted;
        written?;
        fetched.map_err(|e: FetchEnd| match e {
            FetchEnd::LeaseLost => SyncError::LeaseLost(key.clone()),
            FetchEnd::TooManyPages(position) => SyncError::TooManyPages {
                key: key.clone(),
                max: max_pages,
                position,
            },
            FetchEnd::Cycle(position) => SyncError::Cycle {
                key: key.clone(),
                position,
            },
            FetchEnd::Panicked(message) => {
                crate::metrics::run_panicked(key);
                SyncError::Panicked {
                    key: key.clone(),
                    message,
                }
            }
            FetchEnd::Source(e) if e.is_credentials() => SyncError::Credentials {
                key: key.clone(),
                source: e,
            },
            FetchEnd::Source(e) => SyncError::Source(e),
        })
    }
}

/// Who commits: what the commit is fenced on and whether it saves progress.
#[derive(Clone, Copy)]
enum Committer<'a> {
    /// A run's pages and the progress after them, fenced on its lease.
    Run(&'a Lease),
    /// Records and reports that arrived outside a run (webhooks): the
    /// newer-wins rule makes them safe beside any run; progress untouched.
    Outside(&'a SourceKey),
}

impl Engine {
    /// Commits records and reports that arrived outside a run (a webhook
    /// call): the same upsert (an older version never replaces a newer
    /// one) and outbox rules as a run's pages, progress untouched.
    pub async fn commit_outside_run(
        &self,
        key: &SourceKey,
        kind: &str,
        page: Page,
    ) -> Result<PageStats, StoreError> {
        self.commit(Committer::Outside(key), kind, vec![page]).await
    }

    /// The one path by which pages become durable, and the page observer
    /// learns of them.
    async fn commit(
        &self,
        by: Committer<'_>,
        kind: &str,
        pages: Vec<Page>,
    ) -> Result<PageStats, StoreError> {
        // Sized only for an observer: runs without one allocate nothing more.
        let sizes: Option<Vec<usize>> = self
            .observer
            .as_ref()
            .map(|_| pages.iter().map(Page::items).collect());
        let (key, stats) = match by {
            Committer::Run(lease) => (
                &lease.key,
                self.store.commit_pages(lease, kind, pages).await?,
            ),
            Committer::Outside(key) => {
                let page = pages.into_iter().next().unwrap_or_default();
                (key, self.store.commit_records(key, kind, page).await?)
            }
        };
        if let (Some(obs), Some(sizes)) = (&self.observer, sizes) {
            for received in sizes {
                obs(key, received);
            }
        }
        Ok(stats)
    }
}

/// Why the fetching side of a run stopped early.
enum FetchEnd {
    Source(SourceError),
    LeaseLost,
    /// The page cap was reached at this position.
    TooManyPages(String),
    /// A page led back to this position, already fetched from.
    Cycle(String),
    Panicked(String),
}

/// Where a run stands, for messages: the kind's progress state (page
/// tokens, cursors, watermarks: positions, not credentials), cut short.
fn position(progress: &crate::model::Progress) -> String {
    const MAX: usize = 200;
    let text = progress.state.to_string();
    if text.chars().count() <= MAX {
        text
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

fn progress_hash(progress: &crate::model::Progress) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    progress.phase.as_str().hash(&mut h);
    progress.state.to_string().hash(&mut h);
    h.finish()
}

/// The text of a panic's payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

impl From<SourceError> for FetchEnd {
    fn from(e: SourceError) -> Self {
        FetchEnd::Source(e)
    }
}

/// A task that ends when its handle is dropped (a plain `JoinHandle`
/// detaches it instead).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews `lease` every third of its ttl while the run lives (the task is
/// aborted when it ends); cancels `lost`, which stops the run's requests
/// upstream, once another run took the lease over, or when no renewal
/// succeeded in time. A renewal that fails (a busy disk, a database out of
/// reach) is retried at the next turn; but the lease is sure to hold only
/// until `ttl` after the last renewal that succeeded was *sent* (the
/// database judges the expiry from when it ran the statement, later), so
/// the run gives up [`give_up_margin`] before that: a replica cut off from
/// its database never calls the upstream on a lease another may hold. The
/// fence keeps the store safe whatever happens; this keeps the upstream
/// from seeing two runs of one source.
async fn keep_lease<F, Fut>(
    mut renew: F,
    ttl: Duration,
    held_since: tokio::time::Instant,
    held: Held,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, StoreError>>,
{
    let every = crate::store::renew_every(ttl);
    let margin = give_up_margin(ttl);
    let mut valid_until = held_since + ttl;
    let mut last_try = held_since;
    loop {
        let give_up = valid_until.checked_sub(margin).unwrap_or(valid_until);
        held.set_give_up(give_up);
        tokio::time::sleep_until((last_try + every).min(give_up)).await;
        if tokio::time::Instant::now() >= give_up {
            tracing::warn!(
                "no lease renewal succeeded for {}; stopping this run before the lease lapses",
                humantime::format_duration(
                    tokio::time::Instant::now().saturating_duration_since(last_try)
                )
            );
            held.lost.cancel();
            return;
        }
        last_try = tokio::time::Instant::now();
        match tokio::time::timeout_at(give_up, renew()).await {
            Ok(Ok(true)) => valid_until = last_try + ttl,
            Ok(Ok(false)) => {
                tracing::warn!("another run took this source's lease over; stopping this run");
                held.lost.cancel();
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "could not renew the lease; will retry"),
            // The loop gives up at the top: the deadline passed.
            Err(_) => tracing::warn!("the lease renewal did not answer in time"),
        }
    }
}

/// Whether a run may still call its upstream: not once its lease was
/// taken over (`lost`, cancelled by [`keep_lease`]), nor past the instant
/// [`keep_lease`] would give up at. The run checks the instant itself
/// before each request: a process paused (SIGSTOP, a frozen VM) past it
/// wakes with its renewal task not yet run, and must not send one more
/// request first.
#[derive(Clone)]
struct Held {
    lost: CancellationToken,
    give_up: Arc<std::sync::Mutex<tokio::time::Instant>>,
}

impl Held {
    fn new(held_since: tokio::time::Instant, ttl: Duration) -> Self {
        let margin = give_up_margin(ttl);
        let until = held_since + ttl;
        Self {
            lost: CancellationToken::new(),
            give_up: Arc::new(std::sync::Mutex::new(
                until.checked_sub(margin).unwrap_or(until),
            )),
        }
    }

    fn set_give_up(&self, at: tokio::time::Instant) {
        *self.give_up.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    /// True once the run must stop calling the upstream.
    fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
            || tokio::time::Instant::now()
                >= *self.give_up.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long before its lease could lapse a run that could not renew it
/// stops: a sixth of the ttl (5 s of the default 30 s), at least 50 ms.
fn give_up_margin(ttl: Duration) -> Duration {
    (ttl / 6).max(Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use super::*;
    use crate::model::{Phase, Progress, Record};

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
        fn start_run(&self, _stored: Option<crate::model::Progress>) -> Progress {
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
        let job = Job {
            key: key.clone(),
            kind: "test",
            max_pages: 1_000,
        };
        let report = engine
            .run(&job, &source, &CancellationToken::new())
            .await
            .ran()
            .expect("the lease is free");
        assert_eq!(report.outcome, crate::model::RunOutcome::Success);
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

    /// A source that serves pages from a script: each fetch takes the next
    /// behaviour.
    struct Scripted {
        script: std::sync::Mutex<Vec<Step>>,
        stop: CancellationToken,
    }

    enum Step {
        /// A page with one record leading to this position, not done.
        Page(&'static str),
        Panic,
        /// Cancels the run's stop token, then fails as the HTTP layer does
        /// when shutdown cuts a back-off short.
        ShutdownDuringBackoff,
    }

    #[async_trait::async_trait]
    impl Source for Scripted {
        fn start_run(&self, _stored: Option<Progress>) -> Progress {
            Progress::default()
        }

        async fn fetch(&self, _progress: &Progress) -> Result<Page, SourceError> {
            let step = {
                let mut script = self.script.lock().expect("script");
                if script.is_empty() {
                    Step::Page("fresh")
                } else {
                    script.remove(0)
                }
            };
            match step {
                Step::Page(at) => Ok(Page {
                    upserts: vec![Record {
                        id: format!("{at}-{}", uuid::Uuid::new_v4()),
                        updated_at: "2024-01-01T00:00:00Z".into(),
                        updated_us: 1_704_067_200_000_000,
                        data: crate::sources::payload::from_value(&serde_json::json!({}))
                            .expect("json"),
                    }],
                    next_progress: Progress {
                        phase: Phase::Full,
                        state: serde_json::json!({
                            "pageToken": if at == "fresh" { uuid::Uuid::new_v4().to_string() } else { at.to_string() }
                        }),
                    },
                    ..Page::default()
                }),
                Step::Panic => panic!("overflow when adding duration to instant"),
                Step::ShutdownDuringBackoff => {
                    self.stop.cancel();
                    Err(SourceError::Http(crate::http::HttpError::Cancelled))
                }
            }
        }
    }

    async fn run_script(steps: Vec<Step>, max_pages: u64) -> (tempfile::TempDir, Store, RunReport) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.expect("open");
        let engine = Engine::new(store.clone(), Redactor::new(Vec::new()));
        let stop = CancellationToken::new();
        let source = Scripted {
            script: std::sync::Mutex::new(steps),
            stop: stop.clone(),
        };
        let job = Job {
            key: SourceKey::new("acme", "team"),
            kind: "test",
            max_pages,
        };
        let report = engine
            .run(&job, &source, &stop)
            .await
            .ran()
            .expect("the lease is free");
        (dir, store, report)
    }

    async fn stored_outcome(store: &Store) -> (String, Option<String>) {
        let st = store
            .source_status(&SourceKey::new("acme", "team"), "test")
            .await
            .expect("status");
        (st.last_outcome.expect("a finished run"), st.last_error)
    }

    #[tokio::test]
    async fn a_page_token_cycle_fails_the_run_naming_the_source_and_the_token() {
        let steps = vec![
            Step::Page("A"),
            Step::Page("B"),
            Step::Page("A"),
            Step::Page("B"),
            Step::Page("A"),
        ];
        let (_d, store, report) = run_script(steps, 1_000).await;
        assert_eq!(report.outcome, RunOutcome::Failed);
        let error = report.totals.error.unwrap_or_default();
        assert!(error.contains("acme/team"), "{error}");
        assert!(error.contains(r#"{"pageToken":"A"}"#), "{error}");
        assert!(error.contains("already passed"), "{error}");
        // The pages before the cycle were stored as usual (A and B passed
        // twice: a source may restart its listing once in a run).
        assert_eq!(report.totals.pages, 4);
        assert_eq!(stored_outcome(&store).await.0, "failed");
    }

    #[tokio::test]
    async fn endless_fresh_tokens_stop_at_max_pages_per_run() {
        let (_d, store, report) = run_script(Vec::new(), 25).await;
        assert_eq!(report.outcome, RunOutcome::Failed);
        let error = report.totals.error.unwrap_or_default();
        assert!(error.contains("acme/team: more than 25 pages"), "{error}");
        assert!(error.contains("max_pages_per_run"), "{error}");
        assert_eq!(report.totals.pages, 25);
        assert_eq!(stored_outcome(&store).await.0, "failed");
    }

    #[tokio::test]
    async fn a_panicking_fetch_fails_the_run_records_it_and_frees_the_lease() {
        let steps = vec![Step::Page("A"), Step::Panic];
        let (_d, store, report) = run_script(steps, 1_000).await;
        assert_eq!(report.outcome, RunOutcome::Failed);
        let error = report.totals.error.unwrap_or_default();
        assert!(
            error.contains("acme/team: the sync panicked: overflow"),
            "{error}"
        );
        let (outcome, stored) = stored_outcome(&store).await;
        assert_eq!(outcome, "failed");
        assert_eq!(stored.as_deref(), Some(error.as_str()));
        assert_eq!(
            store
                .lease_holder(&SourceKey::new("acme", "team"))
                .await
                .expect("holder"),
            None,
            "the lease is free for the next tick"
        );
    }

    #[tokio::test]
    async fn a_shutdown_during_a_back_off_cancels_the_run_instead_of_failing_it() {
        let steps = vec![Step::Page("A"), Step::ShutdownDuringBackoff];
        let (_d, store, report) = run_script(steps, 1_000).await;
        assert_eq!(
            report.outcome,
            RunOutcome::Cancelled,
            "{:?}",
            report.totals.error
        );
        assert_eq!(report.totals.error, None);
        assert_eq!(
            report.totals.pages, 1,
            "the page before the shutdown is kept"
        );
        assert_eq!(
            stored_outcome(&store).await,
            ("cancelled".to_string(), None)
        );
    }

    /// Runs `keep_lease` with `renew` for a 30 s lease (in paused time);
    /// when `lost` was cancelled, measured from the lease's start.
    async fn lease_kept_until<F, Fut>(renew: F, within: Duration) -> Option<Duration>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<bool, StoreError>> + Send + 'static,
    {
        let ttl = Duration::from_secs(30);
        let start = tokio::time::Instant::now();
        let held = Held::new(start, ttl);
        let task = tokio::spawn(keep_lease(renew, ttl, start, held.clone()));
        let cancelled = tokio::time::timeout(within, held.lost.cancelled())
            .await
            .is_ok();
        task.abort();
        cancelled.then(|| start.elapsed())
    }

    /// A process paused past its give-up instant wakes with its renewal
    /// task not yet run (nothing cancelled `lost`): the run sees the lease
    /// as lost by the clock alone and sends no request.
    #[tokio::test(start_paused = true)]
    async fn a_run_woken_past_its_give_up_instant_counts_its_lease_as_lost() {
        let ttl = Duration::from_secs(30);
        let held = Held::new(tokio::time::Instant::now(), ttl);
        assert!(!held.is_lost());
        tokio::time::advance(ttl - give_up_margin(ttl) - Duration::from_millis(1)).await;
        assert!(!held.is_lost(), "still within the lease");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(held.is_lost(), "past the give-up instant");
        assert!(!held.lost.is_cancelled(), "by the clock alone");
        // A renewal that succeeded moves the instant on.
        held.set_give_up(tokio::time::Instant::now() + ttl);
        assert!(!held.is_lost());
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_whose_renewals_fail_stops_before_its_lease_can_lapse() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let stopped = lease_kept_until(
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Err(StoreError::Closed) }
            },
            Duration::from_secs(120),
        )
        .await
        .expect("the run stopped");
        assert!(
            stopped < Duration::from_secs(30)
                && stopped >= Duration::from_secs(30) - give_up_margin(Duration::from_secs(30)),
            "stopped after {stopped:?}: before the 30 s lease could lapse, not long before"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "renewals at 10 s and 20 s were tried"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_whose_renewal_hangs_stops_before_its_lease_can_lapse() {
        let stopped = lease_kept_until(
            std::future::pending::<Result<bool, StoreError>>,
            Duration::from_secs(120),
        )
        .await
        .expect("the run stopped");
        assert!(
            stopped < Duration::from_secs(30),
            "stopped after {stopped:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_whose_renewals_succeed_keeps_its_lease_and_one_taken_over_stops() {
        assert_eq!(
            lease_kept_until(|| async { Ok(true) }, Duration::from_secs(300)).await,
            None,
            "renewed for ten ttls"
        );
        let stopped = lease_kept_until(|| async { Ok(false) }, Duration::from_secs(120))
            .await
            .expect("taken over");
        assert_eq!(stopped, Duration::from_secs(10), "at the first renewal");
    }
}
