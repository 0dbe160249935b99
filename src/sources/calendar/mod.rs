//! Google Calendar (`events.list` with sync tokens).
//!
//! A run is either a *full listing* (first sync, `reset`, or a resync after
//! the sync token was refused) or an *incremental* one (`syncToken`). Both
//! follow `nextPageToken` page by page, storing the page token with each
//! page, so a crash resumes where it stopped; the `nextSyncToken` of the last
//! page is stored with that page's records.
//!
//! A full listing marks every record it returns with its generation and, on
//! its last page, removes the source's records it did not return — in the
//! same transaction as the new sync token. So a 410 Gone ends with exactly
//! what a wipe and a resync would give, while readers keep seeing the old
//! records until then.

mod auth;
mod config;
mod quirks;
mod webhook;
mod wire;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::payload;
use super::{Source, SourceError, malformed, state_json};
use crate::http::{HttpClient, Response};
use crate::model::{Listing, Page, Phase, Progress, Record, Tombstone};
use auth::Auth;
pub use config::{CalendarAuth, CalendarConfig, CalendarKind, OAuthConfig};
use wire::{ErrorBody, EventKey, EventsPage};

/// What this kind stores as progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
struct State {
    /// `nextSyncToken` of the last completed listing.
    sync_token: Option<String>,
    /// `nextPageToken` of the listing in progress.
    page_token: Option<String>,
    /// Generation of the full listing in progress, if one is.
    full: Option<i64>,
}

/// A configured calendar.
pub struct Calendar {
    http: HttpClient,
    url: url::Url,
    cfg: CalendarConfig,
    auth: Auth,
    stop: CancellationToken,
}

/// What one request produced.
enum Answer {
    Page(EventsPage, String),
    /// 400 or 410: a token (sync or page) may be the cause.
    Refused {
        status: u16,
        why: String,
        /// 410, or 400 "Invalid sync token value": the sync token is gone.
        token_gone: bool,
        url: String,
    },
}

impl Calendar {
    pub fn new(
        http: HttpClient,
        endpoint: url::Url,
        cfg: CalendarConfig,
        stop: CancellationToken,
    ) -> Self {
        let http = http.with_quirks(std::sync::Arc::new(quirks::GoogleQuirks));
        let auth = Auth::new(&cfg.auth, &http, &stop);
        Self {
            url: events_url(&endpoint, &cfg.calendar_id),
            http,
            cfg,
            auth,
            stop,
        }
    }

    /// The query of one request. `syncToken` is never combined with
    /// `timeMin` or any other filter the API refuses next to it.
    fn query(&self, state: &State) -> Vec<(&'static str, String)> {
        let mut q = vec![
            ("maxResults", self.cfg.max_results.to_string()),
            ("showDeleted", self.cfg.show_deleted.to_string()),
            ("singleEvents", self.cfg.single_events.to_string()),
        ];
        match (&state.full, &state.sync_token) {
            (None, Some(token)) => q.push(("syncToken", token.clone())),
            _ => {
                if let Some(t) = &self.cfg.time_min {
                    q.push(("timeMin", t.clone()));
                }
            }
        }
        if let Some(p) = &state.page_token {
            q.push(("pageToken", p.clone()));
        }
        q
    }

    /// Sends one request; on 401 with OAuth, refreshes the token and tries
    /// once more.
    async fn request(&self, state: &State) -> Result<Answer, SourceError> {
        let query = self.query(state);
        let mut refreshed = false;
        loop {
            let token = self.auth.bearer().await?;
            let (resp, attempts) = self
                .http
                .send(
                    |c| {
                        c.get(self.url.clone())
                            .query(&query)
                            .bearer_auth(token.expose())
                    },
                    &self.stop,
                )
                .await?;
            if resp.status == StatusCode::UNAUTHORIZED && !refreshed && self.auth.invalidate().await
            {
                tracing::info!("access token refused; refreshing it once");
                refreshed = true;
                continue;
            }
            return self.answer(resp, attempts);
        }
    }

    fn answer(&self, resp: Response, attempts: u32) -> Result<Answer, SourceError> {
        if resp.status == StatusCode::GONE || resp.status == StatusCode::BAD_REQUEST {
            let body = ErrorBody::parse(&resp.body);
            return Ok(Answer::Refused {
                status: resp.status.as_u16(),
                token_gone: resp.status == StatusCode::GONE || body.invalid_sync_token(),
                // Logged below as it is: scrubbed (a 400 may echo the
                // bearer token) and bounded here.
                why: self.http.redactor().excerpt(body.summary().as_bytes()),
                url: resp.url,
            });
        }
        let resp = resp.error_for_status(attempts)?;
        let page: EventsPage = resp.json()?;
        Ok(Answer::Page(page, resp.url))
    }

    /// Turns one answered page into records, tombstones and the next state.
    fn page(
        &self,
        mut state: State,
        events: EventsPage,
        url: &str,
        phase: Phase,
    ) -> Result<Page, SourceError> {
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for item in events.items {
            let (key, spaced) = EventKey::read(item.get())
                .map_err(|e| malformed(url, &format!("an event is not an object: {e}")))?;
            let id = key
                .id
                .filter(|s| !s.is_empty())
                .ok_or_else(|| malformed(url, "an event lacks `id`"))?;
            let updated = key
                .updated
                .and_then(|u| crate::time::parse_us(&u).map(|us| (u, us)));
            let data = payload::compact_scanned(item, spaced);
            if key.status.as_deref() == Some("cancelled") {
                // Often only `id` is present; cancelled instances of a
                // recurring event carry more and are kept as they are.
                deletes.push(Tombstone {
                    id,
                    deleted_at: updated.map(|(u, _)| u),
                    data,
                });
            } else {
                let (updated_at, updated_us) =
                    updated.ok_or_else(|| malformed(url, "an event lacks a valid `updated`"))?;
                upserts.push(Record {
                    id,
                    updated_at,
                    updated_us,
                    data,
                });
            }
        }
        let generation = state.full;
        let (done, phase) = match (events.next_page_token, events.next_sync_token) {
            (Some(next), _) => {
                if state.page_token.as_ref() == Some(&next) {
                    return Err(malformed(url, "the same nextPageToken came back"));
                }
                state.page_token = Some(next);
                (false, phase)
            }
            (None, Some(sync)) => {
                state.page_token = None;
                state.sync_token = Some(sync);
                state.full = None;
                (true, Phase::Incremental)
            }
            (None, None) => {
                return Err(malformed(
                    url,
                    "a page has neither nextPageToken nor nextSyncToken",
                ));
            }
        };
        Ok(Page {
            upserts,
            deletes,
            next_progress: Progress {
                phase,
                state: state_json(&state)?,
            },
            done,
            listing: generation.map(|generation| Listing {
                generation,
                complete: done,
            }),
            reports: Vec::new(),
        })
    }
}

#[async_trait]
impl Source for Calendar {
    fn start_run(&self, stored: Option<Progress>) -> Progress {
        let (phase, mut state): (Phase, State) = super::read_stored(stored);
        if state.sync_token.is_none() && state.full.is_none() {
            state.page_token = None;
            state.full = Some(crate::time::now_us());
        }
        let phase = if state.full.is_some() {
            Phase::Full
        } else {
            phase
        };
        Progress {
            phase,
            state: serde_json::to_value(&state).unwrap_or_default(),
        }
    }

    async fn fetch(&self, progress: &Progress) -> Result<Page, SourceError> {
        let mut state: State = super::read_state(progress)?;
        let mut restarted = false;
        loop {
            let (status, why, token_gone, url) = match self.request(&state).await? {
                Answer::Page(events, url) => {
                    return self.page(state, events, &url, progress.phase);
                }
                Answer::Refused {
                    status,
                    why,
                    token_gone,
                    url,
                } => (status, why, token_gone, url),
            };
            if state.full.is_none() && token_gone {
                tracing::warn!(status, reason = %why, "sync token refused; starting a full clear-and-resync");
                return restart();
            }
            if state.page_token.is_some() && !restarted {
                // A stored page token may have expired while we were down:
                // list again from the first page (upserts are idempotent).
                tracing::warn!(status, reason = %why, "page token refused; restarting this listing");
                state.page_token = None;
                restarted = true;
                continue;
            }
            return Err(SourceError::Upstream {
                url,
                message: format!("HTTP {status}: {why}"),
            });
        }
    }
}

/// A page that stores nothing but the start of a new full listing: the old
/// token is dropped in a committed step, so a crash resumes the resync.
fn restart() -> Result<Page, SourceError> {
    let state = State {
        sync_token: None,
        page_token: None,
        full: Some(crate::time::now_us()),
    };
    Ok(Page {
        upserts: Vec::new(),
        deletes: Vec::new(),
        next_progress: Progress {
            phase: Phase::Full,
            state: state_json(&state)?,
        },
        done: false,
        listing: None,
        reports: Vec::new(),
    })
}

/// `{endpoint}/calendars/{calendarId}/events`, the id encoded as one segment.
fn events_url(endpoint: &url::Url, calendar_id: &str) -> url::Url {
    let mut url = endpoint.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .push("calendars")
            .push(calendar_id)
            .push("events");
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calendar_id_is_one_encoded_segment() {
        let e = url::Url::parse("https://www.googleapis.com/calendar/v3/").expect("url");
        let u = events_url(&e, "team/ops@example.com");
        assert_eq!(
            u.as_str(),
            "https://www.googleapis.com/calendar/v3/calendars/team%2Fops@example.com/events"
        );
    }
}
