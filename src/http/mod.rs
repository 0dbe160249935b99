//! The one HTTP client every source shares: timeouts, retries with
//! exponential back-off and jitter, `Retry-After` / `RateLimit-Reset`,
//! per-host rate and concurrency limits, and errors that never carry a token.

mod limit;
mod retry;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::config::HttpConfig;
use crate::model::SourceKey;
use crate::redact::Redactor;
pub use limit::BudgetShare;
pub(crate) use limit::origin;
use limit::{HostLimiter, HostPermit, LimitError};
use retry::{backoff_delay, server_delay};

/// Why a request did not produce a usable response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// 401/403: the token is wrong, expired or lacks rights. Not retried.
    #[error("credentials rejected (HTTP {status} from {url})")]
    Credentials { status: u16, url: String },
    /// A status that is not success, after any retries it deserved.
    #[error("HTTP {status} from {url} after {attempts} attempt(s): {body}")]
    Status {
        status: u16,
        url: String,
        attempts: u32,
        body: String,
    },
    /// Connect, TLS, timeout or connection reset, after retries.
    #[error("request to {url} failed after {attempts} attempt(s): {message}")]
    Transport {
        url: String,
        attempts: u32,
        message: String,
    },
    /// The upstream asked (`Retry-After`, `RateLimit-Reset`) for a longer
    /// wait than `http.max_backoff` allows: the run stops rather than retry
    /// early or sleep that long; the next scheduled run tries again.
    #[error(
        "HTTP {status} from {url}: the upstream asks to wait {wait_secs} s before retrying, \
         longer than http.max_backoff ({max:?}); giving up until the next run"
    )]
    WaitTooLong {
        status: u16,
        url: String,
        wait_secs: u64,
        max: Duration,
    },
    /// The upstream redirected to another origin, or to plain http outside
    /// loopback (see [`redirect_refusal`]). Not retried: it would answer the
    /// same.
    #[error("refused redirect from {url} to {target}: {reason}")]
    Redirect {
        url: String,
        /// Scheme, host and port only: a path or query may carry secrets.
        target: String,
        reason: String,
    },
    /// The body is not the JSON the protocol promises.
    #[error("malformed JSON from {url}: {reason}")]
    Decode { url: String, reason: String },
    /// Shutdown was requested while waiting; nothing was lost.
    #[error("cancelled by shutdown")]
    Cancelled,
    /// The client could not be built (bad TLS roots, ...).
    #[error("HTTP client setup failed: {0}")]
    Setup(String),
}

/// A response whose status the caller decides about (everything that was not
/// retried away). The body is read in full, bounded by [`MAX_BODY`].
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The URL without query string, safe to show.
    pub url: String,
    /// The client's redactor, for excerpts of the body.
    redactor: Redactor,
    /// The upstream said "slow down" in its own way (see [`Quirks`]): not a
    /// credentials failure whatever the status.
    rate_limited: bool,
}

/// Bodies larger than this are refused rather than buffered.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Redirects followed for one request at most (reqwest's default).
const MAX_REDIRECTS: usize = 10;

/// The most a body buffer is sized to up front from `Content-Length`.
const PRESIZE_LIMIT: usize = 8 * 1024 * 1024;

impl Response {
    /// Parses the body as JSON; the error names the URL and the position.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::Decode {
            url: self.url.clone(),
            reason: e.to_string(),
        })
    }

    /// Maps 401/403 to [`HttpError::Credentials`] and any other non-2xx
    /// status to [`HttpError::Status`].
    pub fn error_for_status(self, attempts: u32) -> Result<Self, HttpError> {
        let s = self.status;
        if s.is_success() {
            return Ok(self);
        }
        if (s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN) && !self.rate_limited {
            return Err(HttpError::Credentials {
                status: s.as_u16(),
                url: self.url,
            });
        }
        Err(HttpError::Status {
            status: s.as_u16(),
            body: self.excerpt(),
            url: self.url,
            attempts,
        })
    }

    /// A short, printable excerpt of the body for error messages, scrubbed
    /// of every credential the process holds before it is cut (see
    /// [`Redactor::excerpt`]): upstreams echo `Authorization` headers.
    pub fn excerpt(&self) -> String {
        self.redactor.excerpt(&self.body)
    }
}

/// Shared client. Cheap to clone (reqwest pools connections inside), and
/// clones share one per-host budget: build it once per process.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: reqwest::Client,
    limits: Arc<HostLimiter>,
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    /// The source this handle works for, for metrics.
    source: Option<std::sync::Arc<SourceKey>>,
    /// Shared with the engine: what error messages are scrubbed of.
    redactor: Redactor,
    /// How this handle's upstream departs from the generic rules.
    quirks: Option<Arc<dyn Quirks>>,
}

/// How an upstream departs from the generic HTTP rules, declared by its
/// kind (see [`HttpClient::with_quirks`]).
pub trait Quirks: Send + Sync + std::fmt::Debug {
    /// Whether this answer asks to slow down although its status does not
    /// say so (Google: 403 `rateLimitExceeded`): retried with back-off like
    /// a 429, never taken for rejected credentials.
    fn rate_limited(&self, status: StatusCode, body: &[u8]) -> bool;
}

impl HttpClient {
    /// The same client (same pool), counting its calls for `key`.
    pub fn for_source(&self, key: &SourceKey) -> Self {
        Self {
            source: Some(std::sync::Arc::new(key.clone())),
            ..self.clone()
        }
    }

    /// The same client, reading its upstream's answers with `quirks`.
    pub fn with_quirks(&self, quirks: Arc<dyn Quirks>) -> Self {
        Self {
            quirks: Some(quirks),
            ..self.clone()
        }
    }

    /// The same client making one attempt per [`HttpClient::send`], for
    /// requests retried by their own durable queue (the outbox).
    pub fn single_attempt(&self) -> Self {
        Self {
            max_retries: 0,
            ..self.clone()
        }
    }

    /// One client for the whole process, so that every source's requests to
    /// a host are counted against that host's single budget. `redactor` is
    /// the engine's: the tokens sources obtain through this client are
    /// registered with it, and error bodies are scrubbed by it.
    pub fn new(cfg: &HttpConfig, redactor: Redactor) -> Result<Self, HttpError> {
        Self::shared(cfg, redactor, BudgetShare::default())
    }

    /// [`HttpClient::new`] for a daemon that shares its hosts' budgets with
    /// the other daemons `share` counts (replicas).
    pub fn shared(
        cfg: &HttpConfig,
        redactor: Redactor,
        share: BudgetShare,
    ) -> Result<Self, HttpError> {
        let inner = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.connect_timeout)
            .user_agent(concat!("synchro/", env!("CARGO_PKG_VERSION")))
            .https_only(false)
            .redirect(reqwest::redirect::Policy::custom(follow_or_refuse))
            .build()
            .map_err(|e| HttpError::Setup(e.to_string()))?;
        Ok(Self {
            inner,
            limits: Arc::new(HostLimiter::shared(cfg, share)),
            max_retries: cfg.max_retries,
            initial_backoff: cfg.initial_backoff,
            max_backoff: cfg.max_backoff,
            source: None,
            redactor,
            quirks: None,
        })
    }

    /// What error messages are scrubbed of; sources register the tokens they
    /// obtain at run time with it (see [`Redactor::slot`]).
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// How many requests `url`'s host may have in flight at once.
    pub fn host_concurrency(&self, url: &url::Url) -> usize {
        self.limits.concurrency(url)
    }

    /// Waits for `url`'s host budget (an in-flight slot, then a turn in its
    /// rate schedule). Keep the permit until the response is read.
    async fn permit(
        &self,
        url: &url::Url,
        cancel: &CancellationToken,
    ) -> Result<HostPermit, HttpError> {
        self.limits.acquire(url, cancel).await.map_err(|e| match e {
            LimitError::Cancelled => HttpError::Cancelled,
            LimitError::NoHost => HttpError::Setup(format!("{}: {e}", safe_url(url))),
        })
    }

    /// Sends the request built by `build` (called again for each attempt),
    /// retrying 429, 5xx and transport errors up to `max_retries` times.
    /// Every attempt waits for its host's budget first (see [`HostLimiter`]);
    /// the back-off between attempts does not hold an in-flight slot.
    /// Returns the final response whatever its status, with the number of
    /// attempts made; callers decide what a 4xx means for them.
    pub async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
        cancel: &CancellationToken,
    ) -> Result<(Response, u32), HttpError> {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let req = build(&self.inner)
                .build()
                .map_err(|e| HttpError::Setup(e.without_url().to_string()))?;
            let url = safe_url(req.url());
            let host = host_of(req.url());
            // Waiting for the host's budget gives way to a shutdown; a
            // request in flight is let finish (bounded by the timeout): a
            // shutdown ends the run after the current page, not inside it.
            let permit = self.permit(req.url(), cancel).await?;
            let mut outcome = self.execute(req, &url).await;
            drop(permit);
            if let (Ok(resp), Some(quirks)) = (&mut outcome, &self.quirks) {
                resp.rate_limited = quirks.rate_limited(resp.status, &resp.body);
            }
            let status = match &outcome {
                Ok(resp) => Some(resp.status.as_u16()),
                Err(_) => None,
            };
            crate::metrics::http_call(&host, self.source.as_deref(), status);
            let retry_in = match &outcome {
                Ok(resp) if is_retryable_status(resp.status) || resp.rate_limited => {
                    let server = server_delay(&resp.headers, std::time::SystemTime::now());
                    tracing::warn!(url = %url, status = resp.status.as_u16(), attempt, "upstream asked to retry");
                    Some(server)
                }
                Ok(_) => None,
                Err(HttpError::Transport { message, .. }) => {
                    tracing::warn!(url = %url, attempt, error = %message, "transport error");
                    Some(None)
                }
                Err(_) => None,
            };
            match retry_in {
                Some(server) if attempt <= self.max_retries => {
                    let delay = match server {
                        // Retrying before the upstream's time is what rate
                        // limiters punish, and sleeping for hours holds a
                        // sync slot: the run stops, the next one retries.
                        Some(wait) if wait > self.max_backoff => {
                            return Err(HttpError::WaitTooLong {
                                status: status.unwrap_or_default(),
                                url,
                                wait_secs: wait.as_secs(),
                                max: self.max_backoff,
                            });
                        }
                        Some(wait) => wait,
                        None => backoff_delay(attempt, self.initial_backoff, self.max_backoff),
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => return Err(HttpError::Cancelled),
                    }
                }
                _ => {
                    return match outcome {
                        Ok(resp) => Ok((resp, attempt)),
                        Err(HttpError::Transport { url, message, .. }) => {
                            Err(HttpError::Transport {
                                url,
                                attempts: attempt,
                                message,
                            })
                        }
                        Err(e) => Err(e),
                    };
                }
            }
        }
    }

    async fn execute(&self, req: reqwest::Request, url: &str) -> Result<Response, HttpError> {
        let transport = |e: reqwest::Error| match refused_redirect(&e) {
            Some(r) => HttpError::Redirect {
                url: url.to_string(),
                target: r.target.clone(),
                reason: r.reason.to_string(),
            },
            None => HttpError::Transport {
                url: url.to_string(),
                attempts: 0,
                message: describe(&e),
            },
        };
        let mut resp = self.inner.execute(req).await.map_err(transport)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if resp.content_length().is_some_and(|n| n as usize > MAX_BODY) {
            return Err(HttpError::Decode {
                url: url.to_string(),
                reason: format!("body larger than {MAX_BODY} bytes"),
            });
        }
        // Sized from Content-Length when given (up to 8 MiB: a larger claim
        // grows as it arrives): a page of 100 KB is read without a series
        // of reallocations and copies.
        let mut body = bytes::BytesMut::with_capacity(
            resp.content_length()
                .map_or(0, |n| (n as usize).min(PRESIZE_LIMIT)),
        );
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(HttpError::Decode {
                    url: url.to_string(),
                    reason: format!("body larger than {MAX_BODY} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response {
            status,
            headers,
            body: body.freeze(),
            url: url.to_string(),
            redactor: self.redactor.clone(),
            rate_limited: false,
        })
    }
}

fn is_retryable_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS
        || s == StatusCode::INTERNAL_SERVER_ERROR
        || s == StatusCode::BAD_GATEWAY
        || s == StatusCode::SERVICE_UNAVAILABLE
        || s == StatusCode::GATEWAY_TIMEOUT
}

/// `host:port`, the unit of per-host accounting.
fn host_of(u: &url::Url) -> String {
    match (u.host_str(), u.port_or_known_default()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

/// Scheme, host, port and path only: query strings may carry tokens.
fn safe_url(u: &url::Url) -> String {
    let mut u = u.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

/// A redirect the client refused (see [`redirect_refusal`]).
#[derive(Debug, thiserror::Error)]
#[error("refused redirect to {target}: {reason}")]
struct RefusedRedirect {
    /// The target's origin (scheme, host, port): never its path or query.
    pub target: String,
    /// Which rule refused it ("another host", "another scheme"...).
    pub reason: &'static str,
}

/// Why a redirect from the request's first URL `from` to `to`, after
/// `hops` URLs already requested, is refused; `None` to follow it.
///
/// Only a redirect on the same origin (scheme, host and port) is followed,
/// and plain http only to loopback: a source's records come from the host
/// its configuration names, never from wherever that host points.
fn redirect_refusal(from: &url::Url, to: &url::Url, hops: usize) -> Option<&'static str> {
    if hops > MAX_REDIRECTS {
        return Some("too many redirects");
    }
    if to.scheme() != from.scheme() {
        return Some("another scheme");
    }
    if to.host() != from.host() || to.port_or_known_default() != from.port_or_known_default() {
        return Some("another host");
    }
    let loopback = match to.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    };
    if to.scheme() != "https" && !loopback {
        return Some("plain http outside loopback");
    }
    None
}

/// The client's redirect policy (see [`redirect_refusal`]).
fn follow_or_refuse(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    // The first of the previous URLs is the request's own.
    let refusal = match attempt.previous().first() {
        Some(from) => redirect_refusal(from, attempt.url(), attempt.previous().len()),
        None => Some("no original URL"),
    };
    match refusal {
        None => attempt.follow(),
        Some(reason) => {
            let target = attempt.url().origin().ascii_serialization();
            attempt.error(RefusedRedirect { target, reason })
        }
    }
}

/// The refusal behind `e`, if it is one.
fn refused_redirect(e: &reqwest::Error) -> Option<&RefusedRedirect> {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<RefusedRedirect>() {
            return Some(r);
        }
        src = s.source();
    }
    None
}

/// reqwest's Display includes the URL with its query; build our own text.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the body failed"
    } else if e.is_request() {
        "request failed"
    } else {
        "error"
    };
    let mut msg = kind.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}
