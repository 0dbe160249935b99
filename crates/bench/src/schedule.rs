//! Scheduling accuracy: 10,000 `every 1m` sources, jitter off, against the
//! in-process simulator answering at once. Start lateness and overlaps are
//! read from the daemon's own `runs` table.
//!
//! * Lateness of a run = `runs.started_at - runs.scheduled_at`: the instant
//!   the run really started (its row is written after it got its host and
//!   global sync slots) minus the instant the schedule tick it answers was
//!   due (written by the scheduler; NULL for the start-up run, which nobody
//!   scheduled, so that run does not count).
//! * Overlap: two runs of one source whose `[started_at, finished_at]`
//!   intervals intersect.
//! * Baselines, same run: the floor of bare tokio timers, 10,000 of them
//!   due at one instant in this process (what the machine gives to wake that
//!   many tasks at once), and the same daemon with 100 sources (what the
//!   scheduler gives when load is not the question).

use std::fmt::Write as _;
use std::path::Path;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};
use synchro_simulator::{self, Simulator};

use crate::report::{Section, verdict};

/// Sources in the measured daemon (issue 7).
const SOURCES: usize = 10_000;
/// Sources per tenant in the generated config.
const PER_TENANT: usize = 100;
/// Calendars the sources share (each source keeps its own sync token).
const CALENDARS: usize = 10;
/// Schedule rounds to observe after the start-up runs.
const ROUNDS: i64 = 2;
/// The herd: a cron schedule that makes every source due in the same
/// second, which the scheduler cannot spread (interval schedules it does).
const HERD_CRON: &str = "*/20 * * * * *";
/// Sources in the light-load baseline, and its schedule.
const BASELINE_SOURCES: usize = 100;
const BASELINE_EVERY_S: u64 = 5;
const BASELINE_FOR: Duration = Duration::from_secs(27);
/// `max_concurrent_syncs` and `per_host_concurrency` of the measured
/// daemon: the highest the config accepts.
const SLOTS: usize = 1024;
/// Targets from issue 7.
const TARGET_P99: Duration = Duration::from_secs(1);
const TARGET_OVERLAPS: i64 = 0;

/// The instant the last start-up run (nobody's tick) ended: scheduled runs
/// due before it are not counted (see [`observe`]).
const STARTUP_END: &str =
    "(SELECT coalesce(max(finished_at), 0) FROM runs WHERE scheduled_at IS NULL)";

/// Lateness figures, µs.
#[derive(Default)]
pub(crate) struct Lateness {
    pub(crate) n: usize,
    pub(crate) p50: i64,
    pub(crate) p99: i64,
    pub(crate) max: i64,
}

impl Lateness {
    pub(crate) fn of(mut v: Vec<i64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            n: v.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }

    pub(crate) fn row(&self, what: &str) -> String {
        format!(
            "| {what} | {} | {} | {} | {} |",
            self.n,
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

pub(crate) fn ms(us: i64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// What one daemon run left in its `runs` table.
struct Observed {
    lateness: Lateness,
    runs: i64,
    scheduled: i64,
    failed: i64,
    overlaps: i64,
    /// Fewest and most scheduled runs of one source.
    per_source: (i64, i64),
    /// Distinct due instants (whole seconds) of the scheduled runs.
    due_instants: i64,
    /// Seconds from spawn until every source's start-up run succeeded.
    startup: Option<Duration>,
    /// Scheduled runs per second while a round drains: runs of the busiest
    /// due second / (its last end - its first start).
    drain_rate: f64,
}

/// Runs `synchro run` over `n` calendar sources on `schedule` until
/// `rounds` scheduled runs per source due after the start-up runs finished,
/// or `limit` passed. Runs due while start-up runs were still going are
/// left out of every figure: they queued behind the start-up, not behind
/// the scheduler.
async fn observe(
    bin: &Path,
    sim: &Simulator,
    n: usize,
    schedule: &str,
    rounds: i64,
    limit: Duration,
) -> Result<Observed> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("synchro.db");
    let config = dir.path().join("synchro.toml");
    let mut toml = format!(
        "[storage]\ndatabase = \"sqlite://{}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [scheduler]\nmax_concurrent_syncs = {SLOTS}\njitter = \"0s\"\nshutdown_timeout = \"20s\"\n\n\
         [http]\ntimeout = \"30s\"\nconnect_timeout = \"10s\"\n\
         per_host_requests_per_second = 100000\nper_host_concurrency = {SLOTS}\n",
        db.display()
    );
    for i in 0..n {
        if i % PER_TENANT == 0 {
            let _ = write!(toml, "\n[[tenants]]\nid = \"t{:03}\"\n", i / PER_TENANT);
        }
        let _ = write!(
            toml,
            "\n[[tenants.sources]]\nid = \"s{i:05}\"\nkind = \"calendar\"\nschedule = \"{schedule}\"\n\
             endpoint = \"{}\"\ncalendar_id = \"cal-{}\"\naccess_token = \"{}\"\n",
            sim.calendar_endpoint(),
            i % CALENDARS,
            synchro_simulator::DEFAULT_CALENDAR_TOKEN
        );
    }
    std::fs::write(&config, toml)?;

    let started = Instant::now();
    let mut child = crate::child::Running::start(bin, &config, dir.path(), &["-q", "run"])?;
    let want = rounds.saturating_mul(n as i64);
    let mut startup = None;
    let outcome = async {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if !child.alive() {
                bail!("synchro run exited early (see {})", dir.path().display());
            }
            let Ok(mut conn) = connect(&db).await else {
                continue;
            };
            let (first, done): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT count(DISTINCT CASE WHEN scheduled_at IS NULL AND outcome = 'success' \
                 THEN tenant || '/' || source END), \
                 count(CASE WHEN scheduled_at > {STARTUP_END} AND outcome <> 'running' THEN 1 END) \
                 FROM runs"
            )))
            .fetch_one(&mut conn)
            .await
            .unwrap_or((0, 0));
            conn.close().await.ok();
            if startup.is_none() && first >= n as i64 {
                startup = Some(started.elapsed());
            }
            if done >= want || started.elapsed() > limit {
                return Ok(());
            }
        }
    }
    .await;
    child.stop(Duration::from_secs(40)).await?;
    outcome?;

    let mut conn = connect(&db).await?;
    let late: Vec<i64> = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT started_at - scheduled_at FROM runs WHERE scheduled_at > {STARTUP_END}"
    )))
    .fetch_all(&mut conn)
    .await?
    .iter()
    .map(|r| r.get::<i64, _>(0))
    .collect();
    let (runs, scheduled, failed, due_instants): (i64, i64, i64, i64) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), count(CASE WHEN scheduled_at > {STARTUP_END} THEN 1 END), \
         count(CASE WHEN outcome = 'failed' THEN 1 END), \
         count(DISTINCT CASE WHEN scheduled_at > {STARTUP_END} THEN scheduled_at / 1000000 END) \
         FROM runs"
        )))
        .fetch_one(&mut conn)
        .await?;
    let per_source: (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT coalesce(min(k), 0), coalesce(max(k), 0) FROM \
         (SELECT count(CASE WHEN scheduled_at > {STARTUP_END} THEN 1 END) AS k \
          FROM runs GROUP BY tenant, source)"
    )))
    .fetch_one(&mut conn)
    .await?;
    let drain_rate: f64 = sqlx::query_as::<_, (f64,)>(sqlx::AssertSqlSafe(format!(
        "SELECT coalesce(max(k * 1e6 / max(1, last - first)), 0.0) FROM \
         (SELECT count(*) AS k, min(started_at) AS first, max(finished_at) AS last \
          FROM runs WHERE scheduled_at > {STARTUP_END} GROUP BY scheduled_at / 1000000 \
          ORDER BY k DESC LIMIT 1)"
    )))
    .fetch_one(&mut conn)
    .await?
    .0;
    // A run still `running` when the daemon stopped counts as open-ended.
    let (overlaps,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM runs a JOIN runs b \
         ON a.tenant = b.tenant AND a.source = b.source AND a.id < b.id \
         WHERE b.started_at <= coalesce(a.finished_at, 9223372036854775807) \
         AND a.started_at <= coalesce(b.finished_at, 9223372036854775807)",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await.ok();
    Ok(Observed {
        lateness: Lateness::of(late),
        runs,
        scheduled,
        failed,
        overlaps,
        per_source,
        due_instants,
        startup,
        drain_rate,
    })
}

async fn connect(db: &Path) -> Result<SqliteConnection> {
    let opts = SqliteConnectOptions::new().filename(db).read_only(true);
    Ok(SqliteConnection::connect_with(&opts).await?)
}

/// Lateness of bare tokio timers: `n` tasks sleeping until one instant,
/// each noting when it woke.
async fn timer_floor(n: usize) -> Lateness {
    let due = tokio::time::Instant::now() + Duration::from_millis(500);
    let woke = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let woke = woke.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(due).await;
                let late = tokio::time::Instant::now().duration_since(due);
                if let Ok(mut w) = woke.lock() {
                    w.push(late.as_micros() as i64);
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let v = woke.lock().map(|w| w.clone()).unwrap_or_default();
    Lateness::of(v)
}

fn report(what: &str, n: usize, o: &Observed) {
    eprintln!(
        "{what}, {n} sources: {} runs ({} scheduled, {} failed), p50 {} p99 {} max {}, {} overlaps",
        o.runs,
        o.scheduled,
        o.failed,
        ms(o.lateness.p50),
        ms(o.lateness.p99),
        ms(o.lateness.max),
        o.overlaps
    );
}

/// Measures the baselines, then the 10,000-source daemon, then the same
/// sources as a herd.
pub async fn run(bin: &Path) -> Result<Section> {
    let floor = timer_floor(SOURCES).await;
    eprintln!(
        "tokio timer floor: p50 {} p99 {} max {}",
        ms(floor.p50),
        ms(floor.p99),
        ms(floor.max)
    );
    let sim = Simulator::start(([127, 0, 0, 1], 0).into()).await?;
    for c in 0..CALENDARS {
        sim.calendar().seed(&format!("cal-{c}"), 1);
    }
    let light = observe(
        bin,
        &sim,
        BASELINE_SOURCES,
        &format!("every {BASELINE_EVERY_S}s"),
        i64::MAX / 2,
        BASELINE_FOR,
    )
    .await?;
    report("baseline", BASELINE_SOURCES, &light);
    let heavy = observe(
        bin,
        &sim,
        SOURCES,
        "every 1m",
        ROUNDS,
        Duration::from_secs(60 * ROUNDS as u64 + 60),
    )
    .await?;
    report("every 1m", SOURCES, &heavy);
    // One round of the herd after the start-up: due within 20 s of it.
    let herd = observe(bin, &sim, SOURCES, HERD_CRON, 1, Duration::from_secs(75)).await?;
    report("herd", SOURCES, &herd);
    let requests = sim.calendar().requests();
    sim.shutdown().await;
    Ok(render(&floor, &light, &heavy, &herd, requests))
}

fn render(
    floor: &Lateness,
    light: &Observed,
    heavy: &Observed,
    herd: &Observed,
    requests: u64,
) -> Section {
    let mut s = String::new();
    let _ = write!(
        s,
        "`synchro run` (release binary, child process) with {SOURCES} calendar sources of \
         {} tenants, `schedule = \"every 1m\"`, `jitter = \"0s\"`, `max_concurrent_syncs = 1024`, \
         `per_host_concurrency = 1024`, `per_host_requests_per_second = 100000`, against the \
         in-process simulator (one event per calendar, so a scheduled run is a no-change run: \
         one request answered at once). It runs until {ROUNDS} scheduled runs per source \
         finished (or {} s passed), then gets SIGTERM. Each interval source is due at \
         `phase + k × 1 min`, its phase a stable hash of its name (the scheduler spreads \
         interval sources over their interval).\n\n\
         *Lateness* = `runs.started_at - runs.scheduled_at`: the instant the run started (its \
         row is written once it holds its host and global sync slots) minus the instant the \
         schedule tick it answers was due, which the scheduler records with the run (NULL for \
         the start-up run, a push notification or `synchro sync`, which nobody scheduled). \
         Ticks due before the last start-up run ended are not counted (they queue behind the \
         start-up, not behind the scheduler). *Overlaps* = pairs of runs of one source whose \
         `[started_at, finished_at]` intersect. Targets: p99 ≤ 1 s, 0 overlaps.\n\n\
         The *herd* row is the same 10000 sources on the cron schedule `{HERD_CRON}`: every \
         source due in the same second, which a cron schedule asks for and the scheduler \
         therefore does not spread; one round after the start-up. It is not issue 7's \
         configuration: it shows how fast the daemon serves a herd.\n\n",
        SOURCES / PER_TENANT,
        60 * ROUNDS + 60
    );
    s.push_str("| Measured | Runs | p50 | p99 | Max |\n|---|---:|---:|---:|---:|\n");
    let _ = writeln!(
        s,
        "{}",
        floor.row(&format!(
            "baseline: {SOURCES} bare tokio timers due at one instant (bench process)"
        ))
    );
    let _ = writeln!(
        s,
        "{}",
        light.lateness.row(&format!(
            "baseline: daemon, {BASELINE_SOURCES} sources `every {BASELINE_EVERY_S}s`"
        ))
    );
    let _ = writeln!(
        s,
        "{}",
        heavy
            .lateness
            .row(&format!("daemon, {SOURCES} sources `every 1m`"))
    );
    let _ = writeln!(
        s,
        "{}",
        herd.lateness.row(&format!(
            "herd: daemon, {SOURCES} sources `{HERD_CRON}` (cron, all due at once)"
        ))
    );
    let p99_ok = heavy.lateness.n > 0 && heavy.lateness.p99 <= TARGET_P99.as_micros() as i64;
    let overlaps_ok = heavy.overlaps <= TARGET_OVERLAPS;
    let all_ran = heavy.per_source.0 >= ROUNDS;
    let _ = write!(
        s,
        "\n| {SOURCES} sources | Value | Target |\n|---|---:|---|\n\
         | p99 start lateness | {} | {} (≤ 1 s) |\n\
         | overlapping runs of one source | {} | {} (0) |\n\
         | runs recorded (scheduled / all) | {} / {} | |\n\
         | failed runs | {} | |\n\
         | scheduled runs per source (fewest – most) | {} – {} | {} ({ROUNDS}) |\n\
         | distinct due seconds | {} | |\n\
         | scheduled runs done per second while a round drains | {:.0} | |\n\
         | herd: scheduled runs done per second while it drains | {:.0} | |\n\
         | start-up: every source's first run done after | {} | |\n\
         | calendar requests served (both daemons) | {requests} | |\n\n",
        ms(heavy.lateness.p99),
        verdict(p99_ok),
        heavy.overlaps,
        verdict(overlaps_ok),
        heavy.scheduled,
        heavy.runs,
        heavy.failed,
        heavy.per_source.0,
        heavy.per_source.1,
        verdict(all_ran),
        heavy.due_instants,
        heavy.drain_rate,
        herd.drain_rate,
        heavy
            .startup
            .map_or("not within the run".to_string(), |d| format!(
                "{:.1} s",
                d.as_secs_f64()
            )),
    );
    let mut misses = Vec::new();
    if !p99_ok {
        misses.push(format!(
            "**schedule p99 lateness**: {} for {SOURCES} sources `every 1m` (target ≤ 1 s, gap {}); \
             the same daemon with {BASELINE_SOURCES} sources gives p99 {}, bare tokio timers {}; \
             scheduled runs drained at {:.0} runs/s.",
            ms(heavy.lateness.p99),
            ms(heavy.lateness.p99 - TARGET_P99.as_micros() as i64),
            ms(light.lateness.p99),
            ms(floor.p99),
            heavy.drain_rate,
        ));
    }
    if !overlaps_ok {
        misses.push(format!(
            "**schedule overlaps**: {} pairs of runs of one source overlapped (target 0).",
            heavy.overlaps
        ));
    }
    if !all_ran {
        misses.push(format!(
            "**schedule ticks lost**: a source ran {} scheduled time(s) where {ROUNDS} were due.",
            heavy.per_source.0
        ));
    }
    Section {
        title: format!("Scheduling accuracy: {SOURCES} sources every minute"),
        body: s,
        misses,
    }
}
