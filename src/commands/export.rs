//! `synchro export`: JSON Lines on stdout, ordered by tenant, source, id;
//! with `--since SEQ`, the change feed: the changes after SEQ in seq order,
//! and with `--follow` the ones committed later, until a signal.
//!
//! By default only configured sources: a source removed from the config
//! keeps its records until `synchro forget` deletes them, and they must not
//! reappear in an export nobody asked them in. `--all` adds every source
//! stored but no longer configured.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use super::select::{parse, unknown_source};
use super::{CliError, load_config_without_secrets, open_store_read_only, select_sources};
use crate::config::Config;
use crate::model::SourceKey;
use crate::store::{ChangeScope, ExportRow, Store, StoreError};

/// What `export` prints.
pub enum What {
    /// The records (a snapshot), tombstones too if asked.
    Records { include_deleted: bool },
    /// The changes after `since`; with `follow`, until a signal.
    Changes { since: i64, follow: bool },
}

/// Changes read per query of the feed.
const FEED_PAGE: i64 = 1_000;

/// How often `--follow` looks for new changes once it has caught up (the
/// writer is another process: nothing wakes this one).
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// What to export: the names given, or every configured (or, with `--all`,
/// every stored) source.
enum Scope {
    Sources(Vec<SourceKey>),
    Everything,
}

pub async fn export(
    path: &Path,
    names: &[String],
    what: What,
    all: bool,
) -> Result<ExitCode, CliError> {
    // `--follow` ends at SIGINT or SIGTERM: caught from the start, so that
    // one arriving while the config loads or the database opens stops it
    // as cleanly (exit 0) as one arriving later.
    let stop = match what {
        What::Changes { follow: true, .. } => {
            Some(stop_signal().map_err(|e| anyhow::Error::new(e).context("catching signals"))?)
        }
        _ => None,
    };
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
    let mut out = Lines(std::io::BufWriter::with_capacity(
        1 << 16,
        std::io::stdout().lock(),
    ));
    let result = match what {
        What::Records { include_deleted } => {
            let scope = match (keys.is_empty(), all) {
                (false, _) => Scope::Sources(keys),
                (true, true) => Scope::Everything,
                (true, false) => Scope::Sources(select_sources(&config, &[])?),
            };
            match &scope {
                // An empty list would mean "everything" to the store.
                Scope::Sources(keys) if keys.is_empty() => Ok(0),
                Scope::Sources(keys) => {
                    store
                        .export(keys, include_deleted, |row| out.line(&row))
                        .await
                }
                Scope::Everything => {
                    store
                        .export(&[], include_deleted, |row| out.line(&row))
                        .await
                }
            }
        }
        What::Changes { since, .. } => {
            Feed::new(&config, keys, all)
                .print(&store, since, stop.as_ref(), &mut out)
                .await
        }
    };
    let flushed = out.0.flush();
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

/// What `export --since` prints: the changes of the sources named, or of
/// every configured source (every stored one with `--all`).
struct Feed {
    scope: ChangeScope,
    /// Without names or `--all`: the configured sources. The feed is read
    /// whole and filtered here (one seq-ordered scan, whatever the number
    /// of sources), so that the position still moves past other sources'
    /// changes.
    configured: Option<std::collections::HashSet<SourceKey>>,
}

impl Feed {
    fn new(config: &Config, keys: Vec<SourceKey>, all: bool) -> Self {
        match (keys.is_empty(), all) {
            (false, _) => Self {
                scope: ChangeScope::Sources(keys),
                configured: None,
            },
            (true, true) => Self {
                scope: ChangeScope::All,
                configured: None,
            },
            (true, false) => Self {
                scope: ChangeScope::All,
                configured: Some(config.sources().map(|s| s.key()).collect()),
            },
        }
    }

    /// Prints the changes after `since`, each flushed as its page ends
    /// (a reader piping into another program sees them at once); with
    /// `stop` (`--follow`), then waits for new ones until it is cancelled.
    async fn print(
        &self,
        store: &Store,
        mut since: i64,
        stop: Option<&CancellationToken>,
        out: &mut Lines<impl Write>,
    ) -> Result<u64, StoreError> {
        let mut printed = 0;
        loop {
            let page = store.changes(since, &self.scope, FEED_PAGE).await?;
            let caught_up = page.rows.len() < FEED_PAGE as usize;
            for row in page.rows {
                let key = SourceKey::new(row.tenant.as_str(), row.source.as_str());
                if self.configured.as_ref().is_none_or(|c| c.contains(&key)) {
                    out.line(&row).map_err(StoreError::Write)?;
                    printed += 1;
                }
            }
            since = page.next_since;
            if !caught_up {
                continue;
            }
            let Some(stop) = stop else {
                return Ok(printed);
            };
            // Flushes what was printed: nothing else will until a change.
            out.0.flush().map_err(StoreError::Write)?;
            if tokio::time::timeout(FOLLOW_POLL, stop.cancelled())
                .await
                .is_ok()
            {
                return Ok(printed);
            }
        }
    }
}

/// Export lines on a buffered output.
struct Lines<W: Write>(std::io::BufWriter<W>);

impl<W: Write> Lines<W> {
    fn line(&mut self, row: &ExportRow) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.0, row).map_err(std::io::Error::other)?;
        self.0.write_all(b"\n")
    }
}

/// Cancelled at the first SIGINT or SIGTERM.
fn stop_signal() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let stop = CancellationToken::new();
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let cancel = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        cancel.cancel();
    });
    Ok(stop)
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
