//! The `synchro` binary under test, run as a child process, and what
//! `/proc` tells about it (resident memory, CPU time).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The `synchro` binary next to this one. `cargo run --bin bench` builds
/// only the bench, so build both first (`cargo build --release`); a nested
/// `cargo build` from here would see `cargo run`'s environment and rebuild
/// the dependency tree at every run.
pub fn synchro_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the bench binary")?;
    let bin = exe
        .parent()
        .context("bench binary has no folder")?
        .join("synchro");
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build --release` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// A field of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`, ...).
pub fn status_kb(pid: u32, field: &str) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// A finished `synchro` command.
pub struct Finished {
    pub wall: Duration,
    pub max_rss_kb: i64,
}

/// Runs `synchro --config CONFIG ARGS...` to completion, with its stdout and
/// stderr in `dir`, polling its peak RSS (VmHWM of its own address space;
/// `wait4`'s ru_maxrss would also count the bench's memory, shared with the
/// child between fork and exec).
pub async fn run_to_end(bin: &Path, config: &Path, dir: &Path, args: &[&str]) -> Result<Finished> {
    let log = |name: &str| std::fs::File::create(dir.join(name));
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(config)
        .args(["--log-format", "text"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log("child.out")?)
        .stderr(log("child.err")?);
    let started = Instant::now();
    let child = cmd.spawn().context("cannot start synchro")?;
    let pid = child.id();
    let (status, max_rss_kb) = tokio::task::spawn_blocking(move || {
        let mut hwm: i64 = 0;
        loop {
            if let Some(kb) = status_kb(pid, "VmHWM") {
                hwm = hwm.max(kb);
            }
            let mut status: libc::c_int = 0;
            // SAFETY: waits for our own child without blocking.
            let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
            if r == pid as libc::pid_t {
                return (Some(status), hwm);
            }
            if r < 0 {
                return (None, hwm);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .await?;
    let wall = started.elapsed();
    drop(child);
    let ok = status.is_some_and(|s| libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0);
    if !ok {
        let err = std::fs::read_to_string(dir.join("child.err")).unwrap_or_default();
        bail!("synchro {args:?} failed ({status:?}):\n{err}");
    }
    Ok(Finished { wall, max_rss_kb })
}
