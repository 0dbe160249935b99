//! Tombstone retention (see `Store::purge_tombstones`): one short batch
//! per write transaction, so that the syncs' commits slip in between.

use super::{SqliteStore, StoreError};
use crate::store::changes::PURGE_BATCH;

/// The oldest tombstones first, found through the partial index that holds
/// only tombstones.
const PURGE: &str = "DELETE FROM records WHERE rowid IN \
     (SELECT rowid FROM records INDEXED BY records_tombstones \
      WHERE deleted = 1 AND stored_at < ?1 ORDER BY stored_at LIMIT ?2) \
     RETURNING seq";

/// In the purge's transaction: readers behind what it removed must resync,
/// and no commit may store its deletions again (see
/// `batch::keep_held_deletions`).
const RAISE: &str = "UPDATE change_seq SET purge_cutoff_us = max(purge_cutoff_us, ?1), \
     purged_through = max(purged_through, ?2) WHERE id = 1";

impl SqliteStore {
    pub async fn purge_tombstone_batch(&self, cutoff: i64) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
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
