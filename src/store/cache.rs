//! The writer's page cache. SQLite's default 2 MiB is what an idle daemon
//! should hold, but it is smaller than the key index of a large source: a
//! listing in random id order (calendar) then read index pages back from the
//! OS for nearly every row, the top entry of the calendar sync's profile. A
//! large sync widens the cache for as long as it runs; the last one to end
//! narrows it again and hands the memory back.

use std::sync::atomic::Ordering;

use super::{Store, StoreError};

/// The cache while at least one large sync runs, in KiB (SQLite's negative
/// unit).
const WIDE_KIB: i64 = 16 * 1024;

/// SQLite's default, in KiB.
const NARROW_KIB: i64 = 2000;

impl Store {
    /// A large sync starts: widen the writer's page cache (once for all the
    /// large syncs running at the same time).
    pub async fn widen_cache(&self) -> Result<(), StoreError> {
        if self.wide.fetch_add(1, Ordering::SeqCst) == 0
            && let Err(e) = self.set_cache(WIDE_KIB).await
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
            self.set_cache(NARROW_KIB).await?;
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

    async fn set_cache(&self, kib: i64) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA cache_size = -{kib}")))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The writer's cache size in KiB (tests).
    pub async fn cache_kib(&self) -> Result<i64, StoreError> {
        let size: i64 = sqlx::query_scalar("PRAGMA cache_size")
            .fetch_one(&self.writer)
            .await?;
        Ok(if size < 0 { -size } else { size * 4 })
    }
}
