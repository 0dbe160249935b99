//! SIGHUP: the daemon re-reads its config; only what changed is touched.

use std::time::Duration;

use crate::common::*;
use synchro_simulator::Fault;

async fn runs(setup: &Setup, tenant: &str, source: &str, outcome: &str) -> i64 {
    count_runs(&setup.db(), tenant, source, outcome).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_config_source_by_source_and_rejects_an_invalid_one() {
    let sim = simulator().await;
    sim.ds().seed(11, 120);
    sim.ds().seed(12, 90);
    sim.calendar().seed("slow@example.com", 1_500);
    let mut slow = CalSource::new("acme", "agenda", "slow@example.com");
    slow.max_results = 25;
    let setup = Setup::build_all(
        &sim,
        &[
            DsSource::new("acme", "permits", 11),
            DsSource::new("acme", "steady", 12),
        ],
        &[slow],
        &[],
    );
    let port = setup.use_free_port();
    sim.calendar()
        .inject(Fault::Slow(Duration::from_millis(40)), 100_000);
    let mut child = setup.spawn(&["run"]);
    wait_until(
        Duration::from_secs(30),
        "first syncs of the démarches",
        || async {
            runs(&setup, "acme", "permits", "success").await == 1
                && runs(&setup, "acme", "steady", "success").await == 1
        },
    )
    .await;
    let db = setup.db();
    let agenda_pages = || async {
        let Some(mut c) = db.connect().await else {
            return 0;
        };
        sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM records WHERE source = 'agenda'")
            .fetch_one(&mut c)
            .await
            .map_or(0, |(n,)| n)
    };
    wait_until(
        Duration::from_secs(30),
        "the slow calendar mid-sync",
        || async { agenda_pages().await >= 50 },
    )
    .await;

    // New config: `agenda` removed (mid-sync), `permits` changed (page
    // size), `steady` untouched, `grants` added.
    let mut changed = DsSource::new("acme", "permits", 11);
    changed.page_size = 40;
    let next = Setup::build_all(
        &sim,
        &[
            changed,
            DsSource::new("acme", "steady", 12),
            DsSource::new("globex", "grants", 12),
        ],
        &[],
        &[],
    );
    let text = std::fs::read_to_string(&next.config)
        .expect("config")
        .replace(&next.database_url(), &setup.database_url())
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&setup.config, text).expect("write");
    signal(&child, "HUP");

    wait_until(
        Duration::from_secs(30),
        "the added and the changed source to sync",
        || async {
            runs(&setup, "globex", "grants", "success").await == 1
                && runs(&setup, "acme", "permits", "success").await == 2
        },
    )
    .await;
    // The removed source stopped after its current page; nothing of it was lost.
    wait_until(
        Duration::from_secs(10),
        "the removed source to stop",
        || async { runs(&setup, "acme", "agenda", "cancelled").await == 1 },
    )
    .await;
    let kept = agenda_pages().await;
    assert!(kept >= 50, "{kept}");
    assert_eq!(runs(&setup, "acme", "agenda", "running").await, 0);
    // The unchanged source was not disturbed (no extra run).
    assert_eq!(runs(&setup, "acme", "steady", "success").await, 1);
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);

    // An invalid file is rejected; the running set is untouched.
    std::fs::write(&setup.config, "[storage]\ncolour = \"blue\"\n").expect("write");
    let before = setup.spawned_stderr().len();
    signal(&child, "HUP");
    wait_until(
        Duration::from_secs(10),
        "the rejection in the log",
        || async { setup.spawned_stderr()[before..].contains("new configuration rejected") },
    )
    .await;
    assert!(setup.spawned_stderr()[before..].contains("storage.colour"));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the daemon keeps running"
    );
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    assert_eq!(runs(&setup, "globex", "grants", "success").await, 1);

    signal(&child, "TERM");
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    // After the stop, the sources of the last valid config are still the ones stored.
    assert_eq!(runs(&setup, "acme", "steady", "success").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changing_what_needs_a_restart_is_rejected_and_the_running_config_kept() {
    let sim = simulator().await;
    sim.ds().seed(21, 40);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", 21)]);
    let port = setup.use_free_port();
    let mut child = setup.spawn(&["run"]);
    wait_until(Duration::from_secs(30), "the first sync", || async {
        runs(&setup, "acme", "permits", "success").await == 1
    })
    .await;
    // The running config plus a source, on `db` and `listen_port`, with
    // `storage` extra keys.
    let next = Setup::new(
        &sim,
        &[
            DsSource::new("acme", "permits", 21),
            DsSource::new("acme", "grants", 21),
        ],
    );
    let config_with = |database: &str, listen_port: u16, storage: &str| {
        std::fs::read_to_string(&next.config)
            .expect("config")
            .replace(&next.database_url(), database)
            .replace("127.0.0.1:0", &format!("127.0.0.1:{listen_port}"))
            .replace("[server]", &format!("{storage}\n[server]"))
    };
    let hup_and_wait_for = |text: String, wanted: &'static str| {
        std::fs::write(&setup.config, text).expect("write");
        let before = setup.spawned_stderr().len();
        signal(&child, "HUP");
        let setup = &setup;
        async move {
            wait_until(Duration::from_secs(10), wanted, || async {
                setup.spawned_stderr()[before..].contains(wanted)
            })
            .await;
            setup.spawned_stderr()[before..].to_string()
        }
    };

    // Another database: rejected as a whole, nothing restarted, the new
    // file never created.
    let moved = setup.dir.path().join("moved.db");
    let moved_url = match &setup.pg {
        Some(_) => format!("{}_moved", setup.database_url()),
        None => format!("sqlite://{}", moved.display()),
    };
    let log = hup_and_wait_for(
        config_with(&moved_url, port, ""),
        "SIGHUP: new configuration rejected: storage.database changed: \
         restart synchro to use the new database; keeping the running configuration",
    )
    .await;
    assert!(!log.contains("restarting every source"), "{log}");
    assert!(!moved.exists(), "the new database was opened");

    // Another listen address: rejected too; the old one keeps serving.
    let other_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    hup_and_wait_for(
        config_with(&setup.database_url(), other_port, ""),
        "server.listen changed: restart synchro to listen on the new address; \
         keeping the running configuration",
    )
    .await;
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    assert_eq!(runs(&setup, "acme", "grants", "success").await, 0);

    // Same database and address, a shorter run history and the added
    // source: applied source by source, `permits` left alone.
    let log = hup_and_wait_for(
        config_with(&setup.database_url(), port, "runs_retention = \"7d\"\n"),
        "SIGHUP: configuration reloaded",
    )
    .await;
    assert!(!log.contains("restarting every source"), "{log}");
    wait_until(
        Duration::from_secs(30),
        "the added source to sync",
        || async { runs(&setup, "acme", "grants", "success").await == 1 },
    )
    .await;
    assert_eq!(runs(&setup, "acme", "permits", "success").await, 1);

    signal(&child, "TERM");
    assert_eq!(child.wait().expect("wait").code(), Some(0));
}
