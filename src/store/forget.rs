//! Sources that are stored but no longer configured: finding them, and
//! `synchro forget` deleting everything stored about them.
//!
//! A source removed from the config keeps its records, progress, run history
//! and import reports: the daemon stops syncing it, nothing deletes it, and
//! `export --all` still shows its records. Forgetting is explicit, and
//! complete: a source half forgotten (records gone, progress kept) would
//! resume incrementally into an empty copy if it came back.

use serde::Serialize;

use super::{Store, StoreError};
use crate::config::SourceKey;

/// What `forget` deletes, table by table, in [`Forgotten`]'s field order.
const FORGET: [&str; 4] = [
    "DELETE FROM records WHERE tenant = ?1 AND source = ?2",
    "DELETE FROM progress WHERE tenant = ?1 AND source = ?2",
    "DELETE FROM runs WHERE tenant = ?1 AND source = ?2",
    "DELETE FROM outbox WHERE tenant = ?1 AND source = ?2",
];

/// What [`Store::forget_sources`] deleted for one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Forgotten {
    pub records: u64,
    pub progress: u64,
    pub runs: u64,
    pub reports: u64,
}

impl Store {
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
    use crate::sources::{Page, Phase, Progress, Record, ReportOutcome};
    use crate::store::RunOutcome;

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
            p.reports.push(crate::sources::Report {
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
            .finish_run(&run, RunOutcome::Success, &Default::default())
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
}
