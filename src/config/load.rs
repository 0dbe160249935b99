//! Loading and validating the config file.
//!
//! The file is parsed by the `config` crate's TOML format into a raw value
//! tree, `SYNCHRO__` environment overrides are applied on top of it, and the
//! tree is then walked key by key (`reader.rs`, `sources.rs`) so that *every*
//! problem is collected with its key path before anything is built.
//!
//! # Environment overrides
//!
//! Collected with the `config` crate's
//! `Environment::with_prefix("SYNCHRO").separator("__")`: the variable name
//! after `SYNCHRO__` is the key path with `__` between levels, in any case
//! (names are lowercased, and every key of the schema is lowercase):
//!
//! ```text
//! SYNCHRO__STORAGE__DATABASE=sqlite:///var/lib/synchro/synchro.db
//! SYNCHRO__SERVER__LISTEN=0.0.0.0:9750
//! SYNCHRO__SCHEDULER__MAX_CONCURRENT_SYNCS=4
//! SYNCHRO__HTTP__TIMEOUT=1m
//! SYNCHRO__TENANTS__0__SOURCES__1__PAGE_SIZE=50        # array elements by index
//! SYNCHRO__TENANTS__0__SOURCES__0__TOKEN__ENV=OTHER_VAR # a secret reference
//! ```
//!
//! - Values are read as strings and converted by the type the key expects
//!   (integers, `true`/`false`, durations such as `30s`). `try_parsing(true)`
//!   is deliberately not used: it guesses the type from the text alone, so an
//!   id or calendar id such as `007` or `2024` would become a number (and
//!   `007` would lose its zeros).
//! - Array elements (`tenants`, `sources`) are addressed by their 0-based index
//!   and must already exist in the file: an override changes a source, it
//!   cannot add one. The `config` crate's own merge would instead replace the
//!   whole array by a table keyed `"0"`, which is why the collected overrides
//!   are applied here.
//! - Overrides go through the same checks as the file: an override of an
//!   unknown key (`SYNCHRO__STORAGE__COLOUR`) is reported as the unknown key
//!   `storage.colour`, naming the variable.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Environment, FileFormat, Map, Source, Value, ValueKind};

use super::kind::KindCatalog;
use super::reader::{ENV_ORIGIN, Problems, Table, join};
use super::sources::{self, Ctx, ID_RULE, valid_id};
use super::{
    Config, HostLimits, HttpConfig, SchedulerConfig, ServerConfig, StorageConfig, TenantConfig,
};

/// Defaults of the daemon-wide keys (DESIGN.md §2).
mod defaults {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::time::Duration;

    pub(crate) const DATABASE: &str = "sqlite://var/synchro.db";
    /// How long a write waits for a lock held by another process (a backup,
    /// an operator's sqlite3 shell) before the run fails.
    pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
    /// A month of run history: enough to look back at last month's
    /// incident, bounded for a source that runs every minute.
    pub(crate) const RUNS_RETENTION: Duration = Duration::from_secs(30 * 86_400);
    /// Shorter is a typo ("30s" for "30d"): a run would be pruned before
    /// anyone could look at it.
    pub(crate) const RUNS_RETENTION_MIN: Duration = Duration::from_secs(3_600);
    /// "100years" as humantime counts them (365.25 days each): keep-all.
    pub(crate) const RUNS_RETENTION_MAX: Duration = Duration::from_secs(3_155_760_000);
    /// How long deletions stay visible to change-feed readers: a month,
    /// so a consumer down for a long weekend (or a month-end batch) still
    /// learns what was deleted.
    pub(crate) const TOMBSTONE_RETENTION: Duration = Duration::from_secs(30 * 86_400);
    /// Shorter would purge deletions before any reader polling on a
    /// reasonable schedule saw them; tests use it to provoke a resync.
    pub(crate) const TOMBSTONE_RETENTION_MIN: Duration = Duration::from_secs(1);
    pub(crate) const LISTEN: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9750));
    /// Half of the usual 1024 soft file limit: even where `LimitNOFILE` is
    /// not raised, idle clients cannot take the descriptors syncs need.
    pub(crate) const MAX_CONNECTIONS: usize = 512;
    /// A Contentor callback carries one request; 2 MiB leaves room for long
    /// texts in its `fields`.
    pub(crate) const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
    pub(crate) const MAX_CONCURRENT_SYNCS: usize = 8;
    pub(crate) const JITTER: Duration = Duration::from_secs(10);
    pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
    /// A run's lease: long enough that a busy disk never loses it (renewed
    /// every 10 s), short enough that a crashed holder on another host is
    /// taken over soon (on the same host a dead pid is taken over at once).
    pub(crate) const LEASE_TTL: Duration = Duration::from_secs(30);
    pub(crate) const LEASE_TTL_MIN: Duration = Duration::from_secs(1);
    pub(crate) const LEASE_TTL_MAX: Duration = Duration::from_secs(3600);
    pub const TIMEOUT: Duration = Duration::from_secs(30);
    pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    pub(crate) const MAX_RETRIES: u32 = 5;
    pub(crate) const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
    pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
    pub(crate) const PER_HOST_REQUESTS_PER_SECOND: f64 = 10.0;
    pub(crate) const PER_HOST_CONCURRENCY: usize = 4;
}

/// Highest accepted request rate: above it the spacing between two requests
/// would be under 10 µs, i.e. no limit at all; leave the key out instead.
const MAX_REQUESTS_PER_SECOND: f64 = 100_000.0;
/// Highest accepted per-host concurrency (as `max_concurrent_syncs`).
const MAX_HOST_CONCURRENCY: i64 = 1024;

/// Highest accepted `server.max_connections`: each connection is a file
/// descriptor, and the unit's `LimitNOFILE` is 65536.
const MAX_SERVER_CONNECTIONS: i64 = 32_768;
/// Bounds of `server.max_body_bytes`: below 1 KiB no callback fits, above
/// 64 MiB a few clients could take the daemon's memory.
const MIN_BODY_BYTES: i64 = 1024;
const MAX_BODY_BYTES: i64 = 64 * 1024 * 1024;

/// Prefix of the override variables, as the `config` crate matches it.
const ENV_PREFIX: &str = "SYNCHRO";
const ENV_SEPARATOR: &str = "__";

/// Key used for problems that concern the file as a whole.
const FILE_KEY: &str = "(file)";

/// One problem found in the configuration. Its key lets `synchro check` point
/// at the exact line to fix; its reason never contains a secret or any value
/// read from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `tenants[0].sources[1].schedule`; for a TOML
    /// syntax error `line L, column C`, for an unreadable file `(file)`, for a
    /// malformed override the variable's name.
    pub key: String,
    /// What is wrong and what is expected instead.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Why a config could not be loaded: every problem found, not just the first,
/// so that one `synchro check` run is enough to fix a file.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration {path}: {} problem(s)", problems.len())]
pub struct ConfigError {
    /// The config file, as given on the command line.
    pub path: String,
    /// In the order found: file sections first, then tenants and sources.
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// The problems one per line as `{path}: {key}: {reason}`, the form
    /// editors and CI logs turn into clickable locations.
    pub fn report(&self) -> String {
        self.problems
            .iter()
            .map(|p| format!("{}: {p}", self.path))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Reads the file at `path`, applies `SYNCHRO__` environment overrides,
/// resolves secrets and validates everything. The process environment is read
/// here and nowhere else, so that [`load_str`] stays testable.
pub fn load(path: &Path, kinds: &dyn KindCatalog) -> Result<Config, ConfigError> {
    read_and_build(path, kinds, Problems::default()).map(|(config, _)| config)
}

/// A config loaded for commands that read or tidy the database but never
/// call an upstream (`status`, `export`, `forget`): an operator's shell
/// usually lacks the service's tokens, and they need the storage and the
/// list of sources, not the tokens.
#[derive(Debug)]
pub struct WithoutSecrets {
    /// The config; each secret in `unresolved` is an empty placeholder that
    /// must never be sent anywhere.
    pub config: Config,
    /// Secrets written correctly whose value this process cannot get (a
    /// variable unset or empty, a file unreadable or empty), for warnings.
    pub unresolved: Vec<Problem>,
}

/// Like [`load`], except that a secret whose value is unavailable is a
/// warning in [`WithoutSecrets::unresolved`] rather than a problem. Every
/// other problem (unknown keys, a malformed secret reference...) still fails.
pub fn load_without_secrets(
    path: &Path,
    kinds: &dyn KindCatalog,
) -> Result<WithoutSecrets, ConfigError> {
    read_and_build(path, kinds, Problems::with_optional_secrets())
        .map(|(config, unresolved)| WithoutSecrets { config, unresolved })
}

/// [`load_without_secrets`] on a text, with `env` for the environment (as
/// [`load_str`]).
pub fn load_str_without_secrets(
    text: &str,
    path: &Path,
    env: &HashMap<String, String>,
    kinds: &dyn KindCatalog,
) -> Result<WithoutSecrets, ConfigError> {
    build(
        text,
        path,
        folder_of(path),
        env,
        kinds,
        Problems::with_optional_secrets(),
    )
    .map(|(config, unresolved)| WithoutSecrets { config, unresolved })
}

/// Reads the process environment and the file, then builds.
fn read_and_build(
    path: &Path,
    kinds: &dyn KindCatalog,
    mut p: Problems,
) -> Result<(Config, Vec<Problem>), ConfigError> {
    let mut env = HashMap::new();
    for (key, value) in std::env::vars_os() {
        let Ok(key) = key.into_string() else { continue };
        match value.into_string() {
            Ok(value) => {
                env.insert(key, value);
            }
            Err(_) if is_override(&key) => {
                p.add(key, "is not valid UTF-8");
            }
            Err(_) => {}
        }
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            p.add(FILE_KEY, format!("cannot read the file: {e}"));
            return Err(ConfigError {
                path: path.display().to_string(),
                problems: p.into_list(),
            });
        }
    };
    // Absolute, so that `check` shows where the database really is and a
    // later change of working directory cannot move it.
    let folder = folder_of(path);
    let folder = std::path::absolute(&folder).unwrap_or(folder);
    build(&text, path, folder, &env, kinds, p)
}

/// The folder of the config file: relative database paths and `{ file = }`
/// secrets are taken from it, not from the working directory, so that every
/// command given the same `--config` reads the same files.
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The loader without I/O on the environment: `env` stands for the process
/// environment (overrides and `{ env = ... }` secrets are read from it only).
/// `path` names the file in messages; its folder, as given, anchors relative
/// database and secret file paths.
pub fn load_str(
    text: &str,
    path: &Path,
    env: &HashMap<String, String>,
    kinds: &dyn KindCatalog,
) -> Result<Config, ConfigError> {
    build(text, path, folder_of(path), env, kinds, Problems::default()).map(|(config, _)| config)
}

/// Whether `var` is a `SYNCHRO__` override (in any case, as the `config`
/// crate matches it).
fn is_override(var: &str) -> bool {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    var.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(&prefix))
}

fn build(
    text: &str,
    path: &Path,
    base_dir: PathBuf,
    env: &HashMap<String, String>,
    kinds: &dyn KindCatalog,
    mut p: Problems,
) -> Result<(Config, Vec<Problem>), ConfigError> {
    let shown = path.display().to_string();
    let fail = |p: Problems| ConfigError {
        path: shown.clone(),
        problems: p.into_list(),
    };
    let map = match parse_toml(text) {
        Ok(map) => map,
        Err((key, reason)) => {
            p.add(key, reason);
            return Err(fail(p));
        }
    };
    let mut root = Value::new(None, ValueKind::Table(map));
    apply_overrides(&mut root, env, &mut p);
    let ValueKind::Table(map) = root.kind else {
        p.add(FILE_KEY, "the configuration is not a table");
        return Err(fail(p));
    };

    let ctx = Ctx { env, base_dir };

    let mut top = Table::new(String::new(), map);
    let storage = storage(top.section("storage", &mut p), &ctx, &mut p);
    let server = server(top.section("server", &mut p), &ctx, &mut p);
    let scheduler = scheduler(top.section("scheduler", &mut p), &mut p);
    let http = http(top.section("http", &mut p), &mut p);
    let tenants = tenants(&mut top, &ctx, kinds, &mut p);
    top.finish(&mut p);

    if !p.is_empty() {
        return Err(fail(p));
    }
    let Some(tenants) = tenants else {
        // Unreachable in practice: a tenant is dropped only with a problem.
        p.add("tenants", "invalid");
        return Err(fail(p));
    };
    let warnings = p.take_warnings();
    let (_, unresolved) = p.into_lists();
    let config = Config {
        path: path.to_path_buf(),
        storage,
        server,
        scheduler,
        http,
        tenants,
        warnings,
    };
    Ok((config, unresolved))
}

/// Parses the TOML text into the `config` crate's value tree. A syntax error
/// becomes a problem keyed by its line and column; the toml crate's snippet of
/// the offending line is dropped, since that line may hold a token.
fn parse_toml(text: &str) -> Result<Map<String, Value>, (String, String)> {
    config::File::from_str(text, FileFormat::Toml)
        .collect()
        .map_err(|e| toml_error(&e.to_string()))
}

fn toml_error(message: &str) -> (String, String) {
    let mut lines = message.lines();
    let header = lines.next().unwrap_or_default();
    let location = header
        .split_once(" at ")
        .map(|(_, loc)| loc.trim().to_string())
        .filter(|loc| loc.starts_with("line "));
    let is_snippet = |l: &str| {
        let t = l.trim_start();
        t.starts_with('|')
            || t.split_once(" |")
                .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
    };
    let reason: Vec<&str> = lines
        .filter(|l| !l.trim().is_empty() && !is_snippet(l))
        .map(str::trim)
        .collect();
    match location {
        Some(loc) if !reason.is_empty() => (loc, format!("invalid TOML: {}", reason.join("; "))),
        Some(loc) => (loc, "invalid TOML".to_string()),
        None => (FILE_KEY.to_string(), "invalid TOML".to_string()),
    }
}

/// Collects the `SYNCHRO__` variables with the `config` crate's `Environment`
/// source and applies them onto the file's tree (see the module docs).
fn apply_overrides(root: &mut Value, env: &HashMap<String, String>, p: &mut Problems) {
    let vars: HashMap<String, String> = env
        .iter()
        .filter(|(k, _)| is_override(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if vars.is_empty() {
        return;
    }
    let collected = Environment::with_prefix(ENV_PREFIX)
        .separator(ENV_SEPARATOR)
        .source(Some(vars))
        .collect();
    let collected = match collected {
        Ok(c) => c,
        Err(_) => {
            // Not quoted: the error would include the variable's value.
            p.add("environment", "the SYNCHRO__ variables could not be read");
            return;
        }
    };
    let mut overrides: Vec<(String, Value)> = collected.into_iter().collect();
    overrides.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, value) in overrides {
        apply_override(root, &key, value, p);
    }
}

fn env_table() -> Value {
    Value::new(Some(&ENV_ORIGIN.to_string()), ValueKind::Table(Map::new()))
}

/// Sets `key` (dotted, as collected: `tenants.0.sources.1.page_size`) in the tree.
fn apply_override(root: &mut Value, key: &str, value: Value, p: &mut Problems) {
    let var = format!(
        "{ENV_PREFIX}{ENV_SEPARATOR}{}",
        key.replace('.', ENV_SEPARATOR).to_ascii_uppercase()
    );
    let segments: Vec<&str> = key.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        p.add(var, "empty key segment: use SYNCHRO__SECTION__KEY");
        return;
    }
    let mut value = Some(value);
    let mut cur = root;
    let mut path = String::new();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if !matches!(cur.kind, ValueKind::Table(_) | ValueKind::Array(_)) {
            // Overriding below a scalar (e.g. `token__env` under a literal
            // token) turns it into a table, as the `config` crate does.
            *cur = env_table();
        }
        let next = match &mut cur.kind {
            ValueKind::Array(items) => {
                let Ok(index) = seg.parse::<usize>() else {
                    p.add(
                        path,
                        format!("is an array: {var} must give an element index here"),
                    );
                    return;
                };
                if index >= items.len() {
                    p.add(
                        format!("{path}[{index}]"),
                        format!(
                            "set by {var}, but the file has {} element(s) here; overrides cannot add elements",
                            items.len()
                        ),
                    );
                    return;
                }
                path = format!("{path}[{index}]");
                &mut items[index]
            }
            ValueKind::Table(map) => {
                path = join(&path, seg);
                map.entry((*seg).to_string()).or_insert_with(env_table)
            }
            _ => return,
        };
        if last {
            if let Some(v) = value.take() {
                *next = v;
            }
            return;
        }
        cur = next;
    }
}

fn storage(mut t: Table, ctx: &Ctx<'_>, p: &mut Problems) -> StorageConfig {
    let database = t
        .string("database", p)
        .filter(|db| match crate::store::database_url_problem(db) {
            None => true,
            Some(why) => {
                // The URL may hold a password: never echoed.
                p.secret_value(db);
                p.add(t.key("database"), why);
                false
            }
        })
        .unwrap_or_else(|| defaults::DATABASE.to_string());
    let database = resolve_database(&database, &ctx.base_dir);
    let password = super::sources::secret(&mut t, "password", false, ctx, p).flatten();
    let pool_size = t
        .int_in("pool_size", 1, 1000, p)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(crate::store::DEFAULT_POOL_SIZE);
    let busy_timeout = t
        .duration("busy_timeout", p)
        .unwrap_or(defaults::BUSY_TIMEOUT);
    let runs_retention = t
        .duration_in(
            "runs_retention",
            defaults::RUNS_RETENTION_MIN,
            defaults::RUNS_RETENTION_MAX,
            p,
        )
        .unwrap_or(defaults::RUNS_RETENTION);
    let tombstone_retention = t
        .duration_in(
            "tombstone_retention",
            defaults::TOMBSTONE_RETENTION_MIN,
            defaults::RUNS_RETENTION_MAX,
            p,
        )
        .unwrap_or(defaults::TOMBSTONE_RETENTION);
    t.finish(p);
    StorageConfig {
        database,
        password,
        pool_size,
        busy_timeout,
        runs_retention,
        tombstone_retention,
    }
}

/// `sqlite://var/x.db` read from `/etc/synchro/synchro.toml` (from the file,
/// an override or the default) → `sqlite:///etc/synchro/var/x.db`: like
/// `{ file = }` secrets, a relative path is taken from the config file's
/// folder, never from the working directory, so that `synchro --config
/// /etc/synchro/synchro.toml status` reads the service's database. Absolute
/// paths and `?query` parameters are kept as written.
fn resolve_database(url: &str, base_dir: &Path) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url.to_string();
    };
    let (file, query) = match rest.split_once('?') {
        Some((file, query)) => (file, Some(query)),
        None => (rest, None),
    };
    let file = Path::new(file);
    if file.is_absolute() {
        return url.to_string();
    }
    let full: PathBuf = base_dir
        .components()
        .chain(file.components())
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("sqlite://{}{query}", full.display())
}

fn server(mut t: Table, ctx: &Ctx<'_>, p: &mut Problems) -> ServerConfig {
    let listen = t
        .string("listen", p)
        .and_then(|s| match s.trim().parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                p.add(
                    t.key("listen"),
                    "expected an IP address and port, e.g. 127.0.0.1:9750 or [::1]:9750",
                );
                None
            }
        })
        .unwrap_or(defaults::LISTEN);
    let max_connections = t
        .int_in("max_connections", 1, MAX_SERVER_CONNECTIONS, p)
        .map_or(defaults::MAX_CONNECTIONS, |n| n as usize);
    let max_body_bytes = t
        .int_in("max_body_bytes", MIN_BODY_BYTES, MAX_BODY_BYTES, p)
        .map_or(defaults::MAX_BODY_BYTES, |n| n as usize);
    let admin_read_token =
        super::sources::secret(&mut t, "admin_read_token", false, ctx, p).flatten();
    t.finish(p);
    ServerConfig {
        listen,
        max_connections,
        max_body_bytes,
        admin_read_token,
    }
}

fn scheduler(mut t: Table, p: &mut Problems) -> SchedulerConfig {
    let max_concurrent_syncs = t
        .int_in("max_concurrent_syncs", 1, 1024, p)
        .map_or(defaults::MAX_CONCURRENT_SYNCS, |n| n as usize);
    let jitter = t.duration("jitter", p).unwrap_or(defaults::JITTER);
    let shutdown_timeout = t
        .duration("shutdown_timeout", p)
        .unwrap_or(defaults::SHUTDOWN_TIMEOUT);
    let lease_ttl = t
        .duration_in(
            "lease_ttl",
            defaults::LEASE_TTL_MIN,
            defaults::LEASE_TTL_MAX,
            p,
        )
        .unwrap_or(defaults::LEASE_TTL);
    t.finish(p);
    SchedulerConfig {
        max_concurrent_syncs,
        jitter,
        shutdown_timeout,
        lease_ttl,
    }
}

fn http(mut t: Table, p: &mut Problems) -> HttpConfig {
    let timeout = t
        .positive_duration("timeout", p)
        .unwrap_or(defaults::TIMEOUT);
    let connect_timeout = t
        .positive_duration("connect_timeout", p)
        .unwrap_or(defaults::CONNECT_TIMEOUT);
    let max_retries = t
        .int_in("max_retries", 0, 100, p)
        .map_or(defaults::MAX_RETRIES, |n| n as u32);
    let initial = t.positive_duration("initial_backoff", p);
    let max = t.positive_duration("max_backoff", p);
    let initial_backoff = initial.unwrap_or(defaults::INITIAL_BACKOFF);
    let max_backoff = max.unwrap_or(defaults::MAX_BACKOFF);
    if initial_backoff > max_backoff && (initial.is_some() || max.is_some()) {
        let key = if max.is_some() {
            "max_backoff"
        } else {
            "initial_backoff"
        };
        p.add(
            t.key(key),
            format!(
                "max_backoff ({}) must not be shorter than initial_backoff ({})",
                fmt_duration(max_backoff),
                fmt_duration(initial_backoff)
            ),
        );
    }
    let per_host_requests_per_second = t
        .positive_float("per_host_requests_per_second", MAX_REQUESTS_PER_SECOND, p)
        .unwrap_or(defaults::PER_HOST_REQUESTS_PER_SECOND);
    let per_host_concurrency = t
        .int_in("per_host_concurrency", 1, MAX_HOST_CONCURRENCY, p)
        .map_or(defaults::PER_HOST_CONCURRENCY, |n| n as usize);
    let hosts = t
        .table("hosts", p)
        .map(|h| host_limits(h, p))
        .unwrap_or_default();
    t.finish(p);
    HttpConfig {
        timeout,
        connect_timeout,
        max_retries,
        initial_backoff,
        max_backoff,
        per_host_requests_per_second,
        per_host_concurrency,
        hosts,
    }
}

/// `[http.hosts."NAME"]` tables: NAME is a host or `host:port`, without a
/// scheme or path; it is stored lowercased, as URLs carry host names.
fn host_limits(mut hosts: Table, p: &mut Problems) -> BTreeMap<String, HostLimits> {
    let mut out = BTreeMap::new();
    for (name, mut t) in hosts.take_all_tables(p) {
        let requests_per_second =
            t.positive_float("requests_per_second", MAX_REQUESTS_PER_SECOND, p);
        let concurrency = t
            .int_in("concurrency", 1, MAX_HOST_CONCURRENCY, p)
            .map(|n| n as usize);
        let key = t.path().to_string();
        t.finish(p);
        let Some(host) = host_key(&name) else {
            p.add(
                key,
                "expected a host name or host:port, e.g. \"api.contentor.com\" or \"127.0.0.1:8080\" (no scheme, no path)",
            );
            continue;
        };
        if out.contains_key(&host) {
            p.add(
                key,
                format!("duplicate host \"{host}\" (names are case-insensitive)"),
            );
            continue;
        }
        out.insert(
            host,
            HostLimits {
                requests_per_second,
                concurrency,
            },
        );
    }
    hosts.finish(p);
    out
}

/// The normalised form of a `[http.hosts]` name (`host` or `host:port`,
/// lowercased), or `None` if it is not one.
fn host_key(name: &str) -> Option<String> {
    if name.is_empty() || name.contains(['/', '@', '?', '#', ' ']) || name.contains("://") {
        return None;
    }
    let url = url::Url::parse(&format!("http://{name}/")).ok()?;
    let host = url.host_str()?;
    if host.is_empty() {
        return None;
    }
    // `url` drops an explicit :80 for http; keep the port as written instead.
    let port = name
        .rsplit_once(':')
        .filter(|(h, _)| !h.ends_with(':') && (!h.contains(':') || h.ends_with(']')))
        .map(|(_, p)| p);
    match port {
        Some(p) => {
            let p: u16 = p.parse().ok()?;
            Some(format!("{host}:{p}"))
        }
        None => Some(host.to_string()),
    }
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Every tenant and its sources; `None` if any of them is invalid.
fn tenants(
    top: &mut Table,
    ctx: &Ctx<'_>,
    kinds: &dyn KindCatalog,
    p: &mut Problems,
) -> Option<Vec<TenantConfig>> {
    let mut out = Vec::new();
    let mut complete = true;
    let mut tenant_ids: HashMap<String, String> = HashMap::new();
    for mut t in top.tables("tenants", p) {
        let id = t.required_string("id", p).filter(|id| {
            let ok = valid_id(id);
            if !ok {
                p.add(t.key("id"), ID_RULE);
            }
            ok
        });
        if let Some(id) = &id {
            if let Some(first) = tenant_ids.get(id) {
                p.add(
                    t.key("id"),
                    format!("duplicate tenant id \"{id}\" (first at {first})"),
                );
            } else {
                tenant_ids.insert(id.clone(), t.path().to_string());
            }
        }
        let tenant = id.clone().unwrap_or_default();
        let read_token = sources::secret(&mut t, "read_token", false, ctx, p).flatten();
        let mut source_ids: HashMap<String, String> = HashMap::new();
        let mut sources = Vec::new();
        for s in t.tables("sources", p) {
            if let Some(sid) = s.peek_str("id").filter(|s| valid_id(s)) {
                if let Some(first) = source_ids.get(sid) {
                    p.add(
                        s.key("id"),
                        format!("duplicate source id \"{sid}\" in this tenant (first at {first})"),
                    );
                } else {
                    source_ids.insert(sid.to_string(), s.path().to_string());
                }
            }
            match sources::source(s, &tenant, ctx, kinds, p) {
                Some(src) => sources.push(src),
                None => complete = false,
            }
        }
        t.finish(p);
        match id {
            Some(id) => out.push(TenantConfig {
                id,
                read_token,
                sources,
            }),
            None => complete = false,
        }
    }
    complete.then_some(out)
}
