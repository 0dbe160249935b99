//! Typed configuration. Everything here is valid once loaded: the loader
//! (`load.rs`) parses the TOML file plus `SYNCHRO__` environment overrides,
//! reports *every* problem with its key path, and only then builds these types,
//! so the rest of the daemon never re-checks a value.

mod kind;
mod load;
mod reader;
mod schedule;
mod secret;
mod sources;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use kind::{KindCatalog, KindKeys, KindSection, KindSettings};
pub use load::{
    ConfigError, Problem, WithoutSecrets, load, load_str, load_str_without_secrets,
    load_without_secrets,
};
pub use schedule::{CronSchedule, Schedule};
pub use secret::{Secret, SecretRef};

use crate::model::SourceKey;

/// The whole daemon configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from, for messages.
    pub path: PathBuf,
    pub storage: StorageConfig,
    pub server: ServerConfig,
    pub scheduler: SchedulerConfig,
    pub http: HttpConfig,
    pub tenants: Vec<TenantConfig>,
    /// What is worth fixing but does not make the file invalid (a secret
    /// file readable by group or others), by key: `check` prints these and
    /// `run` logs them at start.
    pub warnings: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// `sqlite://path` URL; a relative path as written (in the file, an
    /// override or the default) is made relative to the config file's
    /// folder here, absolute when the config was read from a file. Or
    /// `postgres://user@host[:port]/db[?sslmode=...]`, never with a password.
    pub database: String,
    /// The Postgres password, from a secret reference.
    pub password: Option<Secret>,
    /// Postgres connections this process opens at most.
    pub pool_size: u32,
    /// How long a write waits for a lock held by another process.
    pub busy_timeout: Duration,
    /// Runs that started longer ago are pruned from the run history by the
    /// daemon (the newest runs of each source are kept whatever their age,
    /// see `store::KEEP_LAST_RUNS`): `runs` would otherwise grow forever.
    pub runs_retention: Duration,
    /// Tombstones older than this are purged by the daemon; a change-feed
    /// reader whose position is behind a purged one must resync.
    pub tombstone_retention: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: std::net::SocketAddr,
    /// Connections served at once; more wait in the kernel's accept queue.
    /// Bounds the file descriptors the listener can take from the syncs.
    pub max_connections: usize,
    /// Largest request body (a webhook callback) read, in bytes; a larger
    /// one gets 413 without being read.
    pub max_body_bytes: usize,
    /// Reads every tenant's changes (`/v1/changes`); none by default.
    pub admin_read_token: Option<Secret>,
}

impl ServerConfig {
    /// The settings the listener is built with (all but the tokens, which
    /// a reload applies).
    pub fn listener_settings(&self) -> (std::net::SocketAddr, usize, usize) {
        (self.listen, self.max_connections, self.max_body_bytes)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub max_concurrent_syncs: usize,
    /// Random delay in `[0, jitter]` added to each scheduled tick so that many
    /// sources on one schedule do not hit an upstream at the same instant.
    pub jitter: Duration,
    /// How long a shutdown waits for running syncs to finish their page.
    pub shutdown_timeout: Duration,
    /// A run's hold on its source (DESIGN.md §3b): renewed every third of
    /// it while the run lives; a holder silent for this long is taken over.
    pub lease_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_retries: u32,
    /// First back-off step; doubled on each retry, each wait drawn in
    /// `[step/2, step]` (equal jitter).
    pub initial_backoff: Duration,
    /// Upper bound of a single back-off; an upstream asking (`Retry-After`,
    /// `RateLimit-Reset`) for a longer wait fails the run instead.
    pub max_backoff: Duration,
    /// Requests per second any one upstream host (scheme, host, port) may
    /// receive from this daemon, whatever the number of sources pointing at
    /// it: many tenants of one upstream share its quota, not multiply it.
    pub per_host_requests_per_second: f64,
    /// Requests any one upstream host may have in flight at once.
    pub per_host_concurrency: usize,
    /// Per-host exceptions to the two limits above, keyed by `host` or
    /// `host:port` in lowercase, as written under `[http.hosts."..."]`.
    pub hosts: std::collections::BTreeMap<String, HostLimits>,
}

/// Limits of one upstream host that differ from the `[http]` defaults (an
/// upstream with a smaller published quota, or a local one that can take more).
#[derive(Debug, Clone, PartialEq)]
pub struct HostLimits {
    /// Requests per second; the `[http]` default when not set.
    pub requests_per_second: Option<f64>,
    /// Requests in flight; the `[http]` default when not set.
    pub concurrency: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    pub id: String,
    /// Reads this tenant's changes over HTTP (`/v1/changes`); without it,
    /// only the admin token reads them.
    pub read_token: Option<Secret>,
    pub sources: Vec<SourceConfig>,
}

/// One configured source: common scheduling keys plus the kind-specific part.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub tenant: String,
    pub id: String,
    pub schedule: Schedule,
    pub endpoint: url::Url,
    /// Pages one run may fetch before it fails: an upstream that never
    /// ends its listing (fresh tokens forever, no page count) cannot hold
    /// a sync slot for good.
    pub max_pages_per_run: u64,
    /// The keys of its kind, as the kind read them.
    pub kind: KindSettings,
}

impl SourceConfig {
    /// `tenant/source`, the name used on the command line, in logs and metrics.
    pub fn key(&self) -> SourceKey {
        SourceKey {
            tenant: self.tenant.clone(),
            source: self.id.clone(),
        }
    }

    /// The kind's name (`kind = "..."`).
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }
}

impl Config {
    /// Every configured source, in file order.
    pub fn sources(&self) -> impl Iterator<Item = &SourceConfig> {
        self.tenants.iter().flat_map(|t| t.sources.iter())
    }

    pub fn source(&self, key: &SourceKey) -> Option<&SourceConfig> {
        self.sources()
            .find(|s| s.tenant == key.tenant && s.id == key.source)
    }

    /// Every secret value in the config, so that errors can be scrubbed of them.
    pub fn secrets(&self) -> Vec<Secret> {
        self.storage
            .password
            .iter()
            .chain(&self.server.admin_read_token)
            .chain(self.tenants.iter().filter_map(|t| t.read_token.as_ref()))
            .cloned()
            .chain(self.sources().flat_map(SourceConfig::secrets))
            .collect()
    }
}

impl SourceConfig {
    /// The secrets of this source, so that errors can be scrubbed of them
    /// (also when the source comes with a reloaded configuration).
    pub fn secrets(&self) -> Vec<Secret> {
        self.kind.secrets()
    }
}
