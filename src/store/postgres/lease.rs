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
/// run holds it. The instants are read once the row is locked.
const TAKE: &str = r#"
INSERT INTO leases AS l (tenant, source, epoch, run_id, host, node, pid, acquired_at, expires_at)
VALUES ($1, $2, 1, $3, $4, $5, $6, synchro_now_us(), synchro_now_us() + $7)
ON CONFLICT (tenant, source) DO UPDATE SET
    epoch = l.epoch + 1, run_id = excluded.run_id, host = excluded.host,
    node = excluded.node, pid = excluded.pid, acquired_at = synchro_now_us(),
    expires_at = synchro_now_us() + $7
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

/// How long taking a lease waits for its row's lock. The lock is held by a
/// commit of the holder (a moment) or by a holder paused inside one (until
/// the server ends its idle transaction): past this, the lease is busy for
/// now and the caller asks again later, instead of starting its run with
/// its lease's time already spent waiting.
const TAKE_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '1s'";

/// What one attempt to take a lease found.
enum Taking {
    Taken(i64),
    /// Another run holds it.
    Held,
    /// Its row is locked: a commit or a takeover is under way.
    Locked,
}

/// Whether a statement failed because a row lock did not come in time.
fn lock_not_available(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "55P03")
}

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
        let ttl_us = crate::store::types::ttl_micros(ttl);
        let lease = |epoch| Lease {
            key: key.clone(),
            epoch,
            run_id: run_id.to_string(),
            ttl,
        };
        for _ in 0..2 {
            match self.take(TAKE, key, run_id, ttl_us, None).await? {
                Taking::Taken(epoch) => return Ok(Acquired::Taken(lease(epoch))),
                Taking::Locked => return self.busy(key).await,
                Taking::Held => {}
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
            match self
                .take(TAKE_OVER, key, run_id, ttl_us, Some(epoch))
                .await?
            {
                Taking::Taken(epoch) => {
                    tracing::info!(tenant = %key.tenant, source = %key.source,
                        dead_pid = holder.pid, dead_run = %holder.run_id,
                        "took over the lease of a run whose process is gone");
                    return Ok(Acquired::Taken(lease(epoch)));
                }
                Taking::Locked => return self.busy(key).await,
                Taking::Held => {}
            }
        }
        self.busy(key).await
    }

    /// One attempt at `sql` (TAKE or TAKE_OVER), waiting for the row's lock
    /// at most [`TAKE_LOCK_TIMEOUT`].
    async fn take(
        &self,
        sql: &'static str,
        key: &SourceKey,
        run_id: &str,
        ttl_us: i64,
        epoch: Option<i64>,
    ) -> Result<Taking, StoreError> {
        let me = me();
        let mut tx = self.pool.begin().await?;
        sqlx::query(TAKE_LOCK_TIMEOUT).execute(&mut *tx).await?;
        let mut query = sqlx::query_as::<_, (i64,)>(sql)
            .bind(&key.tenant)
            .bind(&key.source)
            .bind(run_id)
            .bind(&me.host)
            .bind(&me.node)
            .bind(me.pid)
            .bind(ttl_us);
        if let Some(epoch) = epoch {
            query = query.bind(epoch);
        }
        match query.fetch_optional(&mut *tx).await {
            Ok(taken) => {
                tx.commit().await?;
                Ok(taken.map_or(Taking::Held, |(epoch,)| Taking::Taken(epoch)))
            }
            Err(e) if lock_not_available(&e) => Ok(Taking::Locked),
            Err(e) => Err(e.into()),
        }
    }

    /// The lease is not to be had now: who has it, as the last committed
    /// row says (a holder paused past its expiry included).
    async fn busy(&self, key: &SourceKey) -> Result<Acquired, StoreError> {
        let row = sqlx::query(
            "SELECT coalesce(run_id, '(a run starting)'), host, pid, acquired_at, expires_at \
             FROM leases WHERE tenant = $1 AND source = $2",
        )
        .bind(&key.tenant)
        .bind(&key.source)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(Acquired::Held(holder(&row)?)),
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

impl PgStore {
    /// Whether the lease row still names this run at this epoch (read
    /// without locking: what the last committed takeover says).
    pub(super) async fn still_ours(&self, lease: &Lease) -> Result<bool, StoreError> {
        let (ours,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM leases WHERE tenant = $1 AND source = $2 \
             AND epoch = $3 AND run_id = $4)",
        )
        .bind(&lease.key.tenant)
        .bind(&lease.key.source)
        .bind(lease.epoch)
        .bind(&lease.run_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(ours)
    }
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
    if n == 1 { Ok(()) } else { Err(lease.lost()) }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::model::{Page, SourceKey};
    use crate::store::test_db::{Backend, TestDb};
    use crate::store::{Acquired, Store, StoreError};

    /// The Postgres store inside `store`.
    fn pg(store: &Store) -> &super::PgStore {
        match &store.backend {
            crate::store::Backend::Postgres(pg) => pg,
            crate::store::Backend::Sqlite(_) => panic!("a Postgres test opened SQLite"),
        }
    }

    /// A holder paused inside a commit (here: a transaction that locked
    /// the lease row and then went silent) neither blocks whoever asks for
    /// the lapsed lease (they hear "busy" within the take's lock wait) nor
    /// keeps it: the server ends the idle transaction, the lease is taken
    /// over, and the paused run's next commit is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_paused_inside_a_commit_neither_blocks_nor_keeps_the_lease() {
        let Some(db) = TestDb::new(Backend::Postgres, "paused holder").await else {
            return;
        };
        let store = db.open().await;
        let key = SourceKey::new("t", "s");
        let Acquired::Taken(paused) = store
            .acquire_lease(&key, "paused", Duration::from_millis(200))
            .await
            .expect("acquire")
        else {
            panic!("the lease was free");
        };
        let mut silent = pg(&store).pool.begin().await.expect("begin");
        sqlx::query("SELECT 1 FROM leases WHERE tenant = 't' AND source = 's' FOR UPDATE")
            .execute(&mut *silent)
            .await
            .expect("lock the lease row");

        let deadline = Instant::now() + Duration::from_secs(20);
        let mut answers_while_locked = 0;
        let taker = loop {
            assert!(Instant::now() < deadline, "the lease was never taken over");
            let asked = Instant::now();
            let got = tokio::time::timeout(
                Duration::from_secs(5),
                store.acquire_lease(&key, "taker", Duration::from_secs(30)),
            )
            .await
            .expect("asking for a locked lease never hangs")
            .expect("acquire");
            match got {
                Acquired::Taken(lease) => break lease,
                Acquired::Held(holder) => {
                    assert_eq!(holder.run_id, "paused");
                    assert!(asked.elapsed() < Duration::from_secs(3));
                    answers_while_locked += 1;
                }
            }
        };
        assert!(answers_while_locked > 0, "the row was never seen locked");
        assert!(taker.epoch > paused.epoch);
        // The paused transaction is gone: the server ended it.
        let e = sqlx::query("SELECT 1").execute(&mut *silent).await;
        assert!(e.is_err(), "the idle transaction was left open");
        drop(silent);
        let e = store
            .commit_pages(&paused, "k", vec![Page::default()])
            .await
            .expect_err("fenced off");
        assert!(matches!(e, StoreError::LeaseLost { .. }), "{e}");
        store.close().await;
    }
}
