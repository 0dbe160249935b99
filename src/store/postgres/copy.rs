//! `copy-store` on Postgres: each table read in key order after the last
//! row of the previous batch; a batch written in one transaction.

use super::PgStore;
use crate::store::StoreError;
use crate::store::changes::{Head, READ_HEAD};
use crate::store::copy::{CopyAfter, CopyRow, Table, decode};

const RECORD_COLUMNS: &str = "tenant, source, id, kind, updated_at, updated_us, deleted, data::text, stored_at, listing, seq";
const PROGRESS_COLUMNS: &str = "tenant, source, kind, phase, state, updated_at";
const RUN_COLUMNS: &str = "id, run_id, tenant, source, kind, started_at, finished_at, outcome, \
                           error, pages, upserted, deleted, scheduled_at";
const REPORT_COLUMNS: &str = "id, tenant, source, record_id, completed_at, import_state, message, \
                              status, attempts, last_error, next_attempt_at, created_at, sent_at";

impl PgStore {
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
            (None, _) => "true".to_string(),
            (Some(_), 0) => "id > $1".to_string(),
            (Some(_), n) => {
                let params: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
                format!("({order}) > ({})", params.join(", "))
            }
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
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(|row| decode(table, row)).collect()
    }

    pub async fn change_counter(&self) -> Result<Head, StoreError> {
        Ok(sqlx::query_as(READ_HEAD).fetch_one(&self.pool).await?)
    }

    pub async fn raise_change_counter(&self, to: Head) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE change_seq SET last_seq = greatest(last_seq, $1), \
             purged_through = greatest(purged_through, $2), \
             purge_cutoff_us = greatest(purge_cutoff_us, $3) WHERE id = 1",
        )
        .bind(to.last_seq)
        .bind(to.purged_through)
        .bind(to.purge_cutoff_us)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn copy_in(&self, rows: Vec<CopyRow>) -> Result<u64, StoreError> {
        let written = async {
            let mut tx = self.pool.begin().await?;
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
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::json, $9, $10, $11)",
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
                         VALUES ($1, $2, $3, $4, $5, $6)",
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
                        "INSERT INTO runs (run_id, tenant, source, kind, started_at, \
                         finished_at, outcome, error, pages, upserted, deleted, scheduled_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
                        "INSERT INTO outbox (tenant, source, record_id, completed_at, \
                         import_state, message, status, attempts, last_error, next_attempt_at, \
                         created_at, sent_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
            tx.commit().await?;
            Ok::<_, StoreError>(n)
        }
        .await;
        self.commit_result(written)
    }
}
