//! One run per source across processes (DESIGN.md §3b): `synchro sync`
//! beside the daemon, two `sync`s at once, a holder paused past its lease.
//! Before leases, two concurrent full calendar listings swept each other's
//! records and content completions were reported twice.

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::*;
use synchro_simulator::Fault;

const DEMARCHE: i64 = 4_242;
const CALENDAR: &str = "team@example.com";

/// The pid holding a source's lease now, straight from the database.
async fn lease_pid(db: &Db, tenant: &str, source: &str) -> Option<i64> {
    let mut conn = db.connect().await?;
    let now = chrono::Utc::now().timestamp_micros();
    sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(db.sql(
        "SELECT pid FROM leases WHERE tenant = ?1 AND source = ?2 \
         AND run_id IS NOT NULL AND expires_at > ?3",
    )))
    .bind(tenant)
    .bind(source)
    .bind(now)
    .fetch_optional(&mut conn)
    .await
    .ok()
    .flatten()
    .map(|(p,)| p)
}

/// Whether the lease row of a source says it lapsed (or is free).
async fn lease_lapsed(db: &Db, tenant: &str, source: &str) -> bool {
    let Some(mut conn) = db.connect().await else {
        return false;
    };
    let now = chrono::Utc::now().timestamp_micros();
    sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(db.sql(
        "SELECT count(*) FROM leases WHERE tenant = ?1 AND source = ?2 AND expires_at <= ?3",
    )))
    .bind(tenant)
    .bind(source)
    .bind(now)
    .fetch_one(&mut conn)
    .await
    .is_ok_and(|(n,)| n == 1)
}

/// A run as (source, started, finished, outcome, error).
type Run = (String, i64, i64, String, Option<String>);

/// Every run of every source, in start order.
async fn runs(db: &Db) -> Vec<Run> {
    let mut conn = db.connect().await.expect("open db");
    sqlx::query_as(
        "SELECT tenant || '/' || source, started_at, coalesce(finished_at, -1), outcome, error \
         FROM runs ORDER BY started_at",
    )
    .fetch_all(&mut conn)
    .await
    .expect("runs")
}

/// No two runs of one source overlapped in time, and none was cut off
/// (but the last, which the daemon's shutdown may cancel).
async fn assert_runs_never_overlapped(db: &Db) {
    let mut by_source: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    for run in runs(db).await {
        by_source.entry(run.0.clone()).or_default().push(run);
    }
    for (source, runs) in by_source {
        for (i, (_, start, end, outcome, error)) in runs.iter().enumerate() {
            let shutdown = i + 1 == runs.len() && outcome == "cancelled";
            assert!(
                outcome == "success" || shutdown,
                "{source}: a run ended {outcome}: {error:?}"
            );
            assert!(end >= start, "{source}: a run never finished");
        }
        for pair in runs.windows(2) {
            assert!(
                pair[1].1 >= pair[0].2,
                "{source}: a run started at {} while the one started at {} ran until {}",
                pair[1].1,
                pair[0].1,
                pair[0].2
            );
        }
    }
}

/// Waits for a spawned command to exit, with a deadline; its exit code.
async fn exit_code(child: &mut Child, within: Duration, what: &str) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_syncs_and_a_daemon_on_one_database_lose_nothing_and_report_once() {
    let sim = simulator().await;
    let cal = sim.calendar();
    let events = cal.seed(CALENDAR, 240);
    let content = sim.content();
    let ids = content.seed(150, 10);
    let ds_numbers = sim.ds().seed(DEMARCHE, 200);
    // Slow pages: every run lasts long enough for the others to collide
    // with it.
    let slow = Fault::Slow(Duration::from_millis(8));
    cal.inject(slow.clone(), 1_000_000);
    content.inject(slow.clone(), 1_000_000);
    sim.ds().inject(slow, 1_000_000);
    let mut ds = DsSource::new("acme", "permits", DEMARCHE);
    ds.page_size = 20;
    let mut calendar = CalSource::new("acme", "team", CALENDAR);
    calendar.max_results = 20;
    let setup = Setup::build_all(
        &sim,
        &[ds],
        &[calendar],
        &[ContentSource::new("acme", "translations")],
    );
    let mut daemon = setup.spawn(&["run"]);

    for (round, hidden) in ds_numbers.iter().take(3).enumerate() {
        // Upstream moves between rounds; every calendar sync token expires,
        // so each round starts with full listings that end in a sweep: the
        // runs that used to remove each other's events.
        for (i, id) in events.iter().enumerate().skip(round * 7).take(5) {
            if i % 2 == 0 {
                cal.update(CALENDAR, id);
            } else {
                cal.cancel(CALENDAR, id);
            }
        }
        for _ in 0..10 {
            cal.create(CALENDAR);
            sim.ds().create(DEMARCHE);
        }
        sim.ds().hide(*hidden);
        cal.expire_sync_tokens(CALENDAR);
        for id in ids.iter().skip(round * 20).take(20) {
            content.set_state(*id, "completed");
        }
        let mut syncs: Vec<Child> = (0..2).map(|_| setup.spawn(&["sync"])).collect();
        for (i, child) in syncs.iter_mut().enumerate() {
            let code = exit_code(child, Duration::from_secs(120), "a sync").await;
            assert_eq!(
                code,
                Some(0),
                "round {round}, sync {i}:\n{}",
                setup.spawned_stderr()
            );
        }
        // Both syncs ran after the changes (one waited for the other, or
        // for the daemon): the copy is current.
        assert_calendar_matches(&setup, &sim, "acme", "team", CALENDAR).await;
        assert_content_matches(&setup, &sim, "acme", "translations", &[]).await;
        assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;
    }

    // Every completion is reported: by a sync before it exited, or by the
    // daemon's reporter; never twice.
    let expected = completions(&content);
    assert!(expected.len() >= 60, "{} completions", expected.len());
    let all_reported = || {
        let got = successes(&content);
        expected.iter().all(|c| got.binary_search(c).is_ok())
    };
    wait_until(Duration::from_secs(60), "every completion reported", || {
        let done = all_reported();
        async move { done }
    })
    .await;
    signal(&daemon, "TERM");
    assert_eq!(
        exit_code(&mut daemon, Duration::from_secs(30), "the daemon").await,
        Some(0)
    );
    // (A request completed again later is a new completion, with its own
    // date: reported once more, as itself.)
    let got = successes(&content);
    let mut once = got.clone();
    once.dedup();
    assert_eq!(got, once, "a completion was reported twice");
    assert_runs_never_overlapped(&setup.db()).await;
    assert_integrity(&setup.db()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_source_makes_sync_wait_or_exit_75_with_no_wait() {
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 400);
    // 20 pages of 150 ms: the first sync holds the source for ~3 s.
    sim.ds()
        .inject(Fault::Slow(Duration::from_millis(150)), 1_000_000);
    let mut ds = DsSource::new("acme", "permits", DEMARCHE);
    ds.page_size = 20;
    let setup = Setup::new(&sim, &[ds]);
    let db = setup.db();
    let mut first = setup.spawn(&["sync"]);
    let pid = i64::from(first.id());
    wait_until(Duration::from_secs(30), "the first sync's lease", || {
        let db = db.clone();
        async move { lease_pid(&db, "acme", "permits").await == Some(pid) }
    })
    .await;

    // `status` names the holder while it runs.
    let status = setup.run(&["status", "--json"]).await;
    assert!(status.status.success(), "{}", stderr(&status));
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(rows[0]["lease_holder"]["pid"], pid, "{rows}");
    let table = setup.run(&["status"]).await;
    assert!(
        String::from_utf8_lossy(&table.stdout).contains(&format!("pid {pid}")),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );

    let busy = setup.run(&["sync", "--no-wait"]).await;
    assert_eq!(busy.status.code(), Some(75), "{}", stderr(&busy));
    let msg = stderr(&busy);
    assert!(
        msg.contains(&format!("acme/permits is being synced by pid {pid} on ")),
        "{msg}"
    );
    let short = setup.run(&["sync", "--wait", "200ms"]).await;
    assert_eq!(short.status.code(), Some(75), "{}", stderr(&short));

    // Without --no-wait: waits for the first run, then syncs.
    let waited = setup.run(&["sync"]).await;
    assert_eq!(waited.status.code(), Some(0), "{}", stderr(&waited));
    assert_eq!(
        exit_code(&mut first, Duration::from_secs(60), "the first sync").await,
        Some(0)
    );
    assert_eq!(count_runs(&db, "acme", "permits", "success").await, 2);
    assert_runs_never_overlapped(&db).await;
    assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_paused_past_its_lease_never_writes_after_the_takeover() {
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 600);
    sim.ds()
        .inject(Fault::Slow(Duration::from_millis(100)), 1_000_000);
    let mut ds = DsSource::new("acme", "permits", DEMARCHE);
    ds.page_size = 20;
    let setup = Setup::new(&sim, &[ds]);
    setup.edit_config("[scheduler]\n", "[scheduler]\nlease_ttl = \"2s\"\n");
    let db = setup.db();

    let mut stale = setup.spawn(&["sync"]);
    let pid = i64::from(stale.id());
    wait_until(Duration::from_secs(30), "a page of the first sync", || {
        let db = db.clone();
        async move { count_pages_committed(&db).await >= 2 }
    })
    .await;
    assert_eq!(lease_pid(&db, "acme", "permits").await, Some(pid));
    signal(&stale, "STOP");
    wait_until(
        Duration::from_secs(30),
        "the paused holder's lease to lapse",
        || {
            let db = db.clone();
            async move { lease_lapsed(&db, "acme", "permits").await }
        },
    )
    .await;

    // Another sync takes the lapsed lease over (the holder's pid is alive:
    // only the expiry frees it) and syncs everything.
    let taker = setup.run(&["sync", "--wait", "30s"]).await;
    assert_eq!(taker.status.code(), Some(0), "{}", stderr(&taker));
    let records = setup.export(true).await;
    let progress = progress_state(&db, "acme", "permits").await;
    assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;

    // The paused holder wakes with pages in flight: its next commit is
    // fenced off, it stops, and the copy is exactly what the taker left.
    signal(&stale, "CONT");
    assert_eq!(
        exit_code(&mut stale, Duration::from_secs(60), "the stale sync").await,
        Some(1)
    );
    let said = setup.spawned_stderr();
    assert!(said.contains("lost the lease of acme/permits"), "{said}");
    assert_eq!(setup.export(true).await, records, "the stale holder wrote");
    assert_eq!(
        progress_state(&db, "acme", "permits").await,
        progress,
        "the stale holder moved the progress"
    );
    let failed = runs(&db)
        .await
        .into_iter()
        .filter(|r| r.3 == "failed")
        .count();
    assert_eq!(failed, 1, "the stale run is recorded as failed");
}

/// Pages committed so far by the running sync (the progress row moves with
/// each commit; its cursor is what we count by).
async fn count_pages_committed(db: &Db) -> usize {
    let Some(mut conn) = db.connect().await else {
        return 0;
    };
    sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM records")
        .fetch_one(&mut conn)
        .await
        .map_or(0, |(n,)| n as usize / 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_a_run_or_its_back_off_is_cancelled_not_failed() {
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 200);
    let mut ds = DsSource::new("acme", "permits", DEMARCHE);
    ds.page_size = 20;
    let setup = Setup::new(&sim, &[ds]);
    // A server wait longer than max_backoff fails the run at once; this
    // one is waited out.
    setup.edit_config("max_backoff = \"2s\"", "max_backoff = \"60s\"");
    let db = setup.db();

    // `sync`, Ctrl-C while it waits out a 30 s Retry-After after a page.
    sim.ds().inject(Fault::Pass, 2);
    sim.ds().inject(
        Fault::Http503 {
            retry_after_secs: Some(30),
        },
        1,
    );
    let mut sync = setup.spawn(&["sync"]);
    wait_until(Duration::from_secs(30), "the 503", || {
        let n = sim.ds().requests();
        async move { n >= 3 }
    })
    .await;
    signal(&sync, "INT");
    assert_eq!(
        exit_code(&mut sync, Duration::from_secs(20), "the interrupted sync").await,
        Some(130)
    );
    assert_eq!(count_runs(&db, "acme", "permits", "cancelled").await, 1);
    assert_eq!(count_runs(&db, "acme", "permits", "failed").await, 0);

    // The daemon, SIGTERM during slow pages of a run.
    sim.ds().clear_faults();
    setup.run(&["reset", "acme/permits"]).await;
    sim.ds()
        .inject(Fault::Slow(Duration::from_millis(200)), 1_000_000);
    let before = sim.ds().requests();
    let mut daemon = setup.spawn(&["run"]);
    wait_until(Duration::from_secs(30), "the daemon's run", || {
        let n = sim.ds().requests();
        async move { n >= before + 2 }
    })
    .await;
    signal(&daemon, "TERM");
    assert_eq!(
        exit_code(&mut daemon, Duration::from_secs(30), "the daemon").await,
        Some(0)
    );
    assert_eq!(count_runs(&db, "acme", "permits", "cancelled").await, 2);
    assert_eq!(count_runs(&db, "acme", "permits", "failed").await, 0);
    let said = setup.spawned_stderr();
    assert!(!said.contains(" ERROR "), "{said}");
    assert!(said.contains(" WARN "), "{said}");
}

/// A run asked for *now* (the start-up run, a push notification) that meets
/// a source held by another process runs once that process is done, rather
/// than waiting for the next tick (here an hour away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_asked_for_now_on_a_held_source_runs_once_the_holder_is_done() {
    if sqlite_only(
        "on a shared schedule the start-up run is the first tick: one that finds the source \
         busy is skipped like any tick (tests/integration/replicas.rs covers busy ticks)",
    ) {
        return;
    }
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 200);
    sim.ds()
        .inject(Fault::Slow(Duration::from_millis(100)), 1_000_000);
    let mut ds = DsSource::new("acme", "permits", DEMARCHE);
    ds.page_size = 20;
    let setup = Setup::new(&sim, &[ds]);
    let db = setup.db();
    let mut sync = setup.spawn(&["sync"]);
    let pid = i64::from(sync.id());
    wait_until(Duration::from_secs(30), "the sync's lease", || {
        let db = db.clone();
        async move { lease_pid(&db, "acme", "permits").await == Some(pid) }
    })
    .await;
    let mut daemon = setup.spawn(&["run"]);
    assert_eq!(
        exit_code(&mut sync, Duration::from_secs(60), "the sync").await,
        Some(0)
    );
    wait_until(Duration::from_secs(30), "the daemon's own run", || {
        let db = db.clone();
        async move { count_runs(&db, "acme", "permits", "success").await >= 2 }
    })
    .await;
    assert!(setup.spawned_stderr().contains("tick skipped"));
    signal(&daemon, "TERM");
    assert_eq!(
        exit_code(&mut daemon, Duration::from_secs(30), "the daemon").await,
        Some(0)
    );
    assert_runs_never_overlapped(&db).await;
}
