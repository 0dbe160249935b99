//! Tombstone retention on Postgres (see `Store::purge_tombstones`): one
//! short batch per transaction, the counter taken before any record row as
//! every writer does.

use super::PgStore;
use crate::store::StoreError;
use crate::store::changes::PURGE_BATCH;

const PURGE: &str = "DELETE FROM records WHERE (tenant, source, id) IN \
     (SELECT tenant, source, id FROM records \
      WHERE deleted AND stored_at < $1 ORDER BY stored_at LIMIT $2) \
     RETURNING seq";

/// Under the counter's lock, in the purge's transaction (see the SQLite
/// backend's `RAISE`).
const RAISE: &str = "UPDATE change_seq SET purge_cutoff_us = greatest(purge_cutoff_us, $1), \
     purged_through = greatest(purged_through, $2) WHERE id = 1";

impl PgStore {
    pub async fn purge_tombstone_batch(&self, cutoff: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(super::records::TAKE_COUNTER)
            .execute(&mut *tx)
            .await?;
        let seqs: Vec<i64> = sqlx::query_scalar(PURGE)
            .bind(cutoff)
            .bind(PURGE_BATCH)
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query(RAISE)
            .bind(cutoff)
            .bind(seqs.iter().max().copied().unwrap_or(0))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(seqs.len() as u64)
    }
}
