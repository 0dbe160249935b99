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
        let ttl_us = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX / 4);
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
    if n == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost {
            key: lease.key.clone(),
            epoch: lease.epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Page, Phase, Progress, Record};
    use crate::store::Store;

    async fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("l.db").display());
        let store = Store::open(&url).await.expect("open");
        (dir, store)
    }

    fn taken(a: Acquired) -> Lease {
        match a {
            Acquired::Taken(l) => l,
            Acquired::Held(h) => panic!("held by {h}"),
        }
    }

    fn page(id: &str, cursor: &str) -> Page {
        let upserts = if id.is_empty() {
            Vec::new()
        } else {
            vec![Record {
                id: id.into(),
                updated_at: "2024-01-01T00:00:00Z".into(),
                updated_us: 1_704_067_200_000_000,
                data: crate::sources::payload::from_value(&serde_json::json!({ "id": id }))
                    .expect("json"),
            }]
        };
        Page {
            upserts,
            next_progress: Progress {
                phase: Phase::Incremental,
                state: serde_json::json!({ "cursor": cursor }),
            },
            ..Page::default()
        }
    }

    async fn cursor(store: &Store, key: &SourceKey) -> Option<serde_json::Value> {
        store
            .load_progress(key)
            .await
            .expect("progress")
            .map(|p| p.state["cursor"].clone())
    }

    const TTL: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_held_lease_is_refused_then_free_again_with_a_higher_epoch() {
        let (_d, store) = open().await;
        let key = SourceKey::new("t", "s");
        let first = taken(store.acquire_lease(&key, "run-a", TTL).await.expect("a"));
        match store.acquire_lease(&key, "run-b", TTL).await.expect("b") {
            Acquired::Held(h) => {
                assert_eq!(h.run_id, "run-a");
                assert_eq!(h.pid, i64::from(std::process::id()));
                assert_eq!(h.host, me().host);
                assert!(h.to_string().starts_with(&format!("pid {} on ", h.pid)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store
                .lease_holder(&key)
                .await
                .expect("holder")
                .map(|h| h.run_id),
            Some("run-a".to_string())
        );
        // Ending the run frees it (the journal's Finish).
        store
            .start_run(&key, "k", "run-a", None)
            .await
            .expect("start");
        store
            .finish_run(
                &key,
                "run-a",
                crate::model::RunOutcome::Success,
                &Default::default(),
            )
            .await
            .expect("finish");
        assert_eq!(store.lease_holder(&key).await.expect("holder"), None);
        let second = taken(store.acquire_lease(&key, "run-b", TTL).await.expect("b"));
        assert!(second.epoch > first.epoch, "{second:?} after {first:?}");
        // Another source's lease is its own.
        taken(
            store
                .acquire_lease(&SourceKey::new("t", "other"), "run-c", TTL)
                .await
                .expect("c"),
        );
    }

    #[tokio::test]
    async fn a_lapsed_holder_is_taken_over_and_every_later_write_of_it_is_fenced_off() {
        let (_d, store) = open().await;
        let key = SourceKey::new("t", "s");
        let stale = taken(
            store
                .acquire_lease(&key, "stale", Duration::from_millis(1))
                .await
                .expect("stale"),
        );
        store
            .commit_pages(&stale, "k", vec![page("1", "c1")])
            .await
            .expect("the holder commits while it holds the lease");
        // Our own pid is alive: only the expiry frees the lease.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let taker = taken(
            store
                .acquire_lease(&key, "taker", TTL)
                .await
                .expect("taker"),
        );
        assert!(taker.epoch > stale.epoch);
        store
            .commit_pages(&taker, "k", vec![page("2", "c2")])
            .await
            .expect("taker commits");

        // The stale run wakes: a page with records, a progress-only page
        // (the journal's path) and a renewal are all refused.
        let e = store
            .commit_pages(&stale, "k", vec![page("3", "stale")])
            .await
            .expect_err("fenced");
        assert!(matches!(e, StoreError::LeaseLost { .. }), "{e}");
        let e = store
            .commit_pages(&stale, "k", vec![page("", "stale")])
            .await
            .expect_err("fenced");
        assert!(matches!(e, StoreError::LeaseLost { .. }), "{e}");
        assert!(!store.renew_lease(&stale).await.expect("renew"));
        assert!(store.renew_lease(&taker).await.expect("renew"));
        // Its end does not free the taker's lease.
        store
            .finish_run(
                &key,
                "stale",
                crate::model::RunOutcome::Failed,
                &Default::default(),
            )
            .await
            .expect("finish");
        assert_eq!(
            store
                .lease_holder(&key)
                .await
                .expect("holder")
                .map(|h| h.run_id),
            Some("taker".to_string())
        );

        assert_eq!(cursor(&store, &key).await, Some(serde_json::json!("c2")));
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM records")
            .fetch_one(&store.sqlite().reader)
            .await
            .expect("count");
        assert_eq!(n, 2, "record 3 of the stale run was not stored");
    }

    #[tokio::test]
    async fn the_lease_of_a_dead_process_on_this_node_is_taken_at_once() {
        let (_d, store) = open().await;
        let key = SourceKey::new("t", "s");
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let dead = i64::from(child.id());
        child.wait().expect("reap");
        assert!(!pid_alive(dead));
        assert!(pid_alive(i64::from(std::process::id())));
        let far = now_us() + 3_600_000_000;
        for (node, run) in [
            (me().node.as_str(), "dead-here"),
            ("another-node", "dead-there"),
        ] {
            sqlx::query(
                "INSERT OR REPLACE INTO leases (tenant, source, epoch, run_id, host, node, pid, \
                 acquired_at, expires_at) VALUES ('t', 's', 7, ?1, 'h', ?2, ?3, 0, ?4)",
            )
            .bind(run)
            .bind(node)
            .bind(dead)
            .bind(far)
            .execute(&store.sqlite().writer)
            .await
            .expect("insert");
            let got = store
                .acquire_lease(&key, "mine", TTL)
                .await
                .expect("acquire");
            if run == "dead-here" {
                assert_eq!(taken(got).epoch, 8, "taken over at once");
            } else {
                // A pid of another node means nothing here: wait for expiry.
                assert!(matches!(got, Acquired::Held(h) if h.run_id == "dead-there"));
            }
        }
    }

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

    /// Queues one due report, `r1` of source `t/s`.
    async fn queue_report(store: &Store) {
        sqlx::query(
            "INSERT INTO outbox (tenant, source, record_id, completed_at, import_state, created_at) \
             VALUES ('t', 's', 'r1', 'c', 'success', 0)",
        )
        .execute(&store.sqlite().writer)
        .await
        .expect("queue");
    }

    #[tokio::test]
    async fn a_report_is_claimed_by_one_process_until_sent_or_its_claim_lapses() {
        let (_d, store) = open().await;
        let key = SourceKey::new("t", "s");
        queue_report(&store).await;
        let now = now_us();
        let first = store
            .claim_report(&key, now, now + 1_000)
            .await
            .expect("claim");
        let first = first.expect("claimed");
        assert_eq!(first.record_id, "r1");
        assert_eq!(
            store
                .claim_report(&key, now, now + 1_000)
                .await
                .expect("claim"),
            None,
            "claimed already"
        );
        // The claimer died: its claim lapses and the report is due again.
        let later = now + 2_000;
        let again = store
            .claim_report(&key, later, later + 1_000)
            .await
            .expect("claim");
        assert_eq!(again.map(|r| r.id), Some(first.id));
        // A claim of a process of this node that is gone is released at
        // once; a live one (ours, under another instance) is not.
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let dead = child.id();
        child.wait().expect("reap");
        let far = later + 3_600_000_000;
        for (pid, free) in [(i64::from(dead), true), (me().pid, false)] {
            sqlx::query("UPDATE outbox SET claimed_by = ?1, claim_expires_at = ?2")
                .bind(format!("{}|{pid}|another-instance", me().node))
                .bind(far)
                .execute(&store.sqlite().writer)
                .await
                .expect("claim");
            let got = store
                .claim_report(&key, later, later + 1_000)
                .await
                .expect("claim");
            assert_eq!(got.is_some(), free, "claimer pid {pid}");
        }
        store.report_sent(first.id, later).await.expect("sent");
        assert_eq!(
            store
                .claim_report(&key, i64::MAX / 2, i64::MAX / 2)
                .await
                .expect("claim"),
            None,
            "never again after a success"
        );
    }

    #[tokio::test]
    async fn a_claimer_whose_claim_lapsed_cannot_end_the_live_claim_of_another() {
        let (_d, store) = open().await;
        let key = SourceKey::new("t", "s");
        queue_report(&store).await;
        let t = now_us();
        let a = store
            .claim_report(&key, t, t + 1_000)
            .await
            .expect("a")
            .expect("claimed");
        // A's claim lapses; B (another process) claims and is sending.
        sqlx::query("UPDATE outbox SET claimed_by = 'other-node|1|b', claim_expires_at = ?1")
            .bind(t + 100_000_000)
            .execute(&store.sqlite().writer)
            .await
            .expect("b claims");
        // A's late answer changes nothing: the report stays B's.
        store
            .report_retry(a.id, "HTTP 503", t + 3_000)
            .await
            .expect("retry");
        store
            .report_refused(a.id, "HTTP 400")
            .await
            .expect("refused");
        assert_eq!(
            store
                .claim_report(&key, t + 3_000, t + 4_000)
                .await
                .expect("c")
                .map(|r| r.id),
            None,
            "a third claimer got the report while B is sending it"
        );
        // B's success stands, and nothing turns a sent report back.
        store.report_sent(a.id, t + 5_000).await.expect("sent");
        store.report_refused(a.id, "late").await.expect("refused");
        let (status,): (String,) = sqlx::query_as("SELECT status FROM outbox")
            .fetch_one(&store.sqlite().reader)
            .await
            .expect("status");
        assert_eq!(status, "sent");
    }
}
