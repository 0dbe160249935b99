//! `/metrics` and JSON logs of the running daemon.

use std::time::Duration;

use crate::common::*;

/// The value of the first sample of `name` whose labels contain all `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_labelled_by_tenant_and_source_and_logs_are_json() {
    let sim = simulator().await;
    sim.ds().seed(31, 230);
    sim.content().seed(80, 4);
    let setup = Setup::build_all(
        &sim,
        &[DsSource::new("acme", "permits", 31)],
        &[],
        &[ContentSource::new("globex", "translations")],
    );
    let port = setup.use_free_port();
    let mut child = setup.cmd(&["run"]);
    child.args(["--log-format", "json"]);
    let log = setup.dir.path().join("json.log");
    let mut child = child
        .stderr(std::fs::File::create(&log).expect("log"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let db = setup.db();
    wait_until(Duration::from_secs(30), "both first syncs", || {
        let db = db.clone();
        async move {
            count_runs(&db, "acme", "permits", "success").await == 1
                && count_runs(&db, "globex", "translations", "success").await == 1
        }
    })
    .await;
    let completed = sim
        .content()
        .api_requests()
        .iter()
        .filter(|r| r["state"] == "completed")
        .count() as f64;
    let url = format!("http://127.0.0.1:{port}/metrics");
    // Poll until every report is sent and counted (deadline 20 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = reqwest::get(&url)
            .await
            .expect("get")
            .text()
            .await
            .expect("text");
        let sent = sample(
            &text,
            "synchro_import_reports_sent_total",
            &["tenant=\"globex\""],
        );
        let pending = sample(
            &text,
            "synchro_import_reports_pending",
            &["tenant=\"globex\""],
        );
        let counted_itself = sample(&text, "synchro_replicas_live", &[]).is_some();
        if sent == Some(completed) && pending == Some(0.0) && counted_itself {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reports not all counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let permits = ["tenant=\"acme\"", "source=\"permits\""];
    let runs_ok = [
        permits[0],
        permits[1],
        "outcome=\"success\"",
        "kind=\"demarches\"",
    ];
    assert_eq!(
        sample(&text, "synchro_runs_total", &runs_ok),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "synchro_records_upserted_total", &permits),
        Some(230.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "synchro_records_deleted_total", &permits),
        Some(0.0),
        "{text}"
    );
    let host = format!("host=\"127.0.0.1:{}\"", sim.addr().port());
    let calls = sample(
        &text,
        "synchro_http_requests_total",
        &[permits[0], permits[1], &host, "status=\"200\""],
    );
    assert!(calls.is_some_and(|n| n >= 3.0), "{text}");
    assert!(
        sample(&text, "synchro_sync_duration_seconds_count", &permits) == Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "synchro_last_success_timestamp_seconds", &permits)
            .is_some_and(|t| t > 1.7e9),
        "{text}"
    );

    // The daemon counts itself among the live ones at its first heartbeat.
    assert_eq!(
        sample(&text, "synchro_replicas_live", &[]),
        Some(1.0),
        "{text}"
    );

    // Every series says what it counts.
    for name in [
        "synchro_runs_total",
        "synchro_records_upserted_total",
        "synchro_sync_duration_seconds",
        "synchro_last_success_timestamp_seconds",
        "synchro_http_requests_total",
        "synchro_import_reports_pending",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} "))),
            "no # HELP for {name}:\n{text}"
        );
    }

    signal(&child, "TERM");
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    // Every log line is one JSON object; run lines carry tenant, source and run_id.
    let logs = std::fs::read_to_string(&log).expect("log");
    let mut run_lines = 0;
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["message"] == "sync run succeeded" {
            run_lines += 1;
            assert!(
                v["span"]["tenant"].is_string() && v["span"]["run_id"].is_string(),
                "{line}"
            );
        }
    }
    assert_eq!(run_lines, 2, "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_with_json_logs_writes_only_json_on_stderr() {
    let sim = simulator().await;
    sim.ds().seed(32, 230);
    let mut refused = DsSource::new("acme", "refused", 32);
    refused.token = "not-a-token";
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", 32), refused]);
    let mut cmd = setup.cmd(&["sync"]);
    cmd.args(["--log-format", "json"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run synchro"))
        .await
        .expect("join");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let mut finished = std::collections::BTreeMap::new();
    let mut progress = 0;
    for line in stderr(&out).lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        match v["message"].as_str() {
            Some("sync finished") => {
                finished.insert(v["source"].as_str().expect("source").to_string(), v);
            }
            Some("sync progress") => progress += 1,
            _ => {}
        }
    }
    assert!(progress >= 1, "{}", stderr(&out));
    let ok = &finished["permits"];
    assert_eq!(ok["tenant"], "acme");
    assert_eq!(ok["outcome"], "success");
    assert_eq!(ok["pages"], 3);
    assert_eq!(ok["upserted"], 230);
    assert_eq!(ok["deleted"], 0);
    assert!(ok["elapsed"].is_f64(), "{ok}");
    assert!(ok.get("error").is_none(), "{ok}");
    let failed = &finished["refused"];
    assert_eq!(failed["outcome"], "failed");
    assert_eq!(failed["level"], "ERROR");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("credentials rejected for acme/refused")),
        "{failed}"
    );
}
