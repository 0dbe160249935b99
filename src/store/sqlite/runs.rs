//! Run history: one row per sync run, written when it starts and when it ends,
//! so that a crash leaves a visible "interrupted" trace.

use super::journal::Entry;
use super::{SqliteStore, StoreError, now_us};
use crate::model::{RunOutcome, RunRecord, SourceKey};

impl SqliteStore {
    /// Records the start of a run. Runs of the same source left `running` by
    /// a killed process are closed as failed ("interrupted"). `scheduled_at`
    /// is the instant a scheduled run was due (µs), `None` for a run nobody
    /// scheduled: `started_at - scheduled_at` is its start lateness.
    pub async fn start_run(
        &self,
        key: &SourceKey,
        kind: &str,
        run_id: &str,
        scheduled_at: Option<i64>,
    ) -> Result<(), StoreError> {
        // Group-committed with the other runs starting or ending at the
        // same moment (see `journal.rs`).
        self.journal
            .write(Entry::Start {
                tenant: key.tenant.clone(),
                source: key.source.clone(),
                kind: kind.to_string(),
                run_id: run_id.to_string(),
                at: now_us(),
                scheduled_at,
            })
            .await
    }

    /// Records how a run ended, and frees its lease if it still holds it.
    pub async fn finish_run(
        &self,
        key: &SourceKey,
        run_id: &str,
        outcome: RunOutcome,
        totals: &RunRecord,
    ) -> Result<(), StoreError> {
        self.journal
            .write(Entry::Finish {
                tenant: key.tenant.clone(),
                source: key.source.clone(),
                run_id: run_id.to_string(),
                outcome: outcome.as_str(),
                at: now_us(),
                error: totals.error.clone(),
                pages: totals.pages as i64,
                upserted: totals.upserted as i64,
                deleted: totals.deleted as i64,
            })
            .await
    }
}

impl SqliteStore {
    /// How many runs of `key` succeeded (demo and tests wait on it).
    pub async fn successful_runs(&self, key: &SourceKey) -> Result<usize, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM runs WHERE tenant = ?1 AND source = ?2 AND outcome = 'success'",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .fetch_one(&self.reader)
        .await?;
        Ok(n as usize)
    }
}
