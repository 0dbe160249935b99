//! The README's ways to consume the data, run as written against a real
//! daemon: the Python consumer of `/v1/changes` (examples/consume_changes.py,
//! embedded in the README) and the `jq` snapshot-then-changes pipeline. A
//! README example that no longer works fails here. They need `python3` and
//! `jq` on the PATH and say SKIPPED where one is missing.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const DEMARCHE: i64 = 5150;
const CAL: &str = "desk@example.com";
const TOKEN: &str = "admin-read-token-for-the-examples";

fn has(program: &str) -> bool {
    let found = Command::new(program).arg("--version").output().is_ok();
    if !found {
        eprintln!("SKIPPED: {program} is not on the PATH");
    }
    found
}

/// The live records as `export` prints them: `tenant/source/id` → data.
async fn exported(setup: &Setup) -> BTreeMap<String, Value> {
    setup
        .export(false)
        .await
        .into_iter()
        .map(|l| {
            let key = format!(
                "{}/{}/{}",
                l["tenant"].as_str().expect("tenant"),
                l["source"].as_str().expect("source"),
                l["id"].as_str().expect("id")
            );
            (key, l["data"].clone())
        })
        .collect()
}

fn dossiers(copy: &BTreeMap<String, Value>) -> usize {
    copy.keys()
        .filter(|k| k.starts_with("acme/permits/"))
        .count()
}

/// Runs the README's consumer once up to the head; returns its copy.
fn consume(port: u16, state: &std::path::Path) -> BTreeMap<String, Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/consume_changes.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(state)
        .env("SYNCHRO_READ_TOKEN", TOKEN)
        .env("ONCE", "1")
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "the consumer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: Value = serde_json::from_str(&read_to_string(state)).expect("state JSON");
    assert!(state["since"].as_i64().expect("since") > 0);
    serde_json::from_value(state["records"].clone()).expect("records")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_python_consumer_keeps_an_exact_copy_across_restarts() {
    if !has("python3") {
        return;
    }
    let sim = simulator().await;
    let numbers = sim.ds().seed(DEMARCHE, 120);
    let events = sim.calendar().seed(CAL, 80);
    sim.content().seed(40, 10);
    let setup = Setup::build_all(
        &sim,
        &[DsSource::new("acme", "permits", DEMARCHE)],
        &[CalSource::new("acme", "agenda", CAL)],
        &[ContentSource::new("beta", "translations")],
    );
    let port = setup.use_free_port();
    setup.edit_config(
        &format!("listen = \"127.0.0.1:{port}\""),
        &format!("listen = \"127.0.0.1:{port}\"\nadmin_read_token = \"{TOKEN}\""),
    );
    setup.sync_ok(&[]).await;
    let mut daemon = setup.spawn(&["run"]);
    let ready = format!("http://127.0.0.1:{port}/readyz");
    wait_until(Duration::from_secs(30), "readyz 200", || async {
        reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    })
    .await;

    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let copy = consume(port, &state);
    assert_eq!(dossiers(&copy), 120);
    assert_eq!(copy, exported(&setup).await, "the first copy");

    // Changes, deletions among them, synced next to the daemon; the
    // consumer starts again from the position it stored.
    for n in &numbers[..10] {
        sim.ds().update(*n);
    }
    for n in &numbers[10..15] {
        sim.ds().hide(*n);
    }
    for id in &events[..5] {
        sim.calendar().cancel(CAL, id);
    }
    sim.ds().create(DEMARCHE);
    setup.sync_ok(&[]).await;
    let copy = consume(port, &state);
    assert_eq!(dossiers(&copy), 120 + 1 - 5);
    assert_eq!(copy, exported(&setup).await, "the copy after the changes");
    assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;

    signal(&daemon, "TERM");
    let status = daemon.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_jq_pipeline_continues_a_snapshot_with_exactly_the_changes_after_it() {
    if !has("jq") {
        return;
    }
    let sim = simulator().await;
    let numbers = sim.ds().seed(DEMARCHE, 50);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", DEMARCHE)]);
    setup.sync_ok(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshot = dir.path().join("snapshot.jsonl");
    let config = setup.config.display().to_string();
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("SYNCHRO", bin())
            .env("CONFIG", &config)
            .env("SNAPSHOT", &snapshot)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    };
    // The README's lines, with the binary and config spelt out.
    sh(r#""$SYNCHRO" --config "$CONFIG" export > "$SNAPSHOT""#);
    let since = r#""$SYNCHRO" --config "$CONFIG" export --since "$(jq -s 'map(.seq) | max // 0' "$SNAPSHOT")""#;
    assert_eq!(sh(since), "", "nothing changed after the snapshot");

    sim.ds().update(numbers[3]);
    sim.ds().hide(numbers[7]);
    setup.sync_ok(&[]).await;
    let changes: Vec<Value> = sh(since)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let got: Vec<(String, bool)> = changes
        .iter()
        .map(|l| {
            (
                l["id"].as_str().expect("id").to_string(),
                l["deleted"] == true,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (numbers[3].to_string(), false),
            (numbers[7].to_string(), true)
        ],
        "exactly the two changes, in commit order"
    );
}
