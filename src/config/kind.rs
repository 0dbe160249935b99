//! The seam between the loader and the source kinds. The loader reads the
//! keys every source has (`id`, `kind`, `schedule`, `endpoint`, ...); the
//! keys of a kind are read by the kind itself, through a [`KindCatalog`]
//! (the registry in `sources`) and a [`KindKeys`] reader that reports each
//! problem with its key path like the rest of the file. What a kind read is
//! kept as [`KindSettings`], opaque to everything but that kind.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::Secret;
use super::reader::{Problems, Table};
use super::sources::{Ctx, check_url, secret};

/// The kinds the loader accepts, by their `kind = "..."` name.
pub trait KindCatalog {
    /// Every accepted name, in the order they are listed in messages.
    fn names(&self) -> Vec<&'static str>;
    /// The endpoint of a source of this kind that sets none.
    fn default_endpoint(&self, kind: &str) -> Option<&'static str>;
    /// Reads the kind's keys; `None` when anything is wrong (every problem
    /// is reported through `keys`) or the kind is unknown.
    fn read(&self, kind: &str, keys: &mut KindKeys<'_>) -> Option<KindSettings>;
}

/// What a kind read from its source's table, behind the kind's own type.
pub trait KindSection: Any + Send + Sync + fmt::Debug {
    /// The kind's name (`kind = "..."`).
    fn kind(&self) -> &'static str;
    /// The secrets among the settings, so that messages can be scrubbed of
    /// them.
    fn secrets(&self) -> Vec<Secret>;
    /// Whether `other` holds the same settings (a reload changes nothing).
    fn same_as(&self, other: &dyn KindSection) -> bool;
    /// The section itself, for the kind that made it to find its type again.
    fn as_any(&self) -> &dyn Any;
    /// The kind's typed settings (what [`KindSettings::get`] returns).
    fn settings(&self) -> &dyn Any;
}

/// The kind-specific part of a configured source. Cheap to clone.
#[derive(Clone)]
pub struct KindSettings(Arc<dyn KindSection>);

impl KindSettings {
    /// Wraps what a kind read.
    pub fn new(section: impl KindSection) -> Self {
        Self(Arc::new(section))
    }

    /// The kind's name (`kind = "..."`).
    pub fn name(&self) -> &'static str {
        self.0.kind()
    }

    /// The secrets among the settings.
    pub fn secrets(&self) -> Vec<Secret> {
        self.0.secrets()
    }

    /// The section as the kind built it.
    pub fn section(&self) -> &dyn KindSection {
        &*self.0
    }

    /// The kind's typed settings, if they are a `T`.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.0.settings().downcast_ref::<T>()
    }
}

impl PartialEq for KindSettings {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.same_as(&*other.0)
    }
}

impl fmt::Debug for KindSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Reads the keys of one kind in one source's table. Every getter removes
/// the key it reads (keys left over are reported as unknown), reports what
/// is wrong with the key's full path and returns `None` then.
pub struct KindKeys<'a> {
    table: &'a mut Table,
    ctx: &'a Ctx<'a>,
    problems: &'a mut Problems,
}

impl<'a> KindKeys<'a> {
    pub(super) fn new(table: &'a mut Table, ctx: &'a Ctx<'a>, problems: &'a mut Problems) -> Self {
        Self {
            table,
            ctx,
            problems,
        }
    }

    /// The full path of `key`, as problems name it.
    pub fn path(&self, key: &str) -> String {
        self.table.key(key)
    }

    /// Reports a problem with `key`.
    pub fn problem(&mut self, key: &str, reason: impl Into<String>) {
        let path = self.table.key(key);
        self.problems.add(path, reason);
    }

    /// Whether a problem was already reported for `key` (to avoid piling on).
    pub fn has_problem(&self, key: &str) -> bool {
        self.problems.has_key(&self.table.key(key))
    }

    /// Whether the table sets `key` (without reading it).
    pub fn contains(&self, key: &str) -> bool {
        self.table.contains(key)
    }

    /// A string.
    pub fn string(&mut self, key: &'static str) -> Option<String> {
        self.table.string(key, self.problems)
    }

    /// A string that must be set.
    fn required_string(&mut self, key: &'static str) -> Option<String> {
        self.table.required_string(key, self.problems)
    }

    /// A required string that must not be blank.
    pub fn required_non_blank(&mut self, key: &'static str) -> Option<String> {
        let value = self.required_string(key)?;
        if value.trim().is_empty() {
            self.problem(key, "must not be empty");
            return None;
        }
        Some(value)
    }

    /// An integer within `min..=max`.
    pub fn int_in(&mut self, key: &'static str, min: i64, max: i64) -> Option<i64> {
        self.table.int_in(key, min, max, self.problems)
    }

    /// A required integer within `min..=max`.
    pub fn required_int_in(&mut self, key: &'static str, min: i64, max: i64) -> Option<i64> {
        if self.table.require(key, self.problems) {
            self.int_in(key, min, max)
        } else {
            None
        }
    }

    /// `true` or `false`.
    pub fn bool(&mut self, key: &'static str) -> Option<bool> {
        self.table.bool(key, self.problems)
    }

    /// A duration (`30s`, `1h`, `7days`).
    pub fn duration(&mut self, key: &'static str) -> Option<Duration> {
        self.table.duration(key, self.problems)
    }

    /// A duration above zero.
    pub fn positive_duration(&mut self, key: &'static str) -> Option<Duration> {
        self.table.positive_duration(key, self.problems)
    }

    /// An RFC 3339 date-time with offset, kept as written (trimmed).
    pub fn rfc3339(&mut self, key: &'static str) -> Option<String> {
        let s = self.string(key)?;
        match chrono::DateTime::parse_from_rfc3339(s.trim()) {
            Ok(_) => Some(s.trim().to_string()),
            Err(e) => {
                self.problem(
                    key,
                    format!(
                        "expected an RFC 3339 date-time with offset, e.g. \"2000-01-01T00:00:00Z\" ({e})"
                    ),
                );
                None
            }
        }
    }

    /// A required upstream URL (https, or plain http to a loopback address).
    pub fn required_url(&mut self, key: &'static str) -> Option<url::Url> {
        let s = self.required_string(key)?;
        check_url(&s).map_err(|r| self.problem(key, r)).ok()
    }

    /// A secret: a string, `{ env = "VAR" }` or `{ file = "/path" }`.
    /// `None`: a problem was reported; `Some(None)`: optional and absent.
    pub fn secret(&mut self, key: &'static str, required: bool) -> Option<Option<Secret>> {
        secret(self.table, key, required, self.ctx, self.problems)
    }

    /// An inline table (`key = { ... }`) read by `read`; its unknown keys
    /// are reported. `None` when absent or not a table (reported).
    pub fn table<T>(
        &mut self,
        key: &'static str,
        read: impl FnOnce(&mut KindKeys<'_>) -> T,
    ) -> Option<T> {
        let mut sub = self.table.table(key, self.problems)?;
        let out = read(&mut KindKeys {
            table: &mut sub,
            ctx: self.ctx,
            problems: self.problems,
        });
        sub.finish(self.problems);
        Some(out)
    }
}
