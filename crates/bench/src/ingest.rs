//! Ingest: the raw SQLite ceiling, then a full sync of the same number of
//! records per connector, as a ratio to it; peak RSS; a no-change cycle.
//!
//! * Ingest ceiling: the fastest insert of N ~1 KB payloads into a fresh
//!   database with synchro's schema and upsert rule (prepared statement, one
//!   transaction per 1,000 rows, WAL, `synchronous=NORMAL`); no HTTP, no JSON
//!   parsing.
//! * End to end: `synchro sync` (the release binary, as a child process)
//!   of N records from the in-process simulator, per connector; records/s
//!   and ratio to the ceiling; peak RSS of the child.
//! * No-change cycle: requests a second `sync` sends when nothing changed.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use synchro_simulator::{self, Simulator};

use crate::baseline::{self, format_us};
use crate::child;
use crate::report::{Section, verdict};

const CEILING_TX_ROWS: usize = 1_000;
const CEILING_ATTEMPTS: usize = 3;
/// The highest per-host request rate the configuration accepts.
pub(crate) const MAX_RATE: u32 = 100_000;
/// Full syncs per connector, each followed by a same-payload ceiling run.
const SYNC_ATTEMPTS: usize = 3;
const CEILING_PAYLOAD_BYTES: usize = 1_024;
/// Targets from issue 7.
const TARGET_INGEST_RATIO: f64 = 0.60;
const TARGET_RSS_MB: f64 = 100.0;

// ---------------------------------------------------------------- ceiling

/// How the ceiling inserts: one row per statement, or this many rows per
/// multi-row `VALUES` statement (fewer driver round trips).
const MULTI_ROWS: usize = 100;

/// One row the ceiling inserts: id, updated_at, updated_us, deleted, data.
type CeilingRow = (String, String, i64, bool, String);

/// The synthetic payloads: ~1 KB of JSON text each, ids `0..n`.
fn synthetic_rows(n: usize) -> Vec<CeilingRow> {
    let filler: String = (0..CEILING_PAYLOAD_BYTES)
        .map(|i| (b'a' + (i * 7 % 26) as u8) as char)
        .collect();
    (0..n)
        .map(|i| {
            let data = format!(
                r#"{{"number":{i},"state":"en_construction","text":"{}"}}"#,
                &filler[..CEILING_PAYLOAD_BYTES - 60]
            );
            let us = 1_700_000_000_000_000 + i as i64;
            (i.to_string(), format_us(us), us, false, data)
        })
        .collect()
}

/// The records a sync stored, in the order it stored them (rowid): the
/// payloads of the same-payload ceiling.
async fn stored_rows(db: &Path) -> Result<Vec<CeilingRow>> {
    let opts = SqliteConnectOptions::new().filename(db).read_only(true);
    let mut conn = SqliteConnection::connect_with(&opts).await?;
    let rows = sqlx::query_as(
        "SELECT id, updated_at, updated_us, deleted, data FROM records ORDER BY rowid",
    )
    .fetch_all(&mut conn)
    .await?;
    conn.close().await?;
    Ok(rows)
}

/// Records/s and CPU time per record of one ceiling run: `rows` (prepared
/// before the clock starts) inserted into a fresh database as `kind`.
async fn ingest_ceiling(
    db: &Path,
    kind: &str,
    rows: &[CeilingRow],
    rows_per_stmt: usize,
) -> Result<(f64, Duration)> {
    let store = synchro::store::Store::open(&format!("sqlite://{}", db.display())).await?;
    store.close().await;

    let opts = SqliteConnectOptions::new()
        .filename(db)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    let mut conn = SqliteConnection::connect_with(&opts).await?;
    // The page cache and WAL checkpoint interval synchro itself uses for a
    // large sync: the ceiling is never handicapped against the sync.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "PRAGMA cache_size = -{}; PRAGMA wal_autocheckpoint = {}",
        baseline::WIDE_KIB,
        baseline::WIDE_CHECKPOINT_PAGES
    )))
    .execute(&mut conn)
    .await?;
    let cpu_before = child::own_cpu();
    let started = Instant::now();
    let statement = |rows: usize| {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ");
        format!(
            "INSERT INTO records (tenant, source, id, kind, updated_at, updated_us, deleted, data, stored_at, seq) \
             VALUES {values} {}",
            baseline::UPSERT_CONFLICT
        )
    };
    let full = statement(rows_per_stmt);
    // Change numbers, as synchro gives each row written.
    let mut seq = 0_i64;
    for chunk in rows.chunks(CEILING_TX_ROWS) {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        for group in chunk.chunks(rows_per_stmt) {
            let partial;
            let sql = if group.len() == rows_per_stmt {
                &full
            } else {
                partial = statement(group.len());
                &partial
            };
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for (id, at, us, deleted, data) in group {
                q = q
                    .bind("bench")
                    .bind("ceiling")
                    .bind(id)
                    .bind(kind)
                    .bind(at)
                    .bind(us)
                    .bind(deleted)
                    .bind(data)
                    .bind(us)
                    .bind({
                        seq += 1;
                        seq
                    });
            }
            q.execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE change_seq SET last_seq = ?1 WHERE id = 1")
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    let elapsed = started.elapsed();
    let cpu = child::own_cpu().saturating_sub(cpu_before);
    conn.close().await?;
    let n = rows.len().max(1);
    Ok((n as f64 / elapsed.as_secs_f64(), cpu / n as u32))
}

/// One multi-row ceiling run of the records a connector's sync stored, as
/// `kind`, into a fresh database in `dir` (records/s).
async fn same_payload_ceiling(
    dir: &Path,
    attempt: usize,
    kind: &str,
    rows: &[CeilingRow],
) -> Result<f64> {
    let target = dir.join(format!("same-{attempt}.db"));
    let (rate, _) = ingest_ceiling(&target, kind, rows, MULTI_ROWS).await?;
    std::fs::remove_file(&target).ok();
    Ok(rate)
}

// ---------------------------------------------------------------- request floor

/// Sequential requests timed per connector for the request floor.
const FLOOR_REQUESTS: usize = 1_000;

/// The mean round trip of one page request of `kind` (the listing's first
/// page, the size a sync asks for), sent one after the other by a bare
/// reqwest client to the same simulator, body read, nothing parsed: what a
/// sync's chain of dependent page requests costs before synchro does
/// anything with the pages.
async fn request_floor(sim: &Simulator, kind: Kind) -> Result<Duration> {
    let client = reqwest::Client::new();
    let request = || {
        match kind {
        Kind::Demarches => client
            .post(sim.ds_endpoint())
            .bearer_auth(synchro_simulator::DEFAULT_DS_TOKEN)
            .json(&serde_json::json!({
                "query": synchro_simulator::demarches::QUERY,
                "operationName": "getDemarche",
                "variables": {"demarcheNumber": 1, "first": 100, "after": null, "updatedSince": null},
            })),
        Kind::Calendar => client
            .get(format!("{}/calendars/bench/events", sim.calendar_endpoint()))
            .bearer_auth(synchro_simulator::DEFAULT_CALENDAR_TOKEN)
            .query(&[("maxResults", "250"), ("showDeleted", "true"), ("singleEvents", "false")]),
        Kind::Content => client
            .get(format!("{}/content", sim.content_endpoint()))
            .bearer_auth(synchro_simulator::DEFAULT_CONTENT_TOKEN)
            .query(&[
                (
                    "query",
                    r#"{"criteria":[{"type":"source","criteria":"api"}],"sortBy":["lastStateChange"]}"#,
                ),
                ("page", "1"),
            ]),
    }
    };
    let mut best = Duration::MAX;
    for _ in 0..2 {
        let started = Instant::now();
        for _ in 0..FLOOR_REQUESTS {
            let resp = request().send().await?.error_for_status()?;
            let body = resp.bytes().await?;
            if body.len() < 100 {
                bail!(
                    "{}: a {}-byte page for the request floor",
                    kind.name(),
                    body.len()
                );
            }
        }
        best = best.min(started.elapsed() / FLOOR_REQUESTS as u32);
    }
    Ok(best)
}

// ---------------------------------------------------------------- end to end

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Demarches,
    Calendar,
    Content,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Demarches => "demarches",
            Kind::Calendar => "calendar",
            Kind::Content => "content",
        }
    }

    pub(crate) fn source_toml(self, sim: &Simulator) -> String {
        match self {
            Kind::Demarches => format!(
                "endpoint = \"{}\"\ntoken = \"{}\"\ndemarche = 1\npage_size = 100\n",
                sim.ds_endpoint(),
                synchro_simulator::DEFAULT_DS_TOKEN
            ),
            Kind::Calendar => format!(
                "endpoint = \"{}\"\ncalendar_id = \"bench\"\nmax_results = 250\naccess_token = \"{}\"\n",
                sim.calendar_endpoint(),
                synchro_simulator::DEFAULT_CALENDAR_TOKEN
            ),
            Kind::Content => format!(
                "endpoint = \"{}\"\ntoken = \"{}\"\nreport_import_state = false\n",
                sim.content_endpoint(),
                synchro_simulator::DEFAULT_CONTENT_TOKEN
            ),
        }
    }

    pub(crate) fn seed(self, sim: &Simulator, n: usize) {
        match self {
            Kind::Demarches => {
                sim.ds().seed(1, n);
            }
            Kind::Calendar => {
                sim.calendar().seed("bench", n);
            }
            Kind::Content => {
                sim.content().seed(n, 50);
            }
        }
    }

    fn requests(self, sim: &Simulator) -> u64 {
        match self {
            Kind::Demarches => sim.ds().requests(),
            Kind::Calendar => sim.calendar().requests(),
            Kind::Content => sim.content().requests(),
        }
    }
}

/// A connector's full syncs and the same-payload ceiling runs measured
/// between them; the figures of single runs are those of the fastest sync.
struct E2e {
    kind: Kind,
    records: i64,
    avg_bytes: f64,
    /// The fastest sync run, as recorded in `runs`.
    run: Duration,
    /// Every sync run, in the order measured.
    runs: Vec<Duration>,
    wall: Duration,
    pages: i64,
    max_rss_kb: i64,
    nochange_requests: u64,
    nochange_wall: Duration,
    /// CPU time of the fastest `synchro sync` process.
    child_cpu: Duration,
    /// CPU time of this process while the fastest sync ran: the in-process
    /// simulator.
    sim_cpu: Duration,
    /// The best ceiling run on the very records the sync stored, in the
    /// order it stored them (records/s).
    same_ceiling: f64,
    /// Every same-payload ceiling run, in the order measured.
    same_ceilings: Vec<f64>,
    /// Mean round trip of a bare page request to the same simulator.
    floor_rtt: Duration,
}

impl E2e {
    /// The sync's page requests, one after the other, at the bare round
    /// trip: the request floor.
    fn floor(&self) -> Duration {
        self.floor_rtt * self.pages.max(0) as u32
    }

    /// The rate the request floor allows (records/s).
    fn floor_rate(&self) -> f64 {
        self.records as f64 / self.floor().as_secs_f64().max(1e-9)
    }

    /// Records/s of a sync run.
    fn rate(&self, run: Duration) -> f64 {
        self.records as f64 / run.as_secs_f64().max(1e-9)
    }
}

/// What one full sync into a fresh database measured.
pub(crate) struct FullSync {
    pub(crate) run: Duration,
    pub(crate) pages: i64,
    pub(crate) records: i64,
    pub(crate) avg_bytes: f64,
    pub(crate) process: child::Finished,
    pub(crate) sim_cpu: Duration,
}

/// A full sync of `kind` into a fresh database at `db` (config beside it),
/// from the simulator as seeded.
pub(crate) async fn full_sync(
    bin: &Path,
    sim: &Simulator,
    kind: Kind,
    db: &Path,
    n: usize,
) -> Result<FullSync> {
    let dir = db.parent().context("the database has no folder")?;
    let config = dir.join("synchro.toml");
    let toml = format!(
        "[storage]\ndatabase = \"sqlite://{}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [http]\nper_host_requests_per_second = {MAX_RATE}\nper_host_concurrency = 16\n\n\
         [[tenants]]\nid = \"bench\"\n\n[[tenants.sources]]\nid = \"{}\"\nkind = \"{}\"\n\
         schedule = \"every 1h\"\n{}",
        db.display(),
        kind.name(),
        kind.name(),
        kind.source_toml(sim)
    );
    std::fs::write(&config, toml)?;
    let sim_before = child::own_cpu();
    let fast_before = sim.ds().fast_answers();
    let process = child::run_to_end(bin, &config, dir, &["sync"]).await?;
    let sim_cpu = child::own_cpu().saturating_sub(sim_before);

    let opts = SqliteConnectOptions::new().filename(db).read_only(true);
    let mut conn = SqliteConnection::connect_with(&opts).await?;
    let (records, avg_bytes): (i64, f64) =
        sqlx::query_as("SELECT count(*), coalesce(avg(length(data)), 0.0) FROM records")
            .fetch_one(&mut conn)
            .await?;
    let (run_us, pages): (i64, i64) = sqlx::query_as(
        "SELECT finished_at - started_at, pages FROM runs WHERE outcome = 'success' ORDER BY id LIMIT 1",
    )
    .fetch_one(&mut conn)
    .await
    .context("the full sync is not recorded as a success")?;
    conn.close().await?;
    if records < n as i64 {
        bail!("{}: {records} records stored, {n} expected", kind.name());
    }
    if kind == Kind::Demarches && pages > 1 && sim.ds().fast_answers() == fast_before {
        bail!(
            "demarches: the simulator's fast path answered none of the sync's pages \
             (synchro's query differs from synchro_simulator::demarches::QUERY): the \
             figures would measure the simulator's GraphQL engine"
        );
    }
    Ok(FullSync {
        run: Duration::from_micros(run_us.max(0) as u64),
        pages,
        records,
        avg_bytes,
        process,
        sim_cpu,
    })
}

/// [`SYNC_ATTEMPTS`] full syncs of `kind`, each into a fresh database and
/// each followed by a same-payload ceiling run of the records the first one
/// stored: the two sides alternate, so that both see the same machine.
async fn end_to_end(bin: &Path, sim: &Simulator, kind: Kind, n: usize) -> Result<E2e> {
    kind.seed(sim, n);
    let mut best: Option<FullSync> = None;
    let mut runs = Vec::new();
    let mut same_ceilings = Vec::new();
    let mut rows = Vec::new();
    let mut max_rss_kb = 0;
    let (mut nochange_requests, mut nochange_wall) = (0, Duration::ZERO);
    let scratch = tempfile::tempdir()?;
    for attempt in 0..SYNC_ATTEMPTS {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("synchro.db");
        let sync = full_sync(bin, sim, kind, &db, n).await?;
        max_rss_kb = max_rss_kb.max(sync.process.max_rss_kb);
        runs.push(sync.run);
        if attempt == 0 {
            let config = dir.path().join("synchro.toml");
            let before = kind.requests(sim);
            let second = child::run_to_end(bin, &config, dir.path(), &["sync"]).await?;
            nochange_requests = kind.requests(sim) - before;
            nochange_wall = second.wall;
            max_rss_kb = max_rss_kb.max(second.max_rss_kb);
            rows = stored_rows(&db).await?;
        }
        drop(dir);
        same_ceilings
            .push(same_payload_ceiling(scratch.path(), attempt, kind.name(), &rows).await?);
        if best.as_ref().is_none_or(|b| sync.run < b.run) {
            best = Some(sync);
        }
    }
    drop(rows);
    let best = best.context("no sync run")?;
    let floor_rtt = request_floor(sim, kind).await?;
    Ok(E2e {
        kind,
        records: best.records,
        avg_bytes: best.avg_bytes,
        run: best.run,
        runs,
        wall: best.process.wall,
        pages: best.pages,
        max_rss_kb,
        nochange_requests,
        nochange_wall,
        child_cpu: best.process.cpu,
        sim_cpu: best.sim_cpu,
        same_ceiling: same_ceilings.iter().copied().fold(0.0, f64::max),
        same_ceilings,
        floor_rtt,
    })
}

// ---------------------------------------------------------------- report

/// Figures separated by commas.
fn joined(figures: impl Iterator<Item = String>) -> String {
    figures.collect::<Vec<_>>().join(", ")
}

/// Renders the ceiling, the end-to-end table and the no-change cycle.
fn render(n: usize, ceiling: f64, ceilings: &[(usize, f64, Duration)], e2e: &[E2e]) -> Section {
    let mut s = String::new();
    let runs = |per: usize| {
        joined(
            ceilings
                .iter()
                .filter(|c| c.0 == per)
                .map(|c| format!("{:.0}", c.1)),
        )
    };
    let _ = write!(
        s,
        "### Baseline: the SQLite ingest ceiling\n\n\
         Insert of {n} payloads of ~1 KB into a fresh database with synchro's schema and \
         indexes (`Store::open`) and synchro's own upsert clause (`ON CONFLICT ... DO UPDATE \
         WHERE newer`), prepared statements through sqlx, one transaction per \
         {CEILING_TX_ROWS} rows, WAL, `synchronous=NORMAL`, the page cache and WAL \
         checkpoint interval synchro gives a large sync; no HTTP, no JSON parsing. Two \
         variants, {CEILING_ATTEMPTS} runs each; the ceiling is the best of all: \
         **{ceiling:.0} records/s**.\n\n\
         - one row per statement: {} records/s\n\
         - {MULTI_ROWS} rows per statement: {} records/s\n\n",
        runs(1),
        runs(MULTI_ROWS)
    );

    let _ = write!(
        s,
        "### End-to-end full sync\n\n\
         `synchro sync` (release binary, child process) of a fresh database from the \
         in-process simulator, which serves on the same cores. *Run* is the sync run as \
         recorded in `runs` (fetch + commit); *process* adds start-up, migration and exit. \
         The per-host request rate is set to the most the configuration allows \
         ({MAX_RATE}/s), so that the limiter stays out of the figure. \
         Two baselines: the synthetic ceiling above (~1 KB payloads, ids in order), and \
         the *same-payload ceiling*: the same insert of the very records the sync stored \
         (same ids, timestamps, deletion flags and payload text, in the order the sync \
         stored them), multi-row variant. That is issue 7's definition (\"the same 200,000 \
         payloads with the same upsert and the same indexes\"), and the target applies to \
         it: ≥ 60 % of it. Peak RSS < 100 MB.\n\n\
         Each connector's full sync runs {SYNC_ATTEMPTS} times, each time into a fresh \
         database and followed by one run of the same-payload ceiling, so that the two sides \
         alternate and meet the same machine. The table compares the fastest sync with the \
         fastest ceiling run: on a shared machine noise only ever slows a run down, so the \
         best of each is the least disturbed measure of it, and both sides get the same \
         number of tries. Every run, and the ratio of each sync to the ceiling run after \
         it, are in the table that follows. *Process*, *Pages* and the CPU figures below \
         are those of the fastest sync; *Peak RSS* is the highest of all.\n\n"
    );
    s.push_str("| Connector | Records | Avg payload | Pages | Run | Records/s (run) | Ratio to the synthetic ceiling | Same-payload ceiling | Ratio to it | Target ≥ 60 % | Process | Peak RSS | Target < 100 MB |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|\n");
    let mut misses = Vec::new();
    for e in e2e {
        let rate = e.rate(e.run);
        let ratio = rate / e.same_ceiling.max(1e-9);
        let rss_mb = e.max_rss_kb as f64 / 1024.0;
        let ingest_ok = ratio >= TARGET_INGEST_RATIO;
        let rss_ok = rss_mb < TARGET_RSS_MB;
        if !ingest_ok {
            let per = |d: Duration| d.as_secs_f64() * 1e6 / e.records.max(1) as f64;
            let (own, sim) = (per(e.child_cpu), per(e.sim_cpu));
            misses.push(format!(
                "**{} ingest**: {:.0} records/s is {:.1} % of the same-payload ceiling \
                 ({:.0} records/s; {:.1} % of the synthetic one); the target needs {:.0} \
                 records/s, a gap of {:.1} points. Bound: one record costs {own:.1} µs of \
                 synchro's CPU and {sim:.1} µs of the simulator's on the same two cores, \
                 against {:.1} µs for the ceiling, which parses nothing and serves nothing; \
                 synchro's own CPU alone would allow {:.0} % of it. Its {} page requests \
                 depend on each other; at {:.0} µs for a bare round trip to the simulator \
                 they alone take {:.2} s, i.e. at most {:.0} % of the ceiling even if \
                 reading and storing the pages cost nothing (see the request floor).",
                e.kind.name(),
                rate,
                ratio * 100.0,
                e.same_ceiling,
                rate / ceiling * 100.0,
                e.same_ceiling * TARGET_INGEST_RATIO,
                (TARGET_INGEST_RATIO - ratio) * 100.0,
                1e6 / e.same_ceiling.max(1e-9),
                1e6 / own.max(1e-9) / e.same_ceiling.max(1e-9) * 100.0,
                e.pages,
                e.floor_rtt.as_secs_f64() * 1e6,
                e.floor().as_secs_f64(),
                e.floor_rate() / e.same_ceiling.max(1e-9) * 100.0
            ));
        }
        if !rss_ok {
            misses.push(format!(
                "**{} memory**: peak RSS {rss_mb:.1} MB (target < {TARGET_RSS_MB} MB).",
                e.kind.name()
            ));
        }
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} B | {} | {:.2} s | {:.0} | {:.1} % | {:.0} | {:.1} % | {} | {:.2} s | {:.1} MB | {} |",
            e.kind.name(),
            e.records,
            e.avg_bytes,
            e.pages,
            e.run.as_secs_f64(),
            rate,
            rate / ceiling * 100.0,
            e.same_ceiling,
            ratio * 100.0,
            verdict(ingest_ok),
            e.wall.as_secs_f64(),
            rss_mb,
            verdict(rss_ok),
        );
    }
    s.push('\n');

    s.push_str(
        "| Connector | Sync runs, records/s | Same-payload ceiling runs, records/s | Ratio, run by run |\n\
         |---|---|---|---|\n",
    );
    for e in e2e {
        let rates: Vec<f64> = e.runs.iter().map(|r| e.rate(*r)).collect();
        let pairs = rates
            .iter()
            .zip(&e.same_ceilings)
            .map(|(r, c)| format!("{:.1} %", r / c.max(1e-9) * 100.0));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            e.kind.name(),
            joined(rates.iter().map(|r| format!("{r:.0}"))),
            joined(e.same_ceilings.iter().map(|c| format!("{c:.0}"))),
            joined(pairs),
        );
    }
    s.push('\n');

    let ceiling_cpu = ceilings
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(Duration::ZERO, |c| c.2);
    let _ = write!(
        s,
        "### Where the CPU goes\n\n\
         Both cores serve two programs during a sync: `synchro` and the simulator, which \
         serves every record as JSON (rendered when it is seeded). \
         CPU time per record, from `wait4` for `synchro` and `getrusage` for the \
         bench process (the simulator) over the same sync, next to the ceiling's CPU per \
         record ({:.1} µs). *synchro alone* is the rate synchro's own CPU time would allow \
         if the upstream cost nothing, as a ratio to the connector's same-payload ceiling.\n\n\
         | Connector | synchro CPU/record | simulator CPU/record | synchro alone | Ratio to the same-payload ceiling |\n\
         |---|---:|---:|---:|---:|\n",
        ceiling_cpu.as_secs_f64() * 1e6
    );
    for e in e2e {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / e.records.max(1) as f64;
        let alone = 1e6 / per(e.child_cpu).max(1e-9);
        let _ = writeln!(
            s,
            "| {} | {:.1} µs | {:.1} µs | {:.0} records/s | {:.1} % |",
            e.kind.name(),
            per(e.child_cpu),
            per(e.sim_cpu),
            alone,
            alone / e.same_ceiling.max(1e-9) * 100.0
        );
    }
    s.push('\n');

    let _ = write!(
        s,
        "### The request floor\n\n\
         A sync's page requests form a chain: each needs something the previous answer \
         holds (a cursor, a watermark), so they cannot overlap. *Round trip* is the mean \
         time of one page request of the connector (the listing's first page, at the \
         sync's page size) sent {FLOOR_REQUESTS} times one after the other by a bare \
         reqwest client to the same simulator, body read and not parsed (best of 2). \
         *Floor* is the sync's requests times that round trip: the rate it could not beat \
         even if reading and storing the pages cost nothing.\n\n\
         | Connector | Requests | Round trip | Floor | Best rate it allows | Ratio to the same-payload ceiling |\n\
         |---|---:|---:|---:|---:|---:|\n"
    );
    for e in e2e {
        let best = e.floor_rate();
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} µs | {:.2} s | {:.0} records/s | {:.1} % |",
            e.kind.name(),
            e.pages,
            e.floor_rtt.as_secs_f64() * 1e6,
            e.floor().as_secs_f64(),
            best,
            best / e.same_ceiling.max(1e-9) * 100.0
        );
    }
    s.push('\n');

    s.push_str(
        "### No-change cycle, one source per connector\n\n\
         A second `synchro sync` right after the full sync, nothing changed upstream: \
         requests it sent to the connector's API (target: 1 per source) and process time.\n\n",
    );
    s.push_str("| Connector | Requests | Target 1 | Process |\n|---|---:|---|---:|\n");
    for e in e2e {
        let ok = e.nochange_requests <= 1;
        if !ok {
            misses.push(format!(
                "**{} no-change cycle**: {} requests (target 1).",
                e.kind.name(),
                e.nochange_requests
            ));
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} s |",
            e.kind.name(),
            e.nochange_requests,
            verdict(ok),
            e.nochange_wall.as_secs_f64()
        );
    }
    s.push('\n');
    Section {
        title: format!("Ingest: {n} records per connector"),
        body: s,
        misses,
    }
}

/// Measures the ceiling, then each connector against it.
pub async fn run(bin: &Path, n: usize) -> Result<Section> {
    let dir = tempfile::tempdir()?;
    let mut ceilings = Vec::new();
    let synthetic = synthetic_rows(n);
    for attempt in 0..CEILING_ATTEMPTS {
        for rows_per_stmt in [1, MULTI_ROWS] {
            let db = dir
                .path()
                .join(format!("ceiling-{attempt}-{rows_per_stmt}.db"));
            let (rate, cpu) = ingest_ceiling(&db, "demarches", &synthetic, rows_per_stmt).await?;
            eprintln!(
                "ingest ceiling run {} ({rows_per_stmt} row(s)/statement): {rate:.0} records/s",
                attempt + 1
            );
            ceilings.push((rows_per_stmt, rate, cpu));
        }
    }
    drop(dir);
    drop(synthetic);
    let ceiling = ceilings.iter().map(|c| c.1).fold(0.0, f64::max);

    let sim = Simulator::start(([127, 0, 0, 1], 0).into()).await?;
    let mut e2e = Vec::new();
    for kind in [Kind::Demarches, Kind::Calendar, Kind::Content] {
        let e = end_to_end(bin, &sim, kind, n).await?;
        let rate = e.rate(e.run);
        eprintln!(
            "{}: {} records in {:.2} s ({:.0}/s, {:.1} % of the same-payload ceiling {:.0}/s, {:.1} % of the synthetic one), peak RSS {:.1} MB, no-change cycle {} request(s)",
            kind.name(),
            e.records,
            e.run.as_secs_f64(),
            rate,
            rate / e.same_ceiling * 100.0,
            e.same_ceiling,
            rate / ceiling * 100.0,
            e.max_rss_kb as f64 / 1024.0,
            e.nochange_requests
        );
        e2e.push(e);
    }
    sim.shutdown().await;
    Ok(render(n, ceiling, &ceilings, &e2e))
}
