//! Page commits on Postgres: the fence first (it locks the lease row, so a
//! takeover waits for this transaction or this transaction sees it), then
//! each batch's rows as arrays through `UNNEST` (one statement per segment,
//! cut where an id repeats: Postgres refuses to update one row twice in a
//! statement), listing marks and sweep, reports, progress; one transaction.

use std::collections::HashSet;

use crate::model::{Page, Progress, Report, ReportOutcome, SourceKey};
use crate::store::batch::{Batch, Row, keep_held_deletions, stale_deletion_ids};
use crate::store::changes::SeqAlloc;
use crate::store::{Lease, PageStats, StoreError};

use super::PgStore;
use super::lease::check_fence;

type Tx<'a> = sqlx::Transaction<'a, sqlx::Postgres>;

/// The upsert rule (see the SQLite backend's `upsert_conflict!`): newer by
/// the upstream's clock, or equally new and different; a tombstone revives
/// only with a strictly newer version. `json` has no equality: compared as
/// text, which is what was received.
const UPSERT: &str = r#"
INSERT INTO records AS r (tenant, source, id, kind, updated_at, updated_us, deleted, data,
                          stored_at, listing, seq)
SELECT $1, $2, u.id, $3, u.updated_at, u.updated_us, false, u.data::json, $4, $5, $10 + u.n
FROM UNNEST($6::text[], $7::text[], $8::bigint[], $9::text[]) WITH ORDINALITY
     AS u(id, updated_at, updated_us, data, n)
ON CONFLICT (tenant, source, id) DO UPDATE SET
    updated_at = excluded.updated_at,
    updated_us = excluded.updated_us,
    data = excluded.data,
    stored_at = excluded.stored_at,
    seq = excluded.seq,
    deleted = CASE WHEN excluded.updated_us > r.updated_us THEN false ELSE r.deleted END,
    listing = coalesce(excluded.listing, r.listing)
WHERE excluded.updated_us > r.updated_us
   OR (excluded.updated_us = r.updated_us AND NOT r.deleted
       AND excluded.data::text IS DISTINCT FROM r.data::text)
"#;

/// Tombstones keep the last known payload; a deletion never seen alive is
/// stored with the deletion notice as its payload.
const TOMBSTONE: &str = r#"
INSERT INTO records AS r (tenant, source, id, kind, updated_at, updated_us, deleted, data,
                          stored_at, listing, seq)
SELECT $1, $2, u.id, $3, u.updated_at, u.updated_us, true, u.data::json, $4, $5, $10 + u.n
FROM UNNEST($6::text[], $7::text[], $8::bigint[], $9::text[]) WITH ORDINALITY
     AS u(id, updated_at, updated_us, data, n)
ON CONFLICT (tenant, source, id) DO UPDATE SET
    deleted = true,
    stored_at = excluded.stored_at,
    seq = excluded.seq,
    listing = coalesce(excluded.listing, r.listing)
WHERE NOT r.deleted
"#;

/// Marks the unchanged records a full listing returned.
const MARK: &str = "UPDATE records SET listing = $3 \
     WHERE tenant = $1 AND source = $2 AND id = ANY($4::text[]) AND listing IS DISTINCT FROM $3";

/// Turns what a completed full listing did not return into tombstones,
/// each with its own change number (`$5` + its rank).
const SWEEP: &str = r#"
UPDATE records AS r SET deleted = true, stored_at = $4, seq = $5 + s.n
FROM (SELECT id, row_number() OVER (ORDER BY id) AS n
      FROM records
      WHERE tenant = $1 AND source = $2 AND (listing IS NULL OR listing <> $3) AND NOT deleted) AS s
WHERE r.tenant = $1 AND r.source = $2 AND r.id = s.id
"#;

/// Takes the change counter for this transaction: every other transaction
/// that writes records waits here until this one commits, which is what
/// makes seq order commit order across processes and replicas. Taken
/// after the fence (the lease row) and before any record row, by every
/// writer, so that the locks are always taken in the same order.
pub(super) const TAKE_COUNTER: &str =
    "SELECT last_seq, purge_cutoff_us FROM change_seq WHERE id = 1 FOR UPDATE";

/// Queues import-state reports once per (record, completion date), a
/// success only for the version stored now.
const QUEUE_REPORTS: &str = r#"
INSERT INTO outbox (tenant, source, record_id, completed_at, import_state, message, created_at)
SELECT $1, $2, u.i, u.c, u.s, u.m, $3
FROM UNNEST($4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[]) AS u(i, v, c, s, m)
WHERE u.v IS NULL
   OR EXISTS (SELECT 1 FROM records r WHERE r.tenant = $1 AND r.source = $2 AND r.id = u.i
              AND r.updated_us = u.v AND NOT r.deleted)
ON CONFLICT (tenant, source, record_id, completed_at) DO NOTHING
"#;

const SAVE_PROGRESS: &str = "INSERT INTO progress (tenant, source, kind, phase, state, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (tenant, source) DO UPDATE SET kind = excluded.kind, phase = excluded.phase, \
     state = excluded.state, updated_at = excluded.updated_at";

/// The progress of a page that changed nothing else, in one statement
/// whose first part is the fence: it locks the lease row, and writes only
/// while the row names the run at its epoch.
const FENCED_PROGRESS: &str = r#"
WITH fence AS (
    UPDATE leases SET expires_at = greatest(expires_at, synchro_now_us() + $9)
    WHERE tenant = $1 AND source = $2 AND epoch = $7 AND run_id = $8
    RETURNING 1
)
INSERT INTO progress (tenant, source, kind, phase, state, updated_at)
SELECT $1, $2, $3, $4, $5, $6 FROM fence
ON CONFLICT (tenant, source) DO UPDATE SET kind = excluded.kind, phase = excluded.phase,
    state = excluded.state, updated_at = excluded.updated_at
"#;

/// Who commits: a run (fenced, progress saved), records from a webhook
/// (no progress), or a store test (unfenced).
#[derive(Clone, Copy)]
pub(super) enum Committer<'a> {
    Run(&'a Lease),
    Records,
    #[cfg(test)]
    Unfenced,
}

impl PgStore {
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

    #[cfg(test)]
    pub(crate) async fn commit_pages_unfenced(
        &self,
        key: &SourceKey,
        kind: &str,
        pages: Vec<Page>,
    ) -> Result<PageStats, StoreError> {
        self.commit(key, kind, pages, Committer::Unfenced).await
    }

    pub async fn commit_pages(
        &self,
        lease: &Lease,
        kind: &str,
        pages: Vec<Page>,
    ) -> Result<PageStats, StoreError> {
        self.commit(&lease.key, kind, pages, Committer::Run(lease))
            .await
    }

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
        let now = crate::time::now_us();
        let state = serde_json::to_string(&last.next_progress.state)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let phase = last.next_progress.phase.as_str();
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
        if nothing_but_progress {
            if !save_progress {
                return Ok(PageStats::default());
            }
            let written = match fence {
                Some(lease) => sqlx::query(FENCED_PROGRESS)
                    .bind(&key.tenant)
                    .bind(&key.source)
                    .bind(kind)
                    .bind(phase)
                    .bind(&state)
                    .bind(now)
                    .bind(lease.epoch)
                    .bind(&lease.run_id)
                    .bind(lease.ttl_us())
                    .execute(&self.pool)
                    .await
                    .map_err(StoreError::from)
                    .and_then(|done| {
                        if done.rows_affected() == 1 {
                            Ok(())
                        } else {
                            Err(lease.lost())
                        }
                    }),
                None => sqlx::query(SAVE_PROGRESS)
                    .bind(&key.tenant)
                    .bind(&key.source)
                    .bind(kind)
                    .bind(phase)
                    .bind(&state)
                    .bind(now)
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err(StoreError::from),
            };
            let written = self.lost_lease_first(written, fence).await;
            return self.commit_result(written).map(|()| PageStats::default());
        }
        let written = async {
            let mut tx = self.pool.begin().await?;
            if let Some(lease) = fence {
                check_fence(&mut tx, lease).await?;
            }
            let (last, cutoff): (i64, i64) =
                sqlx::query_as(TAKE_COUNTER).fetch_one(&mut *tx).await?;
            let mut seq = SeqAlloc::after(last, cutoff);
            let mut stats = PageStats::default();
            for batch in Batch::split(pages, now) {
                stats.add(write_batch(&mut tx, key, kind, now, batch, &mut seq).await?);
            }
            if let Some(last) = seq.taken() {
                sqlx::query("UPDATE change_seq SET last_seq = $1 WHERE id = 1")
                    .bind(last)
                    .execute(&mut *tx)
                    .await?;
            }
            if save_progress {
                sqlx::query(SAVE_PROGRESS)
                    .bind(&key.tenant)
                    .bind(&key.source)
                    .bind(kind)
                    .bind(phase)
                    .bind(&state)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(stats)
        }
        .await;
        let written = self.lost_lease_first(written, fence).await;
        self.commit_result(written)
    }

    /// A run's commit that failed on its connection (the server ended an
    /// idle transaction of a paused process, the session was terminated)
    /// says first whether the run lost its lease meanwhile: that, not the
    /// connection, is why it must stop.
    async fn lost_lease_first<T>(
        &self,
        written: Result<T, StoreError>,
        fence: Option<&Lease>,
    ) -> Result<T, StoreError> {
        let (Err(e), Some(lease)) = (&written, fence) else {
            return written;
        };
        if matches!(e, StoreError::LeaseLost { .. }) {
            return written;
        }
        match self.still_ours(lease).await {
            Ok(false) => Err(lease.lost()),
            _ => written,
        }
    }

    pub async fn load_progress(&self, key: &SourceKey) -> Result<Option<Progress>, StoreError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT phase, state FROM progress WHERE tenant = $1 AND source = $2")
                .bind(&key.tenant)
                .bind(&key.source)
                .fetch_optional(&self.pool)
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

    pub async fn reset_progress(&self, key: &SourceKey) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM progress WHERE tenant = $1 AND source = $2")
            .bind(&key.tenant)
            .bind(&key.source)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(done > 0)
    }
}

/// What the rows of one statement share.
#[derive(Clone, Copy)]
struct Rows<'a> {
    key: &'a SourceKey,
    kind: &'a str,
    now: i64,
    /// The full listing's generation, if the rows belong to one.
    listing: Option<i64>,
    /// Tombstones (`true`) or upserts.
    deleted: bool,
}

/// The ids among `$3` the source holds a row for, live or tombstone.
const HELD: &str =
    "SELECT id FROM records WHERE tenant = $1 AND source = $2 AND id = ANY($3::text[])";

/// Drops the deletions [`keep_held_deletions`] says not to store again;
/// looks up only those dated before the purge cutoff (usually none).
async fn drop_stale_deletions(
    tx: &mut Tx<'_>,
    key: &SourceKey,
    cutoff: i64,
    rows: &mut Vec<Row>,
) -> Result<(), StoreError> {
    let stale = stale_deletion_ids(rows, cutoff);
    if stale.is_empty() {
        return Ok(());
    }
    let held: HashSet<String> = sqlx::query_scalar(HELD)
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(stale)
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .collect();
    keep_held_deletions(rows, cutoff, &held);
    Ok(())
}

/// Writes one batch inside the caller's transaction.
async fn write_batch(
    tx: &mut Tx<'_>,
    key: &SourceKey,
    kind: &str,
    now: i64,
    batch: Batch,
    seq: &mut SeqAlloc,
) -> Result<PageStats, StoreError> {
    let mut stats = PageStats::default();
    let written = batch.rows();
    let generation = batch.listing.map(|l| l.generation);
    for (deleted, mut rows) in batch.segments {
        if deleted {
            drop_stale_deletions(tx, key, seq.purge_cutoff_us(), &mut rows).await?;
        }
        for chunk in without_repeats(rows) {
            let rows = Rows {
                key,
                kind,
                now,
                listing: generation,
                deleted,
            };
            let n = write_rows(tx, &rows, chunk, seq).await?;
            if deleted {
                stats.deleted += n;
            } else {
                stats.upserted += n;
            }
        }
    }
    if let Some(listing) = batch.listing {
        let all_marked = stats.upserted + stats.deleted == written as u64;
        if !all_marked && !batch.listed.is_empty() {
            sqlx::query(MARK)
                .bind(&key.tenant)
                .bind(&key.source)
                .bind(listing.generation)
                .bind(&batch.listed)
                .execute(&mut **tx)
                .await?;
        }
        if listing.complete {
            stats.removed = sqlx::query(SWEEP)
                .bind(&key.tenant)
                .bind(&key.source)
                .bind(listing.generation)
                .bind(now)
                .bind(seq.last())
                .execute(&mut **tx)
                .await?
                .rows_affected();
            seq.advance(stats.removed);
        }
    }
    if !batch.reports.is_empty() {
        stats.reports = queue_reports(tx, key, now, &batch.reports).await?;
    }
    Ok(stats)
}

/// Rows as arrays, one statement; the row at position `n` (from 1) gets
/// change number `base + n`.
async fn write_rows(
    tx: &mut Tx<'_>,
    to: &Rows<'_>,
    rows: Vec<Row>,
    seq: &mut SeqAlloc,
) -> Result<u64, StoreError> {
    let Rows {
        key,
        kind,
        now,
        listing,
        deleted,
    } = *to;
    let n = rows.len();
    let base = seq.last();
    seq.advance(n as u64);
    let (mut ids, mut ats, mut us, mut data) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for row in rows {
        ids.push(row.id);
        ats.push(row.updated_at);
        us.push(row.updated_us);
        data.push(row.data);
    }
    let sql = if deleted { TOMBSTONE } else { UPSERT };
    Ok(sqlx::query(sql)
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(kind)
        .bind(now)
        .bind(listing)
        .bind(ids)
        .bind(ats)
        .bind(us)
        .bind(data)
        .bind(base)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

/// Cuts rows into consecutive chunks in which no id repeats, in order: one
/// statement may not change a row twice, and applying the chunks one after
/// the other gives what applying the rows one by one gives.
fn without_repeats(rows: Vec<Row>) -> Vec<Vec<Row>> {
    let mut chunks = Vec::new();
    let mut chunk: Vec<Row> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for row in rows {
        if !seen.insert(row.id.clone()) {
            chunks.push(std::mem::take(&mut chunk));
            seen.clear();
            seen.insert(row.id.clone());
        }
        chunk.push(row);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

async fn queue_reports(
    tx: &mut Tx<'_>,
    key: &SourceKey,
    now: i64,
    reports: &[Report],
) -> Result<u64, StoreError> {
    let mut ids = Vec::with_capacity(reports.len());
    let mut versions = Vec::with_capacity(reports.len());
    let mut completed = Vec::with_capacity(reports.len());
    let mut states = Vec::with_capacity(reports.len());
    let mut messages = Vec::with_capacity(reports.len());
    for r in reports {
        let (state, message) = match &r.outcome {
            ReportOutcome::Success => ("success", None),
            ReportOutcome::Fail(m) => ("fail", Some(m.as_str())),
        };
        ids.push(r.record_id.as_str());
        versions.push(r.version_us);
        completed.push(r.completed_at.as_str());
        states.push(state);
        messages.push(message);
    }
    Ok(sqlx::query(QUEUE_REPORTS)
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(now)
        .bind(ids)
        .bind(versions)
        .bind(completed)
        .bind(states)
        .bind(messages)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}
