//! The listener's limits, seen by raw TCP clients (they can stop halfway
//! through a head or a body, which an HTTP client library never does)
//! against the real router and accept loop on 127.0.0.1:0, with short
//! limits so each test takes well under a second or two.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Limits, Readiness, Webhooks, router, serve};
use crate::scheduler::Triggers;
use crate::store::Store;

const TOKEN: &str = "hook-secret";
const HOOK: &str = "/webhooks/content/acme/translations";
/// Upper bound for anything that should happen promptly.
const PROMPT: Duration = Duration::from_secs(5);

/// Limits long enough not to interfere; each test shortens the one it checks.
fn relaxed() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(30),
        max_connections: 64,
        max_body_bytes: 64 * 1024,
        body_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(30),
    }
}

struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

/// One content source, `acme/translations`, accepting callbacks with
/// [`TOKEN`], its database in `dir`.
fn content_source_config(dir: &Path) -> crate::config::Config {
    let toml = format!(
        "[storage]\ndatabase = \"sqlite://{}\"\n\n[[tenants]]\nid = \"acme\"\n\n\
         [[tenants.sources]]\nid = \"translations\"\nkind = \"content\"\nschedule = \"every 1h\"\n\
         endpoint = \"http://127.0.0.1:9/v1\"\ntoken = \"t\"\nwebhook_token = \"{TOKEN}\"\n",
        dir.join("t.db").display()
    );
    config_from(&toml)
}

/// A test's config, from its TOML text (no environment, built-in kinds).
pub(super) fn config_from(toml: &str) -> crate::config::Config {
    crate::config::load_str(
        toml,
        Path::new("t.toml"),
        &HashMap::new(),
        &crate::sources::Kinds::builtin(),
    )
    .expect("test config")
}

/// The real router and listener, with one content source accepting
/// callbacks with [`TOKEN`], and a real (temporary) database behind it.
async fn start(limits: Limits) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = content_source_config(dir.path());
    let store = Store::open(&config.storage.database).await.expect("store");
    let hooks = Webhooks::default();
    hooks.install(
        &config,
        Triggers::default(),
        &crate::engine::Engine::new(store.clone(), crate::redact::Redactor::default()),
    );
    let ready = Readiness::default();
    ready.set(true);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        router(ready, hooks, super::ChangeFeed::default(), None, &limits),
        limits,
        stop.clone(),
    ));
    Running {
        addr,
        stop,
        task,
        _dir: dir,
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

async fn send(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).await.expect("write");
}

fn get_healthz() -> &'static [u8] {
    b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
}

/// A PUT head for the content webhook with this `Authorization` value (or
/// none) and this declared body length.
fn put_head(auth: Option<&str>, length: usize) -> Vec<u8> {
    let mut head = format!("PUT {HOOK} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n");
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// One response read off a connection.
#[derive(Debug)]
struct Response {
    status: u16,
    body: String,
}

/// What a connection yields within a deadline: a response, or its end.
#[derive(Debug)]
enum Next {
    Response(Response),
    Closed,
    Nothing,
}

/// Reads one response (head and `Content-Length` body), or sees the
/// connection end; `Nothing` if neither happens within `within`.
async fn next(s: &mut TcpStream, within: Duration) -> Next {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("not a response head: {head:?}"));
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                return Next::Response(Response { status, body });
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return Next::Nothing,
            Ok(Ok(0)) | Ok(Err(_)) => return Next::Closed,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn response(s: &mut TcpStream, within: Duration) -> Response {
    match next(s, within).await {
        Next::Response(r) => r,
        other => panic!("expected a response within {within:?}, got {other:?}"),
    }
}

/// Waits for the server to close the connection, skipping any response it
/// sends first; panics if it is still open after `within`.
async fn closed(s: &mut TcpStream, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next(s, left).await {
            Next::Closed => return,
            Next::Response(_) => continue,
            Next::Nothing => panic!("connection still open after {within:?}"),
        }
    }
}

#[tokio::test]
async fn a_half_sent_head_is_disconnected_after_the_header_timeout() {
    let server = start(Limits {
        header_timeout: Duration::from_millis(300),
        ..relaxed()
    })
    .await;
    let mut slow = connect(server.addr).await;
    let began = Instant::now();
    send(&mut slow, b"GET /healthz HTTP/1.1\r\nHost: t\r\n").await;
    closed(&mut slow, PROMPT).await;
    assert!(
        began.elapsed() >= Duration::from_millis(250),
        "closed before the timeout"
    );
    // A connection that never sends a byte goes the same way.
    let mut silent = connect(server.addr).await;
    closed(&mut silent, PROMPT).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let server = start(Limits {
        header_timeout: Duration::from_millis(300),
        ..relaxed()
    })
    .await;
    let mut c = connect(server.addr).await;
    send(&mut c, get_healthz()).await;
    assert_eq!(response(&mut c, PROMPT).await.status, 200);
    let idle_since = Instant::now();
    closed(&mut c, PROMPT).await;
    assert!(idle_since.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn shutdown_ends_within_its_grace_while_slow_and_idle_clients_are_connected() {
    let grace = Duration::from_millis(500);
    let server = start(Limits {
        shutdown_grace: grace,
        ..relaxed()
    })
    .await;
    // Idle after one request, silent, halfway through a head, and
    // halfway through an authenticated body: none of them ever finishes.
    let mut idle = connect(server.addr).await;
    send(&mut idle, get_healthz()).await;
    assert_eq!(response(&mut idle, PROMPT).await.status, 200);
    let mut silent = connect(server.addr).await;
    let mut half_head = connect(server.addr).await;
    send(&mut half_head, b"GET /healthz HTTP/1.1\r\nHost:").await;
    let mut half_body = connect(server.addr).await;
    send(
        &mut half_body,
        &put_head(Some(&format!("Bearer {TOKEN}")), 1000),
    )
    .await;
    send(&mut half_body, b"{\"type\":").await;
    // The server has taken every connection in (the last one's handler is
    // waiting for its body) before it is told to stop.
    let mut probe = connect(server.addr).await;
    send(&mut probe, get_healthz()).await;
    assert_eq!(response(&mut probe, PROMPT).await.status, 200);

    let began = Instant::now();
    server.stop.cancel();
    // The idle connection is closed at once, not at the deadline.
    closed(&mut idle, grace).await;
    tokio::time::timeout(grace + Duration::from_secs(2), server.task)
        .await
        .expect("serve returned within its grace")
        .expect("join")
        .expect("serve");
    let took = began.elapsed();
    assert!(
        took < grace + Duration::from_secs(2),
        "shutdown took {took:?}"
    );
    for c in [&mut silent, &mut half_head, &mut half_body, &mut probe] {
        closed(c, Duration::from_secs(1)).await;
    }
    // And the port no longer accepts.
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_and_are_served_once_slots_free() {
    let server = start(Limits {
        max_connections: 2,
        ..relaxed()
    })
    .await;
    let mut a = connect(server.addr).await;
    let mut b = connect(server.addr).await;
    for c in [&mut a, &mut b] {
        send(c, get_healthz()).await;
        assert_eq!(response(c, PROMPT).await.status, 200);
    }
    // A third client is connected by the kernel but not served while both
    // slots are taken (the negative needs a window).
    let mut third = connect(server.addr).await;
    send(&mut third, get_healthz()).await;
    match next(&mut third, Duration::from_millis(400)).await {
        Next::Nothing => {}
        other => panic!("the third connection was served beyond the cap: {other:?}"),
    }
    // The connections already in keep being served.
    send(&mut a, get_healthz()).await;
    assert_eq!(response(&mut a, PROMPT).await.status, 200);
    // Once they go, the waiting client gets its answer.
    drop(a);
    drop(b);
    let r = response(&mut third, PROMPT).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
}

#[tokio::test]
async fn an_unauthenticated_put_is_refused_without_its_body_being_read() {
    let server = start(relaxed()).await;
    for auth in [None, Some("Bearer wrong"), Some("Basic aGVsbG8=")] {
        let mut c = connect(server.addr).await;
        // 60 KiB declared (under the size limit), not one byte sent: the
        // answer can only come from the head.
        send(&mut c, &put_head(auth, 60 * 1024)).await;
        let r = response(&mut c, PROMPT).await;
        assert_eq!(r.status, 401, "{auth:?}");
        // Nothing waits for the body either: the connection is closed.
        closed(&mut c, PROMPT).await;
    }
}

#[tokio::test]
async fn an_authenticated_body_over_the_size_limit_gets_413() {
    let server = start(Limits {
        max_body_bytes: 1024,
        ..relaxed()
    })
    .await;
    let auth = format!("Bearer {TOKEN}");
    // Declared too large: refused from the head.
    let mut c = connect(server.addr).await;
    send(&mut c, &put_head(Some(&auth), 5000)).await;
    assert_eq!(response(&mut c, PROMPT).await.status, 413);
    // Chunked, with no declared length: refused at the first chunk over.
    let mut c = connect(server.addr).await;
    let head = format!(
        "PUT {HOOK} HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    send(&mut c, head.as_bytes()).await;
    for _ in 0..3 {
        send(
            &mut c,
            format!("200\r\n{}\r\n", " ".repeat(0x200)).as_bytes(),
        )
        .await;
    }
    assert_eq!(response(&mut c, PROMPT).await.status, 413);
    // Within the limit it is read and handled.
    let mut c = connect(server.addr).await;
    let body = br#"{"type":"ping"}"#;
    send(&mut c, &put_head(Some(&auth), body.len())).await;
    send(&mut c, body).await;
    let r = response(&mut c, PROMPT).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ignored\n"));
}

#[tokio::test]
async fn a_body_slower_than_the_read_timeout_gets_408() {
    let server = start(Limits {
        body_timeout: Duration::from_millis(300),
        ..relaxed()
    })
    .await;
    let mut c = connect(server.addr).await;
    let began = Instant::now();
    send(&mut c, &put_head(Some(&format!("Bearer {TOKEN}")), 100)).await;
    send(&mut c, b"{\"type\":").await;
    let r = response(&mut c, PROMPT).await;
    assert_eq!(r.status, 408);
    assert!(began.elapsed() >= Duration::from_millis(250));
    closed(&mut c, PROMPT).await;
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_the_token_is_not() {
    let server = start(relaxed()).await;
    let body = br#"{"type":"ping"}"#;
    for (auth, status) in [
        (format!("Bearer {TOKEN}"), 200),
        (format!("bearer {TOKEN}"), 200),
        (format!("BEARER {TOKEN}"), 200),
        (format!("BeArEr  {TOKEN}"), 200),
        (format!("Bearer {}", TOKEN.to_uppercase()), 401),
        (format!("Bearer{TOKEN}"), 401),
        (format!("Basic {TOKEN}"), 401),
        ("Bearer ".to_string(), 401),
        ("bearer".to_string(), 401),
    ] {
        let mut c = connect(server.addr).await;
        send(&mut c, &put_head(Some(&auth), body.len())).await;
        send(&mut c, body).await;
        assert_eq!(response(&mut c, PROMPT).await.status, status, "{auth:?}");
    }
}

/// A `MakeWriter` that keeps what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

// Current-thread runtime: the server's tasks log on this thread, where the
// capturing subscriber is the default.
#[tokio::test(flavor = "current_thread")]
async fn url_segments_cannot_forge_log_lines_or_send_escape_codes() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = start(relaxed()).await;
    // tracing caches each callsite's interest globally: a refusal logged at
    // the same moment by another test thread (no subscriber there) can
    // leave the cache saying "nobody listens" after our subscriber was set.
    // Rebuild it and send again until the refusals reach our log.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        tracing::callsite::rebuild_interest_cache();
        for request in [
            "PUT /webhooks/content/acme%0A2026-12-04T00:00:00Z%20ERROR%20forged/x%1B%5B2J HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
            "POST /webhooks/calendar/acme%0D%0Aforged/x%1B%5B2J HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        ] {
            let mut c = connect(server.addr).await;
            send(&mut c, request.as_bytes()).await;
            assert_eq!(response(&mut c, PROMPT).await.status, 401);
        }
        let text = log.text();
        let both = text.contains("acme\\n2026") && text.contains("acme\\r\\nforged");
        if both || std::time::Instant::now() > deadline {
            break;
        }
    }
    let text = log.text();
    assert!(!text.contains('\x1b'), "raw ESC in the log:\n{text:?}");
    assert!(!text.contains('\r'), "raw CR in the log:\n{text:?}");
    // Every line naming the forged text is a refusal line: none was forged.
    let refused: Vec<&str> = text.lines().filter(|l| l.contains("forged")).collect();
    assert!(refused.len() >= 2, "one line per refusal:\n{text}");
    for line in refused {
        assert!(line.contains("refused"), "a forged line: {line:?}\n{text}");
        assert!(line.contains("\\u{1b}[2J"), "ESC shown escaped: {line:?}");
    }
    assert!(text.contains("acme\\n2026-12-04T00:00:00Z ERROR forged"));
    assert!(text.contains("acme\\r\\nforged"));
}

#[tokio::test]
async fn a_content_callback_is_committed_through_the_engines_commit_path() {
    // The engine's observer hears of every page it commits: a callback's
    // record reaching it shows the callback went through the engine.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = content_source_config(dir.path());
    let store = Store::open(&config.storage.database).await.expect("store");
    let committed: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let seen = committed.clone();
    let engine = crate::engine::Engine::new(store.clone(), crate::redact::Redactor::default())
        .with_observer(Arc::new(move |key, records| {
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((key.to_string(), records));
        }));
    let hooks = Webhooks::default();
    hooks.install(&config, Triggers::default(), &engine);
    let ready = Readiness::default();
    ready.set(true);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let limits = relaxed();
    let task = tokio::spawn(serve(
        listener,
        router(ready, hooks, super::ChangeFeed::default(), None, &limits),
        limits,
        stop.clone(),
    ));

    let callback = serde_json::json!({
        "type": "content-request",
        "request": {"id": 7, "lastStateChange": "2026-01-01T00:00:00Z", "state": "pending"},
    });
    let answer = reqwest::Client::new()
        .put(format!("http://{addr}{HOOK}"))
        .bearer_auth(TOKEN)
        .json(&callback)
        .send()
        .await
        .expect("callback sent");
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(answer.text().await.expect("body"), "stored\n");
    assert_eq!(
        *committed.lock().unwrap_or_else(|e| e.into_inner()),
        [("acme/translations".to_string(), 1)]
    );
    let key = crate::model::SourceKey::new("acme", "translations");
    let status = store.source_status(&key, "content").await.expect("status");
    assert_eq!(status.records, 1);

    stop.cancel();
    let _ = tokio::time::timeout(PROMPT, task).await;
    store.close().await;
}
