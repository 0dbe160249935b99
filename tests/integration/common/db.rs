//! The database a test's daemon writes, read behind its back: a SQLite
//! file or a Postgres database, through one connection type (`sqlx`'s
//! `Any` driver, used by tests only). Queries are written with `?1`-style
//! parameters; on Postgres they become `$1`.

use std::path::{Path, PathBuf};

use sqlx::Connection;

/// Which database the integration suite runs on: `SYNCHRO_TEST_BACKEND`
/// (`sqlite`, the default, or `postgres`, which needs
/// `SYNCHRO_TEST_POSTGRES`).
pub const BACKEND_VAR: &str = "SYNCHRO_TEST_BACKEND";

/// The suite's backend, from [`BACKEND_VAR`].
pub fn on_postgres() -> bool {
    match std::env::var(BACKEND_VAR).as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => false,
        Ok("postgres") => true,
        Ok(other) => panic!("{BACKEND_VAR}={other}: expected sqlite or postgres"),
    }
}

/// A test that means SQLite itself (its file, its locks, its pages) says
/// so and returns when the suite runs on Postgres: `if sqlite_only("...")
/// { return; }`.
pub fn sqlite_only(why: &str) -> bool {
    if on_postgres() {
        eprintln!("SKIPPED on Postgres: {why}");
        return true;
    }
    false
}

/// A test's database.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Db {
    /// A connection that only reads; `None` while the database is not
    /// there yet.
    pub async fn connect(&self) -> Option<sqlx::AnyConnection> {
        self.open(true).await
    }

    /// A connection that may write (a test's set-up behind the daemon).
    pub async fn connect_rw(&self) -> Option<sqlx::AnyConnection> {
        self.open(false).await
    }

    async fn open(&self, read_only: bool) -> Option<sqlx::AnyConnection> {
        sqlx::any::install_default_drivers();
        let url = match self {
            Db::Sqlite(path) if read_only && !path.exists() => return None,
            Db::Sqlite(path) if read_only => format!("sqlite://{}?mode=ro", path.display()),
            Db::Sqlite(path) => format!("sqlite://{}", path.display()),
            Db::Postgres(url) => url.clone(),
        };
        sqlx::AnyConnection::connect(&url).await.ok()
    }

    /// `sql` with its `?N` parameters as this backend writes them.
    pub fn sql(&self, sql: &str) -> String {
        match self {
            Db::Sqlite(_) => sql.to_string(),
            Db::Postgres(_) => {
                let mut out = String::with_capacity(sql.len());
                let mut chars = sql.chars().peekable();
                while let Some(c) = chars.next() {
                    if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
                        out.push('$');
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
    }

    /// The SQLite file (tests that look at SQLite itself; see
    /// [`sqlite_only`]).
    pub fn path(&self) -> &Path {
        match self {
            Db::Sqlite(path) => path,
            Db::Postgres(_) => panic!("this test reads a SQLite file: skip it on Postgres"),
        }
    }

    /// Whether the daemon created the database yet.
    pub async fn exists(&self) -> bool {
        match self {
            Db::Sqlite(path) => path.exists(),
            Db::Postgres(_) => self.connect().await.is_some(),
        }
    }

    /// One `i64` the query returns, 0 while the database or its tables
    /// are not there yet.
    pub async fn count(&self, sql: &str, args: &[&str]) -> i64 {
        let Some(mut conn) = self.connect().await else {
            return 0;
        };
        let sql = self.sql(sql);
        let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql));
        for a in args {
            q = q.bind(a.to_string());
        }
        q.fetch_one(&mut conn).await.unwrap_or(0)
    }
}

/// A database for a test that writes its own config: a SQLite file in
/// `dir`, or a fresh Postgres database when the suite runs on Postgres.
pub struct SuiteDb {
    /// The config's `database = ...` value.
    pub url: String,
    pub db: Db,
    _pg: Option<super::PgDb>,
}

impl SuiteDb {
    pub fn new(dir: &Path) -> Self {
        if on_postgres() {
            let pg = super::PgDb::create_for_suite();
            return Self {
                url: pg.url.clone(),
                db: Db::Postgres(pg.url.clone()),
                _pg: Some(pg),
            };
        }
        let path = dir.join("synchro.db");
        Self {
            url: format!("sqlite://{}", path.display()),
            db: Db::Sqlite(path),
            _pg: None,
        }
    }
}
