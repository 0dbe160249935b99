//! The change feed on every backend: numbering in commit order, each
//! change once, scopes, paging, tombstone retention and resync answers.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{export, page, raw, rec, tomb};
use crate::model::{Listing, SourceKey, Tombstone};
use crate::store::test_db::both_backends;
use crate::store::{ChangeScope, Changes, ExportRow, Store, StoreError};

async fn changes(store: &Store, since: i64, scope: &ChangeScope, limit: i64) -> Changes {
    store.changes(since, scope, limit).await.expect("changes")
}

/// (id, deleted, seq) of each row of a page.
fn lines(rows: &[ExportRow]) -> Vec<(String, bool, i64)> {
    rows.iter()
        .map(|r| (r.id.clone(), r.deleted, r.seq))
        .collect()
}

fn seqs_rise(rows: &[ExportRow], after: i64) {
    let mut last = after;
    for r in rows {
        assert!(
            r.seq > last,
            "seq {} after {last}: {:?}",
            r.seq,
            lines(rows)
        );
        last = r.seq;
    }
}

both_backends! {
    async fn every_change_gets_a_new_number_and_nothing_else_does(store: Store) {
        let key = SourceKey::new("t", "s");
        let first = page(
            vec![rec("a", "2024-01-01T10:00:00Z", 1), rec("b", "2024-01-01T10:00:00Z", 1)],
            vec![],
            "1",
        );
        store.commit_page(&key, "k", &first).await.expect("commit");
        let all = changes(&store, 0, &ChangeScope::All, 100).await;
        assert_eq!(all.rows.len(), 2);
        seqs_rise(&all.rows, 0);
        let head = all.next_since;
        assert_eq!(head, all.rows[1].seq, "a short page ends at the head");

        // A refetch changes nothing: nothing to read (the numbers its
        // statements reserved are gaps), and the reader moves on.
        store.commit_page(&key, "k", &first).await.expect("refetch");
        let none = changes(&store, head, &ChangeScope::All, 100).await;
        assert!(none.rows.is_empty(), "{:?}", lines(&none.rows));
        assert!(none.next_since >= head);
        let head = none.next_since;

        // A newer version of `a` and a deletion of `b`: each once, after
        // `head`, `a` with its new number only.
        store
            .commit_page(
                &key,
                "k",
                &page(vec![rec("a", "2024-01-02T10:00:00Z", 2)], vec![tomb("b")], "2"),
            )
            .await
            .expect("commit");
        let next = changes(&store, head, &ChangeScope::All, 100).await;
        let got: Vec<(String, bool)> =
            next.rows.iter().map(|r| (r.id.clone(), r.deleted)).collect();
        assert_eq!(got, [("a".into(), false), ("b".into(), true)]);
        seqs_rise(&next.rows, head);
        let from_start = changes(&store, 0, &ChangeScope::All, 100).await;
        assert_eq!(lines(&from_start.rows), lines(&next.rows), "each record once, latest");
        // The full export carries the same numbers.
        let mut exported = Vec::new();
        store
            .export(&[], true, |r| {
                exported.push((r.id, r.deleted, r.seq));
                Ok(())
            })
            .await
            .expect("export");
        assert_eq!(exported, lines(&next.rows));
    }

    async fn a_sweep_numbers_each_record_it_removes(store: Store) {
        let key = SourceKey::new("t", "cal");
        store
            .commit_page(
                &key,
                "k",
                &page(
                    vec![rec("keep", "2024-01-01T10:00:00Z", 1), rec("gone", "2024-01-01T10:00:00Z", 1),
                         rec("gone2", "2024-01-01T10:00:00Z", 1)],
                    vec![],
                    "1",
                ),
            )
            .await
            .expect("commit");
        let head = changes(&store, 0, &ChangeScope::All, 100).await.next_since;
        let mut resync = page(vec![rec("keep", "2024-01-01T10:00:00Z", 1)], vec![], "2");
        resync.listing = Some(Listing { generation: 3, complete: true });
        let stats = store.commit_page(&key, "k", &resync).await.expect("resync");
        assert_eq!(stats.removed, 2);
        let after = changes(&store, head, &ChangeScope::All, 100).await;
        let got: Vec<(String, bool)> =
            after.rows.iter().map(|r| (r.id.clone(), r.deleted)).collect();
        assert_eq!(got, [("gone".into(), true), ("gone2".into(), true)]);
        seqs_rise(&after.rows, head);
    }

    async fn scopes_and_pages_read_only_what_they_name(store: Store) {
        let (a, b, c) = (SourceKey::new("t1", "x"), SourceKey::new("t1", "y"), SourceKey::new("t2", "x"));
        for (i, key) in [&a, &b, &c, &a, &c].into_iter().enumerate() {
            let p = page(vec![rec(&format!("r{i}"), "2024-01-01T10:00:00Z", 1)], vec![], "c");
            store.commit_page(key, "k", &p).await.expect("commit");
        }
        let all = changes(&store, 0, &ChangeScope::All, 100).await;
        assert_eq!(all.rows.len(), 5);
        let of = |scope: ChangeScope| {
            let store = store.clone();
            async move {
                let page = changes(&store, 0, &scope, 100).await;
                assert_eq!(page.next_since, all_head(&store).await, "a short page ends at the head");
                page.rows.iter().map(|r| format!("{}/{}/{}", r.tenant, r.source, r.id)).collect::<Vec<_>>()
            }
        };
        assert_eq!(of(ChangeScope::Tenant("t2".into())).await, ["t2/x/r2", "t2/x/r4"]);
        assert_eq!(of(ChangeScope::Sources(vec![a.clone()])).await, ["t1/x/r0", "t1/x/r3"]);
        assert_eq!(
            of(ChangeScope::Sources(vec![b.clone(), c.clone()])).await,
            ["t1/y/r1", "t2/x/r2", "t2/x/r4"]
        );
        assert!(of(ChangeScope::Sources(vec![])).await.is_empty());
        assert!(of(ChangeScope::Tenant("nobody".into())).await.is_empty());

        // Pages of two: a full page ends at its last row, and the pages
        // together are the whole feed, each row once.
        let mut since = 0;
        let mut seen = Vec::new();
        loop {
            let page = changes(&store, since, &ChangeScope::All, 2).await;
            if page.rows.is_empty() {
                break;
            }
            if page.rows.len() == 2 {
                assert_eq!(page.next_since, page.rows[1].seq);
            }
            seqs_rise(&page.rows, since);
            seen.extend(lines(&page.rows));
            since = page.next_since;
        }
        assert_eq!(seen, lines(&all.rows));
    }

    async fn a_reader_behind_purged_tombstones_is_told_to_resync(store: Store) {
        let key = SourceKey::new("t", "s");
        store
            .commit_page(&key, "k", &page(vec![rec("a", "2024-01-01T10:00:00Z", 1)], vec![], "1"))
            .await
            .expect("commit");
        let before = all_head(&store).await;
        store
            .commit_page(&key, "k", &page(vec![], vec![tomb("a")], "2"))
            .await
            .expect("delete");
        let deleted_at = all_head(&store).await;
        // Young tombstones stay.
        assert_eq!(store.purge_tombstones(Duration::from_secs(3600)).await.expect("purge"), 0);
        assert!(store.changes(before, &ChangeScope::All, 10).await.is_ok());
        assert_eq!(store.purge_tombstones(Duration::ZERO).await.expect("purge"), 1);
        assert!(export(&store, true).await.is_empty(), "purged");
        match store.changes(before, &ChangeScope::All, 10).await {
            Err(StoreError::ResyncNeeded { since, purged_through, .. }) => {
                assert_eq!((since, purged_through), (before, deleted_at));
            }
            other => panic!("a reader that missed the deletion must resync: {other:?}"),
        }
        // One that saw it, or one starting over, goes on.
        assert!(store.changes(deleted_at, &ChangeScope::All, 10).await.expect("saw it").rows.is_empty());
        assert!(store.changes(0, &ChangeScope::All, 10).await.expect("from 0").rows.is_empty());
        // A position this database never gave out is not continued.
        assert!(matches!(
            store.changes(deleted_at + 1, &ChangeScope::All, 10).await,
            Err(StoreError::ResyncNeeded { .. })
        ));
    }

    async fn a_deletion_reported_again_after_its_purge_is_no_new_change(store: Store) {
        let key = SourceKey::new("t", "s");
        // A deletion the upstream dates long ago, as Démarches Simplifiées
        // lists them again and again within its look-back.
        let old = |id: &str| Tombstone {
            id: id.into(),
            deleted_at: Some("2024-01-02T00:00:00Z".into()),
            data: raw(serde_json::json!({ "number": id })),
        };
        let at = "2024-01-01T10:00:00Z";
        store
            .commit_page(&key, "k", &page(vec![rec("a", at, 1), rec("e", at, 1)], vec![], "1"))
            .await
            .expect("commit");
        // Before any purge, every deletion is stored: `a` held, `b` never.
        store
            .commit_page(&key, "k", &page(vec![], vec![old("a"), old("b")], "2"))
            .await
            .expect("delete");
        assert_eq!(store.purge_tombstones(Duration::ZERO).await.expect("purge"), 2);
        let head = all_head(&store).await;

        // Listed again after the purge: neither comes back as a change.
        store
            .commit_page(&key, "k", &page(vec![], vec![old("a"), old("b")], "3"))
            .await
            .expect("again");
        let after = changes(&store, head, &ChangeScope::All, 100).await;
        assert!(after.rows.is_empty(), "purged tombstones came back: {:?}", lines(&after.rows));
        let ids: Vec<String> = export(&store, true).await.into_iter().map(|r| r.0).collect();
        assert_eq!(ids, ["e"], "only the live record is stored");

        // Still stored: an old-dated deletion of a record held (live, or
        // upserted earlier in the same commit), and a recent deletion of a
        // record never held.
        store
            .commit_page(
                &key,
                "k",
                &page(vec![rec("d", at, 1)], vec![old("d"), old("e"), tomb("c")], "4"),
            )
            .await
            .expect("delete held");
        let after = changes(&store, head, &ChangeScope::All, 100).await;
        let mut got: Vec<(String, bool)> =
            after.rows.iter().map(|r| (r.id.clone(), r.deleted)).collect();
        got.sort();
        assert_eq!(got, [("c".into(), true), ("d".into(), true), ("e".into(), true)]);
        seqs_rise(&after.rows, head);
    }

    async fn forgetting_a_source_sends_readers_behind_it_to_resync(store: Store) {
        let gone = SourceKey::new("t", "gone");
        store
            .commit_page(
                &gone,
                "k",
                &page(
                    vec![rec("a", "2024-01-01T10:00:00Z", 1), rec("b", "2024-01-01T10:00:00Z", 1)],
                    vec![],
                    "1",
                ),
            )
            .await
            .expect("commit");
        let head = all_head(&store).await;
        assert!(head > 1);
        store.forget_sources(std::slice::from_ref(&gone)).await.expect("forget");
        assert!(matches!(
            store.changes(0, &ChangeScope::All, 10).await.map(|c| c.rows.len()),
            Ok(0)
        ));
        assert!(matches!(
            store.changes(head - 1, &ChangeScope::All, 10).await,
            Err(StoreError::ResyncNeeded { .. })
        ));
        assert!(store.changes(head, &ChangeScope::All, 10).await.is_ok());
    }

    /// Writers on several sources commit at once while a reader follows:
    /// the reader sees strictly rising numbers, and what it applied is
    /// exactly what is stored. On Postgres the writers are concurrent
    /// transactions: numbers taken in one order and committed in another
    /// would make the reader skip a change.
    async fn a_reader_following_concurrent_writers_misses_nothing(store: Store) {
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let key = SourceKey::new("t", format!("w{w}"));
                    for i in 0..40 {
                        let at = format!("2024-01-01T10:{:02}:00Z", i % 60);
                        let mut p = page(
                            vec![rec(&format!("r{}", i % 7), &at, i), rec(&format!("n{i}"), &at, i)],
                            vec![],
                            "c",
                        );
                        if i % 5 == 4 {
                            p.deletes.push(tomb(&format!("n{}", i - 2)));
                        }
                        store.commit_records(&key, "k", p).await.expect("commit");
                    }
                })
            })
            .collect();
        let mut since = 0;
        let mut copy: BTreeMap<(String, String), (i64, bool, String)> = BTreeMap::new();
        let mut reads = 0;
        loop {
            let done = writers.iter().all(|w| w.is_finished());
            let page = changes(&store, since, &ChangeScope::All, 13).await;
            seqs_rise(&page.rows, since);
            for r in &page.rows {
                copy.insert((r.source.clone(), r.id.clone()), (r.seq, r.deleted, r.data.get().to_string()));
            }
            reads += 1;
            if page.rows.is_empty() && done {
                break;
            }
            since = page.next_since;
            tokio::task::yield_now().await;
        }
        for w in writers {
            w.await.expect("writer");
        }
        let mut stored = BTreeMap::new();
        store
            .export(&[], true, |r| {
                stored.insert((r.source, r.id), (r.seq, r.deleted, r.data.get().to_string()));
                Ok(())
            })
            .await
            .expect("export");
        assert_eq!(copy, stored, "after {reads} reads");
    }
}

/// The database's last change number, as a reader from 0 learns it.
async fn all_head(store: &Store) -> i64 {
    let mut since = 0;
    loop {
        let page = changes(store, since, &ChangeScope::All, 1000).await;
        if page.rows.is_empty() {
            return page.next_since;
        }
        since = page.next_since;
    }
}
