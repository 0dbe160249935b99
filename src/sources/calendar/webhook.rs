//! Google push notifications (`POST /webhooks/calendar/{tenant}/{source}`):
//! a change on the calendar starts a sync of the source at once. The
//! `X-Goog-Channel-Token` header carries the configured `channel_token`;
//! the body is not read.

use axum::http::{HeaderMap, StatusCode};

use crate::config::Secret;
use crate::model::SourceKey;
use crate::sources::{Reply, Webhook, WebhookAction, same_secret};

/// The push notifications of one calendar.
pub(super) struct PushNotifications {
    pub(super) token: Secret,
}

impl Webhook for PushNotifications {
    fn accepts(&self, headers: &HeaderMap) -> bool {
        headers
            .get("x-goog-channel-token")
            .is_some_and(|v| same_secret(&self.token, v.as_bytes()))
    }

    fn reads_body(&self) -> bool {
        false
    }

    fn handle(&self, key: &SourceKey, headers: &HeaderMap, _body: &[u8]) -> WebhookAction {
        let state = headers
            .get("x-goog-resource-state")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        tracing::info!(
            tenant = %crate::escape::Escaped(&key.tenant),
            source = %crate::escape::Escaped(&key.source),
            resource_state = %crate::escape::Escaped(state),
            "push notification: sync requested"
        );
        WebhookAction::Sync(Reply::empty(StatusCode::OK))
    }
}
