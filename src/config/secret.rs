//! Secrets: tokens that must never reach a log line, an error message or the
//! output of `status`/`check`. They are resolved once at load time from an
//! environment variable, a file, or (discouraged) a literal.

use std::fmt;
use std::sync::Arc;

/// Where a secret comes from, as written in the config.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(std::path::PathBuf),
    Literal,
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(v) => write!(f, "env:{v}"),
            SecretRef::File(p) => write!(f, "file:{}", p.display()),
            SecretRef::Literal => write!(f, "literal"),
        }
    }
}

/// A resolved secret value. `Debug` and `Display` print `[redacted]`, so a
/// config struct can be logged whole without leaking anything; the value is
/// reachable only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: Arc<str>,
    origin: SecretRef,
}

impl Secret {
    pub fn new(value: impl Into<Arc<str>>, origin: SecretRef) -> Self {
        Self {
            value: value.into(),
            origin,
        }
    }

    /// The raw value, for building an `Authorization` header and nothing else.
    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn origin(&self) -> &SecretRef {
        &self.origin
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({:?}, [redacted])", self.origin)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2-token", SecretRef::Env("X".into()));
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-token");
    }
}
