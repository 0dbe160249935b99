//! Durable state in Postgres: the shared store of replicas, or the database
//! an organisation's applications already use. Same tables and rules as
//! the SQLite backend, in SQL that suits Postgres: rows go in as arrays
//! (`UNNEST`, one statement per batch of a page group), every lease
//! decision is taken on the database's clock, and a fenced commit locks
//! its lease row first, so that a takeover waits for it or it sees the
//! takeover. A pool of `pool_size` connections, no single writer: Postgres
//! arbitrates concurrent writers itself.

mod admin;
mod copy;
mod lease;
mod outbox;
mod records;
mod replicas;
mod runs;
mod schedule;
mod tombstones;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{Mode, StoreError, Target};

/// How long a session may sit inside a transaction without sending a
/// statement before the server ends it (synchro's transactions never pause:
/// only a paused or cut-off process's do).
const IDLE_IN_TRANSACTION: &str = "5s";

/// How long a statement waits for a row lock before it fails.
const LOCK_TIMEOUT: &str = "30s";

/// How long a request waits for a free connection of the pool.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// The Postgres backend. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct PgStore {
    pub(in crate::store) pool: PgPool,
    /// `postgres://user@host:port/db`, never the password.
    location: String,
    /// Set when a commit failed on the database itself (disk full, I/O,
    /// connection lost), cleared by the next commit that succeeds.
    failing: Arc<AtomicBool>,
    /// When [`PgStore::still_failing`] last tried a write.
    probed: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// Whether `url` names a Postgres database.
pub(crate) fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl PgStore {
    /// Connects as `mode` says. Postgres databases are created by their
    /// administrator: `Create` migrates one that exists, never creates it.
    pub async fn connect(target: &Target, mode: Mode) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(&target.url)
            .map_err(|_| StoreError::BadUrl(shown_url(&target.url)))?
            .application_name("synchro");
        if let Some(password) = &target.password {
            options = options.password(password);
        }
        options = match mode {
            Mode::ReadOnly => options.options([("default_transaction_read_only", "on")]),
            // A process paused (SIGSTOP, a VM frozen) inside a transaction
            // holds its lease row's lock: the server ends that session
            // after IDLE_IN_TRANSACTION so that a takeover never waits on
            // it for long, and no statement waits on a lock forever.
            Mode::Create | Mode::Existing => options.options([
                ("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION),
                ("lock_timeout", LOCK_TIMEOUT),
            ]),
        };
        let location = format!(
            "postgres://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or(options.get_username())
        );
        let pool = PgPoolOptions::new()
            .max_connections(target.pool_size.max(1))
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Duration::from_secs(60))
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                path: location.clone(),
                source,
            })?;
        let store = Self {
            pool,
            location,
            failing: Default::default(),
            probed: Default::default(),
        };
        match mode {
            // Replicas starting together: sqlx serialises the migrations
            // with an advisory lock.
            Mode::Create | Mode::Existing => {
                sqlx::migrate!("./migrations/postgres")
                    .run(&store.pool)
                    .await?
            }
            Mode::ReadOnly => store.check_schema().await?,
        }
        Ok(store)
    }

    /// The database, for messages (never the password).
    pub fn location(&self) -> &str {
        &self.location
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn check_schema(&self) -> Result<(), StoreError> {
        let (tables,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_catalog.pg_tables \
             WHERE tablename = '_sqlx_migrations' AND schemaname = current_schema()",
        )
        .fetch_one(&self.pool)
        .await?;
        if tables == 0 {
            return Err(StoreError::Schema {
                path: self.location.clone(),
                reason: super::schema::NOT_MIGRATED.into(),
            });
        }
        let applied: Vec<(i64,)> =
            sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                .fetch_all(&self.pool)
                .await?;
        let applied: Vec<i64> = applied.into_iter().map(|(v,)| v).collect();
        super::schema::check_applied(
            &applied,
            &sqlx::migrate!("./migrations/postgres"),
            &self.location,
        )
    }

    /// Records how a commit went (see [`PgStore::still_failing`]).
    pub(crate) fn commit_result<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Ok(_) => self.failing.store(false, Ordering::Relaxed),
            Err(e) if e.is_database_failure() => self.failing.store(true, Ordering::Relaxed),
            Err(_) => {}
        }
        result
    }

    /// Whether the database cannot be used now: unreachable (a ping fails
    /// within 2 s), or, while commits are failing, a 1 MiB write (tried at
    /// most once a second) still fails, e.g. a full disk.
    pub async fn still_failing(&self) -> bool {
        if !self.failing.load(Ordering::Relaxed) {
            let ping = tokio::time::timeout(Duration::from_secs(2), self.ping()).await;
            return !matches!(ping, Ok(Ok(())));
        }
        {
            let mut last = self.probed.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return true;
            }
            *last = Some(std::time::Instant::now());
        }
        let write = sqlx::query(
            "INSERT INTO write_probe (id, written_at, pad) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET written_at = excluded.written_at, pad = excluded.pad",
        )
        .bind(crate::time::now_us())
        .bind(vec![0u8; 1 << 20])
        .execute(&self.pool);
        let probe = match tokio::time::timeout(Duration::from_secs(2), write).await {
            Ok(done) => done.map(|_| ()).map_err(StoreError::from),
            Err(_) => return true,
        };
        let failing = self.commit_result(probe).is_err();
        if !failing {
            let _ = sqlx::query("UPDATE write_probe SET pad = NULL WHERE id = 1")
                .execute(&self.pool)
                .await;
        }
        failing
    }

    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let (v,): (Option<i64>,) =
            sqlx::query_as("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        Ok(v.unwrap_or(0))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // The page cache is SQLite's: Postgres manages its own buffers.

    pub async fn widen_cache(&self) -> Result<(), StoreError> {
        Ok(())
    }

    pub async fn narrow_cache(&self) -> Result<(), StoreError> {
        Ok(())
    }

    pub async fn release_memory(&self) -> Result<(), StoreError> {
        Ok(())
    }

    pub async fn checkpoint_pages(&self) -> Result<i64, StoreError> {
        Ok(0)
    }

    pub async fn cache_kib(&self) -> Result<i64, StoreError> {
        Ok(0)
    }
}

/// Why `url` is not a Postgres URL this backend can use, if it is not:
/// for `check` and the config loader, before anything connects. Never
/// quotes the URL (it may hold a password).
pub(crate) fn url_problem(url: &str) -> Option<String> {
    let parsed = match url::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return Some(format!("not a URL ({e})")),
    };
    if parsed.password().is_some() {
        return Some(
            "the URL holds a password: write the URL without it and set storage.password = \
             { env = \"VAR\" } or { file = \"/path\" }"
                .into(),
        );
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Some("the URL names no host: expected postgres://USER@HOST[:PORT]/DB".into());
    }
    if parsed.path().trim_start_matches('/').is_empty() {
        return Some("the URL names no database: expected postgres://USER@HOST[:PORT]/DB".into());
    }
    for (key, value) in parsed.query_pairs() {
        if key == "sslmode"
            && ![
                "disable",
                "allow",
                "prefer",
                "require",
                "verify-ca",
                "verify-full",
            ]
            .contains(&value.as_ref())
        {
            return Some(format!(
                "sslmode={value} is not one of disable, allow, prefer, require, verify-ca, \
                 verify-full"
            ));
        }
    }
    PgConnectOptions::from_str(url)
        .err()
        .map(|e| format!("not a usable Postgres URL ({e})"))
}

/// A URL for messages: the password, if one was written in it, replaced.
pub(crate) fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(unparsable URL)".into(),
    }
}
