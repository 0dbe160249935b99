//! Source leases: one run per source across processes (DESIGN.md §3b).
//!
//! A run takes its source's lease before its first request: a row holding
//! the run (host, pid, run id), a strictly increasing epoch and an expiry,
//! renewed while the run lives. Every commit of the run is *fenced*: inside
//! its transaction it checks that the row still names this run and epoch,
//! and rolls back otherwise (`records.rs`, `journal.rs`). A process paused
//! past its lease (SIGSTOP, a VM freeze, a long GC-like stall of the disk)
//! that wakes after another run took over can therefore never write again.
//!
//! Taking a lease is one statement when it is free or expired (the common
//! case); a lease whose holder runs on this node (same kernel boot and pid
//! namespace) with a pid that is gone is taken over at once, with a
//! compare-and-set on the epoch it saw, rather than after its expiry.

use std::time::Duration;

use super::{SqliteStore, StoreError, now_us};
use crate::model::SourceKey;
use crate::store::identity::{me, pid_alive};
use crate::store::{Acquired, Holder, Lease};

/// Takes a free or expired lease, bumping the epoch; no row when another
/// run holds it.
const TAKE: &str = r#"
INSERT INTO leases (tenant, source, epoch, run_id, host, node, pid, acquired_at, expires_at)
VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8)
ON CONFLICT (tenant, source) DO UPDATE SET
    epoch = leases.epoch + 1, run_id = excluded.run_id, host = excluded.host,
    node = excluded.node, pid = excluded.pid, acquired_at = excluded.acquired_at,
    expires_at = excluded.expires_at
WHERE leases.run_id IS NULL OR leases.expires_at <= excluded.acquired_at
RETURNING epoch
"#;

/// Takes over the lease at the epoch we saw (its holder's pid is gone).
const TAKE_OVER: &str = r#"
UPDATE leases SET
    epoch = epoch + 1, run_id = ?3, host = ?4, node = ?5, pid = ?6, acquired_at = ?7,
    expires_at = ?8
WHERE tenant = ?1 AND source = ?2 AND epoch = ?9
RETURNING epoch
"#;

/// The fence of a commit, run first inside its transaction: passes (and
/// extends the lease, a commit being proof of life) only while the row
/// still names this run at this epoch.
pub(super) const FENCE: &str = r#"
UPDATE leases SET expires_at = max(expires_at, ?5)
WHERE tenant = ?1 AND source = ?2 AND epoch = ?3 AND run_id = ?4
"#;

/// run_id, host, pid, acquired_at, expires_at of a held lease.
type HeldRow = (String, Option<String>, Option<i64>, Option<i64>, i64);

/// A lease row as [`SqliteStore::acquire_lease`] reads it.
type HolderRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    i64,
);

impl SqliteStore {
    /// Asks for `key`'s lease for the run `run_id`, for `ttl`.
    pub async fn acquire_lease(
        &self,
        key: &SourceKey,
        run_id: &str,
        ttl: Duration,
    ) -> Result<Acquired, StoreError> {
        let me = me();
        let ttl_us = crate::store::types::ttl_micros(ttl);
        // Twice at most: a lease released between our two statements is
        // free on the second try.
        for _ in 0..2 {
            let now = now_us();
            let taken: Option<(i64,)> = sqlx::query_as(TAKE)
                .bind(&key.tenant)
                .bind(&key.source)
                .bind(run_id)
                .bind(&me.host)
                .bind(&me.node)
                .bind(me.pid)
                .bind(now)
                .bind(now.saturating_add(ttl_us))
                .fetch_optional(&self.writer)
                .await?;
            if let Some((epoch,)) = taken {
                return Ok(Acquired::Taken(self.lease(key, epoch, run_id, ttl)));
            }
            let row: Option<HolderRow> = sqlx::query_as(
                "SELECT epoch, run_id, host, node, pid, acquired_at, expires_at FROM leases \
                 WHERE tenant = ?1 AND source = ?2",
            )
            .bind(&key.tenant)
            .bind(&key.source)
            .fetch_optional(&self.writer)
            .await?;
            let Some((epoch, Some(holder_run), host, node, pid, since, expires)) = row else {
                continue;
            };
            let holder = Holder {
                host: host.unwrap_or_default(),
                pid: pid.unwrap_or(0),
                run_id: holder_run,
                since_us: since.unwrap_or(0),
                expires_us: expires,
            };
            let dead = node.as_deref() == Some(me.node.as_str())
                && holder.pid != me.pid
                && !pid_alive(holder.pid);
            if !dead {
                return Ok(Acquired::Held(holder));
            }
            let now = now_us();
            let taken: Option<(i64,)> = sqlx::query_as(TAKE_OVER)
                .bind(&key.tenant)
                .bind(&key.source)
                .bind(run_id)
                .bind(&me.host)
                .bind(&me.node)
                .bind(me.pid)
                .bind(now)
                .bind(now.saturating_add(ttl_us))
                .bind(epoch)
                .fetch_optional(&self.writer)
                .await?;
            if let Some((epoch,)) = taken {
                tracing::info!(tenant = %key.tenant, source = %key.source, dead_pid = holder.pid,
                    dead_run = %holder.run_id, "took over the lease of a run whose process is gone");
                return Ok(Acquired::Taken(self.lease(key, epoch, run_id, ttl)));
            }
        }
        // Two rounds of changes under our feet: someone live is busy with it.
        match self.lease_holder(key).await? {
            Some(h) => Ok(Acquired::Held(h)),
            None => Err(StoreError::Corrupt(format!(
                "the lease of {key} changed hands twice while it was asked for"
            ))),
        }
    }

    fn lease(&self, key: &SourceKey, epoch: i64, run_id: &str, ttl: Duration) -> Lease {
        Lease {
            key: key.clone(),
            epoch,
            run_id: run_id.to_string(),
            ttl,
        }
    }

    /// Extends a held lease by its ttl from now. `Ok(false)`: the lease is
    /// no longer ours (taken over): the run must stop.
    pub async fn renew_lease(&self, lease: &Lease) -> Result<bool, StoreError> {
        let until = now_us().saturating_add(lease.ttl_us());
        let n = sqlx::query(
            "UPDATE leases SET expires_at = ?5 \
             WHERE tenant = ?1 AND source = ?2 AND epoch = ?3 AND run_id = ?4",
        )
        .bind(&lease.key.tenant)
        .bind(&lease.key.source)
        .bind(lease.epoch)
        .bind(&lease.run_id)
        .bind(until)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Frees a lease this run holds (a no-op if it was taken over). Runs end
    /// through the journal, which frees theirs in the same statement as the
    /// end of the run; this is for a run that never started.
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE leases SET run_id = NULL, expires_at = 0 \
             WHERE tenant = ?1 AND source = ?2 AND epoch = ?3 AND run_id = ?4",
        )
        .bind(&lease.key.tenant)
        .bind(&lease.key.source)
        .bind(lease.epoch)
        .bind(&lease.run_id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Who holds `key`'s lease now, if anyone (an expired lease is free).
    pub async fn lease_holder(&self, key: &SourceKey) -> Result<Option<Holder>, StoreError> {
        let row: Option<HeldRow> = sqlx::query_as(
            "SELECT run_id, host, pid, acquired_at, expires_at FROM leases \
                 WHERE tenant = ?1 AND source = ?2 AND run_id IS NOT NULL AND expires_at > ?3",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(now_us())
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(|(run_id, host, pid, since, expires)| Holder {
            host: host.unwrap_or_default(),
            pid: pid.unwrap_or(0),
            run_id,
            since_us: since.unwrap_or(0),
            expires_us: expires,
        }))
    }
}

/// Binds the fence of `lease` to [`FENCE`]; the commit goes on only if it
/// changed one row.
pub(super) async fn check_fence(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    lease: &Lease,
    now: i64,
) -> Result<(), StoreError> {
    let n = sqlx::query(FENCE)
        .bind(&lease.key.tenant)
        .bind(&lease.key.source)
        .bind(lease.epoch)
        .bind(&lease.run_id)
        .bind(now.saturating_add(lease.ttl_us()))
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if n == 1 { Ok(()) } else { Err(lease.lost()) }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_opens_of_a_fresh_database_at_once_all_succeed() {
        for round in 0..4 {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
            let opens: Vec<_> = (0..8)
                .map(|_| {
                    let url = url.clone();
                    tokio::spawn(async move { Store::open(&url).await })
                })
                .collect();
            for open in opens {
                let store = open
                    .await
                    .expect("join")
                    .unwrap_or_else(|e| panic!("round {round}: {e}"));
                store.close().await;
            }
        }
    }
}
