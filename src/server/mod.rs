//! The daemon's HTTP surface: liveness and readiness for orchestrators,
//! metrics, the change feed (`changes.rs`), and the webhooks, routed to
//! the kind that owns the source: calls that start a sync at once, and
//! calls that carry records to store.
//! It faces clients it cannot trust, so its listener has limits
//! (`listener.rs`), webhook tokens are checked before a body is read
//! (`body.rs`), and text from a URL is escaped before it is logged
//! (`crate::escape`).

mod body;
mod changes;
#[cfg(test)]
mod changes_tests;
mod listener;
#[cfg(test)]
mod tests;
mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, HeaderName};
use axum::routing::{any, get};
use metrics_exporter_prometheus::PrometheusHandle;

use body::BodyLimits;
pub use changes::{ChangeFeed, NEXT_SINCE};
pub use listener::{Limits, serve};
pub use webhooks::Webhooks;

/// Shared readiness: true once migrations ran and the scheduler started,
/// false again as soon as shutdown begins, and false while the database
/// refuses writes (a full disk): commits, and so webhooks, would fail.
#[derive(Clone, Default)]
pub struct Readiness(
    Arc<AtomicBool>,
    Arc<std::sync::OnceLock<crate::store::Store>>,
);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Makes readiness follow whether `store` takes writes.
    pub fn watch_store(&self, store: crate::store::Store) {
        let _ = self.1.set(store);
    }

    /// Ready, and the database answers and takes writes (Postgres: a ping
    /// within 2 s; on either backend a write is tried while the last
    /// commits failed).
    async fn check(&self) -> Result<(), &'static str> {
        if !self.get() {
            return Err("not ready\n");
        }
        match self.1.get() {
            Some(store) if store.still_failing().await => Err(
                "not ready: the database is unreachable or its writes are failing (disk full?)\n",
            ),
            _ => Ok(()),
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    ready: Readiness,
    hooks: Webhooks,
    feed: ChangeFeed,
    metrics: Option<PrometheusHandle>,
    body_limits: BodyLimits,
}

/// Builds the router. Without a metrics handle, `/metrics` answers 404.
/// Webhook bodies are read within `limits` (size and time).
pub fn router(
    ready: Readiness,
    hooks: Webhooks,
    feed: ChangeFeed,
    metrics: Option<PrometheusHandle>,
    limits: &Limits,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .route("/webhooks/{kind}/{tenant}/{source}", any(webhooks::call))
        .route("/v1/changes", get(changes::changes))
        .with_state(AppState {
            ready,
            hooks,
            feed,
            metrics,
            body_limits: BodyLimits {
                max_bytes: limits.max_body_bytes,
                timeout: limits.body_timeout,
            },
        })
}

async fn readyz(State(app): State<AppState>) -> (StatusCode, &'static str) {
    match app.ready.check().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn render_metrics(
    State(app): State<AppState>,
) -> (StatusCode, [(HeaderName, &'static str); 1], String) {
    let ctype = [(CONTENT_TYPE, "text/plain; version=0.0.4")];
    match &app.metrics {
        Some(h) => (StatusCode::OK, ctype, h.render()),
        None => (StatusCode::NOT_FOUND, ctype, "metrics are off\n".into()),
    }
}
