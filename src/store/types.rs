//! What the store's interface takes and gives, the same for every backend.

use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::model::SourceKey;

/// What a committed page (or group of pages) changed.
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

impl PageStats {
    pub(super) fn add(&mut self, other: PageStats) {
        self.upserted += other.upserted;
        self.deleted += other.deleted;
        self.removed += other.removed;
        self.reports += other.reports;
    }
}

/// One export line (contract, DESIGN.md §1). `data` is the stored payload,
/// passed through without re-encoding.
#[derive(Debug, Serialize)]
pub struct ExportRow {
    /// The change number of the record's last stored change.
    pub seq: i64,
    pub tenant: String,
    pub source: String,
    pub kind: String,
    pub id: String,
    pub deleted: bool,
    pub updated_at: String,
    pub data: Box<RawValue>,
}

/// What [`super::Store::forget_sources`] deleted for one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Forgotten {
    pub records: u64,
    pub progress: u64,
    pub runs: u64,
    pub reports: u64,
}

/// One report waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PendingReport {
    pub id: i64,
    pub record_id: String,
    pub completed_at: String,
    pub import_state: String,
    pub message: Option<String>,
    pub attempts: i64,
}

/// The stored view of one source.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SourceStatus {
    pub tenant: String,
    pub source: String,
    pub kind: String,
    /// `full` until a first complete listing, then `incremental`.
    pub phase: String,
    /// RFC 3339 end of the last successful run.
    pub last_success: Option<String>,
    /// Error of the most recent run, if it failed.
    pub last_error: Option<String>,
    /// Outcome of the most recent run.
    pub last_outcome: Option<String>,
    pub records: i64,
    pub deleted_records: i64,
    pub pending_reports: i64,
    pub failed_reports: i64,
    /// The run syncing the source right now, in this process or another.
    pub lease_holder: Option<Holder>,
}

/// What a run start leaves on the runs of its source a killed process left
/// open.
pub(crate) const INTERRUPTED: &str = "interrupted (process stopped during the run)";

/// Runs of each source kept whatever their age: a source that runs once a
/// week keeps two years of history, one that fails every minute keeps the
/// last hour and a half to look at.
pub const KEEP_LAST_RUNS: usize = 100;

/// The process that holds a lease, as other processes see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub host: String,
    pub pid: i64,
    pub run_id: String,
    /// When the holder took the lease (µs since the epoch).
    pub since_us: i64,
    /// When the lease lapses unless renewed (µs since the epoch).
    pub expires_us: i64,
}

impl std::fmt::Display for Holder {
    /// `pid 1234 on host-a since 12:03:01 UTC`: what an operator needs to
    /// find the process.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = chrono::DateTime::from_timestamp_micros(self.since_us)
            .map(|t| t.format("%H:%M:%S UTC").to_string())
            .unwrap_or_else(|| "?".into());
        write!(f, "pid {} on {} since {since}", self.pid, self.host)
    }
}

/// A held lease: the fencing token every commit of the run carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: SourceKey,
    pub epoch: i64,
    pub run_id: String,
    /// How long each renewal (and each fenced commit) extends the lease.
    pub ttl: Duration,
}

impl Lease {
    pub(crate) fn ttl_us(&self) -> i64 {
        ttl_micros(self.ttl)
    }

    /// The error of a commit or renewal this lease no longer allows.
    pub(crate) fn lost(&self) -> super::StoreError {
        super::StoreError::LeaseLost {
            key: self.key.clone(),
            epoch: self.epoch,
        }
    }
}

/// A lease's time to live in µs, as the lease rows store expiries.
pub(crate) fn ttl_micros(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX / 4)
}

/// What asking for a lease gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    Taken(Lease),
    /// Another live run holds it.
    Held(Holder),
}

/// Sleeps between two renewals: a third of the ttl, so that two renewals
/// in a row can fail (a busy disk) before the lease lapses.
pub fn renew_every(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}

/// A stored payload for `export`: its JSON text as stored, unparsed.
pub(crate) fn stored_payload(data: String) -> Result<Box<RawValue>, super::StoreError> {
    RawValue::from_string(data).map_err(|e| super::StoreError::Corrupt(e.to_string()))
}

/// How often a daemon refreshes its row in `replicas`.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// A daemon unseen for this long is gone (three missed heartbeats).
pub(crate) const REPLICA_GONE_US: i64 = 3 * 5_000_000;

/// A daemon using the database, as `synchro status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaStatus {
    pub host: String,
    pub pid: i64,
    /// When it started (µs since the epoch).
    pub started_us: i64,
    /// When it last refreshed its row (µs since the epoch).
    pub seen_us: i64,
    /// Whether it was seen within three heartbeats.
    pub live: bool,
}

/// `replicas` rows (host, pid, started, seen) as `status` lists them at
/// `now_us`: live first, then by host and pid.
pub(crate) fn replica_list(rows: Vec<(String, i64, i64, i64)>, now_us: i64) -> Vec<ReplicaStatus> {
    let mut list: Vec<ReplicaStatus> = rows
        .into_iter()
        .map(|(host, pid, started_us, seen_us)| ReplicaStatus {
            host,
            pid,
            started_us,
            seen_us,
            live: now_us - seen_us < REPLICA_GONE_US,
        })
        .collect();
    list.sort_by(|a, b| (!a.live, &a.host, a.pid).cmp(&(!b.live, &b.host, b.pid)));
    list
}
