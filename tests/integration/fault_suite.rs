//! The fault-injection suite: for 50 rounds, upstream changes across all
//! three kinds meet 500s, 429s, 503s, timeouts, connection resets, malformed
//! bodies, a failing import endpoint and SIGKILLs, mixed at random. Every
//! round ends with each source's export equal to its upstream and every
//! completed content request reported exactly once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::*;
use rand::Rng;
use rand::seq::IndexedRandom;
use synchro_simulator::{Fault, ImportMode};

const ROUNDS: usize = 50;
const DEMARCHE: i64 = 501;
const CAL: &str = "chaos@example.com";

/// A random fault, or none.
fn random_fault(rng: &mut impl Rng) -> Option<Fault> {
    let faults = [
        Fault::Http500,
        Fault::Http429 {
            retry_after_secs: Some(0),
        },
        Fault::Http503 {
            retry_after_secs: None,
        },
        Fault::RateLimit403,
        Fault::Reset,
        Fault::MalformedJson,
        // Longer than the client's 1 s timeout.
        Fault::Slow(Duration::from_millis(1_300)),
        Fault::Pass,
    ];
    if rng.random_bool(0.5) {
        return None;
    }
    let f = faults.choose(rng)?.clone();
    // Timeouts cost a second each: keep them rare.
    if matches!(f, Fault::Slow(_)) && rng.random_bool(0.7) {
        return Some(Fault::Http500);
    }
    Some(f)
}

/// Import-state reports still waiting in the outbox.
async fn content_pending(setup: &Setup) -> i64 {
    let out = setup.run(&["status", "--json"]).await;
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    rows.as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["pending_reports"].as_i64())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rounds_of_random_faults_and_kills_always_converge() {
    let sim = simulator().await;
    let (ds, cal, content) = (sim.ds(), sim.calendar(), sim.content());
    let dossiers = ds.seed(DEMARCHE, 400);
    let events = cal.seed(CAL, 400);
    content.seed(300, 8);
    let mut fresh: Vec<i64> = content
        .api_requests()
        .iter()
        .filter(|r| r["state"] != "completed")
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    let mut ds_src = DsSource::new("acme", "permits", DEMARCHE);
    ds_src.page_size = 50;
    let mut cal_src = CalSource::new("acme", "agenda", CAL);
    cal_src.max_results = 50;
    let setup = Setup::build_all(
        &sim,
        &[ds_src],
        &[cal_src],
        &[ContentSource::new("globex", "translations")],
    );
    setup.edit_config("timeout = \"5s\"", "timeout = \"1s\"");
    setup.edit_config("max_retries = 4", "max_retries = 8");
    setup.edit_config("max_backoff = \"2s\"", "max_backoff = \"100ms\"");

    let mut rng = seeded_rng("fifty_rounds_of_random_faults_and_kills_always_converge");
    let mut hidden = BTreeSet::new();
    let started = Instant::now();
    let (mut kills, mut failed_syncs) = (0, 0);
    for round in 0..ROUNDS {
        // Upstream changes.
        for _ in 0..3 {
            let n = *dossiers.choose(&mut rng).expect("dossier");
            if !hidden.contains(&n) {
                ds.update(n);
            }
            let e = events.choose(&mut rng).expect("event");
            cal.update(CAL, e);
        }
        ds.create(DEMARCHE);
        cal.create(CAL);
        if round % 5 == 2 {
            let n = dossiers[round * 3];
            if round % 10 == 2 {
                ds.hide(n);
            } else {
                ds.purge(n, None);
            }
            hidden.insert(n);
            cal.cancel(CAL, &events[round * 3]);
        }
        for _ in 0..2 {
            if let Some(id) = fresh.pop() {
                content.set_state(id, "completed");
            }
        }
        for id in fresh.iter().take(2) {
            let state = ["pending", "confirmed", "canceled", "failed"]
                .choose(&mut rng)
                .expect("state");
            content.set_state(*id, state);
        }

        // Faults on every upstream, and sometimes on the import endpoint.
        for _ in 0..2 {
            if let Some(f) = random_fault(&mut rng) {
                ds.inject(f, 1);
            }
            if let Some(f) = random_fault(&mut rng) {
                cal.inject(f, 1);
            }
            if let Some(f) = random_fault(&mut rng) {
                content.inject(f, 1);
            }
        }
        let import_down = rng.random_bool(0.3);
        content.set_import_mode(if import_down {
            ImportMode::Fail
        } else {
            ImportMode::Ok
        });

        if round % 4 == 1 {
            // A SIGKILL somewhere in the run. Reports cannot succeed
            // meanwhile: a kill between Contentor's 200 and the outbox
            // update would send that report again (at least once is the
            // guarantee; `content_sync.rs` tests the kill window itself).
            content.set_import_mode(ImportMode::Fail);
            let before = ds.requests() + cal.requests() + content.requests();
            let mut child = setup.spawn(&["sync"]);
            let deadline = Instant::now() + Duration::from_secs(30);
            while ds.requests() + cal.requests() + content.requests() == before {
                if child.try_wait().expect("try_wait").is_some() {
                    break;
                }
                assert!(Instant::now() < deadline, "round {round}: no request");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            kills += 1;
            content.set_import_mode(if import_down {
                ImportMode::Fail
            } else {
                ImportMode::Ok
            });
        }

        // Converge: a failed run is followed by another, as the next tick
        // would. The first one still meets the import endpoint as chosen.
        let mut attempt = 0;
        loop {
            let out = setup.run(&["sync"]).await;
            content.set_import_mode(ImportMode::Ok);
            if out.status.success() && content_pending(&setup).await == 0 {
                break;
            }
            failed_syncs += 1;
            attempt += 1;
            assert!(
                attempt < 6,
                "round {round}: no convergence:\n{}",
                stderr(&out)
            );
        }
        ds.clear_faults();
        cal.clear_faults();
        content.clear_faults();

        assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;
        assert_calendar_matches(&setup, &sim, "acme", "agenda", CAL).await;
        assert_content_matches(&setup, &sim, "globex", "translations", &[]).await;
        let mut expected: Vec<(i64, String)> = content
            .api_requests()
            .iter()
            .filter(|r| r["state"] == "completed")
            .map(|r| {
                (
                    r["id"].as_i64().expect("id"),
                    r["completed"].as_str().expect("date").to_string(),
                )
            })
            .collect();
        expected.sort();
        let mut reported: Vec<(i64, String)> = content
            .reports()
            .into_iter()
            .filter(|r| r.import_state == "success")
            .map(|r| (r.id, r.completed.unwrap_or_default()))
            .collect();
        reported.sort();
        assert_eq!(
            reported, expected,
            "round {round}: each completion reported exactly once"
        );
    }
    eprintln!(
        "{ROUNDS} rounds, {kills} SIGKILLs, {failed_syncs} syncs redone (failed run or reports left), in {:.0?}",
        started.elapsed()
    );
    assert!(kills >= 10);
    assert!(failed_syncs > 0, "the faults did fail some runs");
}
