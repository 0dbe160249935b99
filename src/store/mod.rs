//! Durable state: records, per-source progress, run history, leases and
//! the import-report outbox, behind one interface with one implementation
//! per database: [`sqlite`] (the embedded default, one machine) and
//! [`postgres`] (a shared database, replicas), chosen by the URL's scheme.
//!
//! Each backend has its own SQL and migrations (`migrations/<backend>/`):
//! no lowest-common-denominator layer. The interface is the list in
//! [`interface!`] below: every backend implements each of its methods
//! with the same signature, and [`Store`] forwards to the one it holds.

mod batch;
#[cfg(test)]
mod behaviour;
mod changes;
mod copy;
mod error;
mod identity;
mod postgres;
mod schedule;
mod schema;
mod sqlite;
#[cfg(test)]
pub(crate) mod test_db;
mod types;

use std::time::Duration;

use crate::model::{Page, Progress, RunOutcome, RunRecord, SourceKey};

use changes::Head;
pub use changes::{ChangeScope, Changes, MAX_CHANGES_PER_PAGE};
pub use copy::{COPY_BATCH, Copied, CopyAfter, CopyRow, Table};
pub use error::StoreError;
pub use identity::pid_alive;
pub use schedule::SharedSchedule;
pub(crate) use types::INTERRUPTED;
pub use types::{
    Acquired, ExportRow, Forgotten, HEARTBEAT, Holder, KEEP_LAST_RUNS, Lease, PageStats,
    PendingReport, ReplicaStatus, SourceStatus, renew_every,
};

/// How long a statement waits for a lock held by another connection or
/// process, unless the config says otherwise.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the database is and how to reach it: `[storage]` as the commands
/// use it. The password is kept apart from the URL so that the URL can be
/// shown in messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `sqlite://PATH` (the embedded default) or `postgres://USER@HOST/DB`.
    pub url: String,
    /// The database password (Postgres), from a secret reference.
    pub password: Option<String>,
    /// Connections the process opens at most (Postgres; SQLite keeps one
    /// writer and a few readers).
    pub pool_size: u32,
    /// How long a write waits for a lock another process holds.
    pub busy_timeout: Duration,
}

impl Target {
    /// A target with the defaults, for tests and tools that only have a URL.
    pub fn url(url: &str) -> Self {
        Self {
            url: url.to_string(),
            password: None,
            pool_size: DEFAULT_POOL_SIZE,
            busy_timeout: BUSY_TIMEOUT,
        }
    }
}

/// Why `url` names no database this binary can open (`None`: it does),
/// without connecting: the config loader's check of `storage.database`.
/// The reason never quotes the URL.
pub fn database_url_problem(url: &str) -> Option<String> {
    if postgres::is_postgres_url(url) {
        return postgres::url_problem(url);
    }
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(|r| r.split('?').next().unwrap_or_default());
    match rest {
        Some(r) if !r.is_empty() && r != ":memory:" => None,
        _ => Some(
            "expected sqlite://PATH (a file; :memory: is not allowed) or \
             postgres://USER@HOST[:PORT]/DB"
                .into(),
        ),
    }
}

/// [`types::replica_list`], for the tests of what `status` prints.
#[cfg(test)]
pub(crate) fn replica_list_for_tests(
    rows: Vec<(String, i64, i64, i64)>,
    now_us: i64,
) -> Vec<ReplicaStatus> {
    types::replica_list(rows, now_us)
}

/// Connections a Postgres store opens at most unless `[storage] pool_size`
/// says otherwise.
pub const DEFAULT_POOL_SIZE: u32 = 10;

/// How a command opens the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Creates the database (SQLite: file and folder) if missing, migrates it.
    Create,
    /// Migrates an existing database, never creates one (`forget`, `reset`).
    Existing,
    /// Reads only (`status`, `export`): never creates, migrates or writes;
    /// a schema other than this binary's is [`StoreError::Schema`].
    ReadOnly,
}

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    /// Per source, bumped after each commit that queued import-state
    /// reports, so that its idle reporter waits for it instead of polling
    /// the outbox.
    queued: std::sync::Arc<std::sync::Mutex<QueuedSignals>>,
    /// Bumped after each commit of this process that changed records:
    /// what a long-polling change-feed reader waits for.
    committed: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

/// The database behind a [`Store`].
#[derive(Clone, Debug)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// The [`Store::outbox_queued`] signals, by source.
type QueuedSignals = std::collections::BTreeMap<SourceKey, tokio::sync::watch::Sender<u64>>;

impl Store {
    fn with(backend: Backend) -> Self {
        Self {
            backend,
            queued: Default::default(),
            committed: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Opens (creating file and folder if missing) and migrates the database
    /// at `url`, with the defaults of [`Target::url`].
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::connect(&Target::url(url), Mode::Create).await
    }

    /// Opens the database `target` names, as `mode` says; the URL's scheme
    /// picks the backend.
    pub async fn connect(target: &Target, mode: Mode) -> Result<Self, StoreError> {
        if postgres::is_postgres_url(&target.url) {
            let store = postgres::PgStore::connect(target, mode).await?;
            return Ok(Self::with(Backend::Postgres(store)));
        }
        let backend = match mode {
            Mode::Create => {
                sqlite::SqliteStore::open_with(&target.url, target.busy_timeout).await?
            }
            Mode::Existing => {
                sqlite::SqliteStore::open_existing(&target.url, target.busy_timeout).await?
            }
            Mode::ReadOnly => sqlite::SqliteStore::open_read_only(&target.url).await?,
        };
        Ok(Self::with(Backend::Sqlite(backend)))
    }

    /// The SQLite backend, for its own tests of its internals.
    #[cfg(test)]
    pub(crate) fn sqlite(&self) -> &sqlite::SqliteStore {
        match &self.backend {
            Backend::Sqlite(s) => s,
            Backend::Postgres(_) => panic!("a SQLite test opened a Postgres store"),
        }
    }

    /// Where the data lives, for messages (never a password).
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Sqlite(s) => s.path().display().to_string(),
            Backend::Postgres(s) => s.location().to_string(),
        }
    }

    /// Flushes what the backend buffers and closes every connection.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(s) => s.close().await,
            Backend::Postgres(s) => s.close().await,
        }
    }

    /// Changes after every commit of this process that queued import-state
    /// reports for `key`: what its idle reporter waits for. Reports queued
    /// by another process (a `synchro sync` beside the daemon) are not seen
    /// here.
    pub fn outbox_queued(&self, key: &SourceKey) -> tokio::sync::watch::Receiver<u64> {
        let mut map = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| tokio::sync::watch::Sender::new(0))
            .subscribe()
    }

    /// Changes after every commit of this process that changed records
    /// (the change feed's long polls wait on it). Commits of other
    /// processes (replicas, a `synchro sync`) are not seen here: readers
    /// poll for those.
    pub fn records_committed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// After a commit: wakes the readers waiting for changes if it changed
    /// records, and the reporter of `key` if it queued reports.
    fn committed(&self, key: &SourceKey, stats: &PageStats) {
        if stats.upserted + stats.deleted + stats.removed > 0 {
            self.committed.send_modify(|n| *n = n.wrapping_add(1));
        }
        if stats.reports > 0 {
            self.reports_queued(key);
        }
    }

    /// Wakes the reporter of `key`, if one listens.
    fn reports_queued(&self, key: &SourceKey) {
        let map = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(signal) = map.get(key) {
            signal.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Commits consecutive pages of one run and the progress that follows
    /// the last one, in ONE transaction (a group commit): the atomicity rule
    /// holds for the group as it does for a page, and a crash at worst
    /// refetches the group. The transaction first checks that `lease` is
    /// still the run's (the fence) and writes nothing if it was taken over
    /// ([`StoreError::LeaseLost`]). Returns what the pages changed together.
    /// Takes the pages by value: their payloads move into the statements
    /// uncopied.
    pub async fn commit_pages(
        &self,
        lease: &Lease,
        kind: &str,
        pages: Vec<Page>,
    ) -> Result<PageStats, StoreError> {
        let stats = match &self.backend {
            Backend::Sqlite(s) => s.commit_pages(lease, kind, pages).await?,
            Backend::Postgres(s) => s.commit_pages(lease, kind, pages).await?,
        };
        self.committed(&lease.key, &stats);
        Ok(stats)
    }

    /// Commits records and reports that arrived outside a sync (webhooks):
    /// same upsert and outbox rules, progress untouched.
    pub async fn commit_records(
        &self,
        key: &SourceKey,
        kind: &str,
        page: Page,
    ) -> Result<PageStats, StoreError> {
        let stats = match &self.backend {
            Backend::Sqlite(s) => s.commit_records(key, kind, page).await?,
            Backend::Postgres(s) => s.commit_records(key, kind, page).await?,
        };
        self.committed(key, &stats);
        Ok(stats)
    }

    /// Claims up to `limit` reports of a source (oldest first) that are due
    /// at `now_us` and that no live claim holds, for this process until
    /// `until_us`, in one write: two processes (the daemon and a `synchro
    /// sync`, or replicas) never send the same report. Sending one ends its
    /// claim ([`Store::report_sent`], [`Store::report_retry`],
    /// [`Store::report_refused`]), not sending it gives the claim back
    /// ([`Store::release_claims`]); the claim of a process that died first
    /// lapses at `until_us`.
    pub async fn claim_reports(
        &self,
        key: &SourceKey,
        now_us: i64,
        until_us: i64,
        limit: i64,
    ) -> Result<Vec<PendingReport>, StoreError> {
        let claimed = self.claim_due(key, now_us, until_us, limit).await?;
        if !claimed.is_empty() {
            return Ok(claimed);
        }
        // Nothing free: claims of a process of this node that died (a
        // `sync` killed mid-send) are given up now rather than at their
        // lapse.
        if self.release_dead_claims(key, now_us).await? > 0 {
            return self.claim_due(key, now_us, until_us, limit).await;
        }
        Ok(Vec::new())
    }

    /// The oldest claimable report, as [`Store::claim_reports`] with a
    /// limit of one (store tests).
    #[cfg(test)]
    pub(crate) async fn claim_report(
        &self,
        key: &SourceKey,
        now_us: i64,
        until_us: i64,
    ) -> Result<Option<PendingReport>, StoreError> {
        Ok(self
            .claim_reports(key, now_us, until_us, 1)
            .await?
            .into_iter()
            .next())
    }
}

/// The store's interface: for each method, a [`Store`] method that forwards
/// to the backend's method of the same name and signature (a backend
/// missing one, or with another signature, does not compile).
macro_rules! interface {
    ($(
        $(#[$attr:meta])*
        $vis:vis async fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;
    )*) => {
        impl Store {
            $(
                $(#[$attr])*
                $vis async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match &self.backend {
                        Backend::Sqlite(s) => s.$name($($arg),*).await,
                        Backend::Postgres(s) => s.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

interface! {
    /// A large sync starts: widen the writer's page cache (once for all the
    /// large syncs running at the same time).
    pub async fn widen_cache(&self) -> Result<(), StoreError>;
    /// A large sync that widened the cache ended: the last one narrows it and
    /// frees what SQLite no longer needs.
    pub async fn narrow_cache(&self) -> Result<(), StoreError>;
    /// Frees the writer's page cache (the daemon went idle): pages are read
    /// back from the OS cache when the next run needs them.
    pub async fn release_memory(&self) -> Result<(), StoreError>;
    /// The writer's automatic checkpoint threshold in pages (tests).
    pub async fn checkpoint_pages(&self) -> Result<i64, StoreError>;
    /// The writer's cache size in KiB (tests).
    pub async fn cache_kib(&self) -> Result<i64, StoreError>;
    /// Streams the records of `sources` (every stored source if empty) to
    /// `sink`, in order.
    pub async fn export(&self, sources: &[SourceKey], include_deleted: bool, sink: impl FnMut(ExportRow) -> std::io::Result<()>) -> Result<u64, StoreError>;
    /// Up to `limit` changes after `since` in `scope`, in change order
    /// (the change feed); [`StoreError::ResyncNeeded`] when the reader
    /// cannot continue from `since`.
    pub async fn changes(&self, since: i64, scope: &ChangeScope, limit: i64) -> Result<Changes, StoreError>;
    /// One batch of [`Store::purge_tombstones`]: up to `PURGE_BATCH`
    /// tombstones stored before `cutoff`, in one transaction that also
    /// raises the counter's horizon and cutoff; returns how many went.
    pub(crate) async fn purge_tombstone_batch(&self, cutoff: i64) -> Result<u64, StoreError>;
    /// Every source with something stored (records, progress, runs or
    /// import reports), in name order. Scans the tables' key indexes: for
    /// listings and error messages, not for every command.
    pub async fn stored_sources(&self) -> Result<Vec<SourceKey>, StoreError>;
    /// Whether anything is stored for `key` (one index probe per table).
    pub async fn is_stored(&self, key: &SourceKey) -> Result<bool, StoreError>;
    /// Deletes the records (tombstones included), progress, runs and
    /// import reports of `sources`, all in one transaction: either every
    /// source is forgotten or nothing is. Says what went, per source.
    pub async fn forget_sources(&self, sources: &[SourceKey]) -> Result<Vec<(SourceKey, Forgotten)>, StoreError>;
    /// Asks for `key`'s lease for the run `run_id`, for `ttl`.
    pub async fn acquire_lease(&self, key: &SourceKey, run_id: &str, ttl: Duration) -> Result<Acquired, StoreError>;
    /// Extends a held lease by its ttl from now. `Ok(false)`: the lease is
    /// no longer ours (taken over): the run must stop.
    pub async fn renew_lease(&self, lease: &Lease) -> Result<bool, StoreError>;
    /// Frees a lease this run holds (a no-op if it was taken over). Runs end
    /// through the journal, which frees theirs in the same statement as the
    /// end of the run; this is for a run that never started.
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError>;
    /// Who holds `key`'s lease now, if anyone (an expired lease is free).
    pub async fn lease_holder(&self, key: &SourceKey) -> Result<Option<Holder>, StoreError>;
    /// While commits are failing, tries a 1 MiB write (at most once a
    /// second): whether the database takes writes again, e.g. once a full
    /// disk has space. Returns whether commits are still failing.
    pub async fn still_failing(&self) -> bool;
    /// Up to `limit` rows of `table` after `after`, in the order
    /// `copy-store` reads it (see [`Store::copy_to`]).
    pub(crate) async fn copy_out(&self, table: Table, after: Option<CopyAfter>, limit: i64) -> Result<Vec<CopyRow>, StoreError>;
    /// Writes rows `copy-store` read from another database, in one
    /// transaction; outbox rows arrive unclaimed.
    pub(crate) async fn copy_in(&self, rows: Vec<CopyRow>) -> Result<u64, StoreError>;
    /// The change counter (`copy-store`).
    pub(crate) async fn change_counter(&self) -> Result<Head, StoreError>;
    /// Raises the change counter to at least another database's
    /// (`copy-store`: positions of that database's readers stay valid).
    pub(crate) async fn raise_change_counter(&self, to: Head) -> Result<(), StoreError>;
    /// A source whose lease a live run holds now, with its holder, if any.
    pub(crate) async fn any_lease_holder(&self) -> Result<Option<(SourceKey, Holder)>, StoreError>;
    /// This daemon is alive: refreshes its row in `replicas` (every
    /// [`HEARTBEAT`] while `run` runs).
    pub async fn heartbeat(&self, started_us: i64) -> Result<(), StoreError>;
    /// This daemon stops: removes its row.
    pub async fn leave(&self) -> Result<(), StoreError>;
    /// The daemons that use this database, live first, then by host and pid.
    pub async fn replicas(&self) -> Result<Vec<ReplicaStatus>, StoreError>;
    /// The newest migration applied to the database (`check`).
    pub async fn schema_version(&self) -> Result<i64, StoreError>;
    /// A cheap read that proves the database answers (`check`, `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError>;
    /// Pending reports of a source whose next attempt is due at `now_us`,
    /// oldest first, claimed or not (store tests; the reporter claims them,
    /// see [`Store::claim_reports`]).
    #[cfg(test)]
    pub(crate) async fn due_reports(&self, key: &SourceKey, now_us: i64, limit: i64) -> Result<Vec<PendingReport>, StoreError>;
    /// Claims up to `limit` reports of a source (oldest first) that are due
    /// at `now_us` and that no live claim holds, in one write (see
    /// [`Store::claim_reports`]).
    pub(crate) async fn claim_due(&self, key: &SourceKey, now_us: i64, until_us: i64, limit: i64) -> Result<Vec<PendingReport>, StoreError>;
    /// Frees the live claims on `key`'s due reports held by processes of
    /// this node that are gone; returns how many claimers were.
    pub(crate) async fn release_dead_claims(&self, key: &SourceKey, now_us: i64) -> Result<u64, StoreError>;
    /// Gives back claims of this process on reports it did not send (it
    /// stopped, or the endpoint failed): they are due again at once for
    /// whoever comes next, instead of after the claim's lapse.
    pub async fn release_claims(&self, ids: &[i64]) -> Result<(), StoreError>;
    /// Whether a report of the source is due at `now_us`, claimed or not
    /// (a claim may be a dead process's, which [`Store::claim_report`]
    /// releases). Read on the reader pool: an idle reporter's check costs
    /// the writer nothing.
    pub async fn reports_due(&self, key: &SourceKey, now_us: i64) -> Result<bool, StoreError>;
    /// Pending reports of a source, due or not.
    pub async fn pending_report_count(&self, key: &SourceKey) -> Result<i64, StoreError>;
    /// When the earliest pending report of a source is due (µs), if any: a
    /// report another process claimed is due when its claim lapses.
    pub async fn next_report_due(&self, key: &SourceKey) -> Result<Option<i64>, StoreError>;
    /// The upstream accepted the report: never send it again.
    pub async fn report_sent(&self, id: i64, now_us: i64) -> Result<(), StoreError>;
    /// A transient failure: try again at `next_at_us`. Only while this
    /// process still holds the claim: one whose claim lapsed (another may be
    /// sending the report now) changes nothing.
    pub async fn report_retry(&self, id: i64, error: &str, next_at_us: i64) -> Result<(), StoreError>;
    /// The upstream refused the report for good (e.g. unknown request):
    /// keep it, visible in `status`, but stop sending it. Only while this
    /// process still holds the claim.
    pub async fn report_refused(&self, id: i64, error: &str) -> Result<(), StoreError>;
    /// Commits a page and the progress that follows it, atomically (store
    /// tests; runs commit through [`Store::commit_pages`]).
    #[cfg(test)]
    pub(crate) async fn commit_page(&self, key: &SourceKey, kind: &str, page: &Page) -> Result<PageStats, StoreError>;
    /// Consecutive pages, unfenced (store tests).
    #[cfg(test)]
    pub(crate) async fn commit_pages_unfenced(&self, key: &SourceKey, kind: &str, pages: Vec<Page>) -> Result<PageStats, StoreError>;
    /// The progress stored for a source, if any. Read through the reader
    /// pool: a statement outside a transaction sees every committed page,
    /// and the one writer connection stays free for commits (with thousands
    /// of runs due at once, its round trips bound scheduling lateness).
    pub async fn load_progress(&self, key: &SourceKey) -> Result<Option<Progress>, StoreError>;
    /// Forgets a source's progress: the next sync is a full resync. Records
    /// stay until that resync replaces them; reports already sent stay sent.
    pub async fn reset_progress(&self, key: &SourceKey) -> Result<bool, StoreError>;
    /// Deletes the runs that started more than `max_age` ago, keeping per
    /// source the newest `keep_last`, the latest success and every
    /// `running` run. Returns how many were deleted.
    pub async fn prune_runs(&self, max_age: Duration, keep_last: usize) -> Result<u64, StoreError>;
    /// Records the start of a run. Runs of the same source left `running` by
    /// a killed process are closed as failed ("interrupted"). `scheduled_at`
    /// is the instant a scheduled run was due (µs), `None` for a run nobody
    /// scheduled: `started_at - scheduled_at` is its start lateness.
    pub async fn start_run(&self, key: &SourceKey, kind: &str, run_id: &str, scheduled_at: Option<i64>) -> Result<(), StoreError>;
    /// Records how a run ended, and frees its lease if it still holds it.
    pub async fn finish_run(&self, key: &SourceKey, run_id: &str, outcome: RunOutcome, totals: &RunRecord) -> Result<(), StoreError>;
    /// How many runs of `key` succeeded (demo and tests wait on it).
    pub async fn successful_runs(&self, key: &SourceKey) -> Result<usize, StoreError>;
    /// The status of one source (defaults where nothing is stored yet).
    pub async fn source_status(&self, key: &SourceKey, kind: &str) -> Result<SourceStatus, StoreError>;
}
