//! Démarches Simplifiées sync, end to end: the real binary against the
//! simulated GraphQL API on 127.0.0.1.

use std::time::Duration;

use crate::common::*;
use synchro_simulator::Fault;

const DEMARCHE: i64 = 4242;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_of_2500_dossiers_equals_upstream() {
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 2_500);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", DEMARCHE)]);

    let before = sim.ds().requests();
    let out = setup.sync_ok(&[]).await;
    let requests = sim.ds().requests() - before;
    // 25 pages of dossiers (the last one says hasNextPage=false); the
    // first page of both deletion listings rides on the first request.
    assert_eq!(requests, 25, "requests for 2,500 dossiers");
    assert!(
        stderr(&out).contains("acme/permits: success"),
        "{}",
        stderr(&out)
    );

    assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;
}

/// The simulator answers synchro's page requests without its GraphQL
/// engine only when synchro sends the document it keeps a copy of
/// (`synchro_simulator::demarches::QUERY`); the bench's demarches figures
/// depend on it. Fails when synchro's `query.graphql` changes alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchro_pages_take_the_simulators_fast_path() {
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 250);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", DEMARCHE)]);

    let (requests, fast) = (sim.ds().requests(), sim.ds().fast_answers());
    setup.sync_ok(&[]).await;
    let requests = sim.ds().requests() - requests;
    let fast = sim.ds().fast_answers() - fast;
    // The first request (`getDemarcheWithDeletions`) goes to the engine,
    // every following page (`getDemarche`) to the fast path.
    assert_eq!(requests, 3, "requests for 250 dossiers");
    assert_eq!(
        fast,
        requests - 1,
        "pages served by the fast path: synchro's query.graphql and the \
         simulator's copy (crates/simulator/src/demarches/query.graphql) differ"
    );
    assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_sync_follows_updates_creations_and_deletions() {
    let sim = simulator().await;
    let numbers = sim.ds().seed(DEMARCHE, 600);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", DEMARCHE)]);
    setup.sync_ok(&[]).await;

    let ds = sim.ds();
    for n in numbers.iter().step_by(7) {
        ds.update(*n);
    }
    let created: Vec<i64> = (0..40).map(|_| ds.create(DEMARCHE)).collect();
    ds.update(created[0]);
    ds.hide(numbers[3]); // pending deletion, reversible
    ds.hide(numbers[4]);
    ds.purge(numbers[5], None); // gone for good
    ds.purge(numbers[6], Some(Duration::from_secs(20 * 24 * 3600))); // backdated
    ds.hide(created[1]);
    setup.sync_ok(&[]).await;
    assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;

    // A hidden dossier restored upstream comes back to life.
    ds.restore(numbers[3]);
    ds.update(numbers[10]);
    setup.sync_ok(&[]).await;
    assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;
    let all = setup.export(true).await;
    let restored = all
        .iter()
        .find(|l| l["id"].as_str() == Some(numbers[3].to_string().as_str()))
        .expect("restored dossier exported");
    assert_eq!(restored["deleted"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_listings_longer_than_a_page_are_followed_to_the_end() {
    let sim = simulator().await;
    let numbers = sim.ds().seed(DEMARCHE, 120);
    let mut source = DsSource::new("acme", "permits", DEMARCHE);
    source.page_size = 10;
    let setup = Setup::new(&sim, &[source]);
    setup.sync_ok(&[]).await;

    // 25 pending deletions and 35 purged dossiers: 3 and 4 pages of 10.
    let ds = sim.ds();
    for n in &numbers[..25] {
        ds.hide(*n);
    }
    for n in &numbers[25..60] {
        ds.purge(*n, None);
    }
    ds.update(numbers[100]);
    let before = ds.requests();
    let out = setup.sync_ok(&[]).await;
    // The first request carries the dossiers page and the first page of
    // both listings; then 2 more pages of pending deletions, 3 of deletions.
    assert_eq!(ds.requests() - before, 1 + 2 + 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 upserted, 60 deleted"),
        "{}",
        stderr(&out)
    );
    assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;

    // Nothing changed since, but the deletion look-back lists the same
    // recent deletions again (a `dateSupression` can be backdated): the
    // same pages, nothing new stored.
    let before = ds.requests();
    let out = setup.sync_ok(&[]).await;
    assert_eq!(ds.requests() - before, 1 + 2 + 3);
    assert!(
        stderr(&out).contains("0 upserted, 0 deleted"),
        "{}",
        stderr(&out)
    );
    assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sync_without_changes_changes_nothing() {
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 450);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", DEMARCHE)]);
    setup.sync_ok(&[]).await;
    let first = setup.export(true).await;
    // The SQLite file does not grow (Postgres keeps its files itself).
    let db_before = setup
        .pg
        .is_none()
        .then(|| std::fs::metadata(setup.db_path()).expect("db").len());

    let before = sim.ds().requests();
    let out = setup.sync_ok(&[]).await;
    let requests = sim.ds().requests() - before;
    // One request: dossiers after the stored cursor (empty) and the first
    // page of both deletion listings (empty), in one GraphQL document.
    assert_eq!(requests, 1, "no-change sync made {requests} requests");
    assert!(
        stderr(&out).contains("0 upserted, 0 deleted"),
        "{}",
        stderr(&out)
    );
    assert_eq!(setup.export(true).await, first);
    if let Some(db_before) = db_before {
        assert!(std::fs::metadata(setup.db_path()).expect("db").len() <= db_before + 4096 * 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_rate_limits_are_retried_until_the_sync_converges() {
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 350);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", DEMARCHE)]);
    sim.ds().inject(Fault::Http500, 2);
    sim.ds().inject(
        Fault::Http429 {
            retry_after_secs: Some(1),
        },
        1,
    );
    sim.ds().inject(
        Fault::Http503 {
            retry_after_secs: None,
        },
        1,
    );
    let out = setup.sync_ok(&[]).await;
    let err = stderr(&out);
    assert!(err.contains("retry"), "retries are logged: {err}");
    assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_error_fails_the_run_without_advancing() {
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 300);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", DEMARCHE)]);
    // The first page succeeds, the second answers a GraphQL error.
    sim.ds().inject(Fault::Pass, 1);
    sim.ds().inject(
        Fault::GraphqlError {
            code: "internal_server_error".into(),
            message: "something broke upstream".into(),
        },
        1,
    );
    let out = setup.run(&["sync"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("something broke upstream"), "{err}");
    // Exactly the first page is stored.
    assert_eq!(setup.export(false).await.len(), 100);

    let status = setup.run(&["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert!(
        status[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("something broke upstream")),
        "{status}"
    );

    // The next run resumes after the stored page and converges.
    setup.sync_ok(&[]).await;
    assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_fails_the_run_with_the_url_and_stores_nothing_of_it() {
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 150);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", DEMARCHE)]);
    sim.ds().inject(Fault::MalformedJson, 1);
    let out = setup.run(&["sync"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("malformed JSON"), "{err}");
    assert!(err.contains(&sim.ds_endpoint()), "names the URL: {err}");
    assert!(setup.export(true).await.is_empty());
    setup.sync_ok(&[]).await;
    assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_fail_only_that_source() {
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 120);
    sim.ds().seed(DEMARCHE + 1, 80);
    sim.ds().add_token("expired-token-123", None);
    sim.ds().expire_token("expired-token-123");
    let mut bad = DsSource::new("acme", "expired", DEMARCHE);
    bad.token = "expired-token-123";
    let mut forbidden = DsSource::new("acme", "forbidden", DEMARCHE);
    forbidden.token = "never-issued-456";
    let setup = Setup::new(
        &sim,
        &[bad, forbidden, DsSource::new("acme", "good", DEMARCHE + 1)],
    );
    let out = setup.run(&["sync"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("credentials rejected for acme/expired"),
        "{err}"
    );
    assert!(
        err.contains("credentials rejected for acme/forbidden"),
        "{err}"
    );
    assert!(err.contains("acme/good: success"), "{err}");
    assert!(!err.contains("expired-token-123"), "token leaked: {err}");
    assert!(!err.contains("never-issued-456"), "token leaked: {err}");
    assert_export_matches(&setup, &sim, "acme", "good", DEMARCHE + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_source_on_the_command_line_exits_2() {
    let sim = simulator().await;
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", DEMARCHE)]);
    let out = setup.run(&["sync", "acme/nope"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown source acme/nope"),
        "{}",
        stderr(&out)
    );
    let out = setup.run(&["export", "not-a-name"]).await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_makes_the_next_sync_a_full_one() {
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 250);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", DEMARCHE)]);
    setup.sync_ok(&[]).await;
    let out = setup.run(&["reset", "acme/permits"]).await;
    assert!(out.status.success());
    // Records are kept until the resync replaces them.
    assert_eq!(setup.export(false).await.len(), 250);
    let before = sim.ds().requests();
    setup.sync_ok(&["acme/permits"]).await;
    assert!(
        sim.ds().requests() - before >= 3,
        "a full listing was made (3 pages of 100)"
    );
    assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;
}
