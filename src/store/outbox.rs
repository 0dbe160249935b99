//! The outbox of import-state reports: rows are queued in the same
//! transaction as the record they are about (see `records.rs`); the reporter
//! takes the due ones, sends them, and marks each one here. A row is sent
//! at least once and never again after a success, across restarts and resets.
//! The reporter's queries read through the reader pool (WAL: they see every
//! committed row) so that they never hold the single writer connection
//! while a sync page or a webhook waits to commit.

use super::{Store, StoreError};
use crate::config::SourceKey;

/// One report waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PendingReport {
    pub id: i64,
    pub record_id: String,
    pub completed_at: String,
    pub import_state: String,
    pub message: Option<String>,
    pub attempts: i64,
}

impl Store {
    /// Pending reports of a source whose next attempt is due at `now_us`,
    /// oldest first.
    pub async fn due_reports(
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

    /// When the earliest pending report of a source is due (µs), if any.
    pub async fn next_report_due(&self, key: &SourceKey) -> Result<Option<i64>, StoreError> {
        let (t,): (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(next_attempt_at) FROM outbox \
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
             last_error = NULL WHERE id = ?1",
        )
        .bind(id)
        .bind(now_us)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// A transient failure: try again at `next_at_us`.
    pub async fn report_retry(
        &self,
        id: i64,
        error: &str,
        next_at_us: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3 \
             WHERE id = ?1",
        )
        .bind(id)
        .bind(error)
        .bind(next_at_us)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The upstream refused the report for good (e.g. unknown request):
    /// keep it, visible in `status`, but stop sending it.
    pub async fn report_refused(&self, id: i64, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ?2 \
             WHERE id = ?1",
        )
        .bind(id)
        .bind(error)
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}
