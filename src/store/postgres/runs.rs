//! Run history, its retention and `status` on Postgres. No journal: each
//! start and end is one statement on the pool (Postgres takes concurrent
//! writers; SQLite's single writer is what the journal batches for).

use std::time::Duration;

use super::PgStore;
use crate::model::{RunOutcome, RunRecord, SourceKey};
use crate::store::{INTERRUPTED, SourceStatus, StoreError};

/// Runs deleted by one statement at most.
const PRUNE_BATCH: i64 = 500;

impl PgStore {
    pub async fn start_run(
        &self,
        key: &SourceKey,
        kind: &str,
        run_id: &str,
        scheduled_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "WITH closed AS (UPDATE runs SET outcome = 'failed', finished_at = $5, error = $7 \
                 WHERE tenant = $2 AND source = $3 AND outcome = 'running') \
             INSERT INTO runs (run_id, tenant, source, kind, started_at, outcome, scheduled_at) \
             VALUES ($1, $2, $3, $4, $5, 'running', $6)",
        )
        .bind(run_id)
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(kind)
        .bind(crate::time::now_us())
        .bind(scheduled_at)
        .bind(INTERRUPTED)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(StoreError::from);
        self.commit_result(done)
    }

    pub async fn finish_run(
        &self,
        key: &SourceKey,
        run_id: &str,
        outcome: RunOutcome,
        totals: &RunRecord,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "WITH freed AS (UPDATE leases SET run_id = NULL, expires_at = 0 \
                 WHERE tenant = $1 AND source = $2 AND run_id = $3) \
             UPDATE runs SET outcome = $4, finished_at = $5, error = $6, pages = $7, \
                 upserted = $8, deleted = $9 WHERE run_id = $3",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(run_id)
        .bind(outcome.as_str())
        .bind(crate::time::now_us())
        .bind(totals.error.as_deref())
        .bind(totals.pages as i64)
        .bind(totals.upserted as i64)
        .bind(totals.deleted as i64)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(StoreError::from);
        self.commit_result(done)
    }

    pub async fn successful_runs(&self, key: &SourceKey) -> Result<usize, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM runs WHERE tenant = $1 AND source = $2 AND outcome = 'success'",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as usize)
    }

    /// Deletes old runs source by source, a bounded batch per statement,
    /// keeping the newest `keep_last`, the latest success and running runs.
    pub async fn prune_runs(&self, max_age: Duration, keep_last: usize) -> Result<u64, StoreError> {
        let max_age_us = i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX);
        let cutoff = crate::time::now_us().saturating_sub(max_age_us);
        let mut deleted = 0;
        let mut after = (String::new(), String::new());
        loop {
            let next: Option<(String, String)> = sqlx::query_as(
                "SELECT tenant, source FROM runs WHERE (tenant, source) > ($1, $2) \
                 ORDER BY tenant, source LIMIT 1",
            )
            .bind(&after.0)
            .bind(&after.1)
            .fetch_optional(&self.pool)
            .await?;
            let Some(source) = next else {
                return Ok(deleted);
            };
            deleted += self.prune_source(&source, cutoff, keep_last).await?;
            after = source;
        }
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
                    "SELECT id FROM runs WHERE tenant = $1 AND source = $2 \
                     ORDER BY id DESC LIMIT 1 OFFSET $3",
                )
                .bind(tenant)
                .bind(source)
                .bind(i64::try_from(n - 1).unwrap_or(i64::MAX))
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    Some((id,)) => id,
                    None => return Ok(0),
                }
            }
        };
        let mut deleted = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM runs WHERE id IN (SELECT id FROM runs \
                 WHERE tenant = $1 AND source = $2 AND started_at < $3 AND outcome <> 'running' \
                   AND id < $4 AND id IS DISTINCT FROM (SELECT max(id) FROM runs \
                       WHERE tenant = $1 AND source = $2 AND outcome = 'success') \
                 ORDER BY id LIMIT $5)",
            )
            .bind(tenant)
            .bind(source)
            .bind(cutoff)
            .bind(keep_from)
            .bind(PRUNE_BATCH)
            .execute(&self.pool)
            .await?
            .rows_affected();
            deleted += n;
            if n < PRUNE_BATCH as u64 {
                return Ok(deleted);
            }
        }
    }

    pub async fn source_status(
        &self,
        key: &SourceKey,
        kind: &str,
    ) -> Result<SourceStatus, StoreError> {
        let row: StatusRow = sqlx::query_as(
            "SELECT \
               (SELECT phase FROM progress WHERE tenant = $1 AND source = $2) AS phase, \
               (SELECT max(finished_at) FROM runs WHERE tenant = $1 AND source = $2 \
                  AND outcome = 'success') AS last_ok, \
               l.outcome, l.error, \
               (SELECT count(*) FROM records WHERE tenant = $1 AND source = $2 \
                  AND NOT deleted) AS records, \
               (SELECT count(*) FROM records WHERE tenant = $1 AND source = $2 \
                  AND deleted) AS deleted, \
               (SELECT count(*) FROM outbox WHERE tenant = $1 AND source = $2 \
                  AND status = 'pending') AS pending, \
               (SELECT count(*) FROM outbox WHERE tenant = $1 AND source = $2 \
                  AND status = 'failed') AS failed \
             FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT outcome, error FROM runs \
                 WHERE tenant = $1 AND source = $2 AND outcome <> 'running' \
                 ORDER BY id DESC LIMIT 1) AS l ON true",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .fetch_one(&self.pool)
        .await?;
        let StatusRow {
            phase,
            last_ok,
            outcome,
            error,
            records,
            deleted,
            pending,
            failed,
        } = row;
        Ok(SourceStatus {
            tenant: key.tenant.clone(),
            source: key.source.clone(),
            kind: kind.to_string(),
            phase: phase.unwrap_or_else(|| "full".to_string()),
            last_success: last_ok.map(crate::time::format_us),
            last_error: error.filter(|_| outcome.as_deref() != Some("success")),
            last_outcome: outcome,
            records,
            deleted_records: deleted,
            pending_reports: pending,
            failed_reports: failed,
            lease_holder: self.lease_holder(key).await?,
        })
    }
}

/// One source's figures, as `source_status` reads them in one statement.
#[derive(sqlx::FromRow)]
struct StatusRow {
    phase: Option<String>,
    last_ok: Option<i64>,
    outcome: Option<String>,
    error: Option<String>,
    records: i64,
    deleted: i64,
    pending: i64,
    failed: i64,
}
