//! `synchro export`: records as JSON Lines, ordered by tenant, source, id.

use futures::TryStreamExt;
use sqlx::Row;

use super::{SqliteStore, StoreError};
use crate::model::SourceKey;
use crate::store::ExportRow;
use crate::store::types::stored_payload;

impl SqliteStore {
    /// Streams the records of `sources` (every stored source if empty) to
    /// `sink`, in order.
    pub async fn export(
        &self,
        sources: &[SourceKey],
        include_deleted: bool,
        mut sink: impl FnMut(ExportRow) -> std::io::Result<()>,
    ) -> Result<u64, StoreError> {
        if sources.is_empty() {
            return self.export_where(None, include_deleted, &mut sink).await;
        }
        let mut keys = sources.to_vec();
        keys.sort();
        keys.dedup();
        let mut n = 0;
        for key in &keys {
            n += self
                .export_where(Some(key), include_deleted, &mut sink)
                .await?;
        }
        Ok(n)
    }

    /// One ordered scan of the key index: all sources, or a range search
    /// of one. (Two statements: with `?2 IS NULL OR tenant = ?2 ...` in one,
    /// SQLite plans a scan of the whole index for every source.)
    async fn export_where(
        &self,
        key: Option<&SourceKey>,
        include_deleted: bool,
        sink: &mut impl FnMut(ExportRow) -> std::io::Result<()>,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        let mut rows = match key {
            None => sqlx::query(
                "SELECT tenant, source, kind, id, deleted, updated_at, data FROM records \
                 WHERE (?1 OR deleted = 0) ORDER BY tenant, source, id",
            )
            .bind(include_deleted)
            .fetch(&self.reader),
            Some(key) => sqlx::query(
                "SELECT tenant, source, kind, id, deleted, updated_at, data FROM records \
                 WHERE (?1 OR deleted = 0) AND tenant = ?2 AND source = ?3 \
                 ORDER BY tenant, source, id",
            )
            .bind(include_deleted)
            .bind(key.tenant.as_str())
            .bind(key.source.as_str())
            .fetch(&self.reader),
        };
        while let Some(row) = rows.try_next().await? {
            let line = ExportRow {
                tenant: row.try_get(0)?,
                source: row.try_get(1)?,
                kind: row.try_get(2)?,
                id: row.try_get(3)?,
                deleted: row.try_get::<i64, _>(4)? != 0,
                updated_at: row.try_get(5)?,
                data: stored_payload(row.try_get(6)?)?,
            };
            sink(line).map_err(StoreError::Write)?;
            n += 1;
        }
        Ok(n)
    }
}
