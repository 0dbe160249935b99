//! The `calendar` kind's keys, and what a source of it is built with: its
//! client and its push-notification webhook.

use std::sync::Arc;

use axum::http::Method;

use super::Calendar;
use super::webhook::PushNotifications;
use crate::config::{KindKeys, Secret};
use crate::sources::{Build, Kind, Source, Webhook, WebhookRoute};

/// Defaults of the kind's keys (DESIGN.md §2).
mod defaults {
    pub const ENDPOINT: &str = "https://www.googleapis.com/calendar/v3";
    pub(crate) const MAX_RESULTS: u32 = 250;
    pub(crate) const SINGLE_EVENTS: bool = false;
    /// Incremental listings always include deletions and reject
    /// `showDeleted=false`, and both listings must use the same value.
    pub(crate) const SHOW_DELETED: bool = true;
}

/// A calendar's keys.
#[derive(Debug, Clone, PartialEq)]
pub struct CalendarConfig {
    pub calendar_id: String,
    pub auth: CalendarAuth,
    pub max_results: u32,
    pub single_events: bool,
    pub show_deleted: bool,
    /// Lower bound of the full listing only (never sent with a sync token).
    pub time_min: Option<String>,
    /// Expected `X-Goog-Channel-Token` of push notifications.
    pub channel_token: Option<Secret>,
}

/// How requests are authorised.
#[derive(Debug, Clone, PartialEq)]
pub enum CalendarAuth {
    AccessToken(Secret),
    OAuth(OAuthConfig),
}

/// An OAuth client whose refresh token yields access tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthConfig {
    pub token_url: url::Url,
    pub client_id: String,
    pub client_secret: Secret,
    pub refresh_token: Secret,
}

/// Google Calendar: the events of one calendar, and its push notifications.
pub struct CalendarKind;

impl Kind for CalendarKind {
    type Config = CalendarConfig;
    const NAME: &'static str = "calendar";
    const DEFAULT_ENDPOINT: &'static str = defaults::ENDPOINT;
    const WEBHOOK: Option<WebhookRoute> = Some(WebhookRoute {
        method: Method::POST,
        refused_body: None,
    });

    fn read(k: &mut KindKeys<'_>) -> Option<CalendarConfig> {
        let calendar_id = k.required_non_blank("calendar_id");
        let has_token = k.contains("access_token");
        let access_token = k.secret("access_token", false);
        let oauth = k.table("oauth", oauth);
        let auth = match (has_token, oauth) {
            (true, Some(_)) => {
                k.problem("oauth", "set either access_token or oauth, not both");
                None
            }
            (true, None) => access_token.flatten().map(CalendarAuth::AccessToken),
            (false, Some(o)) => o.map(CalendarAuth::OAuth),
            (false, None) => {
                // A mistyped `oauth` was already reported; don't pile on.
                if !k.has_problem("oauth") {
                    k.problem(
                        "access_token",
                        "missing: set access_token, or oauth = { token_url, client_id, client_secret, refresh_token }",
                    );
                }
                None
            }
        };
        let max_results = k
            .int_in("max_results", 1, 2500)
            .map_or(defaults::MAX_RESULTS, |n| n as u32);
        let single_events = k.bool("single_events").unwrap_or(defaults::SINGLE_EVENTS);
        let show_deleted = k.bool("show_deleted").unwrap_or(defaults::SHOW_DELETED);
        let time_min = k.rfc3339("time_min");
        let channel_token = k.secret("channel_token", false);
        Some(CalendarConfig {
            calendar_id: calendar_id?,
            auth: auth?,
            max_results,
            single_events,
            show_deleted,
            time_min,
            channel_token: channel_token?,
        })
    }

    fn secrets(cfg: &CalendarConfig) -> Vec<Secret> {
        let mut out = Vec::new();
        match &cfg.auth {
            CalendarAuth::AccessToken(t) => out.push(t.clone()),
            CalendarAuth::OAuth(o) => {
                out.push(o.client_secret.clone());
                out.push(o.refresh_token.clone());
            }
        }
        out.extend(cfg.channel_token.clone());
        out
    }

    fn build(cfg: &CalendarConfig, ctx: Build) -> Box<dyn Source> {
        Box::new(Calendar::new(ctx.http, ctx.endpoint, cfg.clone(), ctx.stop))
    }

    fn webhook(cfg: &CalendarConfig) -> Option<Arc<dyn Webhook>> {
        let token = cfg.channel_token.clone()?;
        Some(Arc::new(PushNotifications { token }))
    }
}

/// `oauth = { token_url, client_id, client_secret, refresh_token }`.
fn oauth(o: &mut KindKeys<'_>) -> Option<OAuthConfig> {
    let token_url = o.required_url("token_url");
    let client_id = o.required_non_blank("client_id");
    let client_secret = o.secret("client_secret", true);
    let refresh_token = o.secret("refresh_token", true);
    Some(OAuthConfig {
        token_url: token_url?,
        client_id: client_id?,
        client_secret: client_secret??,
        refresh_token: refresh_token??,
    })
}
