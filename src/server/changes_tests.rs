//! `GET /v1/changes` against the real router and listener on 127.0.0.1:0:
//! who may read what (every path and parameter tried with every kind of
//! token), paging, the resync answer and long polls.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{ChangeFeed, Limits, NEXT_SINCE, Readiness, Webhooks, router, serve};
use crate::model::{Page, Phase, Progress, Record, SourceKey, Tombstone};
use crate::store::Store;

const ACME: &str = "acme-read-token";
const BETA: &str = "beta-read-token";
const ADMIN: &str = "admin-read-token";

struct Feed {
    addr: SocketAddr,
    store: Store,
    feed: ChangeFeed,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

fn config(dir: &Path) -> crate::config::Config {
    let source = |id: &str| {
        format!(
            "[[tenants.sources]]\nid = \"{id}\"\nkind = \"content\"\nschedule = \"every 1h\"\n\
             endpoint = \"http://127.0.0.1:9/v1\"\ntoken = \"t\"\n"
        )
    };
    let toml = format!(
        "[storage]\ndatabase = \"sqlite://{}\"\n[server]\nadmin_read_token = \"{ADMIN}\"\n\n\
         [[tenants]]\nid = \"acme\"\nread_token = \"{ACME}\"\n{}\n\
         [[tenants]]\nid = \"beta\"\nread_token = \"{BETA}\"\n{}\n\
         [[tenants]]\nid = \"mute\"\n{}",
        dir.join("t.db").display(),
        source("x"),
        source("x"),
        source("x"),
    );
    super::tests::config_from(&toml)
}

fn page(ids: &[&str], deletes: &[&str]) -> Page {
    let record = |id: &&str| Record {
        id: (*id).into(),
        updated_at: "2024-01-01T00:00:00Z".into(),
        updated_us: crate::time::parse_us("2024-01-01T00:00:00Z").expect("ts"),
        data: serde_json::value::to_raw_value(&serde_json::json!({ "id": id })).expect("json"),
    };
    Page {
        upserts: ids.iter().map(record).collect(),
        deletes: deletes
            .iter()
            .map(|id| Tombstone {
                id: (*id).into(),
                deleted_at: None,
                data: serde_json::value::to_raw_value(&serde_json::json!({ "id": id }))
                    .expect("json"),
            })
            .collect(),
        next_progress: Progress {
            phase: Phase::Incremental,
            state: serde_json::json!({}),
        },
        done: true,
        listing: None,
        reports: Vec::new(),
    }
}

/// The feed with two records in each of acme/x, beta/x and mute/x.
async fn start() -> Feed {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let store = Store::open(&config.storage.database).await.expect("store");
    for tenant in ["acme", "beta", "mute"] {
        let key = SourceKey::new(tenant, "x");
        store
            .commit_records(&key, "content", page(&["1", "2"], &[]))
            .await
            .expect("commit");
    }
    let feed = ChangeFeed::default();
    feed.install(&config, &store);
    let ready = Readiness::default();
    ready.set(true);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let limits = Limits::new(&config.server);
    tokio::spawn(serve(
        listener,
        router(ready, Webhooks::default(), feed.clone(), None, &limits),
        limits,
        stop.clone(),
    ));
    Feed {
        addr,
        store,
        feed,
        stop,
        _dir: dir,
    }
}

struct Answer {
    status: u16,
    next: Option<i64>,
    lines: Vec<serde_json::Value>,
    text: String,
}

impl Answer {
    /// tenant/source/id of each line.
    fn names(&self) -> Vec<String> {
        self.lines
            .iter()
            .map(|l| format!("{}/{}/{}", l["tenant"], l["source"], l["id"]).replace('"', ""))
            .collect()
    }
}

async fn get(addr: SocketAddr, path_and_query: &str, auth: Option<&str>) -> Answer {
    let mut request = reqwest::Client::new().get(format!("http://{addr}{path_and_query}"));
    if let Some(a) = auth {
        request = request.header("authorization", a);
    }
    let response = request.send().await.expect("answer");
    let status = response.status().as_u16();
    let next = response
        .headers()
        .get(NEXT_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let text = response.text().await.expect("body");
    let lines = if status == 200 {
        text.lines()
            .map(|l| serde_json::from_str(l).expect("an NDJSON line"))
            .collect()
    } else {
        Vec::new()
    };
    Answer {
        status,
        next,
        lines,
        text,
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Every query a reader could send, good and bad.
const QUERIES: [&str; 14] = [
    "",
    "?since=0",
    "?since=0&source=acme/x",
    "?since=0&source=beta/x",
    "?since=0&source=beta%2Fx",
    "?since=0&source=mute/x",
    "?since=0&source=ACME/x",
    "?since=0&source=acme/x&source=beta/x",
    "?since=0&source=beta/x&source=acme/x",
    "?since=0&limit=1&wait=0",
    "?since=-1",
    "?since=0&tenant=beta",
    "?since=0&source=acme",
    "?since=0&wait=1000",
];

#[tokio::test]
async fn without_a_valid_token_nothing_is_read_whatever_the_query() {
    let f = start().await;
    let refused = [
        None,
        Some(String::new()),
        Some("Bearer".to_string()),
        Some("Bearer ".to_string()),
        Some("Bearer wrong".to_string()),
        Some(format!("Basic {ACME}")),
        Some(format!("Bearer {ACME}x")),
        Some(format!("Bearer {}", &ACME[..ACME.len() - 1])),
        Some(format!("Bearer {}", ACME.to_uppercase())),
        // The webhook token of the sources is no read token.
        Some("Bearer t".to_string()),
    ];
    for auth in &refused {
        for query in QUERIES {
            for path in ["/v1/changes", "/v1/changes/", "/v1/Changes"] {
                let a = get(f.addr, &format!("{path}{query}"), auth.as_deref()).await;
                assert!(
                    a.status == 401 || (a.status == 404 && path != "/v1/changes"),
                    "{auth:?} {path}{query}: {} {}",
                    a.status,
                    a.text
                );
                assert!(!a.text.contains("\"tenant\""), "{}", a.text);
                assert!(a.next.is_none());
            }
        }
    }
    f.stop.cancel();
}

#[tokio::test]
async fn a_tenant_token_reads_its_tenant_only_with_every_query() {
    let f = start().await;
    let (acme, beta) = (bearer(ACME), bearer(BETA));
    for query in QUERIES {
        for (auth, own) in [(&acme, "acme"), (&beta, "beta")] {
            let a = get(f.addr, &format!("/v1/changes{query}"), Some(auth)).await;
            // Whatever the answer, it holds no line of another tenant.
            for name in a.names() {
                assert!(
                    name.starts_with(&format!("{own}/")),
                    "{own} read {name} with {query}"
                );
            }
            assert!(
                matches!(a.status, 200 | 400 | 403),
                "{own} {query}: {} {}",
                a.status,
                a.text
            );
        }
    }
    // The exact answers.
    let own = get(f.addr, "/v1/changes?since=0", Some(&acme)).await;
    assert_eq!(
        (own.status, own.names()),
        (200, vec!["acme/x/1".into(), "acme/x/2".into()])
    );
    for other in ["beta/x", "beta%2Fx", "mute/x", "ACME/x", "nobody/x"] {
        let a = get(
            f.addr,
            &format!("/v1/changes?since=0&source={other}"),
            Some(&acme),
        )
        .await;
        assert_eq!(a.status, 403, "{other}: {}", a.text);
    }
    let twice = get(
        f.addr,
        "/v1/changes?since=0&source=acme/x&source=beta/x",
        Some(&acme),
    )
    .await;
    assert_eq!(
        twice.status, 400,
        "a repeated parameter is refused: {}",
        twice.text
    );
    let named = get(f.addr, "/v1/changes?since=0&source=acme/x", Some(&acme)).await;
    assert_eq!(named.names(), ["acme/x/1", "acme/x/2"]);
    f.stop.cancel();
}

#[tokio::test]
async fn the_admin_token_reads_every_tenant_and_bad_parameters_are_named() {
    let f = start().await;
    let admin = bearer(ADMIN);
    let all = get(f.addr, "/v1/changes?since=0", Some(&admin)).await;
    assert_eq!(all.status, 200);
    assert_eq!(all.lines.len(), 6);
    let beta = get(f.addr, "/v1/changes?since=0&source=beta/x", Some(&admin)).await;
    assert_eq!(beta.names(), ["beta/x/1", "beta/x/2"]);
    for (query, names) in [
        ("", "since"),
        ("?since=-1", "since"),
        ("?since=abc", "since"),
        ("?since=0&limit=0", "limit"),
        ("?since=0&limit=10001", "limit"),
        ("?since=0&wait=-1", "wait"),
        ("?since=0&wait=1000", "wait"),
        ("?since=0&wait=NaN", "wait"),
        ("?since=0&source=acme", "source"),
        ("?since=0&tenant=beta", "tenant"),
    ] {
        let a = get(f.addr, &format!("/v1/changes{query}"), Some(&admin)).await;
        assert_eq!(a.status, 400, "{query}: {}", a.text);
        assert!(a.text.contains(names), "{query}: {}", a.text);
    }
    f.stop.cancel();
}

#[tokio::test]
async fn pages_follow_the_header_and_a_reader_behind_a_purge_gets_410() {
    let f = start().await;
    let admin = bearer(ADMIN);
    let mut since = 0;
    let mut seen = Vec::new();
    loop {
        let a = get(
            f.addr,
            &format!("/v1/changes?since={since}&limit=4"),
            Some(&admin),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text);
        let next = a.next.expect("Synchro-Next-Since");
        if a.lines.is_empty() {
            assert_eq!(next, since, "caught up: the same position");
            break;
        }
        for l in &a.lines {
            let seq = l["seq"].as_i64().expect("seq");
            assert!(seq > since && seen.last().is_none_or(|s| seq > *s));
            seen.push(seq);
        }
        since = next;
    }
    assert_eq!(seen.len(), 6);

    // A deletion, purged before a reader behind it read it.
    let key = SourceKey::new("acme", "x");
    f.store
        .commit_records(&key, "content", page(&[], &["1"]))
        .await
        .expect("delete");
    assert_eq!(
        f.store
            .purge_tombstones(Duration::ZERO)
            .await
            .expect("purge"),
        1
    );
    let behind = get(
        f.addr,
        &format!("/v1/changes?since={}", seen[0]),
        Some(&admin),
    )
    .await;
    assert_eq!(behind.status, 410, "{}", behind.text);
    assert!(behind.text.contains("resync"), "{}", behind.text);
    let tenant_behind = get(
        f.addr,
        &format!("/v1/changes?since={}", seen[0]),
        Some(&bearer(ACME)),
    )
    .await;
    assert_eq!(tenant_behind.status, 410);
    let fresh = get(f.addr, "/v1/changes?since=0", Some(&admin)).await;
    assert_eq!(fresh.status, 200, "from 0 always works");
    assert_eq!(fresh.lines.len(), 5);
    f.stop.cancel();
}

#[tokio::test]
async fn a_long_poll_answers_at_the_commit_at_its_deadline_or_at_shutdown() {
    let f = start().await;
    let acme = bearer(ACME);
    let head = get(f.addr, "/v1/changes?since=0", Some(&acme))
        .await
        .next
        .expect("head");

    // Another tenant's commit does not answer acme's poll; acme's does.
    let store = f.store.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        store
            .commit_records(&SourceKey::new("beta", "x"), "content", page(&["b9"], &[]))
            .await
            .expect("commit");
        tokio::time::sleep(Duration::from_millis(300)).await;
        store
            .commit_records(&SourceKey::new("acme", "x"), "content", page(&["a9"], &[]))
            .await
            .expect("commit");
    });
    let started = Instant::now();
    let a = get(
        f.addr,
        &format!("/v1/changes?since={head}&wait=20"),
        Some(&acme),
    )
    .await;
    assert_eq!(a.names(), ["acme/x/a9"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    writer.await.expect("writer");

    // Nothing commits: an empty answer at the deadline, same position.
    let next = a.next.expect("next");
    let started = Instant::now();
    let empty = get(
        f.addr,
        &format!("/v1/changes?since={next}&wait=0.5"),
        Some(&acme),
    )
    .await;
    assert_eq!((empty.status, empty.lines.len()), (200, 0));
    assert!(empty.next.expect("next") >= next);
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );

    // Shutdown answers a waiting reader at once.
    let addr = f.addr;
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let a = get(
            addr,
            &format!("/v1/changes?since={next}&wait=50"),
            Some(&bearer(ACME)),
        )
        .await;
        (a.status, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.feed.close();
    let (status, took) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered before its wait")
        .expect("task");
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(10), "{took:?}");
    f.stop.cancel();
}
