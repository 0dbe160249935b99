//! The upsert and tombstone rules, on a real SQLite file.

use serde_json::json;

use crate::model::SourceKey;
use crate::model::{Record, Tombstone};
use crate::store::Store;

use crate::store::behaviour::{export, page, raw, rec, tomb};

async fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("sub/dir/t.db").display());
    let store = Store::open(&url).await.expect("open");
    (dir, store)
}

#[tokio::test]
async fn a_failed_commit_stores_neither_records_nor_progress() {
    let (_d, store) = open().await;
    let key = SourceKey::new("t", "s");
    store
        .commit_page(
            &key,
            "k",
            &page(vec![rec("1", "2024-01-01T10:00:00Z", 1)], vec![], "first"),
        )
        .await
        .expect("commit");
    // A page whose second statement fails (a trigger aborts on the
    // tombstone) must roll back its records and its progress too.
    sqlx::query(
        "CREATE TRIGGER boom BEFORE INSERT ON records WHEN NEW.id = 'boom' \
         BEGIN SELECT RAISE(ABORT, 'disk on fire'); END",
    )
    .execute(&store.sqlite().writer)
    .await
    .expect("trigger");
    let bad = page(
        vec![rec("2", "2024-01-01T10:00:00Z", 1)],
        vec![Tombstone {
            id: "boom".into(),
            deleted_at: None,
            data: raw(json!({})),
        }],
        "second",
    );
    let r = store.commit_page(&key, "k", &bad).await;
    assert!(r.is_err(), "the failing statement fails the commit");
    assert_eq!(export(&store, true).await.len(), 1);
    let p = store
        .load_progress(&key)
        .await
        .expect("load")
        .expect("some");
    assert_eq!(p.state["cursor"], "first");
}

/// A group commit: several pages in one transaction with the progress of
/// the last; a failure in any page rolls back the whole group. Also spans
/// the multi-row statement sizes (64 + 32 + ... + 1 rows).
#[tokio::test]
async fn a_group_commit_stores_every_page_or_none() {
    let (_d, store) = open().await;
    let key = SourceKey::new("t", "s");
    let records = |from: usize, n: usize| {
        (from..from + n)
            .map(|i| rec(&i.to_string(), "2024-01-01T10:00:00Z", i as i64))
            .collect::<Vec<_>>()
    };
    let pages = vec![
        page(records(0, 127), vec![], "one"),
        page(records(127, 3), vec![tomb("5")], "two"),
        page(records(130, 70), vec![], "three"),
    ];
    let stats = store
        .commit_pages_unfenced(&key, "k", pages.clone())
        .await
        .expect("commit");
    assert_eq!((stats.upserted, stats.deleted), (200, 1));
    let live = export(&store, false).await;
    assert_eq!(live.len(), 199, "200 records, one deleted");
    assert!(live.iter().all(|(id, ..)| id != "5"));
    let stored = |id: &str| {
        live.iter()
            .find(|(i, ..)| i == id)
            .map(|(.., data)| data["v"].clone())
    };
    assert_eq!(stored("199"), Some(json!(199)));
    let p = store
        .load_progress(&key)
        .await
        .expect("load")
        .expect("some");
    assert_eq!(p.state["cursor"], "three", "the progress of the last page");

    sqlx::query(
        "CREATE TRIGGER boom BEFORE INSERT ON records WHEN NEW.id = 'boom' \
         BEGIN SELECT RAISE(ABORT, 'disk on fire'); END",
    )
    .execute(&store.sqlite().writer)
    .await
    .expect("trigger");
    let failing = vec![
        page(records(500, 10), vec![], "four"),
        page(vec![rec("boom", "2024-01-01T10:00:00Z", 0)], vec![], "five"),
    ];
    assert!(
        store
            .commit_pages_unfenced(&key, "k", failing.clone())
            .await
            .is_err()
    );
    assert_eq!(
        export(&store, true).await.len(),
        200,
        "nothing of the group"
    );
    let p = store
        .load_progress(&key)
        .await
        .expect("load")
        .expect("some");
    assert_eq!(p.state["cursor"], "three");
}

#[test]
fn url_forms() {
    use super::path_of;
    use std::path::PathBuf;
    assert_eq!(
        path_of("sqlite://var/a.db").expect("ok"),
        PathBuf::from("var/a.db")
    );
    assert_eq!(
        path_of("sqlite:///tmp/a.db").expect("ok"),
        PathBuf::from("/tmp/a.db")
    );
    assert_eq!(path_of("sqlite:a.db").expect("ok"), PathBuf::from("a.db"));
    assert!(path_of("postgres://x").is_err());
    assert!(path_of("sqlite::memory:").is_err());
}

/// A database written by an earlier version (records still WITHOUT ROWID)
/// keeps every record, tombstone and listing mark through the migration
/// that moves records to a rowid table.
#[tokio::test]
async fn records_survive_the_move_to_a_rowid_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    let url = format!("sqlite://{}", path.display());
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(opts).await.expect("pool");
        let mut old = sqlx::migrate!("./migrations/sqlite");
        let before: Vec<_> = old
            .migrations
            .iter()
            .filter(|m| m.version < 20261123000003)
            .cloned()
            .collect();
        assert_eq!(before.len(), 2);
        old.migrations = std::borrow::Cow::Owned(before);
        old.run(&pool).await.expect("old schema");
        sqlx::query(
            "INSERT INTO records (tenant, source, id, kind, updated_at, updated_us, deleted, data, stored_at, listing) \
             VALUES ('t', 's', 'a', 'k', '2024-01-01T10:00:00Z', 1, 0, '{\"v\":1}', 1, 7), \
                    ('t', 's', 'b', 'k', '2024-01-01T10:00:00Z', 1, 1, '{\"v\":2}', 1, NULL)",
        )
        .execute(&pool)
        .await
        .expect("old rows");
        pool.close().await;
    }
    let store = Store::open(&url).await.expect("migrated");
    let all = export(&store, true).await;
    assert_eq!(all.len(), 2);
    assert_eq!((all[0].0.as_str(), all[0].1), ("a", false));
    assert_eq!((all[1].0.as_str(), all[1].1), ("b", true));
    assert_eq!(all[1].3, json!({"v": 2}));
    let listing: Option<i64> = sqlx::query_scalar("SELECT listing FROM records WHERE id = 'a'")
        .fetch_one(&store.sqlite().writer)
        .await
        .expect("listing");
    assert_eq!(listing, Some(7));
    // The key is still unique: the upsert's conflict target holds.
    store
        .commit_page(
            &SourceKey::new("t", "s"),
            "k",
            &page(vec![rec("a", "2024-01-02T10:00:00Z", 3)], vec![], "c"),
        )
        .await
        .expect("upsert");
    assert_eq!(export(&store, true).await.len(), 2);
}

#[tokio::test]
async fn outbox_queries_answer_while_a_commit_holds_the_writer() {
    use crate::model::{Report, ReportOutcome};
    let (_d, store) = open().await;
    let key = SourceKey::new("t", "content");
    let done = rec("9", "2024-01-02T10:00:00Z", 1);
    let mut p = page(vec![done.clone()], vec![], "a");
    p.reports = vec![Report {
        record_id: done.id.clone(),
        version_us: Some(done.updated_us),
        completed_at: "2024-01-02T10:00:00Z".into(),
        outcome: ReportOutcome::Success,
    }];
    store
        .commit_records(&key, "k", p.clone())
        .await
        .expect("commit");

    // A write transaction in progress (a sync page, a webhook) holds the
    // only writer connection: the reporter's reads must not queue behind it,
    // and they see what was committed before it.
    let tx = store
        .sqlite()
        .writer
        .begin_with("BEGIN IMMEDIATE")
        .await
        .expect("begin");
    let reads = async {
        let due = store.due_reports(&key, i64::MAX, 10).await.expect("due");
        let pending = store.pending_report_count(&key).await.expect("count");
        let next = store.next_report_due(&key).await.expect("next");
        (due.len(), pending, next.is_some())
    };
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), reads)
        .await
        .expect("outbox reads waited for the writer");
    assert_eq!(got, (1, 1, true));
    tx.rollback().await.expect("rollback");

    // Once a report is marked sent through the writer, the reads see it.
    let due = store.due_reports(&key, i64::MAX, 10).await.expect("due");
    store.report_sent(due[0].id, 1).await.expect("sent");
    assert!(
        store
            .due_reports(&key, i64::MAX, 10)
            .await
            .expect("due")
            .is_empty()
    );
    assert_eq!(store.pending_report_count(&key).await.expect("count"), 0);
}

/// Large syncs widen the writer's cache while any of them runs; the last to
/// end narrows it back to SQLite's default.
#[tokio::test]
async fn the_writer_cache_is_wide_only_while_a_large_sync_runs() {
    let (_d, store) = open().await;
    assert_eq!(store.cache_kib().await.expect("size"), 2000);
    assert_eq!(store.checkpoint_pages().await.expect("pages"), 1000);
    store.widen_cache().await.expect("widen");
    store.widen_cache().await.expect("widen");
    assert_eq!(store.cache_kib().await.expect("size"), 16 * 1024);
    store.narrow_cache().await.expect("narrow");
    assert_eq!(
        store.cache_kib().await.expect("size"),
        16 * 1024,
        "one still runs"
    );
    assert_eq!(store.checkpoint_pages().await.expect("pages"), 8192);
    store.narrow_cache().await.expect("narrow");
    assert_eq!(store.cache_kib().await.expect("size"), 2000);
    assert_eq!(store.checkpoint_pages().await.expect("pages"), 1000);
    let limit: i64 = sqlx::query_scalar("PRAGMA journal_size_limit")
        .fetch_one(&store.sqlite().writer)
        .await
        .expect("limit");
    assert_eq!(limit, 4 * 1024 * 1024, "the WAL file shrinks back");
}

#[tokio::test]
async fn a_run_start_closes_the_runs_of_its_source_a_killed_process_left_running() {
    use crate::model::{RunOutcome, RunRecord};
    let (_d, store) = open().await;
    let key = SourceKey::new("t", "a");
    let other = SourceKey::new("t", "b");
    // A process killed mid-run leaves `running` rows behind.
    store
        .start_run(&key, "k", "dead1", None)
        .await
        .expect("start");
    store
        .start_run(&other, "k", "alive", Some(7))
        .await
        .expect("start");
    store
        .start_run(&key, "k", "next", Some(1_000_000))
        .await
        .expect("start");
    type Row = (String, String, Option<String>, Option<i64>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT run_id, outcome, error, scheduled_at, finished_at FROM runs ORDER BY id",
    )
    .fetch_all(&store.sqlite().reader)
    .await
    .expect("runs");
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[0].0, "dead1");
    assert_eq!(rows[0].1, "failed");
    assert!(
        rows[0]
            .2
            .as_deref()
            .is_some_and(|e| e.contains("interrupted")),
        "{rows:?}"
    );
    assert!(rows[0].4.is_some(), "closed: {rows:?}");
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1.as_str(), rows[1].3),
        ("alive", "running", Some(7)),
        "another source's run is not touched"
    );
    assert_eq!(
        (rows[2].0.as_str(), rows[2].1.as_str(), rows[2].3),
        ("next", "running", Some(1_000_000))
    );
    store
        .finish_run(&key, "next", RunOutcome::Success, &RunRecord::default())
        .await
        .expect("finish");
    let (outcome,): (String,) = sqlx::query_as("SELECT outcome FROM runs WHERE run_id = 'next'")
        .fetch_one(&store.sqlite().reader)
        .await
        .expect("run");
    assert_eq!(outcome, "success");
}

#[tokio::test]
async fn closing_stale_runs_does_not_walk_the_run_history() {
    let (_d, store) = open().await;
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN UPDATE runs SET outcome = 'failed' \
         WHERE tenant = 't' AND source = 's' AND outcome = 'running'",
    )
    .fetch_all(&store.sqlite().reader)
    .await
    .expect("plan");
    assert!(
        plan.iter().any(|r| r.3.contains("runs_running")),
        "{plan:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_starting_and_ending_together_are_group_committed_and_each_recorded() {
    use crate::model::{RunOutcome, RunRecord};
    let (_d, store) = open().await;
    const N: usize = 300;
    // Half the sources have a run a killed process left open.
    for i in (0..N).step_by(2) {
        let key = SourceKey::new("t", format!("s{i}"));
        store
            .start_run(&key, "k", &format!("dead{i}"), None)
            .await
            .expect("start");
    }
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = SourceKey::new("t", format!("s{i}"));
                let run = format!("run{i}");
                let lease = match store
                    .acquire_lease(&key, &run, std::time::Duration::from_secs(30))
                    .await
                    .expect("lease")
                {
                    crate::store::Acquired::Taken(l) => l,
                    held => panic!("{held:?}"),
                };
                store
                    .start_run(&key, "k", &run, Some(i as i64))
                    .await
                    .expect("start");
                // A no-change page: only the progress moves, fenced on the
                // run's lease, group-committed with the other runs'.
                let p = page(vec![], vec![], &format!("c{i}"));
                store
                    .commit_pages(&lease, "k", vec![p])
                    .await
                    .expect("progress");
                let totals = RunRecord {
                    pages: 1,
                    upserted: i as u64,
                    deleted: 0,
                    error: i.is_multiple_of(3).then(|| format!("boom {i}")),
                };
                let outcome = if i.is_multiple_of(3) {
                    RunOutcome::Failed
                } else {
                    RunOutcome::Success
                };
                store
                    .finish_run(&key, &run, outcome, &totals)
                    .await
                    .expect("finish");
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    assert!(
        store.sqlite().journal.batched() > 0,
        "some entries were batched"
    );

    type Row = (
        String,
        String,
        String,
        Option<String>,
        i64,
        i64,
        Option<i64>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT run_id, source, outcome, error, pages, upserted, scheduled_at FROM runs ORDER BY id",
    )
    .fetch_all(&store.sqlite().reader)
    .await
    .expect("runs");
    assert_eq!(rows.len(), N + N / 2);
    for (run_id, source, outcome, error, pages, upserted, scheduled_at) in &rows {
        let i: usize = source[1..].parse().expect("index");
        if run_id.starts_with("dead") {
            assert_eq!(outcome, "failed", "{run_id}");
            assert!(
                error.as_deref().is_some_and(|e| e.contains("interrupted")),
                "{run_id}: {error:?}"
            );
            continue;
        }
        assert_eq!(run_id, &format!("run{i}"));
        assert_eq!(*scheduled_at, Some(i as i64), "{run_id}");
        assert_eq!((*pages, *upserted), (1, i as i64), "{run_id}");
        if i.is_multiple_of(3) {
            assert_eq!(outcome, "failed", "{run_id}");
            assert_eq!(error.as_deref(), Some(format!("boom {i}").as_str()));
        } else {
            assert_eq!(outcome, "success", "{run_id}");
            assert_eq!(error, &None, "{run_id}");
        }
    }
    for i in [0, 1, 150, 299] {
        let key = SourceKey::new("t", format!("s{i}"));
        let progress = store
            .load_progress(&key)
            .await
            .expect("load")
            .expect("some");
        assert_eq!(progress.state, json!({ "cursor": format!("c{i}") }));
    }
}

/// The sweep of a completed full listing reads the source's rowids from the
/// key index alone and visits the table by rowid (file order), not a table
/// row per index entry in id order.
#[tokio::test]
async fn the_sweep_visits_the_table_in_rowid_order() {
    use sqlx::Row;
    let (_d, store) = open().await;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "EXPLAIN QUERY PLAN {}",
        super::records::SWEEP
    )))
    .bind("t")
    .bind("s")
    .bind(1_i64)
    .bind(0_i64)
    .bind(0_i64)
    .fetch_all(&store.sqlite().writer)
    .await
    .expect("plan");
    let text = rows
        .iter()
        .map(|r| r.try_get::<String, _>(3).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" | ");
    assert!(text.contains("INTEGER PRIMARY KEY (rowid=?)"), "{text}");
    assert!(text.contains("COVERING INDEX records_key"), "{text}");
}

/// A full disk (SQLITE_FULL, provoked with `max_page_count`) fails the
/// commit and loses nothing; once space is back, the writer commits again
/// by itself, and `commits_failing` says so in between.
#[tokio::test]
async fn the_writer_recovers_by_itself_once_a_full_disk_has_space_again() {
    let (_d, store) = open().await;
    let key = SourceKey::new("t", "s");
    store
        .commit_page(
            &key,
            "k",
            &page(vec![rec("0", "2024-01-01T00:00:00Z", 0)], vec![], "c0"),
        )
        .await
        .expect("first commit");
    let (pages,): (i64,) = sqlx::query_as("PRAGMA page_count")
        .fetch_one(&store.sqlite().writer)
        .await
        .expect("page_count");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "PRAGMA max_page_count = {}",
        pages + 2
    )))
    .execute(&store.sqlite().writer)
    .await
    .expect("limit");
    let big: Vec<Record> = (1..400)
        .map(|i| Record {
            id: i.to_string(),
            updated_at: "2024-01-01T00:00:00Z".into(),
            updated_us: 1_704_067_200_000_000,
            data: raw(json!({ "id": i, "pad": "x".repeat(2_000) })),
        })
        .collect();
    let full = store
        .commit_page(&key, "k", &page(big.clone(), vec![], "c1"))
        .await
        .expect_err("the disk is full");
    assert!(full.to_string().contains("full"), "{full}");
    assert!(
        store.sqlite().commits_failing(),
        "readiness sees the failure"
    );
    // Nothing of the failed page, progress unchanged.
    assert_eq!(export_ids(&store, &key).await, vec!["0".to_string()]);
    assert_eq!(
        store
            .load_progress(&key)
            .await
            .expect("progress")
            .map(|p| p.state),
        Some(json!({ "cursor": "c0" }))
    );
    // Space is back (on whatever connection the writer uses now).
    sqlx::query("PRAGMA max_page_count = 1073741823")
        .execute(&store.sqlite().writer)
        .await
        .expect("unlimit");
    store
        .commit_page(&key, "k", &page(big, vec![], "c1"))
        .await
        .expect("the writer commits again");
    assert!(!store.sqlite().commits_failing());
    assert_eq!(export_ids(&store, &key).await.len(), 400);
}

async fn export_ids(store: &Store, _key: &SourceKey) -> Vec<String> {
    let mut ids: Vec<String> = export(store, false)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    ids.sort_by_key(|id| id.parse::<i64>().unwrap_or(0));
    ids
}
