//! `copy-store` on SQLite: reads each table in key order after the last row
//! of the previous batch, writes a batch in one transaction.

use sqlx::Row;

use super::now_us;
use super::{SqliteStore, StoreError};
use crate::model::SourceKey;
use crate::store::Holder;
use crate::store::changes::{Head, READ_HEAD};
use crate::store::copy::{CopyAfter, CopyRow, Table, decode};

const RECORD_COLUMNS: &str =
    "tenant, source, id, kind, updated_at, updated_us, deleted, data, stored_at, listing, seq";
const PROGRESS_COLUMNS: &str = "tenant, source, kind, phase, state, updated_at";
const RUN_COLUMNS: &str = "id, run_id, tenant, source, kind, started_at, finished_at, outcome, \
                           error, pages, upserted, deleted, scheduled_at";
const REPORT_COLUMNS: &str = "id, tenant, source, record_id, completed_at, import_state, message, \
                              status, attempts, last_error, next_attempt_at, created_at, sent_at";

impl SqliteStore {
    /// Up to `limit` rows of `table` after `after`, in key order.
    pub async fn copy_out(
        &self,
        table: Table,
        after: Option<CopyAfter>,
        limit: i64,
    ) -> Result<Vec<CopyRow>, StoreError> {
        let (columns, name, order, key_len) = match table {
            Table::Records => (RECORD_COLUMNS, "records", "tenant, source, id", 3),
            Table::Progress => (PROGRESS_COLUMNS, "progress", "tenant, source", 2),
            Table::Runs => (RUN_COLUMNS, "runs", "id", 0),
            Table::Outbox => (REPORT_COLUMNS, "outbox", "id", 0),
        };
        let condition = match (&after, key_len) {
            (None, _) => "1".to_string(),
            (Some(_), 0) => "id > ?".to_string(),
            (Some(_), n) => format!("({order}) > ({})", vec!["?"; n].join(", ")),
        };
        let sql = format!(
            "SELECT {columns} FROM {name} WHERE {condition} ORDER BY {order} LIMIT {limit}"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        match after {
            None => {}
            Some(CopyAfter::Seq(id)) => query = query.bind(id),
            Some(CopyAfter::Key(parts)) => {
                if parts.len() != key_len {
                    return Err(StoreError::Corrupt(format!(
                        "a {} key has {} parts",
                        table.name(),
                        parts.len()
                    )));
                }
                for part in parts {
                    query = query.bind(part);
                }
            }
        }
        let rows = query.fetch_all(&self.reader).await?;
        rows.iter().map(|row| decode(table, row)).collect()
    }

    pub async fn change_counter(&self) -> Result<Head, StoreError> {
        Ok(sqlx::query_as(READ_HEAD).fetch_one(&self.reader).await?)
    }

    pub async fn raise_change_counter(&self, to: Head) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE change_seq SET last_seq = max(last_seq, ?1), \
             purged_through = max(purged_through, ?2), \
             purge_cutoff_us = max(purge_cutoff_us, ?3) WHERE id = 1",
        )
        .bind(to.last_seq)
        .bind(to.purged_through)
        .bind(to.purge_cutoff_us)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Writes copied rows, in one transaction. Outbox rows lose their
    /// claims: no process of this database sends them yet.
    pub async fn copy_in(&self, rows: Vec<CopyRow>) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut n = 0;
        for row in rows {
            let q = match row {
                CopyRow::Record {
                    tenant,
                    source,
                    id,
                    kind,
                    updated_at,
                    updated_us,
                    deleted,
                    data,
                    stored_at,
                    listing,
                    change,
                } => sqlx::query(
                    "INSERT INTO records (tenant, source, id, kind, updated_at, updated_us, \
                     deleted, data, stored_at, listing, seq) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(tenant)
                .bind(source)
                .bind(id)
                .bind(kind)
                .bind(updated_at)
                .bind(updated_us)
                .bind(deleted)
                .bind(data)
                .bind(stored_at)
                .bind(listing)
                .bind(change),
                CopyRow::Progress {
                    tenant,
                    source,
                    kind,
                    phase,
                    state,
                    updated_at,
                } => sqlx::query(
                    "INSERT INTO progress (tenant, source, kind, phase, state, updated_at) \
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(tenant)
                .bind(source)
                .bind(kind)
                .bind(phase)
                .bind(state)
                .bind(updated_at),
                CopyRow::Run {
                    seq: _,
                    run_id,
                    tenant,
                    source,
                    kind,
                    started_at,
                    finished_at,
                    outcome,
                    error,
                    pages,
                    upserted,
                    deleted,
                    scheduled_at,
                } => sqlx::query(
                    "INSERT INTO runs (run_id, tenant, source, kind, started_at, finished_at, \
                     outcome, error, pages, upserted, deleted, scheduled_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(run_id)
                .bind(tenant)
                .bind(source)
                .bind(kind)
                .bind(started_at)
                .bind(finished_at)
                .bind(outcome)
                .bind(error)
                .bind(pages)
                .bind(upserted)
                .bind(deleted)
                .bind(scheduled_at),
                CopyRow::Report {
                    seq: _,
                    tenant,
                    source,
                    record_id,
                    completed_at,
                    import_state,
                    message,
                    status,
                    attempts,
                    last_error,
                    next_attempt_at,
                    created_at,
                    sent_at,
                } => sqlx::query(
                    "INSERT INTO outbox (tenant, source, record_id, completed_at, import_state, \
                     message, status, attempts, last_error, next_attempt_at, created_at, sent_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(tenant)
                .bind(source)
                .bind(record_id)
                .bind(completed_at)
                .bind(import_state)
                .bind(message)
                .bind(status)
                .bind(attempts)
                .bind(last_error)
                .bind(next_attempt_at)
                .bind(created_at)
                .bind(sent_at),
            };
            n += q.execute(&mut *tx).await?.rows_affected();
        }
        let done = tx.commit().await.map(|_| n).map_err(StoreError::from);
        self.commit_result(done).await
    }

    /// A source whose lease a run holds now, if any (with who holds it).
    pub async fn any_lease_holder(&self) -> Result<Option<(SourceKey, Holder)>, StoreError> {
        let row = sqlx::query(
            "SELECT tenant, source, run_id, host, pid, acquired_at, expires_at FROM leases \
             WHERE run_id IS NOT NULL AND expires_at > ?1 LIMIT 1",
        )
        .bind(now_us())
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let key = SourceKey::new(&row.try_get::<String, _>(0)?, &row.try_get::<String, _>(1)?);
        let holder = Holder {
            run_id: row.try_get(2)?,
            host: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
            pid: row.try_get::<Option<i64>, _>(4)?.unwrap_or(0),
            since_us: row.try_get::<Option<i64>, _>(5)?.unwrap_or(0),
            expires_us: row.try_get(6)?,
        };
        Ok(Some((key, holder)))
    }
}
