//! `synchro run`: the daemon.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::assemble::Parts;
use super::{CliError, load_config, open_store};
use crate::config::Config;
use crate::http::BudgetShare;
use crate::notify::{self, Watchdog};
use crate::scheduler::Scheduler;
use crate::server::{ChangeFeed, Limits, Readiness, Webhooks, router, serve};
use crate::shutdown::Request;
use crate::store::Store;

pub async fn run(path: &Path) -> Result<ExitCode, CliError> {
    let mut config = load_config(path)?;
    for w in &config.warnings {
        tracing::warn!(key = %w.key, "{}", w.reason);
    }
    let stop = CancellationToken::new();
    let mut requests =
        crate::shutdown::install(stop.clone()).context("cannot install signal handlers")?;
    let store = open_store(&config).await?;
    let watchdog = Watchdog::start(store.clone());

    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("server.listen: cannot listen on {}", config.server.listen))?;
    let metrics = match crate::metrics::install() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "metrics disabled");
            None
        }
    };
    let ready = Readiness::default();
    ready.watch_store(store.clone());
    let hooks = Webhooks::default();
    let feed = ChangeFeed::default();
    feed.install(&config, &store);
    let server_stop = CancellationToken::new();
    // Limits are fixed at start, like server.listen.
    let limits = Limits::new(&config.server);
    let server = tokio::spawn(serve(
        listener,
        router(ready.clone(), hooks.clone(), feed.clone(), metrics, &limits),
        limits,
        server_stop.clone(),
    ));

    let (retention, retention_now) = tokio::sync::watch::channel(Retention::of(&config));
    let pruner = tokio::spawn(prune(store.clone(), retention_now));
    let share = BudgetShare::default();
    let heartbeat = tokio::spawn(heartbeat(store.clone(), share.clone()));
    let mut scheduler = Parts::new(&config, store.clone(), share.clone())?
        .schedule(&config, stop.child_token())
        .await?;
    hooks.install(&config, scheduler.triggers(), scheduler.engine());
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
                    match crate::config::load(path, &crate::sources::Kinds::builtin()) {
                        Err(e) => tracing::error!(problems = %e.report(), "SIGHUP: new configuration rejected; keeping the running one"),
                        Ok(new) => {
                            let blocked = needs_restart(&config, &new);
                            if blocked.is_empty() {
                                scheduler = reload(scheduler, &config, &new, &store, &share, &stop).await?;
                                config = new;
                                retention.send_replace(Retention::of(&config));
                                hooks.install(&config, scheduler.triggers(), scheduler.engine());
                                feed.install(&config, &store);
                                watchdog.watch(scheduler.liveness());
                            } else {
                                tracing::error!(
                                    "SIGHUP: new configuration rejected: {}; keeping the running configuration",
                                    blocked.join("; ")
                                );
                            }
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
    feed.close();
    tracing::info!("shutting down");
    pruner.abort();
    let _ = pruner.await;
    heartbeat.abort();
    let _ = heartbeat.await;
    let drained = scheduler.shutdown(config.scheduler.shutdown_timeout).await;
    server_stop.cancel();
    let _ = server.await;
    watchdog.stop().await;
    // Bounded: an unreachable database must not hold the exit up.
    match tokio::time::timeout(std::time::Duration::from_secs(2), store.leave()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not remove this daemon from the replicas table; it shows as gone once its heartbeats stop")
        }
        Err(_) => tracing::warn!(
            "the database did not answer within 2s: this daemon shows as gone in the replicas table once its heartbeats stop"
        ),
    }
    store.close().await;
    if !drained {
        tracing::warn!("some syncs were cut at the deadline; their last committed page is kept");
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The settings a running daemon cannot take from a new file, each with
/// what to do: the database is opened and the listener bound once, at
/// start. Applying the rest of such a file would leave the daemon running a
/// configuration that is neither the old one nor the new one.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if new.storage.database != old.storage.database {
        changed.push("storage.database changed: restart synchro to use the new database");
    }
    if new.storage.busy_timeout != old.storage.busy_timeout {
        changed.push("storage.busy_timeout changed: restart synchro to apply it");
    }
    if new.server.listen != old.server.listen {
        changed.push("server.listen changed: restart synchro to listen on the new address");
    } else if new.server.listener_settings() != old.server.listener_settings() {
        changed.push("[server] limits changed: restart synchro to apply them");
    }
    changed
}

/// Applies a new valid configuration: source by source when only sources
/// changed, or by restarting the scheduler when global settings changed.
/// The `[storage]` settings that reach here (the retentions) apply
/// without touching the sources.
async fn reload(
    mut scheduler: Scheduler,
    old: &Config,
    new: &Config,
    store: &Store,
    share: &BudgetShare,
    stop: &CancellationToken,
) -> Result<Scheduler, CliError> {
    let new = &Config {
        storage: old.storage.clone(),
        ..new.clone()
    };
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
    Parts::new(new, store.clone(), share.clone())?
        .schedule(new, stop.child_token())
        .await
}

/// How often the daemon prunes the run history and purges old tombstones
/// (and once at start).
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3_600);

/// The `[storage]` retentions the pruner applies (a reload changes them).
#[derive(Clone, Copy)]
struct Retention {
    runs: std::time::Duration,
    tombstones: std::time::Duration,
}

impl Retention {
    fn of(config: &Config) -> Self {
        Self {
            runs: config.storage.runs_retention,
            tombstones: config.storage.tombstone_retention,
        }
    }
}

/// Keeps `runs` and tombstones bounded: at start, then every
/// [`PRUNE_EVERY`], deletes the runs older than the current `[storage]
/// runs_retention` and the tombstones older than `tombstone_retention` (in
/// short batches: `retention.rs` and `tombstones.rs` of each backend). Runs
/// until aborted at shutdown.
async fn prune(store: Store, retention: tokio::sync::watch::Receiver<Retention>) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let max_age = *retention.borrow();
        match store
            .prune_runs(max_age.runs, crate::store::KEEP_LAST_RUNS)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deleted = n,
                retention = %humantime::format_duration(max_age.runs),
                "pruned the run history"
            ),
            Err(e) => tracing::warn!(error = %e, "could not prune the run history; will retry"),
        }
        match store.purge_tombstones(max_age.tombstones).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                purged = n,
                retention = %humantime::format_duration(max_age.tombstones),
                "purged old tombstones; change-feed readers behind them must resync"
            ),
            Err(e) => tracing::warn!(error = %e, "could not purge old tombstones; will retry"),
        }
    }
}

/// The `STATUS=` line `systemctl status` shows while the daemon runs.
fn running_status(config: &Config) -> String {
    format!(
        "running {} sources, serving {}",
        config.sources().count(),
        config.server.listen
    )
}

/// Refreshes this daemon's row in `replicas` every [`crate::store::HEARTBEAT`]
/// (`synchro status` lists the live ones). Runs until aborted at shutdown;
/// a failed heartbeat is logged and tried again at the next one. The live
/// daemons it counts share each host's budget (`share`).
async fn heartbeat(store: Store, share: BudgetShare) {
    let started = crate::time::now_us();
    let mut sharing = 1;
    let mut every = tokio::time::interval(crate::store::HEARTBEAT);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(e) = store.heartbeat(started).await {
            tracing::warn!(error = %e, "heartbeat: could not record that this daemon is alive");
            continue;
        }
        match store.replicas().await {
            Ok(list) => {
                let live = list.iter().filter(|r| r.live).count();
                crate::metrics::replicas_live(live);
                share.set(live);
                if live.max(1) != sharing {
                    sharing = live.max(1);
                    tracing::info!(
                        daemons = sharing,
                        "each upstream host's budget is now shared among {sharing} live daemons"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat: could not count the live daemons"),
        }
    }
}
