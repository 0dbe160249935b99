//! Démarches Simplifiées (GraphQL API v2, `getDemarche`).
//!
//! One run walks three listings, one page per request:
//! 1. `dossiers(updatedSince, after)`: the cursor of every non-empty page is
//!    stored with its dossiers; `updatedSince` stays fixed for the life of a
//!    cursor (a cursor of one ordering means nothing in the other). A periodic
//!    reconciliation (and a rejected cursor) restarts the listing from
//!    `watermark - 15 min`, which catches dossiers committed out of order.
//! 2. `pendingDeletedDossiers(deletedSince)` and 3. `deletedDossiers(deletedSince)`
//!    → tombstones, with a look-back since `dateSupression` can be backdated.

mod wire;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::payload::{self, Payload};
use super::{Page, Phase, Progress, Record, Source, SourceError, Tombstone, malformed, state_json};
use crate::config::{DemarchesConfig, Secret};
use crate::http::HttpClient;
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
        let parsed: GraphqlResponse = resp.json()?;
        Ok(parsed.with_url(&resp.url))
    }

    async fn fetch_dossiers(&self, state: &State, phase: Phase) -> Result<Page, SourceError> {
        let mut first = self.page_size();
        let mut state = state.clone();
        let mut fell_back = false;
        loop {
            let vars = json!({
                "demarcheNumber": self.cfg.demarche,
                "first": first,
                "after": state.cursor,
                "updatedSince": state.since,
            });
            let resp = self.call("getDemarche", vars).await?;
            if let Some(err) = resp.error() {
                if err.has_code("timeout") && first > MIN_PAGE {
                    first = (first / 2).max(MIN_PAGE);
                    tracing::warn!(first, "API timed out; retrying with a smaller page");
                    continue;
                }
                if err.has_code("bad_request") && state.cursor.is_some() && !fell_back {
                    tracing::warn!(error = %err.message, "cursor rejected; restarting the listing from the watermark");
                    restart_from_watermark(&mut state, &self.cfg);
                    fell_back = true;
                    continue;
                }
                return Err(err.into_error());
            }
            let conn: Connection = resp.connection("dossiers")?;
            return self.dossiers_page(state, conn, &resp.url, phase);
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
            let (number, modified) = dossier_key(&node).ok_or_else(|| {
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
                data: payload::compact(node),
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
        if !conn.page_info.has_next_page {
            phase = Phase::Incremental;
            if state.last_reconcile_us.is_none() {
                state.last_reconcile_us = Some(crate::time::now_us());
            }
            state.stage = Stage::PendingDeleted { after: None };
        }
        Ok(Page {
            upserts,
            deletes: Vec::new(),
            next_progress: Progress {
                phase,
                state: state_json(&state)?,
            },
            done: false,
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
        let resp = self.call(operation, vars).await?;
        if let Some(err) = resp.error() {
            return Err(err.into_error());
        }
        let conn: Connection = resp.connection(field)?;
        let mut deletes = Vec::with_capacity(conn.nodes.len());
        for node in conn.nodes {
            let key: DeletedKey = serde_json::from_str(node.get())
                .map_err(|_| malformed(&resp.url, "a deleted dossier lacks `number`"))?;
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
        let more = conn.page_info.has_next_page;
        let next_after = conn.page_info.end_cursor.or(after.clone());
        if more && next_after == after {
            return Err(malformed(&resp.url, "hasNextPage without a new endCursor"));
        }
        let mut done = false;
        state.stage = match (pending, more) {
            (true, true) => Stage::PendingDeleted { after: next_after },
            (true, false) => Stage::Deleted { after: None },
            (false, true) => Stage::Deleted { after: next_after },
            (false, false) => {
                done = true;
                state.last_scan_us = state.scan_started_us;
                Stage::Dossiers
            }
        };
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

/// Restarts the dossier listing from `watermark - 15 min` with no cursor
/// (or from the configured start when nothing was stored yet).
fn restart_from_watermark(state: &mut State, cfg: &DemarchesConfig) {
    state.cursor = None;
    state.since = Some(match state.watermark_us {
        Some(w) => crate::time::format_us(w - RECONCILE_OVERLAP.as_micros() as i64),
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

fn dossier_key(node: &Payload) -> Option<(i64, (String, i64))> {
    let key: DossierKey = serde_json::from_str(node.get()).ok()?;
    let us = crate::time::parse_us(&key.modified)?;
    Some((key.number, (key.modified, us)))
}
