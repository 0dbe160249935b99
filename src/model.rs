//! The types every part of the daemon shares: which source (`SourceKey`),
//! what a source hands the engine (`Page` of `Record`s and `Tombstone`s with
//! the `Progress` that follows them) and how a run ended (`RunOutcome`).
//! This module imports nothing else from the crate, so that any module can
//! use it without creating an import cycle.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// An upstream object as stored: the JSON text it came as (see
/// `sources::payload`).
pub type Payload = Box<RawValue>;

/// Identifies a source across the daemon: `tenant/source`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    pub tenant: String,
    pub source: String,
}

impl SourceKey {
    pub fn new(tenant: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            source: source.into(),
        }
    }

    /// Parses the command-line form `TENANT/SOURCE_ID`.
    pub fn parse(s: &str) -> Option<Self> {
        let (t, s) = s.split_once('/')?;
        if t.is_empty() || s.is_empty() || s.contains('/') {
            return None;
        }
        Some(Self::new(t, s))
    }
}

impl std::fmt::Display for SourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.source)
    }
}

/// Whether a source is still doing its first complete listing or is following
/// changes. Shown by `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    #[default]
    Full,
    Incremental,
}

impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Full => "full",
            Phase::Incremental => "incremental",
        }
    }
}

/// What a source remembers between pages and between runs. The `state` is
/// the kind's own JSON (cursor, token, watermark...); it is committed in the
/// same transaction as the records of the page it follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Progress {
    pub phase: Phase,
    pub state: serde_json::Value,
}

/// One upstream object to upsert.
#[derive(Debug, Clone)]
pub struct Record {
    /// The upstream's own id, as a string (DS: dossier `number`).
    pub id: String,
    /// The upstream's modification timestamp as received (export contract).
    pub updated_at: String,
    /// The same instant in µs since the epoch, UTC: what "newer" compares.
    pub updated_us: i64,
    /// The upstream object as received (compact JSON text).
    pub data: Payload,
}

/// One upstream deletion.
#[derive(Debug, Clone)]
pub struct Tombstone {
    pub id: String,
    /// When the upstream says it was deleted, as received, if it says so.
    pub deleted_at: Option<String>,
    /// What to store if the record was never seen alive (the deletion notice).
    pub data: Payload,
}

/// One unit of progress: records and deletions plus the progress that follows
/// them. The engine commits all of it at once or none of it.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub upserts: Vec<Record>,
    pub deletes: Vec<Tombstone>,
    pub next_progress: Progress,
    /// No more pages in this run.
    pub done: bool,
    /// Set while a full listing must leave the source holding exactly what
    /// it returned (clear-and-resync): see [`Listing`].
    pub listing: Option<Listing>,
    /// Import-state reports to queue in the outbox, in the same transaction.
    pub reports: Vec<Report>,
}

impl Page {
    /// Records and deletions it carries: what group commits are sized by.
    pub fn items(&self) -> usize {
        self.upserts.len() + self.deletes.len()
    }
}

/// An import-state report owed to the upstream (Contentor). Queued in the
/// outbox once per (record, completion date), whatever happens later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub record_id: String,
    /// Queue it only if the record stored after the commit is this version
    /// (µs), i.e. the completed version was really stored and not refused as
    /// older. `None` for reports about records that could not be stored.
    pub version_us: Option<i64>,
    pub completed_at: String,
    pub outcome: ReportOutcome,
}

/// What the report says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The completed request is stored.
    Success,
    /// It could not be stored or processed, and why.
    Fail(String),
}

/// A full listing that replaces the source's records: every record of each
/// page is marked with `generation`; the page with `complete` also removes the
/// source's records without that mark, in the same transaction. Until then the
/// previous records stay readable, and a crash only delays the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listing {
    pub generation: i64,
    pub complete: bool,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Success,
    Failed,
    Cancelled,
}

impl RunOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunOutcome::Success => "success",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
        }
    }
}

/// Totals of a finished run.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    pub pages: u64,
    pub upserted: u64,
    pub deleted: u64,
    pub error: Option<String>,
}
