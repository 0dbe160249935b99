//! Simulated OAuth2 token endpoint (refresh-token grant only), with Google's
//! error bodies, and the access tokens it hands out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};

/// Client id of the simulated OAuth client.
pub const DEFAULT_OAUTH_CLIENT_ID: &str = "sim-client.apps.googleusercontent.com";
/// Secret of the simulated OAuth client.
pub const DEFAULT_OAUTH_CLIENT_SECRET: &str = "sim-client-secret";
/// Refresh token accepted from the start.
pub const DEFAULT_REFRESH_TOKEN: &str = "sim-refresh-token";
/// Scope reported in grants.
const SCOPE: &str = "https://www.googleapis.com/auth/calendar.readonly";

/// An access token handed out by a grant.
#[derive(Clone, Debug)]
struct Access {
    refresh_token: String,
    expires_at: Instant,
    expired: bool,
}

/// A failed grant: HTTP status and Google's `{"error","error_description"}`.
pub type GrantError = (StatusCode, Value);

/// Clients, refresh tokens and access tokens.
#[derive(Debug)]
pub struct OAuth {
    /// Refresh tokens of the default client: `true` once revoked.
    refresh_tokens: HashMap<String, bool>,
    access: HashMap<String, Access>,
    ttl: Duration,
    issued: u64,
}

impl Default for OAuth {
    fn default() -> Self {
        Self::new()
    }
}

fn error(status: StatusCode, error: &str, description: &str) -> GrantError {
    (
        status,
        json!({ "error": error, "error_description": description }),
    )
}

impl OAuth {
    /// The default client with [`DEFAULT_REFRESH_TOKEN`]; grants last 1 h.
    pub fn new() -> Self {
        let mut refresh_tokens = HashMap::new();
        refresh_tokens.insert(DEFAULT_REFRESH_TOKEN.to_string(), false);
        OAuth {
            refresh_tokens,
            access: HashMap::new(),
            ttl: Duration::from_secs(3600),
            issued: 0,
        }
    }

    /// Accepts `refresh_token` for the default client.
    pub fn add_refresh_token(&mut self, refresh_token: &str) {
        self.refresh_tokens.insert(refresh_token.to_string(), false);
    }

    /// Revokes `refresh_token` and the access tokens granted from it.
    pub fn revoke_refresh_token(&mut self, refresh_token: &str) {
        self.refresh_tokens.insert(refresh_token.to_string(), true);
        for a in self.access.values_mut() {
            if a.refresh_token == refresh_token {
                a.expired = true;
            }
        }
    }

    /// Lifetime of the access tokens granted from now on.
    pub fn set_ttl(&mut self, ttl: Duration) {
        self.ttl = ttl;
    }

    /// Every access token granted so far is rejected from now on.
    pub fn expire_access_tokens(&mut self) {
        for a in self.access.values_mut() {
            a.expired = true;
        }
    }

    /// Whether `token` is a granted access token still valid.
    pub fn is_valid(&self, token: &str) -> bool {
        self.access
            .get(token)
            .is_some_and(|a| !a.expired && Instant::now() < a.expires_at)
    }

    /// `POST /oauth2/token` with the form fields and, if given, HTTP Basic
    /// client credentials.
    pub fn grant(
        &mut self,
        form: &HashMap<String, String>,
        basic: Option<(String, String)>,
    ) -> Result<Value, GrantError> {
        let (client_id, client_secret) = match basic {
            Some(pair) => (Some(pair.0), Some(pair.1)),
            None => (
                form.get("client_id").cloned(),
                form.get("client_secret").cloned(),
            ),
        };
        match form.get("grant_type").map(String::as_str) {
            Some("refresh_token") => {}
            None => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "Invalid grant_type: ",
                ));
            }
            Some(other) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    &format!("Invalid grant_type: {other}"),
                ));
            }
        }
        if client_id.as_deref() != Some(DEFAULT_OAUTH_CLIENT_ID) {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "The OAuth client was not found.",
            ));
        }
        if client_secret.as_deref() != Some(DEFAULT_OAUTH_CLIENT_SECRET) {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Unauthorized",
            ));
        }
        let Some(refresh_token) = form.get("refresh_token").filter(|t| !t.is_empty()) else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing required parameter: refresh_token",
            ));
        };
        match self.refresh_tokens.get(refresh_token) {
            Some(false) => {}
            Some(true) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Token has been expired or revoked.",
                ));
            }
            None => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Bad Request",
                ));
            }
        }
        self.issued += 1;
        let token = format!("ya29.sim-{}-{:016x}", self.issued, rand::random::<u64>());
        self.access.insert(
            token.clone(),
            Access {
                refresh_token: refresh_token.clone(),
                expires_at: Instant::now() + self.ttl,
                expired: false,
            },
        );
        Ok(json!({
            "access_token": token,
            "expires_in": self.ttl.as_secs(),
            "scope": SCOPE,
            "token_type": "Bearer",
        }))
    }

    /// Number of successful grants.
    pub fn grants(&self) -> u64 {
        self.issued
    }
}

/// Decodes standard base64 (padding optional); `None` on bad input.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = text.trim_end_matches('=').bytes().collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let full = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&full[..chunk.len() - 1]);
    }
    Some(out)
}

/// Client credentials from an `Authorization: Basic` header value.
pub fn basic_credentials(authorization: &str) -> Option<(String, String)> {
    let encoded = authorization.strip_prefix("Basic ")?.trim();
    let plain = String::from_utf8(base64_decode(encoded)?).ok()?;
    let (id, secret) = plain.split_once(':')?;
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((decode(id), decode(secret)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demarches::codec::base64;

    #[test]
    fn basic_credentials_decode() {
        let header = format!("Basic {}", base64("my%20id:s3cret:x"));
        assert_eq!(
            basic_credentials(&header),
            Some(("my id".to_string(), "s3cret:x".to_string()))
        );
        for s in ["", "a", "ab", "abc", "abcd", "abcde"] {
            assert_eq!(base64_decode(&base64(s)).unwrap(), s.as_bytes());
        }
        assert_eq!(basic_credentials("Bearer x"), None);
    }
}
