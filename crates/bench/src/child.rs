//! The `synchro` binary under test, run as a child process, and what
//! `/proc` tells about it (resident memory, CPU time).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The `synchro` binary next to this one. `cargo run -p synchro-bench` builds
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
    /// User + system CPU time of the child, from `wait4`'s rusage.
    pub cpu: Duration,
}

/// User + system time of an rusage.
pub fn rusage_cpu(ru: &libc::rusage) -> Duration {
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time this process (the bench, with its in-process simulator) has used.
pub fn own_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    rusage_cpu(&ru)
}

/// Starts `synchro --config CONFIG --log-format text ARGS...`, its stdout
/// and stderr in `dir/child.out` and `dir/child.err`.
fn spawn(bin: &Path, config: &Path, dir: &Path, args: &[&str]) -> Result<std::process::Child> {
    let log = |name: &str| std::fs::File::create(dir.join(name));
    Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(["--log-format", "text"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log("child.out")?)
        .stderr(log("child.err")?)
        .spawn()
        .context("cannot start synchro")
}

/// Runs `synchro --config CONFIG ARGS...` to completion, with its stdout and
/// stderr in `dir`, polling its peak RSS (VmHWM of its own address space;
/// `wait4`'s ru_maxrss would also count the bench's memory, shared with the
/// child between fork and exec).
pub async fn run_to_end(bin: &Path, config: &Path, dir: &Path, args: &[&str]) -> Result<Finished> {
    let started = Instant::now();
    let child = spawn(bin, config, dir, args)?;
    let pid = child.id();
    let (status, max_rss_kb, cpu) = tokio::task::spawn_blocking(move || {
        let mut hwm: i64 = 0;
        loop {
            if let Some(kb) = status_kb(pid, "VmHWM") {
                hwm = hwm.max(kb);
            }
            let mut status: libc::c_int = 0;
            // SAFETY: zeroed rusage is a valid value for wait4 to fill.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: waits for our own child without blocking.
            let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, libc::WNOHANG, &mut ru) };
            if r == pid as libc::pid_t {
                return (Some(status), hwm, rusage_cpu(&ru));
            }
            if r < 0 {
                return (None, hwm, Duration::ZERO);
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
    Ok(Finished {
        wall,
        max_rss_kb,
        cpu,
    })
}

/// CPU time (user + system) a process used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// A `synchro` command running in the background (the daemon), its output
/// in files; stopped with SIGTERM, or killed if it is dropped still running.
pub struct Running {
    child: std::process::Child,
}

impl Running {
    /// Starts `synchro --config CONFIG ARGS...` with stdout and stderr in `dir`.
    pub fn start(bin: &Path, config: &Path, dir: &Path, args: &[&str]) -> Result<Self> {
        Ok(Self {
            child: spawn(bin, config, dir, args)?,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        // SAFETY: signals our own child, which has not been reaped yet.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        if r != 0 {
            bail!("cannot signal synchro: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits up to `deadline` for a clean exit (status 0).
    pub async fn stop(mut self, deadline: Duration) -> Result<()> {
        // SAFETY: signals our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("synchro exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() > until {
                bail!("synchro still running {deadline:?} after SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
