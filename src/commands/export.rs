//! `synchro export`: JSON Lines on stdout, ordered by tenant, source, id.
//!
//! By default only configured sources: a source removed from the config
//! keeps its records until `synchro forget` deletes them, and they must not
//! reappear in an export nobody asked them in. `--all` adds every source
//! stored but no longer configured.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::select::{parse, unknown_source};
use super::{CliError, load_config_without_secrets, open_store_read_only, select_sources};
use crate::config::{Config, SourceKey};
use crate::store::{Store, StoreError};

/// What to export: the names given, or every configured (or, with `--all`,
/// every stored) source.
enum Scope {
    Sources(Vec<SourceKey>),
    Everything,
}

pub async fn export(
    path: &Path,
    names: &[String],
    include_deleted: bool,
    all: bool,
) -> Result<ExitCode, CliError> {
    let config = load_config_without_secrets(path)?;
    let store = open_store_read_only(&config).await?;
    let scope = match scope(&config, &store, names, all).await {
        Ok(scope) => scope,
        Err(e) => {
            store.close().await;
            return Err(e);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut write = |row| {
        serde_json::to_writer(&mut out, &row).map_err(std::io::Error::other)?;
        out.write_all(b"\n")
    };
    let result = match &scope {
        // An empty list would mean "everything" to the store.
        Scope::Sources(keys) if keys.is_empty() => Ok(0),
        Scope::Sources(keys) => store.export(keys, include_deleted, &mut write).await,
        Scope::Everything => store.export(&[], include_deleted, &mut write).await,
    };
    let flushed = out.flush();
    drop(out);
    store.close().await;
    match (result, flushed) {
        (Ok(_), Ok(())) => Ok(ExitCode::SUCCESS),
        // `synchro export | head` closes the pipe early: not an error.
        (Err(StoreError::Write(e)), _) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(ExitCode::SUCCESS)
        }
        (_, Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        (Err(e), _) => Err(anyhow::anyhow!("{e}").into()),
        (_, Err(e)) => Err(anyhow::anyhow!("writing export: {e}").into()),
    }
}

/// Checks the names against the config (and, with `--all`, the store).
async fn scope(
    config: &Config,
    store: &Store,
    names: &[String],
    all: bool,
) -> Result<Scope, CliError> {
    let stored_error = |e: StoreError| CliError::Other(anyhow::anyhow!("{e}"));
    if names.is_empty() {
        return Ok(if all {
            Scope::Everything
        } else {
            Scope::Sources(select_sources(config, names)?)
        });
    }
    let mut keys = Vec::with_capacity(names.len());
    for name in names {
        let key = parse(name)?;
        let known = config.source(&key).is_some()
            || (all && store.is_stored(&key).await.map_err(stored_error)?);
        if !known {
            return Err(unknown(config, store, key, all).await);
        }
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(Scope::Sources(keys))
}

/// The unknown-source error; for a source that is stored but no longer
/// configured, it says how to export it anyway.
async fn unknown(config: &Config, store: &Store, key: SourceKey, all: bool) -> CliError {
    let configured: Vec<SourceKey> = config.sources().map(|s| s.key()).collect();
    if !all {
        if let Ok(true) = store.is_stored(&key).await {
            return CliError::Usage(format!(
                "{key} is not configured any more; its stored records are exported with \
                 `synchro export --all {key}` (and deleted with `synchro forget {key}`)"
            ));
        }
        return unknown_source(&key, &configured, "configured");
    }
    let mut known = store.stored_sources().await.unwrap_or_default();
    known.extend(configured);
    known.sort();
    known.dedup();
    unknown_source(&key, &known, "configured or stored")
}
