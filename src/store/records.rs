//! Page commits: a page's records, its deletions and the progress that
//! follows them, in one `BEGIN IMMEDIATE` transaction. Each part is one
//! statement over the whole page (`json_each`), never a round trip per row.

use serde::Serialize;
use serde_json::value::RawValue;

use super::{Store, StoreError, now_us};
use crate::config::SourceKey;
use crate::sources::{Page, Progress, Record, Report, ReportOutcome, Tombstone};

/// What a committed page changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageStats {
    /// Records inserted or replaced by a newer version.
    pub upserted: u64,
    /// Live records turned into tombstones (or tombstones first seen).
    pub deleted: u64,
    /// Records removed because a completed full listing did not return them.
    pub removed: u64,
    /// Import-state reports newly queued in the outbox.
    pub reports: u64,
}

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
    deleted = CASE WHEN excluded.updated_us > records.updated_us THEN 0 ELSE records.deleted END
WHERE excluded.updated_us > records.updated_us
   OR (excluded.updated_us = records.updated_us AND records.deleted = 0
       AND excluded.data IS NOT records.data)
"#
    };
}

const UPSERT: &str = concat!(
    r#"
INSERT INTO records (tenant, source, id, kind, updated_at, updated_us, deleted, data, stored_at)
SELECT ?1, ?2, j.value ->> '$.i', ?3, j.value ->> '$.u', j.value ->> '$.t', 0, j.value -> '$.d', ?5
FROM json_each(?4) AS j WHERE true"#,
    upsert_conflict!()
);

/// The conflict clause of every record upsert: the benchmark's ingest
/// ceiling inserts with the same rule, so that the two compare like for like.
pub const UPSERT_CONFLICT: &str = upsert_conflict!();

/// Tombstones keep the last known payload; a deletion never seen alive is
/// stored with the deletion notice as its payload.
const TOMBSTONE: &str = r#"
INSERT INTO records (tenant, source, id, kind, updated_at, updated_us, deleted, data, stored_at)
SELECT ?1, ?2, j.value ->> '$.i', ?3, j.value ->> '$.u', j.value ->> '$.t', 1, j.value -> '$.d', ?5
FROM json_each(?4) AS j WHERE true
ON CONFLICT (tenant, source, id) DO UPDATE SET
    deleted = 1,
    stored_at = excluded.stored_at
WHERE records.deleted = 0
"#;

/// Marks the records a full listing returned with its generation.
const MARK: &str = r#"
UPDATE records SET listing = ?3
WHERE tenant = ?1 AND source = ?2 AND id IN (SELECT j.value FROM json_each(?4) AS j)
"#;

/// Removes what a completed full listing did not return.
const SWEEP: &str = r#"
DELETE FROM records
WHERE tenant = ?1 AND source = ?2 AND (listing IS NULL OR listing <> ?3)
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

const SAVE_PROGRESS: &str = r#"
INSERT INTO progress (tenant, source, kind, phase, state, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (tenant, source) DO UPDATE SET
    kind = excluded.kind, phase = excluded.phase, state = excluded.state,
    updated_at = excluded.updated_at
"#;

/// Runs one of the page statements over its JSON array; returns the rows
/// it changed.
async fn apply_batch(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    sql: &'static str,
    key: &SourceKey,
    kind: &str,
    json: String,
    now: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(sql)
        .bind(&key.tenant)
        .bind(&key.source)
        .bind(kind)
        .bind(json)
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

/// One row of the JSON array handed to `json_each`.
#[derive(Serialize)]
struct Row<'a> {
    i: &'a str,
    u: &'a str,
    t: i64,
    d: &'a serde_json::Value,
}

impl Store {
    /// Commits a page and the progress that follows it, atomically.
    pub async fn commit_page(
        &self,
        key: &SourceKey,
        kind: &str,
        page: &Page,
    ) -> Result<PageStats, StoreError> {
        self.commit(key, kind, page, true).await
    }

    /// Commits records and reports that arrived outside a sync (webhooks):
    /// same upsert and outbox rules, progress untouched.
    pub async fn commit_records(
        &self,
        key: &SourceKey,
        kind: &str,
        page: &Page,
    ) -> Result<PageStats, StoreError> {
        self.commit(key, kind, page, false).await
    }

    async fn commit(
        &self,
        key: &SourceKey,
        kind: &str,
        page: &Page,
        save_progress: bool,
    ) -> Result<PageStats, StoreError> {
        let now = now_us();
        let upserts = encode_upserts(&page.upserts)?;
        let tombstones = encode_tombstones(&page.deletes, now)?;
        let state = serde_json::to_string(&page.next_progress.state)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;

        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut stats = PageStats::default();
        if let Some(json) = upserts {
            stats.upserted = apply_batch(&mut tx, UPSERT, key, kind, json, now).await?;
        }
        if let Some(json) = tombstones {
            stats.deleted = apply_batch(&mut tx, TOMBSTONE, key, kind, json, now).await?;
        }
        if let Some(listing) = page.listing {
            let ids: Vec<&str> = page
                .upserts
                .iter()
                .map(|r| r.id.as_str())
                .chain(page.deletes.iter().map(|t| t.id.as_str()))
                .collect();
            if !ids.is_empty() {
                let ids =
                    serde_json::to_string(&ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                sqlx::query(MARK)
                    .bind(&key.tenant)
                    .bind(&key.source)
                    .bind(listing.generation)
                    .bind(ids)
                    .execute(&mut *tx)
                    .await?;
            }
            if listing.complete {
                stats.removed = sqlx::query(SWEEP)
                    .bind(&key.tenant)
                    .bind(&key.source)
                    .bind(listing.generation)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
        }
        if let Some(json) = encode_reports(&page.reports)? {
            stats.reports = sqlx::query(QUEUE_REPORTS)
                .bind(&key.tenant)
                .bind(&key.source)
                .bind(now)
                .bind(json)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        if save_progress {
            sqlx::query(SAVE_PROGRESS)
                .bind(&key.tenant)
                .bind(&key.source)
                .bind(kind)
                .bind(page.next_progress.phase.as_str())
                .bind(state)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(stats)
    }

    /// The progress stored for a source, if any.
    pub async fn load_progress(&self, key: &SourceKey) -> Result<Option<Progress>, StoreError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT phase, state FROM progress WHERE tenant = ?1 AND source = ?2")
                .bind(&key.tenant)
                .bind(&key.source)
                .fetch_optional(&self.writer)
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

fn encode_upserts(records: &[Record]) -> Result<Option<String>, StoreError> {
    if records.is_empty() {
        return Ok(None);
    }
    let rows: Vec<Row<'_>> = records
        .iter()
        .map(|r| Row {
            i: &r.id,
            u: &r.updated_at,
            t: r.updated_us,
            d: &r.data,
        })
        .collect();
    serde_json::to_string(&rows)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
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

fn encode_tombstones(deletes: &[Tombstone], now: i64) -> Result<Option<String>, StoreError> {
    if deletes.is_empty() {
        return Ok(None);
    }
    let stamps: Vec<(String, i64)> = deletes
        .iter()
        .map(|t| match t.deleted_at.as_deref() {
            Some(at) => (at.to_string(), crate::time::parse_us(at).unwrap_or(now)),
            None => (crate::time::format_us(now), now),
        })
        .collect();
    let rows: Vec<Row<'_>> = deletes
        .iter()
        .zip(&stamps)
        .map(|(t, (u, us))| Row {
            i: &t.id,
            u,
            t: *us,
            d: &t.data,
        })
        .collect();
    serde_json::to_string(&rows)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Parses a stored payload back into raw JSON without re-encoding it.
pub(super) fn raw(data: String) -> Result<Box<RawValue>, StoreError> {
    RawValue::from_string(data).map_err(|e| StoreError::Corrupt(e.to_string()))
}
