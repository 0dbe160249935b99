//! `synchro sync`: one cycle of the named sources in the foreground.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{CliError, load_config, open_store, select_sources};
use crate::config::{Config, SourceKey};
use crate::engine::{Engine, Redactor, RunReport};
use crate::http::HttpClient;
use crate::reporter::Reporter;
use crate::store::{RunOutcome, RunRecord, Store};

pub async fn sync(path: &Path, names: &[String]) -> Result<ExitCode, CliError> {
    let config = load_config(path)?;
    let keys = select_sources(&config, names)?;
    let store = open_store(&config).await?;
    let stop = CancellationToken::new();
    let _reloads = crate::shutdown::install(stop.clone())
        .map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"))?;
    let progress = super::progress::Progress::new(&keys);
    let redactor = Redactor::new(config.secrets());
    let engine = Engine::new(store.clone(), redactor.clone()).with_observer(progress.observer());
    // One client for the runs and the reports: one budget per host.
    let http = HttpClient::new(&config.http, redactor).map_err(|e| anyhow::anyhow!("{e}"))?;
    let reports = sync_once(&config, &keys, &engine, &http, &stop).await?;
    progress.finish();
    send_reports(&config, &keys, &store, &http, &stop).await;
    store.close().await;
    let mut failed = 0;
    for (key, report) in &reports {
        eprintln!("{}", summary(key, report));
        if report.outcome != RunOutcome::Success {
            failed += 1;
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// How long `sync` waits for pending import-state reports before it exits.
const REPORT_DRAIN: Duration = Duration::from_secs(10);

/// Sends the pending import-state reports of the synced sources, for at most
/// [`REPORT_DRAIN`]; what is left waits in the outbox for the next sync or
/// the daemon. Never changes the exit code: reports do not fail a sync.
async fn send_reports(
    config: &Config,
    keys: &[SourceKey],
    store: &Store,
    http: &HttpClient,
    stop: &CancellationToken,
) {
    let reporters = keys
        .iter()
        .filter_map(|k| config.source(k))
        .filter_map(|cfg| Reporter::for_source(store, http, cfg));
    let drains = reporters.map(|r| async move {
        let left = r.drain(REPORT_DRAIN, stop).instrument(r.span()).await;
        match left {
            Ok(0) => {}
            Ok(n) => eprintln!(
                "{}: {n} import-state report(s) still pending; the next sync or the daemon sends them",
                r.key()
            ),
            Err(e) => eprintln!("{}: import-state reports not sent: {e}", r.key()),
        }
    });
    futures::future::join_all(drains).await;
}

/// Runs one sync of each of `keys`, at most `max_concurrent_syncs` at a time.
pub(crate) async fn sync_once(
    config: &Config,
    keys: &[SourceKey],
    engine: &Engine,
    http: &HttpClient,
    stop: &CancellationToken,
) -> Result<Vec<(SourceKey, RunReport)>, CliError> {
    let limit = Arc::new(Semaphore::new(config.scheduler.max_concurrent_syncs.max(1)));
    let runs = keys.iter().map(|key| {
        let limit = limit.clone();
        let http = http.clone();
        async move {
            let Some(cfg) = config.source(key) else {
                return (key.clone(), refused(format!("{key}: not configured")));
            };
            let _permit = limit.acquire_owned().await;
            let report = match crate::sources::build(cfg, &http, stop) {
                Ok(source) => {
                    // A task of its own, on a worker thread, as the daemon's
                    // scheduler runs it: the run and the HTTP connection
                    // tasks it waits on share a worker instead of waking
                    // the thread blocked in `main` for every response.
                    let (engine, key, kind, stop) =
                        (engine.clone(), key.clone(), cfg.kind_name(), stop.clone());
                    let run = tokio::spawn(async move {
                        engine.run(&key, kind, source.as_ref(), &stop).await
                    });
                    match run.await {
                        Ok(report) => report,
                        Err(e) => refused(format!("the sync run ended abnormally: {e}")),
                    }
                }
                Err(msg) => {
                    tracing::error!(tenant = %key.tenant, source = %key.source, error = %msg, "cannot sync");
                    refused(msg)
                }
            };
            (key.clone(), report)
        }
    });
    Ok(futures::future::join_all(runs).await)
}

fn refused(msg: String) -> RunReport {
    RunReport {
        run_id: String::new(),
        outcome: RunOutcome::Failed,
        totals: RunRecord {
            error: Some(msg),
            ..Default::default()
        },
        elapsed: std::time::Duration::ZERO,
    }
}

/// One human line per source run.
pub(crate) fn summary(key: &SourceKey, r: &RunReport) -> String {
    let t = &r.totals;
    let head = format!(
        "{key}: {} — {} page(s), {} upserted, {} deleted in {:.1}s",
        r.outcome.as_str(),
        t.pages,
        t.upserted,
        t.deleted,
        r.elapsed.as_secs_f64()
    );
    match &t.error {
        Some(e) => format!("{head}: {e}"),
        None => head,
    }
}
