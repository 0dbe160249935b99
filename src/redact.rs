//! Last line of defence against leaking tokens: every error message that
//! leaves the process (logs, the runs table, `status`, the outbox) is
//! scrubbed of every credential the process holds: the configured secrets
//! and the tokens it obtains at run time (OAuth access tokens).
//!
//! One [`Redactor`] is shared by the HTTP client and the engine (clones share
//! one set of values), so a token registered by a source when it obtains it
//! is scrubbed everywhere from then on. Upstream error bodies are scrubbed
//! *before* they are cut to an excerpt ([`Redactor::excerpt`]): cutting first
//! could leave most of a token just before the cut, where no whole value
//! matches any more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::config::Secret;

/// What replaces a secret value in a message.
const MASK: &str = "[redacted]";

/// Very short values would redact ordinary words; config validation rejects
/// empty secrets, and anything under 4 bytes is left alone.
const MIN_LEN: usize = 4;

/// Characters of an upstream body kept in an error message.
const EXCERPT_CHARS: usize = 300;

/// Tokens kept per run-time holder: the current one and the one before it,
/// which a request sent just before a refresh may still carry.
const KEPT_PER_HOLDER: usize = 2;

/// Replaces known secret values by `[redacted]`.
#[derive(Clone, Default)]
pub struct Redactor {
    values: Arc<RwLock<Values>>,
}

#[derive(Default)]
struct Values {
    /// Secrets of the configuration(s) this process ran with.
    configured: Vec<Secret>,
    /// Tokens obtained at run time, by holder (see [`TokenSlot`]).
    obtained: HashMap<u64, Vec<Secret>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.read();
        f.debug_struct("Redactor")
            .field("configured", &v.configured.len())
            .field(
                "obtained",
                &v.obtained.values().map(Vec::len).sum::<usize>(),
            )
            .finish()
    }
}

impl Redactor {
    /// A redactor knowing `secrets` (the configuration's).
    pub fn new(secrets: Vec<Secret>) -> Self {
        let me = Self::default();
        me.register_all(secrets);
        me
    }

    /// Adds configured secrets (a source added by a reload brings its own).
    /// Values already known are not added twice.
    pub fn register_all(&self, secrets: impl IntoIterator<Item = Secret>) {
        let mut v = self.write();
        for s in secrets {
            if s.expose().len() >= MIN_LEN && !v.configured.iter().any(|k| k == &s) {
                v.configured.push(s);
            }
        }
    }

    /// A place for the tokens one holder (an OAuth grant) obtains at run
    /// time; they are scrubbed until the slot is dropped.
    pub fn slot(&self) -> TokenSlot {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        TokenSlot {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            redactor: self.clone(),
        }
    }

    /// `text` with every known secret value replaced by `[redacted]`.
    pub fn scrub(&self, text: &str) -> String {
        let v = self.read();
        let mut values: Vec<&str> = v
            .configured
            .iter()
            .chain(v.obtained.values().flatten())
            .map(Secret::expose)
            .collect();
        // Longest first, so that a secret containing another is fully removed.
        values.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut out = text.to_string();
        for s in values {
            if out.contains(s) {
                out = out.replace(s, MASK);
            }
        }
        out
    }

    /// A short, printable, scrubbed excerpt of an upstream body for error
    /// messages: scrubbed first, then cut to 300 characters,
    /// so no part of a token can survive at the cut.
    pub fn excerpt(&self, body: &[u8]) -> String {
        let text = self.scrub(&String::from_utf8_lossy(body));
        let mut s: String = text.chars().take(EXCERPT_CHARS).collect();
        if text.chars().nth(EXCERPT_CHARS).is_some() {
            s.push('…');
        }
        s.replace(['\n', '\r'], " ")
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Values> {
        // A panic while holding the lock leaves the values usable.
        self.values.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Values> {
        self.values.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The run-time tokens of one holder, registered with a [`Redactor`]. Only
/// the last two are kept (a token refreshed every hour for a year would
/// otherwise pile up), and all of them are forgotten when the holder drops
/// the slot.
pub struct TokenSlot {
    id: u64,
    redactor: Redactor,
}

impl TokenSlot {
    /// Registers a token just obtained, before it is used in any request.
    pub fn hold(&self, token: &Secret) {
        if token.expose().len() < MIN_LEN {
            return;
        }
        let mut v = self.redactor.write();
        let held = v.obtained.entry(self.id).or_default();
        if held.last() == Some(token) {
            return;
        }
        held.push(token.clone());
        if held.len() > KEPT_PER_HOLDER {
            held.remove(0);
        }
    }
}

impl Drop for TokenSlot {
    fn drop(&mut self) {
        self.redactor.write().obtained.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretRef;

    fn secret(v: &str) -> Secret {
        Secret::new(v, SecretRef::Literal)
    }

    #[test]
    fn scrubs_every_secret() {
        let r = Redactor::new(vec![secret("tok-123456"), secret("abc")]);
        assert_eq!(
            r.scrub("Bearer tok-123456 rejected; abc stays"),
            "Bearer [redacted] rejected; abc stays"
        );
    }

    #[test]
    fn a_secret_containing_another_is_removed_whole() {
        let r = Redactor::new(vec![secret("tok-1"), secret("tok-123456")]);
        assert_eq!(r.scrub("x tok-123456 y"), "x [redacted] y");
    }

    #[test]
    fn tokens_obtained_at_run_time_are_scrubbed_by_every_clone_while_held() {
        let r = Redactor::new(vec![secret("configured-1")]);
        let engine_side = r.clone();
        let slot = r.slot();
        slot.hold(&secret("ya29.first-access-token"));
        assert_eq!(
            engine_side.scrub("echo: Bearer ya29.first-access-token"),
            "echo: Bearer [redacted]"
        );
        // The previous token is kept beside the new one, not older ones.
        slot.hold(&secret("ya29.second-access-token"));
        slot.hold(&secret("ya29.third-access-token"));
        assert_eq!(
            engine_side.scrub("ya29.second-access-token ya29.third-access-token"),
            "[redacted] [redacted]"
        );
        assert_eq!(
            engine_side.scrub("ya29.first-access-token"),
            "ya29.first-access-token"
        );
        drop(slot);
        assert_eq!(
            engine_side.scrub("ya29.third-access-token configured-1"),
            "ya29.third-access-token [redacted]"
        );
    }

    #[test]
    fn secrets_registered_later_are_scrubbed_and_not_duplicated() {
        let r = Redactor::default();
        r.register_all([secret("added-by-reload"), secret("added-by-reload")]);
        assert_eq!(r.scrub("x added-by-reload"), "x [redacted]");
        assert_eq!(r.read().configured.len(), 1);
    }

    #[test]
    fn an_excerpt_is_scrubbed_before_it_is_cut() {
        let token = "ya29.a0AfH6SMBx-straddling-token";
        let r = Redactor::new(vec![secret(token)]);
        // The token starts 10 characters before the cut.
        for before_cut in [1, 10, token.len() - 1] {
            let body = format!(
                "{}{token} and more text after it",
                "x".repeat(EXCERPT_CHARS - before_cut)
            );
            let e = r.excerpt(body.as_bytes());
            // No prefix of the token of more than 3 characters survives.
            assert!(!e.contains(&token[..4]), "{before_cut}: {e}");
            assert!(e.ends_with('…'), "{e}");
            assert!(e.chars().count() <= EXCERPT_CHARS + 1);
        }
        assert_eq!(r.excerpt(b"short\nbody"), "short body");
    }
}
