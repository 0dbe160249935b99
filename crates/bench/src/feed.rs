//! The change feed: what numbering every change costs a full sync, how fast
//! `GET /v1/changes` serves a backlog, and how soon a change a webhook
//! starts reaches a reader waiting on the feed; each next to a baseline
//! from the same run.
//!
//! * Ingest with the sequence: full `synchro sync` of N records per
//!   connector by the current binary and by the binary of the commit before
//!   the change feed ([`BEFORE_COMMIT`], built by `crates/bench/before.sh`
//!   unless `--before-binary PATH` or `SYNCHRO_BENCH_BEFORE_BIN` names one),
//!   [`ROUNDS`] rounds each, interleaved before/after, after/before, ... so
//!   that drift of the machine falls on both; medians compared.
//! * Feed throughput: N records stored by a sync, `synchro run` with an
//!   admin read token, the whole feed read from `since=0` in pages of
//!   [`PAGE_LIMIT`] following `Synchro-Next-Since`; baseline: the same
//!   rows, same columns, same order and pages, read from the SQLite file
//!   with sqlx (no HTTP, no JSON).
//! * Webhook to feed: a reader long-polls `/v1/changes?wait=30` from the
//!   head; an event changes upstream and its calendar push notification is
//!   posted; latency from the POST to the reader's answer holding the
//!   change, next to the webhook's own `200` (the sync is only requested),
//!   the triggered sync's run and a feed read of the same change once
//!   committed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use synchro_simulator::{self, Simulator};

use crate::child;
use crate::ingest::{self, Kind};
use crate::report::{Section, verdict};
use crate::webhook::{expect_ok, ms, percentile, wait_for};

/// The commit the "before" binary is built from: the parent of the change
/// feed's commit (928c930).
pub const BEFORE_COMMIT: &str = "944c37c";
/// Full syncs per connector and binary.
const ROUNDS: usize = 5;
/// Issue target: a full sync with the sequence keeps ≥ 90 % of the rate of
/// the same sync before it.
const TARGET_INGEST_RATIO: f64 = 0.90;
/// Changes per feed request (the most the feed answers).
const PAGE_LIMIT: usize = 10_000;
/// Reads of the whole backlog, through the feed and from the file each.
const READ_ROUNDS: usize = 5;
/// Webhook → feed samples, after [`WARMUP`] unrecorded ones.
const SAMPLES: usize = 200;
const WARMUP: usize = 5;
/// Events of the calendar the webhook samples change.
const CALENDAR_EVENTS: usize = 1_000;
const CALENDAR: &str = "feed";
const TENANT: &str = "bench";
const ADMIN_TOKEN: &str = "feed-bench-admin-token";
const CHANNEL_TOKEN: &str = "feed-bench-channel-token";
/// How long the reader asks the feed to hold an empty answer.
const WAIT_S: u32 = 30;
/// Between the reader's request and the webhook: the reader is waiting.
const POLL_HEAD_START: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------- before binary

/// The "before" binary, or why there is none.
fn before_binary(bin: &Path, given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = given {
        if path.as_os_str() == "none" {
            return Err("`--before-binary none`".into());
        }
        if !path.is_file() {
            return Err(format!("{} does not exist", path.display()));
        }
        return Ok(path.to_path_buf());
    }
    // <target>/release/synchro → <target>/feed-before
    let dir = bin
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("feed-before"))
        .ok_or("the synchro binary has no target folder")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("before.sh");
    eprintln!(
        "feed: building the binary of {BEFORE_COMMIT} with {} {} (give --before-binary PATH to skip this)",
        script.display(),
        dir.display()
    );
    let mut cmd = Command::new(&script);
    cmd.arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // `cargo run`'s own variables describe the bench's package, not the
    // build the script starts.
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str()
            && (k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || k.starts_with("CARGO_BIN_")
                || k.starts_with("CARGO_CRATE_")
                || k == "CARGO_PRIMARY_PACKAGE"
                || k == "CARGO_TARGET_DIR")
        {
            cmd.env_remove(&key);
        }
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}); its output is above",
            script.display(),
            out.status
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    if !path.is_file() {
        return Err(format!(
            "{} printed no binary ({stdout:?})",
            script.display()
        ));
    }
    Ok(path)
}

// ---------------------------------------------------------------- ingest

/// One connector's full syncs by both binaries.
struct IngestPair {
    kind: Kind,
    records: i64,
    /// Sync runs as recorded in `runs`, in the order measured.
    before: Vec<Duration>,
    after: Vec<Duration>,
    /// Whole processes (start-up, migrations, exit included).
    before_process: Vec<Duration>,
    after_process: Vec<Duration>,
    /// How the current binary numbered the records (first round).
    after_numbering: Option<Numbering>,
    /// The before binary's database has no `seq` column (first round).
    before_unnumbered: bool,
}

fn median(samples: &[Duration]) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

impl IngestPair {
    fn rate(&self, d: Duration) -> f64 {
        self.records as f64 / d.as_secs_f64().max(1e-9)
    }

    /// Median rate after / median rate before.
    fn ratio(&self) -> f64 {
        self.rate(median(&self.after)) / self.rate(median(&self.before)).max(1e-9)
    }
}

/// How a store numbered its records: `None` without a `seq` column.
#[derive(Clone, Copy)]
struct Numbering {
    records: i64,
    distinct: i64,
    min: i64,
    max: i64,
    /// `change_seq.last_seq`.
    counter: i64,
}

impl Numbering {
    /// Every record has its own number, and the counter is at or past the
    /// highest (a row a write skips, not newer than the stored one, still
    /// takes a number: gaps are allowed).
    fn sound(&self) -> bool {
        self.records > 0
            && self.distinct == self.records
            && self.min >= 1
            && self.max <= self.counter
    }
}

async fn numbering(db: &Path) -> Result<Option<Numbering>> {
    let opts = SqliteConnectOptions::new().filename(db).read_only(true);
    let mut conn = SqliteConnection::connect_with(&opts).await?;
    let (has_seq,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM pragma_table_info('records') WHERE name = 'seq'")
            .fetch_one(&mut conn)
            .await?;
    let mut numbering = None;
    if has_seq > 0 {
        let (records, distinct, min, max, counter): (i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT seq), coalesce(min(seq), 0), coalesce(max(seq), 0), \
             (SELECT last_seq FROM change_seq WHERE id = 1) FROM records",
        )
        .fetch_one(&mut conn)
        .await?;
        numbering = Some(Numbering {
            records,
            distinct,
            min,
            max,
            counter,
        });
    }
    conn.close().await?;
    Ok(numbering)
}

/// [`ROUNDS`] full syncs of `kind` by each binary, each into a fresh
/// database; even rounds run the before binary first, odd ones the current.
async fn ingest_pair(
    bin: &Path,
    before: &Path,
    sim: &Simulator,
    kind: Kind,
    n: usize,
) -> Result<IngestPair> {
    let mut pair = IngestPair {
        kind,
        records: 0,
        before: Vec::new(),
        after: Vec::new(),
        before_process: Vec::new(),
        after_process: Vec::new(),
        after_numbering: None,
        before_unnumbered: true,
    };
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_before in order {
            let dir = tempfile::tempdir()?;
            let db = dir.path().join("synchro.db");
            let binary = if is_before { before } else { bin };
            let sync = ingest::full_sync(binary, sim, kind, &db, n)
                .await
                .with_context(|| {
                    format!(
                        "{} full sync by the {} binary",
                        kind.name(),
                        if is_before { "before" } else { "current" }
                    )
                })?;
            pair.records = sync.records;
            if round == 0 {
                let numbered = numbering(&db).await?;
                if is_before {
                    pair.before_unnumbered = numbered.is_none();
                } else {
                    pair.after_numbering = numbered;
                }
            }
            eprintln!(
                "feed ingest {} round {} {}: {:.2} s ({:.0} records/s)",
                kind.name(),
                round + 1,
                if is_before { "before" } else { "after " },
                sync.run.as_secs_f64(),
                sync.records as f64 / sync.run.as_secs_f64().max(1e-9)
            );
            if is_before {
                pair.before.push(sync.run);
                pair.before_process.push(sync.process.wall);
            } else {
                pair.after.push(sync.run);
                pair.after_process.push(sync.process.wall);
            }
        }
    }
    Ok(pair)
}

// ---------------------------------------------------------------- daemon

/// A free port on the loopback interface.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs of the bench tenant: (successful, still running).
async fn run_counts(conn: &mut SqliteConnection) -> Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT coalesce(sum(outcome = 'success'), 0), coalesce(sum(outcome = 'running'), 0) \
         FROM runs WHERE tenant = ?1",
    )
    .bind(TENANT)
    .fetch_one(conn)
    .await?)
}

/// A read-only connection to the daemon's database.
async fn read_only(db: &Path) -> Result<SqliteConnection> {
    let opts = SqliteConnectOptions::new().filename(db).read_only(true);
    Ok(SqliteConnection::connect_with(&opts).await?)
}

/// Starts `synchro run` on `config` and waits until it is ready and its
/// runs so far (the first run of every source, at start) are done, with at
/// least `successes` successful ones.
async fn start_daemon(
    bin: &Path,
    config: &Path,
    dir: &Path,
    db: &Path,
    base: &str,
    successes: i64,
) -> Result<child::Running> {
    let daemon = child::Running::start(bin, config, dir, &["run"])?;
    let client = reqwest::Client::new();
    let readyz = format!("{base}/readyz");
    wait_for("/readyz", Duration::from_secs(30), || {
        let req = client.get(&readyz);
        async move { expect_ok(req).await.is_ok() }
    })
    .await
    .with_context(|| std::fs::read_to_string(dir.join("child.err")).unwrap_or_default())?;
    let mut conn = read_only(db).await?;
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let (ok, running) = run_counts(&mut conn).await?;
        if ok >= successes && running == 0 {
            break;
        }
        if Instant::now() > until {
            bail!("the daemon's first runs did not finish within 120 s ({ok} successful)");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    conn.close().await?;
    Ok(daemon)
}

/// `[server]` with the admin read token, and the rest of a daemon's
/// configuration up to the sources.
fn daemon_config(db: &Path, port: u16) -> String {
    format!(
        "[storage]\ndatabase = \"sqlite://{}\"\n\n\
         [server]\nlisten = \"127.0.0.1:{port}\"\nadmin_read_token = \"{ADMIN_TOKEN}\"\n\n\
         [scheduler]\njitter = \"0s\"\n\n\
         [http]\nper_host_requests_per_second = {}\nper_host_concurrency = 16\n\n\
         [[tenants]]\nid = \"{TENANT}\"\n",
        db.display(),
        ingest::MAX_RATE
    )
}

/// One answer of the feed.
struct Page {
    lines: usize,
    next_since: i64,
    body: Vec<u8>,
}

/// `GET /v1/changes?since=SINCE&limit=LIMIT[&wait=W]` with the admin token.
async fn get_changes(
    client: &reqwest::Client,
    base: &str,
    since: i64,
    limit: usize,
    wait: Option<u32>,
) -> Result<Page> {
    let mut url = format!("{base}/v1/changes?since={since}&limit={limit}");
    if let Some(w) = wait {
        let _ = write!(url, "&wait={w}");
    }
    let resp = client.get(&url).bearer_auth(ADMIN_TOKEN).send().await?;
    let status = resp.status();
    let next_since = resp
        .headers()
        .get("synchro-next-since")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let body = resp.bytes().await?.to_vec();
    if status != reqwest::StatusCode::OK {
        bail!(
            "GET /v1/changes?since={since}: HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let next_since = next_since.context("no Synchro-Next-Since header")?;
    Ok(Page {
        lines: body.iter().filter(|b| **b == b'\n').count(),
        next_since,
        body,
    })
}

// ---------------------------------------------------------------- throughput

/// Reads of the whole backlog.
struct Throughput {
    changes: i64,
    last_seq: i64,
    avg_bytes: f64,
    feed: Vec<Duration>,
    feed_requests: usize,
    feed_bytes: usize,
    select: Vec<Duration>,
    /// The same with a row buffer of a whole page.
    select_paged: Vec<Duration>,
    /// The daemon's CPU time over all feed reads, if `/proc` told.
    daemon_cpu: Option<Duration>,
    /// The bench's own CPU time over the feed reads (the HTTP client).
    client_cpu: Duration,
}

/// The whole feed from `since=0`, page after page: (requests, changes,
/// bytes, the last `Synchro-Next-Since`).
async fn read_feed(client: &reqwest::Client, base: &str) -> Result<(usize, usize, usize, i64)> {
    let (mut since, mut requests, mut changes, mut bytes) = (0, 0, 0, 0);
    loop {
        let page = get_changes(client, base, since, PAGE_LIMIT, None).await?;
        requests += 1;
        changes += page.lines;
        bytes += page.body.len();
        since = page.next_since;
        if page.lines < PAGE_LIMIT {
            return Ok((requests, changes, bytes, since));
        }
    }
}

/// One exported line's fields, as the feed reads them.
type ChangeRow = (
    i64,
    String,
    String,
    String,
    String,
    bool,
    String,
    Option<String>,
);

/// The same rows from the file: the feed's columns, `seq` order, the same
/// pages (`seq > ?` through the seq index, [`PAGE_LIMIT`] rows each); with
/// sqlx's default row buffer (50 rows between its worker thread and the
/// caller, as the daemon's readers have) or one of a whole page.
async fn read_file(db: &Path, page_buffer: bool) -> Result<usize> {
    let mut opts = SqliteConnectOptions::new().filename(db).read_only(true);
    if page_buffer {
        opts = opts.row_buffer_size(PAGE_LIMIT);
    }
    let mut conn = SqliteConnection::connect_with(&opts).await?;
    let (mut since, mut n) = (0_i64, 0);
    loop {
        let rows: Vec<ChangeRow> = sqlx::query_as(
            "SELECT seq, tenant, source, kind, id, deleted, updated_at, data \
             FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .bind(since)
        .bind(PAGE_LIMIT as i64)
        .fetch_all(&mut conn)
        .await?;
        n += rows.len();
        if let Some(last) = rows.last() {
            since = last.0;
        }
        if rows.len() < PAGE_LIMIT {
            break;
        }
    }
    conn.close().await?;
    Ok(n)
}

/// The reads of the backlog compared.
#[derive(Clone, Copy, PartialEq)]
enum Read {
    Feed,
    File,
    FilePaged,
}

async fn throughput(bin: &Path, sim: &Simulator, n: usize) -> Result<Throughput> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("synchro.db");
    let kind = Kind::Demarches;
    let sync = ingest::full_sync(bin, sim, kind, &db, n).await?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("synchro.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[[tenants.sources]]\nid = \"{}\"\nkind = \"{}\"\nschedule = \"every 1h\"\n{}",
            daemon_config(&db, port),
            kind.name(),
            kind.name(),
            kind.source_toml(sim)
        ),
    )?;
    // The sync's run, and the daemon's first run at start (nothing new).
    let daemon = start_daemon(bin, &config, dir.path(), &db, &base, 2).await?;
    let mut conn = read_only(&db).await?;
    let (changes, last_seq): (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(max(seq), 0) FROM records")
            .fetch_one(&mut conn)
            .await?;
    conn.close().await?;

    let client = reqwest::Client::new();
    let mut t = Throughput {
        changes,
        last_seq,
        avg_bytes: sync.avg_bytes,
        feed: Vec::new(),
        feed_requests: 0,
        feed_bytes: 0,
        select: Vec::new(),
        select_paged: Vec::new(),
        daemon_cpu: Some(Duration::ZERO),
        client_cpu: Duration::ZERO,
    };
    // The three reads in turn, each round starting one further along.
    const READS: [Read; 3] = [Read::Feed, Read::File, Read::FilePaged];
    for round in 0..READ_ROUNDS {
        for k in 0..READS.len() {
            let read = READS[(round + k) % READS.len()];
            if read == Read::Feed {
                let cpu_before = child::cpu_time(daemon.pid());
                let own_before = child::own_cpu();
                let started = Instant::now();
                let (requests, lines, bytes, next) = read_feed(&client, &base).await?;
                let took = started.elapsed();
                t.client_cpu += child::own_cpu().saturating_sub(own_before);
                let cpu = child::cpu_time(daemon.pid())
                    .zip(cpu_before)
                    .map(|(a, b)| a.saturating_sub(b));
                t.daemon_cpu = t.daemon_cpu.zip(cpu).map(|(sum, c)| sum + c);
                if lines as i64 != changes || next != last_seq {
                    bail!(
                        "the feed gave {lines} changes ending at {next}; the database holds \
                         {changes} ending at {last_seq}"
                    );
                }
                (t.feed_requests, t.feed_bytes) = (requests, bytes);
                eprintln!(
                    "feed read {}: {lines} changes in {:.2} s ({:.0}/s, {requests} requests)",
                    round + 1,
                    took.as_secs_f64(),
                    lines as f64 / took.as_secs_f64().max(1e-9)
                );
                t.feed.push(took);
            } else {
                let paged = read == Read::FilePaged;
                let started = Instant::now();
                let rows = read_file(&db, paged).await?;
                let took = started.elapsed();
                if rows as i64 != changes {
                    bail!("the file read gave {rows} rows of {changes}");
                }
                eprintln!(
                    "file read{} {}: {rows} rows in {:.2} s ({:.0}/s)",
                    if paged { " (page buffer)" } else { "" },
                    round + 1,
                    took.as_secs_f64(),
                    rows as f64 / took.as_secs_f64().max(1e-9)
                );
                if paged {
                    t.select_paged.push(took);
                } else {
                    t.select.push(took);
                }
            }
        }
    }
    daemon.stop(Duration::from_secs(30)).await?;
    Ok(t)
}

// ---------------------------------------------------------------- webhook → feed

/// Latencies of the webhook samples, each sorted.
struct Latency {
    /// POST of the push notification → its `200`.
    ack: Vec<Duration>,
    /// POST → the waiting reader's answer holding the change.
    visible: Vec<Duration>,
    /// The triggered syncs' runs, as recorded in `runs`.
    runs: Vec<Duration>,
    /// A feed read (no wait) of the same change, once committed.
    read: Vec<Duration>,
    /// Answers without the changed event (empty, or another change).
    misses: usize,
    first_miss: Option<String>,
}

async fn webhook_to_feed(bin: &Path, sim: &Simulator) -> Result<Latency> {
    let cal = sim.calendar();
    let ids = cal.seed(CALENDAR, CALENDAR_EVENTS);
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("synchro.db");
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("synchro.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[[tenants.sources]]\nid = \"agenda\"\nkind = \"calendar\"\nschedule = \"every 1h\"\n\
             endpoint = \"{}\"\ncalendar_id = \"{CALENDAR}\"\nmax_results = 250\n\
             access_token = \"{}\"\nchannel_token = \"{CHANNEL_TOKEN}\"\n",
            daemon_config(&db, port),
            sim.calendar_endpoint(),
            synchro_simulator::DEFAULT_CALENDAR_TOKEN
        ),
    )?;
    let daemon = start_daemon(bin, &config, dir.path(), &db, &base, 1).await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(u64::from(WAIT_S) + 30))
        .build()?;
    let hook = format!("{base}/webhooks/calendar/{TENANT}/agenda");
    let mut conn = read_only(&db).await?;

    // The head: the reader has read everything so far.
    let mut head = 0;
    loop {
        let page = get_changes(&client, &base, head, PAGE_LIMIT, None).await?;
        head = page.next_since;
        if page.lines < PAGE_LIMIT {
            break;
        }
    }
    let (first_runs, _) = run_counts(&mut conn).await?;

    let mut l = Latency {
        ack: Vec::new(),
        visible: Vec::new(),
        runs: Vec::new(),
        read: Vec::new(),
        misses: 0,
        first_miss: None,
    };
    for i in 0..WARMUP + SAMPLES {
        let id = &ids[i * 7 % ids.len()];
        cal.update(CALENDAR, id);
        let (poll_client, poll_base) = (client.clone(), base.clone());
        let poll = tokio::spawn(async move {
            let page = get_changes(&poll_client, &poll_base, head, PAGE_LIMIT, Some(WAIT_S)).await;
            (page, Instant::now())
        });
        tokio::time::sleep(POLL_HEAD_START).await;
        let sent = Instant::now();
        let resp = client
            .post(&hook)
            .header("X-Goog-Channel-Token", CHANNEL_TOKEN)
            .header("X-Goog-Resource-State", "exists")
            .send()
            .await?;
        let status = resp.status();
        resp.bytes().await?;
        let ack = sent.elapsed();
        if status != reqwest::StatusCode::OK {
            bail!("the push notification got HTTP {status}");
        }
        let (page, answered) = poll.await?;
        let page = page?;
        let visible = answered.saturating_duration_since(sent);
        let needle = format!("\"id\":\"{id}\"");
        let found = page.lines > 0 && String::from_utf8_lossy(&page.body).contains(&needle);
        if !found && i >= WARMUP {
            l.misses += 1;
            l.first_miss.get_or_insert_with(|| {
                format!(
                    "{} line(s), none with event {id}: {}",
                    page.lines,
                    String::from_utf8_lossy(&page.body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                )
            });
        }
        // The same change, read again now that it is committed.
        let started = Instant::now();
        get_changes(&client, &base, head, PAGE_LIMIT, None).await?;
        let read = started.elapsed();
        head = page.next_since;
        // The next sample starts once this sync has finished.
        let expected = first_runs + 1 + i as i64;
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let (ok, running) = run_counts(&mut conn).await?;
            if ok >= expected && running == 0 {
                break;
            }
            if Instant::now() > until {
                bail!("the sync triggered by push notification {i} did not finish within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if i >= WARMUP {
            l.ack.push(ack);
            l.visible.push(visible);
            l.read.push(read);
        }
    }
    let runs: Vec<(i64,)> = sqlx::query_as(
        "SELECT finished_at - started_at FROM runs WHERE tenant = ?1 AND outcome = 'success' \
         ORDER BY id LIMIT -1 OFFSET ?2",
    )
    .bind(TENANT)
    .bind(first_runs + WARMUP as i64)
    .fetch_all(&mut conn)
    .await?;
    conn.close().await?;
    l.runs = runs
        .into_iter()
        .map(|(us,)| Duration::from_micros(us.max(0) as u64))
        .collect();
    daemon.stop(Duration::from_secs(30)).await?;
    for v in [&mut l.ack, &mut l.visible, &mut l.runs, &mut l.read] {
        v.sort();
    }
    eprintln!(
        "webhook → feed: p50 {} p99 {} (webhook 200: p50 {} p99 {}; sync run p50 {}; {} misses)",
        ms(percentile(&l.visible, 50.0)),
        ms(percentile(&l.visible, 99.0)),
        ms(percentile(&l.ack, 50.0)),
        ms(percentile(&l.ack, 99.0)),
        ms(percentile(&l.runs, 50.0)),
        l.misses
    );
    Ok(l)
}

// ---------------------------------------------------------------- run & report

/// Measures the three parts; the first is skipped, saying why, without a
/// before binary.
pub async fn run(bin: &Path, n: usize, before: Option<&Path>) -> Result<Section> {
    let sim = Simulator::start(([127, 0, 0, 1], 0).into()).await?;
    Kind::Demarches.seed(&sim, n);
    let ingest = match before_binary(bin, before) {
        Ok(before) => {
            eprintln!("feed: before binary {}", before.display());
            let mut pairs = Vec::new();
            for kind in [Kind::Demarches, Kind::Calendar, Kind::Content] {
                if kind != Kind::Demarches {
                    kind.seed(&sim, n);
                }
                pairs.push(ingest_pair(bin, &before, &sim, kind, n).await?);
            }
            Ok((before, pairs))
        }
        Err(why) => {
            eprintln!("feed: ingest comparison skipped: no before binary: {why}");
            Err(why)
        }
    };
    let throughput = throughput(bin, &sim, n).await?;
    let latency = webhook_to_feed(bin, &sim).await?;
    sim.shutdown().await;
    Ok(render(n, &ingest, &throughput, &latency))
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn joined(figures: impl Iterator<Item = String>) -> String {
    figures.collect::<Vec<_>>().join(", ")
}

fn render(
    n: usize,
    ingest: &Result<(PathBuf, Vec<IngestPair>), String>,
    t: &Throughput,
    l: &Latency,
) -> Section {
    let mut s = String::new();
    let mut misses = Vec::new();

    s.push_str("### Full sync with the change sequence\n\n");
    match ingest {
        Err(why) => {
            let _ = write!(
                s,
                "**Skipped: no before binary** ({why}). Give one with `--before-binary PATH` \
                 (or `SYNCHRO_BENCH_BEFORE_BIN`), or let the bench build it with \
                 `crates/bench/before.sh`.\n\n"
            );
            misses.push(format!(
                "**feed ingest**: not measured, no before binary ({why})."
            ));
        }
        Ok((before, pairs)) => {
            let _ = write!(
                s,
                "`synchro sync` of {n} records per connector into a fresh database, by the \
                 current binary (*after*: every stored change numbered in commit order, the \
                 counter row read and written in each write transaction) and by the binary \
                 of {BEFORE_COMMIT}, the commit before the change feed (*before*; `{}`), \
                 against the same in-process simulator, with the configuration of the ingest \
                 section (keys both binaries know). {ROUNDS} rounds per connector, the order \
                 alternating (before then after, after then before, ...) so that the \
                 machine's drift falls on both; *run* is the sync run as recorded in `runs` \
                 (fetch + commit), *process* adds start-up, migrations and exit. The ratio \
                 compares the medians of the runs. Target: ≥ {:.0} %.\n\n",
                before.display(),
                TARGET_INGEST_RATIO * 100.0
            );
            s.push_str(
                "| Connector | Records | Before: run (median) | After: run (median) | Before records/s | After records/s | Ratio after/before | Target ≥ 90 % | Before: process | After: process |\n\
                 |---|---:|---:|---:|---:|---:|---:|---|---:|---:|\n",
            );
            for p in pairs {
                let ratio = p.ratio();
                let ok = ratio >= TARGET_INGEST_RATIO;
                if !ok {
                    misses.push(format!(
                        "**{} ingest with the change sequence**: {:.1} % of the same sync \
                         before the change feed (median of {ROUNDS} runs each: {:.0} against \
                         {:.0} records/s); target ≥ {:.0} %.",
                        p.kind.name(),
                        ratio * 100.0,
                        p.rate(median(&p.after)),
                        p.rate(median(&p.before)),
                        TARGET_INGEST_RATIO * 100.0
                    ));
                }
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {:.0} | {:.0} | {:.1} % | {} | {} | {} |",
                    p.kind.name(),
                    p.records,
                    secs(median(&p.before)),
                    secs(median(&p.after)),
                    p.rate(median(&p.before)),
                    p.rate(median(&p.after)),
                    ratio * 100.0,
                    verdict(ok),
                    secs(median(&p.before_process)),
                    secs(median(&p.after_process)),
                );
            }
            s.push_str(
                "\n| Connector | Before runs, s | After runs, s | Ratio, round by round |\n\
                 |---|---|---|---|\n",
            );
            for p in pairs {
                let f =
                    |v: &[Duration]| joined(v.iter().map(|d| format!("{:.2}", d.as_secs_f64())));
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    p.kind.name(),
                    f(&p.before),
                    f(&p.after),
                    joined(p.before.iter().zip(&p.after).map(|(b, a)| format!(
                        "{:.1} %",
                        b.as_secs_f64() / a.as_secs_f64().max(1e-9) * 100.0
                    )))
                );
            }
            let checks: Vec<String> = pairs
                .iter()
                .filter(|p| !p.before_unnumbered || !p.after_numbering.is_some_and(|n| n.sound()))
                .map(|p| match p.after_numbering {
                    Some(n) => format!(
                        "{}: after: {} records, {} distinct seqs from {} to {}, counter {}; \
                         before without `seq`: {}",
                        p.kind.name(),
                        n.records,
                        n.distinct,
                        n.min,
                        n.max,
                        n.counter,
                        p.before_unnumbered
                    ),
                    None => format!(
                        "{}: after: no `seq` column; before without `seq`: {}",
                        p.kind.name(),
                        p.before_unnumbered
                    ),
                })
                .collect();
            if checks.is_empty() {
                let numbers = joined(pairs.iter().filter_map(|p| {
                    let n = p.after_numbering?;
                    Some(format!(
                        "{} {} records, seqs {} to {}",
                        p.kind.name(),
                        n.records,
                        n.min,
                        n.max
                    ))
                }));
                let _ = write!(
                    s,
                    "\nChecked on the first round's databases: the before binary's `records` \
                     has no `seq` column; the current binary gave every record its own seq, \
                     none above the counter ({numbers}; a row a page repeats, not newer than \
                     the stored one, still takes a number, hence the gaps).\n\n"
                );
            } else {
                let _ = write!(
                    s,
                    "\n**The databases do not show the expected binaries**: {}.\n\n",
                    checks.join("; ")
                );
                misses.push(format!(
                    "**feed ingest**: the binaries compared are not the expected ones ({}).",
                    checks.join("; ")
                ));
            }
        }
    }

    let rate = |d: Duration| t.changes as f64 / d.as_secs_f64().max(1e-9);
    let (feed, select, paged) = (median(&t.feed), median(&t.select), median(&t.select_paged));
    let runs = |v: &[Duration]| joined(v.iter().map(|d| format!("{:.2}", d.as_secs_f64())));
    let _ = write!(
        s,
        "### `/v1/changes` throughput\n\n\
         A backlog of {} changes (demarches, stored by one `synchro sync`, ~{:.0} B of \
         payload each, last seq {}), served by `synchro run` (release binary, child \
         process, admin read token): the whole feed read from `since=0` with \
         `limit={PAGE_LIMIT}`, each next request from `Synchro-Next-Since`, bodies \
         received and their lines counted, not parsed ({} requests, {:.0} MB of NDJSON). \
         Baseline: the same rows read straight from the SQLite file by sqlx in this \
         process (the feed's columns, in `seq` order, the same pages of {PAGE_LIMIT} \
         through the seq index), no HTTP, no JSON; once with sqlx's default row buffer \
         (50 rows between its worker thread and the caller, as the daemon's readers \
         have), once with a buffer of a whole page. {READ_ROUNDS} reads each, in turn; \
         medians.\n\n\
         | Read | Median | Changes/s | Feed's ratio to it | Runs, s |\n|---|---:|---:|---:|---|\n\
         | SQLite file, sqlx, default row buffer (baseline) | {} | {:.0} | {:.1} % | {} |\n\
         | SQLite file, sqlx, row buffer of a page | {} | {:.0} | {:.1} % | {} |\n\
         | **`GET /v1/changes`** | {} | {:.0} | | {} |\n\n\
         The feed serves **{:.1} %** of the baseline's rate.",
        t.changes,
        t.avg_bytes,
        t.last_seq,
        t.feed_requests,
        t.feed_bytes as f64 / 1e6,
        secs(select),
        rate(select),
        rate(feed) / rate(select).max(1e-9) * 100.0,
        runs(&t.select),
        secs(paged),
        rate(paged),
        rate(feed) / rate(paged).max(1e-9) * 100.0,
        runs(&t.select_paged),
        secs(feed),
        rate(feed),
        runs(&t.feed),
        rate(feed) / rate(select).max(1e-9) * 100.0
    );
    let total = (t.changes.max(1) as f64) * t.feed.len().max(1) as f64;
    if let Some(cpu) = t.daemon_cpu {
        let _ = write!(
            s,
            " CPU per change: {:.2} µs in the daemon (read, encode, send), {:.2} µs in the \
             client (this process).",
            cpu.as_secs_f64() * 1e6 / total,
            t.client_cpu.as_secs_f64() * 1e6 / total
        );
    }
    s.push_str("\n\n");

    let _ = write!(
        s,
        "### Webhook → visible in the feed\n\n\
         `synchro run` with one calendar source ({CALENDAR_EVENTS} events, `every 1h`, \
         `channel_token` set), synced at start. Per sample: an event changes in the \
         simulator; a reader asks `GET /v1/changes?since=HEAD&wait={WAIT_S}` and waits; \
         {} ms later the calendar push notification is posted \
         (`POST /webhooks/calendar/...`, answered `200` as soon as the sync is \
         requested); the clock runs from that POST to the end of the reader's answer, \
         which must hold the changed event. The next sample starts once the triggered \
         sync has finished. {SAMPLES} samples after {WARMUP} unrecorded ones, one after \
         the other. Baselines from the same samples: the webhook's own answer, the \
         triggered sync's run (as recorded in `runs`: the incremental request to the \
         simulator and the commit), and a feed read of the same change once committed \
         (no wait).\n\n\
         | Path | Samples | p50 | p99 | max |\n|---|---:|---:|---:|---:|\n",
        POLL_HEAD_START.as_millis()
    );
    for (name, v) in [
        ("Push notification → `200`", &l.ack),
        ("Triggered sync run", &l.runs),
        ("Feed read of the committed change", &l.read),
        (
            "**Push notification → change in the waiting reader's answer**",
            &l.visible,
        ),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} |",
            v.len(),
            ms(percentile(v, 50.0)),
            ms(percentile(v, 99.0)),
            ms(percentile(v, 100.0))
        );
    }
    let _ = write!(s, "\nAnswers without the changed event: {}.", l.misses);
    if let Some(m) = &l.first_miss {
        let _ = write!(s, " First: `{m}`.");
        misses.push(format!(
            "**webhook → feed**: {} of {SAMPLES} waiting readers were answered without the \
             change.",
            l.misses
        ));
    }
    s.push_str("\n\n");

    Section {
        title: "Change feed".into(),
        body: s,
        misses,
    }
}
