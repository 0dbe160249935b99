//! A fresh Postgres database per test on the server `SYNCHRO_TEST_POSTGRES`
//! names, dropped when the test drops it. Without the variable a Postgres
//! test says it skipped and passes: a fresh machine needs no server;
//! `.ci/run` sets it and fails when the server does not answer.

use sqlx::Connection;

/// The variable naming the server tests create databases on.
pub const POSTGRES_VAR: &str = "SYNCHRO_TEST_POSTGRES";

/// A database that lives as long as the test holds it.
pub struct PgDb {
    /// `postgres://user@host:port/synchro_t_...`, no password.
    pub url: String,
    server: String,
    name: String,
}

impl PgDb {
    /// A new, empty database; `None` (after saying so) when no server is
    /// configured for tests.
    pub async fn create(test: &str) -> Option<Self> {
        let Ok(server) = std::env::var(POSTGRES_VAR) else {
            eprintln!("SKIPPED {test}: it runs on Postgres and {POSTGRES_VAR} is not set");
            say_skipped_once();
            return None;
        };
        let name = format!("synchro_it_{}", uuid::Uuid::new_v4().simple());
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
            server,
            name,
        })
    }

    /// A new database for a suite run on Postgres (`SYNCHRO_TEST_BACKEND=
    /// postgres`), from synchronous set-up code; the server must be set.
    pub fn create_for_suite() -> Self {
        assert!(
            std::env::var(POSTGRES_VAR).is_ok(),
            "{}=postgres needs {POSTGRES_VAR} (e.g. postgres://postgres@127.0.0.1/test)",
            super::BACKEND_VAR
        );
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(Self::create("the integration suite"))
        })
        .join()
        .expect("create the test database")
        .expect("the server is set")
    }

    /// A connection to the test's database, for what the test reads
    /// behind synchro's back.
    pub async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop may run inside the test's runtime: the database goes from a
        // thread of its own. FORCE ends sessions a killed daemon left.
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
