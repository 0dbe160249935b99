//! The change feed end to end, with the real binary: consumers that follow
//! `GET /v1/changes` and `export --since` while the upstreams move and the
//! daemon is stopped and killed keep an exact copy, receive every seq once
//! and in order; a reader behind the tombstone retention is sent to resync
//! (HTTP 410, exit 3) and one at the head is not; read tokens keep each
//! tenant to its own changes on the running daemon.

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
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
async fn stop(mut child: Child) {
    signal(&child, "TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert_eq!(status.code(), Some(0), "the daemon exited {status:?}");
            return;
        }
        assert!(Instant::now() < deadline, "the daemon did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILL, and the process reaped.
fn kill(mut child: Child) {
    signal(&child, "KILL");
    child.wait().expect("reap");
}

/// Successful runs of a source that started after `since_us`.
async fn successes_since(db: &Db, tenant: &str, source: &str, since_us: i64) -> i64 {
    db.count(
        &format!(
            "SELECT count(*) FROM runs WHERE tenant = ?1 AND source = ?2 \
             AND outcome = 'success' AND started_at > {since_us}"
        ),
        &[tenant, source],
    )
    .await
}

/// Waits until every source has a successful run that started after
/// `since_us`: the copy then holds every upstream change made before.
async fn wait_for_a_run_of_each_since(db: &Db, since_us: i64, what: &str) {
    wait_until(Duration::from_secs(60), what, || {
        let db = db.clone();
        async move {
            for (tenant, source) in SOURCES {
                if successes_since(&db, tenant, source, since_us).await == 0 {
                    return false;
                }
            }
            true
        }
    })
    .await;
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

/// What a consumer of the feed holds: its position, a copy of the live
/// records, and everything it ever received, checked as it comes.
#[derive(Default)]
struct Copy {
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

impl Copy {
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
    copy: Copy,
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
            copy: Copy::default(),
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
            return Err(NoAnswer);
        };
        assert_eq!(
            answer.status, 200,
            "GET {url}: {} {}",
            answer.status, answer.body
        );
        let lines = parse_lines(&answer.body, "/v1/changes");
        assert!(lines.len() <= limit as usize, "{url}: more than {limit} lines");
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
        self.copy
            .apply(&lines, &format!("export --since {since}"));
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
        wait_until(Duration::from_secs(20), "export --follow handling SIGINT", || async move {
            catches_sigint(pid)
        })
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
        let way = if self.cli {
            rng.random_range(0..10)
        } else {
            0
        };
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
fn follow(mut consumer: Consumer, mut rng: StdRng, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Consumer> {
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
async fn assert_consumer_exact(setup: &Setup, sim: &Simulator, copy: &Copy) {
    let expected = upstream(sim).await;
    assert_same("the consumer's copy against upstream", &copy.records, &expected);
    let mut exported = BTreeMap::new();
    for l in setup.export(false).await {
        exported.insert(key_of(&l), l["data"].clone());
    }
    assert_same("synchro export against upstream", &exported, &expected);
    for l in setup.export(true).await {
        let (tenant, source, id) = key_of(&l);
        let seq = l["seq"].as_i64().expect("seq");
        assert!(
            copy.seen.contains(&(tenant.clone(), source.clone(), id.clone(), seq)),
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
            let state = ["pending", "confirmed", "completed", "canceled", "failed"]
                [rng.random_range(0..5)];
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
                .post(format!("http://127.0.0.1:{port}/webhooks/calendar/globex/team"))
                .header("X-Goog-Channel-Token", CHANNEL_TOKEN)
                .header("X-Goog-Resource-State", "exists")
                .send()
                .await;
            "calendar webhook"
        }
        _ => {
            let source = ["acme/permits", "acme/translations", "globex/team"][rng.random_range(0..3)];
            let out = setup.run(&["reset", source]).await;
            assert_eq!(out.status.code(), Some(0), "reset {source}: {}", stderr(&out));
            "reset"
        }
    }
}

/// Waits until some upstream request lands after now (a sync is under
/// way), then a little more, at random.
async fn mid_sync(sim: &Simulator, rng: &mut StdRng) {
    let total = |sim: &Simulator| sim.ds().requests() + sim.calendar().requests() + sim.content().requests();
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
    assert!(copy.http_reads > 0 && copy.cli_reads > 0, "both ways were used");
    assert!(counter(&db).await.0 >= copy.since, "a position beyond the head");
    assert_consumer_exact(&setup, &sim, copy).await;
    assert_integrity(&db).await;
}
