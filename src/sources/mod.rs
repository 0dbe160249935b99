//! Upstream kinds, one folder each: its config section, its client and
//! wire types, its webhook and write-back if it has them, its upstream's
//! quirks. Each turns "what was stored last time" into the next page of
//! records; none of them knows SQL. The engine owns the loop, the
//! transaction and the bookkeeping; [`Kinds`] lists the kinds.

mod kind;
pub mod payload;

/// Declares each shipped kind's module and registers its [`Kind`] in
/// [`Kinds::builtin`], in this order (the order `check` lists them in).
macro_rules! shipped_kinds {
    ($($module:ident :: $kind:ident),* $(,)?) => {
        $(pub mod $module;)*

        impl Kinds {
            /// The shipped kinds.
            pub fn builtin() -> Self {
                Self::empty()$(.register::<$module::$kind>())*
            }
        }
    };
}

// Adding a kind: its folder, and one line here.
shipped_kinds! {
    demarches::DemarchesKind,
    calendar::CalendarKind,
    content::ContentKind,
}

pub use kind::{
    Build, Delivery, Kind, Kinds, Outgoing, Reply, Webhook, WebhookAction, WebhookRoute, WriteBack,
};
pub(crate) use kind::{build, webhook, write_back};

use async_trait::async_trait;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::config::Secret;

use crate::http::HttpError;
use crate::model::{Page, Phase, Progress};

/// Why fetching a page failed. Nothing of the page is stored.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The upstream answered, but with an error of its own (e.g. GraphQL `errors`).
    #[error("upstream {url} reported an error: {message}")]
    Upstream { url: String, message: String },
    /// The body parsed as JSON but lacks what the protocol promises.
    #[error("malformed response from {url}: {reason}")]
    Malformed { url: String, reason: String },
    /// The credentials could not be obtained (e.g. a revoked OAuth refresh
    /// token). The message names the endpoint, never a token.
    #[error("{0}")]
    Auth(String),
    /// Stored progress that this kind cannot read (e.g. after a manual edit).
    #[error("stored progress is unreadable: {0}")]
    BadProgress(#[source] serde_json::Error),
}

impl SourceError {
    /// Credentials failures are reported with a fixed wording operators can grep.
    pub fn is_credentials(&self) -> bool {
        matches!(
            self,
            SourceError::Http(HttpError::Credentials { .. }) | SourceError::Auth(_)
        )
    }
}

/// The kind's state out of the stored progress. Unreadable progress (a
/// manual edit, an older format) starts a full listing again rather than
/// failing every run: the upsert rule makes the refetch harmless.
pub(crate) fn read_stored<S: serde::de::DeserializeOwned + Default>(
    stored: Option<Progress>,
) -> (Phase, S) {
    match stored {
        Some(p) => match serde_json::from_value::<S>(p.state) {
            Ok(state) => (p.phase, state),
            Err(e) => {
                tracing::warn!(error = %e, "stored progress unreadable; starting a full listing");
                (Phase::Full, S::default())
            }
        },
        None => (Phase::Full, S::default()),
    }
}

/// The kind's state out of the progress a run is at.
pub(crate) fn read_state<S: serde::de::DeserializeOwned>(
    progress: &Progress,
) -> Result<S, SourceError> {
    serde_json::from_value(progress.state.clone()).map_err(SourceError::BadProgress)
}

/// The kind's state as stored progress.
pub(crate) fn state_json<S: Serialize>(state: &S) -> Result<serde_json::Value, SourceError> {
    serde_json::to_value(state).map_err(SourceError::BadProgress)
}

/// A response that parsed but lacks what the protocol promises.
pub(crate) fn malformed(url: &str, reason: &str) -> SourceError {
    SourceError::Malformed {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

/// One upstream kind, bound to one configured source.
#[async_trait]
pub trait Source: Send + Sync {
    /// Called once when a run starts, with what was stored; returns the
    /// progress the run starts from (e.g. to begin a reconciliation pass).
    fn start_run(&self, stored: Option<Progress>) -> Progress;

    /// Fetches the page that follows `progress`.
    async fn fetch(&self, progress: &Progress) -> Result<Page, SourceError>;
}

/// Whether a presented token is the configured one, compared in constant
/// time (webhooks).
pub fn same_secret(expected: &Secret, presented: &[u8]) -> bool {
    bool::from(expected.expose().as_bytes().ct_eq(presented))
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is
/// case-insensitive (RFC 7235: `bearer`, `BEARER` are the same scheme), the
/// token is compared as sent.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(b"bearer".len())?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use crate::http::HttpClient;
    use crate::redact::Redactor;

    #[tokio::test]
    async fn a_built_source_registers_its_secrets_for_redaction() {
        // A source added by a reload: the redactor was built without it.
        let toml = "[[tenants]]\nid = \"t\"\n[[tenants.sources]]\nid = \"a\"\nkind = \"content\"\n\
                    schedule = \"every 1m\"\nendpoint = \"https://api.contentor.com/v1\"\n\
                    token = \"token-added-by-a-reload\"\n";
        let kinds = super::Kinds::builtin();
        let config =
            match crate::config::load_str(toml, Path::new("t.toml"), &HashMap::new(), &kinds) {
                Ok(c) => c,
                Err(e) => panic!("{}", e.report()),
            };
        let redactor = Redactor::default();
        let http = HttpClient::new(&config.http, redactor.clone()).expect("client");
        let stop = tokio_util::sync::CancellationToken::new();
        for cfg in config.sources() {
            assert!(super::build(cfg, &http, &stop).is_ok());
        }
        assert_eq!(
            redactor.scrub("Bearer token-added-by-a-reload"),
            "Bearer [redacted]"
        );
    }
}
