//! What a source kind is to the rest of the daemon: one [`Kind`] impl in its
//! own folder, listed once in a [`Kinds`] registry. The registry is what the
//! config loader reads kind sections with; each configured source then
//! carries its kind's settings, through which the scheduler builds its
//! [`Source`], the server finds its [`Webhook`] and the reporter its
//! [`WriteBack`]. None of them names a kind.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode};
use tokio_util::sync::CancellationToken;

use super::Source;
use crate::config::{KindCatalog, KindKeys, KindSection, KindSettings, Secret, SourceConfig};
use crate::http::{HttpClient, HttpError, Response};
use crate::model::{Page, SourceKey};

/// One source kind: its config section, its client, its optional webhook
/// and write-back. Implemented by a unit type in the kind's folder.
pub trait Kind: Send + Sync + 'static {
    /// The kind's keys, as read by [`Kind::read`].
    type Config: Clone + PartialEq + fmt::Debug + Send + Sync + 'static;
    /// `kind = "..."` in the config file, and the `kind` of metrics and
    /// export lines.
    const NAME: &'static str;
    /// The endpoint of a source that sets none.
    const DEFAULT_ENDPOINT: &'static str;
    /// How the upstream calls the daemon, if it does
    /// (`{method} /webhooks/{NAME}/{tenant}/{source}`).
    const WEBHOOK: Option<WebhookRoute> = None;

    /// Reads the kind's keys from the source's table.
    fn read(keys: &mut KindKeys<'_>) -> Option<Self::Config>;

    /// The secrets among the keys, for redaction.
    fn secrets(cfg: &Self::Config) -> Vec<Secret>;

    /// The source of one configured entry.
    fn build(cfg: &Self::Config, ctx: Build) -> Box<dyn Source>;

    /// The webhook of a configured entry, if it accepts calls.
    fn webhook(_cfg: &Self::Config) -> Option<Arc<dyn Webhook>> {
        None
    }

    /// What the kind writes back to its upstream from the outbox, if
    /// anything.
    fn write_back(_cfg: &Self::Config, _endpoint: &url::Url) -> Option<Arc<dyn WriteBack>> {
        None
    }
}

/// What building a source gets besides its settings.
pub struct Build {
    /// The shared client, counting its calls for this source.
    pub http: HttpClient,
    /// `endpoint`, or the kind's default.
    pub endpoint: url::Url,
    /// Fires at shutdown: waits (back-off, token refresh) end early.
    pub stop: CancellationToken,
}

/// The route of a kind's webhook.
#[derive(Debug, Clone)]
pub struct WebhookRoute {
    /// The method the upstream calls with; any other answers 405.
    pub method: Method,
    /// What a call that is not accepted (unknown source, wrong token) gets
    /// with its 401: the same whether the source exists or not.
    pub refused_body: Option<&'static str>,
}

/// The webhook of one configured source.
pub trait Webhook: Send + Sync {
    /// Whether the call carries this source's secret, from its headers
    /// alone (before a byte of the body is read), compared in constant time.
    fn accepts(&self, headers: &HeaderMap) -> bool;

    /// Whether [`Webhook::handle`] needs the body.
    fn reads_body(&self) -> bool;

    /// What to do with an accepted call.
    fn handle(&self, key: &SourceKey, headers: &HeaderMap, body: &[u8]) -> WebhookAction;
}

/// What an accepted webhook call asks for.
#[derive(Debug)]
pub enum WebhookAction {
    /// Start a sync of the source at once (coalesced with a running one);
    /// answers `reply`, or the refusal if the source cannot be started.
    Sync(Reply),
    /// Commit `page` through the engine (records and reports, progress
    /// untouched), then answer `reply`; 503 if the commit fails.
    Commit { page: Page, reply: Reply },
    /// Answer at once; nothing is stored.
    Reply(Reply),
}

/// A webhook's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    /// A text body (`text/plain`); `None` for an empty answer.
    pub body: Option<String>,
}

impl Reply {
    /// `status` with a text body.
    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            body: Some(body.into()),
        }
    }

    /// `status` alone.
    pub fn empty(status: StatusCode) -> Self {
        Self { status, body: None }
    }
}

/// One report of the outbox, as a kind sends it.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub record_id: &'a str,
    pub state: &'a str,
    pub message: Option<&'a str>,
}

/// How an answered write-back went.
#[derive(Debug)]
pub enum Delivery {
    Sent,
    /// Worth trying again later.
    Retry(String),
    /// The upstream will never take it.
    Refused(String),
}

/// What a kind writes back to its upstream from the outbox (Contentor's
/// import states). The reporter owns the outbox, the claims and the
/// back-off; the kind owns the request and what its answer means.
#[async_trait::async_trait]
pub trait WriteBack: Send + Sync {
    /// The URL whose host budget reports count against.
    fn url(&self) -> &url::Url;

    /// Sends one report through `http` (one attempt: the outbox retries).
    async fn send(
        &self,
        http: &HttpClient,
        report: Outgoing<'_>,
        cancel: &CancellationToken,
    ) -> Result<Response, HttpError>;

    /// What an answer means.
    fn judge(&self, answer: Result<Response, HttpError>) -> Delivery;
}

/// The kinds the daemon knows, by name. [`Kinds::builtin`] lists the
/// shipped kinds (`shipped_kinds!` in `sources/mod.rs`); tests register
/// more with [`Kinds::register`].
#[derive(Clone)]
pub struct Kinds {
    kinds: Vec<Arc<dyn Erased>>,
}

impl Kinds {
    /// No kind at all.
    pub(crate) fn empty() -> Self {
        Self { kinds: Vec::new() }
    }

    /// Adds kind `K`; a kind of the same name is replaced.
    pub fn register<K: Kind>(mut self) -> Self {
        self.kinds.retain(|k| k.name() != K::NAME);
        self.kinds
            .push(Arc::new(Entry::<K>(std::marker::PhantomData)));
        self
    }

    fn get(&self, name: &str) -> Option<&dyn Erased> {
        self.kinds
            .iter()
            .find(|k| k.name() == name)
            .map(|k| k.as_ref())
    }

    /// The webhook route of kind `name`, if it has one.
    pub fn webhook_route(&self, name: &str) -> Option<WebhookRoute> {
        self.get(name)?.webhook_route()
    }
}

impl Default for Kinds {
    fn default() -> Self {
        Self::builtin()
    }
}

impl KindCatalog for Kinds {
    fn names(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|k| k.name()).collect()
    }

    fn default_endpoint(&self, kind: &str) -> Option<&'static str> {
        self.get(kind).map(|k| k.default_endpoint())
    }

    fn read(&self, kind: &str, keys: &mut KindKeys<'_>) -> Option<KindSettings> {
        self.get(kind)?.read(keys)
    }
}

/// A registered kind, its type erased.
trait Erased: Send + Sync {
    fn name(&self) -> &'static str;
    fn default_endpoint(&self) -> &'static str;
    fn webhook_route(&self) -> Option<WebhookRoute>;
    fn read(&self, keys: &mut KindKeys<'_>) -> Option<KindSettings>;
}

struct Entry<K>(std::marker::PhantomData<fn() -> K>);

impl<K: Kind> Erased for Entry<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn default_endpoint(&self) -> &'static str {
        K::DEFAULT_ENDPOINT
    }

    fn webhook_route(&self) -> Option<WebhookRoute> {
        K::WEBHOOK
    }

    fn read(&self, keys: &mut KindKeys<'_>) -> Option<KindSettings> {
        let cfg = K::read(keys)?;
        Some(KindSettings::new(Configured(Box::new(Bound::<K> { cfg }))))
    }
}

/// The one type every kind's settings are kept as, so that a
/// [`KindSettings`] leads back to its kind's code without knowing the kind.
struct Configured(Box<dyn Capabilities>);

/// A kind's settings with its code.
trait Capabilities: Send + Sync + fmt::Debug {
    fn kind(&self) -> &'static str;
    fn secrets(&self) -> Vec<Secret>;
    fn same_as(&self, other: &dyn Any) -> bool;
    fn settings(&self) -> &dyn Any;
    fn build(&self, ctx: Build) -> Box<dyn Source>;
    fn webhook(&self) -> Option<Arc<dyn Webhook>>;
    fn write_back(&self, endpoint: &url::Url) -> Option<Arc<dyn WriteBack>>;
}

struct Bound<K: Kind> {
    cfg: K::Config,
}

impl<K: Kind> fmt::Debug for Bound<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.cfg.fmt(f)
    }
}

impl<K: Kind> Capabilities for Bound<K> {
    fn kind(&self) -> &'static str {
        K::NAME
    }

    fn secrets(&self) -> Vec<Secret> {
        K::secrets(&self.cfg)
    }

    fn same_as(&self, other: &dyn Any) -> bool {
        other
            .downcast_ref::<K::Config>()
            .is_some_and(|o| *o == self.cfg)
    }

    fn settings(&self) -> &dyn Any {
        &self.cfg
    }

    fn build(&self, ctx: Build) -> Box<dyn Source> {
        K::build(&self.cfg, ctx)
    }

    fn webhook(&self) -> Option<Arc<dyn Webhook>> {
        K::webhook(&self.cfg)
    }

    fn write_back(&self, endpoint: &url::Url) -> Option<Arc<dyn WriteBack>> {
        K::write_back(&self.cfg, endpoint)
    }
}

impl fmt::Debug for Configured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl KindSection for Configured {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }

    fn secrets(&self) -> Vec<Secret> {
        self.0.secrets()
    }

    fn same_as(&self, other: &dyn KindSection) -> bool {
        self.0.same_as(other.settings())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn settings(&self) -> &dyn Any {
        self.0.settings()
    }
}

/// The kind code of a configured source. `None` only for settings not
/// read through a [`Kinds`] registry (nothing else builds them).
fn capabilities(cfg: &SourceConfig) -> Option<&dyn Capabilities> {
    cfg.kind
        .section()
        .as_any()
        .downcast_ref::<Configured>()
        .map(|c| c.0.as_ref())
}

/// Builds the source of a configured entry.
pub(crate) fn build(
    cfg: &SourceConfig,
    http: &HttpClient,
    stop: &CancellationToken,
) -> Result<Box<dyn Source>, String> {
    let kind = capabilities(cfg)
        .ok_or_else(|| format!("{}: kind {} has no connector", cfg.key(), cfg.kind_name()))?;
    let http = http.for_source(&cfg.key());
    // A source added by a reload brings secrets the redactor was not built with.
    http.redactor().register_all(cfg.secrets());
    Ok(kind.build(Build {
        http,
        endpoint: cfg.endpoint.clone(),
        stop: stop.clone(),
    }))
}

/// The webhook of a configured source, if it accepts calls.
pub(crate) fn webhook(cfg: &SourceConfig) -> Option<Arc<dyn Webhook>> {
    capabilities(cfg)?.webhook()
}

/// What a configured source writes back to its upstream, if anything.
pub(crate) fn write_back(cfg: &SourceConfig) -> Option<Arc<dyn WriteBack>> {
    capabilities(cfg)?.write_back(&cfg.endpoint)
}
