//! `export`, the stored-source listings and `forget` on Postgres (see the
//! SQLite backend's `export.rs` and `forget.rs` for the rules).

use futures::TryStreamExt;
use sqlx::Row;

use super::PgStore;
use crate::model::SourceKey;
use crate::store::changes::{ChangeScope, Changes, Head, MAX_CHANGES_PER_PAGE, READ_HEAD};
use crate::store::types::stored_payload;
use crate::store::{ExportRow, Forgotten, StoreError};

/// The columns of an export line, in [`export_row`]'s order.
const LINE: &str = "seq, tenant, source, kind, id, deleted, updated_at, data::text";

/// The feed through the seq index, filtered to the sources asked for (all
/// when `$3` is empty), optionally to one tenant (`$5`).
const CHANGES: &str = "SELECT seq, tenant, source, kind, id, deleted, updated_at, data::text \
     FROM records WHERE seq > $1 \
       AND ($5::text IS NULL OR tenant = $5) \
       AND (cardinality($3::text[]) = 0 OR (tenant, source) IN \
            (SELECT * FROM UNNEST($3::text[], $4::text[]))) \
     ORDER BY seq LIMIT $2";

fn export_row(row: &sqlx::postgres::PgRow) -> Result<ExportRow, StoreError> {
    Ok(ExportRow {
        seq: row.try_get(0)?,
        tenant: row.try_get(1)?,
        source: row.try_get(2)?,
        kind: row.try_get(3)?,
        id: row.try_get(4)?,
        deleted: row.try_get(5)?,
        updated_at: row.try_get(6)?,
        data: stored_payload(row.try_get(7)?)?,
    })
}

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
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LINE} FROM records \
             WHERE ($1 OR NOT deleted) \
               AND (cardinality($2::text[]) = 0 OR (tenant, source) IN \
                    (SELECT * FROM UNNEST($2::text[], $3::text[]))) \
             ORDER BY tenant, source, id"
        )))
        .bind(include_deleted)
        .bind(&tenants)
        .bind(&names)
        .fetch(&self.pool);
        let mut n = 0;
        while let Some(row) = rows.try_next().await? {
            sink(export_row(&row)?).map_err(StoreError::Write)?;
            n += 1;
        }
        Ok(n)
    }

    /// Up to `limit` changes after `since` in `scope`, in change order,
    /// read in one snapshot (repeatable read) with the counter they are
    /// judged by: a writer holds the counter until it commits, so every
    /// row numbered at or below the snapshot's `last_seq` is in it.
    pub async fn changes(
        &self,
        since: i64,
        scope: &ChangeScope,
        limit: i64,
    ) -> Result<Changes, StoreError> {
        let limit = limit.clamp(1, MAX_CHANGES_PER_PAGE);
        let (tenant, keys): (Option<&str>, &[SourceKey]) = match scope {
            ChangeScope::All => (None, &[]),
            ChangeScope::Tenant(t) => (Some(t.as_str()), &[]),
            // No source at all is no row at all (an empty list would mean
            // every source to the statement).
            ChangeScope::Sources(keys) if keys.is_empty() => (Some(""), &[]),
            ChangeScope::Sources(keys) => (None, keys.as_slice()),
        };
        let (tenants, names): (Vec<&str>, Vec<&str>) = keys
            .iter()
            .map(|k| (k.tenant.as_str(), k.source.as_str()))
            .unzip();
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let head: Head = sqlx::query_as(READ_HEAD).fetch_one(&mut *tx).await?;
        head.check(since)?;
        let rows = sqlx::query(CHANGES)
            .bind(since)
            .bind(limit)
            .bind(&tenants)
            .bind(&names)
            .bind(tenant)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(export_row)
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        let next_since = head.next_since(&rows, limit);
        Ok(Changes { rows, next_since })
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
            // Its rows leave no tombstone: a feed reader that has not
            // seen its changes must resync rather than miss them. (Takes
            // the counter before any record row, as every writer does.)
            sqlx::query(
                "UPDATE change_seq SET purged_through = greatest(purged_through, \
                 coalesce((SELECT max(seq) FROM records WHERE tenant = $1 AND source = $2), 0)) \
                 WHERE id = 1",
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
