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
                return Err(StoreError::Busy(format!(
                    "{key} is being synced now by pid {} on {}: stop that run (reload the \
                     daemon with the source removed) and forget it then",
                    pid.unwrap_or(0),
                    host.unwrap_or_default()
                )));
            }
            sqlx::query(
                "UPDATE leases SET run_id = NULL, expires_at = 0 WHERE tenant = ?1 AND source = ?2",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RunOutcome;
    use crate::model::{Page, Phase, Progress, Record, ReportOutcome};
    use crate::store::Store;

    fn record(id: &str) -> Record {
        let data = serde_json::json!({ "id": id, "state": "completed", "completed": "2024-01-02T00:00:00Z" });
        Record {
            id: id.into(),
            updated_at: "2024-01-01T00:00:00Z".into(),
            updated_us: crate::time::parse_us("2024-01-01T00:00:00Z").expect("ts"),
            data: crate::sources::payload::from_value(&data).expect("payload"),
        }
    }

    fn page(ids: &[&str]) -> Page {
        Page {
            upserts: ids.iter().map(|id| record(id)).collect(),
            deletes: Vec::new(),
            next_progress: Progress {
                phase: Phase::Incremental,
                state: serde_json::json!({ "cursor": "c" }),
            },
            done: true,
            listing: None,
            reports: Vec::new(),
        }
    }

    /// A source with two records, progress, one finished run and, if
    /// `report`, one pending import report.
    async fn fill(store: &Store, key: &SourceKey, report: bool) {
        let mut p = page(&["1", "2"]);
        if report {
            p.reports.push(crate::model::Report {
                record_id: "1".into(),
                version_us: Some(p.upserts[0].updated_us),
                completed_at: "2024-01-02T00:00:00Z".into(),
                outcome: ReportOutcome::Success,
            });
        }
        store.commit_page(key, "content", &p).await.expect("commit");
        let run = format!("run-{key}");
        store
            .start_run(key, "content", &run, None)
            .await
            .expect("start");
        store
            .finish_run(key, &run, RunOutcome::Success, &Default::default())
            .await
            .expect("finish");
    }

    #[tokio::test]
    async fn forget_deletes_every_trace_of_its_sources_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("f.db").display());
        let store = Store::open(&url).await.expect("open");
        let (old, kept) = (
            SourceKey::new("acme", "old"),
            SourceKey::new("acme", "kept"),
        );
        fill(&store, &old, true).await;
        fill(&store, &kept, true).await;
        assert_eq!(
            store.stored_sources().await.expect("list"),
            [kept.clone(), old.clone()]
        );
        assert!(store.is_stored(&old).await.expect("probe"));
        assert!(
            !store
                .is_stored(&SourceKey::new("acme", "never"))
                .await
                .expect("probe")
        );

        let gone = store
            .forget_sources(std::slice::from_ref(&old))
            .await
            .expect("forget");
        assert_eq!(
            gone,
            [(
                old.clone(),
                Forgotten {
                    records: 2,
                    progress: 1,
                    runs: 1,
                    reports: 1
                }
            )]
        );
        assert_eq!(
            store.stored_sources().await.expect("list"),
            [kept.clone()].as_slice()
        );
        assert!(!store.is_stored(&old).await.expect("probe"));
        let st = store.source_status(&kept, "content").await.expect("status");
        assert_eq!((st.records, st.pending_reports), (2, 1));
        assert!(st.last_success.is_some());
        store.close().await;
    }

    #[tokio::test]
    async fn a_source_being_synced_is_not_forgotten_and_a_free_lease_goes_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("f.db").display());
        let store = Store::open(&url).await.expect("open");
        let key = SourceKey::new("acme", "gone");
        fill(&store, &key, false).await;
        let held = store
            .acquire_lease(&key, "live", std::time::Duration::from_secs(30))
            .await
            .expect("lease");
        let crate::store::Acquired::Taken(lease) = held else {
            panic!("{held:?}");
        };
        let e = store
            .forget_sources(std::slice::from_ref(&key))
            .await
            .expect_err("busy");
        assert!(
            e.to_string()
                .contains("acme/gone is being synced now by pid"),
            "{e}"
        );
        assert!(
            store.is_stored(&key).await.expect("stored"),
            "nothing was deleted"
        );
        store.release_lease(&lease).await.expect("release");
        store
            .forget_sources(std::slice::from_ref(&key))
            .await
            .expect("forget");
        assert!(!store.is_stored(&key).await.expect("stored"));
        // The lease row went too: the old run's fence can never pass again.
        let e = store
            .commit_pages(&lease, "k", vec![Page::default()])
            .await
            .expect_err("fenced");
        assert!(matches!(e, StoreError::LeaseLost { .. }), "{e}");
    }
}
