//! What `synchro status` shows for each source.

use super::{SqliteStore, StoreError};
use crate::model::SourceKey;
use crate::store::SourceStatus;

impl SqliteStore {
    /// The status of one source (defaults where nothing is stored yet).
    pub async fn source_status(
        &self,
        key: &SourceKey,
        kind: &str,
    ) -> Result<SourceStatus, StoreError> {
        let mut st = SourceStatus {
            tenant: key.tenant.clone(),
            source: key.source.clone(),
            kind: kind.to_string(),
            phase: "full".to_string(),
            ..Default::default()
        };
        let phase: Option<(String,)> =
            sqlx::query_as("SELECT phase FROM progress WHERE tenant = ?1 AND source = ?2")
                .bind(&key.tenant)
                .bind(&key.source)
                .fetch_optional(&self.reader)
                .await?;
        if let Some((p,)) = phase {
            st.phase = p;
        }
        let last_ok: Option<(Option<i64>,)> = sqlx::query_as(
            "SELECT MAX(finished_at) FROM runs WHERE tenant = ?1 AND source = ?2 AND outcome = 'success'",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .fetch_optional(&self.reader)
        .await?;
        st.last_success = last_ok.and_then(|(t,)| t).map(crate::time::format_us);
        let last: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT outcome, error FROM runs WHERE tenant = ?1 AND source = ?2 \
             AND outcome <> 'running' ORDER BY id DESC LIMIT 1",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .fetch_optional(&self.reader)
        .await?;
        if let Some((outcome, error)) = last {
            if outcome != "success" {
                st.last_error = error;
            }
            st.last_outcome = Some(outcome);
        }
        let (live, dead): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(deleted = 0), 0), COALESCE(SUM(deleted = 1), 0) \
             FROM records WHERE tenant = ?1 AND source = ?2",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .fetch_one(&self.reader)
        .await?;
        st.records = live;
        st.deleted_records = dead;
        let (pending, failed): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(status = 'pending'), 0), COALESCE(SUM(status = 'failed'), 0) \
             FROM outbox WHERE tenant = ?1 AND source = ?2",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .fetch_one(&self.reader)
        .await?;
        st.pending_reports = pending;
        st.failed_reports = failed;
        st.lease_holder = self.lease_holder(key).await?;
        Ok(st)
    }
}
