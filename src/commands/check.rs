//! `synchro check`: every config problem, and whether the database opens;
//! it prints the database's resolved location (the file or server every
//! other command given the same `--config` uses) and its schema version.

use std::path::Path;
use std::process::ExitCode;

use super::{CliError, EX_CONFIG};

pub async fn check(path: &Path) -> Result<ExitCode, CliError> {
    let config = match crate::config::load(path, &crate::sources::Kinds::builtin()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}", e.report());
            eprintln!("{} problem(s) found", e.problems.len());
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    let (database, schema) = match super::open_store(&config).await {
        Ok(store) => {
            let version = match store.ping().await {
                Ok(()) => store.schema_version().await,
                Err(e) => Err(e),
            };
            store.close().await;
            match version {
                Ok(v) => (store.location(), v),
                Err(e) => {
                    eprintln!("{}: storage.database: {e}", path.display());
                    return Ok(ExitCode::from(EX_CONFIG));
                }
            }
        }
        Err(e) => {
            eprintln!("{}: storage.database: {e}", path.display());
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    for w in &config.warnings {
        eprintln!("{}: warning: {w}", path.display());
    }
    let sources = config.sources().count();
    println!(
        "{}: valid — {} tenant(s), {} source(s); database {} reachable, schema version {}",
        path.display(),
        config.tenants.len(),
        sources,
        database,
        schema
    );
    Ok(ExitCode::SUCCESS)
}
