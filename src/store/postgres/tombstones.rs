//! Tombstone retention on Postgres (see the SQLite backend's
//! `tombstones.rs`): short batches, each raising `purged_through` in its
//! own transaction, the counter taken before any record row as every
//! writer does.

use std::time::Duration;

use super::PgStore;
use crate::store::StoreError;

/// Tombstones removed per transaction.
const PURGE_BATCH: i64 = 500;

const PURGE: &str = "DELETE FROM records WHERE (tenant, source, id) IN \
     (SELECT tenant, source, id FROM records \
      WHERE deleted AND stored_at < $1 ORDER BY stored_at LIMIT $2) \
     RETURNING seq";

/// Raised in the purge's transaction, under the counter's lock (see
/// `batch::keep_held_deletions`).
const RAISE_CUTOFF: &str =
    "UPDATE change_seq SET purge_cutoff_us = greatest(purge_cutoff_us, $1) WHERE id = 1";

impl PgStore {
    pub async fn purge_tombstones(&self, max_age: Duration) -> Result<u64, StoreError> {
        let max_age_us = i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX);
        let cutoff = crate::time::now_us().saturating_sub(max_age_us);
        let mut purged = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            sqlx::query(super::records::TAKE_COUNTER)
                .execute(&mut *tx)
                .await?;
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
                "UPDATE change_seq SET purged_through = greatest(purged_through, $1) WHERE id = 1",
            )
            .bind(highest)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            purged += seqs.len() as u64;
        }
    }
}
