//! Page commits: a page's records, its deletions and the progress that
//! follows them, in one `BEGIN IMMEDIATE` transaction (or a group of
//! consecutive pages and the progress after the last, see [`Batch`]).
//! Records are written with prepared multi-row statements (64 rows each),
//! never a round trip per row; the small parts (listing marks, reports) go
//! through `json_each`.

use std::collections::HashSet;
use std::sync::Arc;

use super::journal::{self, Entry};
use super::lease;
use super::{SqliteStore, StoreError, now_us};
use crate::model::SourceKey;
use crate::model::{Page, Progress, Report, ReportOutcome};
use crate::store::batch::{Batch, Row, keep_held_deletions, stale_deletion_ids};
use crate::store::changes::SeqAlloc;
use crate::store::{Lease, PageStats};

/// Upsert rule: a version replaces the stored one only if it is newer by the
/// upstream's own clock, or equally new but different (DS exposes dates to
/// the second while two edits can share a second). A refetched page therefore
/// changes nothing, and an older version never overwrites a newer one. A
/// tombstone comes back to life only with a strictly newer version.
macro_rules! upsert_conflict {
    () => {
        r#"
ON CONFLICT (tenant, source, id) DO UPDATE SET
    updated_at = excluded.updated_at,
    updated_us = excluded.updated_us,
    data = excluded.data,
    stored_at = excluded.stored_at,
    seq = excluded.seq,
    deleted = CASE WHEN excluded.updated_us > records.updated_us THEN 0 ELSE records.deleted END,
    listing = coalesce(excluded.listing, records.listing)
WHERE excluded.updated_us > records.updated_us
   OR (excluded.updated_us = records.updated_us AND records.deleted = 0
       AND excluded.data IS NOT records.data)
"#
    };
}

/// The conflict clause of every record upsert (the bench's baselines copy
/// it, and check their copy against this one).
const UPSERT_CONFLICT: &str = upsert_conflict!();

/// Tombstones keep the last known payload; a deletion never seen alive is
/// stored with the deletion notice as its payload.
const TOMBSTONE_CONFLICT: &str = r#"
ON CONFLICT (tenant, source, id) DO UPDATE SET
    deleted = 1,
    stored_at = excluded.stored_at,
    seq = excluded.seq,
    listing = coalesce(excluded.listing, records.listing)
WHERE records.deleted = 0
"#;

/// Rows per multi-row `INSERT ... VALUES` statement. A page is written in
/// statements of 64 rows, then 32, 16, ... 1 for the rest, so that at most
/// seven statement texts exist per kind of write and all stay prepared in
/// the connection's cache. Values are bound, never parsed by SQLite: no JSON
/// round trip between the upstream's payload and the row.
const ROWS_PER_STATEMENT: usize = 64;

/// The multi-row statements, by rows: `[64, 32, 16, 8, 4, 2, 1]`, each row
/// eleven anonymous `?` parameters in the column order of the INSERT. (Numbered
/// `?NNN` parameters shared by all rows would bind fewer values, but the
/// driver looks each one up by name, a linear scan in SQLite: quadratic in
/// the parameters of a statement, and a top entry of the profile.)
struct RowStatements {
    by_rows: Vec<(usize, String)>,
}

impl RowStatements {
    fn new(conflict: &str) -> Self {
        let mut by_rows = Vec::new();
        let mut rows = ROWS_PER_STATEMENT;
        while rows >= 1 {
            let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ");
            by_rows.push((
                rows,
                format!(
                    "INSERT INTO records (tenant, source, id, kind, updated_at, updated_us, \
                     deleted, data, stored_at, listing, seq) VALUES {values} {conflict}"
                ),
            ));
            rows /= 2;
        }
        Self { by_rows }
    }
}

fn upsert_statements() -> &'static RowStatements {
    static STATEMENTS: std::sync::OnceLock<RowStatements> = std::sync::OnceLock::new();
    STATEMENTS.get_or_init(|| RowStatements::new(UPSERT_CONFLICT))
}

fn tombstone_statements() -> &'static RowStatements {
    static STATEMENTS: std::sync::OnceLock<RowStatements> = std::sync::OnceLock::new();
    STATEMENTS.get_or_init(|| RowStatements::new(TOMBSTONE_CONFLICT))
}

/// Marks the records a full listing returned with its generation. Rows the
/// page inserted or changed carry the mark already (the row statements bind
/// it); this writes only the unchanged ones.
const MARK: &str = r#"
UPDATE records SET listing = ?3
WHERE tenant = ?1 AND source = ?2 AND id IN (SELECT j.value FROM json_each(?4) AS j)
  AND listing IS NOT ?3
"#;

/// Turns what a completed full listing did not return into tombstones,
/// each with its own change number (`?5` + its rank), so that feed readers
/// learn it is gone. The source's rowids come from the key index alone (a
/// covering scan) and SQLite visits them in rowid order, i.e. table pages
/// in file order, each read once: filtering straight off the key index
/// visited rows in id order, one table page per row, and a listing of
/// 200,000 events spent ~0.5 s of its last commit reading pages back from
/// the OS (~0.2 s this way).
pub(super) const SWEEP: &str = r#"
UPDATE records SET deleted = 1, stored_at = ?4, seq = ?5 + s.n
FROM (SELECT rowid AS gone, row_number() OVER (ORDER BY rowid) AS n
      FROM records
      WHERE rowid IN (SELECT rowid FROM records WHERE tenant = ?1 AND source = ?2)
        AND (listing IS NULL OR listing <> ?3) AND deleted = 0) AS s
WHERE records.rowid = s.gone
"#;

/// Queues import-state reports: once per (record, completion date) ever
/// (the unique key makes a refetch, a restart or a reset change nothing),
/// and a success only if the completed version is the one stored now.
const QUEUE_REPORTS: &str = r#"
INSERT INTO outbox (tenant, source, record_id, completed_at, import_state, message, created_at)
SELECT ?1, ?2, j.value ->> '$.i', j.value ->> '$.c', j.value ->> '$.s', j.value ->> '$.m', ?3
FROM json_each(?4) AS j
WHERE j.value ->> '$.v' IS NULL
   OR EXISTS (SELECT 1 FROM records r
              WHERE r.tenant = ?1 AND r.source = ?2 AND r.id = j.value ->> '$.i'
                AND r.updated_us = j.value ->> '$.v' AND r.deleted = 0)
ON CONFLICT (tenant, source, record_id, completed_at) DO NOTHING
"#;

/// What every row of a commit shares. The texts are bound as shared
/// `Arc`s: binding a `&str` copies it into a new allocation per row.
struct Shared {
    tenant: Arc<str>,
    source: Arc<str>,
    kind: Arc<str>,
    now: i64,
}

impl Shared {
    fn new(key: &SourceKey, kind: &str, now: i64) -> Self {
        Self {
            tenant: Arc::from(key.tenant.as_str()),
            source: Arc::from(key.source.as_str()),
            kind: Arc::from(kind),
            now,
        }
    }
}

/// Writes rows with the multi-row statements of `statements`; returns the
/// rows inserted or changed.
async fn write_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    statements: &RowStatements,
    shared: &Shared,
    seq: &mut SeqAlloc,
    deleted: bool,
    rows: Vec<Row>,
) -> Result<u64, StoreError> {
    let mut changed = 0;
    let mut rest = rows.into_iter();
    // Largest statements first; the last one has a single row, so nothing
    // is left over.
    for (n, sql) in &statements.by_rows {
        while rest.len() >= *n {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for row in rest.by_ref().take(*n) {
                q = q
                    .bind(shared.tenant.clone())
                    .bind(shared.source.clone())
                    .bind(row.id)
                    .bind(shared.kind.clone())
                    .bind(row.updated_at)
                    .bind(row.updated_us)
                    .bind(deleted)
                    .bind(row.data)
                    .bind(shared.now)
                    .bind(row.listing)
                    .bind(seq.next());
            }
            changed += q.execute(&mut **tx).await?.rows_affected();
        }
    }
    Ok(changed)
}

/// Writes a batch's rows, listing marks, sweep and reports inside the
/// caller's transaction.
async fn write_batch(
    batch: Batch,
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    key: &SourceKey,
    shared: &Shared,
    seq: &mut SeqAlloc,
) -> Result<PageStats, StoreError> {
    let mut stats = PageStats::default();
    let written = batch.rows();
    for (deleted, mut rows) in batch.segments {
        if deleted {
            drop_stale_deletions(tx, key, seq.purge_cutoff_us(), &mut rows).await?;
            stats.deleted +=
                write_rows(tx, tombstone_statements(), shared, seq, true, rows).await?;
        } else {
            stats.upserted += write_rows(tx, upsert_statements(), shared, seq, false, rows).await?;
        }
    }
    if let Some(listing) = batch.listing {
        // Rows the statements inserted or changed carry the listing's
        // mark already; when that is every row (a first full listing),
        // there is nothing left to mark.
        let all_marked = stats.upserted + stats.deleted == written as u64;
        if !all_marked && !batch.listed.is_empty() {
            let ids = serde_json::to_string(&batch.listed)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query(MARK)
                .bind(&key.tenant)
                .bind(&key.source)
                .bind(listing.generation)
                .bind(ids)
                .execute(&mut **tx)
                .await?;
        }
        if listing.complete {
            stats.removed = sqlx::query(SWEEP)
                .bind(&key.tenant)
                .bind(&key.source)
                .bind(listing.generation)
                .bind(shared.now)
                .bind(seq.last())
                .execute(&mut **tx)
                .await?
                .rows_affected();
            seq.advance(stats.removed);
        }
    }
    if let Some(json) = encode_reports(&batch.reports)? {
        stats.reports = sqlx::query(QUEUE_REPORTS)
            .bind(&key.tenant)
            .bind(&key.source)
            .bind(shared.now)
            .bind(json)
            .execute(&mut **tx)
            .await?
            .rows_affected();
    }
    Ok(stats)
}

/// Writes consecutive pages inside the caller's transaction, batched (see
/// [`Batch`]); returns what they changed together.
async fn write_pages(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    key: &SourceKey,
    shared: &Shared,
    pages: Vec<Page>,
) -> Result<PageStats, StoreError> {
    let mut seq = read_counter(tx).await?;
    let mut total = PageStats::default();
    for batch in Batch::split(pages, shared.now) {
        total.add(write_batch(batch, tx, key, shared, &mut seq).await?);
    }
    if let Some(last) = seq.taken() {
        sqlx::query("UPDATE change_seq SET last_seq = ?1 WHERE id = 1")
            .bind(last)
            .execute(&mut **tx)
            .await?;
    }
    Ok(total)
}

/// The change counter, inside the writer's transaction (which no other
/// writer can run beside).
async fn read_counter(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
) -> Result<SeqAlloc, StoreError> {
    let (last, cutoff): (i64, i64) =
        sqlx::query_as("SELECT last_seq, purge_cutoff_us FROM change_seq WHERE id = 1")
            .fetch_one(&mut **tx)
            .await?;
    Ok(SeqAlloc::after(last, cutoff))
}

/// The ids among `ids` the source holds a row for, live or tombstone.
const HELD: &str = "SELECT id FROM records \
     WHERE tenant = ?1 AND source = ?2 AND id IN (SELECT j.value FROM json_each(?3) AS j)";

/// Drops the deletions [`keep_held_deletions`] says not to store again;
/// looks up only those dated before the purge cutoff (usually none).
async fn drop_stale_deletions(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    key: &SourceKey,
    cutoff: i64,
    rows: &mut Vec<Row>,
) -> Result<(), StoreError> {
    let stale = stale_deletion_ids(rows, cutoff);
    if stale.is_empty() {
        return Ok(());
    }
    let ids = serde_json::to_string(&stale).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let held: HashSet<String> = sqlx::query_scalar(HELD)
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(ids)
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .collect();
    keep_held_deletions(rows, cutoff, &held);
    Ok(())
}

/// Who commits, which decides whether progress is saved and how the
/// commit is fenced.
#[derive(Clone, Copy)]
enum Committer<'a> {
    /// A sync run: records and progress, fenced on the run's lease.
    Run(&'a Lease),
    /// Records arriving outside a run (webhooks): upserts and reports only,
    /// which the newer-wins rule makes safe beside any run.
    Records,
    /// Store tests of the page rules, which need no lease.
    #[cfg(test)]
    Unfenced,
}

impl SqliteStore {
    /// Commits a page and the progress that follows it, atomically (store
    /// tests; runs commit through [`SqliteStore::commit_pages`]).
    #[cfg(test)]
    pub(crate) async fn commit_page(
        &self,
        key: &SourceKey,
        kind: &str,
        page: &Page,
    ) -> Result<PageStats, StoreError> {
        self.commit(key, kind, vec![page.clone()], Committer::Unfenced)
            .await
    }

    /// Consecutive pages, unfenced (store tests).
    #[cfg(test)]
    pub(crate) async fn commit_pages_unfenced(
        &self,
        key: &SourceKey,
        kind: &str,
        pages: Vec<Page>,
    ) -> Result<PageStats, StoreError> {
        self.commit(key, kind, pages, Committer::Unfenced).await
    }

    /// Commits consecutive pages of one run and the progress that follows
    /// the last one, in ONE transaction (a group commit): the atomicity rule
    /// holds for the group as it does for a page, and a crash at worst
    /// refetches the group. The transaction first checks that `lease` is
    /// still the run's (the fence) and writes nothing if it was taken over
    /// ([`StoreError::LeaseLost`]). Returns what the pages changed together.
    /// Takes the pages by value: their payloads move into the statements
    /// uncopied.
    pub async fn commit_pages(
        &self,
        lease: &Lease,
        kind: &str,
        pages: Vec<Page>,
    ) -> Result<PageStats, StoreError> {
        self.commit(&lease.key, kind, pages, Committer::Run(lease))
            .await
    }

    /// Commits records and reports that arrived outside a sync (webhooks):
    /// same upsert and outbox rules, progress untouched.
    pub async fn commit_records(
        &self,
        key: &SourceKey,
        kind: &str,
        page: Page,
    ) -> Result<PageStats, StoreError> {
        self.commit(key, kind, vec![page], Committer::Records).await
    }

    async fn commit(
        &self,
        key: &SourceKey,
        kind: &str,
        pages: Vec<Page>,
        by: Committer<'_>,
    ) -> Result<PageStats, StoreError> {
        let Some(last) = pages.last() else {
            return Ok(PageStats::default());
        };
        let now = now_us();
        let state = serde_json::to_string(&last.next_progress.state)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let nothing_but_progress = pages.iter().all(|p| {
            p.upserts.is_empty()
                && p.deletes.is_empty()
                && p.reports.is_empty()
                && p.listing.is_none()
        });
        let (save_progress, fence) = match by {
            Committer::Run(lease) => (true, Some(lease)),
            Committer::Records => (false, None),
            #[cfg(test)]
            Committer::Unfenced => (true, None),
        };
        let progress = Entry::Progress {
            tenant: key.tenant.clone(),
            source: key.source.clone(),
            kind: kind.to_string(),
            phase: last.next_progress.phase.as_str(),
            state,
            at: now,
            fence: fence.map(|l| (l.epoch, l.run_id.clone())),
        };
        if nothing_but_progress {
            // A page that only moves the progress (the usual no-change run)
            // is one statement, atomic on its own and fenced inside it, and
            // group-committed with other runs' (see `journal.rs`): no
            // BEGIN/save/COMMIT of its own, which is what thousands of runs
            // due at once queue for.
            if save_progress {
                // (A lost lease comes back as `LeaseLost`, named by the
                // journal from the entry's key and fence.)
                let written = self.journal.write(progress).await;
                self.commit_result(written).await?;
            }
            return Ok(PageStats::default());
        }
        let shared = Shared::new(key, kind, now);
        let written = async {
            let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
            if let Some(lease) = fence {
                lease::check_fence(&mut tx, lease, now).await?;
            }
            let stats = write_pages(&mut tx, key, &shared, pages).await?;
            if save_progress {
                journal::progress_query(&progress).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(stats)
        }
        .await;
        self.commit_result(written).await
    }

    /// The progress stored for a source, if any. Read through the reader
    /// pool: a statement outside a transaction sees every committed page,
    /// and the one writer connection stays free for commits (with thousands
    /// of runs due at once, its round trips bound scheduling lateness).
    pub async fn load_progress(&self, key: &SourceKey) -> Result<Option<Progress>, StoreError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT phase, state FROM progress WHERE tenant = ?1 AND source = ?2")
                .bind(&key.tenant)
                .bind(&key.source)
                .fetch_optional(&self.reader)
                .await?;
        let Some((phase, state)) = row else {
            return Ok(None);
        };
        let state = serde_json::from_str(&state)
            .map_err(|e| StoreError::Corrupt(format!("progress of {key}: {e}")))?;
        let phase = serde_json::from_value(serde_json::Value::String(phase))
            .map_err(|e| StoreError::Corrupt(format!("phase of {key}: {e}")))?;
        Ok(Some(Progress { phase, state }))
    }

    /// Forgets a source's progress: the next sync is a full resync. Records
    /// stay until that resync replaces them; reports already sent stay sent.
    pub async fn reset_progress(&self, key: &SourceKey) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM progress WHERE tenant = ?1 AND source = ?2")
            .bind(&key.tenant)
            .bind(&key.source)
            .execute(&self.writer)
            .await?
            .rows_affected();
        Ok(done > 0)
    }
}

fn encode_reports(reports: &[Report]) -> Result<Option<String>, StoreError> {
    if reports.is_empty() {
        return Ok(None);
    }
    let rows: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            let (state, message) = match &r.outcome {
                ReportOutcome::Success => ("success", None),
                ReportOutcome::Fail(m) => ("fail", Some(m.as_str())),
            };
            serde_json::json!({
                "i": r.record_id, "v": r.version_us, "c": r.completed_at, "s": state, "m": message,
            })
        })
        .collect();
    serde_json::to_string(&rows)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}
