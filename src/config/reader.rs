//! Typed reads from the raw value tree (TOML file + `SYNCHRO__` overrides).
//!
//! Serde's `deny_unknown_fields` stops at the first error, but `synchro check`
//! must list every problem at once. So the tree is walked by hand: each
//! [`Table`] hands out the keys the schema asks for, records a [`Problem`] for
//! each value of the wrong type or form (and carries on with the default), and
//! on [`Table::finish`] reports whatever key nobody asked for as unknown.
//!
//! Messages never quote a value read from the tree: a misplaced or misspelt
//! token would otherwise end up in a log. They name the key, the expected type
//! and what was wrong instead. As a second line of defence, [`Problems`]
//! remembers every string seen in a secret position and scrubs it from every
//! message before they leave the loader.

use std::time::Duration;

use config::{Map, Value, ValueKind};

use super::load::Problem;

/// The origin the `config` crate gives to values from its `Environment` source.
pub(super) const ENV_ORIGIN: &str = "the environment";

/// The shortest secret value that is scrubbed from messages; shorter ones
/// would mangle ordinary words and cannot be meaningful credentials anyway.
const MIN_SCRUBBED_LEN: usize = 4;

/// Every problem found so far, plus the secret strings to scrub from them.
#[derive(Default)]
pub(super) struct Problems {
    list: Vec<Problem>,
    secrets: Vec<String>,
    /// Secrets written correctly whose value this process cannot get (the
    /// variable is unset, the file unreadable), when those are warnings.
    unavailable: Vec<Problem>,
    /// Whether an unavailable secret is a warning rather than a problem:
    /// for commands that never send a token (see `load_without_secrets`).
    secrets_optional: bool,
    /// Findings that do not make the file invalid (see [`Problems::warn`]).
    warnings: Vec<Problem>,
}

impl Problems {
    /// A collector for which unavailable secrets are warnings.
    pub(super) fn with_optional_secrets() -> Self {
        Self {
            secrets_optional: true,
            ..Self::default()
        }
    }

    /// Records a secret whose value this process cannot get. True when it
    /// is only a warning: the caller then carries on with a placeholder.
    pub(super) fn secret_unavailable(
        &mut self,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> bool {
        let problem = Problem {
            key: key.into(),
            reason: reason.into(),
        };
        if self.secrets_optional {
            self.unavailable.push(problem);
        } else {
            self.list.push(problem);
        }
        self.secrets_optional
    }

    pub(super) fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.list.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    /// Records a finding that leaves the configuration valid (a secret
    /// file others can read): `check` prints it, the daemon logs it.
    pub(super) fn warn(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.warnings.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    /// The warnings recorded so far, taken out.
    pub(super) fn take_warnings(&mut self) -> Vec<Problem> {
        std::mem::take(&mut self.warnings)
    }

    /// Remembers a value that must not appear in any message.
    pub(super) fn secret_value(&mut self, value: &str) {
        let value = value.trim();
        if value.len() >= MIN_SCRUBBED_LEN {
            self.secrets.push(value.to_string());
        }
    }

    /// Whether a problem was already reported for exactly this key.
    pub(super) fn has_key(&self, key: &str) -> bool {
        self.list.iter().any(|p| p.key == key)
    }

    /// Whether a problem was already reported for this key or below it.
    pub(super) fn has_key_prefix(&self, key: &str) -> bool {
        self.list.iter().any(|p| {
            p.key == key
                || p.key
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The problems, in the order found, with every remembered secret replaced.
    pub(super) fn into_list(self) -> Vec<Problem> {
        self.into_lists().0
    }

    /// The problems and the unavailable secrets (warnings), both scrubbed.
    pub(super) fn into_lists(mut self) -> (Vec<Problem>, Vec<Problem>) {
        // Longest first, so that a secret containing another is fully removed.
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.secrets.dedup();
        let scrub = |s: &mut String| {
            for secret in &self.secrets {
                if s.contains(secret.as_str()) {
                    *s = s.replace(secret.as_str(), "[redacted]");
                }
            }
        };
        let mut list = self.list;
        let mut unavailable = self.unavailable;
        for p in list.iter_mut().chain(unavailable.iter_mut()) {
            scrub(&mut p.key);
            scrub(&mut p.reason);
        }
        (list, unavailable)
    }
}

/// `storage` + `database` → `storage.database`; the root has an empty path.
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// What a value is, for "expected X, found Y" messages (never the value itself).
pub(super) fn type_name(v: &Value) -> &'static str {
    match &v.kind {
        ValueKind::Nil => "nothing",
        ValueKind::Boolean(_) => "a boolean",
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => {
            "an integer"
        }
        ValueKind::Float(_) => "a float",
        ValueKind::String(_) => "a string",
        ValueKind::Table(_) => "a table",
        ValueKind::Array(_) => "an array",
    }
}

pub(super) fn from_env(v: &Value) -> bool {
    v.origin() == Some(ENV_ORIGIN)
}

/// The `SYNCHRO__...` variable that sets the value at `path`, for messages
/// about keys that only exist because of an override.
pub(super) fn env_var_for(path: &str) -> String {
    let mut out = String::from("SYNCHRO");
    for part in path.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, Some(rest.trim_end_matches(']'))),
            None => (part, None),
        };
        out.push_str("__");
        out.push_str(&name.to_ascii_uppercase());
        if let Some(i) = index {
            out.push_str("__");
            out.push_str(i);
        }
    }
    out
}

/// Why a humantime duration did not parse, without quoting the input.
pub(super) fn duration_error(e: &humantime::DurationError) -> String {
    use humantime::DurationError as E;
    let what = match e {
        E::InvalidCharacter(at) => format!("invalid character at offset {at}"),
        E::NumberExpected(at) => format!("a number was expected at offset {at}"),
        E::UnknownUnit { start, .. } => format!(
            "unknown unit at offset {start} (use ms, s, m, h, d, w, e.g. \"30s\" or \"1h 30m\")"
        ),
        E::NumberOverflow => "the number is too large".to_string(),
        E::Empty => "it is empty".to_string(),
    };
    format!("invalid duration: {what}")
}

/// One table of the tree being read. Keys are taken out as the schema asks
/// for them, so what is left at [`Table::finish`] is unknown.
pub(super) struct Table {
    path: String,
    map: Map<String, Value>,
    known: Vec<&'static str>,
}

impl Table {
    pub(super) fn new(path: String, map: Map<String, Value>) -> Self {
        Self {
            path,
            map,
            known: Vec::new(),
        }
    }

    /// A table that is absent from the file: every key takes its default.
    pub(super) fn empty(path: String) -> Self {
        Self::new(path, Map::new())
    }

    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// The full key path of `key` in this table, for messages.
    pub(super) fn key(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// A string value without taking it (for cross-checks such as duplicate ids).
    pub(super) fn peek_str(&self, key: &str) -> Option<&str> {
        match &self.map.get(key)?.kind {
            ValueKind::String(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Marks `key` as known and reports it missing if absent; true if present.
    pub(super) fn require(&mut self, key: &'static str, p: &mut Problems) -> bool {
        if self.map.contains_key(key) {
            return true;
        }
        self.known.push(key);
        p.add(self.key(key), "missing required key");
        false
    }

    /// Takes a raw value out, marking the key as known.
    pub(super) fn take(&mut self, key: &'static str) -> Option<Value> {
        self.known.push(key);
        self.map.remove(key)
    }

    fn wrong_type(&self, key: &str, expected: &str, v: &Value, p: &mut Problems) {
        p.add(
            self.key(key),
            format!("expected {expected}, found {}", type_name(v)),
        );
    }

    pub(super) fn string(&mut self, key: &'static str, p: &mut Problems) -> Option<String> {
        let v = self.take(key)?;
        match v.kind {
            ValueKind::String(s) => Some(s),
            _ => {
                self.wrong_type(key, "a string", &v, p);
                None
            }
        }
    }

    /// Like [`Table::string`], but absence is a problem too.
    pub(super) fn required_string(
        &mut self,
        key: &'static str,
        p: &mut Problems,
    ) -> Option<String> {
        if !self.require(key, p) {
            return None;
        }
        self.string(key, p)
    }

    /// An integer. Overrides arrive as strings and are parsed here, by the
    /// type the key expects (see `load.rs` on why not `try_parsing`).
    pub(super) fn int(&mut self, key: &'static str, p: &mut Problems) -> Option<i64> {
        let v = self.take(key)?;
        match &v.kind {
            ValueKind::I64(i) => Some(*i),
            ValueKind::String(s) if from_env(&v) => match s.trim().parse::<i64>() {
                Ok(i) => Some(i),
                Err(_) => {
                    p.add(
                        self.key(key),
                        format!(
                            "expected an integer (set by environment variable {})",
                            env_var_for(&self.key(key))
                        ),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(key, "an integer", &v, p);
                None
            }
        }
    }

    /// An integer within `min..=max`; out of range is a problem.
    pub(super) fn int_in(
        &mut self,
        key: &'static str,
        min: i64,
        max: i64,
        p: &mut Problems,
    ) -> Option<i64> {
        let i = self.int(key, p)?;
        if (min..=max).contains(&i) {
            Some(i)
        } else {
            let reason = if max == i64::MAX {
                format!("must be at least {min}, got {i}")
            } else {
                format!("must be between {min} and {max}, got {i}")
            };
            p.add(self.key(key), reason);
            None
        }
    }

    /// A number; TOML integers are accepted too (`rate = 2` means 2.0).
    pub(super) fn float(&mut self, key: &'static str, p: &mut Problems) -> Option<f64> {
        let v = self.take(key)?;
        let parsed = match &v.kind {
            ValueKind::Float(f) => Some(*f),
            ValueKind::I64(i) => Some(*i as f64),
            ValueKind::String(s) if from_env(&v) => match s.trim().parse::<f64>() {
                Ok(f) => Some(f),
                Err(_) => {
                    p.add(
                        self.key(key),
                        format!(
                            "expected a number (set by environment variable {})",
                            env_var_for(&self.key(key))
                        ),
                    );
                    return None;
                }
            },
            _ => {
                self.wrong_type(key, "a number", &v, p);
                return None;
            }
        };
        parsed.filter(|f| {
            let ok = f.is_finite();
            if !ok {
                p.add(self.key(key), "must be a finite number");
            }
            ok
        })
    }

    /// A number in `(0, max]`: rates, where zero would stop all traffic.
    pub(super) fn positive_float(
        &mut self,
        key: &'static str,
        max: f64,
        p: &mut Problems,
    ) -> Option<f64> {
        let f = self.float(key, p)?;
        if f > 0.0 && f <= max {
            Some(f)
        } else {
            p.add(
                self.key(key),
                format!("must be greater than 0 and at most {max}, got {f}"),
            );
            None
        }
    }

    /// Takes every remaining key out as a sub-table: for tables whose keys
    /// are names chosen by the user (`[http.hosts."example.org"]`) rather than
    /// a schema. Values that are not tables are reported and skipped.
    pub(super) fn take_all_tables(&mut self, p: &mut Problems) -> Vec<(String, Table)> {
        let mut entries: Vec<(String, Value)> = std::mem::take(&mut self.map).into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
            .into_iter()
            .filter_map(|(name, v)| {
                let path = format!("{}.\"{name}\"", self.path);
                match v.kind {
                    ValueKind::Table(map) => Some((name, Table::new(path, map))),
                    _ => {
                        p.add(path, format!("expected a table, found {}", type_name(&v)));
                        None
                    }
                }
            })
            .collect()
    }

    pub(super) fn bool(&mut self, key: &'static str, p: &mut Problems) -> Option<bool> {
        let v = self.take(key)?;
        match &v.kind {
            ValueKind::Boolean(b) => Some(*b),
            ValueKind::String(s) if from_env(&v) => match s.trim().to_ascii_lowercase().as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => {
                    p.add(
                        self.key(key),
                        format!(
                            "expected true or false (set by environment variable {})",
                            env_var_for(&self.key(key))
                        ),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(key, "a boolean", &v, p);
                None
            }
        }
    }

    /// A humantime duration string such as `"30s"` or `"1h 30m"`.
    pub(super) fn duration(&mut self, key: &'static str, p: &mut Problems) -> Option<Duration> {
        let v = self.take(key)?;
        match &v.kind {
            ValueKind::String(s) => match humantime::parse_duration(s.trim()) {
                Ok(d) => Some(d),
                Err(e) => {
                    p.add(self.key(key), duration_error(&e));
                    None
                }
            },
            _ => {
                self.wrong_type(key, "a duration string such as \"30s\"", &v, p);
                None
            }
        }
    }

    /// A duration that must be strictly positive (timeouts, intervals).
    pub(super) fn positive_duration(
        &mut self,
        key: &'static str,
        p: &mut Problems,
    ) -> Option<Duration> {
        let d = self.duration(key, p)?;
        if d.is_zero() {
            p.add(self.key(key), "must be greater than zero");
            return None;
        }
        Some(d)
    }

    /// A duration within `[min, max]` (bounds in the message as written).
    pub(super) fn duration_in(
        &mut self,
        key: &'static str,
        min: Duration,
        max: Duration,
        p: &mut Problems,
    ) -> Option<Duration> {
        let d = self.duration(key, p)?;
        if d < min || d > max {
            p.add(
                self.key(key),
                format!(
                    "must be between {} and {}, got {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max),
                    humantime::format_duration(d)
                ),
            );
            return None;
        }
        Some(d)
    }

    /// A sub-table; absent gives `None` without a problem.
    pub(super) fn table(&mut self, key: &'static str, p: &mut Problems) -> Option<Table> {
        let v = self.take(key)?;
        match v.kind {
            ValueKind::Table(map) => Some(Table::new(self.key(key), map)),
            _ => {
                self.wrong_type(key, "a table", &v, p);
                None
            }
        }
    }

    /// A sub-table, or an empty one (all defaults) when absent or mistyped.
    pub(super) fn section(&mut self, key: &'static str, p: &mut Problems) -> Table {
        self.table(key, p)
            .unwrap_or_else(|| Table::empty(self.key(key)))
    }

    /// An array of tables (`[[tenants]]`), each with its indexed path.
    /// Elements that are not tables are reported and skipped.
    pub(super) fn tables(&mut self, key: &'static str, p: &mut Problems) -> Vec<Table> {
        let Some(v) = self.take(key) else {
            return Vec::new();
        };
        let path = self.key(key);
        match v.kind {
            ValueKind::Array(items) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let item_path = format!("{path}[{i}]");
                    match item.kind {
                        ValueKind::Table(map) => Some(Table::new(item_path, map)),
                        _ => {
                            p.add(
                                item_path,
                                format!("expected a table, found {}", type_name(&item)),
                            );
                            None
                        }
                    }
                })
                .collect(),
            _ => {
                p.add(
                    path,
                    format!(
                        "expected an array of tables ([[{key}]]), found {}",
                        type_name(&v)
                    ),
                );
                Vec::new()
            }
        }
    }

    /// Reports every key that the schema did not ask for.
    pub(super) fn finish(self, p: &mut Problems) {
        let mut unknown: Vec<(String, Value)> = self.map.into_iter().collect();
        if unknown.is_empty() {
            return;
        }
        unknown.sort_by(|a, b| a.0.cmp(&b.0));
        let mut known = self.known;
        known.sort_unstable();
        known.dedup();
        let expected = if known.is_empty() {
            "this table takes no keys".to_string()
        } else {
            format!("expected one of: {}", known.join(", "))
        };
        for (key, value) in unknown {
            let path = join(&self.path, &key);
            // A misspelt secret key (`tokn = "..."`) must not reach a message either.
            remember_secrets_under(&key, &value, p);
            let origin = if from_env(&value) {
                format!(" (set by environment variable {})", env_var_for(&path))
            } else {
                String::new()
            };
            p.add(path, format!("unknown key{origin}; {expected}"));
        }
    }

    /// Drops the remaining keys without reporting them: used when a source's
    /// `kind` is missing or unknown, so its keys cannot be judged.
    pub(super) fn discard(self, p: &mut Problems) {
        for (key, value) in self.map {
            remember_secrets_under(&key, &value, p);
        }
    }
}

/// Remembers every string under a key that looks like it holds a credential.
fn remember_secrets_under(key: &str, value: &Value, p: &mut Problems) {
    let k = key.to_ascii_lowercase();
    let secretish = [
        "token",
        "secret",
        "password",
        "passwd",
        "key",
        "auth",
        "credential",
    ]
    .iter()
    .any(|w| k.contains(w));
    if secretish {
        remember_all_strings(value, p);
    }
}

/// Remembers every string inside `value` (a secret position's raw content).
pub(super) fn remember_all_strings(value: &Value, p: &mut Problems) {
    match &value.kind {
        ValueKind::String(s) => p.secret_value(s),
        ValueKind::Table(m) => m.values().for_each(|v| remember_all_strings(v, p)),
        ValueKind::Array(a) => a.iter().for_each(|v| remember_all_strings(v, p)),
        _ => {}
    }
}
