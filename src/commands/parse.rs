//! Parsing the command line: `Cli`'s derive, with one adjustment. `--config`
//! is global (`synchro status --config X` and `synchro --config X status`
//! both work), but `demo` and `simulate` run with their own built-in
//! settings and read no config file, so it must neither appear in their
//! help nor be silently ignored. Each gets a hidden `--config` of its own,
//! which keeps the global one out of it (clap does not propagate a global
//! argument to a subcommand that defines the same one) and refuses a value;
//! a `--config` given before them is refused too. `SYNCHRO_CONFIG` in the
//! environment is not an error: the Docker image sets it for every command.

use clap::parser::ValueSource;
use clap::{Arg, CommandFactory, FromArgMatches};

use super::{Cli, Command};

/// Subcommands that read no config file.
const WITHOUT_CONFIG: [&str; 2] = ["demo", "simulate"];

/// The `clap` command that [`parse`] runs.
pub(super) fn command() -> clap::Command {
    let mut cmd = Cli::command();
    for name in WITHOUT_CONFIG {
        cmd = cmd.mut_subcommand(name, |sub| {
            sub.arg(
                Arg::new("config")
                    .long("config")
                    .hide(true)
                    .value_parser(move |_: &str| -> Result<String, String> { Err(refusal(name)) }),
            )
        });
    }
    cmd
}

fn refusal(name: &str) -> String {
    format!("`synchro {name}` reads no config file (it runs with built-in settings)")
}

/// Parses the process's arguments; on a usage error prints it and exits 2
/// (as clap does).
pub(super) fn parse() -> Cli {
    let mut cmd = command();
    let matches = cmd.get_matches_mut();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cmd).exit());
    let name = match cli.command {
        Command::Demo { .. } => "demo",
        Command::Simulate { .. } => "simulate",
        _ => return cli,
    };
    if matches.value_source("config") == Some(ValueSource::CommandLine) {
        cmd.error(clap::error::ErrorKind::ArgumentConflict, refusal(name))
            .exit();
    }
    cli
}

#[cfg(test)]
mod tests {
    use super::*;

    fn help(args: &[&str]) -> String {
        let mut cmd = command();
        match cmd.try_get_matches_from_mut(args) {
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => e.render().to_string(),
            other => panic!("no help: {other:?}"),
        }
    }

    #[test]
    fn demo_and_simulate_list_no_config_and_refuse_one() {
        for name in WITHOUT_CONFIG {
            let text = help(&["synchro", name, "--help"]);
            assert!(!text.contains("--config"), "{text}");
            let e = command()
                .try_get_matches_from(["synchro", name, "--config", "x.toml"])
                .expect_err("refused");
            assert!(e.to_string().contains("reads no config file"), "{e}");
        }
        assert!(help(&["synchro", "status", "--help"]).contains("--config"));
        command().debug_assert();
    }
}
