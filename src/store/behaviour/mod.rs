//! The store's rules, as every backend must keep them: the upsert and
//! tombstone rules, full listings, the report outbox, progress. Each test
//! runs on SQLite and on Postgres (see [`super::test_db`]).

mod changes;
mod forget;
mod leases;
mod views;

use serde_json::json;

use crate::model::SourceKey;
use crate::model::{Listing, Page, Phase, Progress, Record, Tombstone};
use crate::store::Store;
use crate::store::copy::{CopyRow, Table};
use crate::store::test_db::{TestDb, both_backends};

pub(crate) fn raw(value: serde_json::Value) -> crate::model::Payload {
    serde_json::value::to_raw_value(&value).expect("encodable")
}

pub(crate) fn rec(id: &str, at: &str, v: i64) -> Record {
    Record {
        id: id.into(),
        updated_at: at.into(),
        updated_us: crate::time::parse_us(at).expect("ts"),
        data: raw(json!({ "id": id, "v": v })),
    }
}

pub(crate) fn page(upserts: Vec<Record>, deletes: Vec<Tombstone>, cursor: &str) -> Page {
    Page {
        upserts,
        deletes,
        next_progress: Progress {
            phase: Phase::Incremental,
            state: json!({ "cursor": cursor }),
        },
        done: false,
        listing: None,
        reports: Vec::new(),
    }
}

pub(crate) fn tomb(id: &str) -> Tombstone {
    Tombstone {
        id: id.into(),
        deleted_at: None,
        data: raw(json!({ "id": id, "status": "cancelled" })),
    }
}

pub(crate) async fn export(
    store: &Store,
    deleted: bool,
) -> Vec<(String, bool, String, serde_json::Value)> {
    let mut out = Vec::new();
    store
        .export(&[], deleted, |r| {
            let data: serde_json::Value = serde_json::from_str(r.data.get()).expect("json");
            out.push((r.id, r.deleted, r.updated_at, data));
            Ok(())
        })
        .await
        .expect("export");
    out
}

/// Every row of the records table but when it was stored, in key order:
/// what two databases that received the same pages must agree on.
async fn table(store: &Store) -> Vec<(String, String, i64, bool, String, Option<i64>)> {
    let rows = store
        .copy_out(Table::Records, None, i64::MAX)
        .await
        .expect("records");
    rows.into_iter()
        .filter_map(|row| match row {
            CopyRow::Record {
                id,
                updated_at,
                updated_us,
                deleted,
                data,
                listing,
                ..
            } => Some((id, updated_at, updated_us, deleted, data, listing)),
            _ => None,
        })
        .collect()
}

/// The queued import reports, as (record, completion) in id order.
async fn reports(store: &Store) -> Vec<(String, String)> {
    let rows = store
        .copy_out(Table::Outbox, None, i64::MAX)
        .await
        .expect("outbox");
    rows.into_iter()
        .filter_map(|row| match row {
            CopyRow::Report {
                record_id,
                completed_at,
                ..
            } => Some((record_id, completed_at)),
            _ => None,
        })
        .collect()
}

both_backends! {
    async fn newer_wins_older_never_overwrites_and_refetch_changes_nothing(store: Store) {
        let key = SourceKey::new("t", "s");
        let s = store
            .commit_page(
                &key,
                "k",
                &page(
                    vec![
                        rec("1", "2024-01-01T10:00:00Z", 1),
                        rec("2", "2024-01-01T10:00:00Z", 1),
                    ],
                    vec![],
                    "c1",
                ),
            )
            .await
            .expect("commit");
        assert_eq!(s.upserted, 2);

        // Same page again: nothing changes.
        let s = store
            .commit_page(
                &key,
                "k",
                &page(vec![rec("1", "2024-01-01T10:00:00Z", 1)], vec![], "c1"),
            )
            .await
            .expect("commit");
        assert_eq!(s.upserted, 0);

        // Older version of 1 is ignored; newer version of 2 (another offset) wins.
        let s = store
            .commit_page(
                &key,
                "k",
                &page(
                    vec![
                        rec("1", "2024-01-01T09:00:00Z", 0),
                        rec("2", "2024-01-01T12:00:00+01:00", 2),
                    ],
                    vec![],
                    "c2",
                ),
            )
            .await
            .expect("commit");
        assert_eq!(s.upserted, 1);
        let rows = export(&store, false).await;
        assert_eq!(rows[0].3["v"], 1);
        assert_eq!(rows[1].3["v"], 2);
        assert_eq!(
            rows[1].2, "2024-01-01T12:00:00+01:00",
            "updated_at kept as received"
        );

        // Same instant, different payload (two edits within one second): latest received wins.
        let s = store
            .commit_page(
                &key,
                "k",
                &page(vec![rec("1", "2024-01-01T10:00:00Z", 5)], vec![], "c3"),
            )
            .await
            .expect("commit");
        assert_eq!(s.upserted, 1);
        assert_eq!(export(&store, false).await[0].3["v"], 5);

        let p = store
            .load_progress(&key)
            .await
            .expect("load")
            .expect("some");
        assert_eq!(p.state["cursor"], "c3");
        assert_eq!(p.phase, Phase::Incremental);
    }

    async fn tombstones_hide_records_and_only_a_newer_version_revives_them(store: Store) {
        let key = SourceKey::new("t", "s");
        store
            .commit_page(
                &key,
                "k",
                &page(vec![rec("1", "2024-01-01T10:00:00Z", 1)], vec![], "a"),
            )
            .await
            .expect("commit");
        let stone = |id: &str| Tombstone {
            id: id.into(),
            deleted_at: Some("2024-01-02T00:00:00Z".into()),
            data: raw(json!({ "number": id, "reason": "user_request" })),
        };
        let s = store
            .commit_page(&key, "k", &page(vec![], vec![stone("1"), stone("9")], "b"))
            .await
            .expect("commit");
        assert_eq!(s.deleted, 2);
        assert!(export(&store, false).await.is_empty());
        let all = export(&store, true).await;
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].3["v"], 1, "a tombstone keeps the last known payload");
        assert_eq!(
            all[1].3["reason"], "user_request",
            "an unseen deletion stores the notice"
        );

        // Re-applying the same deletions changes nothing.
        let s = store
            .commit_page(&key, "k", &page(vec![], vec![stone("1")], "c"))
            .await
            .expect("commit");
        assert_eq!(s.deleted, 0);

        // The same old version does not revive it; a newer one does.
        store
            .commit_page(
                &key,
                "k",
                &page(vec![rec("1", "2024-01-01T10:00:00Z", 1)], vec![], "d"),
            )
            .await
            .expect("commit");
        assert!(export(&store, false).await.is_empty());
        store
            .commit_page(
                &key,
                "k",
                &page(vec![rec("1", "2024-01-03T10:00:00Z", 2)], vec![], "e"),
            )
            .await
            .expect("commit");
        let live = export(&store, false).await;
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].3["v"], 2);
    }

    async fn reset_forgets_progress_but_keeps_records(store: Store) {
        let key = SourceKey::new("t", "s");
        store
            .commit_page(
                &key,
                "k",
                &page(vec![rec("1", "2024-01-01T10:00:00Z", 1)], vec![], "x"),
            )
            .await
            .expect("commit");
        assert!(store.reset_progress(&key).await.expect("reset"));
        assert!(store.load_progress(&key).await.expect("load").is_none());
        assert_eq!(export(&store, false).await.len(), 1);
        assert!(!store.reset_progress(&key).await.expect("reset"));
    }

    async fn a_completed_full_listing_removes_only_what_it_did_not_return(store: Store) {
        let key = SourceKey::new("t", "cal");
        let other = SourceKey::new("t", "other");
        let old = page(
            vec![
                rec("a", "2024-01-01T10:00:00Z", 1),
                rec("b", "2024-01-01T10:00:00Z", 1),
                rec("gone", "2024-01-01T10:00:00Z", 1),
            ],
            vec![tomb("old-stub")],
            "t1",
        );
        store.commit_page(&key, "k", &old).await.expect("commit");
        store
            .commit_page(
                &other,
                "k",
                &page(vec![rec("x", "2024-01-01T10:00:00Z", 1)], vec![], "o"),
            )
            .await
            .expect("commit");

        // A resync in two pages: the first page leaves everything readable.
        let mut p1 = page(vec![rec("a", "2024-01-01T10:00:00Z", 1)], vec![], "p1");
        p1.listing = Some(Listing {
            generation: 7,
            complete: false,
        });
        let s = store.commit_page(&key, "k", &p1).await.expect("commit");
        assert_eq!((s.upserted, s.removed), (0, 0));
        assert_eq!(export(&store, true).await.len(), 5);

        let mut p2 = page(
            vec![
                rec("b", "2024-01-02T10:00:00Z", 2),
                rec("new", "2024-01-02T10:00:00Z", 1),
            ],
            vec![tomb("c-stub")],
            "done",
        );
        p2.listing = Some(Listing {
            generation: 7,
            complete: true,
        });
        let s = store.commit_page(&key, "k", &p2).await.expect("commit");
        assert_eq!(s.removed, 1, "`gone`; the old tombstone stays one");
        let rows = export(&store, true).await;
        let ids = |deleted: bool| -> Vec<&str> {
            rows.iter()
                .filter(|r| r.1 == deleted)
                .map(|r| r.0.as_str())
                .collect()
        };
        assert_eq!(ids(false), ["a", "b", "new", "x"], "other sources untouched");
        // Removed by the sweep, `gone` is a tombstone, as visible to change
        // readers as any deletion.
        assert_eq!(ids(true), ["c-stub", "gone", "old-stub"]);
    }

    async fn reports_are_queued_once_per_completion_and_only_for_stored_versions(store: Store) {
        use crate::model::{Report, ReportOutcome};
        let key = SourceKey::new("t", "content");
        let owed = |r: &Record, completed: &str| Report {
            record_id: r.id.clone(),
            version_us: Some(r.updated_us),
            completed_at: completed.into(),
            outcome: ReportOutcome::Success,
        };
        let newer = rec("7", "2024-01-02T10:00:00Z", 2);
        let mut p = page(vec![newer.clone()], vec![], "a");
        p.reports = vec![owed(&newer, "2024-01-02T10:00:00Z")];
        assert_eq!(
            store
                .commit_page(&key, "k", &p)
                .await
                .expect("commit")
                .reports,
            1
        );
        // The same completion again (refetch, webhook, restart): nothing new.
        assert_eq!(
            store
                .commit_page(&key, "k", &p)
                .await
                .expect("commit")
                .reports,
            0
        );
        // An older completed version is refused by the upsert: no report for it.
        let older = rec("7", "2024-01-01T10:00:00Z", 1);
        let mut p = page(vec![older.clone()], vec![], "b");
        p.reports = vec![owed(&older, "2024-01-01T10:00:00Z")];
        assert_eq!(
            store
                .commit_records(&key, "k", p.clone())
                .await
                .expect("commit")
                .reports,
            0
        );
        // A request that could not be stored still gets its `fail` report.
        let mut p = page(vec![], vec![], "c");
        p.reports = vec![Report {
            record_id: "8".into(),
            version_us: None,
            completed_at: "2024-01-03T00:00:00Z".into(),
            outcome: ReportOutcome::Fail("bad fields".into()),
        }];
        assert_eq!(
            store
                .commit_page(&key, "k", &p)
                .await
                .expect("commit")
                .reports,
            1
        );

        let due = store.due_reports(&key, i64::MAX, 10).await.expect("due");
        let got: Vec<(&str, &str, Option<&str>)> = due
            .iter()
            .map(|r| {
                (
                    r.record_id.as_str(),
                    r.import_state.as_str(),
                    r.message.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [("7", "success", None), ("8", "fail", Some("bad fields"))]
        );
        // The reporter claims a report before it sends it (and only a claimer
        // may record a retry).
        for _ in 0..2 {
            store
                .claim_report(&key, 0, i64::MAX / 2)
                .await
                .expect("claim")
                .expect("due");
        }
        store.report_sent(due[0].id, 1).await.expect("sent");
        store
            .report_retry(due[1].id, "HTTP 500", i64::MAX - 1)
            .await
            .expect("retry");
        assert!(
            store
                .due_reports(&key, 0, 10)
                .await
                .expect("due")
                .is_empty()
        );
        assert_eq!(store.pending_report_count(&key).await.expect("count"), 1);
        // After a success, the same completion is never queued again, even
        // after a reset.
        store.reset_progress(&key).await.expect("reset");
        let mut p = page(vec![newer.clone()], vec![], "d");
        p.reports = vec![owed(&newer, "2024-01-02T10:00:00Z")];
        assert_eq!(
            store
                .commit_page(&key, "k", &p)
                .await
                .expect("commit")
                .reports,
            0
        );
    }

    /// A page that only moves the progress (a no-change run) is saved without a
    /// transaction of its own, and its progress is what the next run reads.
    async fn a_progress_only_page_saves_the_progress(store: Store) {
        let key = SourceKey::new("t", "s");
        store
            .commit_page(
                &key,
                "k",
                &page(vec![rec("1", "2024-01-01T10:00:00Z", 1)], vec![], "one"),
            )
            .await
            .expect("commit");
        let stats = store
            .commit_page(&key, "k", &page(vec![], vec![], "two"))
            .await
            .expect("progress only");
        assert_eq!(stats, crate::store::PageStats::default());
        let p = store
            .load_progress(&key)
            .await
            .expect("load")
            .expect("some");
        assert_eq!(p.state["cursor"], "two");
        assert_eq!(export(&store, true).await.len(), 1);
    }

    /// A page of a full listing that writes some rows and leaves others as they
    /// were still marks the unchanged ones: the sweep keeps them.
    async fn unchanged_rows_of_a_partly_written_listing_page_survive_the_sweep(store: Store) {
        let key = SourceKey::new("t", "cal");
        let old = page(
            vec![
                rec("same", "2024-01-01T10:00:00Z", 1),
                rec("gone", "2024-01-01T10:00:00Z", 1),
            ],
            vec![],
            "t1",
        );
        store.commit_page(&key, "k", &old).await.expect("commit");
        let mut p = page(
            vec![
                rec("same", "2024-01-01T10:00:00Z", 1),
                rec("fresh", "2024-01-02T10:00:00Z", 1),
            ],
            vec![],
            "done",
        );
        p.listing = Some(Listing {
            generation: 9,
            complete: true,
        });
        let s = store.commit_page(&key, "k", &p).await.expect("commit");
        assert_eq!((s.upserted, s.removed), (1, 1));
        let ids: Vec<(String, bool)> = export(&store, true)
            .await
            .into_iter()
            .map(|r| (r.0, r.1))
            .collect();
        assert_eq!(
            ids,
            [("fresh".into(), false), ("gone".into(), true), ("same".into(), false)]
        );
    }

    /// A group commit writes the rows of its pages together (a few multi-row
    /// statements for many small pages); the database ends exactly as if the
    /// pages had been committed one by one: repeats across pages (older after
    /// newer, newer after older), a deletion then a newer version, a listing
    /// that completes mid-group, and reports checked against the version
    /// stored at their own page.
    async fn a_group_commit_ends_as_page_by_page_commits(store: Store, backend: Backend) {
        use crate::model::{Report, ReportOutcome};
        let key = SourceKey::new("t", "s");
        let owed = |r: &Record| Report {
            record_id: r.id.clone(),
            version_us: Some(r.updated_us),
            completed_at: r.updated_at.clone(),
            outcome: ReportOutcome::Success,
        };
        let listed = |mut p: Page, generation: i64, complete: bool| {
            p.listing = Some(Listing {
                generation,
                complete,
            });
            p
        };
        let t = |h: u32| format!("2024-01-01T{h:02}:00:00Z");
        // Before the group: what a previous run left.
        let before = vec![page(
            vec![
                rec("old", &t(1), 0),
                rec("a", &t(1), 0),
                rec("gone", &t(1), 0),
            ],
            vec![],
            "before",
        )];
        let v1 = rec("r", &t(5), 1);
        let v2 = rec("r", &t(6), 2);
        let mut reported = page(vec![v1.clone()], vec![], "3");
        reported.reports = vec![owed(&v1)];
        let group = vec![
            page(vec![rec("a", &t(3), 3), rec("b", &t(3), 3)], vec![], "1"),
            page(
                vec![rec("a", &t(2), 2), rec("b", &t(4), 4)],
                // Dated: the tombstone outlives the listing (sweeps leave
                // tombstones alone), and both databases must agree on it.
                vec![Tombstone {
                    deleted_at: Some(t(10)),
                    ..tomb("c")
                }],
                "2",
            ),
            page(vec![rec("c", &t(9), 9)], vec![tomb("b")], "2b"),
            reported,
            page(vec![v2.clone()], vec![], "4"),
            listed(
                page(vec![rec("a", &t(3), 3), rec("d", &t(1), 1)], vec![], "5"),
                7,
                false,
            ),
            listed(
                page(vec![rec("old", &t(1), 0), rec("r", &t(6), 2)], vec![], "6"),
                7,
                true,
            ),
            page(vec![rec("e", &t(1), 1)], vec![tomb("d")], "7"),
        ];
        let grouped = store;
        let other = TestDb::new(backend, "group commit: page by page").await;
        let single = other.as_ref().expect("the same backend").open().await;
        for store in [&grouped, &single] {
            store
                .commit_pages_unfenced(&key, "k", before.clone())
                .await
                .expect("before");
        }
        let stats = grouped
            .commit_pages_unfenced(&key, "k", group.clone())
            .await
            .expect("group");
        let mut one_by_one = crate::store::PageStats::default();
        for p in &group {
            one_by_one.add(single.commit_page(&key, "k", p).await.expect("page"));
        }
        assert_eq!(stats, one_by_one);
        assert_eq!(stats.reports, 1, "v1 was the stored version at its page");
        assert!(
            stats.removed >= 1,
            "the listing removed what it did not return"
        );
        let (g, s) = (table(&grouped).await, table(&single).await);
        assert_eq!(g, s);
        assert!(
            g.iter().any(|row| row.0 == "gone" && row.3),
            "swept into a tombstone"
        );
        assert!(g.iter().any(|row| row.0 == "e"), "written after the sweep");
        assert_eq!(reports(&grouped).await, reports(&single).await);
        let progress = grouped
            .load_progress(&key)
            .await
            .expect("load")
            .expect("some");
        assert_eq!(progress.state["cursor"], "7");
    }

}
