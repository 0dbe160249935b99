//! Hostile and broken input: upstream bodies that are huge, truncated,
//! of the wrong shape, deeply nested or not JSON, a slow-loris upstream, a
//! full disk and a locked database. Each gets a clear error naming the
//! source, the other sources keep syncing, and nothing stored is lost.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use axum::body::Body;
use axum::response::Response;

/// What the hostile upstream answers to every request.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// An endless body (the client must stop at its limit).
    Huge,
    /// JSON cut in the middle.
    Truncated,
    /// Valid JSON of the wrong shape (`nodes` is a string).
    WrongTypes,
    /// 100,000 nested arrays.
    DeeplyNested,
    /// An HTML error page with status 200.
    NotJson,
    /// Headers at once, then one byte every 300 ms, forever.
    SlowLoris,
}

fn respond(h: Hostile) -> Response {
    let json = |body: Body| {
        Response::builder()
            .header("content-type", "application/json")
            .body(body)
            .unwrap_or_default()
    };
    match h {
        Hostile::Huge => {
            let chunk = bytes::Bytes::from(vec![b' '; 1 << 20]);
            let stream =
                futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            json(Body::from_stream(stream))
        }
        Hostile::Truncated => json(Body::from(
            r#"{"data":{"demarche":{"dossiers":{"nodes":[{"number":1,"#,
        )),
        Hostile::WrongTypes => json(Body::from(
            r#"{"data":{"demarche":{"number":1,"dossiers":{"pageInfo":{"hasNextPage":"yes","endCursor":7},"nodes":"none"}}}}"#,
        )),
        Hostile::DeeplyNested => {
            let depth = 100_000;
            let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            json(Body::from(body))
        }
        Hostile::NotJson => Response::builder()
            .header("content-type", "text/html")
            .body(Body::from("<html><body><h1>Bad gateway</h1></body></html>"))
            .unwrap_or_default(),
        Hostile::SlowLoris => {
            let stream = futures::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b" ")), ()))
            });
            json(Body::from_stream(stream))
        }
    }
}

/// Serves `h` to every request on 127.0.0.1:0.
async fn hostile_upstream(h: Hostile) -> SocketAddr {
    let app = axum::Router::new().fallback(move || async move { respond(h) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_upstream_bodies_fail_only_their_source_and_lose_nothing() {
    let sim = simulator().await;
    sim.ds().seed(71, 150);
    sim.ds().seed(72, 60);
    let setup = Setup::new(
        &sim,
        &[
            DsSource::new("acme", "victim", 71),
            DsSource::new("acme", "healthy", 72),
        ],
    );
    setup.edit_config("timeout = \"5s\"", "timeout = \"2s\"");
    setup.edit_config("max_retries = 4", "max_retries = 1");
    setup.sync_ok(&[]).await;
    let stored = setup.export(true).await;
    assert_eq!(stored.len(), 210);

    let cases = [
        (Hostile::Huge, "larger than"),
        (Hostile::Truncated, "malformed JSON"),
        (Hostile::WrongTypes, "malformed"),
        (Hostile::DeeplyNested, "malformed"),
        (Hostile::NotJson, "malformed JSON"),
        (Hostile::SlowLoris, "timed out"),
    ];
    let good = sim.ds_endpoint();
    let mut current = good.clone();
    for (hostile, expected) in cases {
        let addr = hostile_upstream(hostile).await;
        let bad = format!("http://{addr}/api/v2/graphql");
        // Only the victim points at the hostile upstream.
        let cfg = std::fs::read_to_string(&setup.config).expect("config");
        let victim_at = cfg.find("id = \"victim\"").expect("victim");
        let (head, tail) = cfg.split_at(victim_at);
        let tail = tail.replacen(&current, &bad, 1);
        std::fs::write(&setup.config, format!("{head}{tail}")).expect("write");
        current = bad;

        sim.ds().create(72);
        let out = setup.run(&["sync"]).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{hostile:?}: {err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("acme/victim: failed"))
            .unwrap_or_else(|| panic!("{hostile:?}: no failure line for the victim:\n{err}"));
        assert!(line.contains(expected), "{hostile:?}: {line}");
        assert!(err.contains("acme/healthy: success"), "{hostile:?}: {err}");
        assert!(!err.contains("panicked"), "{hostile:?}: {err}");
        // What the victim had stored is intact.
        let now: Vec<_> = setup
            .export(true)
            .await
            .into_iter()
            .filter(|l| l["source"] == "victim")
            .collect();
        let before: Vec<_> = stored
            .iter()
            .filter(|l| l["source"] == "victim")
            .cloned()
            .collect();
        assert_eq!(now, before, "{hostile:?}");
    }
    assert_export_matches(&setup, &sim, "acme", "healthy", 72).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_run_cleanly_and_the_next_sync_completes() {
    if sqlite_only("the full disk is the process's file-size limit on its SQLite file") {
        return;
    }
    let sim = simulator().await;
    sim.ds().seed(81, 40);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", 81)]);
    setup.sync_ok(&[]).await;
    let before = setup.export(true).await;
    sim.ds().seed(81, 3_000);

    // A file-size limit a little above what is stored: the next pages
    // cannot be written, as on a full disk.
    let db = std::fs::metadata(setup.db_path()).expect("db").len();
    let wal = std::fs::metadata(setup.db_path().with_extension("db-wal")).map_or(0, |m| m.len());
    let limit = db.max(wal) + 256 * 1024;
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg(format!("--fsize={limit}")).arg(bin());
    cmd.args(["--config"])
        .arg(&setup.config)
        .args(["--log-format", "text", "sync"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("prlimit"))
        .await
        .expect("join");
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "exits with an error, not killed: {err}"
    );
    let line = err
        .lines()
        .find(|l| l.starts_with("acme/permits: failed"))
        .unwrap_or_else(|| panic!("no failure line:\n{err}"));
    assert!(
        line.contains("disk full") || line.contains("disk is full"),
        "{line}"
    );
    // What was stored is intact, pages committed before the limit included.
    let after = setup.export(true).await;
    assert!(after.len() >= before.len());
    for old in &before {
        assert!(after.contains(old), "lost {}", old["id"]);
    }
    // Space is back: the sync completes from where it stopped.
    setup.sync_ok(&[]).await;
    assert_export_matches(&setup, &sim, "acme", "permits", 81).await;
    assert_integrity(&setup.db()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_fails_the_run_clearly_and_loses_nothing() {
    if sqlite_only("SQLite's write lock held by another process") {
        return;
    }
    let sim = simulator().await;
    sim.ds().seed(91, 80);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", 91)]);
    setup.sync_ok(&[]).await;
    let before = setup.export(true).await;
    std::fs::write(
        &setup.config,
        std::fs::read_to_string(&setup.config)
            .expect("config")
            .replacen("[storage]\n", "[storage]\nbusy_timeout = \"1s\"\n", 1),
    )
    .expect("write");
    sim.ds().create(91);

    // Another process (here: this test) holds the write lock.
    let url = format!("sqlite://{}", setup.db_path().display());
    let mut other = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("open db");
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .expect("lock");
    let out = setup.run(&["sync"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("acme/permits: failed")
                && l.contains("locked by another process")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // Readers are not blocked, and nothing was lost.
    assert_eq!(setup.export(true).await, before);

    sqlx::query("ROLLBACK")
        .execute(&mut other)
        .await
        .expect("unlock");
    drop(other);
    setup.sync_ok(&[]).await;
    assert_export_matches(&setup, &sim, "acme", "permits", 91).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_database_path_is_a_clear_error_naming_it() {
    if sqlite_only("a SQLite path whose folder is a file") {
        return;
    }
    let sim = simulator().await;
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", 1)]);
    // A regular file where the database folder should be.
    let blocker = setup.dir.path().join("not-a-folder");
    std::fs::write(&blocker, "x").expect("write");
    let db = blocker.join("synchro.db");
    std::fs::write(
        &setup.config,
        std::fs::read_to_string(&setup.config)
            .expect("config")
            .replace(
                &setup.db_path().display().to_string(),
                &db.display().to_string(),
            ),
    )
    .expect("write");
    for cmd in ["sync", "run", "check"] {
        let out = setup.run(&[cmd]).await;
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{cmd}: {err}");
        assert!(
            err.contains(&blocker.display().to_string()),
            "{cmd} names the path: {err}"
        );
        assert!(!err.contains("panicked"), "{cmd}: {err}");
    }
}

/// `prlimit` on a running process: its file-size limit, as a full disk
/// that fills and empties without a real disk.
async fn set_file_size_limit(pid: u32, limit: &str) {
    let mut cmd = std::process::Command::new("prlimit");
    // The soft limit only: lowering the hard one could not be undone
    // without CAP_SYS_RESOURCE.
    cmd.args([
        "--pid",
        &pid.to_string(),
        &format!("--fsize={limit}:unlimited"),
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("prlimit"))
        .await
        .expect("join");
    assert!(out.status.success(), "prlimit: {}", stderr(&out));
}

async fn http_status(url: &str) -> u16 {
    reqwest::get(url).await.map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_is_unready_while_the_disk_is_full_and_recovers_by_itself() {
    if sqlite_only("the full disk is the daemon's file-size limit on its SQLite file") {
        return;
    }
    let sim = simulator().await;
    let content = sim.content();
    let ids = content.seed(20, 5);
    let mut src = ContentSource::new("acme", "translations");
    src.webhook_token = Some("hook-secret");
    src.report = false;
    let setup = Setup::content(&sim, &[src]);
    let port = setup.use_free_port();
    let mut daemon = setup.spawn(&["run"]);
    let db = setup.db();
    wait_until(Duration::from_secs(30), "the first sync", || {
        let db = db.clone();
        async move { count_runs(&db, "acme", "translations", "success").await >= 1 }
    })
    .await;
    let ready = format!("http://127.0.0.1:{port}/readyz");
    assert_eq!(http_status(&ready).await, 200);
    let hook = format!("http://127.0.0.1:{port}/webhooks/content/acme/translations");
    // Each callback carries the same request, equally new but different:
    // stored each time (~300 KB).
    let callback = |n: usize| {
        let mut body = content.webhook_body(ids[0]);
        body["request"]["pad"] = serde_json::Value::String(format!("{n}{}", "x".repeat(300_000)));
        body
    };
    assert_eq!(
        content.deliver(&hook, "hook-secret", &callback(0)).await,
        200
    );

    // The disk fills up.
    let file = setup.db_path();
    let used = std::fs::metadata(&file)
        .map_or(0, |m| m.len())
        .max(std::fs::metadata(file.with_extension("db-wal")).map_or(0, |m| m.len()));
    set_file_size_limit(daemon.id(), &(used + 64 * 1024).to_string()).await;
    let mut refused = 0;
    for n in 1..30 {
        let status = content.deliver(&hook, "hook-secret", &callback(n)).await;
        if status != 200 {
            assert_eq!(status, 503, "a failed commit answers 503");
            refused = n;
            break;
        }
    }
    assert!(refused > 0, "the file-size limit never failed a commit");
    assert_eq!(http_status(&ready).await, 503, "unready while writes fail");
    assert_eq!(
        http_status(&format!("http://127.0.0.1:{port}/healthz")).await,
        200
    );

    // Space is back: without a restart, readiness returns and callbacks
    // are stored again.
    set_file_size_limit(daemon.id(), "unlimited").await;
    wait_until(Duration::from_secs(30), "readyz 200 again", || {
        let ready = ready.clone();
        async move { http_status(&ready).await == 200 }
    })
    .await;
    assert_eq!(
        content.deliver(&hook, "hook-secret", &callback(99)).await,
        200
    );
    let stored = setup
        .export(false)
        .await
        .into_iter()
        .find(|l| l["id"].as_str() == Some(ids[0].to_string().as_str()))
        .expect("stored");
    assert!(
        stored["data"]["pad"]
            .as_str()
            .is_some_and(|p| p.starts_with("99")),
        "the last callback is the stored version"
    );
    signal(&daemon, "TERM");
    assert_eq!(daemon.wait().expect("wait").code(), Some(0));
    assert_integrity(&db).await;
}
