//! Signals: SIGTERM/SIGINT start a graceful shutdown (a second one exits at
//! once, which the atomicity rule makes safe); SIGHUP asks for a reload.

use futures::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Exit status used when a second signal cuts the graceful shutdown short.
const FORCED_EXIT: i32 = 130;

/// What the signal stream asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Reload,
}

/// Installs the handlers. `shutdown` is cancelled on the first SIGTERM or
/// SIGINT; on the second the process exits immediately. SIGHUPs are sent on
/// the returned channel.
pub fn install(shutdown: CancellationToken) -> std::io::Result<mpsc::Receiver<Request>> {
    let mut signals = Signals::new([SIGHUP, SIGINT, SIGTERM])?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(sig) = signals.next().await {
            match sig {
                SIGHUP => {
                    let _ = tx.try_send(Request::Reload);
                }
                _ if shutdown.is_cancelled() => {
                    tracing::warn!("second signal: exiting now");
                    std::process::exit(FORCED_EXIT);
                }
                _ => {
                    tracing::info!(
                        signal = sig,
                        "shutdown requested; finishing the pages in flight"
                    );
                    shutdown.cancel();
                }
            }
        }
    });
    Ok(rx)
}

/// A write past the file-size limit (`ulimit -f`, a quota) sends SIGXFSZ,
/// whose default action kills the process. With a handler installed, the
/// write fails with EFBIG instead: SQLite reports the disk as full, the page
/// is rolled back and the run fails with a clear error, and the daemon keeps
/// serving the other sources.
pub fn survive_file_size_limit() {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, flag) {
        tracing::warn!(error = %e, "cannot handle SIGXFSZ; a file-size limit would kill the process");
    }
}
