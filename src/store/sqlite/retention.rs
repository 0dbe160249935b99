//! A bounded run history. Every run adds a row to `runs` (a source on
//! "every 1m" adds 525,600 a year), so the daemon prunes it: runs that
//! started longer ago than `[storage] runs_retention` go, except, per
//! source, the newest [`KEEP_LAST_RUNS`](crate::store::KEEP_LAST_RUNS) whatever their age, the latest
//! success (what `status` shows as "last success") and any run still
//! `running`.
//!
//! Pruning walks one source at a time through `runs_by_source` (tenant,
//! source, id), a window of [`PRUNE_BATCH`] runs at a time, and deletes the
//! old ones of each window with one statement, so the single writer is
//! never held for long: the commits of the syncs slip in between two
//! batches. Within a source, ids grow with start times (runs of a source
//! never overlap), so the oldest runs come first and a walk stops at the
//! first window without an old run; a run out of order (a clock set back)
//! costs at most a delay, never a run kept too short.

use std::time::Duration;

use super::{SqliteStore, StoreError, now_us};

/// Rows deleted by one statement (one short write transaction).
const PRUNE_BATCH: i64 = 500;

impl SqliteStore {
    /// Deletes the runs that started more than `max_age` ago, keeping per
    /// source the newest `keep_last`, the latest success and every
    /// `running` run. Returns how many were deleted.
    pub async fn prune_runs(&self, max_age: Duration, keep_last: usize) -> Result<u64, StoreError> {
        let max_age_us = i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX);
        let cutoff = now_us().saturating_sub(max_age_us);
        let mut deleted = 0;
        let mut source: Option<(String, String)> = None;
        while let Some(next) = self.next_run_source(source.as_ref()).await? {
            deleted += self.prune_source(&next, cutoff, keep_last).await?;
            source = Some(next);
        }
        Ok(deleted)
    }

    /// The first (tenant, source) with runs after `after`, in index order.
    async fn next_run_source(
        &self,
        after: Option<&(String, String)>,
    ) -> Result<Option<(String, String)>, StoreError> {
        let (tenant, source) = after.map_or(("", ""), |(t, s)| (t.as_str(), s.as_str()));
        // A row-value comparison SQLite answers from `runs_by_source`; the
        // first call (empty ids, which no source has) starts at its top.
        let next = sqlx::query_as(
            "SELECT tenant, source FROM runs WHERE (tenant, source) > (?1, ?2) \
             ORDER BY tenant, source LIMIT 1",
        )
        .bind(tenant)
        .bind(source)
        .fetch_optional(&self.reader)
        .await?;
        Ok(next)
    }

    /// Prunes one source's runs started before `cutoff` (µs).
    async fn prune_source(
        &self,
        (tenant, source): &(String, String),
        cutoff: i64,
        keep_last: usize,
    ) -> Result<u64, StoreError> {
        // Runs from the `keep_last`-th newest on are kept.
        let keep_from: i64 = match keep_last {
            0 => i64::MAX,
            n => {
                let row: Option<(i64,)> = sqlx::query_as(
                    "SELECT id FROM runs WHERE tenant = ?1 AND source = ?2 \
                     ORDER BY id DESC LIMIT 1 OFFSET ?3",
                )
                .bind(tenant)
                .bind(source)
                .bind(i64::try_from(n - 1).unwrap_or(i64::MAX))
                .fetch_optional(&self.reader)
                .await?;
                match row {
                    Some((id,)) => id,
                    None => return Ok(0),
                }
            }
        };
        let last_success: Option<(i64,)> = sqlx::query_as(
            "SELECT id FROM runs WHERE tenant = ?1 AND source = ?2 AND outcome = 'success' \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(tenant)
        .bind(source)
        .fetch_optional(&self.reader)
        .await?;
        let last_success = last_success.map_or(-1, |(id,)| id);
        let mut deleted = 0;
        let mut after = i64::MIN;
        loop {
            let window: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT id, started_at FROM runs WHERE tenant = ?1 AND source = ?2 \
                 AND id > ?3 AND id < ?4 ORDER BY id LIMIT ?5",
            )
            .bind(tenant)
            .bind(source)
            .bind(after)
            .bind(keep_from)
            .bind(PRUNE_BATCH)
            .fetch_all(&self.reader)
            .await?;
            let Some(&(last, _)) = window.last() else {
                return Ok(deleted);
            };
            if !window.iter().any(|(_, started)| *started < cutoff) {
                return Ok(deleted);
            }
            deleted += sqlx::query(
                "DELETE FROM runs WHERE tenant = ?1 AND source = ?2 AND id > ?3 AND id <= ?4 \
                 AND started_at < ?5 AND outcome <> 'running' AND id <> ?6",
            )
            .bind(tenant)
            .bind(source)
            .bind(after)
            .bind(last)
            .bind(cutoff)
            .bind(last_success)
            .execute(&self.writer)
            .await?
            .rows_affected();
            if window.len() < PRUNE_BATCH as usize {
                return Ok(deleted);
            }
            after = last;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SourceKey;
    use crate::store::{KEEP_LAST_RUNS, Store};

    const DAY_US: i64 = 86_400_000_000;

    async fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.expect("open");
        (dir, store)
    }

    /// A run of `key` that started `days_ago` days ago.
    async fn run(store: &Store, key: &SourceKey, run_id: &str, days_ago: i64, outcome: &str) {
        let started = now_us() - days_ago * DAY_US;
        let finished = (outcome != "running").then_some(started + 1_000_000);
        sqlx::query(
            "INSERT INTO runs (run_id, tenant, source, kind, started_at, finished_at, outcome) \
             VALUES (?1, ?2, ?3, 'demarches', ?4, ?5, ?6)",
        )
        .bind(run_id)
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(started)
        .bind(finished)
        .bind(outcome)
        .execute(&store.sqlite().writer)
        .await
        .expect("insert run");
    }

    async fn run_ids(store: &Store, key: &SourceKey) -> Vec<String> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT run_id FROM runs WHERE tenant = ?1 AND source = ?2 ORDER BY id")
                .bind(&key.tenant)
                .bind(&key.source)
                .fetch_all(&store.sqlite().reader)
                .await
                .expect("runs");
        rows.into_iter().map(|(id,)| id).collect()
    }

    #[tokio::test]
    async fn old_runs_go_but_running_ones_the_last_success_and_the_newest_are_kept() {
        let (_dir, store) = open().await;
        let busy = SourceKey::new("acme", "busy");
        // An old running run (its process may still live), then an old
        // success, then 1,200 old failures (more than two batches), then
        // 4 recent runs.
        run(&store, &busy, "old-running", 90, "running").await;
        run(&store, &busy, "old-success", 80, "success").await;
        for i in 0..1_200 {
            run(&store, &busy, &format!("old-failed-{i}"), 60, "failed").await;
        }
        for i in 0..4 {
            run(&store, &busy, &format!("recent-{i}"), 1, "failed").await;
        }
        // A source with few runs keeps them all, however old.
        let quiet = SourceKey::new("acme", "quiet");
        for i in 0..5 {
            run(&store, &quiet, &format!("quiet-{i}"), 400, "success").await;
        }
        // A source whose old runs are all beyond the retention and fewer
        // than the floor plus a few: exactly the floor stays.
        let weekly = SourceKey::new("globex", "weekly");
        for i in 0..8 {
            run(&store, &weekly, &format!("weekly-{i}"), 100 - i, "failed").await;
        }

        let deleted = store
            .prune_runs(Duration::from_secs(30 * 86_400), 6)
            .await
            .expect("prune");

        let kept = run_ids(&store, &busy).await;
        assert_eq!(
            kept,
            [
                "old-running",
                "old-success",
                "old-failed-1198",
                "old-failed-1199"
            ]
            .into_iter()
            .map(String::from)
            .chain((0..4).map(|i| format!("recent-{i}")))
            .collect::<Vec<_>>()
        );
        assert_eq!(run_ids(&store, &quiet).await.len(), 5);
        assert_eq!(
            run_ids(&store, &weekly).await,
            (2..8).map(|i| format!("weekly-{i}")).collect::<Vec<_>>()
        );
        assert_eq!(deleted, 1_198 + 2);
        // `status` still finds the last success.
        let st = store
            .source_status(&busy, "demarches")
            .await
            .expect("status");
        assert!(st.last_success.is_some(), "{st:?}");

        // Nothing more to do: a second pass deletes nothing.
        let again = store
            .prune_runs(Duration::from_secs(30 * 86_400), 6)
            .await
            .expect("prune");
        assert_eq!(again, 0);
        store.close().await;
    }

    #[tokio::test]
    async fn the_default_floor_keeps_a_hundred_runs_per_source() {
        let (_dir, store) = open().await;
        let key = SourceKey::new("acme", "permits");
        for i in 0..130 {
            run(&store, &key, &format!("r{i}"), 45, "success").await;
        }
        let deleted = store
            .prune_runs(Duration::from_secs(30 * 86_400), KEEP_LAST_RUNS)
            .await
            .expect("prune");
        assert_eq!(deleted, 30);
        let kept = run_ids(&store, &key).await;
        assert_eq!(kept.len(), 100);
        assert_eq!(kept[0], "r30");
        store.close().await;
    }
}
