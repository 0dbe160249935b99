//! Google Calendar sync, end to end: the real binary against the simulated
//! Calendar API (sync tokens, paging, 410 clear-and-resync, OAuth2).

use std::time::{Duration, Instant};

use crate::common::*;
use rand::Rng;
use synchro_simulator::Fault;

const CAL: &str = "team@example.com";

fn source() -> CalSource<'static> {
    CalSource::new("acme", "agenda", CAL)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_of_3000_events_over_pages_some_empty_equals_upstream() {
    let sim = simulator().await;
    let cal = sim.calendar();
    cal.seed(CAL, 3_000);
    cal.set_empty_pages(4);
    let setup = Setup::mixed(&sim, &[], &[source()], "");

    let before = cal.requests();
    setup.sync_ok(&[]).await;
    let requests = cal.requests() - before;
    assert!(
        requests >= 30 + 7,
        "3,000 events at 100 a page plus empty pages: {requests} requests"
    );
    assert_calendar_matches(&setup, &sim, "acme", "agenda", CAL).await;

    // The stored token is the last page's: a sync with no change upstream is
    // one request that brings nothing back.
    cal.set_empty_pages(0);
    let state = progress_state(&setup.db(), "acme", "agenda")
        .await
        .expect("progress");
    assert!(state["sync_token"].is_string(), "{state}");
    assert!(state["page_token"].is_null(), "{state}");
    let before = cal.requests();
    let out = setup.sync_ok(&[]).await;
    assert_eq!(cal.requests() - before, 1);
    assert!(
        stderr(&out).contains("0 upserted, 0 deleted"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_sync_follows_creates_updates_and_cancellations() {
    let sim = simulator().await;
    let cal = sim.calendar();
    let ids = cal.seed(CAL, 700);
    let setup = Setup::mixed(&sim, &[], &[source()], "");
    setup.sync_ok(&[]).await;

    for id in ids.iter().step_by(9) {
        cal.update(CAL, id);
    }
    let created: Vec<String> = (0..30).map(|_| cal.create(CAL)).collect();
    cal.update(CAL, &created[0]);
    for id in ids.iter().skip(3).step_by(50) {
        cal.cancel(CAL, id);
    }
    cal.cancel(CAL, &created[1]);
    let recurring = cal
        .live_events(CAL)
        .into_iter()
        .find(|e| e.get("recurrence").is_some())
        .and_then(|e| e["id"].as_str().map(str::to_string))
        .expect("a recurring event in the seed");
    let instance = cal.cancel_instance(CAL, &recurring);

    setup.sync_ok(&[]).await;
    assert_calendar_matches(&setup, &sim, "acme", "agenda", CAL).await;
    // A cancelled instance of a recurring event is kept, as cancelled.
    let all = setup.export(true).await;
    let kept = all
        .iter()
        .find(|l| l["id"].as_str() == Some(instance.as_str()))
        .expect("cancelled instance exported");
    assert_eq!(kept["deleted"], true);
    assert_eq!(
        kept["data"]["recurringEventId"].as_str(),
        Some(recurring.as_str())
    );
}

/// Upstream changes made while the sync token is invalid, some of them
/// never reported as cancellations.
fn churn(sim: &synchro_simulator::Simulator, ids: &[String]) -> Vec<String> {
    let cal = sim.calendar();
    let silent: Vec<String> = ids.iter().skip(5).step_by(40).cloned().collect();
    for id in &silent {
        cal.purge_silently(CAL, id);
    }
    for id in ids.iter().skip(7).step_by(60) {
        cal.cancel(CAL, id);
    }
    for id in ids.iter().skip(11).step_by(30) {
        cal.update(CAL, id);
    }
    for _ in 0..15 {
        cal.create(CAL);
    }
    silent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_sync_token_clears_and_resyncs_keeping_old_records_readable_until_done() {
    let sim = simulator().await;
    let cal = sim.calendar();
    let ids = cal.seed(CAL, 1_200);
    let mut src = source();
    src.max_results = 50;
    let setup = Setup::mixed(&sim, &[], &[src], "");
    setup.sync_ok(&[]).await;
    let before_ids: Vec<String> = setup
        .export(true)
        .await
        .iter()
        .map(|l| l["id"].as_str().expect("id").to_string())
        .collect();

    let silent = churn(&sim, &ids);
    cal.expire_sync_tokens(CAL);

    // Kill the resync in its middle: the previous records are all still there.
    cal.inject(Fault::Slow(Duration::from_millis(30)), 10_000);
    let before = cal.requests();
    let mut child = setup.spawn(&["sync"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cal.requests() - before < 6 {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the resync ended too early"
        );
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let during: std::collections::HashSet<String> = setup
        .export(true)
        .await
        .iter()
        .map(|l| l["id"].as_str().expect("id").to_string())
        .collect();
    for id in &before_ids {
        assert!(
            during.contains(id),
            "{id} vanished before the resync completed"
        );
    }

    cal.clear_faults();
    let out = setup.sync_ok(&[]).await;
    assert_calendar_matches(&setup, &sim, "acme", "agenda", CAL).await;
    let all = setup.export(true).await;
    for id in &silent {
        assert!(
            all.iter()
                .any(|l| l["id"].as_str() == Some(id.as_str()) && l["deleted"] == true),
            "{id} was deleted upstream without a cancellation: the resync must leave a \
             tombstone (change-feed readers learn it is gone)"
        );
    }
    // The next run is incremental again.
    let before = cal.requests();
    setup.sync_ok(&[]).await;
    assert_eq!(cal.requests() - before, 1, "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_sync_token_400_behaves_like_410() {
    let sim = simulator().await;
    let cal = sim.calendar();
    let ids = cal.seed(CAL, 400);
    let setup = Setup::mixed(&sim, &[], &[source()], "");
    setup.sync_ok(&[]).await;
    let silent = churn(&sim, &ids);
    cal.invalidate_sync_tokens(CAL);
    let out = setup.sync_ok(&[]).await;
    assert!(
        stderr(&out).contains("clear-and-resync"),
        "{}",
        stderr(&out)
    );
    assert_calendar_matches(&setup, &sim, "acme", "agenda", CAL).await;
    let all = setup.export(true).await;
    let swept: Vec<_> = all
        .iter()
        .filter(|l| l["id"].as_str() == Some(silent[0].as_str()))
        .collect();
    assert!(
        swept.len() == 1 && swept[0]["deleted"] == true,
        "a silently deleted event is a tombstone after the resync: {swept:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_400_fails_the_run_and_drops_nothing() {
    let sim = simulator().await;
    let cal = sim.calendar();
    let ids = cal.seed(CAL, 300);
    let setup = Setup::mixed(&sim, &[], &[source()], "");
    setup.sync_ok(&[]).await;
    let before = setup.export(true).await;
    for id in ids.iter().step_by(10) {
        cal.update(CAL, id);
    }
    cal.inject(
        Fault::GraphqlError {
            message: "Bad Request: something unexpected".into(),
            code: "badRequest".into(),
        },
        1,
    );
    let out = setup.run(&["sync"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("something unexpected"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        setup.export(true).await,
        before,
        "nothing dropped or changed"
    );
    setup.sync_ok(&[]).await;
    assert_calendar_matches(&setup, &sim, "acme", "agenda", CAL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_full_and_incremental_listings_loses_and_duplicates_nothing() {
    const TRIALS: usize = 12;
    let sim = simulator().await;
    let cal = sim.calendar();
    let ids = cal.seed(CAL, 2_000);
    cal.set_empty_pages(5);
    let mut src = source();
    src.max_results = 50;
    let setup = Setup::mixed(&sim, &[], &[src], "");
    cal.inject(Fault::Slow(Duration::from_millis(15)), 100_000);

    // The first half interrupts the full listing (40+ pages, at most 4 per
    // trial), the second half incremental listings of 3+ pages of new events.
    // No event changes once listed, so a lost page could not heal.
    let mut rng =
        seeded_rng("sigkill_during_full_and_incremental_listings_loses_and_duplicates_nothing");
    let mut killed = 0;
    for trial in 0..TRIALS {
        if trial >= TRIALS / 2 {
            for _ in 0..200 {
                cal.create(CAL);
            }
            cal.cancel(CAL, &ids[1_500 + trial]);
        }
        let before = cal.requests();
        let mut child = setup.spawn(&["sync"]);
        let pages = rng.random_range(1..=if trial < TRIALS / 2 { 4 } else { 3 });
        let deadline = Instant::now() + Duration::from_secs(30);
        while cal.requests() - before < pages {
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "trial {trial}: no progress");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
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
    cal.clear_faults();
    setup.sync_ok(&[]).await;
    assert_calendar_matches(&setup, &sim, "acme", "agenda", CAL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_parameters_never_go_with_a_sync_token() {
    let sim = simulator().await;
    let cal = sim.calendar();
    let ids = cal.seed(CAL, 500);
    let mut src = source();
    src.time_min = Some("2000-01-01T00:00:00Z");
    let setup = Setup::mixed(&sim, &[], &[src], "");
    setup.sync_ok(&[]).await;
    for id in ids.iter().step_by(3) {
        cal.update(CAL, id);
    }
    setup.sync_ok(&[]).await;
    cal.expire_sync_tokens(CAL);
    cal.create(CAL);
    setup.sync_ok(&[]).await;
    cal.create(CAL);
    setup.sync_ok(&[]).await;
    assert_eq!(cal.forbidden_param_requests(), 0);
    assert_calendar_matches(&setup, &sim, "acme", "agenda", CAL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_refreshes_expired_tokens_and_a_revoked_refresh_token_fails_only_its_source() {
    let sim = simulator().await;
    let cal = sim.calendar();
    let ids = cal.seed(CAL, 250);
    cal.seed("other@example.com", 40);
    cal.add_refresh_token("refresh-good-123");
    cal.add_refresh_token("refresh-revoked-456");
    cal.revoke_refresh_token("refresh-revoked-456");
    let mut good = source();
    good.auth = CalAuth::OAuth("refresh-good-123");
    let mut revoked = CalSource::new("acme", "revoked", "other@example.com");
    revoked.auth = CalAuth::OAuth("refresh-revoked-456");
    let setup = Setup::mixed(&sim, &[], &[good, revoked], "");

    let out = setup.run(&["sync"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("acme/agenda: success"), "{err}");
    assert!(
        err.contains("credentials rejected for acme/revoked"),
        "{err}"
    );
    assert!(err.contains("invalid_grant"), "{err}");
    for secret in [
        "refresh-good-123",
        "refresh-revoked-456",
        synchro_simulator::DEFAULT_OAUTH_CLIENT_SECRET,
    ] {
        assert!(!err.contains(secret), "secret leaked: {err}");
    }
    assert_calendar_matches(&setup, &sim, "acme", "agenda", CAL).await;

    // The access token expires upstream: one 401, one refresh, and the sync completes.
    let grants = cal.token_grants();
    cal.expire_access_tokens();
    cal.update(CAL, &ids[0]);
    setup.sync_ok(&["acme/agenda"]).await;
    assert!(cal.token_grants() > grants, "the token was refreshed");
    assert_calendar_matches(&setup, &sim, "acme", "agenda", CAL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_notification_with_the_channel_token_starts_a_sync_within_a_second() {
    let sim = simulator().await;
    let cal = sim.calendar();
    let ids = cal.seed(CAL, 120);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut src = source();
    src.channel_token = Some("channel-secret-789");
    let setup = Setup::mixed(&sim, &[], &[src], "");
    let cfg = std::fs::read_to_string(&setup.config)
        .expect("config")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&setup.config, cfg).expect("config");
    let mut child = setup.spawn(&["run"]);
    let db = setup.db();
    wait_until(Duration::from_secs(30), "the first sync", || {
        let db = db.clone();
        async move { db.exists().await && count_runs(&db, "acme", "agenda", "success").await == 1 }
    })
    .await;

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhooks/calendar/acme/agenda");
    let wrong = client
        .post(&url)
        .header("X-Goog-Channel-Token", "not-the-token")
        .header("X-Goog-Resource-State", "exists")
        .send()
        .await
        .expect("post");
    assert_eq!(wrong.status().as_u16(), 401);
    let missing = client.post(&url).send().await.expect("post");
    assert_eq!(missing.status().as_u16(), 401);
    let unknown = client
        .post(format!(
            "http://127.0.0.1:{port}/webhooks/calendar/acme/nope"
        ))
        .header("X-Goog-Channel-Token", "channel-secret-789")
        .send()
        .await
        .expect("post");
    assert_eq!(unknown.status().as_u16(), 401);

    cal.update(CAL, &ids[3]);
    let before = cal.requests();
    let right = client
        .post(&url)
        .header("X-Goog-Channel-Token", "channel-secret-789")
        .header("X-Goog-Resource-State", "exists")
        .send()
        .await
        .expect("post");
    assert_eq!(right.status().as_u16(), 200);
    wait_until(
        Duration::from_secs(1),
        "a sync request within 1 s",
        || async { cal.requests() > before },
    )
    .await;
    wait_until(Duration::from_secs(10), "the triggered sync", || {
        let db = db.clone();
        async move { count_runs(&db, "acme", "agenda", "success").await == 2 }
    })
    .await;
    signal(&child, "TERM");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    // Exactly two runs: the start-up one and the notified one; the refused
    // notifications triggered nothing.
    assert_eq!(count_runs(&db, "acme", "agenda", "success").await, 2);
    let all_runs = count_runs(&db, "acme", "agenda", "failed").await
        + count_runs(&db, "acme", "agenda", "cancelled").await;
    assert_eq!(all_runs, 0);
    assert_calendar_matches(&setup, &sim, "acme", "agenda", CAL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_starts_the_same_clear_and_resync_by_hand() {
    let sim = simulator().await;
    let cal = sim.calendar();
    let ids = cal.seed(CAL, 300);
    let setup = Setup::mixed(&sim, &[], &[source()], "");
    setup.sync_ok(&[]).await;
    // Deleted upstream without a cancellation: an incremental sync cannot know.
    cal.purge_silently(CAL, &ids[10]);
    setup.sync_ok(&[]).await;
    assert_eq!(setup.export(false).await.len(), 300);

    let out = setup.run(&["reset", "acme/agenda"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        setup.export(false).await.len(),
        300,
        "records stay until the resync"
    );
    setup.sync_ok(&[]).await;
    assert_calendar_matches(&setup, &sim, "acme", "agenda", CAL).await;
    assert_eq!(setup.export(false).await.len(), 299);
}
