//! Replicas: several `synchro run` daemons with the same config on one
//! Postgres database share the sources through their leases, with no
//! coordinator. Each test ends with every source equal to its simulated
//! upstream and no two committed runs of a source overlapping in time.
//! They run on the Postgres server `SYNCHRO_TEST_POSTGRES` names, and say
//! they skipped without it.

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use synchro_simulator::{Fault, Simulator};

use crate::common::*;

const PERMITS: i64 = 11;
const GRANTS: i64 = 12;
const CALENDAR: &str = "team@example.com";

/// The test's database: the suite's when it runs on Postgres, else a fresh
/// one the config is pointed at; `None` (skipped) without a server.
async fn postgres(setup: &Setup, test: &str) -> Option<(Option<PgDb>, Db)> {
    if let Some(pg) = &setup.pg {
        return Some((None, Db::Postgres(pg.url.clone())));
    }
    let pg = PgDb::create(test).await?;
    setup.edit_config(&setup.database_url(), &pg.url);
    let db = Db::Postgres(pg.url.clone());
    Some((Some(pg), db))
}

/// Three démarche sources, two calendars and a Contentor account, every 2 s,
/// with slow pages so that runs last long enough to collide.
fn busy_upstreams(sim: &Simulator) -> Setup {
    sim.ds().seed(PERMITS, 160);
    sim.ds().seed(GRANTS, 120);
    sim.calendar().seed(CALENDAR, 150);
    sim.calendar().seed("other@example.com", 60);
    sim.content().seed(80, 10);
    let slow = Fault::Slow(Duration::from_millis(5));
    sim.ds().inject(slow.clone(), 1_000_000);
    sim.calendar().inject(slow.clone(), 1_000_000);
    sim.content().inject(slow, 1_000_000);
    let mut permits = DsSource::new("acme", "permits", PERMITS);
    permits.page_size = 20;
    let mut grants = DsSource::new("globex", "grants", GRANTS);
    grants.page_size = 20;
    let mut team = CalSource::new("acme", "team", CALENDAR);
    team.max_results = 25;
    let setup = Setup::build_all(
        sim,
        &[permits, grants],
        &[team, CalSource::new("globex", "other", "other@example.com")],
        &[ContentSource::new("acme", "translations")],
    );
    setup.edit_config("jitter = \"0s\"", "jitter = \"1s\"\nlease_ttl = \"4s\"");
    let cfg = std::fs::read_to_string(&setup.config).expect("config");
    std::fs::write(
        &setup.config,
        cfg.replace("schedule = \"every 1h\"", "schedule = \"every 2s\""),
    )
    .expect("config");
    setup
}

/// `tenant/source` of every configured source of [`busy_upstreams`].
const SOURCES: [(&str, &str); 5] = [
    ("acme", "permits"),
    ("globex", "grants"),
    ("acme", "team"),
    ("globex", "other"),
    ("acme", "translations"),
];

fn replica_log(setup: &Setup, n: usize) -> String {
    std::fs::read_to_string(setup.dir.path().join(format!("replica-{n}.log"))).unwrap_or_default()
}

/// Waits until every source has a successful run that started after
/// `since_us`: the copy then reflects every upstream change made before.
async fn wait_for_a_run_of_each_since(db: &Db, since_us: i64, what: &str) {
    wait_for_runs_since(db, &SOURCES, since_us, Duration::from_secs(90), what).await;
}

/// Every source equals its upstream.
async fn assert_all_match(setup: &Setup, sim: &Simulator) {
    assert_export_matches(setup, sim, "acme", "permits", PERMITS).await;
    assert_export_matches(setup, sim, "globex", "grants", GRANTS).await;
    assert_calendar_matches(setup, sim, "acme", "team", CALENDAR).await;
    assert_calendar_matches(setup, sim, "globex", "other", "other@example.com").await;
    assert_content_matches(setup, sim, "acme", "translations", &[]).await;
}

/// Successful runs of a source never overlap in time: no source was ever
/// synced by two replicas at once (a run fenced off or killed may overlap
/// its taker, but it committed nothing after the takeover).
async fn assert_successful_runs_never_overlapped(db: &Db) {
    let mut conn = db.connect().await.expect("open db");
    let runs: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT tenant || '/' || source, started_at, finished_at FROM runs \
         WHERE outcome = 'success' ORDER BY started_at",
    )
    .fetch_all(&mut conn)
    .await
    .expect("runs");
    let mut by_source: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for (source, start, end) in runs {
        by_source.entry(source).or_default().push((start, end));
    }
    for (source, runs) in by_source {
        for pair in runs.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "{source}: a run started at {} while another ran from {} to {}",
                pair[1].0,
                pair[0].0,
                pair[0].1
            );
        }
    }
}

/// The simulator never answered two listing requests of one source at
/// once: no source was ever listed by two replicas at the same time (the
/// upstream's side of [`assert_successful_runs_never_overlapped`], which
/// also covers runs that were fenced off or killed).
fn assert_no_concurrent_listings(sim: &Simulator) {
    let counted = sim.traffic().concurrent_listings();
    assert!(!counted.is_empty(), "no listing was counted");
    let overlapped: Vec<_> = counted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        overlapped.is_empty(),
        "sources listed by two runs at once: {overlapped:?}"
    );
}

/// The pid that holds `tenant/source`'s lease now, if any.
async fn lease_pid(db: &Db, tenant: &str, source: &str) -> Option<i64> {
    let mut conn = db.connect().await?;
    sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(db.sql(
        "SELECT pid FROM leases WHERE tenant = ?1 AND source = ?2 \
         AND run_id IS NOT NULL AND expires_at > synchro_now_us()",
    )))
    .bind(tenant)
    .bind(source)
    .fetch_optional(&mut conn)
    .await
    .ok()
    .flatten()
    .map(|(p,)| p)
}

/// Asks every replica to stop, and checks each exits 0.
async fn stop_all(replicas: Vec<Child>) {
    for child in &replicas {
        signal(child, "TERM");
    }
    for child in replicas {
        assert_exits_0(child).await;
    }
}

/// Moves every upstream: new, changed and deleted objects of each kind.
async fn mutate(sim: &Simulator, round: usize) {
    for _ in 0..5 {
        sim.ds().create(PERMITS);
        sim.ds().create(GRANTS);
        sim.calendar().create(CALENDAR);
    }
    let dossiers = sim.ds().snapshot(PERMITS).await;
    if let Some(n) = dossiers.get(round * 7).and_then(|d| d["number"].as_i64()) {
        sim.ds().hide(n);
    }
    sim.calendar().create("other@example.com");
    let requests = sim.content().seed(3, 3);
    for id in requests {
        sim.content().set_state(id, "completed");
    }
}

/// `(pid, live|gone)` of every daemon `synchro status --replicas` lists.
async fn daemons(setup: &Setup) -> Vec<(String, String)> {
    let out = setup.run(&["status", "--replicas"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (
                cols.get(1).unwrap_or(&"").to_string(),
                cols.last().unwrap_or(&"").to_string(),
            )
        })
        .collect()
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_under_load_share_the_sources_and_lose_nothing() {
    let sim = simulator().await;
    let setup = busy_upstreams(&sim);
    let Some((_pg, db)) = postgres(&setup, "three_replicas_under_load").await else {
        return;
    };
    let replicas: Vec<Child> = (0..3).map(|n| spawn_replica(&setup, n, None)).collect();
    for round in 0..3 {
        mutate(&sim, round).await;
        let mark = now_us();
        wait_for_a_run_of_each_since(&db, mark, &format!("round {round} synced")).await;
    }
    // The work spreads: whichever replica polls first after a tick is due
    // claims it, and the polls are randomised, so each replica soon ran
    // something.
    wait_until(
        Duration::from_secs(60),
        "every replica ran a sync",
        || async { (0..3).all(|n| replica_log(&setup, n).contains("sync run succeeded")) },
    )
    .await;
    // `status` lists the three daemons, live, and sums them up.
    let listed = daemons(&setup).await;
    for child in &replicas {
        let pid = child.id().to_string();
        assert!(
            listed.iter().any(|(p, state)| *p == pid && state == "live"),
            "replica pid {pid} not listed live: {listed:?}"
        );
    }
    let out = setup.run(&["status"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("daemons: 3 live"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stop_all(replicas).await;
    assert!(
        daemons(&setup).await.is_empty(),
        "a daemon that stopped is still listed"
    );
    assert_all_match(&setup, &sim).await;
    assert_successful_runs_never_overlapped(&db).await;
    assert_eq!(
        db.count("SELECT count(*) FROM runs WHERE outcome = 'failed'", &[])
            .await,
        0,
        "healthy replicas fail no run"
    );
    assert_no_concurrent_listings(&sim);
}

/// Per-host budgets are the cluster's: three replicas syncing at once
/// against one host send no more requests a second, together, than one
/// daemon may (each keeps to a third, from its heartbeat's live count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_keep_to_one_per_host_budget_together() {
    const RATE: u64 = 20;
    let sim = simulator().await;
    let setup = busy_upstreams(&sim);
    setup.edit_config(
        "per_host_requests_per_second = 1000",
        &format!("per_host_requests_per_second = {RATE}"),
    );
    setup.edit_config(
        "lease_ttl = \"4s\"",
        "lease_ttl = \"4s\"\nmax_concurrent_syncs = 1",
    );
    let Some((_pg, db)) = postgres(&setup, "three_replicas_keep_to_one_budget").await else {
        return;
    };
    let replicas: Vec<Child> = (0..3).map(|n| spawn_replica(&setup, n, None)).collect();
    wait_until(
        Duration::from_secs(60),
        "each replica sharing the budget three ways",
        || async { (0..3).all(|n| replica_log(&setup, n).contains("shared among 3 live daemons")) },
    )
    .await;
    // Long listings on three sources at once, one per replica (each syncs
    // one source at a time): unshared, the host would see three budgets.
    sim.traffic().reset_maxima();
    sim.ds().seed(PERMITS, 400);
    sim.ds().seed(GRANTS, 400);
    sim.calendar().seed(CALENDAR, 400);
    let mark = now_us();
    wait_for_a_run_of_each_since(&db, mark, "the new objects synced").await;
    let seen = sim.max_requests_per_second();
    stop_all(replicas).await;
    // Each replica's limiter lets at most one request more than its rate
    // into a window: three of them, one more each.
    assert!(
        seen <= RATE + 3,
        "the host saw {seen} requests in one second (budget {RATE}/s for the cluster)"
    );
    assert!(
        seen >= RATE / 2,
        "the load never approached the budget: {seen}/s"
    );
    assert_all_match(&setup, &sim).await;
    assert_no_concurrent_listings(&sim);
}

/// One démarche of 1,500 dossiers served 20 a page, 30 ms a page: a
/// listing lasts long enough to be interrupted; every 2 s, `lease_ttl_s`.
fn one_long_listing(sim: &Simulator, lease_ttl_s: u64) -> Setup {
    sim.ds().seed(PERMITS, 1_500);
    sim.ds()
        .inject(Fault::Slow(Duration::from_millis(30)), 1_000_000);
    let mut permits = DsSource::new("acme", "permits", PERMITS);
    permits.page_size = 20;
    let setup = Setup::new(sim, &[permits]);
    setup.edit_config(
        "jitter = \"0s\"",
        &format!("jitter = \"0s\"\nlease_ttl = \"{lease_ttl_s}s\""),
    );
    setup.edit_config("schedule = \"every 1h\"", "schedule = \"every 2s\"");
    setup
}

/// A replica stopped (SIGTERM) mid-listing gives its tick back: the next
/// replica runs the source at once, not at its next tick an hour later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_mid_run_gives_its_tick_back_to_the_next() {
    let sim = simulator().await;
    let setup = one_long_listing(&sim, 10);
    setup.edit_config("schedule = \"every 2s\"", "schedule = \"every 1h\"");
    let Some((_pg, db)) = postgres(&setup, "a_replica_stopped_mid_run").await else {
        return;
    };
    let first = spawn_replica(&setup, 0, None);
    wait_until(
        Duration::from_secs(30),
        "the first replica mid-listing",
        || {
            let db = db.clone();
            async move {
                db.count("SELECT count(*) FROM records", &[]).await > 0
                    && lease_pid(&db, "acme", "permits").await.is_some()
            }
        },
    )
    .await;
    stop_all(vec![first]).await;
    let mark = now_us();
    let second = spawn_replica(&setup, 1, None);
    wait_until(
        Duration::from_secs(60),
        "the next replica's run of the given-back tick",
        || {
            let db = db.clone();
            async move { successes_since(&db, "acme", "permits", mark).await > 0 }
        },
    )
    .await;
    stop_all(vec![second]).await;
    assert_export_matches(&setup, &sim, "acme", "permits", PERMITS).await;
    assert_no_concurrent_listings(&sim);
}

/// Three replicas, once one of them is mid-listing: the replicas, the
/// holder's pid and its index.
async fn three_replicas_one_holding(setup: &Setup, db: &Db) -> (Vec<Child>, i64, usize) {
    let replicas: Vec<Child> = (0..3).map(|n| spawn_replica(setup, n, None)).collect();
    let pids: Vec<i64> = replicas.iter().map(|c| i64::from(c.id())).collect();
    wait_until(Duration::from_secs(30), "a replica mid-listing", || {
        let db = db.clone();
        async move {
            db.count("SELECT count(*) FROM records", &[]).await > 0
                && lease_pid(&db, "acme", "permits").await.is_some()
        }
    })
    .await;
    let holder = lease_pid(db, "acme", "permits").await.expect("a holder");
    let index = pids
        .iter()
        .position(|p| *p == holder)
        .expect("a replica holds the lease");
    (replicas, holder, index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_page_has_its_source_taken_over_within_a_lease_ttl() {
    let sim = simulator().await;
    let setup = one_long_listing(&sim, 3);
    let Some((_pg, db)) = postgres(&setup, "a_replica_killed_mid_page").await else {
        return;
    };
    let (mut replicas, holder, victim) = three_replicas_one_holding(&setup, &db).await;
    let mut killed = replicas.remove(victim);
    signal(&killed, "KILL");
    let _ = killed.wait();
    let killed_at = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "another replica takes over",
        || {
            let db = db.clone();
            async move {
                lease_pid(&db, "acme", "permits")
                    .await
                    .is_some_and(|p| p != holder)
            }
        },
    )
    .await;
    let takeover = killed_at.elapsed();
    eprintln!("takeover after kill -9: {takeover:?} (lease ttl 3s, schedule every 2s)");
    assert!(
        takeover <= Duration::from_secs(3 + 2 + 5),
        "takeover took {takeover:?}"
    );
    let mark = now_us();
    wait_until(
        Duration::from_secs(90),
        "a full run after the takeover",
        || {
            let db = db.clone();
            async move { successes_since(&db, "acme", "permits", mark).await > 0 }
        },
    )
    .await;
    // The killed daemon left its row: listed as gone once its heartbeats
    // are missed.
    let victim_pid = holder.to_string();
    wait_until(
        Duration::from_secs(40),
        "the killed replica listed as gone",
        || {
            let victim_pid = victim_pid.clone();
            let setup = &setup;
            async move {
                daemons(setup)
                    .await
                    .iter()
                    .any(|(p, state)| *p == victim_pid && state == "gone")
            }
        },
    )
    .await;
    stop_all(replicas).await;
    assert_export_matches(&setup, &sim, "acme", "permits", PERMITS).await;
    assert_successful_runs_never_overlapped(&db).await;
    assert_no_concurrent_listings(&sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_whose_database_sessions_are_terminated_recover_and_lose_nothing() {
    let sim = simulator().await;
    let setup = busy_upstreams(&sim);
    let Some((pg, db)) = postgres(&setup, "replicas_whose_sessions_are_terminated").await else {
        return;
    };
    let url = match (&pg, &setup.pg) {
        (Some(pg), _) | (None, Some(pg)) => pg.url.clone(),
        (None, None) => unreachable!("a Postgres database"),
    };
    let mut replicas: Vec<Child> = (0..3).map(|n| spawn_replica(&setup, n, None)).collect();
    wait_for_a_run_of_each_since(&db, 0, "first syncs").await;
    mutate(&sim, 0).await;
    // Every session of every replica, twice, while they sync.
    for _ in 0..2 {
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("connect");
        let ended: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'synchro' \
             AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut admin)
        .await
        .expect("terminate");
        assert!(!ended.is_empty(), "no synchro session to terminate");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mark = now_us();
    wait_for_a_run_of_each_since(&db, mark, "syncs after the sessions were ended").await;
    for child in &mut replicas {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "a replica died when its sessions were ended"
        );
    }
    stop_all(replicas).await;
    assert_all_match(&setup, &sim).await;
    assert_successful_runs_never_overlapped(&db).await;
    assert_no_concurrent_listings(&sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_and_scaling_three_to_one_to_three_lose_nothing() {
    let sim = simulator().await;
    let setup = busy_upstreams(&sim);
    let Some((_pg, db)) = postgres(&setup, "a_rolling_restart_and_scaling").await else {
        return;
    };
    let mut replicas: Vec<Child> = (0..3).map(|n| spawn_replica(&setup, n, None)).collect();
    wait_for_a_run_of_each_since(&db, 0, "first syncs").await;

    // Rolling restart: one replica at a time, upstream moving meanwhile.
    for n in 0..3 {
        mutate(&sim, n).await;
        let old = replicas.remove(0);
        stop_all(vec![old]).await;
        replicas.push(spawn_replica(&setup, 3 + n, None));
        let mark = now_us();
        wait_for_a_run_of_each_since(&db, mark, &format!("syncs after restarting replica {n}"))
            .await;
    }
    assert_all_match(&setup, &sim).await;

    // 3 → 1: the last replica syncs every source alone.
    let survivor = replicas.pop().expect("a replica");
    stop_all(replicas).await;
    mutate(&sim, 3).await;
    let mark = now_us();
    wait_for_a_run_of_each_since(&db, mark, "one replica syncing everything").await;
    assert_all_match(&setup, &sim).await;

    // 1 → 3: the new ones take their share.
    let mut replicas = vec![survivor];
    replicas.extend((6..8).map(|n| spawn_replica(&setup, n, None)));
    mutate(&sim, 4).await;
    let mark = now_us();
    wait_for_a_run_of_each_since(&db, mark, "three replicas again").await;
    wait_until(
        Duration::from_secs(60),
        "the new replicas to sync",
        || async { (6..8).all(|n| replica_log(&setup, n).contains("sync run succeeded")) },
    )
    .await;
    stop_all(replicas).await;
    assert_all_match(&setup, &sim).await;
    assert_successful_runs_never_overlapped(&db).await;
    assert_no_concurrent_listings(&sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_is_fenced_off_when_it_wakes_and_goes_on() {
    let sim = simulator().await;
    let setup = one_long_listing(&sim, 2);
    let Some((_pg, db)) = postgres(&setup, "a_replica_paused_past_its_lease").await else {
        return;
    };
    let (replicas, _, paused) = three_replicas_one_holding(&setup, &db).await;
    signal(&replicas[paused], "STOP");
    let mark = now_us();
    wait_until(
        Duration::from_secs(120),
        "another replica's full run",
        || {
            let db = db.clone();
            async move { successes_since(&db, "acme", "permits", mark).await > 0 }
        },
    )
    .await;
    let before = setup.export(true).await;
    signal(&replicas[paused], "CONT");
    wait_until(
        Duration::from_secs(30),
        "the woken replica fenced off",
        || async { replica_log(&setup, paused).contains("lost the lease of acme/permits") },
    )
    .await;
    // It wrote nothing after the takeover, and it is still serving.
    let mut replicas = replicas;
    assert!(
        replicas[paused].try_wait().expect("try_wait").is_none(),
        "the woken replica exited"
    );
    assert_eq!(setup.export(true).await, before, "the woken replica wrote");
    stop_all(replicas).await;
    assert_export_matches(&setup, &sim, "acme", "permits", PERMITS).await;
    assert_successful_runs_never_overlapped(&db).await;
    assert_no_concurrent_listings(&sim);
}
