//! Webhooks: `{method} /webhooks/{kind}/{tenant}/{source}`, routed to the
//! webhook of the kind that owns the source (see `sources::Webhook`). A
//! call either starts a sync of that source at once (coalesced with one
//! already running) or carries records, committed through the engine. The
//! kind checks its secret from the headers, in constant time, before a byte
//! of the body is read; anything that does not match gets 401 and triggers
//! nothing, without saying whether the source exists.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::ALLOW;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::body::read_limited;
use crate::config::Config;
use crate::engine::Engine;
use crate::escape::Escaped;
use crate::model::SourceKey;
use crate::scheduler::Triggers;
use crate::sources::{Kinds, Reply, Webhook, WebhookAction, WebhookRoute};

/// Which sources accept which webhook, and how to start them. The routes
/// (one per kind that has a webhook) are fixed when the server starts; the
/// targets are swapped as a whole when the configuration is reloaded.
#[derive(Clone)]
pub struct Webhooks {
    kinds: Kinds,
    targets: Arc<RwLock<Targets>>,
}

#[derive(Default)]
struct Targets {
    hooks: HashMap<SourceKey, (&'static str, Arc<dyn Webhook>)>,
    triggers: Triggers,
    engine: Option<Engine>,
}

/// What an accepted call is handled with.
struct Target {
    hook: Arc<dyn Webhook>,
    triggers: Triggers,
    engine: Engine,
}

impl Default for Webhooks {
    /// The webhooks of the shipped kinds.
    fn default() -> Self {
        Self::new(Kinds::builtin())
    }
}

impl Webhooks {
    /// Routes the webhooks of `kinds`; no source accepts calls until
    /// [`Webhooks::install`].
    pub fn new(kinds: Kinds) -> Self {
        Self {
            kinds,
            targets: Arc::default(),
        }
    }

    /// Points the webhooks at a (new) configuration, scheduler and engine.
    pub fn install(&self, config: &Config, triggers: Triggers, engine: &Engine) {
        let hooks = config
            .sources()
            .filter_map(|s| Some((s.key(), (s.kind_name(), crate::sources::webhook(s)?))))
            .collect();
        let mut targets = self.targets.write().unwrap_or_else(|e| e.into_inner());
        *targets = Targets {
            hooks,
            triggers,
            engine: Some(engine.clone()),
        };
    }

    /// Stops triggering anything (shutdown).
    pub fn clear(&self) {
        *self.targets.write().unwrap_or_else(|e| e.into_inner()) = Targets::default();
    }

    /// The webhook of source `key`, if it is of kind `kind` and accepts
    /// calls.
    fn target(&self, kind: &str, key: &SourceKey) -> Option<Target> {
        let targets = self.targets.read().unwrap_or_else(|e| e.into_inner());
        let (of_kind, hook) = targets.hooks.get(key)?;
        if *of_kind != kind {
            return None;
        }
        Some(Target {
            hook: hook.clone(),
            triggers: targets.triggers.clone(),
            engine: targets.engine.clone()?,
        })
    }
}

/// Answers `reply`.
fn respond(reply: Reply) -> Response {
    match reply.body {
        Some(body) => (reply.status, body).into_response(),
        None => reply.status.into_response(),
    }
}

/// `{method} /webhooks/{kind}/{tenant}/{source}`: 404 for a kind without
/// a webhook, 405 for another method than the kind's, 401 unless the
/// source accepts the call, then what the kind's webhook decides. A commit
/// answers 200 only once it is durable (upstreams retry anything else).
pub(super) async fn call(
    State(app): State<AppState>,
    method: Method,
    Path((kind, tenant, source)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(route) = app.hooks.kinds.webhook_route(&kind) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if method != route.method {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(ALLOW, route.method.as_str().to_string())],
        )
            .into_response();
    }
    let key = SourceKey::new(tenant, source);
    let (tenant, source, kind) = (Escaped(&key.tenant), Escaped(&key.source), Escaped(&kind));
    let refused = |route: &WebhookRoute| {
        tracing::warn!(%kind, %tenant, %source, "webhook call refused: unknown source or wrong token");
        respond(Reply {
            status: StatusCode::UNAUTHORIZED,
            body: route.refused_body.map(str::to_string),
        })
    };
    let Some(target) = app
        .hooks
        .target(kind.0, &key)
        .filter(|t| t.hook.accepts(&headers))
    else {
        return refused(&route);
    };
    let body = if target.hook.reads_body() {
        match read_limited(&headers, body, app.body_limits).await {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(%kind, %tenant, %source, error = %e, "webhook call not read");
                return (e.status(), format!("{e}\n")).into_response();
            }
        }
    } else {
        Default::default()
    };
    match target.hook.handle(&key, &headers, &body) {
        WebhookAction::Reply(reply) => respond(reply),
        WebhookAction::Sync(reply) => {
            if target.triggers.now(&key) {
                respond(reply)
            } else {
                refused(&route)
            }
        }
        WebhookAction::Commit { page, reply } => {
            match target.engine.commit_outside_run(&key, kind.0, page).await {
                Ok(_) => {
                    tracing::info!(%kind, %tenant, %source, "webhook call stored");
                    respond(reply)
                }
                Err(e) => {
                    tracing::error!(%kind, %tenant, %source, error = %e, "webhook call could not be stored");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not stored, try again\n".to_string(),
                    )
                        .into_response()
                }
            }
        }
    }
}
