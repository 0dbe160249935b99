//! Idle cost: 1,000 configured sources over 100 tenants, all synced, the
//! daemon idle; next to a baseline daemon with one source, measured over
//! the same window.
//!
//! * Both `synchro run` daemons (release binary, child processes) start
//!   against the in-process simulator with small data sets; the bench waits
//!   until every source has a first successful run and the simulator has
//!   been quiet for a moment (import-state reports sent).
//! * Idle window: resident memory (`VmRSS`, sampled) and CPU time
//!   (`utime + stime` of `/proc/PID/stat`) of both daemons over the same
//!   minute, so that a noisy machine affects both alike.
//! * No-change cycle: the big daemon reloads (SIGHUP) a configuration whose
//!   schedules changed, which restarts every source with one immediate run
//!   and nothing changed upstream; the simulator counts the requests per
//!   API until every source has its second successful run.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use synchro_simulator::{
    DEFAULT_CALENDAR_TOKEN, DEFAULT_CONTENT_TOKEN, DEFAULT_DS_TOKEN, Simulator,
};

use crate::child::{self, Running};
use crate::report::{Section, verdict};

/// Tenants, and sources per tenant (4 démarches, 3 calendars, 3 Contentor).
const TENANTS: usize = 100;
const PER_TENANT: usize = 10;
/// The idle window (issue 7: "averaged over a minute").
const WINDOW: Duration = Duration::from_secs(60);
/// How often RSS is sampled within the window.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Deadlines of the waits (a loaded machine is slow, never this slow).
const STARTUP_DEADLINE: Duration = Duration::from_secs(90);
const CYCLE_DEADLINE: Duration = Duration::from_secs(60);
/// The simulator must see no request for this long before the window opens.
const QUIET: Duration = Duration::from_secs(2);
/// Targets from issue 7.
const TARGET_RSS_MB: f64 = 30.0;
const TARGET_CPU_PCT: f64 = 1.0;
const TARGET_REQUESTS: f64 = 1.0;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Demarches(i64),
    Calendar(usize),
    Content,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Demarches(_) => "demarches",
            Kind::Calendar(_) => "calendar",
            Kind::Content => "content",
        }
    }

    /// The kind of the `i`-th source of tenant `t`.
    fn of(t: usize, i: usize) -> Self {
        match i {
            0..4 => Kind::Demarches(1 + ((t + i) % 4) as i64),
            4..7 => Kind::Calendar((t + i) % 3),
            _ => Kind::Content,
        }
    }
}

/// A `synchro run` configuration of `sources` (tenant index, source index)
/// on `sim`, every source on `schedule`.
fn config(dir: &Path, sim: &Simulator, sources: &[(usize, usize)], schedule: &str) -> String {
    let mut toml = format!(
        "[storage]\ndatabase = \"sqlite://{}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [scheduler]\nmax_concurrent_syncs = 64\njitter = \"0s\"\nshutdown_timeout = \"5s\"\n\n\
         [http]\ntimeout = \"20s\"\nconnect_timeout = \"5s\"\nmax_retries = 3\n\
         initial_backoff = \"50ms\"\nmax_backoff = \"500ms\"\n\
         per_host_requests_per_second = 1000\nper_host_concurrency = 16\n",
        dir.join("synchro.db").display()
    );
    let mut tenant = usize::MAX;
    for &(t, i) in sources {
        if t != tenant {
            tenant = t;
            let _ = write!(toml, "\n[[tenants]]\nid = \"tenant-{t:03}\"\n");
        }
        let _ = write!(
            toml,
            "\n[[tenants.sources]]\nid = \"s{i}\"\nschedule = \"{schedule}\"\n"
        );
        let _ = match Kind::of(t, i) {
            Kind::Demarches(n) => write!(
                toml,
                "kind = \"demarches\"\nendpoint = \"{}\"\ntoken = \"{DEFAULT_DS_TOKEN}\"\ndemarche = {n}\n",
                sim.ds_endpoint()
            ),
            Kind::Calendar(n) => write!(
                toml,
                "kind = \"calendar\"\nendpoint = \"{}\"\naccess_token = \"{DEFAULT_CALENDAR_TOKEN}\"\n\
                 calendar_id = \"cal-{n}\"\n",
                sim.calendar_endpoint()
            ),
            Kind::Content => write!(
                toml,
                "kind = \"content\"\nendpoint = \"{}\"\ntoken = \"{DEFAULT_CONTENT_TOKEN}\"\n\
                 report_import_state = true\n",
                sim.content_endpoint()
            ),
        };
    }
    toml
}

/// Sources with at least `runs` successful runs, per the daemon's database.
async fn sources_with_successes(db: &Path, runs: i64) -> i64 {
    let opts = SqliteConnectOptions::new().filename(db).read_only(true);
    let Ok(mut conn) = SqliteConnection::connect_with(&opts).await else {
        return 0;
    };
    let n = sqlx::query_as::<_, (i64,)>(
        "SELECT count(*) FROM (SELECT 1 FROM runs WHERE outcome = 'success' \
         GROUP BY tenant, source HAVING count(*) >= ?1)",
    )
    .bind(runs)
    .fetch_one(&mut conn)
    .await
    .map_or(0, |(n,)| n);
    let _ = conn.close().await;
    n
}

/// Waits until `want` sources of the daemon in `dir` have `runs` successful
/// runs each; fails after `deadline` with the daemon's last log lines.
async fn wait_for_runs(
    daemon: &mut Running,
    dir: &Path,
    runs: i64,
    want: i64,
    deadline: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let db = dir.join("synchro.db");
    loop {
        let done = sources_with_successes(&db, runs).await;
        if done >= want {
            return Ok(start.elapsed());
        }
        if !daemon.alive() || start.elapsed() > deadline {
            let log = std::fs::read_to_string(dir.join("child.err")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "only {done} of {want} sources reached {runs} successful run(s) within {deadline:?}; \
                 daemon log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the simulator has received no request for [`QUIET`].
async fn wait_for_quiet(sim: &Simulator, deadline: Duration) -> Result<()> {
    let start = Instant::now();
    let mut last = sim.traffic().total();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sim.traffic().total();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= QUIET {
            return Ok(());
        }
        if start.elapsed() > deadline {
            bail!("the simulator never went quiet within {deadline:?}");
        }
    }
}

/// What one daemon did during the idle window.
#[derive(Default)]
struct Idle {
    rss_avg_kb: f64,
    rss_max_kb: i64,
    rss_anon_kb: i64,
    rss_file_kb: i64,
    threads: i64,
    cpu: Duration,
    wall: Duration,
    /// Context switches (voluntary + involuntary): how often it woke up.
    switches: i64,
}

impl Idle {
    fn cpu_pct(&self) -> f64 {
        self.cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9) * 100.0
    }

    fn wakeups_per_s(&self) -> f64 {
        self.switches as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Context switches of every thread of `pid` (`/proc/PID/status` counts
/// only the main thread's).
/// Context switches of each thread of `pid`, by thread id.
fn switches(pid: u32) -> HashMap<u64, i64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let tid: u64 = t.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let field = |name: &str| -> i64 {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            Some((
                tid,
                field("voluntary_ctxt_switches") + field("nonvoluntary_ctxt_switches"),
            ))
        })
        .collect()
}

/// Context switches over a window, thread by thread: a thread's last
/// sample minus its count at the start (0 for one born in the window), so
/// that a thread ending in the window (an idle SQLite connection closing)
/// does not take its earlier switches out of the sum.
#[derive(Default)]
struct SwitchCounter {
    start: HashMap<u64, i64>,
    last: HashMap<u64, i64>,
}

impl SwitchCounter {
    fn new(pid: u32) -> Self {
        let start = switches(pid);
        Self {
            last: start.clone(),
            start,
        }
    }

    fn sample(&mut self, pid: u32) {
        self.last.extend(switches(pid));
    }

    fn total(&self) -> i64 {
        self.last
            .iter()
            .map(|(tid, n)| n - self.start.get(tid).copied().unwrap_or(0))
            .sum()
    }
}

/// Samples both daemons over the same [`WINDOW`].
async fn sample(pids: [u32; 2]) -> Result<[Idle; 2]> {
    let mut out: [Idle; 2] = Default::default();
    let cpu0 = pids.map(child::cpu_time);
    let mut sw = pids.map(SwitchCounter::new);
    let start = Instant::now();
    let mut samples = 0u32;
    let mut sums = [0f64; 2];
    while start.elapsed() < WINDOW {
        for (k, pid) in pids.iter().enumerate() {
            let kb = child::status_kb(*pid, "VmRSS").context("the daemon exited")?;
            sums[k] += kb as f64;
            out[k].rss_max_kb = out[k].rss_max_kb.max(kb);
            sw[k].sample(*pid);
        }
        samples += 1;
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let wall = start.elapsed();
    for (k, pid) in pids.iter().enumerate() {
        let (Some(a), Some(b)) = (cpu0[k], child::cpu_time(*pid)) else {
            bail!("cannot read the CPU time of the daemon");
        };
        out[k].cpu = b.saturating_sub(a);
        out[k].wall = wall;
        sw[k].sample(*pid);
        out[k].switches = sw[k].total();
        out[k].rss_avg_kb = sums[k] / f64::from(samples.max(1));
        out[k].rss_anon_kb = child::status_kb(*pid, "RssAnon").unwrap_or(0);
        out[k].rss_file_kb = child::status_kb(*pid, "RssFile").unwrap_or(0);
        out[k].threads = child::status_kb(*pid, "Threads").unwrap_or(0);
    }
    Ok(out)
}

/// Requests per API, all three counted by the simulator.
fn per_api(sim: &Simulator) -> [u64; 3] {
    [
        sim.ds().requests(),
        sim.calendar().requests(),
        sim.content().requests(),
    ]
}

/// Measures the idle daemons, then one no-change cycle of the big one.
pub async fn run(bin: &Path) -> Result<Section> {
    let sim = Simulator::start(([127, 0, 0, 1], 0).into()).await?;
    for d in 1..=4 {
        sim.ds().seed(d, 20);
    }
    for c in 0..3 {
        sim.calendar().seed(&format!("cal-{c}"), 20);
    }
    // Two batches of 30 requests sharing an instant: the last one is larger
    // than a page of 20, the hardest case for a one-request cycle.
    sim.content().seed(60, 30);

    let all: Vec<(usize, usize)> = (0..TENANTS)
        .flat_map(|t| (0..PER_TENANT).map(move |i| (t, i)))
        .collect();
    let per_kind = |name: &str| {
        all.iter()
            .filter(|(t, i)| Kind::of(*t, *i).name() == name)
            .count() as f64
    };
    let counts = [
        per_kind("demarches"),
        per_kind("calendar"),
        per_kind("content"),
    ];
    let big_dir = tempfile::tempdir()?;
    let base_dir = tempfile::tempdir()?;
    let big_config = big_dir.path().join("synchro.toml");
    let base_config = base_dir.path().join("synchro.toml");
    std::fs::write(&big_config, config(big_dir.path(), &sim, &all, "every 1h"))?;
    std::fs::write(
        &base_config,
        config(base_dir.path(), &sim, &all[..1], "every 1h"),
    )?;

    let mut base = Running::start(bin, &base_config, base_dir.path(), &["run"])?;
    let mut big = Running::start(bin, &big_config, big_dir.path(), &["run"])?;
    let startup = wait_for_runs(
        &mut big,
        big_dir.path(),
        1,
        all.len() as i64,
        STARTUP_DEADLINE,
    )
    .await?;
    wait_for_runs(&mut base, base_dir.path(), 1, 1, STARTUP_DEADLINE).await?;
    eprintln!(
        "idle: {} sources synced {:.1} s after start",
        all.len(),
        startup.as_secs_f64()
    );
    wait_for_quiet(&sim, Duration::from_secs(30)).await?;

    let idle_requests_before = sim.traffic().total();
    let [base_idle, big_idle] = sample([base.pid(), big.pid()]).await?;
    let idle_requests = sim.traffic().total() - idle_requests_before;
    eprintln!(
        "idle: 1 source {:.1} MB, {:.3} % CPU; {} sources {:.1} MB, {:.3} % CPU",
        base_idle.rss_avg_kb / 1024.0,
        base_idle.cpu_pct(),
        all.len(),
        big_idle.rss_avg_kb / 1024.0,
        big_idle.cpu_pct()
    );

    // One no-change cycle: changed schedules restart every source with one
    // immediate run.
    std::fs::write(&big_config, config(big_dir.path(), &sim, &all, "every 2h"))?;
    let before = per_api(&sim);
    let cpu_before = child::cpu_time(big.pid()).context("the daemon exited")?;
    big.signal(libc::SIGHUP)?;
    let cycle = wait_for_runs(
        &mut big,
        big_dir.path(),
        2,
        all.len() as i64,
        CYCLE_DEADLINE,
    )
    .await?;
    let cycle_cpu = child::cpu_time(big.pid())
        .context("the daemon exited")?
        .saturating_sub(cpu_before);
    let after = per_api(&sim);
    let rss_after_cycle_kb = child::status_kb(big.pid(), "VmRSS").unwrap_or(0);
    let requests: Vec<f64> = (0..3)
        .map(|k| (after[k] - before[k]) as f64 / counts[k])
        .collect();
    eprintln!(
        "idle: no-change cycle in {:.1} s, requests per source: demarches {:.2}, calendar {:.2}, content {:.2}",
        cycle.as_secs_f64(),
        requests[0],
        requests[1],
        requests[2]
    );
    drop(big);
    drop(base);
    sim.shutdown().await;

    Ok(render(
        all.len(),
        startup,
        &base_idle,
        &big_idle,
        idle_requests,
        &counts,
        &requests,
        cycle,
        cycle_cpu,
        rss_after_cycle_kb,
    ))
}

#[allow(clippy::too_many_arguments)]
fn render(
    n: usize,
    startup: Duration,
    base: &Idle,
    big: &Idle,
    idle_requests: u64,
    counts: &[f64; 3],
    requests: &[f64],
    cycle: Duration,
    cycle_cpu: Duration,
    rss_after_cycle_kb: i64,
) -> Section {
    let mb = |kb: f64| kb / 1024.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "Two `synchro run` daemons (release binary, child processes) against the in-process \
         simulator: **{n} sources** over {TENANTS} tenants ({} démarches, {} calendars, {} \
         Contentor accounts with import-state reports; 20 dossiers, 20 events, 60 requests in \
         batches of 30 each), and a **baseline of 1 source**. Every source on `every 1h`; the \
         {n} sources had their first success {:.1} s after start. Both are then sampled over \
         the same {:.0} s window while idle: VmRSS every {} ms, CPU time from \
         `/proc/PID/stat` (utime + stime) as % of one core, context switches as wake-ups. \
         Requests the simulator received during the window: {idle_requests}.\n\n",
        counts[0],
        counts[1],
        counts[2],
        startup.as_secs_f64(),
        big.wall.as_secs_f64(),
        SAMPLE_EVERY.as_millis()
    );
    s.push_str(
        "| Idle | 1 source (baseline) | 1,000 sources | Increment for 1,000 sources | Target | |\n\
         |---|---:|---:|---:|---|---|\n",
    );
    let rss_mb = mb(big.rss_avg_kb);
    let rss_ok = mb(big.rss_max_kb as f64) <= TARGET_RSS_MB;
    let cpu_ok = big.cpu_pct() <= TARGET_CPU_PCT;
    let _ = writeln!(
        s,
        "| RSS, mean | {:.1} MB | {rss_mb:.1} MB | {:+.1} MB | | |",
        mb(base.rss_avg_kb),
        rss_mb - mb(base.rss_avg_kb)
    );
    let _ = writeln!(
        s,
        "| RSS, max | {:.1} MB | {:.1} MB | {:+.1} MB | ≤ {TARGET_RSS_MB:.0} MB | {} |",
        mb(base.rss_max_kb as f64),
        mb(big.rss_max_kb as f64),
        mb((big.rss_max_kb - base.rss_max_kb) as f64),
        verdict(rss_ok)
    );
    let _ = writeln!(
        s,
        "| of which anonymous (heap, stacks) / file-backed | {:.1} / {:.1} MB | {:.1} / {:.1} MB | {:+.1} / {:+.1} MB | | |",
        mb(base.rss_anon_kb as f64),
        mb(base.rss_file_kb as f64),
        mb(big.rss_anon_kb as f64),
        mb(big.rss_file_kb as f64),
        mb((big.rss_anon_kb - base.rss_anon_kb) as f64),
        mb((big.rss_file_kb - base.rss_file_kb) as f64),
    );
    let _ = writeln!(
        s,
        "| CPU, % of one core | {:.3} % | {:.3} % | {:+.3} points | ≤ {TARGET_CPU_PCT:.0} % | {} |",
        base.cpu_pct(),
        big.cpu_pct(),
        big.cpu_pct() - base.cpu_pct(),
        verdict(cpu_ok)
    );
    let _ = writeln!(
        s,
        "| CPU time over the window | {:.2} s | {:.2} s | {:+.2} s | | |",
        base.cpu.as_secs_f64(),
        big.cpu.as_secs_f64(),
        big.cpu.as_secs_f64() - base.cpu.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| Wake-ups (context switches) per second | {:.1} | {:.1} | {:+.1} | | |",
        base.wakeups_per_s(),
        big.wakeups_per_s(),
        big.wakeups_per_s() - base.wakeups_per_s()
    );
    let _ = writeln!(
        s,
        "| Threads | {} | {} | {:+} | | |\n",
        base.threads,
        big.threads,
        big.threads - base.threads
    );

    let _ = write!(
        s,
        "No-change cycle: the {n}-source daemon reloads (SIGHUP) the same configuration with \
         `every 2h`, which restarts every source with one immediate run; nothing changed \
         upstream. All {n} sources had their second success {:.1} s after the signal, using \
         {:.2} s of CPU; RSS after it: {:.1} MB.\n\n",
        cycle.as_secs_f64(),
        cycle_cpu.as_secs_f64(),
        mb(rss_after_cycle_kb as f64)
    );
    s.push_str(
        "| Connector | Sources | Requests per source | Target 1 | |\n|---|---:|---:|---|---|\n",
    );
    let mut misses = Vec::new();
    for (k, name) in ["demarches", "calendar", "content"].iter().enumerate() {
        let ok = requests[k] <= TARGET_REQUESTS;
        if !ok {
            misses.push(format!(
                "**idle {name} no-change cycle**: {:.2} requests per source (target 1).",
                requests[k]
            ));
        }
        let _ = writeln!(
            s,
            "| {name} | {:.0} | {:.2} | {} | |",
            counts[k],
            requests[k],
            verdict(ok)
        );
    }
    s.push('\n');
    if !rss_ok {
        misses.push(format!(
            "**idle memory**: {:.1} MB max RSS with {n} sources (target ≤ {TARGET_RSS_MB:.0} MB), \
             {:.1} MB over; the 1-source baseline alone is {:.1} MB.",
            mb(big.rss_max_kb as f64),
            mb(big.rss_max_kb as f64) - TARGET_RSS_MB,
            mb(base.rss_max_kb as f64)
        ));
    }
    if !cpu_ok {
        misses.push(format!(
            "**idle CPU**: {:.3} % of a core with {n} sources (target ≤ {TARGET_CPU_PCT:.0} %), \
             {:.3} points over; baseline {:.3} %.",
            big.cpu_pct(),
            big.cpu_pct() - TARGET_CPU_PCT,
            base.cpu_pct()
        ));
    }
    Section {
        title: format!("Idle cost: {n} sources"),
        body: s,
        misses,
    }
}
