//! Contentor content requests (`GET {endpoint}/content?query=...`).
//!
//! The query asks for `source = api` requests from the stored watermark
//! (`lastStateChange`, inclusive, so requests sharing an instant are never
//! skipped), sorted by `lastStateChange`. After each stored page the
//! watermark moves to its newest request and the next request starts again
//! at page 1 from there: page offsets shift when requests change state
//! mid-listing, so walking page numbers could skip one. Only when a page
//! brings no progress (a batch sharing one instant is larger than a page) do
//! we step through `page=2,3,...` of the same query. Repeats are absorbed by
//! the upsert rule.
//!
//! A run with nothing new costs one request. When the requests at the
//! watermark instant fit in one page, page 1 of the query from the
//! watermark is also its last page and ends the run. When a run ended after
//! stepping through a batch larger than a page, every request at the
//! watermark instant has been stored, and re-reading the batch page by page
//! would tell nothing new; the next run instead asks once for the same query
//! sorted `lastStateChange:desc`. If that page reaches back to the watermark
//! instant (or is the only page), it holds every request changed since: the
//! run stores them, moves the watermark and ends. Otherwise more than a page
//! changed: the page is stored (harmless repeats later) and the run goes on
//! with the ascending walk from the watermark, as above.

mod config;
mod report;
mod request;
mod webhook;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Source, SourceError, state_json};
use crate::config::Secret;
use crate::http::HttpClient;
use crate::model::{Page, Phase, Progress};
pub use config::{ContentConfig, ContentKind};
use request::{Checked, check};

/// What this kind stores as progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
struct State {
    /// `lastStateChange` of the newest stored request, as received.
    watermark: Option<String>,
    /// The same instant in µs.
    watermark_us: Option<i64>,
    /// Its id (the tie-break, for operators reading the progress).
    watermark_id: Option<String>,
    /// Page of the current query (1 unless stepping through a large batch).
    #[serde(default = "first_page")]
    page: u32,
    /// Every request at the watermark instant is stored, and they span more
    /// than one page: a run starts with the descending probe.
    #[serde(default)]
    batch_stored: bool,
    /// This run's next request is the descending probe.
    #[serde(default)]
    probe: bool,
}

fn first_page() -> u32 {
    1
}

/// `{"requests": [...], "total", "pages", "page"}`.
#[derive(Debug, Deserialize)]
struct ListResponse {
    /// Kept raw: stored as they came; `check` reads only the keys.
    requests: Vec<crate::model::Payload>,
    #[serde(default)]
    pages: Option<u32>,
}

/// A configured Contentor account.
pub struct Content {
    http: HttpClient,
    url: url::Url,
    token: Secret,
    report: bool,
    stop: CancellationToken,
}

impl Content {
    pub fn new(
        http: HttpClient,
        endpoint: url::Url,
        cfg: ContentConfig,
        stop: CancellationToken,
    ) -> Self {
        let mut url = endpoint;
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push("content");
        }
        Self {
            http,
            url,
            token: cfg.token,
            report: cfg.report_import_state,
            stop,
        }
    }

    /// The JSON query: API requests from the watermark, oldest change first
    /// (newest first for the probe).
    fn query(state: &State) -> String {
        let mut criteria = vec![json!({"type": "source", "criteria": "api"})];
        if let Some(w) = &state.watermark {
            criteria.push(json!({
                "type": "lastStateChange",
                "criteria": {"from": w, "fromInclusive": true},
            }));
        }
        let sort = if state.probe {
            "lastStateChange:desc"
        } else {
            "lastStateChange"
        };
        json!({"criteria": criteria, "sortBy": [sort]}).to_string()
    }
}

#[async_trait]
impl Source for Content {
    fn start_run(&self, stored: Option<Progress>) -> Progress {
        let (phase, mut state): (Phase, State) = super::read_stored(stored);
        state.page = 1;
        state.probe = state.batch_stored && state.watermark.is_some();
        Progress {
            phase,
            state: serde_json::to_value(&state).unwrap_or_default(),
        }
    }

    async fn fetch(&self, progress: &Progress) -> Result<Page, SourceError> {
        let mut state: State = super::read_state(progress)?;
        let query = [
            ("query", Self::query(&state)),
            ("page", state.page.max(1).to_string()),
        ];
        let (resp, attempts) = self
            .http
            .send(
                |c| {
                    c.get(self.url.clone())
                        .query(&query)
                        .bearer_auth(self.token.expose())
                },
                &self.stop,
            )
            .await?;
        let resp = resp.error_for_status(attempts)?;
        let list: ListResponse = resp.json()?;

        let mut page = Page::default();
        let mut newest: Option<(i64, String, String)> = None;
        // The oldest `lastStateChange` of the page, µs (for the probe).
        let mut oldest: Option<i64> = None;
        let count = list.requests.len();
        for item in list.requests {
            let (changed, id) = match check(item, self.report) {
                Checked::Store(record, report) => {
                    let seen = (
                        record.updated_us,
                        record.updated_at.clone(),
                        record.id.clone(),
                    );
                    page.upserts.push(record);
                    page.reports.extend(report);
                    (Some(seen.0), Some(seen))
                }
                Checked::Reject {
                    id,
                    changed_us,
                    reason,
                    report,
                } => {
                    tracing::warn!(request = %id, %reason, reported = report.is_some(), "content request cannot be stored; skipped");
                    page.reports.extend(report);
                    (changed_us, None)
                }
                Checked::Garbage(reason) => {
                    tracing::warn!(%reason, "content request cannot be stored; skipped");
                    (None, None)
                }
            };
            if let Some(us) = changed {
                oldest = Some(oldest.map_or(us, |o| o.min(us)));
            }
            if let (Some(us), Some(seen)) = (changed, id)
                && newest.as_ref().is_none_or(|n| us >= n.0)
            {
                newest = Some(seen);
            }
        }
        let last_page = list.pages.is_some_and(|p| state.page >= p);
        if state.probe {
            let last = last_page || count == 0;
            return probed(page, state, progress.phase, newest, oldest, last);
        }
        let moved = newest
            .as_ref()
            .is_some_and(|n| state.watermark_us.is_none_or(|w| n.0 > w));
        if let (true, Some((us, at, id))) = (moved, newest) {
            state.watermark = Some(at);
            state.watermark_us = Some(us);
            state.watermark_id = Some(id);
            state.page = 1;
        } else {
            // Every request at the watermark instant: step through the batch.
            state.page = state.page.saturating_add(1);
        }
        page.done = count == 0 || last_page;
        if page.done {
            // Stepping ended the run: the whole batch at the watermark
            // instant is stored and spans more than one page.
            state.batch_stored = !moved && list.pages.is_some_and(|p| p > 1);
            state.page = 1;
        }
        tracing::debug!(received = count, page = state.page, "content page");
        page.next_progress = Progress {
            phase: if page.done {
                Phase::Incremental
            } else {
                progress.phase
            },
            state: state_json(&state)?,
        };
        Ok(page)
    }
}

/// Ends the descending probe: the page is complete when it reaches back to
/// the watermark instant or is the last page; otherwise the run goes on with
/// the ascending walk, watermark unchanged.
fn probed(
    mut page: Page,
    mut state: State,
    phase: Phase,
    newest: Option<(i64, String, String)>,
    oldest: Option<i64>,
    last_page: bool,
) -> Result<Page, SourceError> {
    state.probe = false;
    state.page = 1;
    let reached = match (oldest, state.watermark_us) {
        (Some(o), Some(w)) => o <= w,
        _ => false,
    };
    page.done = reached || last_page;
    if page.done
        && let Some((us, at, id)) = newest
        && state.watermark_us.is_none_or(|w| us > w)
    {
        // Every request after the old watermark is in this page, so the
        // batch at the new one fits in a page too.
        state.watermark = Some(at);
        state.watermark_us = Some(us);
        state.watermark_id = Some(id);
        state.batch_stored = false;
    }
    tracing::debug!(
        received = page.upserts.len(),
        complete = page.done,
        "content probe"
    );
    page.next_progress = Progress {
        phase: if page.done { Phase::Incremental } else { phase },
        state: state_json(&state)?,
    };
    Ok(page)
}
