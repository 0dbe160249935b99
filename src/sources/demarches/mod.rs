//! Démarches Simplifiées (GraphQL API v2, `getDemarche`).
//!
//! One run walks three listings:
//! 1. `dossiers(updatedSince, after)`: the cursor of every non-empty page is
//!    stored with its dossiers; `updatedSince` stays fixed for the life of a
//!    cursor (a cursor of one ordering means nothing in the other). A periodic
//!    reconciliation (and a rejected cursor) restarts the listing from
//!    `watermark - 15 min`, which catches dossiers committed out of order.
//! 2. `pendingDeletedDossiers(deletedSince)` and 3. `deletedDossiers(deletedSince)`
//!    → tombstones, with a look-back since `dateSupression` can be backdated.
//!
//! The first request of a run asks for the next page of dossiers *and* the
//! first page of both deletion listings (one GraphQL document, three
//! fields), and that page commits the dossiers and the tombstones together
//! with the progress that follows them. A run with nothing new is therefore
//! one HTTP request; only listings with more pages cost more requests
//! (`getDemarche`, then `getPendingDeletedDossiers` / `getDeletedDossiers`
//! from the cursor the first page returned).

mod config;
mod wire;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::payload;
use crate::model::Payload;
use super::{Source, SourceError, malformed, state_json};
use crate::config::Secret;
use crate::http::{HttpClient, HttpError};
use crate::model::{Page, Phase, Progress, Record, Tombstone};
pub use config::{DemarchesConfig, DemarchesKind};
use wire::{Connection, GraphqlResponse};

/// The GraphQL document sent to the API (also used by the simulator's
/// snapshot, so tests compare against exactly what this query returns).
pub const QUERY: &str = include_str!("query.graphql");

/// How far before the watermark a reconciliation restarts the listing:
/// covers transactions that committed after later ones.
const RECONCILE_OVERLAP: Duration = Duration::from_secs(15 * 60);

/// Smallest `first` we fall back to when the API times out.
const MIN_PAGE: u32 = 10;

/// Which listing the run is walking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "listing", rename_all = "snake_case")]
enum Stage {
    #[default]
    Dossiers,
    PendingDeleted {
        after: Option<String>,
    },
    Deleted {
        after: Option<String>,
    },
}

/// The progress this kind stores (JSON in the `progress` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
struct State {
    /// `updatedSince` of the current listing, fixed for the life of `cursor`.
    since: Option<String>,
    /// `endCursor` of the last stored non-empty page (never overwritten by null).
    cursor: Option<String>,
    /// Highest `dateDerniereModification` stored, µs UTC.
    watermark_us: Option<i64>,
    /// When the listing last restarted from the watermark, µs UTC.
    last_reconcile_us: Option<i64>,
    stage: Stage,
    /// `deletedSince` of this run's deletion scan.
    scan_since: Option<String>,
    /// When this run's deletion scan started, µs UTC.
    scan_started_us: Option<i64>,
    /// Start of the last completed deletion scan, µs UTC.
    last_scan_us: Option<i64>,
    /// The next dossiers request also carries the first page of both
    /// deletion listings (set when a run starts, cleared by that request).
    #[serde(default)]
    with_deletions: bool,
    /// `endCursor` to continue `pendingDeletedDossiers` from, once the
    /// dossiers are done, when its first page said `hasNextPage`.
    #[serde(default)]
    pending_more: Option<String>,
    /// The same for `deletedDossiers`.
    #[serde(default)]
    deleted_more: Option<String>,
}

/// A configured démarche.
pub struct Demarches {
    http: HttpClient,
    endpoint: url::Url,
    token: Secret,
    cfg: DemarchesConfig,
    stop: CancellationToken,
}

impl Demarches {
    pub fn new(
        http: HttpClient,
        endpoint: url::Url,
        cfg: DemarchesConfig,
        stop: CancellationToken,
    ) -> Self {
        Self {
            http,
            endpoint,
            token: cfg.token.clone(),
            cfg,
            stop,
        }
    }

    fn page_size(&self) -> u32 {
        self.cfg.page_size.clamp(1, 100)
    }

    /// Sends one operation; GraphQL `errors` (HTTP 200) become an error.
    async fn call(
        &self,
        operation: &str,
        variables: serde_json::Value,
    ) -> Result<GraphqlResponse, SourceError> {
        let body = json!({ "query": QUERY, "operationName": operation, "variables": variables });
        let token = self.token.expose();
        let (resp, attempts) = self
            .http
            .send(
                |c| c.post(self.endpoint.clone()).bearer_auth(token).json(&body),
                &self.stop,
            )
            .await?;
        let resp = resp.error_for_status(attempts)?;
        let parsed = GraphqlResponse::parse(&resp.body).map_err(|e| HttpError::Decode {
            url: resp.url.clone(),
            reason: e.to_string(),
        })?;
        Ok(parsed.with_url(&resp.url))
    }

    async fn fetch_dossiers(&self, state: &State, phase: Phase) -> Result<Page, SourceError> {
        let mut first = self.page_size();
        let mut state = state.clone();
        let mut fell_back = false;
        loop {
            let mut vars = json!({
                "demarcheNumber": self.cfg.demarche,
                "first": first,
                "after": state.cursor,
                "updatedSince": state.since,
            });
            let operation = if state.with_deletions {
                vars["deletedSince"] = json!(state.scan_since);
                "getDemarcheWithDeletions"
            } else {
                "getDemarche"
            };
            let mut resp = self.call(operation, vars).await?;
            if let Some(err) = resp.error() {
                if err.has_code("timeout") && first > MIN_PAGE {
                    first = (first / 2).max(MIN_PAGE);
                    tracing::warn!(first, "API timed out; retrying with a smaller page");
                    continue;
                }
                if err.has_code("bad_request") && state.cursor.is_some() && !fell_back {
                    tracing::warn!(error = %self.http.redactor().scrub(&err.message), "cursor rejected; restarting the listing from the watermark");
                    restart_from_watermark(&mut state, &self.cfg);
                    fell_back = true;
                    continue;
                }
                return Err(err.into_error());
            }
            let conn: Connection = resp.connection("dossiers")?;
            let mut deletes = Vec::new();
            if state.with_deletions {
                let pending = resp.connection("pendingDeletedDossiers")?;
                let deleted = resp.connection("deletedDossiers")?;
                state.pending_more = continuation(&pending, None, &resp.url)?;
                state.deleted_more = continuation(&deleted, None, &resp.url)?;
                deletes = tombstones(pending, &resp.url)?;
                deletes.extend(tombstones(deleted, &resp.url)?);
                state.with_deletions = false;
            }
            let mut page = self.dossiers_page(state, conn, &resp.url, phase)?;
            page.deletes = deletes;
            return Ok(page);
        }
    }

    fn dossiers_page(
        &self,
        mut state: State,
        conn: Connection,
        url: &str,
        mut phase: Phase,
    ) -> Result<Page, SourceError> {
        let mut upserts = Vec::with_capacity(conn.nodes.len());
        for node in conn.nodes {
            let (number, modified, spaced) = dossier_key(&node).ok_or_else(|| {
                malformed(
                    url,
                    "a dossier lacks `number` or `dateDerniereModification`",
                )
            })?;
            let (updated_at, updated_us) = modified;
            state.watermark_us = Some(state.watermark_us.map_or(updated_us, |w| w.max(updated_us)));
            upserts.push(Record {
                id: number.to_string(),
                updated_at,
                updated_us,
                data: payload::compact_scanned(node, spaced),
            });
        }
        if conn.page_info.has_next_page {
            match conn.page_info.end_cursor {
                Some(c) if Some(&c) != state.cursor.as_ref() => state.cursor = Some(c),
                _ => return Err(malformed(url, "hasNextPage without a new endCursor")),
            }
        } else if let Some(c) = conn.page_info.end_cursor {
            // The last page: keep its cursor; an empty page's null never
            // overwrites the stored one.
            state.cursor = Some(c);
        }
        let mut done = false;
        if !conn.page_info.has_next_page {
            phase = Phase::Incremental;
            if state.last_reconcile_us.is_none() {
                state.last_reconcile_us = Some(crate::time::now_us());
            }
            done = next_deletion_stage(&mut state);
        }
        Ok(Page {
            upserts,
            deletes: Vec::new(),
            next_progress: Progress {
                phase,
                state: state_json(&state)?,
            },
            done,
            listing: None,
            reports: Vec::new(),
        })
    }

    async fn fetch_deletions(
        &self,
        mut state: State,
        pending: bool,
        after: Option<String>,
        phase: Phase,
    ) -> Result<Page, SourceError> {
        let (operation, field) = if pending {
            ("getPendingDeletedDossiers", "pendingDeletedDossiers")
        } else {
            ("getDeletedDossiers", "deletedDossiers")
        };
        let vars = json!({
            "demarcheNumber": self.cfg.demarche,
            "first": self.page_size(),
            "after": after,
            "deletedSince": state.scan_since,
        });
        let mut resp = self.call(operation, vars).await?;
        if let Some(err) = resp.error() {
            return Err(err.into_error());
        }
        let conn: Connection = resp.connection(field)?;
        let next_after = continuation(&conn, after.as_deref(), &resp.url)?;
        let deletes = tombstones(conn, &resp.url)?;
        let mut done = false;
        match (pending, next_after) {
            (true, Some(after)) => state.stage = Stage::PendingDeleted { after: Some(after) },
            (false, Some(after)) => state.stage = Stage::Deleted { after: Some(after) },
            (true, None) => {
                state.pending_more = None;
                done = next_deletion_stage(&mut state);
            }
            (false, None) => {
                state.pending_more = None;
                state.deleted_more = None;
                done = next_deletion_stage(&mut state);
            }
        }
        Ok(Page {
            upserts: Vec::new(),
            deletes,
            next_progress: Progress {
                phase,
                state: state_json(&state)?,
            },
            done,
            listing: None,
            reports: Vec::new(),
        })
    }
}

#[async_trait]
impl Source for Demarches {
    fn start_run(&self, stored: Option<Progress>) -> Progress {
        let (phase, mut state): (Phase, State) = super::read_stored(stored);
        let now = crate::time::now_us();
        if state.since.is_none() {
            state.since = Some(self.cfg.updated_since.clone());
        }
        let reconcile_due = state
            .last_reconcile_us
            .is_some_and(|t| now.saturating_sub(t) >= self.cfg.reconcile_every.as_micros() as i64);
        if phase == Phase::Incremental && reconcile_due {
            tracing::info!("periodic reconciliation: restarting the listing from the watermark");
            restart_from_watermark(&mut state, &self.cfg);
            state.last_reconcile_us = Some(now);
        }
        state.stage = Stage::Dossiers;
        state.with_deletions = true;
        state.pending_more = None;
        state.deleted_more = None;
        state.scan_started_us = Some(now);
        state.scan_since = state.last_scan_us.map(|t| {
            crate::time::format_us(t.saturating_sub(self.cfg.deleted_lookback.as_micros() as i64))
        });
        Progress {
            phase,
            state: serde_json::to_value(&state).unwrap_or_default(),
        }
    }

    async fn fetch(&self, progress: &Progress) -> Result<Page, SourceError> {
        let state: State = super::read_state(progress)?;
        match state.stage.clone() {
            Stage::Dossiers => self.fetch_dossiers(&state, progress.phase).await,
            Stage::PendingDeleted { after } => {
                self.fetch_deletions(state, true, after, progress.phase)
                    .await
            }
            Stage::Deleted { after } => {
                self.fetch_deletions(state, false, after, progress.phase)
                    .await
            }
        }
    }
}

/// After the dossiers (or a deletion listing) are done: moves to the
/// deletion listing that still has pages, or ends the run (`true`) and
/// records the deletion scan as complete.
fn next_deletion_stage(state: &mut State) -> bool {
    if let Some(after) = state.pending_more.take() {
        state.stage = Stage::PendingDeleted { after: Some(after) };
        false
    } else if let Some(after) = state.deleted_more.take() {
        state.stage = Stage::Deleted { after: Some(after) };
        false
    } else {
        state.stage = Stage::Dossiers;
        state.last_scan_us = state.scan_started_us;
        true
    }
}

/// Where a deletion listing continues: `Some(endCursor)` when it says
/// `hasNextPage`, `None` when this page was its last. A next page without
/// a new cursor would loop forever: malformed.
fn continuation(
    conn: &Connection,
    after: Option<&str>,
    url: &str,
) -> Result<Option<String>, SourceError> {
    if !conn.page_info.has_next_page {
        return Ok(None);
    }
    match conn.page_info.end_cursor.as_deref() {
        Some(c) if Some(c) != after => Ok(Some(c.to_string())),
        _ => Err(malformed(url, "hasNextPage without a new endCursor")),
    }
}

/// The tombstones of a page of `pendingDeletedDossiers` / `deletedDossiers`,
/// keyed on `number`.
fn tombstones(conn: Connection, url: &str) -> Result<Vec<Tombstone>, SourceError> {
    let mut deletes = Vec::with_capacity(conn.nodes.len());
    for node in conn.nodes {
        let key: DeletedKey = serde_json::from_str(node.get())
            .map_err(|_| malformed(url, "a deleted dossier lacks `number`"))?;
        let deleted_at = key
            .deleted
            .as_ref()
            .and_then(|d| d.as_str())
            .filter(|d| crate::time::parse_us(d).is_some())
            .map(str::to_string);
        deletes.push(Tombstone {
            id: key.number.to_string(),
            deleted_at,
            data: payload::compact(node),
        });
    }
    Ok(deletes)
}

/// Restarts the dossier listing from `watermark - 15 min` with no cursor
/// (or from the configured start when nothing was stored yet).
fn restart_from_watermark(state: &mut State, cfg: &DemarchesConfig) {
    state.cursor = None;
    state.since = Some(match state.watermark_us {
        // Saturating: the watermark is read back from stored progress.
        Some(w) => crate::time::format_us(w.saturating_sub(RECONCILE_OVERLAP.as_micros() as i64)),
        None => cfg.updated_since.clone(),
    });
}

/// `number` and `dateDerniereModification` (as received, and in µs).
/// What synchro reads of a dossier; the rest stays raw.
#[derive(serde::Deserialize)]
struct DossierKey {
    number: i64,
    #[serde(rename = "dateDerniereModification")]
    modified: String,
}

/// What synchro reads of a deleted dossier.
#[derive(serde::Deserialize)]
struct DeletedKey {
    number: i64,
    #[serde(rename = "dateSupression", default)]
    deleted: Option<serde_json::Value>,
}

/// Also says whether the text has whitespace to compact away. Read in one
/// pass over the text ([`payload::scan`]), or with serde when the scan
/// leaves the text to it.
fn dossier_key(node: &Payload) -> Option<(i64, (String, i64), bool)> {
    let (key, spaced) = match payload::scan(node.get(), ["number", "dateDerniereModification"]) {
        Some(scan) => {
            let key = DossierKey {
                number: serde_json::from_str(scan.values[0]?).ok()?,
                modified: serde_json::from_str(scan.values[1]?).ok()?,
            };
            (key, scan.spaced)
        }
        None => (serde_json::from_str::<DossierKey>(node.get()).ok()?, true),
    };
    let us = crate::time::parse_us(&key.modified)?;
    Some((key.number, (key.modified, us), spaced))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretRef;

    #[test]
    fn a_watermark_at_the_edge_of_time_restarts_without_overflow() {
        let cfg = DemarchesConfig {
            token: Secret::new("token", SecretRef::Literal),
            demarche: 1,
            page_size: 100,
            updated_since: "2000-01-01T00:00:00Z".into(),
            reconcile_every: Duration::from_secs(86_400),
            deleted_lookback: Duration::from_secs(30 * 86_400),
        };
        let mut state = State {
            watermark_us: Some(i64::MIN),
            cursor: Some("c".into()),
            ..State::default()
        };
        restart_from_watermark(&mut state, &cfg);
        assert_eq!(state.cursor, None);
        assert!(state.since.is_some());
    }
}
