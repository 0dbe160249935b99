//! `synchro copy-store`: moves everything a database holds into another,
//! of either backend (SQLite to Postgres, the usual migration, or back):
//! records with their tombstones and listing marks, progress, run history
//! and import-state reports. Leases and claims are not copied: they belong
//! to processes of the old database, which must be stopped.
//!
//! Each table is read in key order, a batch at a time after the last key
//! seen (keyset paging: no offset scans, no snapshot held open), and each
//! batch is written in one transaction of the target. The target must be
//! empty: a copy never merges into data it would have to arbitrate.

use super::{Store, StoreError};

/// Rows per batch read from the source and written to the target.
pub const COPY_BATCH: i64 = 2_000;

/// The tables a copy moves, in the order it moves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Records,
    Progress,
    Runs,
    Outbox,
}

impl Table {
    /// Every table, in copy order.
    pub const ALL: [Table; 4] = [Table::Records, Table::Progress, Table::Runs, Table::Outbox];

    /// The table's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Table::Records => "records",
            Table::Progress => "progress",
            Table::Runs => "runs",
            Table::Outbox => "outbox",
        }
    }
}

/// One stored row, with every column a copy must keep (bookkeeping
/// included: when it was stored, the listing mark, attempts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyRow {
    Record {
        tenant: String,
        source: String,
        id: String,
        kind: String,
        updated_at: String,
        updated_us: i64,
        deleted: bool,
        /// The payload's JSON text, byte for byte.
        data: String,
        stored_at: i64,
        listing: Option<i64>,
        /// Its change number, kept: feed readers' positions stay valid.
        change: i64,
    },
    Progress {
        tenant: String,
        source: String,
        kind: String,
        phase: String,
        state: String,
        updated_at: i64,
    },
    Run {
        /// Its id in the source database: runs are copied in id order,
        /// which within a source is start order (the target numbers them
        /// anew, in the same order).
        seq: i64,
        run_id: String,
        tenant: String,
        source: String,
        kind: String,
        started_at: i64,
        finished_at: Option<i64>,
        outcome: String,
        error: Option<String>,
        pages: i64,
        upserted: i64,
        deleted: i64,
        scheduled_at: Option<i64>,
    },
    Report {
        /// Its id in the source database (queue order).
        seq: i64,
        tenant: String,
        source: String,
        record_id: String,
        completed_at: String,
        import_state: String,
        message: Option<String>,
        status: String,
        attempts: i64,
        last_error: Option<String>,
        next_attempt_at: i64,
        created_at: i64,
        sent_at: Option<i64>,
    },
}

/// Where the next batch of a table starts: after this row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyAfter {
    /// Records and progress, by their key (tenant, source[, id]).
    Key(Vec<String>),
    /// Runs and reports, by their id in the source database.
    Seq(i64),
}

impl CopyRow {
    /// Where the batch after this row starts.
    pub fn after(&self) -> CopyAfter {
        match self {
            CopyRow::Record {
                tenant, source, id, ..
            } => CopyAfter::Key(vec![tenant.clone(), source.clone(), id.clone()]),
            CopyRow::Progress { tenant, source, .. } => {
                CopyAfter::Key(vec![tenant.clone(), source.clone()])
            }
            CopyRow::Run { seq, .. } | CopyRow::Report { seq, .. } => CopyAfter::Seq(*seq),
        }
    }
}

/// Rows copied, by table, in [`Table::ALL`]'s order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    pub rows: [u64; 4],
}

impl Store {
    /// Copies everything this database holds into `target`, which must be
    /// empty; calls `progress` after each batch with the table and the rows
    /// copied from it so far. Refuses while a run holds a lease here (the
    /// daemon or a `sync` is still running on this database).
    pub async fn copy_to(
        &self,
        target: &Store,
        mut progress: impl FnMut(Table, u64),
    ) -> Result<Copied, StoreError> {
        if let Some((key, holder)) = self.any_lease_holder().await? {
            return Err(StoreError::Busy(format!(
                "{key} is being synced by {holder}: stop the daemon and every `synchro sync` \
                 on {} before copying it",
                self.location()
            )));
        }
        let stored = target.stored_sources().await?;
        if let Some(key) = stored.first() {
            return Err(StoreError::Busy(format!(
                "{} already holds data ({key} and {} other source(s)): copy-store fills only an \
                 empty database",
                target.location(),
                stored.len() - 1
            )));
        }
        let mut copied = Copied::default();
        for (i, table) in Table::ALL.into_iter().enumerate() {
            let mut after: Option<CopyAfter> = None;
            loop {
                let rows = self.copy_out(table, after.clone(), COPY_BATCH).await?;
                let Some(last) = rows.last() else { break };
                after = Some(last.after());
                let n = rows.len() as u64;
                target.copy_in(rows).await?;
                copied.rows[i] += n;
                progress(table, copied.rows[i]);
                if (n as i64) < COPY_BATCH {
                    break;
                }
            }
        }
        // The change counter last: numbers handed out here (a record
        // changed since, a purged tombstone) are never handed out there,
        // and a reader behind this database's purges is told to resync
        // there too.
        target
            .raise_change_counter(self.change_counter().await?)
            .await?;
        Ok(copied)
    }
}

/// A row of `table` as [`Store::copy_to`] reads it, columns in the order
/// the backends select them; the same for every backend.
pub(super) fn decode<'r, R>(table: Table, row: &'r R) -> Result<CopyRow, StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(match table {
        Table::Records => CopyRow::Record {
            tenant: row.try_get(0)?,
            source: row.try_get(1)?,
            id: row.try_get(2)?,
            kind: row.try_get(3)?,
            updated_at: row.try_get(4)?,
            updated_us: row.try_get(5)?,
            deleted: row.try_get(6)?,
            data: row.try_get(7)?,
            stored_at: row.try_get(8)?,
            listing: row.try_get(9)?,
            change: row.try_get(10)?,
        },
        Table::Progress => CopyRow::Progress {
            tenant: row.try_get(0)?,
            source: row.try_get(1)?,
            kind: row.try_get(2)?,
            phase: row.try_get(3)?,
            state: row.try_get(4)?,
            updated_at: row.try_get(5)?,
        },
        Table::Runs => CopyRow::Run {
            seq: row.try_get(0)?,
            run_id: row.try_get(1)?,
            tenant: row.try_get(2)?,
            source: row.try_get(3)?,
            kind: row.try_get(4)?,
            started_at: row.try_get(5)?,
            finished_at: row.try_get(6)?,
            outcome: row.try_get(7)?,
            error: row.try_get(8)?,
            pages: row.try_get(9)?,
            upserted: row.try_get(10)?,
            deleted: row.try_get(11)?,
            scheduled_at: row.try_get(12)?,
        },
        Table::Outbox => CopyRow::Report {
            seq: row.try_get(0)?,
            tenant: row.try_get(1)?,
            source: row.try_get(2)?,
            record_id: row.try_get(3)?,
            completed_at: row.try_get(4)?,
            import_state: row.try_get(5)?,
            message: row.try_get(6)?,
            status: row.try_get(7)?,
            attempts: row.try_get(8)?,
            last_error: row.try_get(9)?,
            next_attempt_at: row.try_get(10)?,
            created_at: row.try_get(11)?,
            sent_at: row.try_get(12)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::{
        Page, Phase, Progress, Record, Report, ReportOutcome, RunOutcome, RunRecord, SourceKey,
        Tombstone,
    };
    use crate::store::Acquired;
    use crate::store::test_db::{Backend, TestDb, both_backends};

    fn payload(value: serde_json::Value) -> crate::model::Payload {
        serde_json::value::to_raw_value(&value).expect("encodable")
    }

    fn record(id: usize, at: &str) -> Record {
        Record {
            id: format!("r{id:05}"),
            updated_at: at.into(),
            updated_us: crate::time::parse_us(at).expect("ts"),
            // Key order and spacing as an upstream sent them: kept verbatim.
            data: serde_json::value::RawValue::from_string(format!(
                "{{\"z\": {id}, \"a\": \"caf\\u00e9 \u{1F600}\", \"id\": \"r{id:05}\"}}"
            ))
            .expect("json"),
        }
    }

    /// A fresh database of `backend` (kept alive by the returned guard),
    /// `None` when Postgres is not configured for tests.
    async fn open(backend: Backend) -> Option<(TestDb, Store)> {
        let db = TestDb::new(backend, "store::copy").await?;
        let store = db.open().await;
        Some((db, store))
    }

    /// Every row of every table, with the ids the target numbers anew
    /// blanked out.
    async fn dump(store: &Store) -> Vec<CopyRow> {
        let mut all = Vec::new();
        for table in Table::ALL {
            for mut row in store
                .copy_out(table, None, i64::MAX)
                .await
                .expect("copy_out")
            {
                if let CopyRow::Run { seq, .. } | CopyRow::Report { seq, .. } = &mut row {
                    *seq = 0;
                }
                all.push(row);
            }
        }
        all
    }

    async fn export(store: &Store) -> Vec<String> {
        let mut lines = Vec::new();
        store
            .export(&[], true, |row| {
                lines.push(serde_json::to_string(&row).map_err(std::io::Error::other)?);
                Ok(())
            })
            .await
            .expect("export");
        lines
    }

    /// A database with more records than one batch, tombstones, progress of
    /// two sources, finished and interrupted runs, and reports in several
    /// states.
    async fn fill(store: &Store) -> SourceKey {
        let key = SourceKey::new("acme", "content");
        let other = SourceKey::new("acme", "dossiers");
        let run = "run-1".to_string();
        store
            .start_run(&key, "content", &run, Some(1))
            .await
            .expect("start");
        let Acquired::Taken(lease) = store
            .acquire_lease(&key, &run, std::time::Duration::from_secs(60))
            .await
            .expect("lease")
        else {
            panic!("lease held")
        };
        let n = COPY_BATCH as usize + 7;
        let upserts: Vec<Record> = (0..n).map(|i| record(i, "2024-03-01T10:00:00Z")).collect();
        let reports = upserts[..3]
            .iter()
            .map(|r| Report {
                record_id: r.id.clone(),
                version_us: Some(r.updated_us),
                completed_at: "2024-03-01T10:00:00Z".into(),
                outcome: ReportOutcome::Success,
            })
            .collect();
        let page = Page {
            upserts,
            deletes: vec![Tombstone {
                id: "gone".into(),
                deleted_at: Some("2024-03-02T00:00:00Z".into()),
                data: payload(json!({ "id": "gone", "status": "deleted" })),
            }],
            next_progress: Progress {
                phase: Phase::Incremental,
                state: json!({ "since": "2024-03-01T10:00:00Z" }),
            },
            done: true,
            listing: None,
            reports,
        };
        store
            .commit_pages(&lease, "content", vec![page])
            .await
            .expect("commit");
        let totals = RunRecord {
            pages: 1,
            upserted: n as u64,
            deleted: 1,
            error: None,
        };
        store
            .finish_run(&key, &run, RunOutcome::Success, &totals)
            .await
            .expect("finish");
        let claimed = store
            .claim_reports(&key, i64::MAX, i64::MAX, 2)
            .await
            .expect("claim");
        store.report_sent(claimed[0].id, 5).await.expect("sent");
        store
            .report_refused(claimed[1].id, "unknown request")
            .await
            .expect("refused");
        store
            .start_run(&other, "demarches", "run-2", None)
            .await
            .expect("start");
        store
            .commit_page(
                &other,
                "demarches",
                &Page {
                    upserts: vec![record(1, "2024-01-01T00:00:00Z")],
                    deletes: vec![],
                    next_progress: Progress {
                        phase: Phase::Full,
                        state: json!({ "cursor": "abc" }),
                    },
                    done: false,
                    listing: None,
                    reports: vec![],
                },
            )
            .await
            .expect("commit");
        key
    }

    /// Copies a filled database of `from`'s backend into an empty one of
    /// `into`'s and compares them table by table and by their export.
    async fn a_copy_holds_every_row_of_every_table_and_exports_the_same(
        from: Backend,
        into: Backend,
    ) {
        let (Some((_f, from)), Some((_i, into))) = (open(from).await, open(into).await) else {
            return;
        };
        let key = fill(&from).await;
        // A purge that removes nothing still sets the purge cutoff, which
        // the copy must carry (a deletion listed again stays dropped).
        let twenty_years = std::time::Duration::from_secs(20 * 365 * 86_400);
        assert_eq!(from.purge_tombstones(twenty_years).await.expect("purge"), 0);
        let mut seen = Vec::new();
        let copied = from
            .copy_to(&into, |table, n| seen.push((table, n)))
            .await
            .expect("copy");
        let records = COPY_BATCH as u64 + 7 + 1 + 1;
        assert_eq!(copied.rows, [records, 2, 2, 3], "{seen:?}");
        // Records went in two batches, progress reported after each.
        assert_eq!(seen[0], (Table::Records, COPY_BATCH as u64));
        assert_eq!(seen[1], (Table::Records, records));

        assert_eq!(dump(&from).await, dump(&into).await);
        let counter = from.change_counter().await.expect("counter");
        assert!(
            counter.purge_cutoff_us > 0 && counter.last_seq > 0,
            "{counter:?}"
        );
        assert_eq!(into.change_counter().await.expect("counter"), counter);
        let exported = export(&into).await;
        assert_eq!(export(&from).await, exported);
        assert!(
            exported.iter().any(|l| l.contains("\"deleted\":true")),
            "tombstone kept"
        );
        assert!(
            exported
                .iter()
                .any(|l| l.contains(r#"{"z": 0, "a": "caf\u00e9 😀", "id": "r00000"}"#)),
            "payload byte for byte"
        );
        // The copy works like the original: progress, reports, run counts.
        assert_eq!(
            from.load_progress(&key).await.expect("progress"),
            into.load_progress(&key).await.expect("progress")
        );
        assert_eq!(into.pending_report_count(&key).await.expect("pending"), 1);
        assert_eq!(
            into.claim_reports(&key, i64::MAX, i64::MAX, 9)
                .await
                .expect("claim")
                .len(),
            1
        );
        assert_eq!(into.successful_runs(&key).await.expect("runs"), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_to_sqlite() {
        a_copy_holds_every_row_of_every_table_and_exports_the_same(
            Backend::Sqlite,
            Backend::Sqlite,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_to_postgres() {
        a_copy_holds_every_row_of_every_table_and_exports_the_same(
            Backend::Sqlite,
            Backend::Postgres,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_to_sqlite() {
        a_copy_holds_every_row_of_every_table_and_exports_the_same(
            Backend::Postgres,
            Backend::Sqlite,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_to_postgres() {
        a_copy_holds_every_row_of_every_table_and_exports_the_same(
            Backend::Postgres,
            Backend::Postgres,
        )
        .await;
    }

    both_backends! {
        async fn a_copy_refuses_a_target_that_holds_data_and_changes_nothing(
            from: Store,
            backend: Backend
        ) {
            fill(&from).await;
            let (_i, into) = open(backend).await.expect("the same backend");
            let before = {
                let other = SourceKey::new("other", "s");
                into.start_run(&other, "k", "x", None).await.expect("start");
                dump(&into).await
            };
            let err = from.copy_to(&into, |_, _| {}).await.expect_err("refused");
            assert!(matches!(err, StoreError::Busy(_)), "{err}");
            assert!(err.to_string().contains("other/s"), "{err}");
            assert_eq!(dump(&into).await, before);
        }

        async fn a_copy_refuses_while_a_run_holds_a_lease_on_the_source_database(
            from: Store,
            backend: Backend
        ) {
            fill(&from).await;
            let key = SourceKey::new("acme", "live");
            let Acquired::Taken(_lease) = from
                .acquire_lease(&key, "running", std::time::Duration::from_secs(60))
                .await
                .expect("lease")
            else {
                panic!("lease held")
            };
            let (_i, into) = open(backend).await.expect("the same backend");
            let err = from.copy_to(&into, |_, _| {}).await.expect_err("refused");
            assert!(err.to_string().contains("acme/live"), "{err}");
            assert!(into.stored_sources().await.expect("sources").is_empty());
        }
    }
}
