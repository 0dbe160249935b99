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

mod request;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Page, Phase, Progress, Source, SourceError, state_json};
use crate::config::{ContentConfig, Secret};
use crate::http::HttpClient;
pub use request::{Checked, check};

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
}

fn first_page() -> u32 {
    1
}

/// `{"requests": [...], "total", "pages", "page"}`.
#[derive(Debug, Deserialize)]
struct ListResponse {
    requests: Vec<serde_json::Value>,
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

    /// The JSON query: API requests from the watermark, oldest change first.
    fn query(state: &State) -> String {
        let mut criteria = vec![json!({"type": "source", "criteria": "api"})];
        if let Some(w) = &state.watermark {
            criteria.push(json!({
                "type": "lastStateChange",
                "criteria": {"from": w, "fromInclusive": true},
            }));
        }
        json!({"criteria": criteria, "sortBy": ["lastStateChange"]}).to_string()
    }
}

#[async_trait]
impl Source for Content {
    fn start_run(&self, stored: Option<Progress>) -> Progress {
        let (phase, mut state): (Phase, State) = super::read_stored(stored);
        state.page = 1;
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
            if let (Some(us), Some(seen)) = (changed, id)
                && newest.as_ref().is_none_or(|n| us >= n.0)
            {
                newest = Some(seen);
            }
        }
        let last_page = list.pages.is_some_and(|p| state.page >= p);
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
