//! Per-source validation: the keys common to every source, then the keys of
//! its `kind`, secrets resolved on the way.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use config::{Value, ValueKind};
use url::{Host, Url};

use super::kind::{KindCatalog, KindKeys};
use super::reader::{Problems, Table, remember_all_strings, type_name};
use super::{Schedule, Secret, SecretRef, SourceConfig};

/// Secret files are small; a cap keeps a mistaken path (`/dev/zero`, a log)
/// from stalling the loader.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Far above any real listing (a million dossiers are 10,000 DS pages,
/// 200,000 Contentor requests about 12,000), far below forever.
const MAX_PAGES_PER_RUN: u64 = 100_000;

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
    kinds: &dyn KindCatalog,
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
    let kind = kind.and_then(|k| match kinds.default_endpoint(&k) {
        Some(endpoint) => Some((k, endpoint)),
        None => {
            p.add(
                t.key("kind"),
                format!(
                    "unknown source kind; expected one of: {}",
                    kinds.names().join(", ")
                ),
            );
            None
        }
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
        .map_or(MAX_PAGES_PER_RUN, |n| n as u64);

    let Some((kind, default_endpoint)) = kind else {
        // Without a kind the other keys cannot be judged; report none of them.
        t.discard(p);
        return None;
    };
    let endpoint = match endpoint {
        Some(e) => check_url(&e).map_err(|r| p.add(t.key("endpoint"), r)).ok(),
        None => Url::parse(default_endpoint).ok(),
    };
    let kind = kinds.read(&kind, &mut KindKeys::new(&mut t, ctx, p));
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
pub(super) fn secret(
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
