//! Sources that are stored but no longer configured: finding them, and
//! `synchro forget` deleting everything stored about them.
//!
//! A source removed from the config keeps its records, progress, run history
//! and import reports: the daemon stops syncing it, nothing deletes it, and
//! `export --all` still shows its records. Forgetting is explicit, and
//! complete: a source half forgotten (records gone, progress kept) would
//! resume incrementally into an empty copy if it came back.

use super::{SqliteStore, StoreError};
use crate::model::SourceKey;
use crate::store::Forgotten;

/// What `forget` deletes, table by table, in [`Forgotten`]'s field order.
const FORGET: [&str; 4] = [
    "DELETE FROM records WHERE tenant = ?1 AND source = ?2",
    "DELETE FROM progress WHERE tenant = ?1 AND source = ?2",
    "DELETE FROM runs WHERE tenant = ?1 AND source = ?2",
    "DELETE FROM outbox WHERE tenant = ?1 AND source = ?2",
];

impl SqliteStore {
    /// Every source with something stored (records, progress, runs or
    /// import reports), in name order. Scans the tables' key indexes: for
    /// listings and error messages, not for every command.
    pub async fn stored_sources(&self) -> Result<Vec<SourceKey>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT tenant, source FROM records \
             UNION SELECT tenant, source FROM progress \
             UNION SELECT tenant, source FROM runs \
             UNION SELECT tenant, source FROM outbox \
             ORDER BY 1, 2",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(tenant, source)| SourceKey { tenant, source })
            .collect())
    }

    /// Whether anything is stored for `key` (one index probe per table).
    pub async fn is_stored(&self, key: &SourceKey) -> Result<bool, StoreError> {
        let (found,): (i64,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM records WHERE tenant = ?1 AND source = ?2) \
             OR EXISTS (SELECT 1 FROM progress WHERE tenant = ?1 AND source = ?2) \
             OR EXISTS (SELECT 1 FROM runs WHERE tenant = ?1 AND source = ?2) \
             OR EXISTS (SELECT 1 FROM outbox WHERE tenant = ?1 AND source = ?2)",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .fetch_one(&self.reader)
        .await?;
        Ok(found != 0)
    }

    /// Deletes the records (tombstones included), progress, runs and
    /// import reports of `sources`, all in one transaction: either every
    /// source is forgotten or nothing is. Says what went, per source.
    pub async fn forget_sources(
        &self,
        sources: &[SourceKey],
    ) -> Result<Vec<(SourceKey, Forgotten)>, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut out = Vec::with_capacity(sources.len());
        for key in sources {
            // A removed source still being synced (a daemon not reloaded
            // yet, a `sync` with an older config): forgetting it under that
            // run would leave its next commits writing into a forgotten
            // source. Its lease is freed otherwise (the row stays: epochs
            // only grow): a run fenced on it can never commit again.
            let held: Option<(Option<i64>, Option<String>)> = sqlx::query_as(
                "SELECT pid, host FROM leases WHERE tenant = ?1 AND source = ?2 \
                 AND run_id IS NOT NULL AND expires_at > ?3",
            )
            .bind(&key.tenant)
            .bind(&key.source)
            .bind(super::now_us())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((pid, host)) = held {
                return Err(StoreError::forget_busy(key, pid, host));
            }
            sqlx::query(
                "UPDATE leases SET run_id = NULL, expires_at = 0 WHERE tenant = ?1 AND source = ?2",
            )
            .bind(&key.tenant)
            .bind(&key.source)
            .execute(&mut *tx)
            .await?;
            // Its rows leave no tombstone: a feed reader that has not
            // seen its changes must resync rather than miss them.
            sqlx::query(
                "UPDATE change_seq SET purged_through = max(purged_through, \
                 coalesce((SELECT max(seq) FROM records WHERE tenant = ?1 AND source = ?2), 0)) \
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
            let gone = Forgotten {
                records,
                progress,
                runs,
                reports,
            };
            out.push((key.clone(), gone));
        }
        tx.commit().await?;
        Ok(out)
    }
}
