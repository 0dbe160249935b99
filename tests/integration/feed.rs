//! The change feed end to end, with the real binary: consumers that follow
//! `GET /v1/changes` and `export --since` while the upstreams move and the
//! daemon is stopped and killed keep an exact copy, receive every seq once
//! and in order; a reader behind the tombstone retention is sent to resync
//! (HTTP 410, exit 3) and one at the head is not; read tokens keep each
//! tenant to its own changes on the running daemon.

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use synchro_simulator::{Fault, Simulator};

use crate::common::*;

const PERMITS: i64 = 4_201;
const CALENDAR: &str = "feed@example.com";
const ADMIN_TOKEN: &str = "feed-admin-read-token-7c1d";
const HOOK_TOKEN: &str = "feed-content-hook-token-51";
const CHANNEL_TOKEN: &str = "feed-calendar-channel-token";

/// The configured sources of the chaos tests, as (tenant, source).
const SOURCES: [(&str, &str); 3] = [
    ("acme", "permits"),
    ("acme", "translations"),
    ("globex", "team"),
];

/// A record: (tenant, source, id).
type Key = (String, String, String);

fn key_of(line: &Value) -> Key {
    let field = |f: &str| {
        line[f]
            .as_str()
            .unwrap_or_else(|| panic!("a feed line without {f}: {line}"))
            .to_string()
    };
    (field("tenant"), field("source"), field("id"))
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Whether process `pid` catches SIGINT (Linux: `SigCgt` in its status).
fn catches_sigint(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (2 - 1)) != 0)
}

fn parse_lines(text: &str, what: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: {e}: {l}")))
        .collect()
}

/// One answer of the daemon's HTTP surface.
struct Answer {
    status: u16,
    next_since: Option<i64>,
    www_authenticate: Option<String>,
    body: String,
}

/// `GET url` with this `Authorization` header value, if any.
async fn get(
    client: &reqwest::Client,
    url: &str,
    authorization: Option<&str>,
) -> reqwest::Result<Answer> {
    let mut req = client.get(url);
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    let resp = req.send().await?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let next_since = header("synchro-next-since").map(|v| {
        v.parse()
            .unwrap_or_else(|e| panic!("Synchro-Next-Since {v:?}: {e}"))
    });
    let www_authenticate = header("www-authenticate");
    let status = resp.status().as_u16();
    let body = resp.text().await?;
    Ok(Answer {
        status,
        next_since,
        www_authenticate,
        body,
    })
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn changes_url(port: u16, query: &str) -> String {
    format!("http://127.0.0.1:{port}/v1/changes?{query}")
}

async fn wait_ready(port: u16) {
    let url = format!("http://127.0.0.1:{port}/readyz");
    wait_until(Duration::from_secs(30), "readyz 200", || {
        let url = url.clone();
        async move {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().as_u16() == 200)
        }
    })
    .await;
}

/// SIGTERM, then the exit: 0, within the shutdown deadline.
async fn stop(child: Child) {
    signal(&child, "TERM");
    assert_exits_0(child).await;
}

/// SIGKILL, and the process reaped.
fn kill(mut child: Child) {
    signal(&child, "KILL");
    child.wait().expect("reap");
}

/// Waits until every source has a successful run that started after
/// `since_us`: the copy then holds every upstream change made before.
async fn wait_for_a_run_of_each_since(db: &Db, since_us: i64, what: &str) {
    wait_for_runs_since(db, &SOURCES, since_us, Duration::from_secs(60), what).await;
}

/// The database's counter: (last_seq, purged_through).
async fn counter(db: &Db) -> (i64, i64) {
    (
        db.count("SELECT last_seq FROM change_seq WHERE id = 1", &[])
            .await,
        db.count("SELECT purged_through FROM change_seq WHERE id = 1", &[])
            .await,
    )
}

/// Waits until the `tombstones` stored are older than the tests' 1 s
/// retention, then starts the daemon, which purges them as it starts, and
/// waits until its purge raised the horizon to `newest_tombstone`.
async fn start_purging(setup: &Setup, port: u16, tombstones: i64, newest_tombstone: i64) -> Child {
    let db = setup.db();
    wait_until(
        Duration::from_secs(20),
        "tombstones older than the retention",
        || {
            let db = db.clone();
            async move {
                let cutoff = now_us() - 1_100_000;
                db.count(
                    &format!(
                        "SELECT count(*) FROM records WHERE deleted = TRUE AND stored_at < {cutoff}"
                    ),
                    &[],
                )
                .await
                    == tombstones
            }
        },
    )
    .await;
    let daemon = setup.spawn(&["run"]);
    wait_ready(port).await;
    wait_until(Duration::from_secs(20), "the daemon's purge", || {
        let db = db.clone();
        async move { counter(&db).await.1 >= newest_tombstone }
    })
    .await;
    daemon
}

/// What a consumer of the feed holds: its position, a copy of the live
/// records, and everything it ever received, checked as it comes.
#[derive(Default)]
struct LocalCopy {
    /// Where it reads on from.
    since: i64,
    /// The highest seq received.
    highest: i64,
    /// Every (tenant, source, id, seq) received.
    seen: HashSet<(String, String, String, i64)>,
    /// The live records: data by key.
    records: BTreeMap<Key, Value>,
    lines: u64,
    http_reads: u64,
    cli_reads: u64,
    follow_reads: u64,
}

impl LocalCopy {
    /// Applies the lines of one read, in their order: each must come after
    /// everything received before (never a seq twice, never out of order).
    fn apply(&mut self, lines: &[Value], via: &str) {
        for l in lines {
            let seq = l["seq"]
                .as_i64()
                .unwrap_or_else(|| panic!("{via}: a line without seq: {l}"));
            assert!(
                seq > self.highest && seq > self.since,
                "{via}: seq {seq} came after seq {} (position {}): a change out of order or twice: {l}",
                self.highest,
                self.since
            );
            self.highest = seq;
            let (tenant, source, id) = key_of(l);
            assert!(
                self.seen
                    .insert((tenant.clone(), source.clone(), id.clone(), seq)),
                "{via}: {tenant}/{source}/{id} seq {seq} received twice"
            );
            let key = (tenant, source, id);
            match &l["deleted"] {
                Value::Bool(true) => {
                    self.records.remove(&key);
                }
                Value::Bool(false) => {
                    self.records.insert(key, l["data"].clone());
                }
                other => panic!("{via}: deleted is {other}: {l}"),
            }
            self.lines += 1;
        }
        self.since = self.since.max(self.highest);
    }
}

/// A consumer of the feed: over HTTP from one of `ports` (moving to the
/// next when one does not answer), and, when `cli`, with `export --since`
/// (with and without `--follow`).
struct Consumer {
    setup: Arc<Setup>,
    ports: Vec<u16>,
    current: usize,
    cli: bool,
    client: reqwest::Client,
    copy: LocalCopy,
    /// Times the current replica did not answer and the next was tried.
    switches: u64,
}

/// A read that got no answer (the daemon is down): try another way.
struct NoAnswer;

impl Consumer {
    fn new(setup: Arc<Setup>, ports: Vec<u16>, cli: bool) -> Self {
        Self {
            setup,
            ports,
            current: 0,
            cli,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client"),
            copy: LocalCopy::default(),
            switches: 0,
        }
    }

    /// One `GET /v1/changes` from the current replica; the number of lines.
    async fn read_http(&mut self, limit: u32, wait: f64) -> Result<usize, NoAnswer> {
        let port = self.ports[self.current];
        let url = changes_url(
            port,
            &format!("since={}&limit={limit}&wait={wait}", self.copy.since),
        );
        let answer = match get(&self.client, &url, Some(&bearer(ADMIN_TOKEN))).await {
            Ok(a) if a.status == 503 => Err(NoAnswer),
            Ok(a) => Ok(a),
            Err(_) => Err(NoAnswer),
        };
        let Ok(answer) = answer else {
            self.current = (self.current + 1) % self.ports.len();
            self.switches += 1;
            return Err(NoAnswer);
        };
        assert_eq!(
            answer.status, 200,
            "GET {url}: {} {}",
            answer.status, answer.body
        );
        let lines = parse_lines(&answer.body, "/v1/changes");
        assert!(
            lines.len() <= limit as usize,
            "{url}: more than {limit} lines"
        );
        let next = answer.next_since.expect("Synchro-Next-Since");
        self.copy.apply(&lines, &format!("GET {url}"));
        assert!(
            next >= self.copy.since,
            "{url}: Synchro-Next-Since {next} is behind the last line's seq {}",
            self.copy.since
        );
        if lines.len() == limit as usize {
            assert_eq!(
                next, self.copy.since,
                "{url}: a full page goes on from its last line"
            );
        }
        self.copy.since = next;
        self.copy.http_reads += 1;
        Ok(lines.len())
    }

    /// One `synchro export --since`; the number of lines.
    async fn read_cli(&mut self) -> usize {
        let since = self.copy.since.to_string();
        let out = self.setup.run(&["export", "--since", &since]).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "export --since {since}: {}",
            stderr(&out)
        );
        let text = String::from_utf8(out.stdout).expect("utf8");
        let lines = parse_lines(&text, "export --since");
        self.copy.apply(&lines, &format!("export --since {since}"));
        self.copy.cli_reads += 1;
        lines.len()
    }

    /// `synchro export --since --follow` for `window`, then SIGINT: what it
    /// printed, up to its clean exit.
    async fn read_follow(&mut self, window: Duration) -> usize {
        let since = self.copy.since.to_string();
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.setup.dir.path().join("follow.log"))
            .expect("log file");
        let mut child = self
            .setup
            .cmd(&["export", "--since", &since, "--follow"])
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn export --follow");
        let mut stdout = child.stdout.take().expect("stdout");
        let reader = tokio::task::spawn_blocking(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut text).expect("read export --follow");
            text
        });
        // SIGINT stops it cleanly once it catches the signal (before, the
        // signal's default action would end it).
        let pid = child.id();
        wait_until(
            Duration::from_secs(20),
            "export --follow handling SIGINT",
            || async move { catches_sigint(pid) },
        )
        .await;
        tokio::time::sleep(window).await;
        signal(&child, "INT");
        let text = reader.await.expect("join");
        let status = tokio::task::spawn_blocking(move || child.wait().expect("wait"))
            .await
            .expect("join");
        assert_eq!(status.code(), Some(0), "export --follow stopped by SIGINT");
        let lines = parse_lines(&text, "export --follow");
        self.copy
            .apply(&lines, &format!("export --since {since} --follow"));
        self.copy.follow_reads += 1;
        lines.len()
    }

    /// One read, by a way `rng` picks among those available; HTTP retried
    /// on the next replica (or through the CLI) when unanswered.
    async fn read_some(&mut self, rng: &mut StdRng) {
        let way = if self.cli { rng.random_range(0..10) } else { 0 };
        match way {
            0..=5 => {
                let limit = [1, 3, 10, 50, 1000][rng.random_range(0..5)];
                let wait = f64::from(rng.random_range(0..=12u32)) / 10.0;
                if self.read_http(limit, wait).await.is_err() {
                    if self.cli {
                        self.read_cli().await;
                    } else {
                        // Every replica tried in turn: one that restarts
                        // answers again soon.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            6..=8 => {
                self.read_cli().await;
            }
            _ => {
                let window = Duration::from_millis(rng.random_range(100..800));
                self.read_follow(window).await;
            }
        }
    }

    /// Reads until a read finds nothing new: over HTTP when a daemon runs,
    /// else through the CLI.
    async fn catch_up(&mut self, http: bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "could not catch up");
            let n = if http {
                match self.read_http(1000, 0.0).await {
                    Ok(n) => n,
                    Err(NoAnswer) => continue,
                }
            } else {
                self.read_cli().await
            };
            if n == 0 {
                return;
            }
        }
    }
}

/// Follows the feed until `stop`, then hands back the consumer.
fn follow(
    mut consumer: Consumer,
    mut rng: StdRng,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Consumer> {
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            consumer.read_some(&mut rng).await;
        }
        consumer
    })
}

/// What the upstreams hold now, as the copy should: data by key.
async fn upstream(sim: &Simulator) -> BTreeMap<Key, Value> {
    let mut all = BTreeMap::new();
    for d in sim.ds().snapshot(PERMITS).await {
        let key = ("acme".into(), "permits".into(), d["number"].to_string());
        all.insert(key, d);
    }
    for e in sim.calendar().live_events(CALENDAR) {
        let id = e["id"].as_str().expect("event id").to_string();
        all.insert(("globex".into(), "team".into(), id), e);
    }
    for r in sim.content().api_requests() {
        let key = ("acme".into(), "translations".into(), r["id"].to_string());
        all.insert(key, r);
    }
    all
}

/// Asserts that two copies are equal, naming the first differences.
fn assert_same(what: &str, got: &BTreeMap<Key, Value>, expected: &BTreeMap<Key, Value>) {
    let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    let differ: Vec<_> = expected
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "{what}: {} records, {} expected; missing {:?}; extra {:?}; payload differs {:?}",
        got.len(),
        expected.len(),
        &missing[..missing.len().min(10)],
        &extra[..extra.len().min(10)],
        &differ[..differ.len().min(10)],
    );
}

/// The final checks of a chaos test, once the upstreams stopped moving,
/// every source synced after that and the consumer caught up: the
/// consumer's copy is the upstreams' state and `synchro export`'s, and it
/// received the last change of every stored record, tombstones included.
async fn assert_consumer_exact(setup: &Setup, sim: &Simulator, copy: &LocalCopy) {
    let expected = upstream(sim).await;
    assert_same(
        "the consumer's copy against upstream",
        &copy.records,
        &expected,
    );
    let mut exported = BTreeMap::new();
    for l in setup.export(false).await {
        exported.insert(key_of(&l), l["data"].clone());
    }
    assert_same("synchro export against upstream", &exported, &expected);
    for l in setup.export(true).await {
        let (tenant, source, id) = key_of(&l);
        let seq = l["seq"].as_i64().expect("seq");
        assert!(
            copy.seen
                .contains(&(tenant.clone(), source.clone(), id.clone(), seq)),
            "the consumer never received {tenant}/{source}/{id} seq {seq} (deleted: {})",
            l["deleted"]
        );
    }
    assert_export_matches(setup, sim, "acme", "permits", PERMITS).await;
    assert_calendar_matches(setup, sim, "globex", "team", CALENDAR).await;
    assert_content_matches(setup, sim, "acme", "translations", &[]).await;
}

/// The three kinds, every second, slow enough upstreams that kills land
/// inside syncs; an admin read token; webhooks for Contentor and Calendar.
fn chaos_setup(sim: &Simulator) -> Setup {
    sim.ds().seed(PERMITS, 40);
    sim.calendar().seed(CALENDAR, 30);
    sim.content().seed(20, 4);
    sim.content().set_page_size(7);
    let slow = Fault::Slow(Duration::from_millis(4));
    sim.ds().inject(slow.clone(), 1_000_000);
    sim.calendar().inject(slow.clone(), 1_000_000);
    sim.content().inject(slow, 1_000_000);
    let mut permits = DsSource::new("acme", "permits", PERMITS);
    permits.page_size = 8;
    let mut team = CalSource::new("globex", "team", CALENDAR);
    team.max_results = 8;
    team.channel_token = Some(CHANNEL_TOKEN);
    let mut translations = ContentSource::new("acme", "translations");
    translations.webhook_token = Some(HOOK_TOKEN);
    let setup = Setup::build_all(sim, &[permits], &[team], &[translations]);
    setup.edit_config("schedule = \"every 1h\"", "schedule = \"every 1s\"");
    setup.edit_config("jitter = \"0s\"", "jitter = \"0s\"\nlease_ttl = \"2s\"");
    setup.edit_config(
        "listen = ",
        &format!("admin_read_token = \"{ADMIN_TOKEN}\"\nlisten = "),
    );
    setup
}

/// One random upstream change (or a nudge: a webhook, a reset), named.
async fn mutate(
    sim: &Simulator,
    rng: &mut StdRng,
    hidden: &mut Vec<i64>,
    setup: &Setup,
    port: u16,
    client: &reqwest::Client,
) -> &'static str {
    fn pick<T: Clone>(rng: &mut StdRng, v: &[T]) -> Option<T> {
        (!v.is_empty()).then(|| v[rng.random_range(0..v.len())].clone())
    }
    let live = sim.ds().live_numbers(PERMITS);
    let events: Vec<String> = sim
        .calendar()
        .live_events(CALENDAR)
        .iter()
        .filter_map(|e| e["id"].as_str().map(String::from))
        .collect();
    let requests: Vec<i64> = sim
        .content()
        .api_requests()
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    match rng.random_range(0..16) {
        0 | 1 => {
            sim.ds().create(PERMITS);
            "ds create"
        }
        2 | 3 => {
            if let Some(n) = pick(rng, &live) {
                sim.ds().update(n);
            }
            "ds update"
        }
        4 => {
            if let Some(n) = pick(rng, &live) {
                sim.ds().hide(n);
                hidden.push(n);
            }
            "ds hide"
        }
        5 => {
            let mut candidates = live.clone();
            candidates.extend(hidden.iter());
            if let Some(n) = pick(rng, &candidates) {
                sim.ds().purge(n, None);
                hidden.retain(|h| *h != n);
            }
            "ds delete"
        }
        6 => {
            if let Some(n) = pick(rng, hidden) {
                sim.ds().restore(n);
                hidden.retain(|h| *h != n);
            }
            "ds restore"
        }
        7 => {
            sim.calendar().create(CALENDAR);
            "calendar create"
        }
        8 => {
            if let Some(id) = pick(rng, &events) {
                sim.calendar().update(CALENDAR, &id);
            }
            "calendar update"
        }
        9 => {
            if let Some(id) = pick(rng, &events) {
                sim.calendar().cancel(CALENDAR, &id);
            }
            "calendar cancel"
        }
        10 => {
            // Gone without a cancellation, then 410: only the full resync's
            // sweep can tell the copy.
            if let Some(id) = pick(rng, &events) {
                sim.calendar().purge_silently(CALENDAR, &id);
            }
            sim.calendar().expire_sync_tokens(CALENDAR);
            "calendar purge + 410"
        }
        11 => {
            sim.content().seed(rng.random_range(1..=3), 1);
            "content create"
        }
        12 => {
            let state =
                ["pending", "confirmed", "completed", "canceled", "failed"][rng.random_range(0..5)];
            if let Some(id) = pick(rng, &requests) {
                sim.content().set_state(id, state);
            }
            "content state"
        }
        13 => {
            if let Some(id) = pick(rng, &requests) {
                sim.content().set_state(id, "completed");
                let url = format!("http://127.0.0.1:{port}/webhooks/content/acme/translations");
                // The daemon may be down: the next sync brings it then.
                let _ = sim
                    .content()
                    .deliver(&url, HOOK_TOKEN, &sim.content().webhook_body(id))
                    .await;
            }
            "content webhook"
        }
        14 => {
            if let Some(id) = pick(rng, &events) {
                sim.calendar().update(CALENDAR, &id);
            }
            let _ = client
                .post(format!(
                    "http://127.0.0.1:{port}/webhooks/calendar/globex/team"
                ))
                .header("X-Goog-Channel-Token", CHANNEL_TOKEN)
                .header("X-Goog-Resource-State", "exists")
                .send()
                .await;
            "calendar webhook"
        }
        _ => {
            let source =
                ["acme/permits", "acme/translations", "globex/team"][rng.random_range(0..3)];
            let out = setup.run(&["reset", source]).await;
            assert_eq!(
                out.status.code(),
                Some(0),
                "reset {source}: {}",
                stderr(&out)
            );
            "reset"
        }
    }
}

/// Waits until some upstream request lands after now (a sync is under
/// way), then a little more, at random.
async fn mid_sync(sim: &Simulator, rng: &mut StdRng) {
    let total = |sim: &Simulator| {
        sim.ds().requests() + sim.calendar().requests() + sim.content().requests()
    };
    let before = total(sim);
    wait_until(Duration::from_secs(20), "a sync under way", || {
        let now = total(sim);
        async move { now > before }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
}

/// The chaos consumer: one daemon (stopped and killed at random, also mid
/// sync), random upstream changes of every kind, and a consumer that reads
/// the feed over HTTP (long polls included) and with `export --since`
/// (`--follow` too) all along. It receives every seq once and in order,
/// and ends with exactly the upstreams' records, as `synchro export` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_following_the_feed_through_restarts_and_kills_keeps_an_exact_copy() {
    const ROUNDS: usize = 30;
    let test = "a_consumer_following_the_feed_through_restarts_and_kills_keeps_an_exact_copy";
    let mut rng = seeded_rng(test);
    let started = Instant::now();
    let sim = simulator().await;
    let setup = chaos_setup(&sim);
    let port = setup.use_free_port();
    let setup = Arc::new(setup);
    let db = setup.db();
    let client = reqwest::Client::new();

    let mut daemon = setup.spawn(&["run"]);
    wait_ready(port).await;
    let stop_reading = Arc::new(AtomicBool::new(false));
    let consumer = follow(
        Consumer::new(setup.clone(), vec![port], true),
        StdRng::seed_from_u64(rng.random()),
        stop_reading.clone(),
    );

    let mut hidden = Vec::new();
    let (mut restarts, mut kills) = (0, 0);
    for round in 0..ROUNDS {
        let mark = now_us();
        let mut done = Vec::new();
        for _ in 0..rng.random_range(2..8) {
            done.push(mutate(&sim, &mut rng, &mut hidden, &setup, port, &client).await);
        }
        let action = match rng.random_range(0..10) {
            0..=2 => {
                stop(daemon).await;
                restarts += 1;
                daemon = setup.spawn(&["run"]);
                wait_ready(port).await;
                "restart"
            }
            3..=5 => {
                mid_sync(&sim, &mut rng).await;
                kill(daemon);
                kills += 1;
                daemon = setup.spawn(&["run"]);
                wait_ready(port).await;
                "SIGKILL"
            }
            _ => "-",
        };
        eprintln!("round {round}: {done:?}, daemon: {action}");
        if rng.random_bool(0.5) {
            wait_for_a_run_of_each_since(&db, mark, &format!("round {round} synced")).await;
        }
    }

    // The upstreams stop moving; every source syncs once more; the
    // consumer catches up.
    sim.ds().clear_faults();
    sim.calendar().clear_faults();
    sim.content().clear_faults();
    let mark = now_us();
    wait_for_a_run_of_each_since(&db, mark, "a quiescent run of each source").await;
    stop_reading.store(true, Ordering::SeqCst);
    let mut consumer = consumer.await.expect("the consumer");
    consumer.catch_up(true).await;
    stop(daemon).await;
    consumer.catch_up(false).await;
    let copy = &consumer.copy;
    eprintln!(
        "{restarts} restarts, {kills} kills; the consumer read {} lines up to seq {} \
         ({} HTTP reads, {} export --since, {} --follow); {} live records; {:.1}s",
        copy.lines,
        copy.highest,
        copy.http_reads,
        copy.cli_reads,
        copy.follow_reads,
        copy.records.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        copy.http_reads > 0 && copy.cli_reads > 0,
        "both ways were used"
    );
    assert!(
        counter(&db).await.0 >= copy.since,
        "a position beyond the head"
    );
    assert_consumer_exact(&setup, &sim, copy).await;
    assert_integrity(&db).await;
}

/// The test's Postgres database: the suite's when it runs on Postgres, else
/// a fresh one the config is pointed at; `None` (skipped) without a server.
async fn postgres(setup: &Setup, test: &str) -> Option<(Option<PgDb>, Db)> {
    if let Some(pg) = &setup.pg {
        return Some((None, Db::Postgres(pg.url.clone())));
    }
    let pg = PgDb::create(test).await?;
    setup.edit_config(&setup.database_url(), &pg.url);
    let db = Db::Postgres(pg.url.clone());
    Some((Some(pg), db))
}

/// Three replicas on one Postgres database under random upstream changes,
/// one of them killed (-9) at a time and started again, the first one
/// while the consumer reads from it: a consumer of `/v1/changes` that moves
/// to another replica when its own dies receives every seq once and in
/// order, and ends with exactly the upstreams' records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_of_three_replicas_moves_on_when_one_is_killed_and_keeps_an_exact_copy() {
    const ROUNDS: usize = 16;
    let test = "a_consumer_of_three_replicas_moves_on_when_one_is_killed_and_keeps_an_exact_copy";
    let started = Instant::now();
    let sim = simulator().await;
    let setup = chaos_setup(&sim);
    let Some((_pg, db)) = postgres(&setup, "feed_three_replicas").await else {
        return;
    };
    let mut rng = seeded_rng(test);
    let setup = Arc::new(setup);
    let client = reqwest::Client::new();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut replicas: Vec<Option<Child>> = ports
        .iter()
        .enumerate()
        .map(|(n, port)| Some(spawn_replica(&setup, n, Some(*port))))
        .collect();
    for port in &ports {
        wait_ready(*port).await;
    }
    let stop_reading = Arc::new(AtomicBool::new(false));
    // Reads from replica 0 first, over HTTP only.
    let consumer = follow(
        Consumer::new(setup.clone(), ports.clone(), false),
        StdRng::seed_from_u64(rng.random()),
        stop_reading.clone(),
    );

    let mut hidden = Vec::new();
    let mut kills = 0;
    for round in 0..ROUNDS {
        let mark = now_us();
        let live = (0..3)
            .find(|n| replicas[*n].is_some())
            .expect("a live replica");
        let mut done = Vec::new();
        for _ in 0..rng.random_range(2..8) {
            done.push(mutate(&sim, &mut rng, &mut hidden, &setup, ports[live], &client).await);
        }
        let dead = (0..3).find(|n| replicas[*n].is_none());
        let action = match dead {
            // The consumer's own replica first.
            None if round == 1 || (round > 1 && rng.random_bool(0.4)) => {
                let n = if round == 1 {
                    0
                } else {
                    rng.random_range(0..3)
                };
                mid_sync(&sim, &mut rng).await;
                kill(replicas[n].take().expect("live"));
                kills += 1;
                format!("SIGKILL replica {n}")
            }
            Some(n) if rng.random_bool(0.5) => {
                replicas[n] = Some(spawn_replica(&setup, n, Some(ports[n])));
                wait_ready(ports[n]).await;
                format!("replica {n} started again")
            }
            _ => "-".into(),
        };
        eprintln!("round {round}: {done:?}, replicas: {action}");
        if rng.random_bool(0.5) {
            wait_for_a_run_of_each_since(&db, mark, &format!("round {round} synced")).await;
        }
    }

    sim.ds().clear_faults();
    sim.calendar().clear_faults();
    sim.content().clear_faults();
    let mark = now_us();
    wait_for_a_run_of_each_since(&db, mark, "a quiescent run of each source").await;
    stop_reading.store(true, Ordering::SeqCst);
    let mut consumer = consumer.await.expect("the consumer");
    consumer.catch_up(true).await;
    for child in replicas.into_iter().flatten() {
        stop(child).await;
    }
    consumer.catch_up(false).await;
    let copy = &consumer.copy;
    eprintln!(
        "{kills} kills; the consumer read {} lines up to seq {} in {} HTTP reads, \
         moved to another replica {} times; {} live records; {:.1}s",
        copy.lines,
        copy.highest,
        copy.http_reads,
        consumer.switches,
        copy.records.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(consumer.switches > 0, "the consumer never had to move on");
    assert_consumer_exact(&setup, &sim, copy).await;
}

/// The max `seq` of these export lines (0 without any).
fn max_seq(lines: &[Value]) -> i64 {
    lines
        .iter()
        .map(|l| l["seq"].as_i64().expect("seq"))
        .max()
        .unwrap_or(0)
}

/// With `tombstone_retention = "1s"`, the daemon's purge (at start, then
/// hourly) removes the tombstones a reader has not seen: that reader gets
/// 410 and `export --since` exit 3 with the reason; a reader at the head,
/// or at exactly the purge horizon, goes on; `0` always works and no
/// longer shows the purged tombstones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_the_tombstone_retention_must_resync_and_one_at_the_head_goes_on() {
    let sim = simulator().await;
    sim.ds().seed(PERMITS, 12);
    sim.calendar().seed(CALENDAR, 12);
    let setup = Setup::build_all(
        &sim,
        &[DsSource::new("acme", "permits", PERMITS)],
        &[CalSource::new("globex", "team", CALENDAR)],
        &[],
    );
    setup.edit_config("[storage]\n", "[storage]\ntombstone_retention = \"1s\"\n");
    setup.edit_config(
        "listen = ",
        &format!("admin_read_token = \"{ADMIN_TOKEN}\"\nlisten = "),
    );
    let port = setup.use_free_port();
    let db = setup.db();
    let client = reqwest::Client::new();
    let admin = bearer(ADMIN_TOKEN);

    setup.sync_ok(&[]).await;
    // A reader that applied everything so far.
    let behind = max_seq(&setup.export(true).await);
    assert!(behind > 0);
    // Deletions of each kind: hidden and purged dossiers, cancelled events.
    let numbers = sim.ds().live_numbers(PERMITS);
    sim.ds().hide(numbers[0]);
    sim.ds().purge(numbers[1], None);
    let events = sim.calendar().live_events(CALENDAR);
    for e in &events[..2] {
        sim.calendar()
            .cancel(CALENDAR, e["id"].as_str().expect("event id"));
    }
    setup.sync_ok(&[]).await;
    let tombstones: Vec<Value> = setup
        .export(true)
        .await
        .into_iter()
        .filter(|l| l["deleted"] == true)
        .collect();
    assert_eq!(tombstones.len(), 4, "{tombstones:?}");
    let newest_tombstone = max_seq(&tombstones);
    let head = max_seq(&setup.export(true).await);
    // Before the purge, the reader behind goes on and gets them.
    let out = setup.run(&["export", "--since", &behind.to_string()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines = parse_lines(&String::from_utf8_lossy(&out.stdout), "export --since");
    assert_eq!(
        lines.iter().filter(|l| l["deleted"] == true).count(),
        4,
        "the reader behind sees the deletions before the purge"
    );
    assert_eq!(counter(&db).await.1, 0, "nothing purged yet");

    // The tombstones grow older than the retention; the daemon purges
    // them as it starts.
    let daemon = start_purging(&setup, port, 4, newest_tombstone).await;
    let (last_seq, purged_through) = counter(&db).await;
    assert_eq!(
        purged_through, newest_tombstone,
        "the horizon is the newest purged tombstone"
    );
    wait_until(Duration::from_secs(20), "the purge logged", || async {
        setup.spawned_stderr().contains("purged old tombstones")
    })
    .await;

    // Behind the horizon (and beyond the head): 410 and exit 3, with the
    // reason, whatever the way of reading.
    for since in [behind, purged_through - 1, last_seq + 1_000] {
        let url = changes_url(port, &format!("since={since}&limit=10"));
        let answer = get(&client, &url, Some(&admin)).await.expect("answer");
        assert_eq!(answer.status, 410, "{url}: {}", answer.body);
        assert!(answer.body.contains("resync needed"), "{}", answer.body);
        assert!(answer.next_since.is_none(), "a refusal gives no position");
        assert!(
            !answer.body.contains('{'),
            "no data with a 410: {}",
            answer.body
        );
        let since = since.to_string();
        for args in [
            vec!["export", "--since", &since],
            vec!["export", "--since", &since, "--follow"],
            vec!["export", "--since", &since, "globex/team"],
        ] {
            let out = setup.run(&args).await;
            assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
            assert!(out.stdout.is_empty(), "{args:?} printed lines");
            let err = stderr(&out);
            assert!(
                err.contains(&format!(
                    "resync needed: position {since} cannot be continued"
                )),
                "{args:?}: {err}"
            );
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // The horizon itself and the head go on: 200 and exit 0.
    for since in [purged_through, head, last_seq, 0] {
        let url = changes_url(port, &format!("since={since}"));
        let answer = get(&client, &url, Some(&admin)).await.expect("answer");
        assert_eq!(answer.status, 200, "{url}: {}", answer.body);
        let lines = parse_lines(&answer.body, &url);
        assert!(lines.iter().all(|l| l["seq"].as_i64() > Some(since)));
        let out = setup.run(&["export", "--since", &since.to_string()]).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "since {since}: {}",
            stderr(&out)
        );
    }
    // From 0: every retained change, the purged tombstones no more.
    let url = changes_url(port, "since=0&limit=10000");
    let answer = get(&client, &url, Some(&admin)).await.expect("answer");
    let from_zero = parse_lines(&answer.body, &url);
    // (DS lists its deletions again within its look-back, which the next
    // test is about at length.)
    let returned: Vec<(Key, i64)> = from_zero
        .iter()
        .filter(|l| l["deleted"] == true && tombstones.iter().any(|t| key_of(t) == key_of(l)))
        .map(|l| (key_of(l), l["seq"].as_i64().expect("seq")))
        .collect();
    assert!(
        returned.is_empty(),
        "purged tombstones back in the feed: {returned:?}"
    );
    stop(daemon).await;
}

/// A DS tombstone purged by the retention stays purged: DS's
/// `deletedDossiers` and `pendingDeletedDossiers` list a deletion again for
/// as long as it is within the sync's look-back, and the next syncs must not
/// store it as a new change (a reader would get a deletion of a record it
/// may never have had, or had already deleted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_demarches_tombstone_does_not_come_back_when_ds_lists_it_again() {
    let sim = simulator().await;
    sim.ds().seed(PERMITS, 12);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", PERMITS)]);
    setup.edit_config("[storage]\n", "[storage]\ntombstone_retention = \"1s\"\n");
    let port = setup.use_free_port();
    setup.sync_ok(&[]).await;
    let numbers = sim.ds().live_numbers(PERMITS);
    sim.ds().hide(numbers[0]);
    sim.ds().purge(numbers[1], None);
    setup.sync_ok(&[]).await;
    let newest_tombstone = max_seq(&setup.export(true).await);
    assert_eq!(tombstone_keys(&setup).await.len(), 2);
    // The daemon purges them as it starts (and syncs the source).
    let daemon = start_purging(&setup, port, 2, newest_tombstone).await;
    stop(daemon).await;
    // Syncs after the purge, whatever the daemon's first one did.
    setup.sync_ok(&[]).await;
    setup.sync_ok(&[]).await;
    let back = tombstone_keys(&setup).await;
    assert!(
        back.is_empty(),
        "purged tombstones came back (hidden dossier {}, purged dossier {}): {back:?}",
        numbers[0],
        numbers[1]
    );
    assert_eq!(
        sim.ds().live_numbers(PERMITS).len(),
        setup.export(false).await.len()
    );
}

/// The keys of the stored tombstones.
async fn tombstone_keys(setup: &Setup) -> Vec<Key> {
    setup
        .export(true)
        .await
        .iter()
        .filter(|l| l["deleted"] == true)
        .map(key_of)
        .collect()
}

const ACME_TOKEN: &str = "acme-read-token-3f9a61";
const GLOBEX_TOKEN: &str = "globex-read-token-77b2c0";

/// Every line of the feed `authorization` reads from 0 with `query`, page
/// by page (`limit` lines) following `Synchro-Next-Since`, each page 200.
async fn read_all(
    client: &reqwest::Client,
    port: u16,
    authorization: &str,
    query: &str,
    limit: u32,
) -> Vec<Value> {
    let mut since = 0;
    let mut all = Vec::new();
    loop {
        let url = changes_url(port, &format!("since={since}&limit={limit}{query}"));
        let answer = get(client, &url, Some(authorization))
            .await
            .expect("answer");
        assert_eq!(answer.status, 200, "{url}: {}", answer.body);
        let lines = parse_lines(&answer.body, &url);
        since = answer.next_since.expect("Synchro-Next-Since");
        if lines.is_empty() {
            return all;
        }
        all.extend(lines);
    }
}

/// (tenant, source, id, seq) of lines, sorted.
fn changes_of(lines: &[Value]) -> Vec<(Key, i64)> {
    let mut out: Vec<(Key, i64)> = lines
        .iter()
        .map(|l| (key_of(l), l["seq"].as_i64().expect("seq")))
        .collect();
    out.sort();
    out
}

/// Read tokens on the running daemon: a tenant's token reads its tenant's
/// changes only (paged, per source, long polls included: another tenant's
/// commit does not end its wait, nor show), the admin token reads all; a
/// tenant token asking for another tenant's source gets 403, whether the
/// source exists or not; without a valid token (none, wrong, a valid one
/// in another scheme) every combination of parameters gets the same 401
/// and no data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_tokens_keep_each_tenant_to_its_own_changes_on_the_daemon() {
    let sim = simulator().await;
    sim.ds().seed(PERMITS, 15);
    sim.calendar().seed(CALENDAR, 15);
    sim.content().seed(10, 5);
    let mut team = CalSource::new("globex", "team", CALENDAR);
    team.channel_token = Some(CHANNEL_TOKEN);
    let mut translations = ContentSource::new("acme", "translations");
    translations.webhook_token = Some(HOOK_TOKEN);
    let setup = Setup::build_all(
        &sim,
        &[DsSource::new("acme", "permits", PERMITS)],
        &[team],
        &[translations],
    );
    // acme's token from a file, globex's literal.
    let token_file = setup.dir.path().join("acme-read-token");
    std::fs::write(&token_file, ACME_TOKEN).expect("token file");
    setup.edit_config(
        "\n[[tenants]]\nid = \"acme\"\n",
        &format!(
            "\n[[tenants]]\nid = \"acme\"\nread_token = {{ file = \"{}\" }}\n",
            token_file.display()
        ),
    );
    setup.edit_config(
        "\n[[tenants]]\nid = \"globex\"\n",
        &format!("\n[[tenants]]\nid = \"globex\"\nread_token = \"{GLOBEX_TOKEN}\"\n"),
    );
    setup.edit_config(
        "listen = ",
        &format!("admin_read_token = \"{ADMIN_TOKEN}\"\nlisten = "),
    );
    let port = setup.use_free_port();
    setup.sync_ok(&[]).await;
    let started = now_us();
    let daemon = setup.spawn(&["run"]);
    wait_ready(port).await;
    // The daemon's start-up runs are over: what is stored stays put.
    wait_for_a_run_of_each_since(&setup.db(), started, "the start-up runs").await;
    let client = reqwest::Client::new();
    let (acme, globex, admin) = (
        bearer(ACME_TOKEN),
        bearer(GLOBEX_TOKEN),
        bearer(ADMIN_TOKEN),
    );

    // Each token reads exactly its part of what is stored, over pages.
    let stored = setup.export(true).await;
    let of = |pred: &dyn Fn(&Value) -> bool| -> Vec<(Key, i64)> {
        let lines: Vec<Value> = stored.iter().filter(|l| pred(l)).cloned().collect();
        changes_of(&lines)
    };
    let acme_part = of(&|l| l["tenant"] == "acme");
    let globex_part = of(&|l| l["tenant"] == "globex");
    assert!(!acme_part.is_empty() && !globex_part.is_empty());
    for limit in [1, 7, 1000] {
        let got = read_all(&client, port, &acme, "", limit).await;
        assert_eq!(changes_of(&got), acme_part, "acme's token, limit {limit}");
        let got = read_all(&client, port, &globex, "", limit).await;
        assert_eq!(
            changes_of(&got),
            globex_part,
            "globex's token, limit {limit}"
        );
        let got = read_all(&client, port, &admin, "", limit).await;
        assert_eq!(
            changes_of(&got),
            of(&|_| true),
            "the admin token, limit {limit}"
        );
    }
    // A tenant's own source, and the admin's view of any.
    for (token, source) in [
        (&acme, "acme/permits"),
        (&acme, "acme/translations"),
        (&globex, "globex/team"),
        (&admin, "globex/team"),
        (&admin, "acme/permits"),
    ] {
        let got = read_all(&client, port, token, &format!("&source={source}"), 5).await;
        let (tenant, name) = source.split_once('/').expect("T/S");
        assert_eq!(
            changes_of(&got),
            of(&|l| l["tenant"] == tenant && l["source"] == name),
            "{source}"
        );
    }

    // Another tenant's source: 403 whether it exists or not, the same
    // answer, no data; whatever else is asked (a bad parameter is named
    // first: 400, no data either).
    let mut forbidden = HashSet::new();
    for (token, source) in [
        (&acme, "globex/team"),
        (&acme, "globex/no-such-source"),
        (&acme, "nobody/team"),
        (&globex, "acme/permits"),
        (&globex, "acme/translations"),
    ] {
        for extra in ["", "&limit=1", "&wait=0.2", "&limit=10000&wait=0"] {
            for since in ["0", "5"] {
                let url = changes_url(port, &format!("since={since}&source={source}{extra}"));
                let answer = get(&client, &url, Some(token)).await.expect("answer");
                assert_eq!(answer.status, 403, "{url}: {}", answer.body);
                assert!(answer.next_since.is_none(), "{url}: a position with a 403");
                forbidden.insert(answer.body);
            }
        }
    }
    assert_eq!(forbidden.len(), 1, "403 answers differ: {forbidden:?}");
    let body = forbidden.into_iter().next().expect("a 403");
    assert!(!body.contains('{'), "{body}");

    // No valid token: 401 for every query, the same answer, no data.
    let wrong = [
        None,
        Some("Bearer wrong-token".to_string()),
        Some(format!("Basic {ACME_TOKEN}")),
        Some(format!("Token {ADMIN_TOKEN}")),
        Some(ACME_TOKEN.to_string()),
        Some(format!("Bearer{ADMIN_TOKEN}")),
        Some("Bearer ".to_string()),
        Some(format!("Bearer {ACME_TOKEN}x")),
        Some(format!(
            "Bearer {}",
            &GLOBEX_TOKEN[..GLOBEX_TOKEN.len() - 1]
        )),
    ];
    let mut refusals = HashSet::new();
    let mut asked = 0;
    for since in [None, Some("0"), Some("3"), Some("-1"), Some("x")] {
        for source in [
            None,
            Some("acme/permits"),
            Some("globex/team"),
            Some("nope"),
        ] {
            for limit in [None, Some("1"), Some("0")] {
                for wait in [None, Some("0.5"), Some("99")] {
                    let query: Vec<String> = [
                        since.map(|v| format!("since={v}")),
                        source.map(|v| format!("source={v}")),
                        limit.map(|v| format!("limit={v}")),
                        wait.map(|v| format!("wait={v}")),
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    let url = changes_url(port, &query.join("&"));
                    for auth in &wrong {
                        let answer = get(&client, &url, auth.as_deref()).await.expect("answer");
                        assert_eq!(answer.status, 401, "{url} with {auth:?}: {}", answer.body);
                        assert_eq!(answer.www_authenticate.as_deref(), Some("Bearer"));
                        assert!(answer.next_since.is_none(), "{url}: a position with a 401");
                        refusals.insert(answer.body);
                        asked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(refusals.len(), 1, "401 answers differ: {refusals:?}");
    let body = refusals.into_iter().next().expect("a 401");
    assert!(!body.contains('{') && !body.contains("acme"), "{body}");
    eprintln!("{asked} requests without a valid token, all 401");

    // Long polls: acme waits at the head; globex's commit neither ends its
    // wait nor shows; acme's own next change ends it at once.
    let head = read_all(&client, port, &admin, "", 1000)
        .await
        .iter()
        .map(|l| l["seq"].as_i64().expect("seq"))
        .max()
        .expect("changes");
    let waiting = {
        let client = client.clone();
        let url = changes_url(port, &format!("since={head}&wait=30"));
        let acme = acme.clone();
        tokio::spawn(async move {
            let asked = Instant::now();
            let answer = get(&client, &url, Some(&acme)).await.expect("answer");
            (answer, asked.elapsed())
        })
    };
    let event = sim.calendar().create(CALENDAR);
    let poke = client
        .post(format!(
            "http://127.0.0.1:{port}/webhooks/calendar/globex/team"
        ))
        .header("X-Goog-Channel-Token", CHANNEL_TOKEN)
        .header("X-Goog-Resource-State", "exists")
        .send()
        .await
        .expect("calendar webhook");
    assert!(poke.status().is_success(), "{}", poke.status());
    wait_until(
        Duration::from_secs(20),
        "globex's new event in the feed",
        || {
            let (client, admin, event) = (client.clone(), admin.clone(), event.clone());
            async move {
                let url = changes_url(port, &format!("since={head}&source=globex/team"));
                let answer = get(&client, &url, Some(&admin)).await.expect("answer");
                parse_lines(&answer.body, &url)
                    .iter()
                    .any(|l| l["id"] == event.as_str())
            }
        },
    )
    .await;
    assert!(
        !waiting.is_finished(),
        "acme's wait ended at another tenant's commit"
    );
    let request = sim.content().seed(1, 1)[0];
    let status = sim
        .content()
        .deliver(
            &format!("http://127.0.0.1:{port}/webhooks/content/acme/translations"),
            HOOK_TOKEN,
            &sim.content().webhook_body(request),
        )
        .await;
    assert_eq!(status, 200, "content webhook");
    let (answer, waited) = waiting.await.expect("join");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let lines = parse_lines(&answer.body, "acme's long poll");
    assert_eq!(
        lines.iter().map(key_of).collect::<Vec<_>>(),
        vec![(
            "acme".to_string(),
            "translations".to_string(),
            request.to_string()
        )],
        "acme's long poll answers its own change only"
    );
    assert!(
        waited < Duration::from_secs(25),
        "answered at the commit, not at the deadline: {waited:?}"
    );
    stop(daemon).await;
}
