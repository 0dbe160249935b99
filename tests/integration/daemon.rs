//! The daemon's life cycle and the operator commands around it.

use std::time::{Duration, Instant};

use crate::common::*;
use synchro_simulator::Fault;

const DEMARCHE: i64 = 99;

async fn http_status(url: &str) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_syncs_serves_health_and_exits_0_on_sigterm_within_the_deadline() {
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 2_000);
    let port = free_port();
    let setup = Setup::with_extra(&sim, &[DsSource::new("acme", "permits", DEMARCHE)], "");
    let cfg = std::fs::read_to_string(&setup.config)
        .expect("config")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&setup.config, cfg).expect("config");
    // Slow pages: the SIGTERM lands in the middle of the first sync.
    sim.ds()
        .inject(Fault::Slow(Duration::from_millis(40)), 1_000);

    let mut child = setup.spawn(&["run"]);
    let ready = format!("http://127.0.0.1:{port}/readyz");
    wait_until(Duration::from_secs(30), "readyz 200", || async {
        http_status(&ready).await == Some(200)
    })
    .await;
    assert_eq!(
        http_status(&format!("http://127.0.0.1:{port}/healthz")).await,
        Some(200)
    );
    // Wait for some pages to land, then ask to stop.
    let db = setup.db();
    wait_until(Duration::from_secs(30), "a first page", || {
        let db = db.clone();
        async move { db.count("SELECT count(*) FROM records", &[]).await > 0 }
    })
    .await;
    signal(&child, "TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not exit within 15 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "clean shutdown exits 0");

    // What was stored is consistent, and a sync completes it.
    sim.ds().clear_faults();
    setup.sync_ok(&[]).await;
    assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_every_bad_key_and_exits_78_without_printing_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[storage]
database = "sqlite://var/x.db"
colour = "blue"

[[tenants]]
id = "acme"

[[tenants.sources]]
id = "permits"
kind = "demarches"
schedule = "61 * * * *"
endpoint = "https://demarche.numerique.gouv.fr/api/v2/graphql"
token = { env = "SYNCHRO_TEST_SURELY_UNSET_TOKEN" }
demarche = 1

[[tenants.sources]]
id = "other"
kind = "demarches"
schedule = "every 5m"
endpoint = "https://demarche.numerique.gouv.fr/api/v2/graphql"
token = "literal-secret-value-xyz"
demarche = 2
"#,
    )
    .expect("write");
    let out = std::process::Command::new(bin())
        .arg("--config")
        .arg(&path)
        .arg("check")
        .env_remove("SYNCHRO_TEST_SURELY_UNSET_TOKEN")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("storage.colour"), "{all}");
    assert!(all.contains("tenants[0].sources[0].schedule"), "{all}");
    assert!(all.contains("tenants[0].sources[0].token"), "{all}");
    assert!(all.contains("SYNCHRO_TEST_SURELY_UNSET_TOKEN"), "{all}");
    assert!(
        all.contains(&path.display().to_string()),
        "names the file: {all}"
    );
    assert!(
        !all.contains("literal-secret-value-xyz"),
        "secret leaked: {all}"
    );
    assert!(!all.contains("panicked"), "{all}");

    // Every other command refuses the same file with 78 too.
    for cmd in ["sync", "status", "export", "run"] {
        let out = std::process::Command::new(bin())
            .arg("--config")
            .arg(&path)
            .arg(cmd)
            .env_remove("SYNCHRO_TEST_SURELY_UNSET_TOKEN")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(78), "{cmd}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_a_valid_config() {
    let sim = simulator().await;
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", DEMARCHE)]);
    let out = setup.run(&["check"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_offline_and_shows_what_it_synced() {
    let out = tokio::task::spawn_blocking(|| {
        std::process::Command::new(bin())
            .args(["--log-format", "text", "-q", "demo", "--duration", "0s"])
            .output()
            .expect("run demo")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    assert!(stdout.contains("acme/permits"), "{stdout}");
    assert!(stdout.contains('✓'), "{stdout}");
    assert!(!stdout.contains('✗'), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_on_a_terminal_draws_a_progress_bar_and_clears_it() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("NOTICE: `script` (util-linux) missing: cannot give synchro a terminal; skipped");
        return;
    }
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 600);
    // Small, slow pages: the sync lasts long enough for the rate to show.
    sim.ds()
        .inject(Fault::Slow(Duration::from_millis(40)), 1_000);
    let mut source = DsSource::new("acme", "permits", DEMARCHE);
    source.page_size = 15;
    let setup = Setup::new(&sim, &[source]);
    // `script` runs synchro on a pseudo-terminal and copies what it draws.
    // No `-q`: the run's own info line is logged while the bar is drawn.
    let command = format!("{} --config {} sync", bin(), setup.config.display());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .output()
            .expect("script")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let raw = String::from_utf8_lossy(&out.stdout);
    // The bar: source, pages, records and rate; then the summary line.
    assert!(raw.contains("acme/permits"), "{raw}");
    assert!(raw.contains(" records · "), "{raw}");
    assert!(raw.contains("pages"), "{raw}");
    // Rates: a whole number or one decimal (indicatif's own said 146.6997/s).
    assert!(raw.contains("/s"), "no rate shown: {raw}");
    for (at, _) in raw.match_indices("/s") {
        let number: String = raw[..at]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let decimals = number.find('.').unwrap_or(0);
        assert!(
            decimals <= 1,
            "rate with more than one decimal: {number:?}\n{raw}"
        );
    }
    // What the terminal shows in the end: the log line on a line of its
    // own, not after the spinner, and the summary once the bar is gone.
    let screen = render(&raw);
    let logged = screen
        .iter()
        .find(|l| l.contains("sync run succeeded"))
        .unwrap_or_else(|| panic!("no log line: {screen:#?}"));
    assert!(
        !logged.contains("records ·"),
        "log line on the spinner's line: {logged:?}"
    );
    assert!(
        screen
            .iter()
            .any(|l| l.starts_with("acme/permits: success")),
        "{screen:#?}"
    );
    assert!(
        !screen.iter().any(|l| l.contains("records ·")),
        "bar left: {screen:#?}"
    );
}

/// The lines a terminal shows after `raw` (text, `\r`, `\n`, cursor up and
/// down, clear line; other escape sequences ignored).
fn render(raw: &str) -> Vec<String> {
    let mut lines: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                row += 1;
                col = 0;
            }
            '\r' => col = 0,
            '\x1b' if chars.peek() == Some(&'[') => {
                chars.next();
                let mut params = String::new();
                let mut end = ' ';
                for p in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&p) {
                        end = p;
                        break;
                    }
                    params.push(p);
                }
                let n = params.parse::<usize>().unwrap_or(1).max(1);
                match end {
                    'A' => row = row.saturating_sub(n),
                    'B' => row += n,
                    'K' if lines.len() > row => {
                        if params == "2" {
                            lines[row].clear();
                        } else {
                            lines[row].truncate(col);
                        }
                    }
                    _ => {}
                }
            }
            c => {
                if lines.len() <= row {
                    lines.resize(row + 1, Vec::new());
                }
                let line = &mut lines[row];
                if line.len() <= col {
                    line.resize(col + 1, ' ');
                }
                line[col] = c;
                col += 1;
            }
        }
    }
    lines
        .into_iter()
        .map(|l| l.into_iter().collect::<String>().trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// `(started_at, scheduled_at)` of every run of `tenant/source`, oldest first.
async fn run_instants(db: &Db, tenant: &str, source: &str) -> Vec<(i64, Option<i64>)> {
    let Some(mut conn) = db.connect().await else {
        return Vec::new();
    };
    sqlx::query_as(sqlx::AssertSqlSafe(db.sql(
        "SELECT started_at, scheduled_at FROM runs \
         WHERE tenant = ?1 AND source = ?2 AND outcome <> 'running' ORDER BY id",
    )))
    .bind(tenant)
    .bind(source)
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_record_their_due_instant_and_other_runs_do_not() {
    let sim = simulator().await;
    sim.calendar().seed("primary", 3);
    let setup = Setup::mixed(&sim, &[], &[CalSource::new("acme", "team", "primary")], "");
    setup.edit_config("schedule = \"every 1h\"", "schedule = \"every 2s\"");
    let db = setup.db();

    let mut child = setup.spawn(&["run"]);
    wait_until(Duration::from_secs(60), "two scheduled runs", || {
        let db = db.clone();
        async move {
            run_instants(&db, "acme", "team")
                .await
                .iter()
                .filter(|r| r.1.is_some())
                .count()
                >= 2 + usize::from(on_postgres())
        }
    })
    .await;
    signal(&child, "TERM");
    let _ = child.wait();
    // A manual sync is nobody's tick.
    setup.sync_ok(&[]).await;

    let runs = run_instants(&db, "acme", "team").await;
    // On a local schedule the start-up run is nobody's tick; on a shared
    // one (Postgres) a new source's first run answers its first tick, due
    // when the daemon registered it.
    assert_eq!(
        runs.first().map(|r| r.1.is_some()),
        Some(on_postgres()),
        "the start-up run: {runs:?}"
    );
    assert_eq!(
        runs.last().map(|r| r.1),
        Some(None),
        "the manual sync: {runs:?}"
    );
    // The shared schedule's first tick is the instant the source was
    // registered; the grid's ticks follow it.
    let grid = runs.iter().skip(usize::from(on_postgres()));
    let scheduled: Vec<(i64, i64)> = grid.filter_map(|r| Some((r.0, r.1?))).collect();
    assert!(scheduled.len() >= 2, "{runs:?}");
    for (started, due) in &scheduled {
        // Due instants are whole seconds, and a run never starts before its
        // tick was due (the scheduler fires interval ticks ahead and waits).
        assert_eq!(due % 1_000_000, 0, "due instant {due} is a whole second");
        assert!(
            started >= due,
            "run started at {started} before its due instant {due}"
        );
    }
    // Ticks of an interval job lie on one grid of the interval (the
    // source's phase), each answered once.
    let dues: Vec<i64> = scheduled.iter().map(|s| s.1).collect();
    assert!(
        dues.windows(2)
            .all(|w| w[1] > w[0] && (w[1] - w[0]) % 2_000_000 == 0),
        "{dues:?}"
    );
    sim.shutdown().await;
}

/// Runs of `tenant/source` that started before `before_us`.
async fn runs_started_before(db: &Db, source: &str, before_us: i64) -> i64 {
    let Some(mut conn) = db.connect().await else {
        return -1;
    };
    sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(db.sql(
        "SELECT count(*) FROM runs WHERE tenant = 'acme' AND source = ?1 AND started_at < ?2",
    )))
    .bind(source)
    .bind(before_us)
    .fetch_one(&mut conn)
    .await
    .map_or(-1, |(n,)| n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_prunes_the_run_history_at_start() {
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 10);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", DEMARCHE)]);
    setup.edit_config("[server]", "runs_retention = \"30d\"\n\n[server]");
    setup.sync_ok(&[]).await;
    // 150 runs of 40 days ago, and 3 of a source that no longer syncs.
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64;
    let old_us = now_us - 40 * 86_400_000_000;
    let db = setup.db();
    let mut conn = db.connect_rw().await.expect("open db");
    for (source, n) in [("permits", 150), ("gone", 3)] {
        for i in 0..n {
            sqlx::query(sqlx::AssertSqlSafe(db.sql(
                "INSERT INTO runs (run_id, tenant, source, kind, started_at, finished_at, outcome) \
                 VALUES (?1, 'acme', ?2, 'demarches', ?3, ?3, 'failed')",
            )))
            .bind(format!("{source}-{i}"))
            .bind(source)
            .bind(old_us + i)
            .execute(&mut conn)
            .await
            .expect("insert");
        }
    }
    drop(conn);
    let cutoff = now_us - 30 * 86_400_000_000;

    let mut child = setup.spawn(&["run"]);
    // The newest 100 runs of a source stay (the old ones were written
    // last), 99 of them if the daemon's first run started before the
    // prune; the sync's recent run, the last success, stays too.
    wait_until(Duration::from_secs(30), "the old runs pruned", || {
        let db = db.clone();
        async move { (0..=100).contains(&runs_started_before(&db, "permits", cutoff).await) }
    })
    .await;
    let left = runs_started_before(&db, "permits", cutoff).await;
    assert!((99..=100).contains(&left), "{left}");
    assert!(count_runs(&db, "acme", "permits", "success").await >= 1);
    assert_eq!(runs_started_before(&db, "gone", cutoff).await, 3);
    wait_until(Duration::from_secs(10), "the prune logged", || async {
        setup.spawned_stderr().contains("pruned the run history")
    })
    .await;
    signal(&child, "TERM");
    assert_eq!(child.wait().expect("wait").code(), Some(0));
}
