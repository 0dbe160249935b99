//! Contentor callbacks (`PUT /webhooks/content/{tenant}/{source}`): each
//! carries one content request, stored through the same checks, upsert and
//! outbox rules as a polled one. `Authorization: Bearer <webhook_token>` is
//! checked from the headers before a byte of the body is read.

use axum::http::{HeaderMap, StatusCode};

use super::request::{Checked, check};
use crate::config::Secret;
use crate::escape::Escaped;
use crate::model::{Page, SourceKey};
use crate::sources::{Reply, Webhook, WebhookAction, bearer_token, same_secret};

/// The callbacks of one Contentor account.
pub(super) struct Callbacks {
    pub(super) token: Secret,
    /// Whether import states are reported (`report_import_state`).
    pub(super) report: bool,
}

impl Webhook for Callbacks {
    fn accepts(&self, headers: &HeaderMap) -> bool {
        bearer_token(headers).is_some_and(|t| same_secret(&self.token, t))
    }

    fn reads_body(&self) -> bool {
        true
    }

    fn handle(&self, key: &SourceKey, _headers: &HeaderMap, body: &[u8]) -> WebhookAction {
        let (tenant, source) = (Escaped(&key.tenant), Escaped(&key.source));
        let bad = |reason: String| {
            tracing::warn!(%tenant, %source, reason = %Escaped(&reason), "content callback rejected");
            Reply::text(StatusCode::BAD_REQUEST, format!("{reason}\n"))
        };
        let Ok(serde_json::Value::Object(mut msg)) = serde_json::from_slice(body) else {
            return WebhookAction::Reply(bad("the body is not a JSON object".into()));
        };
        match msg.get("type").and_then(|t| t.as_str()) {
            Some("content-request") => {}
            Some(other) => {
                tracing::info!(%tenant, %source, r#type = %Escaped(other), "content callback of another type ignored");
                return WebhookAction::Reply(Reply::text(StatusCode::OK, "ignored\n"));
            }
            None => return WebhookAction::Reply(bad("`type` is missing".into())),
        }
        let Some(request) = msg.remove("request").filter(|r| r.is_object()) else {
            return WebhookAction::Reply(bad("`request` is missing or not an object".into()));
        };
        let request = match crate::sources::payload::from_value(&request) {
            Ok(raw) => raw,
            Err(e) => {
                return WebhookAction::Reply(bad(format!("`request` cannot be encoded: {e}")));
            }
        };
        let mut page = Page::default();
        // What is owed is committed whatever the verdict: a rejected
        // request that completed is still reported as failed.
        let reply = match check(request, self.report) {
            Checked::Store(record, owed) => {
                page.upserts.push(record);
                page.reports.extend(owed);
                Reply::text(StatusCode::OK, "stored\n")
            }
            Checked::Reject {
                id, reason, report, ..
            } => {
                page.reports.extend(report);
                bad(format!("request {id} cannot be stored: {reason}"))
            }
            Checked::Garbage(reason) => bad(reason),
        };
        WebhookAction::Commit { page, reply }
    }
}
