//! `synchro export`: records as JSON Lines, ordered by tenant, source, id;
//! and the change feed (`export --since`, `/v1/changes`): the rows changed
//! after a position, in change order.

use futures::TryStreamExt;
use sqlx::Row;

use super::{SqliteStore, StoreError};
use crate::model::SourceKey;
use crate::store::ExportRow;
use crate::store::changes::{ChangeScope, Changes, Head, MAX_CHANGES_PER_PAGE, READ_HEAD};
use crate::store::types::stored_payload;

/// The columns of an export line, in [`export_row`]'s order.
const LINE: &str = "seq, tenant, source, kind, id, deleted, updated_at, data";

/// The feed through the seq index (named: with a tenant or sources to
/// match, SQLite would rather walk the key index and sort).
const CHANGES_ALL: &str = "SELECT seq, tenant, source, kind, id, deleted, updated_at, data \
     FROM records INDEXED BY records_seq WHERE seq > ?1 ORDER BY seq LIMIT ?2";
const CHANGES_OF_TENANT: &str = "SELECT seq, tenant, source, kind, id, deleted, updated_at, data \
     FROM records INDEXED BY records_seq WHERE seq > ?1 AND tenant = ?3 ORDER BY seq LIMIT ?2";
const CHANGES_OF_SOURCES: &str = "SELECT seq, tenant, source, kind, id, deleted, updated_at, data \
     FROM records INDEXED BY records_seq WHERE seq > ?1 \
       AND EXISTS (SELECT 1 FROM json_each(?3) AS k \
                   WHERE k.value ->> 0 = tenant AND k.value ->> 1 = source) \
     ORDER BY seq LIMIT ?2";

fn export_row(row: &sqlx::sqlite::SqliteRow) -> Result<ExportRow, StoreError> {
    Ok(ExportRow {
        seq: row.try_get(0)?,
        tenant: row.try_get(1)?,
        source: row.try_get(2)?,
        kind: row.try_get(3)?,
        id: row.try_get(4)?,
        deleted: row.try_get::<i64, _>(5)? != 0,
        updated_at: row.try_get(6)?,
        data: stored_payload(row.try_get(7)?)?,
    })
}

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
            None => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {LINE} FROM records WHERE (?1 OR deleted = 0) ORDER BY tenant, source, id"
            )))
            .bind(include_deleted)
            .fetch(&self.reader),
            Some(key) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {LINE} FROM records \
                 WHERE (?1 OR deleted = 0) AND tenant = ?2 AND source = ?3 \
                 ORDER BY tenant, source, id"
            )))
            .bind(include_deleted)
            .bind(key.tenant.as_str())
            .bind(key.source.as_str())
            .fetch(&self.reader),
        };
        while let Some(row) = rows.try_next().await? {
            sink(export_row(&row)?).map_err(StoreError::Write)?;
            n += 1;
        }
        Ok(n)
    }

    /// Up to `limit` changes after `since` in `scope`, in change order,
    /// read in one snapshot with the counter they are judged by.
    pub async fn changes(
        &self,
        since: i64,
        scope: &ChangeScope,
        limit: i64,
    ) -> Result<Changes, StoreError> {
        let limit = limit.clamp(1, MAX_CHANGES_PER_PAGE);
        let mut tx = self.reader.begin().await?;
        let head: Head = sqlx::query_as(READ_HEAD).fetch_one(&mut *tx).await?;
        head.check(since)?;
        let query = match scope {
            ChangeScope::All => sqlx::query(CHANGES_ALL).bind(since).bind(limit),
            ChangeScope::Tenant(tenant) => sqlx::query(CHANGES_OF_TENANT)
                .bind(since)
                .bind(limit)
                .bind(tenant.clone()),
            ChangeScope::Sources(keys) => {
                let pairs: Vec<[&str; 2]> = keys
                    .iter()
                    .map(|k| [k.tenant.as_str(), k.source.as_str()])
                    .collect();
                let json = serde_json::to_string(&pairs)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                sqlx::query(CHANGES_OF_SOURCES)
                    .bind(since)
                    .bind(limit)
                    .bind(json)
            }
        };
        let rows = query
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(export_row)
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        let next_since = head.next_since(&rows, limit);
        Ok(Changes { rows, next_since })
    }
}
