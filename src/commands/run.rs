//! `synchro run`: the daemon.

use std::path::Path;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{CliError, load_config, open_store};
use crate::config::Config;
use crate::engine::{Engine, Redactor};
use crate::http::HttpClient;
use crate::notify::{self, Watchdog};
use crate::scheduler::Scheduler;
use crate::server::{Readiness, Webhooks, router, serve};
use crate::shutdown::Request;
use crate::store::Store;

pub async fn run(path: &Path) -> Result<ExitCode, CliError> {
    let mut config = load_config(path)?;
    for w in &config.warnings {
        tracing::warn!(key = %w.key, "{}", w.reason);
    }
    let stop = CancellationToken::new();
    let mut requests = crate::shutdown::install(stop.clone())
        .map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"))?;
    let store = open_store(&config).await?;
    let watchdog = Watchdog::start(store.clone());

    let listener = TcpListener::bind(config.server.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "server.listen: cannot listen on {}: {e}",
            config.server.listen
        )
    })?;
    let metrics = match crate::metrics::install() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "metrics disabled");
            None
        }
    };
    let ready = Readiness::default();
    let hooks = Webhooks::default();
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        router(ready.clone(), hooks.clone(), metrics),
        server_stop.clone(),
    ));

    let mut scheduler = start(&config, &store, &stop).await?;
    hooks.install(&config, scheduler.triggers(), &store);
    watchdog.watch(scheduler.liveness());
    ready.set(true);
    notify::ready(&running_status(&config));
    tracing::info!(listen = %config.server.listen, "synchro is running");

    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            req = requests.recv() => match req {
                Some(Request::Reload) => {
                    notify::reloading();
                    match crate::config::load(path) {
                        Err(e) => tracing::error!(problems = %e.report(), "SIGHUP: new configuration rejected; keeping the running one"),
                        Ok(new) => {
                            scheduler = reload(scheduler, &config, &new, &store, &stop).await?;
                            if new.server.listen != config.server.listen {
                                tracing::warn!("SIGHUP: server.listen changed; it takes effect at the next restart");
                            }
                            config = new;
                            hooks.install(&config, scheduler.triggers(), &store);
                            watchdog.watch(scheduler.liveness());
                        }
                    }
                    // Accepted or rejected, a configuration is running again.
                    notify::ready(&running_status(&config));
                }
                None => break,
            },
        }
    }

    ready.set(false);
    notify::stopping();
    hooks.clear();
    tracing::info!("shutting down");
    let drained = scheduler.shutdown(config.scheduler.shutdown_timeout).await;
    server_stop.cancel();
    let _ = server.await;
    watchdog.stop().await;
    store.close().await;
    if !drained {
        tracing::warn!("some syncs were cut at the deadline; their last committed page is kept");
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Applies a new valid configuration: source by source when only sources
/// changed, or by restarting the scheduler when global settings changed.
async fn reload(
    mut scheduler: Scheduler,
    old: &Config,
    new: &Config,
    store: &Store,
    stop: &CancellationToken,
) -> Result<Scheduler, CliError> {
    if scheduler.can_reload(old, new) {
        match scheduler
            .reload(old, new, new.scheduler.shutdown_timeout)
            .await
        {
            Ok(s) => tracing::info!(
                added = ?s.added.iter().map(ToString::to_string).collect::<Vec<_>>(),
                removed = ?s.removed.iter().map(ToString::to_string).collect::<Vec<_>>(),
                restarted = ?s.restarted.iter().map(ToString::to_string).collect::<Vec<_>>(),
                unchanged = s.unchanged,
                "SIGHUP: configuration reloaded"
            ),
            Err(e) => tracing::error!(error = %e, "SIGHUP: reload incomplete"),
        }
        return Ok(scheduler);
    }
    tracing::info!("SIGHUP: global settings changed; restarting every source");
    scheduler.shutdown(new.scheduler.shutdown_timeout).await;
    start(new, store, stop).await
}

async fn start(
    config: &Config,
    store: &Store,
    stop: &CancellationToken,
) -> Result<Scheduler, CliError> {
    let redactor = Redactor::new(config.secrets());
    let http =
        HttpClient::new(&config.http, redactor.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = Engine::new(store.clone(), redactor);
    Scheduler::start(config, engine, http, stop.child_token())
        .await
        .map_err(|e| CliError::Other(anyhow::anyhow!("{e}")))
}

/// The `STATUS=` line `systemctl status` shows while the daemon runs.
fn running_status(config: &Config) -> String {
    format!(
        "running {} sources, serving {}",
        config.sources().count(),
        config.server.listen
    )
}
