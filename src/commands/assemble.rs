//! The daemon's parts over an open store, assembled in one place for `run`,
//! `demo` and `sync`: one HTTP client (one budget per host for the runs and
//! the import-state reports) and the engine that commits pages through the
//! store, both knowing the configuration's secrets through one redactor.
//! `run` and `demo` hand them to a scheduler; `sync` runs the engine itself.

use tokio_util::sync::CancellationToken;

use super::CliError;
use crate::config::Config;
use crate::engine::Engine;
use crate::http::{BudgetShare, HttpClient};
use crate::redact::Redactor;
use crate::scheduler::Scheduler;
use crate::store::Store;

/// What a syncing command runs on, built from one configuration.
pub(crate) struct Parts {
    pub http: HttpClient,
    pub engine: Engine,
}

impl Parts {
    /// Builds the HTTP client and the engine over an open `store`. One
    /// redactor serves both, so that a token the client obtains at run time
    /// is scrubbed from what the engine records.
    /// `share` counts the daemons the hosts' budgets are divided among
    /// (`run` sets it from its heartbeat; a command alone leaves it at 1).
    pub fn new(config: &Config, store: Store, share: BudgetShare) -> Result<Self, CliError> {
        let redactor = Redactor::new(config.secrets());
        let http = HttpClient::shared(&config.http, redactor.clone(), share)
            .map_err(anyhow::Error::from)?;
        let engine = Engine::new(store, redactor).with_lease_ttl(config.scheduler.lease_ttl);
        Ok(Parts { http, engine })
    }

    /// Starts a scheduler that runs every configured source on these parts
    /// until `stop`.
    pub async fn schedule(
        self,
        config: &Config,
        stop: CancellationToken,
    ) -> Result<Scheduler, CliError> {
        Ok(Scheduler::start(config, self.engine, self.http, stop)
            .await
            .map_err(anyhow::Error::from)?)
    }
}
