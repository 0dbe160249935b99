//! `synchro forget SOURCE...`: deletes everything stored about sources that
//! left the config (records, progress, runs, import reports), in one
//! transaction. A configured source is refused: the daemon would sync it
//! again from scratch at its next tick (use `reset` for a resync).

use std::path::Path;
use std::process::ExitCode;

use super::select::{parse, unknown_source};
use super::{CliError, load_config_without_secrets};
use crate::model::SourceKey;
use crate::store::Store;

pub async fn forget(path: &Path, names: &[String]) -> Result<ExitCode, CliError> {
    let config = load_config_without_secrets(path)?;
    let mut keys: Vec<SourceKey> = Vec::with_capacity(names.len());
    for name in names {
        let key = parse(name)?;
        if config.source(&key).is_some() {
            return Err(CliError::Usage(format!(
                "{key} is still configured: remove it from {} first (and reload the daemon); \
                 `synchro reset {key}` makes its next sync a full resync instead",
                path.display()
            )));
        }
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let store = Store::connect(&super::target(&config), crate::store::Mode::Existing).await?;
    let result = forget_in(&store, &config, &keys).await;
    store.close().await;
    result
}

async fn forget_in(
    store: &Store,
    config: &crate::config::Config,
    keys: &[SourceKey],
) -> Result<ExitCode, CliError> {
    for key in keys {
        if !store.is_stored(key).await? {
            let removed: Vec<SourceKey> = store
                .stored_sources()
                .await?
                .into_iter()
                .filter(|k| config.source(k).is_none())
                .collect();
            return Err(unknown_source(key, &removed, "stored but not configured"));
        }
    }
    for (key, gone) in store.forget_sources(keys).await? {
        println!(
            "{key}: forgotten ({} records, {} runs, {} import reports{})",
            gone.records,
            gone.runs,
            gone.reports,
            if gone.progress > 0 {
                ", its progress"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
