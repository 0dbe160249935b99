//! `export`, the stored-source listings and `forget` on Postgres (see the
//! SQLite backend's `export.rs` and `forget.rs` for the rules).

use futures::TryStreamExt;
use sqlx::Row;

use super::PgStore;
use crate::model::SourceKey;
use crate::store::types::stored_payload;
use crate::store::{ExportRow, Forgotten, StoreError};

/// What `forget` deletes, table by table, in [`Forgotten`]'s field order.
const FORGET: [&str; 4] = [
    "DELETE FROM records WHERE tenant = $1 AND source = $2",
    "DELETE FROM progress WHERE tenant = $1 AND source = $2",
    "DELETE FROM runs WHERE tenant = $1 AND source = $2",
    "DELETE FROM outbox WHERE tenant = $1 AND source = $2",
];

impl PgStore {
    pub async fn export(
        &self,
        sources: &[SourceKey],
        include_deleted: bool,
        mut sink: impl FnMut(ExportRow) -> std::io::Result<()>,
    ) -> Result<u64, StoreError> {
        let (tenants, names): (Vec<&str>, Vec<&str>) = sources
            .iter()
            .map(|k| (k.tenant.as_str(), k.source.as_str()))
            .unzip();
        // One ordered scan of the primary key, filtered to the sources
        // asked for (all when none). Streamed: memory stays flat.
        let mut rows = sqlx::query(
            "SELECT tenant, source, kind, id, deleted, updated_at, data::text FROM records \
             WHERE ($1 OR NOT deleted) \
               AND (cardinality($2::text[]) = 0 OR (tenant, source) IN \
                    (SELECT * FROM UNNEST($2::text[], $3::text[]))) \
             ORDER BY tenant, source, id",
        )
        .bind(include_deleted)
        .bind(&tenants)
        .bind(&names)
        .fetch(&self.pool);
        let mut n = 0;
        while let Some(row) = rows.try_next().await? {
            let line = ExportRow {
                tenant: row.try_get(0)?,
                source: row.try_get(1)?,
                kind: row.try_get(2)?,
                id: row.try_get(3)?,
                deleted: row.try_get(4)?,
                updated_at: row.try_get(5)?,
                data: stored_payload(row.try_get(6)?)?,
            };
            sink(line).map_err(StoreError::Write)?;
            n += 1;
        }
        Ok(n)
    }

    pub async fn stored_sources(&self) -> Result<Vec<SourceKey>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT tenant, source FROM records \
             UNION SELECT tenant, source FROM progress \
             UNION SELECT tenant, source FROM runs \
             UNION SELECT tenant, source FROM outbox \
             ORDER BY 1, 2",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(tenant, source)| SourceKey { tenant, source })
            .collect())
    }

    pub async fn is_stored(&self, key: &SourceKey) -> Result<bool, StoreError> {
        let (found,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM records WHERE tenant = $1 AND source = $2) \
             OR EXISTS (SELECT 1 FROM progress WHERE tenant = $1 AND source = $2) \
             OR EXISTS (SELECT 1 FROM runs WHERE tenant = $1 AND source = $2) \
             OR EXISTS (SELECT 1 FROM outbox WHERE tenant = $1 AND source = $2)",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .fetch_one(&self.pool)
        .await?;
        Ok(found)
    }

    pub async fn forget_sources(
        &self,
        sources: &[SourceKey],
    ) -> Result<Vec<(SourceKey, Forgotten)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(sources.len());
        for key in sources {
            // Locks the lease row: a run cannot take the lease while the
            // source is being forgotten, nor be forgotten under its run.
            let held: Option<(Option<i64>, Option<String>)> = sqlx::query_as(
                "SELECT pid, host FROM leases WHERE tenant = $1 AND source = $2 \
                 AND run_id IS NOT NULL AND expires_at > synchro_now_us() FOR UPDATE",
            )
            .bind(&key.tenant)
            .bind(&key.source)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((pid, host)) = held {
                return Err(StoreError::forget_busy(key, pid, host));
            }
            sqlx::query(
                "UPDATE leases SET run_id = NULL, expires_at = 0 WHERE tenant = $1 AND source = $2",
            )
            .bind(&key.tenant)
            .bind(&key.source)
            .execute(&mut *tx)
            .await?;
            let mut deleted = [0u64; 4];
            for (sql, count) in FORGET.iter().zip(deleted.iter_mut()) {
                *count = sqlx::query(*sql)
                    .bind(&key.tenant)
                    .bind(&key.source)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            let [records, progress, runs, reports] = deleted;
            out.push((
                key.clone(),
                Forgotten {
                    records,
                    progress,
                    runs,
                    reports,
                },
            ));
        }
        tx.commit().await?;
        Ok(out)
    }
}
