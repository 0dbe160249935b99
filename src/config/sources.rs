//! Per-source validation: the keys common to every source, then the keys of
//! its `kind`, secrets resolved on the way.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use config::{Value, ValueKind};
use url::{Host, Url};

use super::reader::{Problems, Table, remember_all_strings, type_name};
use super::{
    CalendarAuth, CalendarConfig, ContentConfig, DemarchesConfig, OAuthConfig, Schedule, Secret,
    SecretRef, SourceConfig, SourceKindConfig,
};

/// Secret files are small; a cap keeps a mistaken path (`/dev/zero`, a log)
/// from stalling the loader.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// The source kinds, as written in `kind = "..."`.
pub(super) const KINDS: [&str; 3] = ["demarches", "calendar", "content"];

/// Defaults of the per-kind keys (see DESIGN.md §2 and §5).
pub(super) mod defaults {
    use std::time::Duration;

    pub const DEMARCHES_ENDPOINT: &str = "https://demarche.numerique.gouv.fr/api/v2/graphql";
    pub const CALENDAR_ENDPOINT: &str = "https://www.googleapis.com/calendar/v3";
    pub const CONTENT_ENDPOINT: &str = "https://api.contentor.com/v1";
    pub const PAGE_SIZE: u32 = 100;
    /// Far above any real listing (a million dossiers are 10,000 DS pages,
    /// 200,000 Contentor requests about 12,000), far below forever.
    pub const MAX_PAGES_PER_RUN: u64 = 100_000;
    pub const UPDATED_SINCE: &str = "2000-01-01T00:00:00Z";
    pub const RECONCILE_EVERY: Duration = Duration::from_secs(24 * 3600);
    pub const DELETED_LOOKBACK: Duration = Duration::from_secs(30 * 24 * 3600);
    pub const MAX_RESULTS: u32 = 250;
    pub const SINGLE_EVENTS: bool = false;
    /// Incremental listings always include deletions and reject
    /// `showDeleted=false`, and both listings must use the same value.
    pub const SHOW_DELETED: bool = true;
    /// Reporting import states back is what the content kind is for; it can
    /// be turned off for a read-only copy.
    pub const REPORT_IMPORT_STATE: bool = true;
}

/// What secret resolution needs from outside the file.
pub(super) struct Ctx<'a> {
    pub env: &'a HashMap<String, String>,
    /// Relative `{ file = ... }` paths are taken from the config file's folder,
    /// so a config and its secrets can move together.
    pub base_dir: PathBuf,
}

/// `[A-Za-z0-9_-]{1,64}`: ids appear in `tenant/source` on the command line,
/// in URLs (`/webhooks/content/{tenant}/{source}`) and in metric labels.
pub(super) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(super) const ID_RULE: &str = "must be 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'";

/// Reads one `[[tenants.sources]]` table. Returns `None` when anything in it
/// is wrong; every problem is in `p` either way.
pub(super) fn source(
    mut t: Table,
    tenant: &str,
    ctx: &Ctx<'_>,
    p: &mut Problems,
) -> Option<SourceConfig> {
    let id = t.required_string("id", p);
    let id = id.filter(|id| {
        let ok = valid_id(id);
        if !ok {
            p.add(t.key("id"), ID_RULE);
        }
        ok
    });
    let kind = t.required_string("kind", p);
    let kind = kind.filter(|k| {
        let ok = KINDS.contains(&k.as_str());
        if !ok {
            p.add(
                t.key("kind"),
                format!("unknown source kind; expected one of: {}", KINDS.join(", ")),
            );
        }
        ok
    });
    let schedule = t
        .required_string("schedule", p)
        .and_then(|s| match Schedule::parse(&s) {
            Ok(s) => Some(s),
            Err(e) => {
                p.add(t.key("schedule"), e.to_string());
                None
            }
        });
    let endpoint = t.string("endpoint", p);
    let max_pages_per_run = t
        .int_in("max_pages_per_run", 1, i64::MAX, p)
        .map_or(defaults::MAX_PAGES_PER_RUN, |n| n as u64);

    let Some(kind) = kind else {
        // Without a kind the other keys cannot be judged; report none of them.
        t.discard(p);
        return None;
    };
    let default_endpoint = match kind.as_str() {
        "demarches" => defaults::DEMARCHES_ENDPOINT,
        "calendar" => defaults::CALENDAR_ENDPOINT,
        _ => defaults::CONTENT_ENDPOINT,
    };
    let endpoint = match endpoint {
        Some(e) => check_url(&e).map_err(|r| p.add(t.key("endpoint"), r)).ok(),
        None => Url::parse(default_endpoint).ok(),
    };
    let kind = match kind.as_str() {
        "demarches" => demarches(&mut t, ctx, p).map(SourceKindConfig::Demarches),
        "calendar" => calendar(&mut t, ctx, p).map(SourceKindConfig::Calendar),
        _ => content(&mut t, ctx, p).map(SourceKindConfig::Content),
    };
    t.finish(p);
    Some(SourceConfig {
        tenant: tenant.to_string(),
        id: id?,
        schedule: schedule?,
        endpoint: endpoint?,
        max_pages_per_run,
        kind: kind?,
    })
}

fn demarches(t: &mut Table, ctx: &Ctx<'_>, p: &mut Problems) -> Option<DemarchesConfig> {
    let token = secret(t, "token", true, ctx, p);
    let demarche = if t.require("demarche", p) {
        t.int_in("demarche", 1, i64::MAX, p)
    } else {
        None
    };
    let page_size = t
        .int_in("page_size", 1, 100, p)
        .map_or(defaults::PAGE_SIZE, |n| n as u32);
    let updated_since =
        rfc3339(t, "updated_since", p).unwrap_or_else(|| defaults::UPDATED_SINCE.to_string());
    let reconcile_every = t
        .positive_duration("reconcile_every", p)
        .unwrap_or(defaults::RECONCILE_EVERY);
    let deleted_lookback = t
        .duration("deleted_lookback", p)
        .unwrap_or(defaults::DELETED_LOOKBACK);
    Some(DemarchesConfig {
        token: token??,
        demarche: demarche?,
        page_size,
        updated_since,
        reconcile_every,
        deleted_lookback,
    })
}

fn calendar(t: &mut Table, ctx: &Ctx<'_>, p: &mut Problems) -> Option<CalendarConfig> {
    let calendar_id = t.required_string("calendar_id", p).filter(|c| {
        let ok = !c.trim().is_empty();
        if !ok {
            p.add(t.key("calendar_id"), "must not be empty");
        }
        ok
    });
    let has_token = t.contains("access_token");
    let access_token = secret(t, "access_token", false, ctx, p);
    let oauth = t.table("oauth", p).map(|o| oauth(o, ctx, p));
    let auth = match (has_token, oauth) {
        (true, Some(_)) => {
            p.add(t.key("oauth"), "set either access_token or oauth, not both");
            None
        }
        (true, None) => access_token.flatten().map(CalendarAuth::AccessToken),
        (false, Some(o)) => o.map(CalendarAuth::OAuth),
        (false, None) => {
            // A mistyped `oauth` was already reported; don't pile on.
            if !p.has_key(&t.key("oauth")) {
                p.add(
                    t.key("access_token"),
                    "missing: set access_token, or oauth = { token_url, client_id, client_secret, refresh_token }",
                );
            }
            None
        }
    };
    let max_results = t
        .int_in("max_results", 1, 2500, p)
        .map_or(defaults::MAX_RESULTS, |n| n as u32);
    let single_events = t
        .bool("single_events", p)
        .unwrap_or(defaults::SINGLE_EVENTS);
    let show_deleted = t.bool("show_deleted", p).unwrap_or(defaults::SHOW_DELETED);
    let time_min = rfc3339(t, "time_min", p);
    let channel_token = secret(t, "channel_token", false, ctx, p);
    Some(CalendarConfig {
        calendar_id: calendar_id?,
        auth: auth?,
        max_results,
        single_events,
        show_deleted,
        time_min,
        channel_token: channel_token?,
    })
}

fn oauth(mut o: Table, ctx: &Ctx<'_>, p: &mut Problems) -> Option<OAuthConfig> {
    let token_url = o
        .required_string("token_url", p)
        .and_then(|u| check_url(&u).map_err(|r| p.add(o.key("token_url"), r)).ok());
    let client_id = o.required_string("client_id", p).filter(|c| {
        let ok = !c.trim().is_empty();
        if !ok {
            p.add(o.key("client_id"), "must not be empty");
        }
        ok
    });
    let client_secret = secret(&mut o, "client_secret", true, ctx, p);
    let refresh_token = secret(&mut o, "refresh_token", true, ctx, p);
    o.finish(p);
    Some(OAuthConfig {
        token_url: token_url?,
        client_id: client_id?,
        client_secret: client_secret??,
        refresh_token: refresh_token??,
    })
}

fn content(t: &mut Table, ctx: &Ctx<'_>, p: &mut Problems) -> Option<ContentConfig> {
    let token = secret(t, "token", true, ctx, p);
    let report_import_state = t
        .bool("report_import_state", p)
        .unwrap_or(defaults::REPORT_IMPORT_STATE);
    let webhook_token = secret(t, "webhook_token", false, ctx, p);
    Some(ContentConfig {
        token: token??,
        report_import_state,
        webhook_token: webhook_token?,
    })
}

/// An optional RFC 3339 date-time, kept as written (TOML date-times arrive as
/// their text form).
fn rfc3339(t: &mut Table, key: &'static str, p: &mut Problems) -> Option<String> {
    let s = t.string(key, p)?;
    match chrono::DateTime::parse_from_rfc3339(s.trim()) {
        Ok(_) => Some(s.trim().to_string()),
        Err(e) => {
            p.add(
                t.key(key),
                format!(
                    "expected an RFC 3339 date-time with offset, e.g. \"2000-01-01T00:00:00Z\" ({e})"
                ),
            );
            None
        }
    }
}

/// An upstream URL: https anywhere, plain http only to a loopback address
/// (the simulator). Messages do not quote the URL, which may carry a key in
/// its query string.
pub(super) fn check_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s.trim()).map_err(|e| format!("not a valid URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials; use the source's secret keys".into());
    }
    let loopback = match url.host() {
        None => return Err("must have a host".into()),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(a)) => a.is_loopback(),
        Some(Host::Ipv6(a)) => a.is_loopback(),
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(
            "plain http is only allowed to a loopback address (127.0.0.1, ::1, localhost); use https"
                .into(),
        ),
        _ => Err("the scheme must be https (or http to a loopback address)".into()),
    }
}

/// Reads and resolves a secret key. `None`: a problem was reported.
/// `Some(None)`: optional and absent.
fn secret(
    t: &mut Table,
    key: &'static str,
    required: bool,
    ctx: &Ctx<'_>,
    p: &mut Problems,
) -> Option<Option<Secret>> {
    let path = t.key(key);
    let Some(v) = t.take(key) else {
        if required {
            p.add(path, "missing required key");
            return None;
        }
        return Some(None);
    };
    resolve_secret(v, &path, ctx, p).map(Some)
}

const SECRET_FORMS: &str = "a string, { env = \"VAR\" } or { file = \"/path\" }";

fn resolve_secret(v: Value, path: &str, ctx: &Ctx<'_>, p: &mut Problems) -> Option<Secret> {
    match v.kind {
        ValueKind::String(s) => {
            p.secret_value(&s);
            if s.trim().is_empty() {
                p.add(path, "is empty");
                return None;
            }
            Some(Secret::new(s, SecretRef::Literal))
        }
        ValueKind::Table(map) => {
            let mut t = Table::new(path.to_string(), map);
            let env = t.string("env", p);
            let file = t.string("file", p);
            t.finish(p);
            match (env, file) {
                (Some(_), Some(_)) => {
                    p.add(path, "set either env or file, not both");
                    None
                }
                (Some(var), None) => from_env_var(&var, path, ctx, p),
                (None, Some(file)) => from_file(&file, path, ctx, p),
                (None, None) => {
                    if !p.has_key_prefix(path) {
                        p.add(path, format!("expected {SECRET_FORMS}"));
                    }
                    None
                }
            }
        }
        _ => {
            remember_all_strings(&v, p);
            p.add(
                path,
                format!("expected {SECRET_FORMS}, found {}", type_name(&v)),
            );
            None
        }
    }
}

fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn from_env_var(var: &str, path: &str, ctx: &Ctx<'_>, p: &mut Problems) -> Option<Secret> {
    if !valid_env_name(var) {
        // Not quoted: a token pasted here by mistake must not be echoed.
        p.secret_value(var);
        p.add(
            path,
            "env must name an environment variable ([A-Za-z_][A-Za-z0-9_]*)",
        );
        return None;
    }
    let origin = SecretRef::Env(var.to_string());
    match ctx.env.get(var) {
        None => unavailable(
            path,
            format!("environment variable {var} is not set"),
            origin,
            p,
        ),
        Some(value) => {
            p.secret_value(value);
            let value = value.trim();
            if value.is_empty() {
                return unavailable(
                    path,
                    format!("environment variable {var} is empty"),
                    origin,
                    p,
                );
            }
            Some(Secret::new(value, origin))
        }
    }
}

/// A secret this process cannot get: a problem, or (for commands that send
/// no token) a warning and an empty placeholder that is never sent.
fn unavailable(path: &str, reason: String, origin: SecretRef, p: &mut Problems) -> Option<Secret> {
    p.secret_unavailable(path, reason)
        .then(|| Secret::new("", origin))
}

fn from_file(file: &str, path: &str, ctx: &Ctx<'_>, p: &mut Problems) -> Option<Secret> {
    let file_path = Path::new(file.trim());
    let full = if file_path.is_relative() {
        ctx.base_dir.join(file_path)
    } else {
        file_path.to_path_buf()
    };
    let mut buf = Vec::new();
    let read = std::fs::File::open(&full).and_then(|f| {
        let mode = f.metadata().map(|m| file_mode(&m))?;
        f.take(MAX_SECRET_FILE + 1).read_to_end(&mut buf)?;
        Ok(mode)
    });
    let mode = match read {
        Ok(mode) => mode,
        Err(e) => {
            let reason = format!("cannot read secret file {}: {e}", full.display());
            return unavailable(path, reason, SecretRef::File(full), p);
        }
    };
    if let Some(mode) = mode.filter(|m| m & 0o077 != 0) {
        p.warn(
            path,
            format!(
                "secret file {} is accessible to group or others (mode {:04o}); \
                 make it readable by its owner only (chmod 600)",
                full.display(),
                mode & 0o7777
            ),
        );
    }
    if buf.len() as u64 > MAX_SECRET_FILE {
        p.add(
            path,
            format!(
                "secret file {} is larger than {} KiB",
                full.display(),
                MAX_SECRET_FILE / 1024
            ),
        );
        return None;
    }
    let Ok(text) = String::from_utf8(buf) else {
        p.add(
            path,
            format!("secret file {} is not valid UTF-8", full.display()),
        );
        return None;
    };
    p.secret_value(&text);
    // Files written by `echo` or editors end with a newline that is not part
    // of the token.
    let value = text.trim();
    if value.is_empty() {
        let reason = format!("secret file {} is empty", full.display());
        return unavailable(path, reason, SecretRef::File(full), p);
    }
    Some(Secret::new(value, SecretRef::File(full)))
}

/// The permission bits of a secret file, where the platform has them.
#[cfg(unix)]
fn file_mode(m: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    Some(m.permissions().mode())
}

#[cfg(not(unix))]
fn file_mode(_: &std::fs::Metadata) -> Option<u32> {
    None
}
