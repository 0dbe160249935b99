//! Logging: text on a terminal, JSON lines otherwise, always on stderr
//! (stdout carries only a command's output).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::MultiProgress;
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Whether the installed subscriber writes JSON: then every line on stderr
/// must be JSON, and `sync` reports progress and its summary as events.
static JSON: AtomicBool = AtomicBool::new(false);

/// Progress bars on the terminal, if any: log lines are written above them
/// instead of over the spinner's line.
static BARS: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Installs the global subscriber. `verbosity` is `-v` count minus `-q`
/// count; `RUST_LOG` overrides it entirely.
pub fn init(format: Option<LogFormat>, verbosity: i8) {
    let level = match verbosity {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("synchro={level},warn")));
    let terminal = std::io::stderr().is_terminal();
    let format = format.unwrap_or(if terminal {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr);
    let installed = match format {
        // Colours only for a person at a terminal, not for a log file.
        LogFormat::Text => builder.with_ansi(terminal).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    if installed.is_ok() {
        JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    }
}

/// Whether logs are JSON lines (`--log-format json`, or the default when
/// stderr is not a terminal).
pub fn json_logs() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Makes log lines go above `bars` (`None`: straight to stderr again), so
/// that a line logged while they are drawn does not land on a spinner.
pub fn log_above(bars: Option<MultiProgress>) {
    *BARS.lock().unwrap_or_else(|e| e.into_inner()) = bars;
}

/// stderr, drawn around the progress bars while there are some. The fmt
/// layer hands over one whole formatted event per `write`.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bars = BARS.lock().unwrap_or_else(|e| e.into_inner());
        match bars.as_ref() {
            Some(bars) => bars.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
