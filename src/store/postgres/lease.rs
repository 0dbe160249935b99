//! Source leases on Postgres (DESIGN.md §3b): the same rows and rules as on
//! SQLite, with every expiry judged by the database's clock
//! (`synchro_now_us()`), so that replicas on machines whose clocks differ
//! agree on whether a lease lapsed. The fence of a commit is an `UPDATE` of
//! the lease row, the first statement of the commit's transaction: it holds
//! the row's lock until the commit ends, so a takeover waits for the commit
//! (and then finds the lease extended), or commits first (and the fence
//! finds another epoch).

use std::time::Duration;

use sqlx::Row;

use super::PgStore;
use crate::model::SourceKey;
use crate::store::identity::{me, pid_alive};
use crate::store::{Acquired, Holder, Lease, StoreError};

/// Takes a free or expired lease, bumping the epoch; no row when another
/// run holds it.
const TAKE: &str = r#"
INSERT INTO leases AS l (tenant, source, epoch, run_id, host, node, pid, acquired_at, expires_at)
VALUES ($1, $2, 1, $3, $4, $5, $6, synchro_now_us(), synchro_now_us() + $7)
ON CONFLICT (tenant, source) DO UPDATE SET
    epoch = l.epoch + 1, run_id = excluded.run_id, host = excluded.host,
    node = excluded.node, pid = excluded.pid, acquired_at = excluded.acquired_at,
    expires_at = excluded.expires_at
WHERE l.run_id IS NULL OR l.expires_at <= synchro_now_us()
RETURNING epoch
"#;

/// Takes over the lease at the epoch we saw (its holder's pid is gone).
const TAKE_OVER: &str = r#"
UPDATE leases SET
    epoch = epoch + 1, run_id = $3, host = $4, node = $5, pid = $6,
    acquired_at = synchro_now_us(), expires_at = synchro_now_us() + $7
WHERE tenant = $1 AND source = $2 AND epoch = $8
RETURNING epoch
"#;

/// A held lease's row as `lease_holder` reads it.
const HOLDER: &str = "SELECT run_id, host, pid, acquired_at, expires_at, epoch, node, tenant, \
     source FROM leases WHERE run_id IS NOT NULL AND expires_at > synchro_now_us()";

impl PgStore {
    pub async fn acquire_lease(
        &self,
        key: &SourceKey,
        run_id: &str,
        ttl: Duration,
    ) -> Result<Acquired, StoreError> {
        let me = me();
        let ttl_us = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX / 4);
        let lease = |epoch| Lease {
            key: key.clone(),
            epoch,
            run_id: run_id.to_string(),
            ttl,
        };
        for _ in 0..2 {
            let taken: Option<(i64,)> = sqlx::query_as(TAKE)
                .bind(&key.tenant)
                .bind(&key.source)
                .bind(run_id)
                .bind(&me.host)
                .bind(&me.node)
                .bind(me.pid)
                .bind(ttl_us)
                .fetch_optional(&self.pool)
                .await?;
            if let Some((epoch,)) = taken {
                return Ok(Acquired::Taken(lease(epoch)));
            }
            let Some((holder, epoch, node)) = self.held(key).await? else {
                continue;
            };
            let dead = node.as_deref() == Some(me.node.as_str())
                && holder.pid != me.pid
                && !pid_alive(holder.pid);
            if !dead {
                return Ok(Acquired::Held(holder));
            }
            let taken: Option<(i64,)> = sqlx::query_as(TAKE_OVER)
                .bind(&key.tenant)
                .bind(&key.source)
                .bind(run_id)
                .bind(&me.host)
                .bind(&me.node)
                .bind(me.pid)
                .bind(ttl_us)
                .bind(epoch)
                .fetch_optional(&self.pool)
                .await?;
            if let Some((epoch,)) = taken {
                tracing::info!(tenant = %key.tenant, source = %key.source, dead_pid = holder.pid,
                    dead_run = %holder.run_id, "took over the lease of a run whose process is gone");
                return Ok(Acquired::Taken(lease(epoch)));
            }
        }
        match self.lease_holder(key).await? {
            Some(h) => Ok(Acquired::Held(h)),
            None => Err(StoreError::Corrupt(format!(
                "the lease of {key} changed hands twice while it was asked for"
            ))),
        }
    }

    pub async fn renew_lease(&self, lease: &Lease) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE leases SET expires_at = synchro_now_us() + $5 \
             WHERE tenant = $1 AND source = $2 AND epoch = $3 AND run_id = $4",
        )
        .bind(&lease.key.tenant)
        .bind(&lease.key.source)
        .bind(lease.epoch)
        .bind(&lease.run_id)
        .bind(lease.ttl_us())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE leases SET run_id = NULL, expires_at = 0 \
             WHERE tenant = $1 AND source = $2 AND epoch = $3 AND run_id = $4",
        )
        .bind(&lease.key.tenant)
        .bind(&lease.key.source)
        .bind(lease.epoch)
        .bind(&lease.run_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn lease_holder(&self, key: &SourceKey) -> Result<Option<Holder>, StoreError> {
        Ok(self.held(key).await?.map(|(holder, _, _)| holder))
    }

    /// The live holder of `key`'s lease, with the epoch and node it holds it at.
    async fn held(
        &self,
        key: &SourceKey,
    ) -> Result<Option<(Holder, i64, Option<String>)>, StoreError> {
        let sql = format!("{HOLDER} AND tenant = $1 AND source = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&key.tenant)
            .bind(&key.source)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((holder(&row)?, row.try_get(5)?, row.try_get(6)?)))
            .transpose()
    }

    pub async fn any_lease_holder(&self) -> Result<Option<(SourceKey, Holder)>, StoreError> {
        let sql = format!("{HOLDER} LIMIT 1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let key = SourceKey::new(&row.try_get::<String, _>(7)?, &row.try_get::<String, _>(8)?);
            Ok((key, holder(&row)?))
        })
        .transpose()
    }
}

fn holder(row: &sqlx::postgres::PgRow) -> Result<Holder, StoreError> {
    Ok(Holder {
        run_id: row.try_get(0)?,
        host: row.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
        pid: row.try_get::<Option<i64>, _>(2)?.unwrap_or(0),
        since_us: row.try_get::<Option<i64>, _>(3)?.unwrap_or(0),
        expires_us: row.try_get(4)?,
    })
}

/// The fence of a commit, first in its transaction: passes (extending the
/// lease, a commit being proof of life) only while the row names this run
/// at this epoch, and keeps the row locked until the commit ends.
pub(super) async fn check_fence(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    lease: &Lease,
) -> Result<(), StoreError> {
    let n = sqlx::query(
        "UPDATE leases SET expires_at = greatest(expires_at, synchro_now_us() + $5) \
         WHERE tenant = $1 AND source = $2 AND epoch = $3 AND run_id = $4",
    )
    .bind(&lease.key.tenant)
    .bind(&lease.key.source)
    .bind(lease.epoch)
    .bind(&lease.run_id)
    .bind(lease.ttl_us())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if n == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost {
            key: lease.key.clone(),
            epoch: lease.epoch,
        })
    }
}
