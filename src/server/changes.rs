//! `GET /v1/changes`: the change feed over HTTP, for the applications that
//! consume what synchro keeps. NDJSON export lines with `seq > since` in
//! seq order, the next position in `Synchro-Next-Since`; `wait=SECONDS`
//! holds an empty answer until something commits.
//!
//! Every call is authenticated before anything else: a tenant's
//! `read_token` reads that tenant's changes only, `[server]
//! admin_read_token` reads all. Tokens are compared in constant time, each
//! of them on every call, and a refusal never says whether a tenant or a
//! source exists.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::config::{Config, Secret};
use crate::model::SourceKey;
use crate::sources::{bearer_token, same_secret};
use crate::store::{ChangeScope, MAX_CHANGES_PER_PAGE, Store, StoreError};

/// The header that carries where the reader goes on from.
pub const NEXT_SINCE: HeaderName = HeaderName::from_static("synchro-next-since");

/// Rows per answer unless `limit` says otherwise.
const DEFAULT_LIMIT: i64 = 1_000;

/// The longest `wait` a reader may ask for: shorter than the idle timeout
/// of the usual proxies in front of a service (60 s).
const MAX_WAIT: Duration = Duration::from_secs(55);

/// How often a waiting reader looks again for commits it cannot be woken
/// by (another process: a replica, a `synchro sync`).
const WAIT_POLL: Duration = Duration::from_millis(500);

/// The feed's readers and the store they read, swapped as a whole when the
/// configuration is reloaded; and the shutdown that ends waiting readers.
#[derive(Clone, Default)]
pub struct ChangeFeed {
    readers: Arc<RwLock<Readers>>,
    closing: CancellationToken,
}

#[derive(Default)]
struct Readers {
    store: Option<Store>,
    admin: Option<Secret>,
    tenants: Vec<(String, Secret)>,
}

/// Who a token says the caller is.
#[derive(Debug, PartialEq, Eq)]
enum Reader {
    Admin,
    Tenant(String),
}

impl ChangeFeed {
    /// Points the feed at a (new) configuration's tokens and the store.
    pub fn install(&self, config: &Config, store: &Store) {
        let tenants = config
            .tenants
            .iter()
            .filter_map(|t| Some((t.id.clone(), t.read_token.clone()?)))
            .collect();
        let mut readers = self.readers.write().unwrap_or_else(|e| e.into_inner());
        *readers = Readers {
            store: Some(store.clone()),
            admin: config.server.admin_read_token.clone(),
            tenants,
        };
    }

    /// Shutdown began: waiting readers get their (empty) answer now.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// The store, and who `headers` authenticate, if anyone. Every token is
    /// compared, whichever matches.
    fn authenticate(&self, headers: &HeaderMap) -> (Option<Store>, Option<Reader>) {
        let readers = self.readers.read().unwrap_or_else(|e| e.into_inner());
        let Some(presented) = bearer_token(headers) else {
            return (readers.store.clone(), None);
        };
        let mut who = None;
        if let Some(admin) = &readers.admin
            && same_secret(admin, presented)
        {
            who = Some(Reader::Admin);
        }
        for (tenant, token) in &readers.tenants {
            if same_secret(token, presented) && who.is_none() {
                who = Some(Reader::Tenant(tenant.clone()));
            }
        }
        (readers.store.clone(), who)
    }
}

/// The query, as sent: every value is checked here, with a message that
/// names it; an unknown parameter (a typo) is refused, not ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Params {
    since: Option<String>,
    source: Option<String>,
    limit: Option<String>,
    wait: Option<String>,
}

/// A checked query.
struct Ask {
    since: i64,
    source: Option<SourceKey>,
    limit: i64,
    wait: Duration,
}

impl Ask {
    fn parse(p: Params) -> Result<Self, String> {
        let since = match p.since.as_deref() {
            None => {
                return Err("since is required: the last seq you read, or 0 for everything".into());
            }
            Some(s) => s
                .parse::<u64>()
                .ok()
                .and_then(|n| i64::try_from(n).ok())
                .ok_or("since must be a seq: a whole number, 0 or more")?,
        };
        let source = match p.source.as_deref() {
            None => None,
            Some(s) => Some(SourceKey::parse(s).ok_or("source must be TENANT/SOURCE_ID")?),
        };
        let limit = match p.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(s) => s
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_CHANGES_PER_PAGE).contains(n))
                .ok_or(format!(
                    "limit must be a whole number from 1 to {MAX_CHANGES_PER_PAGE}"
                ))?,
        };
        let wait = match p.wait.as_deref() {
            None => Duration::ZERO,
            Some(s) => s
                .parse::<f64>()
                .ok()
                .filter(|w| w.is_finite() && (0.0..=MAX_WAIT.as_secs_f64()).contains(w))
                .map(Duration::from_secs_f64)
                .ok_or(format!(
                    "wait must be a number of seconds from 0 to {}",
                    MAX_WAIT.as_secs()
                ))?,
        };
        Ok(Self {
            since,
            source,
            limit,
            wait,
        })
    }

    /// What `reader` may read of what it asked: `None` when it asked for
    /// another tenant's source.
    fn scope(&self, reader: &Reader) -> Option<ChangeScope> {
        match (reader, &self.source) {
            (Reader::Admin, None) => Some(ChangeScope::All),
            (Reader::Tenant(t), None) => Some(ChangeScope::Tenant(t.clone())),
            (Reader::Admin, Some(key)) => Some(ChangeScope::Sources(vec![key.clone()])),
            (Reader::Tenant(t), Some(key)) if *t == key.tenant => {
                Some(ChangeScope::Sources(vec![key.clone()]))
            }
            (Reader::Tenant(_), Some(_)) => None,
        }
    }
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response {
    let mut body = text.into();
    body.push('\n');
    (status, [(CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// `GET /v1/changes`.
pub(super) async fn changes(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let feed = &app.feed;
    let (store, reader) = feed.authenticate(&headers);
    let Some(reader) = reader else {
        let mut refused = plain(
            StatusCode::UNAUTHORIZED,
            "a read token is required: Authorization: Bearer <read_token>",
        );
        refused
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return refused;
    };
    let ask = match query
        .map_err(|e| e.body_text())
        .and_then(|Query(p)| Ask::parse(p))
    {
        Ok(ask) => ask,
        Err(why) => return plain(StatusCode::BAD_REQUEST, why),
    };
    let Some(scope) = ask.scope(&reader) else {
        return plain(
            StatusCode::FORBIDDEN,
            "this token reads its own tenant's changes only",
        );
    };
    let Some(store) = store else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "not ready");
    };
    let mut committed = store.records_committed();
    let deadline = tokio::time::Instant::now() + ask.wait;
    loop {
        committed.borrow_and_update();
        let page = match store.changes(ask.since, &scope, ask.limit).await {
            Ok(page) => page,
            Err(e @ StoreError::ResyncNeeded { .. }) => {
                return plain(StatusCode::GONE, e.to_string());
            }
            Err(e) => {
                tracing::warn!(error = %e, "change feed: the database could not be read");
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database could not be read; try again",
                );
            }
        };
        let now = tokio::time::Instant::now();
        if !page.rows.is_empty() || now >= deadline || feed.closing.is_cancelled() {
            return ndjson(page);
        }
        // Nothing yet: wait for a commit of this process, a poll for other
        // processes' commits, the deadline or the shutdown.
        let nap = WAIT_POLL.min(deadline - now);
        tokio::select! {
            _ = committed.changed() => {}
            _ = tokio::time::sleep(nap) => {}
            _ = feed.closing.cancelled() => {}
        }
    }
}

fn ndjson(page: crate::store::Changes) -> Response {
    let mut body = Vec::with_capacity(page.rows.len() * 512);
    for row in &page.rows {
        // A line that cannot be encoded fails the answer: skipping it
        // would move the reader past a change it never got.
        if let Err(e) = serde_json::to_writer(&mut body, row) {
            tracing::error!(error = %e, seq = row.seq, "change feed: a stored change could not be encoded");
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "a stored change could not be encoded",
            );
        }
        body.push(b'\n');
    }
    let mut response = (
        StatusCode::OK,
        [(CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response();
    response
        .headers_mut()
        .insert(NEXT_SINCE, HeaderValue::from(page.next_since));
    response
}
