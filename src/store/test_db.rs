//! Databases for the store's tests: a SQLite file in a temporary folder,
//! or a fresh Postgres database on the server `SYNCHRO_TEST_POSTGRES`
//! names (created per test, dropped after it). Without that variable the
//! Postgres half of a test says it skipped and passes: a fresh machine
//! needs no server. `.ci/run` sets it and checks that the server answers.

use sqlx::Connection;

use super::Store;

/// The variable naming the Postgres server tests may create databases on.
pub(crate) const POSTGRES_VAR: &str = "SYNCHRO_TEST_POSTGRES";

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// A database that lives as long as the test holds it.
pub(crate) struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    /// The server's URL and the database's name, to drop it.
    created: Option<(String, String)>,
}

impl TestDb {
    /// A new, empty database of `backend`; `None` (after saying so) for
    /// Postgres when no server is configured.
    pub async fn new(backend: Backend, test: &str) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}", dir.path().join("sub/dir/t.db").display());
                Some(Self {
                    url,
                    _dir: Some(dir),
                    created: None,
                })
            }
            Backend::Postgres => {
                let Ok(server) = std::env::var(POSTGRES_VAR) else {
                    eprintln!("SKIPPED {test} on Postgres: {POSTGRES_VAR} is not set");
                    say_skipped_once();
                    return None;
                };
                let name = format!("synchro_t_{}", uuid::Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(&server)
                    .await
                    .unwrap_or_else(|e| panic!("{POSTGRES_VAR}={server}: {e}"));
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .expect("create the test database");
                let _ = admin.close().await;
                let mut url = url::Url::parse(&server).expect("a URL");
                url.set_path(&name);
                Some(Self {
                    url: url.to_string(),
                    _dir: None,
                    created: Some((server, name)),
                })
            }
        }
    }

    /// The database opened (and migrated) as the daemon opens it.
    pub async fn open(&self) -> Store {
        Store::open(&self.url).await.expect("open the test store")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((server, name)) = self.created.take() else {
            return;
        };
        // Drop runs inside the test's runtime: the database goes from a
        // thread of its own. FORCE ends the sessions the store left open.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&server).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut admin)
                        .await;
                }
            })
        });
        let _ = dropped.join();
    }
}

/// Writes a store test once for each backend: `both_backends! { async fn
/// name(store: Store) { ... } }` makes a module `name` with a `sqlite` and
/// a `postgres` test that each run the body on a fresh database. A body
/// that opens more databases takes `backend: Backend` too.
macro_rules! both_backends {
    ($(
        $(#[$attr:meta])*
        async fn $name:ident($store:ident: Store $(, $backend:ident: Backend)?) $body:block
    )*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn body(
                    $store: crate::store::Store
                    $(, $backend: crate::store::test_db::Backend)?
                ) $body

                async fn on(backend: crate::store::test_db::Backend) {
                    let test = concat!(module_path!(), "::", stringify!($name));
                    let Some(db) = crate::store::test_db::TestDb::new(backend, test).await else {
                        return;
                    };
                    let store = db.open().await;
                    body(store.clone() $(, { let $backend = backend; $backend })?).await;
                    store.close().await;
                }

                $(#[$attr])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    on(crate::store::test_db::Backend::Sqlite).await;
                }

                $(#[$attr])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    on(crate::store::test_db::Backend::Postgres).await;
                }
            }
        )*
    };
}
pub(crate) use both_backends;

/// A value bound to [`Store::test_sql`].
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Int(i64),
    Text(String),
}

impl Store {
    /// Runs one statement of a test's set-up, written with `$1`-style
    /// parameters (SQLite gets them as `?1`), on whichever backend this
    /// store is; returns the first column of the first row as text, if
    /// any (counts, statuses).
    pub(crate) async fn test_sql(&self, sql: &str, args: &[Arg]) -> Option<String> {
        match &self.backend {
            super::Backend::Sqlite(s) => {
                let sql = sql.replace('$', "?");
                let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
                for arg in args {
                    q = match arg {
                        Arg::Int(i) => q.bind(*i),
                        Arg::Text(t) => q.bind(t.clone()),
                    };
                }
                q.fetch_optional(&s.writer).await.expect("test SQL")
            }
            super::Backend::Postgres(s) => {
                let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.to_string()));
                for arg in args {
                    q = match arg {
                        Arg::Int(i) => q.bind(*i),
                        Arg::Text(t) => q.bind(t.clone()),
                    };
                }
                q.fetch_optional(&s.pool).await.expect("test SQL")
            }
        }
    }
}

/// Says once per test binary, past the harness's capture of passing tests'
/// output (a write to the stderr handle, not `eprintln!`), that the
/// Postgres half was skipped.
fn say_skipped_once() {
    use std::io::Write;
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: the Postgres half of these tests ({POSTGRES_VAR} is not set; e.g. \
             {POSTGRES_VAR}=postgres://postgres@127.0.0.1/test)"
        );
    });
}
