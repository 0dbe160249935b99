//! Deployment: the systemd notification protocol spoken by the real binary,
//! the unit file as systemd itself parses it, and the Docker/compose files.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

const DEMARCHE: i64 = 1234;

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

fn read_deploy_file(name: &str) -> String {
    std::fs::read_to_string(deploy_file(name)).unwrap_or_else(|e| panic!("deploy/{name}: {e}"))
}

/// A fake systemd notification socket: every datagram received, in order.
struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    done: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let messages = messages.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                while !done.load(Ordering::SeqCst) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        messages.lock().expect("lock").push((Instant::now(), text));
                    }
                }
            })
        };
        Self {
            path,
            messages,
            done,
            reader: Some(reader),
        }
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.messages.lock().expect("lock").clone()
    }

    fn len(&self) -> usize {
        self.messages.lock().expect("lock").len()
    }

    /// Waits for a message at index ≥ `from` that has the line `line`;
    /// returns its index.
    async fn wait_for(&self, from: usize, line: &str, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self
                .all()
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, (_, m))| has_line(m, line))
                .map(|(i, _)| i)
            {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} after message {from} within {timeout:?}; the last ones: {:?}",
                self.all()
                    .iter()
                    .rev()
                    .take(20)
                    .map(|(_, m)| m)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `n` messages at index ≥ `from` have the line `line`;
    /// returns when each arrived.
    async fn wait_for_count(
        &self,
        from: usize,
        line: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let times: Vec<Instant> = self
                .all()
                .into_iter()
                .skip(from)
                .filter(|(_, m)| has_line(m, line))
                .map(|(t, _)| t)
                .collect();
            if times.len() >= n {
                return times;
            }
            assert!(
                Instant::now() < deadline,
                "only {} {line:?} after message {from} within {timeout:?}",
                times.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn has_line(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

async fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not exit within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_speaks_the_systemd_notify_protocol() {
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 50);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", DEMARCHE)]);
    let port = setup.use_free_port();
    let notify = NotifySocket::bind(setup.dir.path());
    let log = |name: &str| std::fs::File::create(setup.dir.path().join(name)).expect("log file");
    // WATCHDOG_PID unset: sd_notify's watchdog_enabled() then applies
    // WATCHDOG_USEC to whichever process reads it (set, it must equal our pid).
    let mut child = setup
        .cmd(&["run"])
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .stdout(log("stdout.log"))
        .stderr(log("stderr.log"))
        .spawn()
        .expect("spawn synchro run");

    // READY=1 once migrations ran and the scheduler runs: /readyz agrees.
    let ready = notify.wait_for(0, "READY=1", Duration::from_secs(30)).await;
    let readyz = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .expect("GET /readyz");
    assert_eq!(
        readyz.status().as_u16(),
        200,
        "READY=1 before /readyz is 200"
    );
    let msg = notify.all()[ready].1.clone();
    assert!(
        msg.lines()
            .any(|l| l.starts_with("STATUS=running 1 sources")),
        "READY=1 comes with a STATUS= line: {msg:?}"
    );

    // Watchdog pings at half of WATCHDOG_USEC (100 ms), repeatedly.
    let pings = notify
        .wait_for_count(0, "WATCHDOG=1", 6, Duration::from_secs(15))
        .await;
    let span = pings[5] - pings[0];
    assert!(
        span >= Duration::from_millis(350),
        "5 intervals of ~100 ms took only {span:?}: pings come in a burst"
    );

    // SIGHUP with a changed config: RELOADING=1 (with MONOTONIC_USEC), then READY=1.
    setup.edit_config("every 1h", "every 2h");
    let before = notify.len();
    signal(&child, "HUP");
    let reloading = notify
        .wait_for(before, "RELOADING=1", Duration::from_secs(15))
        .await;
    let msg = notify.all()[reloading].1.clone();
    assert!(
        msg.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "RELOADING=1 carries MONOTONIC_USEC: {msg:?}"
    );
    let ready_again = notify
        .wait_for(reloading + 1, "READY=1", Duration::from_secs(30))
        .await;
    assert!(
        setup
            .spawned_stderr()
            .contains("SIGHUP: configuration reloaded"),
        "the reload really happened:\n{}",
        setup.spawned_stderr()
    );
    // The watchdog outlives the reload (it watches the new scheduler).
    notify
        .wait_for_count(ready_again + 1, "WATCHDOG=1", 3, Duration::from_secs(15))
        .await;

    // SIGTERM: STOPPING=1, then a clean exit.
    let before = notify.len();
    signal(&child, "TERM");
    notify
        .wait_for(before, "STOPPING=1", Duration::from_secs(15))
        .await;
    let status = wait_exit(&mut child, Duration::from_secs(20)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "clean shutdown exits 0:\n{}",
        setup.spawned_stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_watchdog_pings_for_another_process() {
    let sim = simulator().await;
    let setup = Setup::new(&sim, &[]);
    let notify = NotifySocket::bind(setup.dir.path());
    // systemd sets WATCHDOG_PID to the main pid: a process that is not it
    // (here pid 1) must not ping on the main process's behalf.
    let mut child = setup
        .cmd(&["run"])
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "100000")
        .env("WATCHDOG_PID", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn synchro run");
    notify.wait_for(0, "READY=1", Duration::from_secs(30)).await;
    // The negative needs a window: 10 ping intervals.
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&child, "TERM");
    notify
        .wait_for(0, "STOPPING=1", Duration::from_secs(15))
        .await;
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(20)).await.code(),
        Some(0)
    );
    assert!(
        !notify.all().iter().any(|(_, m)| has_line(m, "WATCHDOG=1")),
        "pinged although WATCHDOG_PID names another process"
    );
}

/// `[Service]` keys of the unit, in order (a key may repeat).
fn service_keys(unit: &str) -> Vec<(String, String)> {
    let mut section = "";
    let mut keys = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section == "[Service]" {
            let (k, v) = line.split_once('=').expect("key=value");
            keys.push((k.to_string(), v.to_string()));
        }
    }
    keys
}

#[test]
fn systemd_unit_has_notify_watchdog_and_hardening() {
    let keys = service_keys(&read_deploy_file("synchro.service"));
    let get = |k: &str| -> Vec<&str> {
        keys.iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (k, v) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30s"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "synchro"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("LimitNOFILE", "65536"),
        ("EnvironmentFile", "-/etc/synchro/secrets.env"),
        (
            "Environment",
            "SYNCHRO__STORAGE__DATABASE=sqlite:///var/lib/synchro/synchro.db",
        ),
    ] {
        assert_eq!(get(k), vec![v], "[Service] {k}");
    }
    // The drain (scheduler.shutdown_timeout, 30 s by default) and then the
    // listener's grace for requests in flight fit in the stop timeout.
    let stop = humantime::parse_duration(get("TimeoutStopSec")[0]).expect("TimeoutStopSec");
    let drain = Duration::from_secs(30) + synchro::server::Limits::SHUTDOWN_GRACE;
    assert!(stop > drain, "TimeoutStopSec {stop:?}");
    assert!(get("ExecStart")[0].ends_with(" run"));
    assert!(get("ExecStartPre")[0].ends_with(" check"));
}

/// `systemd-analyze verify` on the unit, as systemd would load it. Skipped
/// with a notice where systemd-analyze is missing (`.ci/run` installs it).
#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("NOTICE: systemd-analyze is not installed: skipping the unit verification");
        return;
    }
    let unit = read_deploy_file("synchro.service");
    // verify checks that every Exec* binary exists: point them at the one
    // just built instead of its installed path.
    let patched = unit.replace("/usr/local/bin/synchro", bin());
    assert_ne!(patched, unit, "the unit runs /usr/local/bin/synchro");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("synchro.service");
    std::fs::write(&path, &patched).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 even for an unknown key or a bad value (it only logs
    // "...: Unknown key ..., ignoring"), so the log is checked too: every
    // complaint about this unit names its file. Lines about other units or
    // the host (no systemd running in a container) are not ours to judge.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("synchro.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

/// The instructions of the last stage of a Dockerfile, continuation lines
/// joined, as (INSTRUCTION, arguments); and every stage's FROM line.
fn dockerfile_stages(text: &str) -> Vec<Vec<(String, String)>> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.starts_with('#') || t.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(t);
            joined.push(std::mem::take(&mut current));
        }
    }
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for line in joined {
        let (ins, args) = line.split_once(' ').unwrap_or((&line, ""));
        let ins = ins.to_ascii_uppercase();
        if ins == "FROM" {
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push((ins, args.trim().to_string()));
        }
    }
    stages
}

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged_with_health_and_volume() {
    let stages = dockerfile_stages(&read_deploy_file("Dockerfile"));
    assert!(stages.len() >= 2, "a multi-stage build");
    let build = &stages[0];
    let from = &build[0].1;
    assert!(
        from.ends_with(" AS build"),
        "first stage is `build`: {from}"
    );
    assert!(
        build
            .iter()
            .any(|(i, a)| i == "RUN" && a.contains("cargo build --release --locked")),
        "the build stage builds with the lock file"
    );
    let runtime = stages.last().expect("runtime stage");
    let all = |ins: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(i, _)| i == ins)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    assert!(
        runtime[0].1.starts_with("debian:"),
        "runtime on Debian slim"
    );
    assert!(
        all("COPY")
            .iter()
            .any(|a| a.starts_with("--from=build ") && a.ends_with(" /usr/local/bin/synchro")),
        "the binary comes from the build stage: {:?}",
        all("COPY")
    );
    let user = all("USER");
    assert_eq!(user.len(), 1, "one USER: {user:?}");
    let uid = user[0].split(':').next().expect("uid");
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u >= 1000),
        "a fixed non-root uid: {uid}"
    );
    assert!(
        all("RUN")
            .iter()
            .any(|r| r.contains(&format!("useradd --system --uid {uid}"))),
        "the USER uid is a created user"
    );
    assert_eq!(all("STOPSIGNAL"), vec!["SIGTERM"]);
    assert!(all("VOLUME").iter().any(|v| v.contains("/var/lib/synchro")));
    assert!(all("EXPOSE").contains(&"9750"));
    let health = all("HEALTHCHECK");
    assert!(
        health.len() == 1 && health[0].contains("http://127.0.0.1:9750/healthz"),
        "HEALTHCHECK on /healthz: {health:?}"
    );
    let env = all("ENV").join(" ");
    assert!(env.contains("SYNCHRO_CONFIG=/etc/synchro/synchro.toml"));
    assert!(env.contains("SYNCHRO__STORAGE__DATABASE=sqlite:///var/lib/synchro/"));
    assert!(env.contains("SYNCHRO__SERVER__LISTEN=0.0.0.0:9750"));
    assert_eq!(all("ENTRYPOINT"), vec![r#"["/usr/local/bin/synchro"]"#]);
    // The build context is the repository root: target/ must stay out of it.
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .expect(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

/// The lines of the compose service `name` (those indented below it).
fn compose_service<'a>(compose: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("  {name}:");
    let mut lines = compose.lines().skip_while(|l| l.trim_end() != header);
    assert!(lines.next().is_some(), "no service {name}");
    lines
        .take_while(|l| l.trim().is_empty() || l.starts_with("    "))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The port `synchro simulate` listens on by default, from its `--help`.
fn simulate_default_port() -> String {
    let out = Command::new(bin())
        .args(["simulate", "--help"])
        .output()
        .expect("synchro simulate --help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let listen = help.find("--listen").map_or("", |at| &help[at..]);
    let default = listen
        .split("[default: ")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .unwrap_or_else(|| panic!("no default address in:\n{help}"));
    default.rsplit(':').next().expect("port").to_string()
}

#[test]
fn compose_runs_the_simulator_and_synchro_with_a_read_only_config() {
    let compose = read_deploy_file("docker-compose.yml");
    let sim = compose_service(&compose, "simulator");
    // The simulator on the port `synchro simulate` uses by default, which
    // the compose file publishes and its synchro config points at.
    let port = simulate_default_port();
    assert!(
        sim.contains(&format!(r#"command: ["simulate", "--listen", "0.0.0.0:{port}"]"#).as_str()),
        "{sim:?}"
    );
    assert!(
        sim.contains(
            &format!(
                r#"- "127.0.0.1:{port}:{port}" # the simulated APIs and their /_sim/ control API"#
            )
            .as_str()
        ),
        "{sim:?}"
    );
    let config = read_deploy_file("compose-synchro.toml");
    let endpoints: Vec<&str> = config
        .lines()
        .filter(|l| l.starts_with("endpoint = "))
        .collect();
    assert_eq!(endpoints.len(), 3, "{config}");
    for e in endpoints {
        assert!(e.contains(&format!("http://127.0.0.1:{port}/")), "{e}");
    }
    assert!(sim.contains(&"dockerfile: deploy/Dockerfile"), "{sim:?}");
    let synchro = compose_service(&compose, "synchro");
    let image = |lines: &[&str]| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix("image: "))
            .map(str::to_string)
    };
    assert_eq!(image(&synchro), image(&sim), "one image for both");
    // Loopback http only: synchro shares the simulator's network namespace.
    assert!(synchro.contains(&r#"network_mode: "service:simulator""#));
    let mount = synchro
        .iter()
        .find(|l| l.contains(":/etc/synchro/"))
        .expect("config mount");
    assert!(mount.ends_with(":ro"), "config mounted read-only: {mount}");
    let host = mount
        .trim_start_matches("- ")
        .split(':')
        .next()
        .expect("host path");
    assert!(
        deploy_file(host).is_file(),
        "the mounted config {host} exists next to the compose file"
    );
    assert!(
        synchro
            .iter()
            .any(|l| l.starts_with("- ") && l.ends_with(":/var/lib/synchro")),
        "the database lives in a volume: {synchro:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_config_passes_check_and_syncs_all_three_kinds() {
    let text = read_deploy_file("compose-synchro.toml");
    assert!(text.contains("database = \"sqlite:///var/lib/synchro/"));
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let out = Command::new(bin())
        .arg("--config")
        .arg(deploy_file("compose-synchro.toml"))
        .arg("check")
        .env("SYNCHRO__STORAGE__DATABASE", &db)
        .env_remove("RUST_LOG")
        .output()
        .expect("synchro check");
    assert!(
        out.status.success(),
        "check failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 source(s)"));

    // The same config against a simulator seeded like `synchro simulate`
    // (only its port differs): every source syncs.
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 30);
    sim.calendar().seed("primary", 30);
    sim.content().seed(30, 5);
    let config = dir.path().join("synchro.toml");
    std::fs::write(
        &config,
        text.replace("127.0.0.1:9751", &sim.addr().to_string())
            .replace("0.0.0.0:9750", "127.0.0.1:0"),
    )
    .expect("config");
    let run = |args: &'static [&'static str]| {
        let mut c = Command::new(bin());
        c.arg("--config")
            .arg(&config)
            .args(args)
            .env("SYNCHRO__STORAGE__DATABASE", &db)
            .env_remove("RUST_LOG");
        tokio::task::spawn_blocking(move || c.output().expect("run synchro"))
    };
    let out = run(&["sync"]).await.expect("join");
    assert!(out.status.success(), "sync failed: {}", stderr(&out));
    let out = run(&["export"]).await.expect("join");
    assert!(out.status.success(), "export failed: {}", stderr(&out));
    assert_thirty_of_each_kind(&String::from_utf8_lossy(&out.stdout));
}

/// The replicas' config (compose) on a real Postgres: `check` reaches it
/// and names its schema version, `sync` stores all three kinds, `status`
/// and `export` read them back, and `copy-store` moves the database to
/// SQLite with the same export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_replicas_config_syncs_all_three_kinds_into_postgres() {
    let Some(pg) =
        PgDb::create("compose_replicas_config_syncs_all_three_kinds_into_postgres").await
    else {
        return;
    };
    let text = read_deploy_file("compose-replicas-synchro.toml");
    assert!(text.contains("database = \"postgres://synchro@postgres:5432/synchro\""));
    assert!(text.contains("password = { file = \"/run/secrets/pg_password\" }"));
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 30);
    sim.calendar().seed("primary", 30);
    sim.content().seed(30, 5);
    let dir = tempfile::tempdir().expect("tempdir");
    // The test server trusts local logins: the password is read, sent, and
    // ignored by the server.
    let password = dir.path().join("pg_password");
    std::fs::write(&password, "try-out\n").expect("password file");
    let config = dir.path().join("synchro.toml");
    std::fs::write(
        &config,
        text.replace("postgres://synchro@postgres:5432/synchro", &pg.url)
            .replace("/run/secrets/pg_password", &password.display().to_string())
            .replace("127.0.0.1:9751", &sim.addr().to_string())
            .replace("0.0.0.0:9750", "127.0.0.1:0"),
    )
    .expect("config");
    let run = |args: Vec<String>| {
        let mut c = Command::new(bin());
        c.arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("RUST_LOG");
        tokio::task::spawn_blocking(move || c.output().expect("run synchro"))
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let out = run(args(&["check"])).await.expect("join");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "check failed: {said}{}", stderr(&out));
    assert!(said.contains("3 source(s)"), "{said}");
    // The newest migration of the Postgres backend.
    let newest =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres"))
            .expect("migrations")
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.split('_').next()?.parse::<i64>().ok()
            })
            .max()
            .expect("a migration");
    assert!(
        said.contains(&format!("reachable, schema version {newest}")),
        "{said}"
    );
    assert!(
        !said.contains("try-out"),
        "the password is never shown: {said}"
    );

    let out = run(args(&["sync"])).await.expect("join");
    assert!(out.status.success(), "sync failed: {}", stderr(&out));
    let out = run(args(&["export", "--include-deleted"]))
        .await
        .expect("join");
    assert!(out.status.success(), "export failed: {}", stderr(&out));
    let exported = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_thirty_of_each_kind(&exported);
    let out = run(args(&["status"])).await.expect("join");
    assert!(out.status.success(), "status failed: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo/permits"));

    // Out of Postgres into SQLite: the same export, byte for byte.
    let copy = dir.path().join("copy/synchro.db");
    let to = format!("sqlite://{}", copy.display());
    let out = run(args(&["copy-store", "--to", &to])).await.expect("join");
    assert!(out.status.success(), "copy-store failed: {}", stderr(&out));
    let mut c = Command::new(bin());
    c.arg("--config")
        .arg(&config)
        .args(["export", "--include-deleted"])
        .env("SYNCHRO__STORAGE__DATABASE", &to)
        .env_remove("RUST_LOG");
    let out = tokio::task::spawn_blocking(move || c.output().expect("run synchro"))
        .await
        .expect("join");
    assert!(out.status.success(), "export of the copy: {}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), exported);
}

/// The Kubernetes ConfigMap's config is one the loader takes: a Postgres
/// URL with `sslmode=verify-full`, the password from the environment.
#[test]
fn kubernetes_config_map_holds_a_valid_postgres_config() {
    let manifest = read_deploy_file("kubernetes.yaml");
    let start = manifest
        .find("  synchro.toml: |\n")
        .expect("the ConfigMap holds synchro.toml");
    let text: String = manifest[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let env: std::collections::HashMap<String, String> = [("PGPASSWORD", "from-the-secret")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let loaded = synchro::config::load_str_without_secrets(
        &text,
        Path::new("/etc/synchro/synchro.toml"),
        &env,
        &synchro::sources::Kinds::builtin(),
    )
    .unwrap_or_else(|e| panic!("{}", e.report()));
    let storage = &loaded.config.storage;
    assert!(
        storage.database.starts_with("postgres://synchro@"),
        "{}",
        storage.database
    );
    assert!(storage.database.contains("sslmode=verify-full"));
    assert_eq!(
        storage.password.as_ref().map(|p| p.expose()),
        Some("from-the-secret")
    );
}

/// An export of the compose configs' three sources after one sync: 30
/// records of each kind.
fn assert_thirty_of_each_kind(export: &str) {
    let mut kinds: Vec<String> = export
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            v["kind"].as_str().expect("kind").to_string()
        })
        .collect();
    assert_eq!(kinds.len(), 90, "30 records of each source");
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds, ["calendar", "content", "demarches"]);
}
