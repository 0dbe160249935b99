//! Durable state in SQLite: records, per-source progress, run history and
//! the import-report outbox.
//!
//! One writer connection (WAL, `BEGIN IMMEDIATE`) so that two writers never
//! deadlock on a lock upgrade; a small pool of readers for `status`, `export`,
//! the HTTP surface and the reporter's outbox queries, so that reads never
//! queue in front of a commit (a webhook answers only after its commit).
//! `busy_timeout` absorbs a second process (a manual `synchro sync` next to
//! the daemon).

mod cache;
mod export;
mod journal;
mod lease;
mod outbox;
mod progress;
mod records;
mod retention;
mod runs;
mod status;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::config::SourceKey;

pub use cache::{WIDE_CHECKPOINT_PAGES, WIDE_KIB};
pub use export::ExportRow;
pub use lease::{Acquired, Holder, Lease, me as this_process, pid_alive, renew_every};
pub use outbox::PendingReport;
pub use records::{PageStats, UPSERT_CONFLICT};
pub use retention::KEEP_LAST_RUNS;
pub use runs::{RunOutcome, RunRecord};
pub use status::SourceStatus;

/// Why the store failed. Messages name the database, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bad database URL {0:?}: expected sqlite://PATH")]
    BadUrl(String),
    #[error("cannot create the database folder {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the database {path}: {source}")]
    Open { path: String, source: sqlx::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {}", describe_sql(.0))]
    Sql(#[from] sqlx::Error),
    #[error("writing output failed: {0}")]
    Write(std::io::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the database is closed")]
    Closed,
    /// The run's lease moved to another run (this one was paused or cut off
    /// past its expiry): the commit was rolled back, nothing of it stored.
    #[error("lost the lease of {key} (epoch {epoch}) to another run; this commit was rolled back")]
    LeaseLost { key: SourceKey, epoch: i64 },
}

/// Adds what an operator should check to the SQLite errors that mean
/// "the machine, not synchro": a full disk or file-size limit, a lock held
/// by another process, a read-only file.
fn describe_sql(e: &sqlx::Error) -> String {
    let code = match e {
        sqlx::Error::Database(d) => d.code().and_then(|c| c.parse::<i32>().ok()),
        _ => None,
    };
    // Primary result code: the low byte of the extended one.
    let hint = match code.map(|c| c & 0xff) {
        Some(13) => Some("the disk is full"),
        Some(10) => Some("a write failed: disk full, quota or file-size limit?"),
        Some(5) | Some(6) => Some("the database is locked by another process"),
        Some(8) => Some("the database file or its folder is read-only"),
        _ => None,
    };
    match hint {
        Some(h) => format!("{h} ({e})"),
        None => e.to_string(),
    }
}

/// How long an unused reader connection stays open.
const READER_IDLE: Duration = Duration::from_secs(10);

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
    path: PathBuf,
    /// Per source, bumped after each commit that queued import-state
    /// reports, so that its idle reporter waits for it instead of polling
    /// the outbox.
    queued: std::sync::Arc<std::sync::Mutex<QueuedSignals>>,
    /// Large syncs running with a widened writer cache (see `cache.rs`).
    wide: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Run starts, ends and progress-only pages, group-committed.
    journal: journal::Journal,
}

/// The [`Store::outbox_queued`] signals, by source.
type QueuedSignals = std::collections::BTreeMap<SourceKey, tokio::sync::watch::Sender<u64>>;

/// How long a statement waits for a lock held by another connection or
/// process, unless the config says otherwise.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

impl Store {
    /// Opens (creating file and folder if missing) and migrates the database.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, BUSY_TIMEOUT).await
    }

    /// Same, waiting at most `busy_timeout` for another process's lock.
    pub async fn open_with(url: &str, busy_timeout: Duration) -> Result<Self, StoreError> {
        let path = path_of(url)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.display().to_string(),
                source,
            })?;
        }
        let base = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|_| StoreError::BadUrl(url.to_string()))?
            .filename(&path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(busy_timeout)
            .foreign_keys(true);
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        // Two processes opening a fresh database at once would both run the
        // migrations ("table records already exists", a duplicate version
        // row, or SQLITE_BUSY on the switch to WAL): whoever opens first
        // holds an exclusive lock on the file until its migrations ran.
        let _migrating = MigrationLock::take(&path).await?;
        // No `test_before_acquire`: its ping is a round trip to the
        // connection's worker thread on every acquire (the webhook profile
        // showed it under each commit), and a local SQLite file cannot go
        // stale like a network connection; a failure still surfaces on the
        // statement itself.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .pragma("journal_size_limit", cache::WAL_SIZE_LIMIT.to_string()),
            )
            .await
            .map_err(open_err)?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        // Readers close after a short idle spell: each holds up to 2 MB of
        // page cache, most of an idle daemon's heap, and reopening a local
        // file costs well under a millisecond.
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .idle_timeout(READER_IDLE)
            .test_before_acquire(false)
            .connect_with(base.read_only(true))
            .await
            .map_err(open_err)?;
        Ok(Self {
            journal: journal::Journal::start(writer.clone()),
            writer,
            reader,
            path,
            queued: Default::default(),
            wide: Default::default(),
        })
    }

    /// The database file, for messages.
    pub fn path(&self) -> &std::path::Path {
        &self.path
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

    /// Wakes the reporter of `key`, if one listens.
    pub(crate) fn reports_queued(&self, key: &SourceKey) {
        let map = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(signal) = map.get(key) {
            signal.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Flushes the WAL into the main file and closes every connection.
    pub async fn close(&self) {
        let _ = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.writer)
            .await;
        self.reader.close().await;
        self.writer.close().await;
    }

    /// A cheap read that proves the database answers (`check`, `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}

/// An exclusive advisory lock (`flock`) on the database's folder, held
/// while a process opens and migrates the database, released when dropped
/// or when the process dies. The folder, not the file: closing any
/// descriptor of the database file would drop the POSIX record locks
/// SQLite holds on it in this process, and a sidecar lock file would be
/// one more file for operators to wonder about. Other databases in the
/// same folder wait for the few milliseconds an open takes.
struct MigrationLock(#[allow(dead_code)] std::fs::File);

impl MigrationLock {
    async fn take(path: &std::path::Path) -> Result<Self, StoreError> {
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let shown = folder.display().to_string();
        let lock = tokio::task::spawn_blocking(move || {
            let dir = std::fs::File::open(&folder)?;
            dir.lock()?;
            Ok::<_, std::io::Error>(dir)
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("the migration lock task failed: {e}")))?;
        lock.map(Self).map_err(|source| StoreError::CreateDir {
            path: format!("{shown} (locking it for the migrations)"),
            source,
        })
    }
}

/// `sqlite://var/x.db`, `sqlite:var/x.db` or `sqlite:///abs/x.db` → path.
fn path_of(url: &str) -> Result<PathBuf, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::BadUrl(url.to_string()))?;
    let rest = rest.split('?').next().unwrap_or_default();
    if rest.is_empty() || rest == ":memory:" {
        return Err(StoreError::BadUrl(url.to_string()));
    }
    Ok(PathBuf::from(rest))
}

/// Now in µs since the epoch, as stored in the bookkeeping columns.
pub(crate) fn now_us() -> i64 {
    crate::time::now_us()
}
