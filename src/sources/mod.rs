//! Upstream kinds. Each one turns "what was stored last time" into the next
//! page of records; none of them knows SQL. The engine owns the loop, the
//! transaction and the bookkeeping.

pub mod calendar;
pub mod content;
pub mod demarches;
pub mod payload;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::http::HttpError;

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
    pub data: payload::Payload,
}

/// One upstream deletion.
#[derive(Debug, Clone)]
pub struct Tombstone {
    pub id: String,
    /// When the upstream says it was deleted, as received, if it says so.
    pub deleted_at: Option<String>,
    /// What to store if the record was never seen alive (the deletion notice).
    pub data: payload::Payload,
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

/// Why fetching a page failed. Nothing of the page is stored.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The upstream answered, but with an error of its own (e.g. GraphQL `errors`).
    #[error("upstream {url} reported an error: {message}")]
    Upstream { url: String, message: String },
    /// The body parsed as JSON but lacks what the protocol promises.
    #[error("malformed response from {url}: {reason}")]
    Malformed { url: String, reason: String },
    /// The credentials could not be obtained (e.g. a revoked OAuth refresh
    /// token). The message names the endpoint, never a token.
    #[error("{0}")]
    Auth(String),
    /// Stored progress that this kind cannot read (e.g. after a manual edit).
    #[error("stored progress is unreadable: {0}")]
    BadProgress(String),
}

impl SourceError {
    /// Credentials failures are reported with a fixed wording operators can grep.
    pub fn is_credentials(&self) -> bool {
        matches!(
            self,
            SourceError::Http(HttpError::Credentials { .. }) | SourceError::Auth(_)
        )
    }
}

/// The kind's state out of the stored progress. Unreadable progress (a
/// manual edit, an older format) starts a full listing again rather than
/// failing every run: the upsert rule makes the refetch harmless.
pub(crate) fn read_stored<S: serde::de::DeserializeOwned + Default>(
    stored: Option<Progress>,
) -> (Phase, S) {
    match stored {
        Some(p) => match serde_json::from_value::<S>(p.state) {
            Ok(state) => (p.phase, state),
            Err(e) => {
                tracing::warn!(error = %e, "stored progress unreadable; starting a full listing");
                (Phase::Full, S::default())
            }
        },
        None => (Phase::Full, S::default()),
    }
}

/// The kind's state out of the progress a run is at.
pub(crate) fn read_state<S: serde::de::DeserializeOwned>(
    progress: &Progress,
) -> Result<S, SourceError> {
    serde_json::from_value(progress.state.clone())
        .map_err(|e| SourceError::BadProgress(e.to_string()))
}

/// The kind's state as stored progress.
pub(crate) fn state_json<S: Serialize>(state: &S) -> Result<serde_json::Value, SourceError> {
    serde_json::to_value(state).map_err(|e| SourceError::BadProgress(e.to_string()))
}

/// A response that parsed but lacks what the protocol promises.
pub(crate) fn malformed(url: &str, reason: &str) -> SourceError {
    SourceError::Malformed {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

/// One upstream kind, bound to one configured source.
#[async_trait]
pub trait Source: Send + Sync {
    /// Called once when a run starts, with what was stored; returns the
    /// progress the run starts from (e.g. to begin a reconciliation pass).
    fn start_run(&self, stored: Option<Progress>) -> Progress;

    /// Fetches the page that follows `progress`.
    async fn fetch(&self, progress: &Progress) -> Result<Page, SourceError>;
}

/// Builds the source for a configured entry and registers its secrets with
/// the redactor. Every kind the config accepts has a connector, so this
/// never returns `Err`.
pub fn build(
    cfg: &crate::config::SourceConfig,
    http: &crate::http::HttpClient,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<Box<dyn Source>, String> {
    use crate::config::SourceKindConfig;
    let http = &http.for_source(&cfg.key());
    // A source added by a reload brings secrets the redactor was not built with.
    http.redactor().register_all(cfg.secrets());
    match &cfg.kind {
        SourceKindConfig::Demarches(d) => Ok(Box::new(demarches::Demarches::new(
            http.clone(),
            cfg.endpoint.clone(),
            d.clone(),
            stop.clone(),
        ))),
        SourceKindConfig::Calendar(c) => Ok(Box::new(calendar::Calendar::new(
            http.clone(),
            cfg.endpoint.clone(),
            c.clone(),
            stop.clone(),
        ))),
        SourceKindConfig::Content(c) => Ok(Box::new(content::Content::new(
            http.clone(),
            cfg.endpoint.clone(),
            c.clone(),
            stop.clone(),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use crate::engine::Redactor;
    use crate::http::HttpClient;

    #[tokio::test]
    async fn a_built_source_registers_its_secrets_for_redaction() {
        // A source added by a reload: the redactor was built without it.
        let toml = "[[tenants]]\nid = \"t\"\n[[tenants.sources]]\nid = \"a\"\nkind = \"content\"\n\
                    schedule = \"every 1m\"\nendpoint = \"https://api.contentor.com/v1\"\n\
                    token = \"token-added-by-a-reload\"\n";
        let config = match crate::config::load_str(toml, Path::new("t.toml"), &HashMap::new()) {
            Ok(c) => c,
            Err(e) => panic!("{}", e.report()),
        };
        let redactor = Redactor::default();
        let http = HttpClient::new(&config.http, redactor.clone()).expect("client");
        let stop = tokio_util::sync::CancellationToken::new();
        for cfg in config.sources() {
            assert!(super::build(cfg, &http, &stop).is_ok());
        }
        assert_eq!(
            redactor.scrub("Bearer token-added-by-a-reload"),
            "Bearer [redacted]"
        );
    }
}
