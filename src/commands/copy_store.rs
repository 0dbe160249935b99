//! `synchro copy-store --to URL`: copies the database the config names into
//! another, empty one (SQLite to Postgres when outgrowing one machine), then
//! proves the copy: the export of every source, tombstones included, is
//! byte for byte the same on both sides (compared by digest).
//!
//! The target's password never appears on the command line (other users
//! see it in `ps`): `--to-password-env VAR` or `--to-password-file PATH`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sha2::{Digest, Sha256};

use super::{CliError, load_config, open_store_read_only};
use crate::store::{Mode, Store, Table, Target};

/// Where the copy goes, as the command line gives it.
pub struct CopyTarget<'a> {
    pub url: &'a str,
    pub password_env: Option<&'a str>,
    pub password_file: Option<&'a PathBuf>,
}

pub async fn copy_store(path: &Path, to: CopyTarget<'_>) -> Result<ExitCode, CliError> {
    let config = load_config(path)?;
    if let Some(why) = crate::store::database_url_problem(to.url) {
        return Err(CliError::Usage(format!("--to: {why}")));
    }
    let password = match (to.password_env, to.password_file) {
        (Some(var), _) => Some(std::env::var(var).map_err(|_| {
            CliError::Usage(format!("--to-password-env {var}: the variable is not set"))
        })?),
        (None, Some(file)) => Some(
            std::fs::read_to_string(file)
                .map_err(|e| {
                    CliError::Usage(format!("--to-password-file {}: {e}", file.display()))
                })?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        ),
        (None, None) => None,
    };
    let from = open_store_read_only(&config).await?;
    let target = Target {
        url: to.url.to_string(),
        password,
        pool_size: crate::store::DEFAULT_POOL_SIZE,
        busy_timeout: config.storage.busy_timeout,
    };
    let into = match Store::connect(&target, Mode::Create).await {
        Ok(store) => store,
        Err(e) => {
            from.close().await;
            return Err(e.into());
        }
    };
    let result = copy_and_verify(&from, &into).await;
    from.close().await;
    into.close().await;
    result
}

async fn copy_and_verify(from: &Store, into: &Store) -> Result<ExitCode, CliError> {
    eprintln!("copying {} into {}", from.location(), into.location());
    let copied = from
        .copy_to(into, |table, n| {
            tracing::debug!(table = table.name(), rows = n, "copied a batch");
        })
        .await?;
    for (table, n) in Table::ALL.iter().zip(copied.rows) {
        println!("{}: {n} row(s) copied", table.name());
    }
    let (a, rows_a) = export_digest(from).await?;
    let (b, rows_b) = export_digest(into).await?;
    if a != b || rows_a != rows_b {
        return Err(CliError::Other(anyhow::anyhow!(
            "the copy differs from the original: {rows_a} export line(s) with digest {a} in {}, \
             {rows_b} with digest {b} in {}",
            from.location(),
            into.location()
        )));
    }
    println!(
        "verified: the export of every source, tombstones included, is identical ({rows_a} line(s), sha256 {a})"
    );
    Ok(ExitCode::SUCCESS)
}

/// The SHA-256 of the full export (every stored source, tombstones
/// included), as `synchro export --all --include-deleted` prints it.
async fn export_digest(store: &Store) -> Result<(String, u64), CliError> {
    let mut hasher = Sha256::new();
    let lines = store
        .export(&[], true, |row| {
            let line = serde_json::to_vec(&row).map_err(std::io::Error::other)?;
            hasher.update(&line);
            hasher.update(b"\n");
            Ok(())
        })
        .await?;
    Ok((format!("{:x}", hasher.finalize()), lines))
}
