//! The writer's page cache. SQLite's default 2 MiB is what an idle daemon
//! should hold, but it is smaller than the key index of a large source: a
//! listing in random id order (calendar) then reads index pages back from
//! the OS for nearly every row, the top entry of a calendar sync's profile. A
//! large sync widens the cache for as long as it runs; the last one to end
//! narrows it again and hands the memory back.
//!
//! The same large syncs let the WAL grow to [`WIDE_CHECKPOINT_PAGES`]
//! between automatic checkpoints instead of SQLite's 1,000 pages. A listing
//! in random id order dirties an index page for nearly every row, and each
//! checkpoint writes (and syncs) every page dirtied since the last one: the
//! rarer the checkpoints, the more rewrites of one page collapse into one
//! write. Measured with synchro's schema, 200,000 random 26-character ids of
//! ~900 B, 1,000 rows a transaction: 2.4 s of CPU (4.6 s wall) with
//! checkpoints every 1,000 pages, 1.5 s (2.8 s) every 10,000. Nothing else
//! changes: commits stay durable in the WAL, the WAL is checkpointed by the
//! first commit after the sync, and the writer keeps its WAL file at
//! [`WAL_SIZE_LIMIT`] bytes once it is reset.

use std::sync::atomic::Ordering;

use super::{SqliteStore, StoreError};

/// The cache while at least one large sync runs, in KiB (SQLite's negative
/// unit).
const WIDE_KIB: i64 = 16 * 1024;

/// SQLite's default, in KiB.
const NARROW_KIB: i64 = 2000;

/// WAL pages between automatic checkpoints while a large sync runs
/// (32 MiB of 4 KiB pages).
const WIDE_CHECKPOINT_PAGES: i64 = 8192;

/// SQLite's default.
const NARROW_CHECKPOINT_PAGES: i64 = 1000;

/// The size the writer truncates its WAL file to when the WAL restarts
/// after a checkpoint, so that a large sync's WAL does not stay on disk.
pub(super) const WAL_SIZE_LIMIT: i64 = 4 * 1024 * 1024;

impl SqliteStore {
    /// A large sync starts: widen the writer's page cache (once for all the
    /// large syncs running at the same time).
    pub async fn widen_cache(&self) -> Result<(), StoreError> {
        if self.wide.fetch_add(1, Ordering::SeqCst) == 0
            && let Err(e) = self.set_cache(WIDE_KIB, WIDE_CHECKPOINT_PAGES).await
        {
            self.wide.fetch_sub(1, Ordering::SeqCst);
            return Err(e);
        }
        Ok(())
    }

    /// A large sync that widened the cache ended: the last one narrows it and
    /// frees what SQLite no longer needs.
    pub async fn narrow_cache(&self) -> Result<(), StoreError> {
        if self.wide.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.set_cache(NARROW_KIB, NARROW_CHECKPOINT_PAGES).await?;
            self.release_memory().await?;
        }
        Ok(())
    }

    /// Frees the writer's page cache (the daemon went idle): pages are read
    /// back from the OS cache when the next run needs them.
    pub async fn release_memory(&self) -> Result<(), StoreError> {
        sqlx::query("PRAGMA shrink_memory")
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn set_cache(&self, kib: i64, checkpoint_pages: i64) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA cache_size = -{kib}")))
            .execute(&self.writer)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA wal_autocheckpoint = {checkpoint_pages}"
        )))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The writer's automatic checkpoint threshold in pages (tests).
    pub async fn checkpoint_pages(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(&self.writer)
            .await?)
    }

    /// The writer's cache size in KiB (tests).
    pub async fn cache_kib(&self) -> Result<i64, StoreError> {
        let size: i64 = sqlx::query_scalar("PRAGMA cache_size")
            .fetch_one(&self.writer)
            .await?;
        Ok(if size < 0 { -size } else { size * 4 })
    }
}
