//! Last line of defence against leaking tokens: every error message that
//! leaves the engine (logs, the runs table, `status`) is scrubbed of every
//! configured secret value.

use std::sync::Arc;

use crate::config::Secret;

/// Replaces known secret values by `[redacted]`.
#[derive(Clone, Default, Debug)]
pub struct Redactor {
    secrets: Arc<Vec<Secret>>,
}

impl Redactor {
    pub fn new(secrets: Vec<Secret>) -> Self {
        // Very short values would redact ordinary words; config validation
        // rejects empty secrets, and anything under 4 bytes is left alone.
        let secrets = secrets
            .into_iter()
            .filter(|s| s.expose().len() >= 4)
            .collect();
        Self {
            secrets: Arc::new(secrets),
        }
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in self.secrets.iter() {
            if out.contains(s.expose()) {
                out = out.replace(s.expose(), "[redacted]");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretRef;

    #[test]
    fn scrubs_every_secret() {
        let r = Redactor::new(vec![
            Secret::new("tok-123456", SecretRef::Literal),
            Secret::new("abc", SecretRef::Literal),
        ]);
        assert_eq!(
            r.scrub("Bearer tok-123456 rejected; abc stays"),
            "Bearer [redacted] rejected; abc stays"
        );
    }
}
