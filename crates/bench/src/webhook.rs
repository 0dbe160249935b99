//! Webhook latency: Contentor callbacks sent open-loop to `synchro run`,
//! measured from the instant each one was due to the `200` that the daemon
//! sends only after the commit; next to two baselines from the same run.
//!
//! * HTTP floor: the same open-loop load against `GET /healthz` of the same
//!   daemon (axum, no database).
//! * Commit floor: a bare single-row `BEGIN IMMEDIATE` upsert + `COMMIT` in
//!   a database on the same disk (WAL, `synchronous=NORMAL`), no HTTP.
//! * Webhook load: `PUT /webhooks/content/{tenant}/{source}` at a fixed rate
//!   on a fixed schedule, each request on its own task, so a slow answer
//!   never delays the next send (no coordinated omission); each callback is
//!   a new state of a request (40 % `completed`, so outbox rows are written
//!   too), while the daemon runs its scheduled syncs of the same sources.
//!   Afterwards the database must hold, for every request called back, the
//!   newest version sent, and an outbox row for every completion.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use synchro_simulator::{self, Simulator};

use crate::baseline::{self, format_us, parse_us};
use crate::child;
use crate::report::{Section, verdict};

/// Issue 7: content webhook to committed row, p99 ≤ 50 ms at 200 callbacks/s.
const TARGET_P99: Duration = Duration::from_millis(50);
const RATE_PER_S: u64 = 200;
const LOAD: Duration = Duration::from_secs(20);
const HEALTHZ_LOAD: Duration = Duration::from_secs(5);
/// Content sources, each with its own webhook token and a sync every second.
const SOURCES: usize = 4;
/// Requests upstream before the load; the callbacks change their states.
const SEEDED: usize = 4_000;
/// Share of a source's callbacks that update a request it already called
/// back about (the rest are first callbacks of a request).
const UPDATES_PERCENT: usize = 25;
/// State of the n-th callback of a request, in turn: 40 % completed.
const STATES: [&str; 5] = ["confirmed", "completed", "pending", "completed", "canceled"];
const COMMIT_SAMPLES: usize = 1_000;
const TENANT: &str = "bench";
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Latencies of one open-loop load, sorted, and the failures.
struct Load {
    sent: usize,
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
    wall: Duration,
}

impl Load {
    fn pct(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// Nearest-rank percentile of sorted samples (zero when there are none).
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Sends `count` requests at `rate` per second on a fixed schedule: the
/// i-th is due at `start + i / rate` and runs on its own task; its latency
/// runs from that due instant (a late send counts against the daemon's
/// answer, as a real sender's would). `send(i)` builds the request just
/// before it is due and returns the future that sends it and yields `Ok`
/// only on 200.
async fn open_loop<F, Fut>(rate: u64, count: usize, mut send: F) -> Load
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let due = start + period * i as u32;
        tokio::time::sleep_until(due).await;
        let fut = send(i);
        tasks.spawn(async move {
            let result = fut.await;
            (result, due.elapsed())
        });
    }
    let mut load = Load {
        sent: count,
        latencies: Vec::with_capacity(count),
        errors: 0,
        first_error: None,
        wall: Duration::ZERO,
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((Ok(()), latency)) => load.latencies.push(latency),
            Ok((Err(e), _)) => {
                load.errors += 1;
                load.first_error.get_or_insert(e);
            }
            Err(e) => {
                load.errors += 1;
                load.first_error.get_or_insert(e.to_string());
            }
        }
    }
    load.wall = start.elapsed();
    load.latencies.sort();
    load
}

/// Sends one request and wants a 200.
pub(crate) async fn expect_ok(req: reqwest::RequestBuilder) -> Result<(), String> {
    match req.send().await {
        Ok(r) if r.status() == reqwest::StatusCode::OK => {
            // Read the body so the connection goes back to the pool.
            r.bytes().await.map(|_| ()).map_err(|e| e.to_string())
        }
        Ok(r) => Err(format!("HTTP {}", r.status())),
        Err(e) => Err(e.to_string()),
    }
}

/// The commit floor: `COMMIT_SAMPLES` single-row upserts, one transaction
/// each, with synchro's schema and upsert rule, on the disk of `dir`.
async fn commit_floor(dir: &Path) -> Result<Vec<Duration>> {
    let db = dir.join("floor.db");
    let store = synchro::store::Store::open(&format!("sqlite://{}", db.display())).await?;
    store.close().await;
    let opts = SqliteConnectOptions::new()
        .filename(&db)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    let mut conn = SqliteConnection::connect_with(&opts).await?;
    let sql = format!(
        "INSERT INTO records (tenant, source, id, kind, updated_at, updated_us, deleted, data, stored_at, seq) \
         VALUES ('bench', 'floor', ?1, 'content', ?2, ?3, 0, ?4, ?3, ?5) {}",
        baseline::UPSERT_CONFLICT
    );
    let data = format!(
        r#"{{"id":1,"state":"completed","text":"{}"}}"#,
        "x".repeat(900)
    );
    let mut samples = Vec::with_capacity(COMMIT_SAMPLES);
    for i in 0..COMMIT_SAMPLES {
        let us = 1_700_000_000_000_000 + i as i64;
        let started = Instant::now();
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind((i % 100).to_string())
            .bind(format_us(us))
            .bind(us)
            .bind(&data)
            .bind(i as i64 + 1)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        samples.push(started.elapsed());
    }
    conn.close().await?;
    samples.sort();
    Ok(samples)
}

/// One callback sent: which row it must have left behind.
struct Sent {
    source: usize,
    id: i64,
    version_us: i64,
    completed: Option<String>,
}

/// What the database holds after the load, against what was sent.
struct Verified {
    rows_checked: usize,
    rows_wrong: usize,
    completions_checked: usize,
    completions_missing: usize,
}

fn source_id(k: usize) -> String {
    format!("hook{k}")
}

async fn verify(db: &Path, sent: &[Sent]) -> Result<Verified> {
    let opts = SqliteConnectOptions::new().filename(db).read_only(true);
    let mut conn = SqliteConnection::connect_with(&opts).await?;
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT source, id, updated_us FROM records WHERE tenant = ?1")
            .bind(TENANT)
            .fetch_all(&mut conn)
            .await?;
    let outbox: Vec<(String, String, String)> =
        sqlx::query_as("SELECT source, record_id, completed_at FROM outbox WHERE tenant = ?1")
            .bind(TENANT)
            .fetch_all(&mut conn)
            .await?;
    conn.close().await?;
    let stored: HashMap<(String, String), i64> =
        rows.into_iter().map(|(s, id, us)| ((s, id), us)).collect();
    let outbox: HashSet<(String, String, String)> = outbox.into_iter().collect();

    // Only a source's own callbacks change its account's requests, so the
    // newest callback per (source, request) is the newest version upstream:
    // what must be stored, whatever the syncs did meanwhile (a sync may only
    // have stored a newer one if a later callback failed).
    let mut newest: HashMap<(String, String), i64> = HashMap::new();
    let mut v = Verified {
        rows_checked: 0,
        rows_wrong: 0,
        completions_checked: 0,
        completions_missing: 0,
    };
    for s in sent {
        let key = (source_id(s.source), s.id.to_string());
        let e = newest.entry(key.clone()).or_insert(s.version_us);
        *e = (*e).max(s.version_us);
        if let Some(c) = &s.completed {
            v.completions_checked += 1;
            if !outbox.contains(&(key.0, key.1, c.clone())) {
                v.completions_missing += 1;
            }
        }
    }
    for (key, us) in &newest {
        v.rows_checked += 1;
        if stored.get(key).is_none_or(|s| s < us) {
            v.rows_wrong += 1;
        }
    }
    Ok(v)
}

/// Polls `check` until it holds or `deadline` passes.
pub(crate) async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    while !check().await {
        if Instant::now() > until {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Successful sync runs of each bench source so far (0 for unreadable).
async fn successes(db: &Path) -> Vec<i64> {
    let mut out = vec![0; SOURCES];
    let opts = SqliteConnectOptions::new().filename(db).read_only(true);
    let Ok(mut conn) = SqliteConnection::connect_with(&opts).await else {
        return out;
    };
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT source, count(*) FROM runs WHERE tenant = ?1 AND outcome = 'success' GROUP BY source",
    )
    .bind(TENANT)
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    let _ = conn.close().await;
    for (source, n) in rows {
        if let Some(k) = (0..SOURCES).find(|k| source_id(*k) == source) {
            out[k] = n;
        }
    }
    out
}

fn config(sims: &[Simulator], db: &Path, port: u16) -> String {
    let mut toml = format!(
        "[storage]\ndatabase = \"sqlite://{}\"\n\n[server]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [scheduler]\njitter = \"0s\"\n\n\
         [http]\nper_host_requests_per_second = 1000\nper_host_concurrency = 16\n\n\
         [[tenants]]\nid = \"{TENANT}\"\n",
        db.display()
    );
    for (k, sim) in sims.iter().enumerate() {
        let _ = write!(
            toml,
            "\n[[tenants.sources]]\nid = \"{}\"\nkind = \"content\"\nschedule = \"every 1s\"\n\
             endpoint = \"{}\"\ntoken = \"{}\"\nreport_import_state = true\n\
             webhook_token = \"hook-secret-{k}\"\n",
            source_id(k),
            sim.content_endpoint(),
            synchro_simulator::DEFAULT_CONTENT_TOKEN
        );
    }
    toml
}

/// Measures the baselines, then the webhook load, and checks the database.
pub async fn run(bin: &Path) -> Result<Section> {
    let dir = tempfile::tempdir()?;
    let floor = commit_floor(dir.path()).await?;
    eprintln!(
        "commit floor: p50 {} p99 {} max {}",
        ms(percentile(&floor, 50.0)),
        ms(percentile(&floor, 99.0)),
        ms(percentile(&floor, 100.0))
    );

    // One simulated Contentor account per source, as in production: a
    // source's sync sees only the changes its own callbacks are about.
    let mut sims = Vec::with_capacity(SOURCES);
    for _ in 0..SOURCES {
        sims.push(Simulator::start(([127, 0, 0, 1], 0).into()).await?);
    }
    let contents: Vec<_> = sims.iter().map(Simulator::content).collect();
    let shares: Vec<Vec<i64>> = contents
        .iter()
        .map(|c| c.seed(SEEDED / SOURCES, 50))
        .collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let db = dir.path().join("synchro.db");
    let config_path = dir.path().join("synchro.toml");
    std::fs::write(&config_path, config(&sims, &db, port))?;
    let daemon = child::Running::start(bin, &config_path, dir.path(), &["run"])?;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(ANSWER_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")?;
    let readyz = format!("{base}/readyz");
    wait_for("/readyz", Duration::from_secs(30), || {
        let req = client.get(&readyz);
        async move { expect_ok(req).await.is_ok() }
    })
    .await?;
    wait_for(
        "the first sync of every source",
        Duration::from_secs(60),
        || async { successes(&db).await.iter().all(|n| *n >= 1) },
    )
    .await?;
    let runs_before: i64 = successes(&db).await.iter().sum();

    // HTTP floor.
    let healthz_url = format!("{base}/healthz");
    let healthz = open_loop(
        RATE_PER_S,
        (RATE_PER_S * HEALTHZ_LOAD.as_secs()) as usize,
        |_| expect_ok(client.get(&healthz_url)),
    )
    .await;
    eprintln!(
        "healthz: p50 {} p99 {} max {} errors {}",
        ms(healthz.pct(50.0)),
        ms(healthz.pct(99.0)),
        ms(healthz.pct(100.0)),
        healthz.errors
    );

    // Webhook load: source k calls back about the requests of its account.
    let count = (RATE_PER_S * LOAD.as_secs()) as usize;
    let per_source = count.div_ceil(SOURCES);
    let distinct = (per_source * (100 - UPDATES_PERCENT) / 100).clamp(1, SEEDED / SOURCES);
    let sent = Arc::new(std::sync::Mutex::new(Vec::with_capacity(count)));
    let cpu_before = child::cpu_time(daemon.pid());
    let hooks = open_loop(RATE_PER_S, count, |i| {
        let k = i % SOURCES;
        let j = i / SOURCES;
        let id = shares[k][j % distinct];
        let state = STATES[(j + j / distinct) % STATES.len()];
        contents[k].set_state(id, state);
        let body = contents[k].webhook_body(id);
        let request = &body["request"];
        let version_us = request["lastStateChange"]
            .as_str()
            .and_then(parse_us)
            .unwrap_or_default();
        let completed = (state == "completed")
            .then(|| request["completed"].as_str().map(str::to_string))
            .flatten();
        let req = client
            .put(format!("{base}/webhooks/content/{TENANT}/{}", source_id(k)))
            .bearer_auth(format!("hook-secret-{k}"))
            .json(&body);
        let sent = sent.clone();
        async move {
            let r = expect_ok(req).await;
            if r.is_ok() {
                sent.lock().unwrap_or_else(|e| e.into_inner()).push(Sent {
                    source: k,
                    id,
                    version_us,
                    completed,
                });
            }
            r
        }
    })
    .await;
    let cpu = child::cpu_time(daemon.pid())
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let syncs = successes(&db).await.iter().sum::<i64>() - runs_before;
    eprintln!(
        "webhooks: {} answered 200 of {}, p50 {} p99 {} max {}, {syncs} syncs meanwhile",
        hooks.latencies.len(),
        hooks.sent,
        ms(hooks.pct(50.0)),
        ms(hooks.pct(99.0)),
        ms(hooks.pct(100.0))
    );
    daemon.stop(Duration::from_secs(30)).await?;
    let sent = std::mem::take(&mut *sent.lock().unwrap_or_else(|e| e.into_inner()));
    let verified = verify(&db, &sent).await?;
    for sim in sims {
        sim.shutdown().await;
    }
    Ok(render(&floor, &healthz, &hooks, cpu, syncs, &verified))
}

fn render(
    floor: &[Duration],
    healthz: &Load,
    hooks: &Load,
    cpu: Option<Duration>,
    syncs: i64,
    v: &Verified,
) -> Section {
    let mut s = String::new();
    let _ = write!(
        s,
        "`synchro run` (release binary, child process) with {SOURCES} content sources, each \
         with a webhook token, import-state reporting on and a sync every second against its \
         own account in the in-process simulator ({SEEDED} requests in all). Requests are sent **open-loop**: the i-th \
         is due at i / {RATE_PER_S} s and runs on its own task, so a slow answer never delays \
         the next one; latency runs from the due instant to the end of the answer. Bench, \
         simulator and daemon share the same cores.\n\n\
         - *Commit floor*: {COMMIT_SAMPLES} bare single-row upserts, one `BEGIN IMMEDIATE` \
         transaction each, synchro's schema, WAL, `synchronous=NORMAL`, same disk, no HTTP.\n\
         - *HTTP floor*: `GET /healthz` of the same daemon at {RATE_PER_S}/s for {} s.\n\
         - *Webhook*: `PUT /webhooks/content/{{tenant}}/{{source}}` at {RATE_PER_S}/s for {} s, \
         each a new state of a request ({UPDATES_PERCENT} % of them a request already called \
         back, 40 % `completed`), answered 200 only after the commit; {syncs} scheduled syncs \
         of the same sources completed meanwhile.\n\n",
        HEALTHZ_LOAD.as_secs(),
        LOAD.as_secs()
    );
    s.push_str("| Load | Count | Errors | p50 | p99 | max | Target p99 ≤ 50 ms |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---|\n");
    let _ = writeln!(
        s,
        "| Commit floor (SQLite, no HTTP) | {} | 0 | {} | {} | {} | |",
        floor.len(),
        ms(percentile(floor, 50.0)),
        ms(percentile(floor, 99.0)),
        ms(percentile(floor, 100.0))
    );
    for (name, load, target) in [
        ("HTTP floor (`/healthz`)", healthz, false),
        ("Webhook → committed row", hooks, true),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            load.sent,
            load.errors,
            ms(load.pct(50.0)),
            ms(load.pct(99.0)),
            ms(load.pct(100.0)),
            if target {
                verdict(load.errors == 0 && load.pct(99.0) <= TARGET_P99)
            } else {
                ""
            }
        );
    }
    s.push('\n');
    let achieved = hooks.sent as f64 / hooks.wall.as_secs_f64().max(1e-9);
    let _ = write!(
        s,
        "Achieved rate: {achieved:.0} callbacks/s over {:.1} s.",
        hooks.wall.as_secs_f64()
    );
    if let Some(cpu) = cpu {
        let _ = write!(
            s,
            " Daemon CPU during the load: {:.2} s ({:.2} ms per callback, syncs and reports \
             included).",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e3 / hooks.sent.max(1) as f64
        );
    }
    if let Some(e) = &hooks.first_error {
        let _ = write!(s, " First error: `{e}`.");
    }
    let _ = write!(
        s,
        "\n\nChecked in the database afterwards: {} (source, request) rows hold the newest \
         version called back or a newer one ({} missing or older); {} completions called \
         back have their outbox row ({} missing).\n\n",
        v.rows_checked, v.rows_wrong, v.completions_checked, v.completions_missing
    );

    let mut misses = Vec::new();
    let p99 = hooks.pct(99.0);
    if hooks.errors > 0 || p99 > TARGET_P99 {
        misses.push(format!(
            "**webhook latency**: p99 {} at {RATE_PER_S}/s with {} errors (target ≤ {} and \
             none); gap {}. Same-run floors: HTTP p99 {}, single-row commit p99 {}.",
            ms(p99),
            hooks.errors,
            ms(TARGET_P99),
            ms(p99.saturating_sub(TARGET_P99)),
            ms(healthz.pct(99.0)),
            ms(percentile(floor, 99.0))
        ));
    }
    if v.rows_wrong > 0 || v.completions_missing > 0 {
        misses.push(format!(
            "**webhook correctness**: {} rows without the newest version called back, {} \
             completions without an outbox row.",
            v.rows_wrong, v.completions_missing
        ));
    }
    Section {
        title: format!("Webhook latency: content callbacks at {RATE_PER_S}/s"),
        body: s,
        misses,
    }
}
