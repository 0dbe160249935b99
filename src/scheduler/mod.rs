//! When sources run. Each source has one runner task that owns its runs, so
//! two runs of the same source can never overlap: ticks from
//! tokio-cron-scheduler (and later webhooks) only *ask* the runner to run,
//! through a one-slot channel, and a request that arrives while a run is in
//! progress is coalesced into at most one follow-up run. A global semaphore
//! caps how many sources sync at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Schedule, SourceConfig, SourceKey};
use crate::engine::Engine;
use crate::http::{HttpClient, origin};
use crate::reporter::Reporter;
use crate::sources::{self, Source};

/// Why the scheduler could not start.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("scheduler: {0}")]
    Cron(#[from] JobSchedulerError),
    #[error("{0}")]
    Source(String),
}

/// Why a run was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A schedule tick: wait a random jitter first.
    Tick,
    /// Start as soon as possible (start-up, push notification).
    Now,
}

struct Runner {
    /// The configuration it was started with, to tell a changed source on reload.
    cfg: SourceConfig,
    trigger: mpsc::Sender<Trigger>,
    /// Stops this source alone (reload) or with all the others (shutdown).
    stop: CancellationToken,
    task: JoinHandle<()>,
    reporter: Option<JoinHandle<()>>,
    job: uuid::Uuid,
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<SourceKey>,
    pub removed: Vec<SourceKey>,
    pub restarted: Vec<SourceKey>,
    pub unchanged: usize,
}

/// Cheap, cloneable way to ask the runners for an immediate run.
#[derive(Clone, Default)]
pub struct Triggers(Arc<BTreeMap<SourceKey, mpsc::Sender<Trigger>>>);

impl Triggers {
    /// Asks for a run of `key` as soon as possible, coalesced with one that
    /// is pending or running. Returns false for an unknown source.
    pub fn now(&self, key: &SourceKey) -> bool {
        match self.0.get(key) {
            Some(tx) => {
                let _ = tx.try_send(Trigger::Now);
                true
            }
            None => false,
        }
    }
}

/// Whether a scheduler's tasks are all still running (see
/// [`Scheduler::liveness`]). Cheap to clone and to poll.
#[derive(Clone, Debug)]
pub struct Liveness {
    /// Each task with the token that stops it (its source's own token, so a
    /// source removed by a reload does not count as dead).
    tasks: Vec<(tokio::task::AbortHandle, CancellationToken)>,
}

impl Liveness {
    /// True while every runner and reporter task runs, except those told to
    /// stop (tasks ending then is the plan, not a failure).
    pub fn healthy(&self) -> bool {
        self.tasks
            .iter()
            .all(|(t, stop)| stop.is_cancelled() || !t.is_finished())
    }
}

/// The running set of scheduled sources.
pub struct Scheduler {
    cron: JobScheduler,
    runners: BTreeMap<SourceKey, Runner>,
    engine: Engine,
    http: HttpClient,
    limit: Arc<Semaphore>,
    /// Sync slots per upstream host (see [`Slots`]).
    host_slots: HashMap<String, Arc<Semaphore>>,
    jitter: Duration,
    stop: CancellationToken,
}

impl Scheduler {
    /// Schedules every configured source and triggers a first run of each.
    pub async fn start(
        config: &Config,
        engine: Engine,
        http: HttpClient,
        stop: CancellationToken,
    ) -> Result<Self, SchedulerError> {
        let cron = JobScheduler::new().await?;
        let mut me = Self {
            cron,
            runners: BTreeMap::new(),
            engine,
            http,
            limit: Arc::new(Semaphore::new(config.scheduler.max_concurrent_syncs.max(1))),
            host_slots: HashMap::new(),
            jitter: config.scheduler.jitter,
            stop,
        };
        for source_cfg in config.sources() {
            me.add(source_cfg).await?;
        }
        me.cron.start().await?;
        tracing::info!(sources = me.runners.len(), "scheduler started");
        Ok(me)
    }

    /// Starts one source: its runner, its schedule, its reporter, and a
    /// first run at once.
    async fn add(&mut self, cfg: &SourceConfig) -> Result<(), SchedulerError> {
        let stop = self.stop.child_token();
        let reporter = Reporter::for_source(self.engine.store(), &self.http, cfg)
            .map(|r| tokio::spawn(r.run(stop.clone())));
        let source = sources::build(cfg, &self.http, &stop).map_err(SchedulerError::Source)?;
        let endpoint = &cfg.endpoint;
        let http = &self.http;
        let host = self
            .host_slots
            .entry(origin(endpoint).unwrap_or_else(|| endpoint.to_string()))
            .or_insert_with(|| Arc::new(Semaphore::new(http.host_concurrency(endpoint))))
            .clone();
        let (tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(run_loop(
            cfg.clone(),
            Arc::from(source),
            self.engine.clone(),
            rx,
            Slots {
                host,
                all: self.limit.clone(),
            },
            self.jitter,
            stop.clone(),
        ));
        let job = self.cron.add(tick_job(&cfg.schedule, tx.clone())?).await?;
        let _ = tx.try_send(Trigger::Now);
        self.runners.insert(
            cfg.key(),
            Runner {
                cfg: cfg.clone(),
                trigger: tx,
                stop,
                task,
                reporter,
                job,
            },
        );
        Ok(())
    }

    /// Applies a new configuration: added sources start, removed ones stop
    /// after their current page, changed ones restart, unchanged ones keep
    /// running undisturbed. The caller restarts the whole scheduler instead
    /// when global settings changed (see [`Scheduler::can_reload`]).
    pub async fn reload(
        &mut self,
        config: &Config,
        deadline: Duration,
    ) -> Result<ReloadSummary, SchedulerError> {
        let wanted: BTreeMap<SourceKey, &SourceConfig> =
            config.sources().map(|s| (s.key(), s)).collect();
        let mut summary = ReloadSummary::default();
        let mut stopping = Vec::new();
        let keys: Vec<SourceKey> = self.runners.keys().cloned().collect();
        for key in keys {
            let keep = wanted
                .get(&key)
                .is_some_and(|cfg| self.runners.get(&key).is_some_and(|r| r.cfg == **cfg));
            if keep {
                summary.unchanged += 1;
                continue;
            }
            if let Some(r) = self.runners.remove(&key) {
                let _ = self.cron.remove(&r.job).await;
                r.stop.cancel();
                stopping.push(r.task);
                stopping.extend(r.reporter);
                if wanted.contains_key(&key) {
                    summary.restarted.push(key);
                } else {
                    summary.removed.push(key);
                }
            }
        }
        // The old runs of a changed source end before its new runner starts:
        // two runs of one source never overlap.
        wait_all(stopping, deadline).await;
        for (key, cfg) in wanted {
            if !self.runners.contains_key(&key) {
                if !summary.restarted.contains(&key) {
                    summary.added.push(key);
                }
                self.add(cfg).await?;
            }
        }
        Ok(summary)
    }

    /// Whether `config` can be applied with [`Scheduler::reload`]: the
    /// global scheduling and HTTP settings are unchanged.
    pub fn can_reload(&self, old: &Config, new: &Config) -> bool {
        old.scheduler == new.scheduler && old.http == new.http && old.storage == new.storage
    }

    /// Asks for an immediate run of `key`; coalesced if one is running.
    /// Returns false for an unknown source.
    pub fn trigger(&self, key: &SourceKey) -> bool {
        self.triggers().now(key)
    }

    /// A handle that can ask for runs from elsewhere (webhooks), valid
    /// until this scheduler shuts down or reloads.
    pub fn triggers(&self) -> Triggers {
        Triggers(Arc::new(
            self.runners
                .iter()
                .map(|(k, r)| (k.clone(), r.trigger.clone()))
                .collect(),
        ))
    }

    /// A handle the systemd watchdog polls: a runner task that ended while
    /// nobody asked it to (a panic) means a source silently stopped syncing,
    /// which deserves a restart rather than a daemon that only looks alive.
    pub fn liveness(&self) -> Liveness {
        Liveness {
            tasks: self
                .runners
                .values()
                .flat_map(|r| {
                    std::iter::once(&r.task)
                        .chain(r.reporter.as_ref())
                        .map(|t| (t.abort_handle(), r.stop.clone()))
                })
                .collect(),
        }
    }

    /// Stops ticking, lets running syncs finish their page, and waits for
    /// them up to `deadline`. Returns false if some did not finish in time.
    pub async fn shutdown(mut self, deadline: Duration) -> bool {
        self.stop.cancel();
        for r in self.runners.values() {
            let _ = self.cron.remove(&r.job).await;
        }
        if let Err(e) = self.cron.shutdown().await {
            tracing::warn!(error = %e, "cron scheduler did not stop cleanly");
        }
        let tasks: Vec<_> = std::mem::take(&mut self.runners)
            .into_values()
            .flat_map(|r| std::iter::once(r.task).chain(r.reporter))
            .collect();
        let done = wait_all(tasks, deadline).await;
        if !done {
            tracing::warn!(?deadline, "syncs still running at the shutdown deadline");
        }
        done
    }
}

/// Waits for `tasks` up to `deadline`; false if some were still running.
async fn wait_all(tasks: Vec<JoinHandle<()>>, deadline: Duration) -> bool {
    tokio::time::timeout(deadline, futures::future::join_all(tasks))
        .await
        .is_ok()
}

/// A cron or interval job that only sends a tick to the runner.
fn tick_job(schedule: &Schedule, tx: mpsc::Sender<Trigger>) -> Result<Job, JobSchedulerError> {
    let send = move |_id, _sched| {
        let tx = tx.clone();
        Box::pin(async move {
            // Full channel: a run is already pending, this tick is coalesced.
            let _ = tx.try_send(Trigger::Tick);
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    };
    match schedule {
        Schedule::Every(d) => Job::new_repeated_async(*d, send),
        Schedule::Cron(expr) => Job::new_async(expr.as_str(), send),
    }
}

/// The semaphores a run must hold: its host's, then the global one.
struct Slots {
    host: Arc<Semaphore>,
    all: Arc<Semaphore>,
}

/// The one task that runs a source, one run at a time.
async fn run_loop(
    cfg: SourceConfig,
    source: Arc<dyn Source>,
    engine: Engine,
    mut triggers: mpsc::Receiver<Trigger>,
    slots: Slots,
    jitter: Duration,
    stop: CancellationToken,
) {
    let key = cfg.key();
    let kind = cfg.kind_name();
    loop {
        let trigger = tokio::select! {
            t = triggers.recv() => match t { Some(t) => t, None => return },
            _ = stop.cancelled() => return,
        };
        if trigger == Trigger::Tick && !jitter.is_zero() {
            // A push notification arriving during the jitter wait starts the
            // run at once; it and the tick are one run.
            let wait = rand::rng().random_range(Duration::ZERO..=jitter);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = triggers.recv() => {}
                _ = stop.cancelled() => return,
            }
        }
        // Host first: a run queued behind its busy host holds no global slot.
        let _host = tokio::select! {
            p = slots.host.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let _permit = tokio::select! {
            p = slots.all.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        engine.run(&key, kind, source.as_ref(), &stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn liveness_fails_when_a_task_ends_unasked_and_not_after_a_stop() {
        let stop = CancellationToken::new();
        let running = tokio::spawn(std::future::pending::<()>());
        let liveness = Liveness {
            tasks: vec![(running.abort_handle(), stop.clone())],
        };
        assert!(liveness.healthy());
        running.abort();
        let _ = running.await;
        assert!(!liveness.healthy(), "a dead task is unhealthy");
        stop.cancel();
        assert!(liveness.healthy(), "tasks ending after a stop is the plan");
    }
}
