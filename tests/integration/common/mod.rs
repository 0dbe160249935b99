//! Test helpers: a simulated upstream on 127.0.0.1:0, a config in a temp
//! folder, and the real `synchro` binary run against both.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use synchro_simulator::Simulator;

mod db;
mod postgres;
pub use db::{BACKEND_VAR, Db, SuiteDb, on_postgres, sqlite_only};
pub use postgres::PgDb;

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_synchro")
}

/// A démarche source in a test config.
pub struct DsSource<'a> {
    pub tenant: &'a str,
    pub id: &'a str,
    pub demarche: i64,
    pub token: &'a str,
    pub page_size: u32,
}

impl<'a> DsSource<'a> {
    pub fn new(tenant: &'a str, id: &'a str, demarche: i64) -> Self {
        Self {
            tenant,
            id,
            demarche,
            token: synchro_simulator::DEFAULT_DS_TOKEN,
            page_size: 100,
        }
    }
}

/// How a calendar source authenticates in a test config.
pub enum CalAuth<'a> {
    Static(&'a str),
    /// OAuth2 refresh-token grant against the simulator, with this refresh token.
    OAuth(&'a str),
}

/// A calendar source in a test config.
pub struct CalSource<'a> {
    pub tenant: &'a str,
    pub id: &'a str,
    pub calendar: &'a str,
    pub auth: CalAuth<'a>,
    pub max_results: u32,
    pub time_min: Option<&'a str>,
    pub channel_token: Option<&'a str>,
}

impl<'a> CalSource<'a> {
    pub fn new(tenant: &'a str, id: &'a str, calendar: &'a str) -> Self {
        Self {
            tenant,
            id,
            calendar,
            auth: CalAuth::Static(synchro_simulator::DEFAULT_CALENDAR_TOKEN),
            max_results: 100,
            time_min: None,
            channel_token: None,
        }
    }

    fn toml(&self, sim: &Simulator) -> String {
        let mut t = format!(
            "\n[[tenants.sources]]\nid = \"{}\"\nkind = \"calendar\"\nschedule = \"every 1h\"\n\
             endpoint = \"{}\"\ncalendar_id = \"{}\"\nmax_results = {}\n",
            self.id,
            sim.calendar_endpoint(),
            self.calendar,
            self.max_results
        );
        match self.auth {
            CalAuth::Static(token) => t.push_str(&format!("access_token = \"{token}\"\n")),
            CalAuth::OAuth(refresh) => t.push_str(&format!(
                "oauth = {{ token_url = \"{}\", client_id = \"{}\", client_secret = \"{}\", refresh_token = \"{refresh}\" }}\n",
                sim.oauth_token_url(),
                synchro_simulator::DEFAULT_OAUTH_CLIENT_ID,
                synchro_simulator::DEFAULT_OAUTH_CLIENT_SECRET,
            )),
        }
        if let Some(tm) = self.time_min {
            t.push_str(&format!("time_min = \"{tm}\"\n"));
        }
        if let Some(ct) = self.channel_token {
            t.push_str(&format!("channel_token = \"{ct}\"\n"));
        }
        t
    }
}

/// A Contentor source in a test config.
pub struct ContentSource<'a> {
    pub tenant: &'a str,
    pub id: &'a str,
    pub token: &'a str,
    pub report: bool,
    pub webhook_token: Option<&'a str>,
}

impl<'a> ContentSource<'a> {
    pub fn new(tenant: &'a str, id: &'a str) -> Self {
        Self {
            tenant,
            id,
            token: synchro_simulator::DEFAULT_CONTENT_TOKEN,
            report: true,
            webhook_token: None,
        }
    }

    fn toml(&self, sim: &Simulator) -> String {
        let mut t = format!(
            "\n[[tenants.sources]]\nid = \"{}\"\nkind = \"content\"\nschedule = \"every 1h\"\n\
             endpoint = \"{}\"\ntoken = \"{}\"\nreport_import_state = {}\n",
            self.id,
            sim.content_endpoint(),
            self.token,
            self.report
        );
        if let Some(w) = self.webhook_token {
            t.push_str(&format!("webhook_token = \"{w}\"\n"));
        }
        t
    }
}

/// An isolated daemon set-up: temp folder, database, config file.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// The suite's Postgres database, when it runs on Postgres.
    pub pg: Option<PgDb>,
}

impl Setup {
    /// Writes a config with `sources` pointing at `sim`.
    pub fn new(sim: &Simulator, sources: &[DsSource<'_>]) -> Self {
        Self::with_extra(sim, sources, "")
    }

    /// Same, with extra TOML appended to the `[http]` part.
    pub fn with_extra(sim: &Simulator, sources: &[DsSource<'_>], http_extra: &str) -> Self {
        Self::mixed(sim, sources, &[], http_extra)
    }

    /// Démarches and calendar sources together.
    pub fn mixed(
        sim: &Simulator,
        ds: &[DsSource<'_>],
        cal: &[CalSource<'_>],
        http_extra: &str,
    ) -> Self {
        Self::build(sim, ds, cal, &[], http_extra)
    }

    /// Any mix of the three kinds.
    pub fn build_all(
        sim: &Simulator,
        ds: &[DsSource<'_>],
        cal: &[CalSource<'_>],
        content: &[ContentSource<'_>],
    ) -> Self {
        Self::build(sim, ds, cal, content, "")
    }

    /// Content sources only.
    pub fn content(sim: &Simulator, content: &[ContentSource<'_>]) -> Self {
        Self::build(sim, &[], &[], content, "")
    }

    fn build(
        sim: &Simulator,
        ds: &[DsSource<'_>],
        cal: &[CalSource<'_>],
        content: &[ContentSource<'_>],
        http_extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = on_postgres().then(PgDb::create_for_suite);
        let database = match &pg {
            Some(pg) => pg.url.clone(),
            None => format!("sqlite://{}", dir.path().join("synchro.db").display()),
        };
        let mut toml = format!(
            "[storage]\ndatabase = \"{database}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\n\n\
             [scheduler]\njitter = \"0s\"\nshutdown_timeout = \"10s\"\n\n\
             [http]\ntimeout = \"5s\"\nconnect_timeout = \"2s\"\nmax_retries = 4\n\
             initial_backoff = \"20ms\"\nmax_backoff = \"2s\"\n\
             per_host_requests_per_second = 1000\nper_host_concurrency = 16\n{http_extra}\n"
        );
        let mut tenants: Vec<&str> = ds
            .iter()
            .map(|s| s.tenant)
            .chain(cal.iter().map(|c| c.tenant))
            .chain(content.iter().map(|c| c.tenant))
            .collect();
        tenants.sort();
        tenants.dedup();
        for t in tenants {
            toml.push_str(&format!("\n[[tenants]]\nid = \"{t}\"\n"));
            for s in ds.iter().filter(|s| s.tenant == t) {
                toml.push_str(&format!(
                    "\n[[tenants.sources]]\nid = \"{}\"\nkind = \"demarches\"\nschedule = \"every 1h\"\n\
                     endpoint = \"{}\"\ntoken = \"{}\"\ndemarche = {}\npage_size = {}\n",
                    s.id,
                    sim.ds_endpoint(),
                    s.token,
                    s.demarche,
                    s.page_size
                ));
            }
            for c in cal.iter().filter(|c| c.tenant == t) {
                toml.push_str(&c.toml(sim));
            }
            for c in content.iter().filter(|c| c.tenant == t) {
                toml.push_str(&c.toml(sim));
            }
        }
        let config = dir.path().join("synchro.toml");
        std::fs::write(&config, toml).expect("write config");
        Self { dir, config, pg }
    }

    /// A `synchro` command with this config and plain-text logs.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--config")
            .arg(&self.config)
            .arg("--log-format")
            .arg("text")
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Runs a command to completion (on a blocking thread, so the
    /// in-process simulator keeps serving).
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd(args);
        tokio::task::spawn_blocking(move || c.output().expect("run synchro"))
            .await
            .expect("join")
    }

    /// Starts a command in the background; its output goes to files in the
    /// temp folder (a pipe nobody reads could fill up and block it).
    pub fn spawn(&self, args: &[&str]) -> Child {
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join(name))
                .expect("log file")
        };
        self.cmd(args)
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .expect("spawn synchro")
    }

    /// What background commands wrote to stderr so far.
    pub fn spawned_stderr(&self) -> String {
        read_to_string(&self.dir.path().join("stderr.log"))
    }

    /// `synchro sync` that must succeed.
    pub async fn sync_ok(&self, args: &[&str]) -> Output {
        let mut all = vec!["sync"];
        all.extend_from_slice(args);
        let out = self.run(&all).await;
        assert!(
            out.status.success(),
            "sync failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `synchro export` lines, parsed.
    pub async fn export(&self, include_deleted: bool) -> Vec<Value> {
        let mut args = vec!["export"];
        if include_deleted {
            args.push("--include-deleted");
        }
        let out = self.run(&args).await;
        assert!(
            out.status.success(),
            "export failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("export line is JSON"))
            .collect()
    }

    /// Gives the daemon a free fixed port (instead of port 0) and returns it.
    pub fn use_free_port(&self) -> u16 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let cfg = std::fs::read_to_string(&self.config)
            .expect("config")
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
        std::fs::write(&self.config, cfg).expect("config");
        port
    }

    /// Replaces text in the config file (e.g. a schedule).
    pub fn edit_config(&self, from: &str, to: &str) {
        let cfg = std::fs::read_to_string(&self.config).expect("config");
        assert!(cfg.contains(from), "{from} not in the config");
        std::fs::write(&self.config, cfg.replace(from, to)).expect("config");
    }

    /// The SQLite file of a suite run on SQLite (tests that look at the
    /// file itself skip on Postgres: [`sqlite_only`]).
    pub fn db_path(&self) -> PathBuf {
        assert!(
            self.pg.is_none(),
            "this test reads a SQLite file: skip it on Postgres"
        );
        self.dir.path().join("synchro.db")
    }

    /// The database the daemon writes, on either backend.
    pub fn db(&self) -> Db {
        match &self.pg {
            Some(pg) => Db::Postgres(pg.url.clone()),
            None => Db::Sqlite(self.dir.path().join("synchro.db")),
        }
    }

    /// The config's `database = ...` value.
    pub fn database_url(&self) -> String {
        match &self.pg {
            Some(pg) => pg.url.clone(),
            None => format!("sqlite://{}", self.dir.path().join("synchro.db").display()),
        }
    }
}

/// The simulator with a seeded démarche.
pub async fn simulator() -> Simulator {
    Simulator::start(([127, 0, 0, 1], 0).into())
        .await
        .expect("start simulator")
}
/// One source's export lines by id (live only, or with tombstones),
/// asserting that no id appears twice.
pub async fn export_by_id(
    setup: &Setup,
    tenant: &str,
    source: &str,
    include_deleted: bool,
) -> std::collections::HashMap<String, Value> {
    let mut by_id = std::collections::HashMap::new();
    for l in setup.export(include_deleted).await {
        if l["tenant"] == tenant && l["source"] == source {
            let id = l["id"].as_str().expect("id").to_string();
            assert!(
                by_id.insert(id.clone(), l).is_none(),
                "duplicate id {id} in export"
            );
        }
    }
    by_id
}

/// The ids of a source's tombstones, sorted.
async fn tombstone_ids(setup: &Setup, tenant: &str, source: &str) -> Vec<String> {
    let mut ids: Vec<String> = export_by_id(setup, tenant, source, true)
        .await
        .into_iter()
        .filter(|(_, l)| l["deleted"] == true)
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    ids
}

/// Asserts that the export of `tenant/source` equals the simulator's live
/// dossiers exactly: same ids, same payloads, no duplicates; and that the
/// tombstones (with `--include-deleted`) are exactly the deleted dossiers.
pub async fn assert_export_matches(
    setup: &Setup,
    sim: &Simulator,
    tenant: &str,
    source: &str,
    demarche: i64,
) {
    let expected = sim.ds().snapshot(demarche).await;
    let by_id = export_by_id(setup, tenant, source, false).await;
    assert_eq!(
        by_id.len(),
        expected.len(),
        "live record count differs from upstream"
    );
    for d in &expected {
        let id = d["number"].to_string();
        let got = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("dossier {id} missing from export"));
        assert_eq!(got["deleted"], false);
        assert_eq!(got["kind"], "demarches");
        assert_eq!(&got["data"], d, "payload of dossier {id} differs");
        assert_eq!(got["updated_at"], d["dateDerniereModification"]);
    }
    let mut deleted: Vec<i64> = tombstone_ids(setup, tenant, source)
        .await
        .iter()
        .map(|id| id.parse().expect("number"))
        .collect();
    deleted.sort();
    let mut upstream_deleted = sim.ds().deleted_numbers(demarche);
    upstream_deleted.sort();
    assert_eq!(
        deleted, upstream_deleted,
        "tombstones differ from upstream deletions"
    );
}

/// Polls `cond` until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Sends a signal by name to a child process.
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} failed");
}

pub fn read_to_string(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}
/// Asserts that the export of a calendar source equals the simulator:
/// live events by id and payload, and tombstones exactly the cancelled ones.
pub async fn assert_calendar_matches(
    setup: &Setup,
    sim: &Simulator,
    tenant: &str,
    source: &str,
    calendar: &str,
) {
    let expected = sim.calendar().live_events(calendar);
    let by_id = export_by_id(setup, tenant, source, false).await;
    assert_eq!(
        by_id.len(),
        expected.len(),
        "live event count differs from upstream"
    );
    for e in &expected {
        let id = e["id"].as_str().expect("event id");
        let got = by_id
            .get(id)
            .unwrap_or_else(|| panic!("event {id} missing from export"));
        assert_eq!(got["kind"], "calendar");
        assert_eq!(&got["data"], e, "payload of event {id} differs");
        assert_eq!(got["updated_at"], e["updated"]);
    }
    // Tombstones: every upstream cancellation, plus the events a full
    // resync no longer found (purged upstream: swept into tombstones so that
    // change-feed readers learn they are gone), never a live event.
    let tombstones = tombstone_ids(setup, tenant, source).await;
    for id in sim.calendar().cancelled_ids(calendar) {
        assert!(
            tombstones.contains(&id),
            "cancelled event {id} is no tombstone"
        );
    }
    for id in &tombstones {
        assert!(
            !by_id.contains_key(id),
            "event {id} is live and a tombstone"
        );
        assert!(
            !expected.iter().any(|e| e["id"] == id.as_str()),
            "tombstone {id} is live upstream"
        );
    }
}

/// Rows of `runs` for a source with this outcome, straight from the
/// database; 0 while the database is not there or not migrated yet.
pub async fn count_runs(db: &Db, tenant: &str, source: &str, outcome: &str) -> i64 {
    db.count(
        "SELECT count(*) FROM runs WHERE tenant = ?1 AND source = ?2 AND outcome = ?3",
        &[tenant, source, outcome],
    )
    .await
}

/// The stored progress state of a source.
pub async fn progress_state(db: &Db, tenant: &str, source: &str) -> Option<Value> {
    let mut conn = db.connect().await.expect("open db");
    let row: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(
        db.sql("SELECT state FROM progress WHERE tenant = ?1 AND source = ?2"),
    ))
    .bind(tenant)
    .bind(source)
    .fetch_optional(&mut conn)
    .await
    .expect("progress");
    row.map(|(s,)| serde_json::from_str(&s).expect("state json"))
}
/// Asserts that the export of a content source equals the simulator's API
/// requests exactly (ids, payloads, no duplicates), except `skip`ped ids.
pub async fn assert_content_matches(
    setup: &Setup,
    sim: &Simulator,
    tenant: &str,
    source: &str,
    skip: &[i64],
) {
    let expected: Vec<Value> = sim
        .content()
        .api_requests()
        .into_iter()
        .filter(|r| !skip.contains(&r["id"].as_i64().expect("id")))
        .collect();
    let by_id = export_by_id(setup, tenant, source, true).await;
    assert_eq!(
        by_id.len(),
        expected.len(),
        "request count differs from upstream"
    );
    for r in &expected {
        let id = r["id"].to_string();
        let got = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("request {id} missing from export"));
        assert_eq!(got["kind"], "content");
        assert_eq!(got["deleted"], false);
        assert_eq!(&got["data"], r, "payload of request {id} differs");
    }
}

/// Asserts that the database is sound: SQLite's integrity check of the
/// file; on Postgres, that its tables answer (the server keeps its own
/// files sound).
pub async fn assert_integrity(db: &Db) {
    let mut conn = db.connect().await.expect("open db");
    match db {
        Db::Sqlite(_) => {
            let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
                .fetch_one(&mut conn)
                .await
                .expect("integrity_check");
            assert_eq!(check, "ok");
        }
        Db::Postgres(_) => {
            for table in ["records", "progress", "runs", "outbox", "leases"] {
                let sql = format!("SELECT count(*) FROM {table}");
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("{table}: {e}"));
            }
        }
    }
}

/// Every completion upstream, as (request id, completed date), sorted: what
/// must be reported.
pub fn completions(sim: &synchro_simulator::ContentSim) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = sim
        .api_requests()
        .iter()
        .filter(|r| r["state"] == "completed")
        .map(|r| {
            (
                r["id"].as_i64().expect("id"),
                r["completed"].as_str().expect("completed date").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Success reports received, as (id, completed date), sorted, duplicates kept.
pub fn successes(sim: &synchro_simulator::ContentSim) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = sim
        .reports()
        .into_iter()
        .filter(|r| r.import_state == "success")
        .map(|r| (r.id, r.completed.unwrap_or_default()))
        .collect();
    out.sort();
    out
}

/// The environment variable that replays a random test: set it to the seed a
/// failed run printed.
pub const SEED_VAR: &str = "SYNCHRO_TEST_SEED";

/// A random generator for `test`, seeded from `SYNCHRO_TEST_SEED` when set,
/// otherwise from entropy; the seed goes to stderr, which the harness shows
/// when the test fails, so that any failure can be replayed.
pub fn seeded_rng(test: &str) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed = match std::env::var(SEED_VAR) {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("{SEED_VAR}={v:?} is not a u64: {e}")),
        Err(_) => rand::random(),
    };
    eprintln!("{test}: random seed {seed} (replay with {SEED_VAR}={seed})");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// A free port on 127.0.0.1 (bound and released: for a daemon that needs
/// a fixed one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Successful runs of a source that started after `since_us`.
pub async fn successes_since(db: &Db, tenant: &str, source: &str, since_us: i64) -> i64 {
    db.count(
        &format!(
            "SELECT count(*) FROM runs WHERE tenant = ?1 AND source = ?2 \
             AND outcome = 'success' AND started_at > {since_us}"
        ),
        &[tenant, source],
    )
    .await
}

/// Waits until each of `sources` (tenant, source) has a successful run that
/// started after `since_us`: the database then holds every upstream change
/// made before.
pub async fn wait_for_runs_since(
    db: &Db,
    sources: &[(&str, &str)],
    since_us: i64,
    timeout: Duration,
    what: &str,
) {
    wait_until(timeout, what, || {
        let db = db.clone();
        async move {
            for (tenant, source) in sources {
                if successes_since(&db, tenant, source, since_us).await == 0 {
                    return false;
                }
            }
            true
        }
    })
    .await;
}

/// Replica `n`: `synchro run` with its own log file (`replica-{n}.log`
/// in the setup's folder), listening on `port` if given.
pub fn spawn_replica(setup: &Setup, n: usize, port: Option<u16>) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(setup.dir.path().join(format!("replica-{n}.log")))
        .expect("log file");
    let err = log.try_clone().expect("log file");
    let mut cmd = Command::new(bin());
    cmd.arg("--config")
        .arg(&setup.config)
        .args(["--log-format", "text", "run"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    if let Some(port) = port {
        cmd.env("SYNCHRO__SERVER__LISTEN", format!("127.0.0.1:{port}"));
    }
    cmd.spawn().expect("spawn a replica")
}

/// Waits (30 s at most) for `child` to exit, and checks it exited 0.
pub async fn assert_exits_0(mut child: Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert_eq!(status.code(), Some(0), "the daemon exited {status:?}");
            return;
        }
        assert!(Instant::now() < deadline, "the daemon did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
