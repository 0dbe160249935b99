//! Contentor content requests, end to end: the real binary against the
//! simulated Contentor API, its import-state endpoint and its callbacks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::*;
use rand::Rng;
use synchro_simulator::{ContentSim, ImportMode};

/// Requests that are not completed upstream: completing them makes exactly
/// one new completion each (the simulator attributes a report to the
/// request's current `completed` date, so earlier completions of the same
/// request would blur the count).
fn not_completed(sim: &ContentSim) -> Vec<i64> {
    sim.api_requests()
        .iter()
        .filter(|r| r["state"] != "completed")
        .map(|r| r["id"].as_i64().expect("id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_requests_sharing_timestamps_are_all_stored_and_reported_once() {
    let sim = simulator().await;
    let content = sim.content();
    // Batches of 45 share one instant: larger than a page of 20.
    content.seed(5_000, 45);
    let setup = Setup::content(&sim, &[ContentSource::new("acme", "translations")]);
    let out = setup.sync_ok(&[]).await;
    assert!(
        stderr(&out).contains("acme/translations: success"),
        "{}",
        stderr(&out)
    );
    assert_content_matches(&setup, &sim, "acme", "translations", &[]).await;
    // A sync sends reports for at most 10 s after its run (a slow machine
    // or database leaves the rest to the next sync, which says so): the
    // next syncs send what is left, each report once.
    let mut out = out;
    for _ in 0..5 {
        if !stderr(&out).contains("still pending") {
            break;
        }
        out = setup.sync_ok(&[]).await;
    }
    assert!(!stderr(&out).contains("still pending"), "{}", stderr(&out));
    assert_eq!(successes(&content), completions(&content));

    // Nothing changed: one request (the descending probe: the last batch
    // of 45 is larger than a page), nothing stored, nothing reported again.
    let before = content.requests();
    let out = setup.sync_ok(&[]).await;
    assert_eq!(content.requests() - before, 1);
    assert!(stderr(&out).contains("0 upserted"), "{}", stderr(&out));
    assert_eq!(successes(&content), completions(&content));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_batch_larger_than_a_page_one_request_finds_a_few_changes() {
    let sim = simulator().await;
    let content = sim.content();
    // The last batch (50 requests at one instant) spans 3 pages of 20.
    let ids = content.seed(100, 50);
    let setup = Setup::content(&sim, &[ContentSource::new("acme", "translations")]);
    setup.sync_ok(&[]).await;
    assert_content_matches(&setup, &sim, "acme", "translations", &[]).await;

    // Fewer changes than a page: the descending probe holds all of them.
    for id in &ids[..5] {
        content.set_state(*id, "confirmed");
    }
    let before = content.requests();
    let out = setup.sync_ok(&[]).await;
    assert_eq!(content.requests() - before, 1, "{}", stderr(&out));
    assert_content_matches(&setup, &sim, "acme", "translations", &[]).await;
    let before = content.requests();
    setup.sync_ok(&[]).await;
    assert_eq!(content.requests() - before, 1, "nothing changed");

    // A new batch larger than a page, then more changes than a page: the
    // probe cannot hold them and the run walks up from the watermark.
    content.set_state_batch(&ids[10..40], "canceled");
    setup.sync_ok(&[]).await;
    for id in &ids[50..80] {
        content.set_state(*id, "pending");
    }
    let before = content.requests();
    setup.sync_ok(&[]).await;
    assert!(content.requests() - before > 1);
    assert_content_matches(&setup, &sim, "acme", "translations", &[]).await;
    let before = content.requests();
    let out = setup.sync_ok(&[]).await;
    assert_eq!(content.requests() - before, 1, "nothing changed");
    assert!(stderr(&out).contains("0 upserted"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_to_any_state_changes_keep_the_latest_and_report_each_completion_once() {
    let sim = simulator().await;
    let content = sim.content();
    let ids = content.seed(300, 12);
    let setup = Setup::content(&sim, &[ContentSource::new("acme", "translations")]);
    setup.sync_ok(&[]).await;
    let mut expected = completions(&content);

    let rounds: [&[&str]; 4] = [
        &["completed", "pending", "canceled"],
        &["confirmed", "completed", "failed"],
        &["completed", "confirmed", "pending"],
        &["completed", "completed", "confirmed"],
    ];
    for round in rounds {
        for (i, id) in ids.iter().take(60).enumerate() {
            content.set_state(*id, round[i % round.len()]);
        }
        // A batch moving together at one instant.
        content.set_state_batch(&ids[100..130], round[0]);
        setup.sync_ok(&[]).await;
        for r in content.api_requests() {
            if r["state"] == "completed" {
                let c = (
                    r["id"].as_i64().expect("id"),
                    r["completed"].as_str().expect("date").to_string(),
                );
                if !expected.contains(&c) {
                    expected.push(c);
                }
            }
        }
        assert_content_matches(&setup, &sim, "acme", "translations", &[]).await;
    }
    expected.sort();
    assert_eq!(
        successes(&content),
        expected,
        "one success per completion, no other"
    );
    assert!(
        content
            .reports()
            .iter()
            .all(|r| r.import_state == "success"),
        "no report for other states"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_be_stored_is_reported_fail_and_the_rest_goes_on() {
    let sim = simulator().await;
    let content = sim.content();
    let ids = content.seed(120, 6);
    let bad = *ids
        .iter()
        .find(|id| {
            content
                .request(**id)
                .is_some_and(|r| r["state"] == "completed")
        })
        .expect("a completed request");
    content.corrupt(bad);
    let setup = Setup::content(&sim, &[ContentSource::new("acme", "translations")]);
    let out = setup.sync_ok(&[]).await;
    assert!(
        stderr(&out).contains("cannot be stored"),
        "{}",
        stderr(&out)
    );
    assert_content_matches(&setup, &sim, "acme", "translations", &[bad]).await;
    let fails: Vec<_> = content
        .reports()
        .into_iter()
        .filter(|r| r.import_state == "fail")
        .collect();
    assert_eq!(fails.len(), 1);
    assert_eq!(fails[0].id, bad);
    assert!(
        fails[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("fields")),
        "{:?}",
        fails[0].message
    );
    let mut others = completions(&content);
    others.retain(|(id, _)| *id != bad);
    assert_eq!(successes(&content), others);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_endpoint_down_or_hanging_never_slows_the_syncs_and_catches_up() {
    let sim = simulator().await;
    let content = sim.content();
    content.seed(200, 5);
    let ids = not_completed(&content);
    let setup = Setup::content(&sim, &[ContentSource::new("acme", "translations")]);
    setup.edit_config("schedule = \"every 1h\"", "schedule = \"every 1s\"");
    let port = setup.use_free_port();
    let _ = port;
    content.set_import_mode(ImportMode::Fail);
    let mut child = setup.spawn(&["run"]);
    let db = setup.db();
    let runs = || count_runs(&db, "acme", "translations", "success");

    // Down (500), then hanging: the syncs keep their one-second pace.
    for (mode, n) in [(ImportMode::Fail, 0), (ImportMode::Hang, 20)] {
        content.set_import_mode(mode);
        for id in &ids[n..n + 20] {
            content.set_state(*id, "completed");
        }
        let start = runs().await;
        wait_until(Duration::from_secs(12), "three more sync runs", || async {
            runs().await >= start + 3
        })
        .await;
    }
    assert!(content.report_attempts() > 0, "the reporter tried");
    assert!(successes(&content).is_empty(), "nothing could succeed yet");

    content.set_import_mode(ImportMode::Ok);
    let expected = completions(&content);
    wait_until(Duration::from_secs(45), "every pending report", || async {
        successes(&content) == expected
    })
    .await;
    signal(&child, "TERM");
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    assert_eq!(successes(&content), expected, "nothing reported twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_storing_and_reporting_loses_no_report_and_doubles_none() {
    const TRIALS: usize = 12;
    let sim = simulator().await;
    let content = sim.content();
    content.seed(1_500, 10);
    let ids = not_completed(&content);
    assert!(ids.len() >= TRIALS * 40);
    let setup = Setup::content(&sim, &[ContentSource::new("acme", "translations")]);
    // Slow pages, so that a run lasts long enough for the kill to land in
    // it; in the `Hang` trials the kill lands while the report is in flight.
    content.inject(
        synchro_simulator::Fault::Slow(Duration::from_millis(50)),
        100_000,
    );
    let mut rng =
        seeded_rng("sigkill_between_storing_and_reporting_loses_no_report_and_doubles_none");
    let mut killed = 0;
    for trial in 0..TRIALS {
        // Reports cannot succeed while we kill: stored completions wait in
        // the outbox, the kill lands before, during or after their attempt.
        content.set_import_mode(if trial % 2 == 0 {
            ImportMode::Fail
        } else {
            ImportMode::Hang
        });
        for id in &ids[trial * 40..trial * 40 + 40] {
            let state = if rng.random_bool(0.6) {
                "completed"
            } else {
                "confirmed"
            };
            content.set_state(*id, state);
        }
        let before = content.requests();
        let mut child = setup.spawn(&["sync"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while content.requests() == before {
            assert!(
                child.try_wait().expect("try_wait").is_none(),
                "sync ended early"
            );
            assert!(Instant::now() < deadline, "no progress");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..120))).await;
        if child.try_wait().expect("try_wait").is_none() {
            killed += 1;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    assert!(
        killed >= TRIALS - 1,
        "only {killed} of {TRIALS} kills landed during a run"
    );
    content.set_import_mode(ImportMode::Ok);
    setup.sync_ok(&[]).await;
    assert_content_matches(&setup, &sim, "acme", "translations", &[]).await;
    // Every completion stored at any point was reported exactly once.
    let mut reported: BTreeMap<(i64, String), usize> = BTreeMap::new();
    for s in successes(&content) {
        *reported.entry(s).or_default() += 1;
    }
    assert!(
        reported.values().all(|n| *n == 1),
        "double reports: {reported:?}"
    );
    for c in completions(&content) {
        assert!(reported.contains_key(&c), "completion {c:?} never reported");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_store_the_newest_state_and_report_like_polling() {
    let sim = simulator().await;
    let content = sim.content();
    let ids = content.seed(50, 5);
    let mut src = ContentSource::new("acme", "translations");
    src.webhook_token = Some("hook-secret-321");
    let setup = Setup::content(&sim, &[src]);
    let port = setup.use_free_port();
    let mut child = setup.spawn(&["run"]);
    let db = setup.db();
    wait_until(Duration::from_secs(30), "the first sync", || {
        let db = db.clone();
        async move { count_runs(&db, "acme", "translations", "success").await >= 1 }
    })
    .await;
    let url = format!("http://127.0.0.1:{port}/webhooks/content/acme/translations");
    // The first sync's completions are reported before the test completes
    // a request again: the simulator files a report under the request's
    // *current* completion date, so a report of an earlier completion of
    // the same request sent after the change would look like a duplicate.
    let initial = completions(&content);
    wait_until(Duration::from_secs(30), "the first sync's reports", || {
        let sent = successes(&content);
        let done = initial.iter().all(|c| sent.contains(c));
        async move { done }
    })
    .await;

    let id = ids[7];
    content.set_state(id, "confirmed");
    let confirmed = content.webhook_body(id);
    content.set_state(id, "completed");
    let completed = content.webhook_body(id);
    // Out of order and duplicated: completed, then the older confirmed, then completed again.
    assert_eq!(
        content.deliver(&url, "hook-secret-321", &completed).await,
        200
    );
    assert_eq!(
        content.deliver(&url, "hook-secret-321", &confirmed).await,
        200
    );
    assert_eq!(
        content.deliver(&url, "hook-secret-321", &completed).await,
        200
    );
    let stored = setup
        .export(false)
        .await
        .into_iter()
        .find(|l| l["id"].as_str() == Some(id.to_string().as_str()))
        .expect("stored");
    assert_eq!(stored["data"], completed["request"], "newest state kept");

    // Refused and ignored deliveries change nothing.
    let before = setup.export(true).await;
    assert_eq!(content.deliver(&url, "wrong-token", &completed).await, 401);
    assert_eq!(content.deliver(&url, "", &completed).await, 401);
    let garbage = serde_json::json!({"type": "content-request", "request": "nope"});
    assert_eq!(
        content.deliver(&url, "hook-secret-321", &garbage).await,
        400
    );
    let no_type = serde_json::json!({"request": completed["request"]});
    assert_eq!(
        content.deliver(&url, "hook-secret-321", &no_type).await,
        400
    );
    let other = serde_json::json!({"type": "batch-finished", "batchId": 3});
    assert_eq!(content.deliver(&url, "hook-secret-321", &other).await, 200);
    assert_eq!(setup.export(true).await, before);

    // The completion arrived only by webhook; it is reported like a polled one.
    let completed_at = completed["request"]["completed"]
        .as_str()
        .expect("date")
        .to_string();
    wait_until(
        Duration::from_secs(10),
        "the webhook completion's report",
        || async { successes(&content).contains(&(id, completed_at.clone())) },
    )
    .await;
    signal(&child, "TERM");
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    let n = successes(&content)
        .iter()
        .filter(|s| **s == (id, completed_at.clone()))
        .count();
    assert_eq!(n, 1);
}
