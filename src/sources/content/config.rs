//! The `content` kind's keys, and what a source of it is built with: its
//! client, its callback webhook and its import-state write-back.

use std::sync::Arc;

use axum::http::Method;

use super::Content;
use super::report::ImportStates;
use super::webhook::Callbacks;
use crate::config::{KindKeys, Secret};
use crate::sources::{Build, Kind, Source, Webhook, WebhookRoute, WriteBack};

/// Defaults of the kind's keys (DESIGN.md §2).
mod defaults {
    pub const ENDPOINT: &str = "https://api.contentor.com/v1";
    /// Reporting import states back is what the content kind is for; it can
    /// be turned off for a read-only copy.
    pub(crate) const REPORT_IMPORT_STATE: bool = true;
}

/// A Contentor account's keys.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentConfig {
    pub token: Secret,
    pub report_import_state: bool,
    pub webhook_token: Option<Secret>,
}

/// Contentor: content requests, their callbacks and import-state reports.
pub struct ContentKind;

impl Kind for ContentKind {
    type Config = ContentConfig;
    const NAME: &'static str = "content";
    const DEFAULT_ENDPOINT: &'static str = defaults::ENDPOINT;
    const WEBHOOK: Option<WebhookRoute> = Some(WebhookRoute {
        method: Method::PUT,
        refused_body: Some("unauthorized\n"),
    });

    fn read(k: &mut KindKeys<'_>) -> Option<ContentConfig> {
        let token = k.secret("token", true);
        let report_import_state = k
            .bool("report_import_state")
            .unwrap_or(defaults::REPORT_IMPORT_STATE);
        let webhook_token = k.secret("webhook_token", false);
        Some(ContentConfig {
            token: token??,
            report_import_state,
            webhook_token: webhook_token?,
        })
    }

    fn secrets(cfg: &ContentConfig) -> Vec<Secret> {
        let mut out = vec![cfg.token.clone()];
        out.extend(cfg.webhook_token.clone());
        out
    }

    fn build(cfg: &ContentConfig, ctx: Build) -> Box<dyn Source> {
        Box::new(Content::new(ctx.http, ctx.endpoint, cfg.clone(), ctx.stop))
    }

    fn webhook(cfg: &ContentConfig) -> Option<Arc<dyn Webhook>> {
        let token = cfg.webhook_token.clone()?;
        Some(Arc::new(Callbacks {
            token,
            report: cfg.report_import_state,
        }))
    }

    fn write_back(cfg: &ContentConfig, endpoint: &url::Url) -> Option<Arc<dyn WriteBack>> {
        cfg.report_import_state.then(|| {
            Arc::new(ImportStates {
                base: endpoint.clone(),
                token: cfg.token.clone(),
            }) as Arc<dyn WriteBack>
        })
    }
}
