//! The schedule replicas share (see the `schedule` migration): due sources
//! are claimed in batches with `FOR UPDATE SKIP LOCKED`, so that replicas
//! polling at the same moment take disjoint sets and never wait on each
//! other, and every instant a claim is judged by is the database's clock.
//!
//! A claim only says who runs a tick; the source's lease still decides who
//! may sync it (two runs never overlap even if a claim lapsed under a slow
//! run and another replica claimed the source again).

use std::time::Duration;

use super::PgStore;
use crate::model::SourceKey;
use crate::store::StoreError;
use crate::store::identity::claimer;
use crate::store::types::ttl_micros;

/// Adds the configured sources; a new one is due at once (its first run), a
/// known one keeps its due instant unless its schedule changed.
const REGISTER: &str = r#"
INSERT INTO schedule AS s (tenant, source, schedule, due_at)
SELECT u.tenant, u.source, u.schedule, synchro_now_us()
FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(tenant, source, schedule)
ON CONFLICT (tenant, source) DO UPDATE SET
    schedule = excluded.schedule,
    due_at = least(s.due_at, excluded.due_at)
WHERE s.schedule <> excluded.schedule
"#;

/// Claims the oldest due sources no live claim holds. `SKIP LOCKED`: rows
/// another replica is claiming at this moment are left to it, not waited
/// for. The clock is read once, in a sub-select: compared with the
/// (volatile) function itself, `due_at` would be no index condition, and a
/// poll that finds nothing due would walk the whole index (35 ms instead of
/// 0.02 ms over 100,000 sources).
const CLAIM: &str = r#"
WITH due AS (
    SELECT tenant, source FROM schedule
    WHERE due_at <= (SELECT synchro_now_us())
      AND (claimed_until IS NULL OR claimed_until <= (SELECT synchro_now_us()))
    ORDER BY due_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE schedule s SET claimed_by = $2, claimed_until = synchro_now_us() + $3
FROM due WHERE s.tenant = due.tenant AND s.source = due.source
RETURNING s.tenant, s.source, s.due_at
"#;

/// A claimed tick was run (or found its source busy): the source is next due
/// at `$4`. Never moves the due instant back (another replica's run of a
/// lapsed claim may have moved it further), and frees only our own claim.
const DONE: &str = r#"
UPDATE schedule SET
    due_at = greatest(due_at, $4),
    claimed_by = CASE WHEN claimed_by = $3 THEN NULL ELSE claimed_by END,
    claimed_until = CASE WHEN claimed_by = $3 THEN NULL ELSE claimed_until END
WHERE tenant = $1 AND source = $2
"#;

/// Gives back claims this replica will not run (it stops, or the source is
/// not in its config): due again for the others at `$4`, or as they were.
const GIVE_BACK: &str = r#"
UPDATE schedule s SET
    claimed_by = NULL, claimed_until = NULL, due_at = coalesce($4, s.due_at)
FROM UNNEST($1::text[], $2::text[]) AS u(tenant, source)
WHERE s.tenant = u.tenant AND s.source = u.source AND s.claimed_by = $3
"#;

/// Gives back every claim of this replica (it stops): due for the others
/// at once, as they were.
const RELEASE_ALL: &str =
    "UPDATE schedule SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1";

/// Scheduling state is not data: a claim or a tick's end lost with the
/// server's last transactions (a crash) only makes a tick run again, which
/// syncing allows, and the lease still keeps runs apart. Its statements
/// therefore commit without waiting for the WAL flush: a claim costs a
/// round trip, not a disk flush (the records' commits still wait).
const NO_FLUSH: &str = "SET LOCAL synchronous_commit = off";

/// Splits keys into the two arrays the statements take.
fn columns(keys: &[SourceKey]) -> (Vec<&str>, Vec<&str>) {
    keys.iter()
        .map(|k| (k.tenant.as_str(), k.source.as_str()))
        .unzip()
}

impl PgStore {
    pub async fn register_schedule(
        &self,
        sources: &[(SourceKey, String)],
    ) -> Result<u64, StoreError> {
        let mut added = 0;
        // Bounded arrays: one statement per 10,000 sources.
        for chunk in sources.chunks(10_000) {
            let (tenants, names): (Vec<&str>, Vec<&str>) = chunk
                .iter()
                .map(|(k, _)| (k.tenant.as_str(), k.source.as_str()))
                .unzip();
            let schedules: Vec<&str> = chunk.iter().map(|(_, s)| s.as_str()).collect();
            added += sqlx::query(REGISTER)
                .bind(tenants)
                .bind(names)
                .bind(schedules)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(added)
    }

    pub async fn claim_schedule(
        &self,
        limit: i64,
        ttl: Duration,
    ) -> Result<Vec<(SourceKey, i64)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(NO_FLUSH).execute(&mut *tx).await?;
        let rows: Vec<(String, String, i64)> = sqlx::query_as(CLAIM)
            .bind(limit)
            .bind(claimer())
            .bind(ttl_micros(ttl))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(tenant, source, due)| (SourceKey { tenant, source }, due))
            .collect())
    }

    pub async fn schedule_done(&self, key: &SourceKey, next_due_us: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(NO_FLUSH).execute(&mut *tx).await?;
        sqlx::query(DONE)
            .bind(&key.tenant)
            .bind(&key.source)
            .bind(claimer())
            .bind(next_due_us)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn give_back_schedule(
        &self,
        keys: &[SourceKey],
        due_us: Option<i64>,
    ) -> Result<(), StoreError> {
        let (tenants, names) = columns(keys);
        sqlx::query(GIVE_BACK)
            .bind(tenants)
            .bind(names)
            .bind(claimer())
            .bind(due_us)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn release_schedule_claims(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query(RELEASE_ALL)
            .bind(claimer())
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use crate::model::SourceKey;
    use crate::store::SharedSchedule;
    use crate::store::test_db::{Backend, TestDb};

    fn rows(n: usize, schedule: &str) -> Vec<(SourceKey, String)> {
        (0..n)
            .map(|i| {
                (
                    SourceKey::new("t", format!("s{i:03}")),
                    schedule.to_string(),
                )
            })
            .collect()
    }

    async fn shared(db: &TestDb) -> SharedSchedule {
        db.open()
            .await
            .shared_schedule()
            .expect("Postgres shares its schedule")
    }

    /// New sources are due at once; a claimed one is nobody else's until
    /// its claim is done, given back or lapses; done moves it to its next
    /// tick.
    #[tokio::test]
    async fn a_due_source_is_claimed_once_until_done_given_back_or_lapsed() {
        let Some(db) = TestDb::new(Backend::Postgres, "schedule claims").await else {
            return;
        };
        let s = shared(&db).await;
        assert_eq!(s.register(&rows(3, "every 1m")).await.expect("register"), 3);
        let ttl = Duration::from_secs(60);
        let first = s.claim(2, ttl).await.expect("claim");
        assert_eq!(first.len(), 2, "the batch is capped at the limit");
        let second = s.claim(10, ttl).await.expect("claim");
        assert_eq!(second.len(), 1, "claimed ones are skipped: {second:?}");
        assert!(s.claim(10, ttl).await.expect("claim").is_empty());

        // Done: due again only at its next tick.
        let (done_key, _) = &first[0];
        let far = crate::time::now_us() + 3_600_000_000;
        s.done(done_key, far).await.expect("done");
        assert!(s.claim(10, ttl).await.expect("claim").is_empty());
        // Given back: due again at once.
        let (back, _) = &first[1];
        s.give_back(std::slice::from_ref(back), None)
            .await
            .expect("give back");
        let again = s.claim(10, ttl).await.expect("claim");
        assert_eq!(again.iter().map(|r| &r.0).collect::<Vec<_>>(), vec![back]);
        // A claim that lapsed (its daemon died) is claimed again.
        s.release_all().await.expect("release");
        let short = s.claim(10, Duration::from_millis(1)).await.expect("claim");
        assert_eq!(short.len(), 2);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let lapsed = s.claim(10, ttl).await.expect("claim");
            if lapsed.len() == 2 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "claims never lapsed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Registering again keeps a known source's due instant; a changed
    /// schedule makes it due at once.
    #[tokio::test]
    async fn registering_again_keeps_the_due_instant_unless_the_schedule_changed() {
        let Some(db) = TestDb::new(Backend::Postgres, "schedule register").await else {
            return;
        };
        let s = shared(&db).await;
        s.register(&rows(2, "every 1m")).await.expect("register");
        let ttl = Duration::from_secs(60);
        let far = crate::time::now_us() + 3_600_000_000;
        for (key, _) in s.claim(10, ttl).await.expect("claim") {
            s.done(&key, far).await.expect("done");
        }
        assert_eq!(s.register(&rows(2, "every 1m")).await.expect("again"), 0);
        assert!(s.claim(10, ttl).await.expect("claim").is_empty());
        let mut changed = rows(2, "every 1m");
        changed[1].1 = "every 5m".into();
        assert_eq!(s.register(&changed).await.expect("changed"), 1);
        let due = s.claim(10, ttl).await.expect("claim");
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, changed[1].0);
    }

    /// Claims made at the same moment from many connections never hand
    /// one source to two claimers, and miss none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claims_split_the_due_sources_without_overlap() {
        let Some(db) = TestDb::new(Backend::Postgres, "schedule concurrent").await else {
            return;
        };
        let s = shared(&db).await;
        s.register(&rows(500, "every 1m")).await.expect("register");
        let claimers: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    loop {
                        let got = s.claim(7, Duration::from_secs(60)).await.expect("claim");
                        if got.is_empty() {
                            return mine;
                        }
                        mine.extend(got.into_iter().map(|r| r.0));
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for c in claimers {
            all.extend(c.await.expect("claimer"));
        }
        let distinct: BTreeSet<_> = all.iter().collect();
        assert_eq!(all.len(), 500, "each source claimed exactly once");
        assert_eq!(distinct.len(), 500);
    }
}
