//! Leases, fencing and report claims, on every backend.

use std::time::Duration;

use crate::model::{Page, Phase, Progress, Record, SourceKey};
use crate::store::identity::{me, pid_alive};
use crate::store::test_db::{Arg, both_backends};
use crate::store::{Acquired, Lease, Store, StoreError};

fn now_us() -> i64 {
    crate::time::now_us()
}

fn taken(a: Acquired) -> Lease {
    match a {
        Acquired::Taken(l) => l,
        Acquired::Held(h) => panic!("held by {h}"),
    }
}

fn page(id: &str, cursor: &str) -> Page {
    let upserts = if id.is_empty() {
        Vec::new()
    } else {
        vec![Record {
            id: id.into(),
            updated_at: "2024-01-01T00:00:00Z".into(),
            updated_us: 1_704_067_200_000_000,
            data: serde_json::value::to_raw_value(&serde_json::json!({ "id": id })).expect("json"),
        }]
    };
    Page {
        upserts,
        next_progress: Progress {
            phase: Phase::Incremental,
            state: serde_json::json!({ "cursor": cursor }),
        },
        ..Page::default()
    }
}

async fn cursor(store: &Store, key: &SourceKey) -> Option<serde_json::Value> {
    store
        .load_progress(key)
        .await
        .expect("progress")
        .map(|p| p.state["cursor"].clone())
}

const TTL: Duration = Duration::from_secs(30);

/// Queues one due report, `r1` of source `t/s`.
async fn queue_report(store: &Store) {
    store
        .test_sql(
            "INSERT INTO outbox (tenant, source, record_id, completed_at, import_state, created_at) \
             VALUES ('t', 's', 'r1', 'c', 'success', 0)",
            &[],
        )
        .await;
}

both_backends! {
    async fn a_held_lease_is_refused_then_free_again_with_a_higher_epoch(store: Store) {
        let key = SourceKey::new("t", "s");
        let first = taken(store.acquire_lease(&key, "run-a", TTL).await.expect("a"));
        match store.acquire_lease(&key, "run-b", TTL).await.expect("b") {
            Acquired::Held(h) => {
                assert_eq!(h.run_id, "run-a");
                assert_eq!(h.pid, i64::from(std::process::id()));
                assert_eq!(h.host, me().host);
                assert!(h.to_string().starts_with(&format!("pid {} on ", h.pid)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store
                .lease_holder(&key)
                .await
                .expect("holder")
                .map(|h| h.run_id),
            Some("run-a".to_string())
        );
        // Ending the run frees it (the journal's Finish).
        store
            .start_run(&key, "k", "run-a", None)
            .await
            .expect("start");
        store
            .finish_run(
                &key,
                "run-a",
                crate::model::RunOutcome::Success,
                &Default::default(),
            )
            .await
            .expect("finish");
        assert_eq!(store.lease_holder(&key).await.expect("holder"), None);
        let second = taken(store.acquire_lease(&key, "run-b", TTL).await.expect("b"));
        assert!(second.epoch > first.epoch, "{second:?} after {first:?}");
        // Another source's lease is its own.
        taken(
            store
                .acquire_lease(&SourceKey::new("t", "other"), "run-c", TTL)
                .await
                .expect("c"),
        );
    }

    async fn a_lapsed_holder_is_taken_over_and_every_later_write_of_it_is_fenced_off(store: Store) {
        let key = SourceKey::new("t", "s");
        let stale = taken(
            store
                .acquire_lease(&key, "stale", Duration::from_millis(1))
                .await
                .expect("stale"),
        );
        store
            .commit_pages(&stale, "k", vec![page("1", "c1")])
            .await
            .expect("the holder commits while it holds the lease");
        // Our own pid is alive: only the expiry frees the lease.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let taker = taken(
            store
                .acquire_lease(&key, "taker", TTL)
                .await
                .expect("taker"),
        );
        assert!(taker.epoch > stale.epoch);
        store
            .commit_pages(&taker, "k", vec![page("2", "c2")])
            .await
            .expect("taker commits");

        // The stale run wakes: a page with records, a progress-only page
        // (the journal's path) and a renewal are all refused.
        let e = store
            .commit_pages(&stale, "k", vec![page("3", "stale")])
            .await
            .expect_err("fenced");
        assert!(matches!(e, StoreError::LeaseLost { .. }), "{e}");
        let e = store
            .commit_pages(&stale, "k", vec![page("", "stale")])
            .await
            .expect_err("fenced");
        assert!(matches!(e, StoreError::LeaseLost { .. }), "{e}");
        assert!(!store.renew_lease(&stale).await.expect("renew"));
        assert!(store.renew_lease(&taker).await.expect("renew"));
        // Its end does not free the taker's lease.
        store
            .finish_run(
                &key,
                "stale",
                crate::model::RunOutcome::Failed,
                &Default::default(),
            )
            .await
            .expect("finish");
        assert_eq!(
            store
                .lease_holder(&key)
                .await
                .expect("holder")
                .map(|h| h.run_id),
            Some("taker".to_string())
        );

        assert_eq!(cursor(&store, &key).await, Some(serde_json::json!("c2")));
        let n = store
            .test_sql("SELECT CAST(count(*) AS TEXT) FROM records", &[])
            .await;
        assert_eq!(n.as_deref(), Some("2"), "record 3 of the stale run was not stored");
    }

    async fn the_lease_of_a_dead_process_on_this_node_is_taken_at_once(store: Store) {
        let key = SourceKey::new("t", "s");
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let dead = i64::from(child.id());
        child.wait().expect("reap");
        assert!(!pid_alive(dead));
        assert!(pid_alive(i64::from(std::process::id())));
        let far = now_us() + 3_600_000_000;
        for (node, run) in [
            (me().node.as_str(), "dead-here"),
            ("another-node", "dead-there"),
        ] {
            store
                .test_sql(
                    "INSERT INTO leases (tenant, source, epoch, run_id, host, node, pid, \
                     acquired_at, expires_at) VALUES ('t', 's', 7, $1, 'h', $2, $3, 0, $4) \
                     ON CONFLICT (tenant, source) DO UPDATE SET epoch = excluded.epoch, \
                     run_id = excluded.run_id, node = excluded.node, pid = excluded.pid, \
                     expires_at = excluded.expires_at",
                    &[
                        Arg::Text(run.into()),
                        Arg::Text(node.into()),
                        Arg::Int(dead),
                        Arg::Int(far),
                    ],
                )
                .await;
            let got = store
                .acquire_lease(&key, "mine", TTL)
                .await
                .expect("acquire");
            if run == "dead-here" {
                assert_eq!(taken(got).epoch, 8, "taken over at once");
            } else {
                // A pid of another node means nothing here: wait for expiry.
                assert!(matches!(got, Acquired::Held(h) if h.run_id == "dead-there"));
            }
        }
    }



    async fn a_report_is_claimed_by_one_process_until_sent_or_its_claim_lapses(store: Store) {
        let key = SourceKey::new("t", "s");
        queue_report(&store).await;
        let now = now_us();
        let first = store
            .claim_report(&key, now, now + 1_000)
            .await
            .expect("claim");
        let first = first.expect("claimed");
        assert_eq!(first.record_id, "r1");
        assert_eq!(
            store
                .claim_report(&key, now, now + 1_000)
                .await
                .expect("claim"),
            None,
            "claimed already"
        );
        // The claimer died: its claim lapses and the report is due again.
        let later = now + 2_000;
        let again = store
            .claim_report(&key, later, later + 1_000)
            .await
            .expect("claim");
        assert_eq!(again.map(|r| r.id), Some(first.id));
        // A claim of a process of this node that is gone is released at
        // once; a live one (ours, under another instance) is not.
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let dead = child.id();
        child.wait().expect("reap");
        let far = later + 3_600_000_000;
        for (pid, free) in [(i64::from(dead), true), (me().pid, false)] {
            store
                .test_sql(
                    "UPDATE outbox SET claimed_by = $1, claim_expires_at = $2",
                    &[
                        Arg::Text(format!("{}|{pid}|another-instance", me().node)),
                        Arg::Int(far),
                    ],
                )
                .await;
            let got = store
                .claim_report(&key, later, later + 1_000)
                .await
                .expect("claim");
            assert_eq!(got.is_some(), free, "claimer pid {pid}");
        }
        store.report_sent(first.id, later).await.expect("sent");
        assert_eq!(
            store
                .claim_report(&key, i64::MAX / 2, i64::MAX / 2)
                .await
                .expect("claim"),
            None,
            "never again after a success"
        );
    }

    async fn a_claimer_whose_claim_lapsed_cannot_end_the_live_claim_of_another(store: Store) {
        let key = SourceKey::new("t", "s");
        queue_report(&store).await;
        let t = now_us();
        let a = store
            .claim_report(&key, t, t + 1_000)
            .await
            .expect("a")
            .expect("claimed");
        // A's claim lapses; B (another process) claims and is sending.
        store
            .test_sql(
                "UPDATE outbox SET claimed_by = 'other-node|1|b', claim_expires_at = $1",
                &[Arg::Int(t + 100_000_000)],
            )
            .await;
        // A's late answer changes nothing: the report stays B's.
        store
            .report_retry(a.id, "HTTP 503", t + 3_000)
            .await
            .expect("retry");
        store
            .report_refused(a.id, "HTTP 400")
            .await
            .expect("refused");
        assert_eq!(
            store
                .claim_report(&key, t + 3_000, t + 4_000)
                .await
                .expect("c")
                .map(|r| r.id),
            None,
            "a third claimer got the report while B is sending it"
        );
        // B's success stands, and nothing turns a sent report back.
        store.report_sent(a.id, t + 5_000).await.expect("sent");
        store.report_refused(a.id, "late").await.expect("refused");
        let status = store.test_sql("SELECT status FROM outbox", &[]).await;
        assert_eq!(status.as_deref(), Some("sent"));
    }

    async fn a_daemon_is_listed_while_its_heartbeats_come_and_gone_after(store: Store) {
        assert!(store.replicas().await.expect("replicas").is_empty());
        let started = now_us();
        store.heartbeat(started).await.expect("heartbeat");
        store.heartbeat(started).await.expect("heartbeat again");
        let list = store.replicas().await.expect("replicas");
        assert_eq!(list.len(), 1, "one row per daemon: {list:?}");
        assert!(list[0].live);
        assert_eq!(list[0].pid, me().pid);
        assert_eq!(list[0].started_us, started);
        // Three heartbeats missed: gone, still listed.
        store
            .test_sql(
                "UPDATE replicas SET seen_at = seen_at - $1",
                &[Arg::Int(16_000_000)],
            )
            .await;
        let list = store.replicas().await.expect("replicas");
        assert!(!list[0].live, "{list:?}");
        store.leave().await.expect("leave");
        assert!(store.replicas().await.expect("replicas").is_empty());
    }
}
