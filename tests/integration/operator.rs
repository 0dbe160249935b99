//! What an operator runs by hand next to the service: `status`, `export`,
//! `forget`, `check`, against the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::*;

const DEMARCHE: i64 = 4242;

/// A config with one démarche source (literal token) and the database at
/// `database`, written as given, in a fresh temp folder.
fn config_with_database(database: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("synchro.toml");
    std::fs::write(
        &path,
        format!(
            "[storage]\ndatabase = \"{database}\"\n\n[[tenants]]\nid = \"acme\"\n\n\
             [[tenants.sources]]\nid = \"permits\"\nkind = \"demarches\"\nschedule = \"every 1h\"\n\
             endpoint = \"http://127.0.0.1:9/graphql\"\ntoken = \"literal-token\"\ndemarche = 1\n"
        ),
    )
    .expect("write config");
    (dir, path)
}

/// Runs `synchro ARGS` from the config's folder, so that a relative path
/// can never escape the test's temp folder.
fn synchro(config: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .current_dir(config.parent().expect("config folder"))
        .arg("--config")
        .arg(config)
        .arg("--log-format")
        .arg("text")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run synchro")
}

/// Every entry under `dir`, recursively, for "nothing was created" checks.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn status_and_export_on_a_missing_database_exit_1_naming_it_and_create_nothing() {
    let (dir, config) = config_with_database("sqlite://missing/folder/synchro.db");
    let before = tree(dir.path());
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["export"],
        &["export", "--all"],
        &["export", "acme/permits"],
    ] {
        let out = synchro(&config, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("synchro.db does not exist"), "{args:?}: {err}");
        assert!(err.contains("missing/folder"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        assert_eq!(tree(dir.path()), before, "{args:?} created something");
    }
    // A bad name is a usage error whether or not there is a database.
    for args in [&["export", "acme/nope"][..], &["export", "nope"]] {
        let out = synchro(&config, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert_eq!(tree(dir.path()), before, "{args:?} created something");
    }
}

/// Size and modification time of the database and which of its side files
/// exist: what a read must leave as it was.
fn footprint(db: &Path) -> (u64, std::time::SystemTime, Vec<bool>) {
    let meta = std::fs::metadata(db).expect("database");
    let side = ["-wal", "-shm", "-journal"]
        .iter()
        .map(|s| {
            let mut p = db.as_os_str().to_owned();
            p.push(s);
            Path::new(&p).exists()
        })
        .collect();
    (meta.len(), meta.modified().expect("mtime"), side)
}

/// How `run_in_read_only_folder` made the folder read-only.
#[derive(Debug, PartialEq)]
enum ReadOnly {
    /// chmod 0555 is enough: not root.
    Permissions,
    /// Root ignores permissions: a read-only bind mount of the folder, in a
    /// private mount namespace of the command alone.
    BindMount,
    /// Neither worked (root without CAP_SYS_ADMIN): the command ran on a
    /// writable folder and only the footprint checks apply.
    NotPossible,
}

/// Exit code of the wrapper when the folder could not be made read-only.
const NO_READ_ONLY_MOUNT: i32 = 97;

/// Runs `synchro ARGS` with `dir` (holding config and database) read-only.
fn run_in_read_only_folder(dir: &Path, config: &Path, args: &[&str]) -> (Output, ReadOnly) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let probe = dir.join(".probe");
    let writable = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    let result = if !writable {
        (synchro(config, args), ReadOnly::Permissions)
    } else {
        let script = format!(
            "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" \"$1\" || exit {NO_READ_ONLY_MOUNT}; \
             if touch \"$1/.probe\" 2>/dev/null; then exit {NO_READ_ONLY_MOUNT}; fi; shift; exec \"$@\""
        );
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(script)
            .arg("sh")
            .arg(dir)
            .arg(bin())
            .arg("--config")
            .arg(config)
            .args(["--log-format", "text"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) if out.status.code() != Some(NO_READ_ONLY_MOUNT) => (out, ReadOnly::BindMount),
            _ => {
                eprintln!(
                    "note: cannot make {} read-only for root here (no mount namespace); \
                     checking only that the read leaves the database untouched",
                    dir.display()
                );
                (synchro(config, args), ReadOnly::NotPossible)
            }
        }
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod back");
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_export_read_a_database_in_a_read_only_folder_and_change_nothing() {
    if sqlite_only("a SQLite file in a read-only folder") {
        return;
    }
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 130);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", DEMARCHE)]);
    setup.sync_ok(&[]).await;
    let db = setup.db_path();
    let before = footprint(&db);
    assert_eq!(
        before.2,
        [false, false, false],
        "a clean close leaves no side file"
    );
    let dir = setup.dir.path().to_path_buf();
    let config = setup.config.clone();

    let (status, how) = tokio::task::spawn_blocking({
        let (dir, config) = (dir.clone(), config.clone());
        move || run_in_read_only_folder(&dir, &config, &["status"])
    })
    .await
    .expect("join");
    assert_eq!(status.status.code(), Some(0), "status: {}", stderr(&status));
    let table = String::from_utf8_lossy(&status.stdout).into_owned();
    let row = table
        .lines()
        .find(|l| l.starts_with("acme/permits"))
        .unwrap_or_else(|| panic!("no row in:\n{table}"));
    assert!(row.contains(" 130 "), "{row}");

    let (export, how_export) = tokio::task::spawn_blocking({
        let (dir, config) = (dir.clone(), config.clone());
        move || run_in_read_only_folder(&dir, &config, &["export"])
    })
    .await
    .expect("join");
    assert_eq!(export.status.code(), Some(0), "export: {}", stderr(&export));
    assert_eq!(String::from_utf8_lossy(&export.stdout).lines().count(), 130);
    assert_eq!(how, how_export);
    let after = footprint(&db);
    if how == ReadOnly::NotPossible {
        // On a writable folder a `mode=ro` reader of a WAL database still
        // creates the usual empty `-wal`/`-shm` side files (any SQLite
        // reader does); the database itself must be untouched.
        eprintln!("note: the read-only file system part was skipped");
        assert_eq!(
            (after.0, after.1),
            (before.0, before.1),
            "the read changed the database"
        );
    } else {
        assert_eq!(after, before, "the read changed the folder ({how:?})");
    }
}

/// Replaces the démarche token of a `Setup` config by a reference to a
/// variable that no shell of the test sets.
const UNSET_VAR: &str = "SYNCHRO_TEST_OPERATOR_TOKEN_NOT_IN_THIS_SHELL";

fn token_from_unset_variable(setup: &Setup) {
    setup.edit_config(
        &format!("token = \"{}\"", synchro_simulator::DEFAULT_DS_TOKEN),
        &format!("token = {{ env = \"{UNSET_VAR}\" }}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_export_warn_about_a_missing_secret_while_sync_check_and_run_refuse() {
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 40);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", DEMARCHE)]);
    setup.sync_ok(&[]).await;
    token_from_unset_variable(&setup);

    for args in [&["status"][..], &["export"]] {
        let mut cmd = setup.cmd(args);
        let out = cmd.env_remove(UNSET_VAR).output().expect("run");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.contains("WARN"), "{args:?}: {err}");
        assert!(err.contains(&format!("environment variable {UNSET_VAR} is not set")));
        assert!(err.contains("tenants[0].sources[0].token"), "{err}");
        assert!(!out.stdout.is_empty(), "{args:?} printed nothing");
    }
    let export = setup.export(false).await;
    assert_eq!(export.len(), 40);

    for args in [&["sync"][..], &["check"], &["run"]] {
        let mut child = setup
            .cmd(args)
            .env_remove(UNSET_VAR)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{args:?} did not refuse to start");
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
            .expect("stderr");
        assert_eq!(status.code(), Some(78), "{args:?}: {err}");
        assert!(err.contains(UNSET_VAR), "{args:?}: {err}");
    }

    // A real config error still stops the reading commands.
    setup.edit_config("[server]", "[server]\ncolour = \"blue\"");
    for args in [&["status"][..], &["export"]] {
        let out = setup.run(args).await;
        assert_eq!(out.status.code(), Some(78), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("server.colour: unknown key"));
    }
}

/// Runs `synchro --config CONFIG ARGS` from `cwd`, with `env` added.
fn synchro_in(cwd: &Path, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin())
        .current_dir(cwd)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("SYNCHRO__STORAGE__DATABASE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run synchro")
}

#[test]
fn a_relative_database_path_is_taken_from_the_config_folder_whatever_the_working_directory() {
    let (dir, _) = config_with_database("unused");
    let etc = dir.path().join("etc");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&etc).expect("mkdir");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let config = etc.join("synchro.toml");
    std::fs::rename(dir.path().join("synchro.toml"), &config).expect("move");
    let text = std::fs::read_to_string(&config)
        .expect("read")
        .replace("\"unused\"", "\"sqlite://state/synchro.db\"");
    std::fs::write(&config, text).expect("write");
    let expected = etc.join("state/synchro.db");

    // `check` from the config's parent with a relative --config, then from
    // elsewhere with an absolute one: the same file, which check names.
    let out = synchro_in(dir.path(), Path::new("etc/synchro.toml"), &["check"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains(&format!("database {} reachable", expected.display())),
        "{said}"
    );
    assert!(expected.exists());
    assert!(
        !dir.path().join("state").exists(),
        "not the working directory"
    );
    let out = synchro_in(&elsewhere, &config, &["status"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("acme/permits"));
    assert_eq!(std::fs::read_dir(&elsewhere).expect("ls").count(), 0);

    // An override with a relative path is taken from the config's folder too.
    let out = synchro_in(
        &elsewhere,
        &config,
        &["check"],
        &[("SYNCHRO__STORAGE__DATABASE", "sqlite://other.db")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains(&format!(
            "database {} reachable",
            etc.join("other.db").display()
        )),
        "{said}"
    );
    assert_eq!(std::fs::read_dir(&elsewhere).expect("ls").count(), 0);
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn sources_of(lines: &[serde_json::Value]) -> Vec<String> {
    let mut names: Vec<String> = lines
        .iter()
        .map(|l| {
            format!(
                "{}/{}",
                l["tenant"].as_str().unwrap_or(""),
                l["source"].as_str().unwrap_or("")
            )
        })
        .collect();
    names.dedup();
    names
}

async fn rows_of(db: &Db, source: &str) -> Vec<i64> {
    let mut conn = db.connect().await.expect("open db");
    let mut counts = Vec::new();
    for table in ["records", "progress", "runs", "outbox"] {
        let sql = format!("SELECT count(*) FROM {table} WHERE tenant = 'acme' AND source = ?1");
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(db.sql(&sql)))
            .bind(source)
            .fetch_one(&mut conn)
            .await
            .expect("count");
        counts.push(n);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_source_is_exported_only_with_all_and_forget_deletes_it() {
    let sim = simulator().await;
    sim.ds().seed(DEMARCHE, 30);
    sim.ds().seed(DEMARCHE + 1, 20);
    let setup = Setup::new(
        &sim,
        &[
            DsSource::new("acme", "permits", DEMARCHE),
            DsSource::new("acme", "old", DEMARCHE + 1),
        ],
    );
    setup.sync_ok(&[]).await;
    // `old` leaves the config (a new source takes its place), and this
    // shell has none of the tokens.
    setup.edit_config("id = \"old\"", "id = \"renamed\"");
    token_from_unset_variable(&setup);
    let db = setup.db();

    let out = setup.run(&["export"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let configured = lines(&out);
    assert_eq!(sources_of(&configured), ["acme/permits"]);
    assert_eq!(configured.len(), 30);

    let out = setup.run(&["export", "--all"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all = lines(&out);
    assert_eq!(
        sources_of(&all),
        ["acme/old", "acme/permits"],
        "in name order"
    );
    assert_eq!(all.len(), 50);

    let out = setup.run(&["export", "acme/old"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("export --all acme/old"),
        "{}",
        stderr(&out)
    );
    let out = setup.run(&["export", "--all", "acme/old"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(sources_of(&lines(&out)), ["acme/old"]);
    assert_eq!(lines(&out).len(), 20);
    let out = setup.run(&["export", "--all", "acme/nope"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown source acme/nope"),
        "{}",
        stderr(&out)
    );

    let status = setup.run(&["status"]).await;
    let table = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        table.contains("acme/renamed") && !table.contains("acme/old "),
        "{table}"
    );

    // forget refuses configured and unknown sources, and changes nothing then.
    let before = rows_of(&db, "old").await;
    assert_eq!(before[0], 20);
    assert!(before[1] > 0 && before[2] > 0, "{before:?}");
    for (args, says) in [
        (
            &["forget", "acme/permits"][..],
            "acme/permits is still configured",
        ),
        (
            &["forget", "acme/old", "acme/renamed"],
            "acme/renamed is still configured",
        ),
        (
            &["forget", "acme/nope"],
            "unknown source acme/nope (stored but not configured: acme/old)",
        ),
        (
            &["forget", "acme/old", "acme/nope"],
            "unknown source acme/nope",
        ),
        (&["forget", "nope"], "expected TENANT/SOURCE_ID"),
    ] {
        let out = setup.run(args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert_eq!(
            rows_of(&db, "old").await,
            before,
            "{args:?} deleted something"
        );
    }
    let out = setup.run(&["forget"]).await;
    assert_eq!(out.status.code(), Some(2), "a source is required");

    let out = setup.run(&["forget", "acme/old"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.starts_with("acme/old: forgotten (20 records, "),
        "{said}"
    );
    assert_eq!(rows_of(&db, "old").await, [0, 0, 0, 0]);
    assert_eq!(rows_of(&db, "permits").await[0], 30, "the others are kept");
    let out = setup.run(&["export", "--all"]).await;
    assert_eq!(sources_of(&lines(&out)), ["acme/permits"]);
    let out = setup.run(&["forget", "acme/old"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "forgotten already: {}",
        stderr(&out)
    );
}

#[test]
fn forget_on_a_missing_database_exits_1_and_creates_nothing() {
    let (dir, config) = config_with_database("sqlite://missing/synchro.db");
    let before = tree(dir.path());
    let out = synchro(&config, &["forget", "acme/old"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert_eq!(tree(dir.path()), before);
}

fn help_of(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .arg("--help")
        .env_remove("SYNCHRO_CONFIG")
        .output()
        .expect("run synchro");
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The help line of `option` in `text`, which must say more than its name.
fn explained<'a>(text: &'a str, option: &str) -> &'a str {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(option))
        .unwrap_or_else(|| panic!("{option} missing from:\n{text}"));
    let words = line.split_whitespace().count();
    assert!(words >= 4, "{option} has no help text: {line:?}");
    line
}

#[test]
fn every_option_is_explained_and_demo_and_simulate_take_no_config() {
    for sub in ["demo", "simulate"] {
        let text = help_of(&[sub]);
        assert!(!text.contains("--config"), "{sub} --help:\n{text}");
        let out = Command::new(bin())
            .args([sub, "--config", "x.toml"])
            .output()
            .expect("run synchro");
        assert_eq!(out.status.code(), Some(2), "{sub}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("reads no config file"),
            "{}",
            stderr(&out)
        );
    }
    explained(&help_of(&["simulate"]), "--listen");
    explained(&help_of(&["status"]), "--json");
    let export = help_of(&["export"]);
    explained(&export, "--include-deleted");
    assert!(explained(&export, "--all").contains("no longer in the config"));
    for sub in ["status", "export", "forget", "check"] {
        explained(&help_of(&[sub]), "--config");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_store_copies_a_database_into_an_empty_one_and_proves_it_by_the_export() {
    let sim = simulator().await;
    let numbers = sim.ds().seed(DEMARCHE, 70);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", DEMARCHE)]);
    setup.sync_ok(&[]).await;
    sim.ds().purge(numbers[3], None);
    setup.sync_ok(&[]).await;
    let copy = setup.dir.path().join("copy/synchro.db");
    let to = format!("sqlite://{}", copy.display());

    let out = setup.run(&["copy-store", "--to", &to]).await;
    assert_eq!(out.status.code(), Some(0), "copy-store: {}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("records: 70 row(s) copied"), "{stdout}");
    assert!(stdout.contains("runs: 2 row(s) copied"), "{stdout}");
    assert!(stdout.contains("verified"), "{stdout}");

    // The copy serves the same export, tombstones included, as the original.
    let original = setup.run(&["export", "--include-deleted"]).await;
    setup.edit_config(&setup.database_url(), &to);
    let copied = setup.run(&["export", "--include-deleted"]).await;
    assert_eq!(copied.status.code(), Some(0), "{}", stderr(&copied));
    assert_eq!(
        String::from_utf8_lossy(&original.stdout),
        String::from_utf8_lossy(&copied.stdout)
    );
    assert!(String::from_utf8_lossy(&copied.stdout).contains("\"deleted\":true"));

    // A second copy into the now filled database is refused: nothing merges.
    let again = setup.run(&["copy-store", "--to", &to]).await;
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already holds data"),
        "{}",
        stderr(&again)
    );

    // The password comes from a variable or a file, never the command line;
    // a variable that is not set is a usage error.
    let unset = setup
        .run(&[
            "copy-store",
            "--to",
            "postgres://synchro@127.0.0.1:9/x",
            "--to-password-env",
            "SYNCHRO_TEST_NO_SUCH_PASSWORD_VAR",
        ])
        .await;
    assert_eq!(unset.status.code(), Some(2), "{}", stderr(&unset));
    assert!(stderr(&unset).contains("SYNCHRO_TEST_NO_SUCH_PASSWORD_VAR"));
}
