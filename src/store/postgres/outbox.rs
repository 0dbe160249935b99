//! The import-state outbox on Postgres: same rows and rules as on SQLite
//! (see its `outbox.rs`). A claim takes due rows with `FOR UPDATE SKIP
//! LOCKED`, so replicas claiming the same source at once split its reports
//! instead of waiting for each other, and no report is claimed twice.

use super::PgStore;
use crate::model::SourceKey;
use crate::store::identity::{claimer, claimer_is_dead};
use crate::store::{PendingReport, StoreError};

const CLAIM: &str = r#"
UPDATE outbox SET claimed_by = $4, claim_expires_at = $5
WHERE id IN (
    SELECT id FROM outbox
    WHERE tenant = $1 AND source = $2 AND status = 'pending'
      AND next_attempt_at <= $3 AND claim_expires_at <= $3
    ORDER BY id LIMIT $6
    FOR UPDATE SKIP LOCKED
)
RETURNING id, record_id, completed_at, import_state, message, attempts
"#;

impl PgStore {
    #[cfg(test)]
    pub(crate) async fn due_reports(
        &self,
        key: &SourceKey,
        now_us: i64,
        limit: i64,
    ) -> Result<Vec<PendingReport>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, record_id, completed_at, import_state, message, attempts FROM outbox \
             WHERE tenant = $1 AND source = $2 AND status = 'pending' AND next_attempt_at <= $3 \
             ORDER BY id LIMIT $4",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(now_us)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn claim_due(
        &self,
        key: &SourceKey,
        now_us: i64,
        until_us: i64,
        limit: i64,
    ) -> Result<Vec<PendingReport>, StoreError> {
        let mut claimed: Vec<PendingReport> = sqlx::query_as(CLAIM)
            .bind(&key.tenant)
            .bind(&key.source)
            .bind(now_us)
            .bind(claimer())
            .bind(until_us)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        // RETURNING gives no order.
        claimed.sort_by_key(|r| r.id);
        Ok(claimed)
    }

    pub async fn release_claims(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE outbox SET claimed_by = NULL, claim_expires_at = 0 \
             WHERE id = ANY($1) AND claimed_by = $2 AND status = 'pending'",
        )
        .bind(ids)
        .bind(claimer())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Frees the live claims on `key`'s due reports held by processes of
    /// this node that are gone; returns how many claimers were.
    pub async fn release_dead_claims(
        &self,
        key: &SourceKey,
        now_us: i64,
    ) -> Result<u64, StoreError> {
        let claimers: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT claimed_by FROM outbox WHERE tenant = $1 AND source = $2 \
             AND status = 'pending' AND next_attempt_at <= $3 AND claim_expires_at > $3 \
             AND claimed_by IS NOT NULL",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(now_us)
        .fetch_all(&self.pool)
        .await?;
        let mut released = 0;
        for (claimed_by,) in claimers {
            if !claimer_is_dead(&claimed_by) {
                continue;
            }
            sqlx::query(
                "UPDATE outbox SET claimed_by = NULL, claim_expires_at = 0 \
                 WHERE tenant = $1 AND source = $2 AND status = 'pending' AND claimed_by = $3",
            )
            .bind(&key.tenant)
            .bind(&key.source)
            .bind(&claimed_by)
            .execute(&self.pool)
            .await?;
            tracing::info!(tenant = %key.tenant, source = %key.source, claimer = %claimed_by,
                "released the import-report claims of a process that is gone");
            released += 1;
        }
        Ok(released)
    }

    pub async fn reports_due(&self, key: &SourceKey, now_us: i64) -> Result<bool, StoreError> {
        let (due,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE tenant = $1 AND source = $2 \
             AND status = 'pending' AND next_attempt_at <= $3)",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(now_us)
        .fetch_one(&self.pool)
        .await?;
        Ok(due)
    }

    pub async fn pending_report_count(&self, key: &SourceKey) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM outbox WHERE tenant = $1 AND source = $2 AND status = 'pending'",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    pub async fn next_report_due(&self, key: &SourceKey) -> Result<Option<i64>, StoreError> {
        let (t,): (Option<i64>,) = sqlx::query_as(
            "SELECT min(greatest(next_attempt_at, claim_expires_at)) FROM outbox \
             WHERE tenant = $1 AND source = $2 AND status = 'pending'",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .fetch_one(&self.pool)
        .await?;
        Ok(t)
    }

    pub async fn report_sent(&self, id: i64, now_us: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET status = 'sent', sent_at = $2, attempts = attempts + 1, \
             last_error = NULL, claimed_by = NULL, claim_expires_at = 0 \
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(id)
        .bind(now_us)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn report_retry(
        &self,
        id: i64,
        error: &str,
        next_at_us: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3, \
             claimed_by = NULL, claim_expires_at = 0 \
             WHERE id = $1 AND status = 'pending' AND claimed_by = $4",
        )
        .bind(id)
        .bind(error)
        .bind(next_at_us)
        .bind(claimer())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn report_refused(&self, id: i64, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = $2, \
             claimed_by = NULL, claim_expires_at = 0 \
             WHERE id = $1 AND status = 'pending' AND claimed_by = $3",
        )
        .bind(id)
        .bind(error)
        .bind(claimer())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
