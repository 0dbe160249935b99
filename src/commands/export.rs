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
use crate::config::Config;
use crate::model::SourceKey;
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
    // Names are checked against the config before the database is opened:
    // a malformed or unknown name is a usage error (exit 2) even where
    // there is no database; only `--all` needs the store to judge a name.
    let mut keys: Vec<SourceKey> = Vec::with_capacity(names.len());
    for name in names {
        let key = parse(name)?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let unconfigured: Vec<SourceKey> = keys
        .iter()
        .filter(|k| config.source(k).is_none())
        .cloned()
        .collect();
    if let (Some(key), false) = (unconfigured.first(), all) {
        return Err(not_configured(&config, key).await);
    }
    let store = open_store_read_only(&config).await?;
    if let Err(e) = all_stored(&config, &store, &unconfigured).await {
        store.close().await;
        return Err(e);
    }
    let scope = match (keys.is_empty(), all) {
        (false, _) => Scope::Sources(keys),
        (true, true) => Scope::Everything,
        (true, false) => Scope::Sources(select_sources(&config, &[])?),
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
        (Err(e), _) => Err(e.into()),
        (_, Err(e)) => Err(anyhow::Error::new(e).context("writing export").into()),
    }
}

/// The error for a name that is not configured, without `--all`: for a
/// source still stored, how to export it anyway.
async fn not_configured(config: &Config, key: &SourceKey) -> CliError {
    if let Ok(store) = super::open_store_read_only(config).await {
        let stored = store.is_stored(key).await;
        store.close().await;
        if let Ok(true) = stored {
            return CliError::Usage(format!(
                "{key} is not configured any more; its stored records are exported with \
                 `synchro export --all {key}` (and deleted with `synchro forget {key}`)"
            ));
        }
    }
    let configured: Vec<SourceKey> = config.sources().map(|s| s.key()).collect();
    unknown_source(key, &configured, "configured")
}

/// With `--all`, a name that is not configured must at least be stored.
async fn all_stored(
    config: &Config,
    store: &Store,
    unconfigured: &[SourceKey],
) -> Result<(), CliError> {
    for key in unconfigured {
        if !store.is_stored(key).await? {
            let mut known = store.stored_sources().await?;
            known.extend(config.sources().map(|s| s.key()));
            known.sort();
            known.dedup();
            return Err(unknown_source(key, &known, "configured or stored"));
        }
    }
    Ok(())
}
