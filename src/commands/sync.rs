//! `synchro sync`: one cycle of the named sources in the foreground.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::assemble::Parts;
use super::{CliError, load_config, open_store, select_sources};
use crate::config::Config;
use crate::engine::{Attempt, Engine, Job, RunReport};
use crate::http::HttpClient;
use crate::model::{RunOutcome, RunRecord, SourceKey};
use crate::reporter::Reporter;
use crate::sources::Source;
use crate::store::{Holder, Store};

/// Syncs `names` (all if empty) once. A source that another run holds is
/// waited for up to `wait` (`None`: not at all), then synced.
pub async fn sync(
    path: &Path,
    names: &[String],
    wait: Option<Duration>,
) -> Result<ExitCode, CliError> {
    let config = load_config(path)?;
    let keys = select_sources(&config, names)?;
    let store = open_store(&config).await?;
    let stop = CancellationToken::new();
    let _reloads =
        crate::shutdown::install(stop.clone()).context("cannot install signal handlers")?;
    let progress = super::progress::Progress::new(&keys);
    // One client for the runs and the reports: one budget per host.
    let Parts { http, engine, .. } = Parts::new(&config, store.clone(), Default::default())?;
    let engine = engine.with_observer(progress.observer());
    let results = sync_once(&config, &keys, &engine, &http, &stop, wait).await?;
    progress.finish();
    send_reports(&config, &keys, &store, &http, &stop).await;
    store.close().await;
    let (mut failed, mut busy, mut cancelled) = (0, 0, 0);
    for (key, result) in &results {
        match result {
            SyncResult::Ran(report) => {
                super::progress::report_run(key, report);
                match report.outcome {
                    RunOutcome::Success => {}
                    RunOutcome::Cancelled => cancelled += 1,
                    RunOutcome::Failed => failed += 1,
                }
            }
            SyncResult::Busy(holder) => {
                super::progress::report_busy(key, holder);
                busy += 1;
            }
        }
    }
    // A failure says more than an interruption or a busy source: it needs
    // a look, they only a later try.
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else if cancelled > 0 || stop.is_cancelled() {
        ExitCode::from(EX_INTERRUPTED)
    } else if busy > 0 {
        ExitCode::from(super::EX_TEMPFAIL)
    } else {
        ExitCode::SUCCESS
    })
}

/// The shell's code for a command ended by SIGINT (128 + 2): a `sync`
/// stopped by Ctrl-C or SIGTERM, its runs `cancelled` after their last
/// committed page. Not a failure.
const EX_INTERRUPTED: u8 = 130;

/// What `sync` did with one source.
#[derive(Debug)]
pub(crate) enum SyncResult {
    Ran(RunReport),
    /// Another run held it, past the wait (or with `--no-wait`).
    Busy(Holder),
}

/// How often a waiting `sync` asks again for a held source.
const BUSY_POLL: Duration = Duration::from_millis(500);

/// `acme/cal is being synced by pid 1234 on host-a since 12:03:01 UTC`.
pub(crate) fn busy_line(key: &SourceKey, holder: &Holder) -> String {
    format!("{key} is being synced by {holder} (run {})", holder.run_id)
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
            Ok(n) => super::progress::report_line(
                r.key(),
                &format!("{n} import-state report(s) still pending; the next sync or the daemon sends them"),
            ),
            Err(e) => super::progress::report_line(r.key(), &format!("import-state reports not sent: {e}")),
        }
    });
    futures::future::join_all(drains).await;
}

/// Runs one sync of each of `keys`, at most `max_concurrent_syncs` at a
/// time; a source another run holds is waited for up to `wait`.
pub(crate) async fn sync_once(
    config: &Config,
    keys: &[SourceKey],
    engine: &Engine,
    http: &HttpClient,
    stop: &CancellationToken,
    wait: Option<Duration>,
) -> Result<Vec<(SourceKey, SyncResult)>, CliError> {
    let limit = Arc::new(Semaphore::new(config.scheduler.max_concurrent_syncs.max(1)));
    let runs = keys.iter().map(|key| {
        let limit = limit.clone();
        let http = http.clone();
        async move {
            let Some(cfg) = config.source(key) else {
                let msg = format!("{key}: not configured");
                return (key.clone(), SyncResult::Ran(refused(msg)));
            };
            let source: Arc<dyn Source> = match crate::sources::build(cfg, &http, stop) {
                Ok(source) => Arc::from(source),
                Err(msg) => {
                    tracing::error!(tenant = %key.tenant, source = %key.source, error = %msg, "cannot sync");
                    return (key.clone(), SyncResult::Ran(refused(msg)));
                }
            };
            let until = wait.map(|w| tokio::time::Instant::now() + w);
            let mut told = false;
            loop {
                let attempt = {
                    // The sync slot is held for a run, not for a wait.
                    let _permit = limit.acquire().await;
                    // A task of its own, on a worker thread, as the
                    // daemon's scheduler runs it: the run and the HTTP
                    // connection tasks it waits on share a worker instead
                    // of waking the thread blocked in `main` for every
                    // response.
                    let (engine, job, stop, source) =
                        (engine.clone(), Job::of(cfg), stop.clone(), source.clone());
                    let run =
                        tokio::spawn(
                            async move { engine.run(&job, source.as_ref(), &stop).await },
                        );
                    match run.await {
                        Ok(attempt) => attempt,
                        Err(e) => Attempt::Ran(refused(format!(
                            "the sync run ended abnormally: {e}"
                        ))),
                    }
                };
                let holder = match attempt {
                    Attempt::Ran(report) => return (key.clone(), SyncResult::Ran(report)),
                    Attempt::Busy(holder) => holder,
                };
                let now = tokio::time::Instant::now();
                let Some(until) = until.filter(|u| *u > now && !stop.is_cancelled()) else {
                    return (key.clone(), SyncResult::Busy(holder));
                };
                if !told {
                    told = true;
                    let left = until - now;
                    tracing::info!(tenant = %key.tenant, source = %key.source, %holder,
                        "waiting up to {} for the run holding the source to end",
                        humantime::format_duration(Duration::from_secs(left.as_secs())));
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(until.min(now + BUSY_POLL)) => {}
                    _ = stop.cancelled() => {}
                }
            }
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
