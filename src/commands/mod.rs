//! The command line (DESIGN.md §1). Each command is its own module; this one
//! parses arguments, sets up logging and maps errors to exit codes.

mod assemble;
mod check;
mod copy_store;
#[cfg(feature = "simulator")]
mod demo;
mod export;
mod forget;
mod parse;
mod progress;
mod reset;
mod run;
mod select;
#[cfg(feature = "simulator")]
mod simulate;
mod status;
mod sync;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::telemetry::LogFormat;

pub(crate) use select::select_sources;

/// sysexits.h EX_CONFIG: the configuration is invalid.
pub const EX_CONFIG: u8 = 78;
/// Bad usage, e.g. an unknown source on the command line.
pub(crate) const EX_USAGE: u8 = 2;
/// `export --since`: the position cannot be continued, the reader must
/// resync (DESIGN.md §1).
pub(crate) const EX_RESYNC: u8 = 3;
/// sysexits.h EX_TEMPFAIL: a source was busy (another run held it).
pub const EX_TEMPFAIL: u8 = 75;

#[derive(Debug, Parser)]
#[command(
    name = "synchro",
    version,
    about = "Keeps a local SQLite copy of records from remote APIs"
)]
pub struct Cli {
    /// Config file.
    #[arg(
        long,
        global = true,
        env = "SYNCHRO_CONFIG",
        default_value = "config/synchro.toml"
    )]
    pub config: PathBuf,
    /// Log format (default: text on a terminal, json otherwise).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// More logs (repeat for more).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Fewer logs (repeat for fewer).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub quiet: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: schedule every source, serve HTTP, until SIGTERM/SIGINT.
    Run,
    /// One sync cycle of the named sources (all if none), then exit.
    Sync {
        /// TENANT/SOURCE_ID
        sources: Vec<String>,
        /// How long to wait for a source that another run (the daemon,
        /// another `sync`) is syncing; then it is synced. Past it: exit 75.
        #[arg(long, value_name = "DURATION", default_value = "10m",
              value_parser = humantime::parse_duration, conflicts_with = "no_wait")]
        wait: std::time::Duration,
        /// Exit 75 at once, naming the holder, if another run is syncing a source.
        #[arg(long)]
        no_wait: bool,
    },
    /// Per-source state: phase, last success, last error, records, reports.
    Status {
        /// JSON instead of the table: every field, last errors whole.
        #[arg(long)]
        json: bool,
        /// The daemons using the database (replicas) instead of the
        /// sources: host, pid, start, last heartbeat, live or gone.
        #[arg(long)]
        replicas: bool,
    },
    /// Records of configured sources as JSON Lines on stdout; with
    /// `--since`, the changes committed after a position, in order.
    Export {
        /// TENANT/SOURCE_ID (all configured sources if none)
        sources: Vec<String>,
        /// Also deleted records (tombstones), with "deleted":true.
        #[arg(long, conflicts_with = "since")]
        include_deleted: bool,
        /// Also sources stored but no longer in the config (see `forget`).
        #[arg(long)]
        all: bool,
        /// Only the changes after this position (a line's "seq"; 0 for
        /// every retained change), tombstones included, in seq order.
        /// Exit 3 when the position cannot be continued (resync needed).
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
        /// With --since: keep printing changes as they commit, until
        /// SIGINT or SIGTERM.
        #[arg(long, requires = "since")]
        follow: bool,
    },
    /// Delete what is stored about sources removed from the config: records,
    /// progress, runs and import reports, in one transaction.
    Forget {
        /// TENANT/SOURCE_ID of a source no longer configured
        #[arg(required = true)]
        sources: Vec<String>,
    },
    /// Forget the progress of sources: their next sync is a full resync.
    Reset {
        /// TENANT/SOURCE_ID
        #[arg(required = true)]
        sources: Vec<String>,
    },
    /// Validate the config and the database; exit 78 if invalid.
    Check,
    /// Copy the database the config names into another, empty one (e.g.
    /// SQLite to Postgres), then verify that both export the same.
    CopyStore {
        /// The target database: postgres://USER@HOST:PORT/DB or sqlite://PATH.
        #[arg(long)]
        to: String,
        /// Environment variable holding the target's password.
        #[arg(long, conflicts_with = "to_password_file")]
        to_password_env: Option<String>,
        /// File holding the target's password.
        #[arg(long)]
        to_password_file: Option<std::path::PathBuf>,
    },
    /// Run the simulated upstreams and the daemon against them, offline,
    /// with a built-in config.
    #[cfg_attr(not(feature = "simulator"), command(about = NOT_IN_THIS_BUILD, long_about = None))]
    Demo {
        /// How long the daemon keeps running after the first sync.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
    /// Serve only the simulated upstreams (for tests and benchmarks); no
    /// config file.
    #[cfg_attr(not(feature = "simulator"), command(about = NOT_IN_THIS_BUILD, long_about = None))]
    Simulate {
        /// Address to serve the three simulated APIs on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:9751")]
        listen: std::net::SocketAddr,
    },
}

/// An error that ends a command, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{}", .0.report())]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    /// A change-feed reader must start over (`export --since`).
    #[error("{0}")]
    Resync(String),
    #[error("{}", chain(.0))]
    Other(#[from] anyhow::Error),
}

/// A store error ends the command with exit 1, its causes kept.
impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            e @ crate::store::StoreError::ResyncNeeded { .. } => CliError::Resync(e.to_string()),
            e => CliError::Other(e.into()),
        }
    }
}

/// The error and each of its causes, `: `-separated, like anyhow's `{:#}`,
/// but without a cause whose text an outer message already quotes (many
/// messages end in `: {source}`), so that no cause is printed twice.
fn chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) => EX_CONFIG,
            CliError::Usage(_) => EX_USAGE,
            CliError::Resync(_) => EX_RESYNC,
            CliError::Other(_) => 1,
        }
    }
}

/// How long the runtime's leftover tasks get to stop once a command is done.
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(5);

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = parse::parse();
    crate::telemetry::init(cli.log_format, cli.verbose as i8 - cli.quiet as i8);
    crate::shutdown::survive_file_size_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("synchro: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(dispatch(cli));
    // The command's work is done: a task stuck in a dependency (seen once:
    // sqlx's pool maintenance spinning at exit) must not hold the process.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("synchro: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Run => run::run(&cli.config).await,
        Command::Sync {
            ref sources,
            wait,
            no_wait,
        } => {
            let wait = if no_wait { None } else { Some(wait) };
            sync::sync(&cli.config, sources, wait).await
        }
        Command::Status { json, replicas } => status::status(&cli.config, json, replicas).await,
        Command::Export {
            ref sources,
            include_deleted,
            all,
            since,
            follow,
        } => {
            let what = match since {
                None => export::What::Records { include_deleted },
                Some(since) => export::What::Changes {
                    since: i64::try_from(since).unwrap_or(i64::MAX),
                    follow,
                },
            };
            export::export(&cli.config, sources, what, all).await
        }
        Command::Forget { ref sources } => forget::forget(&cli.config, sources).await,
        Command::Reset { ref sources } => reset::reset(&cli.config, sources).await,
        Command::Check => check::check(&cli.config).await,
        Command::CopyStore {
            ref to,
            ref to_password_env,
            ref to_password_file,
        } => {
            let target = copy_store::CopyTarget {
                url: to,
                password_env: to_password_env.as_deref(),
                password_file: to_password_file.as_ref(),
            };
            copy_store::copy_store(&cli.config, target).await
        }
        #[cfg(feature = "simulator")]
        Command::Demo { duration } => demo::demo(duration).await,
        #[cfg(feature = "simulator")]
        Command::Simulate { listen } => simulate::simulate(listen).await,
        #[cfg(not(feature = "simulator"))]
        Command::Demo { .. } => Err(without_simulator("demo")),
        #[cfg(not(feature = "simulator"))]
        Command::Simulate { .. } => Err(without_simulator("simulate")),
    }
}

/// The help of `demo` and `simulate` in a build without the `simulator`
/// feature.
#[cfg(not(feature = "simulator"))]
const NOT_IN_THIS_BUILD: &str = "Not in this build (built without the cargo feature `simulator`)";

/// `demo` and `simulate` in a build without the `simulator` feature: they
/// stay in the command line (the CLI is the same in every build) and exit 2
/// saying why.
#[cfg(not(feature = "simulator"))]
fn without_simulator(command: &str) -> CliError {
    CliError::Usage(format!(
        "`synchro {command}` is not in this build: it was built without the simulated \
         upstreams (cargo feature `simulator`, on by default)"
    ))
}

/// Loads the config; every problem is reported and maps to exit 78.
pub(crate) fn load_config(path: &std::path::Path) -> Result<Config, CliError> {
    Ok(crate::config::load(
        path,
        &crate::sources::Kinds::builtin(),
    )?)
}

/// Loads the config for commands that need the storage and the list of
/// sources but never a token (`status`, `export`, `forget`): a secret this
/// shell cannot get is a warning on stderr, not a refusal; every other
/// problem still maps to exit 78.
pub(crate) fn load_config_without_secrets(path: &std::path::Path) -> Result<Config, CliError> {
    let loaded = crate::config::load_without_secrets(path, &crate::sources::Kinds::builtin())?;
    // The database's password is the one secret these commands need.
    let storage: Vec<_> = loaded
        .unresolved
        .iter()
        .filter(|p| p.key.starts_with("storage."))
        .cloned()
        .collect();
    if !storage.is_empty() {
        return Err(CliError::Config(crate::config::ConfigError {
            path: path.display().to_string(),
            problems: storage,
        }));
    }
    for problem in &loaded.unresolved {
        tracing::warn!(
            "{}: {problem} (not needed by this command, which sends no request upstream)",
            path.display()
        );
    }
    Ok(loaded.config)
}

/// Where `[storage]` says the database is.
pub(crate) fn target(config: &Config) -> crate::store::Target {
    crate::store::Target {
        url: config.storage.database.clone(),
        password: config
            .storage
            .password
            .as_ref()
            .map(|p| p.expose().to_string()),
        pool_size: config.storage.pool_size,
        busy_timeout: config.storage.busy_timeout,
    }
}

/// Opens the store named by the config for reading only (`status`,
/// `export`): never creates, migrates or writes it; a missing file fails
/// (exit 1) with a message naming the path.
pub(crate) async fn open_store_read_only(config: &Config) -> Result<crate::store::Store, CliError> {
    Ok(crate::store::Store::connect(&target(config), crate::store::Mode::ReadOnly).await?)
}

/// Opens the store named by the config, with a message that names it.
pub(crate) async fn open_store(config: &Config) -> Result<crate::store::Store, CliError> {
    Ok(crate::store::Store::connect(&target(config), crate::store::Mode::Create).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the database x.db: {source}")]
    struct Quoting {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the database x.db")]
    struct Silent {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn an_error_line_shows_each_cause_once() {
        let io = || std::io::Error::other("permission denied");
        let quoting = CliError::from(anyhow::Error::new(Quoting { source: io() }));
        assert_eq!(
            quoting.to_string(),
            "cannot open the database x.db: permission denied"
        );
        let silent = CliError::from(anyhow::Error::new(Silent { source: io() }));
        assert_eq!(silent.to_string(), quoting.to_string());
        let context = CliError::from(anyhow::Error::new(io()).context("writing export"));
        assert_eq!(context.to_string(), "writing export: permission denied");
    }
}
