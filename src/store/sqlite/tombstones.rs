//! Tombstone retention: deletions stay visible to change-feed readers for
//! `[storage] tombstone_retention`, then go, a short batch per write
//! transaction (the syncs' commits slip in between). Each batch raises the
//! counter's `purged_through` to the highest seq it removed, in the same
//! transaction: a reader behind it is told to resync, never left with a
//! silent gap.

use std::time::Duration;

use super::{SqliteStore, StoreError, now_us};

/// Tombstones removed per write transaction.
const PURGE_BATCH: i64 = 500;

/// The oldest tombstones first, found through the partial index that holds
/// only tombstones.
const PURGE: &str = "DELETE FROM records WHERE rowid IN \
     (SELECT rowid FROM records INDEXED BY records_tombstones \
      WHERE deleted = 1 AND stored_at < ?1 ORDER BY stored_at LIMIT ?2) \
     RETURNING seq";

/// Raised before the purge, in its transaction: no commit can bring back
/// a tombstone the purge removes (see `batch::keep_held_deletions`).
const RAISE_CUTOFF: &str =
    "UPDATE change_seq SET purge_cutoff_us = max(purge_cutoff_us, ?1) WHERE id = 1";

impl SqliteStore {
    /// Deletes the tombstones stored more than `max_age` ago; returns how
    /// many went.
    pub async fn purge_tombstones(&self, max_age: Duration) -> Result<u64, StoreError> {
        let max_age_us = i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX);
        let cutoff = now_us().saturating_sub(max_age_us);
        let mut purged = 0;
        loop {
            let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query(RAISE_CUTOFF)
                .bind(cutoff)
                .execute(&mut *tx)
                .await?;
            let seqs: Vec<(i64,)> = sqlx::query_as(PURGE)
                .bind(cutoff)
                .bind(PURGE_BATCH)
                .fetch_all(&mut *tx)
                .await?;
            let Some(highest) = seqs.iter().map(|(s,)| *s).max() else {
                tx.commit().await?;
                return Ok(purged);
            };
            sqlx::query(
                "UPDATE change_seq SET purged_through = max(purged_through, ?1) WHERE id = 1",
            )
            .bind(highest)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            purged += seqs.len() as u64;
        }
    }
}
