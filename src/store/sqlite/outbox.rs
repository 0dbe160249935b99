//! The outbox of import-state reports: rows are queued in the same
//! transaction as the record they are about (see `records.rs`); the reporter
//! takes the due ones, sends them, and marks each one here. A row is sent
//! at least once and never again after a success, across restarts and resets.
//! The reporter's queries read through the reader pool (WAL: they see every
//! committed row) so that they never hold the single writer connection
//! while a sync page or a webhook waits to commit.

use super::{SqliteStore, StoreError};
use crate::model::SourceKey;
use crate::store::PendingReport;
use crate::store::identity::{claimer, claimer_is_dead};

impl SqliteStore {
    /// Pending reports of a source whose next attempt is due at `now_us`,
    /// oldest first, claimed or not (store tests; the reporter claims them,
    /// see [`crate::store::Store::claim_reports`]).
    #[cfg(test)]
    pub(crate) async fn due_reports(
        &self,
        key: &SourceKey,
        now_us: i64,
        limit: i64,
    ) -> Result<Vec<PendingReport>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, record_id, completed_at, import_state, message, attempts FROM outbox \
             WHERE tenant = ?1 AND source = ?2 AND status = 'pending' AND next_attempt_at <= ?3 \
             ORDER BY id LIMIT ?4",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(now_us)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Claims up to `limit` due reports no live claim holds, in one write
    /// (see [`crate::store::Store::claim_reports`]).
    pub async fn claim_due(
        &self,
        key: &SourceKey,
        now_us: i64,
        until_us: i64,
        limit: i64,
    ) -> Result<Vec<PendingReport>, StoreError> {
        let mut claimed: Vec<PendingReport> = sqlx::query_as(
            "UPDATE outbox SET claimed_by = ?4, claim_expires_at = ?5 \
             WHERE id IN (SELECT id FROM outbox WHERE tenant = ?1 AND source = ?2 \
                 AND status = 'pending' AND next_attempt_at <= ?3 AND claim_expires_at <= ?3 \
                 ORDER BY id LIMIT ?6) \
             RETURNING id, record_id, completed_at, import_state, message, attempts",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(now_us)
        .bind(claimer())
        .bind(until_us)
        .bind(limit)
        .fetch_all(&self.writer)
        .await?;
        // RETURNING gives no order.
        claimed.sort_by_key(|r| r.id);
        Ok(claimed)
    }

    /// Gives back claims of this process on reports it did not send (it
    /// stopped, or the endpoint failed): they are due again at once for
    /// whoever comes next, instead of after the claim's lapse.
    pub async fn release_claims(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "UPDATE outbox SET claimed_by = NULL, claim_expires_at = 0 \
             WHERE id IN (SELECT value FROM json_each(?1)) AND claimed_by = ?2 \
               AND status = 'pending'",
        )
        .bind(ids)
        .bind(claimer())
        .execute(&self.writer)
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
            "SELECT DISTINCT claimed_by FROM outbox WHERE tenant = ?1 AND source = ?2 \
             AND status = 'pending' AND next_attempt_at <= ?3 AND claim_expires_at > ?3 \
             AND claimed_by IS NOT NULL",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(now_us)
        .fetch_all(&self.reader)
        .await?;
        let mut released = 0;
        for (claimed_by,) in claimers {
            if !claimer_is_dead(&claimed_by) {
                continue;
            }
            sqlx::query(
                "UPDATE outbox SET claimed_by = NULL, claim_expires_at = 0 \
                 WHERE tenant = ?1 AND source = ?2 AND status = 'pending' AND claimed_by = ?3",
            )
            .bind(&key.tenant)
            .bind(&key.source)
            .bind(&claimed_by)
            .execute(&self.writer)
            .await?;
            tracing::info!(tenant = %key.tenant, source = %key.source, claimer = %claimed_by,
                "released the import-report claims of a process that is gone");
            released += 1;
        }
        Ok(released)
    }

    /// Whether a report of the source is due at `now_us`, claimed or not
    /// (a claim may be a dead process's, which
    /// [`crate::store::Store::claim_reports`] releases). Read on the reader pool: an idle reporter's check costs
    /// the writer nothing.
    pub async fn reports_due(&self, key: &SourceKey, now_us: i64) -> Result<bool, StoreError> {
        let (due,): (i64,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE tenant = ?1 AND source = ?2 \
             AND status = 'pending' AND next_attempt_at <= ?3)",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(now_us)
        .fetch_one(&self.reader)
        .await?;
        Ok(due != 0)
    }

    /// Pending reports of a source, due or not.
    pub async fn pending_report_count(&self, key: &SourceKey) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM outbox WHERE tenant = ?1 AND source = ?2 AND status = 'pending'",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .fetch_one(&self.reader)
        .await?;
        Ok(n)
    }

    /// When the earliest pending report of a source is due (µs), if any: a
    /// report another process claimed is due when its claim lapses.
    pub async fn next_report_due(&self, key: &SourceKey) -> Result<Option<i64>, StoreError> {
        let (t,): (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(max(next_attempt_at, claim_expires_at)) FROM outbox \
             WHERE tenant = ?1 AND source = ?2 AND status = 'pending'",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .fetch_one(&self.reader)
        .await?;
        Ok(t)
    }

    /// The upstream accepted the report: never send it again.
    pub async fn report_sent(&self, id: i64, now_us: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET status = 'sent', sent_at = ?2, attempts = attempts + 1, \
             last_error = NULL, claimed_by = NULL, claim_expires_at = 0 \
             WHERE id = ?1 AND status = 'pending'",
        )
        .bind(id)
        .bind(now_us)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// A transient failure: try again at `next_at_us`. Only while this
    /// process still holds the claim: one whose claim lapsed (another may be
    /// sending the report now) changes nothing.
    pub async fn report_retry(
        &self,
        id: i64,
        error: &str,
        next_at_us: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3, \
             claimed_by = NULL, claim_expires_at = 0 \
             WHERE id = ?1 AND status = 'pending' AND claimed_by = ?4",
        )
        .bind(id)
        .bind(error)
        .bind(next_at_us)
        .bind(claimer())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The upstream refused the report for good (e.g. unknown request):
    /// keep it, visible in `status`, but stop sending it. Only while this
    /// process still holds the claim.
    pub async fn report_refused(&self, id: i64, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ?2, \
             claimed_by = NULL, claim_expires_at = 0 \
             WHERE id = ?1 AND status = 'pending' AND claimed_by = ?3",
        )
        .bind(id)
        .bind(error)
        .bind(claimer())
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}
