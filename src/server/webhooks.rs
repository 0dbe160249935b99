//! Push notifications: an upstream tells us something changed, we start a
//! sync of that source at once (coalesced with one already running). The
//! shared secret is compared in constant time; anything that does not match
//! gets 401 and triggers nothing, without saying whether the source exists.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

use super::AppState;
use super::body::read_limited;
use super::escape::Escaped;
use crate::config::{Config, Secret, SourceKey, SourceKindConfig};
use crate::scheduler::Triggers;
use crate::sources::Page;
use crate::sources::content::{Checked, check};
use crate::store::Store;

/// Which sources accept which webhook, and how to start them. Swapped as a
/// whole when the configuration is reloaded.
#[derive(Clone, Default)]
pub struct Webhooks(Arc<RwLock<Targets>>);

#[derive(Default)]
struct Targets {
    calendar: HashMap<SourceKey, Secret>,
    content: HashMap<SourceKey, ContentTarget>,
    triggers: Triggers,
    store: Option<Store>,
}

#[derive(Clone)]
struct ContentTarget {
    token: Secret,
    report: bool,
}

impl Webhooks {
    /// Points the webhooks at a (new) configuration and scheduler.
    pub fn install(&self, config: &Config, triggers: Triggers, store: &Store) {
        let calendar = config
            .sources()
            .filter_map(|s| match &s.kind {
                SourceKindConfig::Calendar(c) => c.channel_token.clone().map(|t| (s.key(), t)),
                _ => None,
            })
            .collect();
        let content = config
            .sources()
            .filter_map(|s| match &s.kind {
                SourceKindConfig::Content(c) => c.webhook_token.clone().map(|token| {
                    (
                        s.key(),
                        ContentTarget {
                            token,
                            report: c.report_import_state,
                        },
                    )
                }),
                _ => None,
            })
            .collect();
        let mut targets = self.0.write().unwrap_or_else(|e| e.into_inner());
        *targets = Targets {
            calendar,
            content,
            triggers,
            store: Some(store.clone()),
        };
    }

    /// Stops triggering anything (shutdown).
    pub fn clear(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Targets::default();
    }

    fn calendar_trigger(&self, key: &SourceKey, presented: Option<&[u8]>) -> bool {
        let targets = self.0.read().unwrap_or_else(|e| e.into_inner());
        let Some(expected) = targets.calendar.get(key) else {
            return false;
        };
        let Some(presented) = presented else {
            return false;
        };
        if !same_secret(expected, presented) {
            return false;
        }
        targets.triggers.now(key)
    }

    /// The store and reporting flag for a content callback whose bearer
    /// token matches; `None` for anything else.
    fn content_target(&self, key: &SourceKey, presented: Option<&[u8]>) -> Option<(Store, bool)> {
        let targets = self.0.read().unwrap_or_else(|e| e.into_inner());
        let target = targets.content.get(key)?;
        let store = targets.store.clone()?;
        same_secret(&target.token, presented?).then_some((store, target.report))
    }
}

/// Constant-time comparison of a presented token with the configured one.
fn same_secret(expected: &Secret, presented: &[u8]) -> bool {
    bool::from(expected.expose().as_bytes().ct_eq(presented))
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is
/// case-insensitive (RFC 7235: `bearer`, `BEARER` are the same scheme), the
/// token is compared as sent.
fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(b"bearer".len())?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// `PUT /webhooks/content/{tenant}/{source}` (Contentor callback): stored
/// through the same upsert and outbox path as a polled request, 200 only
/// after the commit (Contentor retries anything else). The token is checked
/// from the headers before a byte of the body is read.
pub(super) async fn content(
    State(app): State<AppState>,
    Path((tenant, source)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, String) {
    let key = SourceKey::new(tenant, source);
    let (tenant, source) = (Escaped(&key.tenant), Escaped(&key.source));
    let Some((store, report)) = app.hooks.content_target(&key, bearer_token(&headers)) else {
        tracing::warn!(%tenant, %source, "content callback refused: unknown source or wrong token");
        return (StatusCode::UNAUTHORIZED, "unauthorized\n".into());
    };
    let body = match read_limited(&headers, body, app.body_limits).await {
        Ok(body) => body,
        Err(e) => {
            tracing::warn!(%tenant, %source, error = %e, "content callback not read");
            return (e.status(), format!("{e}\n"));
        }
    };
    let bad = |reason: String| {
        tracing::warn!(%tenant, %source, reason = %Escaped(&reason), "content callback rejected");
        (StatusCode::BAD_REQUEST, format!("{reason}\n"))
    };
    let Ok(serde_json::Value::Object(mut msg)) = serde_json::from_slice(&body) else {
        return bad("the body is not a JSON object".into());
    };
    match msg.get("type").and_then(|t| t.as_str()) {
        Some("content-request") => {}
        Some(other) => {
            tracing::info!(%tenant, %source, r#type = %Escaped(other), "content callback of another type ignored");
            return (StatusCode::OK, "ignored\n".into());
        }
        None => return bad("`type` is missing".into()),
    }
    let Some(request) = msg.remove("request").filter(|r| r.is_object()) else {
        return bad("`request` is missing or not an object".into());
    };
    let request = match crate::sources::payload::from_value(&request) {
        Ok(raw) => raw,
        Err(e) => return bad(format!("`request` cannot be encoded: {e}")),
    };
    let mut page = Page::default();
    let outcome = match check(request, report) {
        Checked::Store(record, owed) => {
            page.upserts.push(record);
            page.reports.extend(owed);
            Ok(())
        }
        Checked::Reject {
            id, reason, report, ..
        } => {
            page.reports.extend(report);
            Err(format!("request {id} cannot be stored: {reason}"))
        }
        Checked::Garbage(reason) => Err(reason),
    };
    if let Err(e) = store.commit_records(&key, "content", page).await {
        tracing::error!(%tenant, %source, error = %e, "content callback could not be stored");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not stored, try again\n".into(),
        );
    }
    match outcome {
        Ok(()) => {
            tracing::info!(%tenant, %source, "content callback stored");
            (StatusCode::OK, "stored\n".into())
        }
        Err(reason) => bad(reason),
    }
}

/// `POST /webhooks/calendar/{tenant}/{source}` (Google push notification).
pub(super) async fn calendar(
    State(app): State<AppState>,
    Path((tenant, source)): Path<(String, String)>,
    headers: HeaderMap,
) -> StatusCode {
    let key = SourceKey::new(tenant, source);
    let (tenant, source) = (Escaped(&key.tenant), Escaped(&key.source));
    let token = headers.get("x-goog-channel-token").map(|v| v.as_bytes());
    if app.hooks.calendar_trigger(&key, token) {
        let state = headers
            .get("x-goog-resource-state")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        tracing::info!(%tenant, %source, resource_state = %Escaped(state), "push notification: sync requested");
        StatusCode::OK
    } else {
        tracing::warn!(%tenant, %source, "push notification refused: unknown source or wrong channel token");
        StatusCode::UNAUTHORIZED
    }
}
