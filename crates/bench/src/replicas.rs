//! Replicas on one Postgres: 100,000 `every 5m` calendar sources (one
//! calendar each, one event, answered at once by the in-process simulator)
//! shared by three `synchro run` processes through the shared schedule.
//!
//! * Start lateness of the ticks due in a window after every source's
//!   first run (`runs.started_at - runs.scheduled_at`, as in the schedule
//!   section), and overlapping successful runs of one source (`runs`), and
//!   the simulator's count of concurrent listings per calendar.
//! * The claim queries' cost: each replica's `synchro_schedule_*` counters
//!   from its `/metrics`: queries, ticks claimed, time spent, per run.
//! * Failover: one replica is killed with SIGKILL; the ticks it had claimed
//!   and the leases it held are run by the others — the time until the last
//!   of them started again, and the lateness of the ticks due meanwhile.
//!
//! Baseline, same run: the same sources' ticks as the replicas see them
//! before the kill are the reference for the ticks due during failover.
//! `SYNCHRO_BENCH_REPLICA_SOURCES` sets the number of sources (a quick
//! trial); the server is the postgres section's.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use sqlx::{Connection, PgConnection};
use synchro_simulator::Simulator;

use crate::child::Running;
use crate::postgres::{Scratch, server, skipped_without};
use crate::report::{Section, verdict};
use crate::schedule::{Lateness, ms};

const SOURCES: usize = 100_000;
const PER_TENANT: usize = 1_000;
const REPLICAS: usize = 3;
const EVERY: &str = "every 5m";
/// Ticks due in this window after the start-up are measured.
const WINDOW: Duration = Duration::from_secs(120);
/// Lease (and schedule claim) TTL of the replicas.
const LEASE_TTL_S: u64 = 10;
/// Ticks due in this window after the kill are the failover's.
const FAILOVER_WINDOW: Duration = Duration::from_secs(40);
const SLOTS: usize = 64;
const POOL: usize = 16;
const TARGET_P99: Duration = Duration::from_secs(1);

/// Sources in this run.
fn sources() -> usize {
    std::env::var("SYNCHRO_BENCH_REPLICA_SOURCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SOURCES)
}

/// A free port on 127.0.0.1 (bound, then released for the replica).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The config of one replica: the same sources for all, its own listener.
fn config(db: &str, sim: &Simulator, n: usize, port: u16) -> String {
    let mut toml = format!(
        "[storage]\ndatabase = \"{db}\"\npool_size = {POOL}\n\n\
         [server]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [scheduler]\nmax_concurrent_syncs = {SLOTS}\njitter = \"0s\"\n\
         lease_ttl = \"{LEASE_TTL_S}s\"\nshutdown_timeout = \"20s\"\n\n\
         [http]\ntimeout = \"30s\"\nconnect_timeout = \"10s\"\n\
         per_host_requests_per_second = 100000\nper_host_concurrency = 1024\n"
    );
    for i in 0..n {
        if i % PER_TENANT == 0 {
            let _ = write!(toml, "\n[[tenants]]\nid = \"t{:03}\"\n", i / PER_TENANT);
        }
        let _ = write!(
            toml,
            "\n[[tenants.sources]]\nid = \"s{i:06}\"\nkind = \"calendar\"\nschedule = \"{EVERY}\"\n\
             endpoint = \"{}\"\ncalendar_id = \"cal-{i}\"\naccess_token = \"{}\"\n",
            sim.calendar_endpoint(),
            synchro_simulator::DEFAULT_CALENDAR_TOKEN
        );
    }
    toml
}

/// One replica: its process, its metrics address, its folder.
struct Replica {
    process: Running,
    port: u16,
    dir: PathBuf,
}

/// A replica's `synchro_schedule_*` counters: claims, ticks, µs.
async fn claim_counters(port: u16) -> Result<(f64, f64, f64)> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((
        value("synchro_schedule_claims_total"),
        value("synchro_schedule_ticks_claimed_total"),
        value("synchro_schedule_claim_microseconds_total"),
    ))
}

async fn now_us(conn: &mut PgConnection) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT synchro_now_us()")
        .fetch_one(conn)
        .await?)
}

/// Start lateness of the runs whose tick was due in `(from, to]`,
/// leaving out `except`'s sources.
async fn lateness(
    conn: &mut PgConnection,
    from: i64,
    to: i64,
    except: &[(String, String)],
) -> Result<Lateness> {
    let (tenants, names): (Vec<&str>, Vec<&str>) =
        except.iter().map(|(t, s)| (t.as_str(), s.as_str())).unzip();
    let late: Vec<i64> = sqlx::query_scalar(
        "SELECT r.started_at - r.scheduled_at FROM runs r \
         WHERE r.scheduled_at > $1 AND r.scheduled_at <= $2 \
         AND NOT EXISTS (SELECT 1 FROM UNNEST($3::text[], $4::text[]) AS x(t, s) \
                         WHERE x.t = r.tenant AND x.s = r.source)",
    )
    .bind(from)
    .bind(to)
    .bind(tenants)
    .bind(names)
    .fetch_all(conn)
    .await?;
    Ok(Lateness::of(late))
}

/// What the run measured.
struct Measured {
    n: usize,
    startup: Duration,
    drained: Duration,
    steady: Lateness,
    overlaps: i64,
    concurrent_listings: u64,
    claims: Vec<(f64, f64, f64)>,
    rss_mb: Vec<f64>,
    orphans: usize,
    failover: Option<Duration>,
    during_failover: Lateness,
    failed: i64,
}

pub async fn run(bin: &Path) -> Result<Section> {
    let title = format!(
        "Replicas on Postgres: {} sources over {REPLICAS} replicas",
        sources()
    );
    let server = server();
    if let Some(skipped) = skipped_without(&server, &title).await {
        return Ok(skipped);
    }
    let db = Scratch::create(&server).await?;
    let measured = measure(bin, &db).await;
    db.drop_it().await?;
    Ok(render(title, &measured?))
}

async fn measure(bin: &Path, db: &Scratch) -> Result<Measured> {
    let n = sources();
    let sim = Simulator::start(([127, 0, 0, 1], 0).into()).await?;
    for i in 0..n {
        sim.calendar().seed(&format!("cal-{i}"), 1);
    }
    let root = tempfile::tempdir()?;
    let mut replicas = Vec::new();
    let started = Instant::now();
    for r in 0..REPLICAS {
        let dir = root.path().join(format!("replica-{r}"));
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let cfg = dir.join("synchro.toml");
        std::fs::write(&cfg, config(&db.url, &sim, n, port))?;
        let process = Running::start(bin, &cfg, &dir, &["-q", "run"])?;
        replicas.push(Replica { process, port, dir });
    }
    let mut conn = PgConnection::connect(&db.url).await?;

    // Start-up: every source new to the schedule is due at once.
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        for r in &mut replicas {
            if !r.process.alive() {
                bail!("a replica exited early (see {})", r.dir.display());
            }
        }
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT DISTINCT tenant, source FROM runs \
             WHERE outcome = 'success') s",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap_or(0);
        eprintln!(
            "replicas: {done} of {n} sources synced once after {:?}",
            started.elapsed()
        );
        if done >= n as i64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(1_200) {
            bail!("the start-up did not finish in 20 minutes");
        }
    }
    let startup = started.elapsed();
    // The ticks that came due behind the start-up herd drain next (oldest
    // due first): the window starts once none is overdue by a second.
    let steady_from = loop {
        let overdue: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM schedule WHERE due_at < synchro_now_us() - 1000000",
        )
        .fetch_one(&mut conn)
        .await?;
        if overdue == 0 {
            break now_us(&mut conn).await?;
        }
        if started.elapsed() > Duration::from_secs(1_500) {
            bail!("{overdue} ticks still overdue after 25 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let drained = started.elapsed();
    let mut at_startup = Vec::new();
    for r in &replicas {
        at_startup.push(claim_counters(r.port).await?);
    }
    let window_us = i64::try_from(WINDOW.as_micros())?;
    while now_us(&mut conn).await? < steady_from + window_us + 5_000_000 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let steady = lateness(&mut conn, steady_from, steady_from + window_us, &[]).await?;
    eprintln!(
        "replicas: steady {} ticks, p50 {} p99 {} max {}",
        steady.n,
        ms(steady.p50),
        ms(steady.p99),
        ms(steady.max)
    );
    let mut claims = Vec::new();
    let mut rss_mb = Vec::new();
    for (r, before) in replicas.iter().zip(&at_startup) {
        let now = claim_counters(r.port).await?;
        claims.push((now.0 - before.0, now.1 - before.1, now.2 - before.2));
        rss_mb.push(crate::child::status_kb(r.process.pid(), "VmHWM").unwrap_or(0) as f64 / 1024.0);
    }

    // Failover: SIGKILL one replica; what it had claimed or held goes to
    // the others.
    // It is frozen (SIGSTOP) first, so that what it claimed or held is
    // read without a race, and frozen again until that is something: a
    // kill while it holds nothing would show no failover at all.
    let victim = replicas.remove(0);
    let pid = victim.process.pid();
    let mut orphans: Vec<(String, String)> = Vec::new();
    for _ in 0..200 {
        victim.process.signal(libc::SIGSTOP)?;
        orphans = sqlx::query_as(
            "SELECT tenant, source FROM schedule WHERE claimed_by LIKE $1 \
             UNION SELECT tenant, source FROM leases WHERE pid = $2 AND run_id IS NOT NULL",
        )
        .bind(format!("%|{pid}|%"))
        .bind(i64::from(pid))
        .fetch_all(&mut conn)
        .await?;
        if !orphans.is_empty() {
            break;
        }
        victim.process.signal(libc::SIGCONT)?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.process.signal(libc::SIGKILL)?;
    let killed_at = Instant::now();
    let kill_us = now_us(&mut conn).await?;
    drop(victim);
    let mut failover = None;
    if !orphans.is_empty() {
        let (tenants, names): (Vec<&str>, Vec<&str>) = orphans
            .iter()
            .map(|(t, s)| (t.as_str(), s.as_str()))
            .unzip();
        while killed_at.elapsed() < Duration::from_secs(LEASE_TTL_S * 3 + 30) {
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM UNNEST($1::text[], $2::text[]) AS x(t, s) \
                 WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.tenant = x.t \
                 AND r.source = x.s AND r.started_at > $3 AND r.outcome = 'success')",
            )
            .bind(&tenants)
            .bind(&names)
            .bind(kill_us)
            .fetch_one(&mut conn)
            .await?;
            if pending == 0 {
                let last: i64 = sqlx::query_scalar(
                    "SELECT max(first) FROM (SELECT min(r.started_at) AS first \
                     FROM UNNEST($1::text[], $2::text[]) AS x(t, s) JOIN runs r \
                     ON r.tenant = x.t AND r.source = x.s AND r.started_at > $3 \
                     AND r.outcome = 'success' GROUP BY x.t, x.s) f",
                )
                .bind(&tenants)
                .bind(&names)
                .bind(kill_us)
                .fetch_one(&mut conn)
                .await?;
                failover = Some(Duration::from_micros(u64::try_from(last - kill_us)?));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let fw_us = i64::try_from(FAILOVER_WINDOW.as_micros())?;
    while now_us(&mut conn).await? < kill_us + fw_us + 5_000_000 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let during_failover = lateness(&mut conn, kill_us, kill_us + fw_us, &orphans).await?;
    for r in replicas {
        r.process.stop(Duration::from_secs(40)).await?;
    }
    let overlaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runs a JOIN runs b \
         ON a.tenant = b.tenant AND a.source = b.source AND a.id < b.id \
         WHERE a.outcome = 'success' AND b.outcome = 'success' \
         AND b.started_at < a.finished_at AND a.started_at < b.finished_at",
    )
    .fetch_one(&mut conn)
    .await?;
    let failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runs WHERE outcome = 'failed' AND started_at < $1 \
         AND error NOT LIKE 'interrupted%'",
    )
    .bind(kill_us)
    .fetch_one(&mut conn)
    .await?;
    let errors: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT error, count(*) FROM runs WHERE outcome = 'failed' \
         GROUP BY error ORDER BY 2 DESC LIMIT 3",
    )
    .fetch_all(&mut conn)
    .await?;
    for (error, count) in errors {
        eprintln!(
            "replicas: {count} failed runs: {}",
            error.unwrap_or_default()
        );
    }
    conn.close().await.ok();
    let concurrent_listings = sim
        .traffic()
        .concurrent_listings()
        .values()
        .copied()
        .max()
        .unwrap_or(0);
    sim.shutdown().await;
    Ok(Measured {
        n,
        startup,
        drained,
        steady,
        overlaps,
        concurrent_listings,
        claims,
        rss_mb,
        orphans: orphans.len(),
        failover,
        during_failover,
        failed,
    })
}

fn render(title: String, m: &Measured) -> Section {
    let (claims, ticks, micros) = m
        .claims
        .iter()
        .fold((0.0, 0.0, 0.0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
    let per_run_us = micros / ticks.max(1.0);
    let p99_ok = Duration::from_micros(m.steady.p99.max(0) as u64) <= TARGET_P99;
    let overlaps_ok = m.overlaps == 0 && m.concurrent_listings <= 1;
    let failover_limit = Duration::from_secs(LEASE_TTL_S) + Duration::from_millis(375);
    let failover_ok = m
        .failover
        .is_none_or(|f| f <= failover_limit + Duration::from_secs(1));
    let mut body = format!(
        "{REPLICAS} `synchro run` processes (release binary, child processes) with the same \
         {} calendar sources (`schedule = \"{EVERY}\"`, `jitter = \"0s\"`, \
         `lease_ttl = \"{LEASE_TTL_S}s\"`, `max_concurrent_syncs = {SLOTS}`, `pool_size = {POOL}`), \
         one calendar of one event each in the in-process simulator (a run is one request \
         answered at once), on one Postgres database of the local server. Every source is new \
         to the shared schedule, so all are due at the start (a herd); the ticks that come due \
         while it drains queue behind it. The ticks measured are those due in the {}s after \
         every source's first run succeeded and no tick was overdue by more than a second. *Lateness* = `runs.started_at - \
         runs.scheduled_at`. *Overlaps* = successful runs of one source whose intervals \
         intersect; the simulator also counts the most listing requests of one calendar \
         answered at once. *Claim cost* from each replica's `synchro_schedule_*` counters \
         over the measured window (queries, ticks claimed, time in the claim transaction as \
         the replica saw it, waiting for a pooled connection included).\n\n\
         Then replica 0 gets SIGKILL: *failover* is the time from the kill until the last \
         source it had claimed or was syncing started a successful run on another replica \
         (their claims and leases lapse after the lease TTL, then the next claim takes them); \
         the ticks due in the {}s after the kill, those sources left out, show the rest of the \
         schedule kept its time. The victim is frozen (SIGSTOP) just before the kill until it \
         is seen holding something, so that the kill always leaves work to take over.\n\n",
        m.n,
        WINDOW.as_secs(),
        FAILOVER_WINDOW.as_secs()
    );
    let _ = writeln!(
        body,
        "| Measured | Runs | p50 | p99 | Max |\n|---|---:|---:|---:|---:|"
    );
    let _ = writeln!(
        body,
        "{}",
        m.steady.row(&format!(
            "{REPLICAS} replicas, ticks due in the {}s window",
            WINDOW.as_secs()
        ))
    );
    let _ = writeln!(
        body,
        "{}",
        m.during_failover.row(&format!(
            "{} replicas, ticks due in the {}s after the kill",
            REPLICAS - 1,
            FAILOVER_WINDOW.as_secs()
        ))
    );
    let _ = writeln!(
        body,
        "\n| {} sources, {REPLICAS} replicas | Value | Target |\n|---|---:|---|",
        m.n
    );
    let _ = writeln!(
        body,
        "| p99 start lateness | {} | {} (≤ 1 s) |",
        ms(m.steady.p99),
        verdict(p99_ok)
    );
    let _ = writeln!(
        body,
        "| overlapping successful runs of one source / most concurrent listings of one calendar | {} / {} | {} (0 / 1) |",
        m.overlaps,
        m.concurrent_listings,
        verdict(overlaps_ok)
    );
    let _ = writeln!(
        body,
        "| claim queries / ticks claimed in the window (all replicas) | {claims:.0} / {ticks:.0} ({:.2} ticks per query) | |",
        ticks / claims.max(1.0)
    );
    let _ = writeln!(
        body,
        "| claim statement time per run | {:.1} µs | |",
        per_run_us
    );
    for (i, c) in m.claims.iter().enumerate() {
        let _ = writeln!(
            body,
            "| replica {i}: ticks claimed in the window, peak RSS | {:.0}, {:.0} MB | |",
            c.1, m.rss_mb[i]
        );
    }
    let _ = writeln!(
        body,
        "| start-up: every source synced once after / no tick overdue after | {:.0} s / {:.0} s | |",
        m.startup.as_secs_f64(),
        m.drained.as_secs_f64()
    );
    let _ = writeln!(
        body,
        "| failed runs (besides the victim's, closed as interrupted by the takeover) | {} | |",
        m.failed
    );
    match m.failover {
        Some(f) => {
            let _ = writeln!(
                body,
                "| failover after SIGKILL ({} sources claimed or held by the victim) | {:.1} s | {} (≤ lease TTL {LEASE_TTL_S} s + claim interval ≤ 0.375 s, +1 s slack) |",
                m.orphans,
                f.as_secs_f64(),
                verdict(failover_ok)
            );
        }
        None => {
            let _ = writeln!(
                body,
                "| failover after SIGKILL | the victim held no claim or lease at the kill ({} orphans) | |",
                m.orphans
            );
        }
    }
    let mut misses = Vec::new();
    if !p99_ok {
        misses.push(format!(
            "replicas: p99 start lateness {} over {} sources (target ≤ 1 s)",
            ms(m.steady.p99),
            m.n
        ));
    }
    if !overlaps_ok {
        misses.push(format!(
            "replicas: {} overlapping runs, {} concurrent listings of one calendar (target 0 / 1)",
            m.overlaps, m.concurrent_listings
        ));
    }
    if !failover_ok {
        misses.push(format!(
            "replicas: failover took {:?} (lease TTL {LEASE_TTL_S} s)",
            m.failover
        ));
    }
    Section {
        title,
        body,
        misses,
    }
}
