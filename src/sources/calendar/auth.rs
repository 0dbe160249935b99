//! Access tokens for Google Calendar: a static one from the config, or one
//! obtained with the OAuth2 refresh-token grant, refreshed before it expires
//! and once more when the API answers 401. Never an interactive flow.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::{CalendarAuth, OAuthConfig, Secret, SecretRef};
use crate::engine::TokenSlot;
use crate::http::HttpClient;
use crate::sources::SourceError;

/// How long before its expiry a token is replaced (at most half its life).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Where a source's bearer token comes from.
pub enum Auth {
    Static(Secret),
    OAuth(Box<OAuth>),
}

/// The refresh-token grant and the token it last produced.
pub struct OAuth {
    http: HttpClient,
    cfg: OAuthConfig,
    stop: CancellationToken,
    cached: Mutex<Option<Cached>>,
    /// Registers each access token with the redactor as soon as it is
    /// obtained: an upstream error may echo it back.
    tokens: TokenSlot,
}

struct Cached {
    token: Secret,
    refresh_at: Instant,
}

#[derive(serde::Deserialize)]
struct Grant {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(serde::Deserialize, Default)]
struct GrantError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl Auth {
    pub fn new(cfg: &CalendarAuth, http: &HttpClient, stop: &CancellationToken) -> Self {
        match cfg {
            CalendarAuth::AccessToken(t) => Auth::Static(t.clone()),
            CalendarAuth::OAuth(o) => Auth::OAuth(Box::new(OAuth {
                http: http.clone(),
                cfg: o.clone(),
                stop: stop.clone(),
                cached: Mutex::new(None),
                tokens: http.redactor().slot(),
            })),
        }
    }

    /// The token to send now.
    pub async fn bearer(&self) -> Result<Secret, SourceError> {
        match self {
            Auth::Static(t) => Ok(t.clone()),
            Auth::OAuth(o) => o.bearer().await,
        }
    }

    /// After a 401: forget the cached token. Returns whether a new one can
    /// be obtained (false for a static token: the request fails).
    pub async fn invalidate(&self) -> bool {
        match self {
            Auth::Static(_) => false,
            Auth::OAuth(o) => {
                *o.cached.lock().await = None;
                true
            }
        }
    }
}

impl OAuth {
    async fn bearer(&self) -> Result<Secret, SourceError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let fresh = self.refresh().await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    async fn refresh(&self) -> Result<Cached, SourceError> {
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", self.cfg.client_id.as_str()),
            ("client_secret", self.cfg.client_secret.expose()),
            ("refresh_token", self.cfg.refresh_token.expose()),
        ];
        let (resp, attempts) = self
            .http
            .send(
                |c| c.post(self.cfg.token_url.clone()).form(&form),
                &self.stop,
            )
            .await?;
        if resp.status.is_client_error() {
            let e: GrantError = serde_json::from_slice(&resp.body).unwrap_or_default();
            let redactor = self.http.redactor();
            let detail = if e.error.is_empty() {
                resp.excerpt()
            } else if e.error_description.is_empty() {
                redactor.excerpt(e.error.as_bytes())
            } else {
                redactor.excerpt(format!("{} ({})", e.error, e.error_description).as_bytes())
            };
            return Err(SourceError::Auth(format!(
                "OAuth token endpoint {} refused the refresh token: HTTP {}: {detail}",
                resp.url,
                resp.status.as_u16()
            )));
        }
        let resp = resp.error_for_status(attempts)?;
        let grant: Grant = resp.json()?;
        let life = Duration::from_secs(grant.expires_in.unwrap_or(3600));
        let margin = REFRESH_MARGIN.min(life / 2);
        tracing::debug!(expires_in = life.as_secs(), "OAuth access token refreshed");
        let token = Secret::new(grant.access_token, SecretRef::Literal);
        self.tokens.hold(&token);
        Ok(Cached {
            token,
            refresh_at: Instant::now() + life - margin,
        })
    }
}
