//! `synchro reset`: the next sync of these sources is a full resync.

use std::path::Path;
use std::process::ExitCode;

use super::{CliError, load_config, open_store, select_sources};

pub async fn reset(path: &Path, names: &[String]) -> Result<ExitCode, CliError> {
    let config = load_config(path)?;
    let keys = select_sources(&config, names)?;
    let store = open_store(&config).await?;
    for key in &keys {
        let had = store.reset_progress(key).await?;
        if had {
            println!(
                "{key}: progress forgotten; the next sync is a full resync (records are kept until it replaces them)"
            );
        } else {
            println!("{key}: no stored progress; the next sync is a full sync");
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
