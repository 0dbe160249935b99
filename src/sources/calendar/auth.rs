//! Access tokens for Google Calendar: a static one from the config, or one
//! obtained with the OAuth2 refresh-token grant, refreshed before it expires
//! and once more when the API answers 401. Never an interactive flow.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::config::{CalendarAuth, OAuthConfig};
use crate::config::{Secret, SecretRef};
use crate::http::HttpClient;
use crate::redact::TokenSlot;
use crate::sources::SourceError;

/// How long before its expiry a token is replaced (at most half its life).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The life assumed when the token endpoint gives none, or one that makes no
/// sense (negative, not a number): Google's access tokens live an hour, and
/// a 401 refreshes the token anyway.
const DEFAULT_LIFE: Duration = Duration::from_secs(3600);

/// The longest life believed: an `expires_in` of years (or of 2^64 s) is
/// an upstream number that must not keep a token, nor overflow a clock.
const MAX_LIFE: Duration = Duration::from_secs(24 * 3600);

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
    /// Read leniently by [`token_life`]: a bad value must not fail the grant.
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
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
        let life = token_life(grant.expires_in.as_ref());
        let margin = REFRESH_MARGIN.min(life / 2);
        tracing::debug!(expires_in = life.as_secs(), "OAuth access token refreshed");
        let token = Secret::new(grant.access_token, SecretRef::Literal);
        self.tokens.hold(&token);
        Ok(Cached {
            token,
            // `life` is bounded, but an Instant must never panic.
            refresh_at: Instant::now()
                .checked_add(life - margin)
                .unwrap_or_else(Instant::now),
        })
    }
}

/// The life of a granted token from its `expires_in`: seconds as a number
/// (or a numeric string, as some servers send), at most [`MAX_LIFE`];
/// missing, negative or unreadable is [`DEFAULT_LIFE`].
fn token_life(expires_in: Option<&serde_json::Value>) -> Duration {
    use serde_json::Value;
    let secs = match expires_in {
        Some(Value::Number(n)) => n.as_u64().map(|s| s as f64).or_else(|| n.as_f64()),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match secs {
        Some(s) if s.is_finite() && s >= 0.0 => {
            Duration::try_from_secs_f64(s.min(MAX_LIFE.as_secs_f64())).unwrap_or(DEFAULT_LIFE)
        }
        _ => DEFAULT_LIFE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn life(v: serde_json::Value) -> Duration {
        token_life(Some(&v))
    }

    #[test]
    fn expires_in_is_bounded_whatever_the_upstream_says() {
        assert_eq!(life(json!(3599)), Duration::from_secs(3599));
        assert_eq!(life(json!("120")), Duration::from_secs(120));
        assert_eq!(life(json!(0)), Duration::ZERO);
        assert_eq!(life(json!(u64::MAX)), MAX_LIFE);
        assert_eq!(life(json!(1e300)), MAX_LIFE);
        assert_eq!(life(json!("18446744073709551615")), MAX_LIFE);
        for garbage in [
            json!(-1),
            json!(i64::MIN),
            json!(-0.5),
            json!("soon"),
            json!(null),
            json!([1]),
            json!(true),
        ] {
            assert_eq!(life(garbage.clone()), DEFAULT_LIFE, "{garbage}");
        }
        assert_eq!(token_life(None), DEFAULT_LIFE);
    }

    #[test]
    fn a_grant_with_an_absurd_expires_in_still_parses() {
        for body in [
            r#"{"access_token":"t","expires_in":18446744073709551615}"#,
            r#"{"access_token":"t","expires_in":-3600}"#,
            r#"{"access_token":"t","expires_in":"later"}"#,
        ] {
            let g: Grant = serde_json::from_str(body).expect(body);
            assert!(token_life(g.expires_in.as_ref()) <= MAX_LIFE);
        }
    }
}
