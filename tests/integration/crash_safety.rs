//! The atomicity and idempotence rules under SIGKILL: a sync killed at any
//! instant loses nothing and duplicates nothing once it is run again.

use std::time::{Duration, Instant};

use crate::common::*;
use rand::Rng;
use synchro_simulator::Fault;

const DEMARCHE: i64 = 777;
const TRIALS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_and_duplicates_nothing() {
    let sim = simulator().await;
    let numbers = sim.ds().seed(DEMARCHE, 1_500);
    let mut source = DsSource::new("acme", "permits", DEMARCHE);
    source.page_size = 50;
    let setup = Setup::new(&sim, &[source]);
    // Slow pages so that the kills land inside requests and commits.
    sim.ds()
        .inject(Fault::Slow(Duration::from_millis(15)), 100_000);

    // No dossier changes once listed, so nothing is listed twice: a page
    // lost to a crash would stay lost, and the final comparison catches it.
    let mut rng = seeded_rng("sigkill_at_random_points_loses_and_duplicates_nothing");
    let mut killed_mid_run = 0;
    for trial in 0..TRIALS {
        // The first half interrupts the full listing (30 pages, at most 4
        // per trial); the second half interrupts incremental runs of at
        // least 3 pages of new dossiers each, plus deletions.
        let ds = sim.ds();
        if trial >= TRIALS / 2 {
            let k = trial - TRIALS / 2;
            for _ in 0..150 {
                ds.create(DEMARCHE);
            }
            ds.hide(numbers[1_200 + k]);
            ds.purge(numbers[1_300 + k], None);
        }

        let before = sim.ds().requests();
        let mut child = setup.spawn(&["sync"]);
        let pages = rng.random_range(1..=if trial < TRIALS / 2 { 4 } else { 3 });
        let deadline = Instant::now() + Duration::from_secs(30);
        while sim.ds().requests() - before < pages {
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "trial {trial}: no progress");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..25))).await;
        if child.try_wait().expect("try_wait").is_none() {
            killed_mid_run += 1;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    assert!(
        killed_mid_run >= TRIALS - 1,
        "only {killed_mid_run} of {TRIALS} kills landed during a run"
    );

    sim.ds().clear_faults();
    setup.sync_ok(&[]).await;
    assert_export_matches(&setup, &sim, "acme", "permits", DEMARCHE).await;

    // The database itself is sound.
    assert_integrity(&setup.db()).await;
}
