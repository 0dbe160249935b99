//! `synchro export`: JSON Lines on stdout, ordered by tenant, source, id.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::{CliError, load_config_without_secrets, open_store_read_only, select_sources};
use crate::store::StoreError;

pub async fn export(
    path: &Path,
    names: &[String],
    include_deleted: bool,
) -> Result<ExitCode, CliError> {
    let config = load_config_without_secrets(path)?;
    let keys = if names.is_empty() {
        Vec::new()
    } else {
        select_sources(&config, names)?
    };
    let store = open_store_read_only(&config).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let result = store
        .export(&keys, include_deleted, |row| {
            serde_json::to_writer(&mut out, &row).map_err(std::io::Error::other)?;
            out.write_all(b"\n")
        })
        .await;
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
