//! `forget` and the stored-source listings, on every backend.

use crate::model::RunOutcome;
use crate::model::SourceKey;
use crate::model::{Page, Phase, Progress, Record, ReportOutcome};
use crate::store::Store;
use crate::store::test_db::both_backends;
use crate::store::{Forgotten, StoreError};

fn record(id: &str) -> Record {
    let data =
        serde_json::json!({ "id": id, "state": "completed", "completed": "2024-01-02T00:00:00Z" });
    Record {
        id: id.into(),
        updated_at: "2024-01-01T00:00:00Z".into(),
        updated_us: crate::time::parse_us("2024-01-01T00:00:00Z").expect("ts"),
        data: serde_json::value::to_raw_value(&data).expect("payload"),
    }
}

fn page(ids: &[&str]) -> Page {
    Page {
        upserts: ids.iter().map(|id| record(id)).collect(),
        deletes: Vec::new(),
        next_progress: Progress {
            phase: Phase::Incremental,
            state: serde_json::json!({ "cursor": "c" }),
        },
        done: true,
        listing: None,
        reports: Vec::new(),
    }
}

/// A source with two records, progress, one finished run and, if
/// `report`, one pending import report.
async fn fill(store: &Store, key: &SourceKey, report: bool) {
    let mut p = page(&["1", "2"]);
    if report {
        p.reports.push(crate::model::Report {
            record_id: "1".into(),
            version_us: Some(p.upserts[0].updated_us),
            completed_at: "2024-01-02T00:00:00Z".into(),
            outcome: ReportOutcome::Success,
        });
    }
    store.commit_page(key, "content", &p).await.expect("commit");
    let run = format!("run-{key}");
    store
        .start_run(key, "content", &run, None)
        .await
        .expect("start");
    store
        .finish_run(key, &run, RunOutcome::Success, &Default::default())
        .await
        .expect("finish");
}

both_backends! {
    async fn forget_deletes_every_trace_of_its_sources_and_nothing_else(store: Store) {
        let (old, kept) = (
            SourceKey::new("acme", "old"),
            SourceKey::new("acme", "kept"),
        );
        fill(&store, &old, true).await;
        fill(&store, &kept, true).await;
        assert_eq!(
            store.stored_sources().await.expect("list"),
            [kept.clone(), old.clone()]
        );
        assert!(store.is_stored(&old).await.expect("probe"));
        assert!(
            !store
                .is_stored(&SourceKey::new("acme", "never"))
                .await
                .expect("probe")
        );

        let gone = store
            .forget_sources(std::slice::from_ref(&old))
            .await
            .expect("forget");
        assert_eq!(
            gone,
            [(
                old.clone(),
                Forgotten {
                    records: 2,
                    progress: 1,
                    runs: 1,
                    reports: 1
                }
            )]
        );
        assert_eq!(
            store.stored_sources().await.expect("list"),
            [kept.clone()].as_slice()
        );
        assert!(!store.is_stored(&old).await.expect("probe"));
        let st = store.source_status(&kept, "content").await.expect("status");
        assert_eq!((st.records, st.pending_reports), (2, 1));
        assert!(st.last_success.is_some());
    }

    async fn a_source_being_synced_is_not_forgotten_and_a_free_lease_goes_with_it(store: Store) {
        let key = SourceKey::new("acme", "gone");
        fill(&store, &key, false).await;
        let held = store
            .acquire_lease(&key, "live", std::time::Duration::from_secs(30))
            .await
            .expect("lease");
        let crate::store::Acquired::Taken(lease) = held else {
            panic!("{held:?}");
        };
        let e = store
            .forget_sources(std::slice::from_ref(&key))
            .await
            .expect_err("busy");
        assert!(
            e.to_string()
                .contains("acme/gone is being synced now by pid"),
            "{e}"
        );
        assert!(
            store.is_stored(&key).await.expect("stored"),
            "nothing was deleted"
        );
        store.release_lease(&lease).await.expect("release");
        store
            .forget_sources(std::slice::from_ref(&key))
            .await
            .expect("forget");
        assert!(!store.is_stored(&key).await.expect("stored"));
        // The lease row went too: the old run's fence can never pass again.
        let e = store
            .commit_pages(&lease, "k", vec![Page::default()])
            .await
            .expect_err("fenced");
        assert!(matches!(e, StoreError::LeaseLost { .. }), "{e}");
    }
}
