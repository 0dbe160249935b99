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
mod copy;
mod export;
mod forget;
mod journal;
mod lease;
mod outbox;
mod read_only;
mod records;
mod replicas;
mod retention;
mod runs;
mod status;
#[cfg(test)]
mod tests;
mod tombstones;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{BUSY_TIMEOUT, StoreError};

/// How long an unused reader connection stays open.
const READER_IDLE: Duration = Duration::from_secs(10);

/// The SQLite backend. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct SqliteStore {
    pub(in crate::store) writer: SqlitePool,
    pub(in crate::store) reader: SqlitePool,
    path: PathBuf,
    /// Large syncs running with a widened writer cache (see `cache.rs`).
    wide: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Run starts, ends and progress-only pages, group-committed.
    journal: journal::Journal,
    /// Set when a commit failed on the database itself (a full disk, an
    /// I/O error), cleared by the next commit that succeeds: `/readyz`
    /// answers 503 meanwhile.
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// When [`Store::still_failing`] last tried a write.
    probed: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl SqliteStore {
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
        // connection's worker thread on every acquire (it shows under each
        // commit in a webhook profile), and a local SQLite file cannot go
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
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
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
            wide: Default::default(),
            failing: Default::default(),
            probed: Default::default(),
        })
    }

    /// The database file, for messages.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Flushes the WAL into the main file and closes every connection.
    pub async fn close(&self) {
        let _ = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.writer)
            .await;
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Whether the last commit failed on the database itself (a full disk,
    /// an I/O error): the daemon is not ready until one succeeds again.
    fn commits_failing(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records how a commit on the writer went; a failure of the database
    /// itself also replaces the writer connection (see [`reset_writer`]).
    pub(crate) async fn commit_result<T>(
        &self,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &result {
            Ok(_) => self
                .failing
                .store(false, std::sync::atomic::Ordering::Relaxed),
            Err(e) if e.is_database_failure() => {
                self.failing
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                reset_writer(&self.writer).await;
            }
            Err(_) => {}
        }
        result
    }

    /// While commits are failing, tries a 1 MiB write (at most once a
    /// second): whether the database takes writes again, e.g. once a full
    /// disk has space. Returns whether commits are still failing.
    pub async fn still_failing(&self) -> bool {
        if !self.commits_failing() {
            return false;
        }
        {
            let mut last = self.probed.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return true;
            }
            *last = Some(std::time::Instant::now());
        }
        // 1 MiB: a disk with a few KB free (a small write fits in space the
        // WAL already has) is not "space back"; a page group of records is.
        let write = sqlx::query(
            "INSERT INTO write_probe (id, written_at, pad) VALUES (1, ?1, zeroblob(1048576)) \
             ON CONFLICT (id) DO UPDATE SET written_at = excluded.written_at, pad = excluded.pad",
        )
        .bind(now_us())
        .execute(&self.writer);
        // A readiness check answers promptly: a writer busy for longer
        // counts as still failing.
        let probe = match tokio::time::timeout(Duration::from_secs(2), write).await {
            Ok(done) => done.map(|_| ()).map_err(StoreError::from),
            Err(_) => return true,
        };
        let failing = self.commit_result(probe).await.is_err();
        if !failing {
            let _ = sqlx::query("UPDATE write_probe SET pad = NULL WHERE id = 1")
                .execute(&self.writer)
                .await;
        }
        failing
    }

    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let (v,): (Option<i64>,) =
            sqlx::query_as("SELECT max(version) FROM _sqlx_migrations WHERE success = 1")
                .fetch_one(&self.reader)
                .await?;
        Ok(v.unwrap_or(0))
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

/// Closes the writer pool's connection after a failed write, so that the
/// next one starts on a fresh connection (the pool opens it on the next
/// acquire). After SQLITE_FULL or an I/O error during COMMIT, SQLite may
/// have rolled the transaction back itself while sqlx still counts it open
/// ("begin_with at non-zero transaction depth" on every later commit, until
/// a restart). A fresh connection costs well under a millisecond; failures
/// are rare.
pub(crate) async fn reset_writer(writer: &SqlitePool) {
    match tokio::time::timeout(Duration::from_secs(5), writer.acquire()).await {
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn.detach()).await;
            tracing::warn!("replaced the database writer connection after a failed write");
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "could not reset the writer connection"),
        Err(_) => tracing::warn!("the writer connection stayed busy; not reset"),
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
