//! Run history: one row per sync run, written when it starts and when it ends,
//! so that a crash leaves a visible "interrupted" trace.

use super::{Store, StoreError, now_us};
use crate::config::SourceKey;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Success,
    Failed,
    Cancelled,
}

impl RunOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunOutcome::Success => "success",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
        }
    }
}

/// Totals of a finished run.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    pub pages: u64,
    pub upserted: u64,
    pub deleted: u64,
    pub error: Option<String>,
}

impl Store {
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
        let now = now_us();
        // Two autocommit statements sent as ONE query: each query is a round
        // trip to sqlx's SQLite worker thread, and with thousands of runs
        // starting together those round trips on the one writer are what
        // bounds how fast they start (BENCHMARKS.md, the herd). Anonymous
        // parameters, bound in order across both statements. A crash
        // between the two loses nothing: the stale rows are closed either
        // way.
        sqlx::query(
            "UPDATE runs SET outcome = 'failed', finished_at = ?, \
             error = 'interrupted (process stopped during the run)' \
             WHERE tenant = ? AND source = ? AND outcome = 'running'; \
             INSERT INTO runs (run_id, tenant, source, kind, started_at, outcome, scheduled_at) \
             VALUES (?, ?, ?, ?, ?, 'running', ?)",
        )
        .bind(now)
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(run_id)
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(kind)
        .bind(now)
        .bind(scheduled_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Records how a run ended.
    pub async fn finish_run(
        &self,
        run_id: &str,
        outcome: RunOutcome,
        totals: &RunRecord,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE runs SET outcome = ?2, finished_at = ?3, error = ?4, pages = ?5, \
             upserted = ?6, deleted = ?7 WHERE run_id = ?1",
        )
        .bind(run_id)
        .bind(outcome.as_str())
        .bind(now_us())
        .bind(totals.error.as_deref())
        .bind(totals.pages as i64)
        .bind(totals.upserted as i64)
        .bind(totals.deleted as i64)
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}

impl Store {
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
