//! Opening the database for reading only, for `status` and `export`.
//!
//! An operator's read must change nothing: a mistyped path must not leave an
//! empty database behind (and report every source as never synced), a read
//! must work on a read-only file system or a backup on read-only media, and
//! a binary newer or older than the database must not migrate it as a side
//! effect of looking at it. So this path never creates the file or its
//! folder, never migrates, opens SQLite with `mode=ro`, and compares the
//! migrations the database went through with the ones this binary embeds.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use super::{BUSY_TIMEOUT, READER_IDLE, SqliteStore, StoreError, journal, path_of};

impl SqliteStore {
    /// Opens an existing database without writing to it: no file, folder or
    /// migration is created, every connection is `mode=ro`. A missing file
    /// is [`StoreError::Missing`]; a database whose migrations differ from
    /// this binary's is [`StoreError::Schema`], saying which is newer.
    /// Writes through the returned store fail (SQLite refuses them).
    pub async fn open_read_only(url: &str) -> Result<Self, StoreError> {
        let path = path_of(url)?;
        if let Err(e) = std::fs::metadata(&path)
            && e.kind() == std::io::ErrorKind::NotFound
        {
            return Err(StoreError::Missing {
                path: path.display().to_string(),
            });
        }
        let pool = match connect(&path, false).await {
            Ok(pool) => pool,
            // A WAL database needs its `-shm` index, which a reader creates
            // when the folder lets it. On read-only media without a `-wal`
            // file (closed cleanly: everything is in the main file), read
            // it as immutable instead. With a `-wal` present that would
            // ignore committed data, so the first error stands.
            Err(first) if !sidecar(&path, "-wal").exists() => match connect(&path, true).await {
                Ok(pool) => pool,
                Err(_) => return Err(open_error(&path, first)),
            },
            Err(first) => return Err(open_error(&path, first)),
        };
        if let Err(e) = check_migrations(&pool, &path).await {
            pool.close().await;
            return Err(e);
        }
        Ok(Self {
            journal: journal::Journal::start(pool.clone()),
            writer: pool.clone(),
            reader: pool,
            path,
            wide: Default::default(),
            failing: Default::default(),
            probed: Default::default(),
        })
    }

    /// Opens the database for writing like [`SqliteStore::open_with`] (migrating
    /// it), but only if the file exists: for commands that change what is
    /// stored about sources (`forget`), where a mistyped path must fail
    /// instead of creating an empty database.
    pub async fn open_existing(url: &str, busy_timeout: Duration) -> Result<Self, StoreError> {
        let path = path_of(url)?;
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.display().to_string(),
            });
        }
        Self::open_with(url, busy_timeout).await
    }
}

/// `synchro.db` + `-wal` → `synchro.db-wal`.
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn open_error(path: &Path, source: sqlx::Error) -> StoreError {
    StoreError::Open {
        path: path.display().to_string(),
        source,
    }
}

/// A small pool of read-only connections, proven by a first read (SQLite
/// opens the file lazily: a missing `-shm` shows only then).
async fn connect(path: &Path, immutable: bool) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .read_only(true)
        .create_if_missing(false)
        .immutable(immutable)
        .busy_timeout(BUSY_TIMEOUT);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(0)
        .idle_timeout(READER_IDLE)
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    if let Err(e) = sqlx::query("SELECT count(*) FROM sqlite_master")
        .execute(&pool)
        .await
    {
        pool.close().await;
        return Err(e);
    }
    Ok(pool)
}

/// Compares the migrations recorded in the database with the ones embedded
/// in this binary: reading an older schema would fail on a missing column
/// (or worse, misread), a newer one may have moved data elsewhere.
async fn check_migrations(pool: &SqlitePool, path: &Path) -> Result<(), StoreError> {
    let schema_error = |reason: String| StoreError::Schema {
        path: path.display().to_string(),
        reason,
    };
    let (tables,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_one(pool)
    .await?;
    if tables == 0 {
        return Err(schema_error(crate::store::schema::NOT_MIGRATED.into()));
    }
    let applied: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success = 1 ORDER BY version")
            .fetch_all(pool)
            .await?;
    let applied: Vec<i64> = applied.into_iter().map(|(v,)| v).collect();
    crate::store::schema::check_applied(
        &applied,
        &sqlx::migrate!("./migrations/sqlite"),
        &path.display().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SourceKey;
    use crate::store::{Mode, Store, Target};

    fn url(path: &Path) -> String {
        format!("sqlite://{}", path.display())
    }

    async fn migrated(dir: &Path) -> PathBuf {
        let path = dir.join("t.db");
        let store = Store::open(&url(&path)).await.expect("open");
        store.close().await;
        path
    }

    #[tokio::test]
    async fn a_missing_database_is_reported_and_never_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no/such/folder/t.db");
        let e = Store::connect(&Target::url(&url(&path)), Mode::ReadOnly)
            .await
            .expect_err("missing");
        assert!(matches!(e, StoreError::Missing { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(!dir.path().join("no").exists(), "no folder created");

        let e = Store::connect(&Target::url(&url(&path)), Mode::Existing)
            .await
            .expect_err("missing");
        assert!(matches!(e, StoreError::Missing { .. }), "{e}");
        assert!(!dir.path().join("no").exists(), "no folder created");
    }

    #[tokio::test]
    async fn a_migrated_database_is_read_and_writes_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = migrated(dir.path()).await;
        let store = Store::connect(&Target::url(&url(&path)), Mode::ReadOnly)
            .await
            .expect("open ro");
        let st = store
            .source_status(&SourceKey::new("t", "s"), "demarches")
            .await
            .expect("status");
        assert_eq!(st.records, 0);
        let e = store
            .reset_progress(&SourceKey::new("t", "s"))
            .await
            .expect_err("read-only");
        assert!(e.to_string().contains("read"), "{e}");
        store.close().await;
    }

    #[tokio::test]
    async fn an_older_or_newer_schema_is_named_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = migrated(dir.path()).await;
        let conn_url = format!("{}?mode=rw", url(&path));
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&conn_url)
            .await
            .expect("connect");
        let (last,): (i64,) = sqlx::query_as("SELECT max(version) FROM _sqlx_migrations")
            .fetch_one(&mut conn)
            .await
            .expect("max");
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = ?1")
            .bind(last)
            .execute(&mut conn)
            .await
            .expect("delete");
        let e = Store::connect(&Target::url(&url(&path)), Mode::ReadOnly)
            .await
            .expect_err("older");
        let text = e.to_string();
        assert!(text.contains("older than this synchro"), "{text}");
        assert!(text.contains(&last.to_string()), "{text}");
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM _sqlx_migrations WHERE version = ?1")
                .bind(last)
                .fetch_one(&mut conn)
                .await
                .expect("count");
        assert_eq!(n, 0, "a read-only open never migrates");

        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (?1, 'new', 1, x'00', 0), (99990101000001, 'from the future', 1, x'00', 0)",
        )
        .bind(last)
        .execute(&mut conn)
        .await
        .expect("insert");
        let e = Store::connect(&Target::url(&url(&path)), Mode::ReadOnly)
            .await
            .expect_err("newer");
        assert!(e.to_string().contains("newer synchro"), "{e}");
        assert!(e.to_string().contains("99990101000001"), "{e}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_synchro_database_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("empty.db");
        std::fs::write(&path, b"").expect("write");
        let e = Store::connect(&Target::url(&url(&path)), Mode::ReadOnly)
            .await
            .expect_err("empty");
        assert!(e.to_string().contains("not a synchro database"), "{e}");
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 0);
    }
}
