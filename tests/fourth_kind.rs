//! A kind is local: `notes`, a fourth kind that exists only in this test,
//! is registered through the same `Kinds::register` the three shipped
//! kinds use, read from the config file by the same loader, synced end to
//! end by the scheduler and the engine against a tiny upstream on
//! 127.0.0.1:0, and called back through the daemon's webhook route.
//! Nothing of the daemon names it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::Query;
use axum::http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use synchro::config::{KindKeys, Secret};
use synchro::engine::Engine;
use synchro::http::HttpClient;
use synchro::model::{Page, Phase, Progress, Record, SourceKey};
use synchro::redact::Redactor;
use synchro::scheduler::Scheduler;
use synchro::server::{Limits, Readiness, Webhooks, router, serve};
use synchro::sources::{
    Build, Kind, Kinds, Reply, Source, SourceError, Webhook, WebhookAction, WebhookRoute,
    same_secret,
};
use synchro::store::Store;

const NOTES_TOKEN: &str = "notes-upstream-token";
const HOOK_TOKEN: &str = "notes-hook-token";
/// Notes the upstream holds; pages of [`PAGE`].
const NOTES: u64 = 5;
const PAGE: u64 = 2;

/// The `notes` kind: the keys it reads, its client and its webhook.
struct NotesKind;

#[derive(Debug, Clone, PartialEq)]
struct NotesConfig {
    token: Secret,
    hook_token: Option<Secret>,
}

impl Kind for NotesKind {
    type Config = NotesConfig;
    const NAME: &'static str = "notes";
    const DEFAULT_ENDPOINT: &'static str = "https://notes.example.com/api";
    const WEBHOOK: Option<WebhookRoute> = Some(WebhookRoute {
        method: Method::POST,
        refused_body: Some("who are you?\n"),
    });

    fn read(keys: &mut KindKeys<'_>) -> Option<NotesConfig> {
        let token = keys.secret("token", true);
        let hook_token = keys.secret("hook_token", false);
        Some(NotesConfig {
            token: token??,
            hook_token: hook_token?,
        })
    }

    fn secrets(cfg: &NotesConfig) -> Vec<Secret> {
        let mut out = vec![cfg.token.clone()];
        out.extend(cfg.hook_token.clone());
        out
    }

    fn build(cfg: &NotesConfig, ctx: Build) -> Box<dyn Source> {
        Box::new(Notes {
            http: ctx.http,
            endpoint: ctx.endpoint,
            token: cfg.token.clone(),
            stop: ctx.stop,
        })
    }

    fn webhook(cfg: &NotesConfig) -> Option<Arc<dyn Webhook>> {
        let token = cfg.hook_token.clone()?;
        Some(Arc::new(NoteHook { token }))
    }
}

/// One note, as the upstream sends it.
#[derive(Debug, Deserialize)]
struct Note {
    id: String,
    updated: String,
}

#[derive(Debug, Deserialize)]
struct NotesPage {
    notes: Vec<Box<serde_json::value::RawValue>>,
    next: Option<u64>,
}

/// The client of one configured `notes` source: `GET {endpoint}/notes?after=N`.
struct Notes {
    http: HttpClient,
    endpoint: url::Url,
    token: Secret,
    stop: CancellationToken,
}

fn record(raw: Box<serde_json::value::RawValue>) -> Result<Record, String> {
    let note: Note = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
    let updated_us = chrono::DateTime::parse_from_rfc3339(&note.updated)
        .map_err(|e| e.to_string())?
        .timestamp_micros();
    Ok(Record {
        id: note.id,
        updated_at: note.updated,
        updated_us,
        data: raw,
    })
}

#[async_trait]
impl Source for Notes {
    fn start_run(&self, stored: Option<Progress>) -> Progress {
        stored.unwrap_or_default()
    }

    async fn fetch(&self, progress: &Progress) -> Result<Page, SourceError> {
        let after = progress.state["after"].as_u64().unwrap_or(0);
        let mut url = self.endpoint.clone();
        url.set_path("/notes");
        url.set_query(Some(&format!("after={after}")));
        let (resp, attempts) = self
            .http
            .send(
                |c| c.get(url.clone()).bearer_auth(self.token.expose()),
                &self.stop,
            )
            .await?;
        let page: NotesPage = resp.error_for_status(attempts)?.json()?;
        let upserts = page
            .notes
            .into_iter()
            .map(record)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| SourceError::Malformed {
                url: url.to_string(),
                reason,
            })?;
        let at = page.next.unwrap_or(after + upserts.len() as u64);
        Ok(Page {
            upserts,
            next_progress: Progress {
                phase: if page.next.is_some() {
                    Phase::Full
                } else {
                    Phase::Incremental
                },
                state: serde_json::json!({ "after": at }),
            },
            done: page.next.is_none(),
            ..Page::default()
        })
    }
}

/// `POST /webhooks/notes/{tenant}/{source}` with `X-Notes-Token`: the body
/// is one note, stored at once.
struct NoteHook {
    token: Secret,
}

impl Webhook for NoteHook {
    fn accepts(&self, headers: &HeaderMap) -> bool {
        headers
            .get("x-notes-token")
            .is_some_and(|v| same_secret(&self.token, v.as_bytes()))
    }

    fn reads_body(&self) -> bool {
        true
    }

    fn handle(&self, _key: &SourceKey, _headers: &HeaderMap, body: &[u8]) -> WebhookAction {
        let raw = std::str::from_utf8(body)
            .ok()
            .and_then(|text| serde_json::value::RawValue::from_string(text.to_string()).ok());
        match raw.map(record) {
            Some(Ok(note)) => WebhookAction::Commit {
                page: Page {
                    upserts: vec![note],
                    ..Page::default()
                },
                reply: Reply::text(StatusCode::OK, "noted\n"),
            },
            Some(Err(reason)) => {
                WebhookAction::Reply(Reply::text(StatusCode::BAD_REQUEST, format!("{reason}\n")))
            }
            None => WebhookAction::Reply(Reply::text(StatusCode::BAD_REQUEST, "not JSON\n")),
        }
    }
}

#[derive(Deserialize)]
struct After {
    after: u64,
}

/// The upstream: [`NOTES`] notes, [`PAGE`] a page, behind a bearer token.
async fn upstream() -> SocketAddr {
    let app = axum::Router::new().route(
        "/notes",
        axum::routing::get(|headers: HeaderMap, Query(q): Query<After>| async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if auth != format!("Bearer {NOTES_TOKEN}") {
                return (StatusCode::UNAUTHORIZED, String::new());
            }
            let end = (q.after + PAGE).min(NOTES);
            let notes: Vec<serde_json::Value> = (q.after + 1..=end)
                .map(|n| serde_json::json!({"id": n.to_string(), "updated": format!("2026-01-0{n}T00:00:00Z"), "text": format!("note {n}")}))
                .collect();
            let next = (end < NOTES).then_some(end);
            (
                StatusCode::OK,
                serde_json::json!({"notes": notes, "next": next}).to_string(),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn config_text(db: &Path, upstream: SocketAddr) -> String {
    format!(
        "[storage]\ndatabase = \"sqlite://{}\"\n\n[scheduler]\njitter = \"0s\"\n\n\
         [[tenants]]\nid = \"acme\"\n\n[[tenants.sources]]\nid = \"jotter\"\nkind = \"notes\"\n\
         schedule = \"every 1h\"\nendpoint = \"http://{upstream}/api\"\n\
         token = \"{NOTES_TOKEN}\"\nhook_token = \"{HOOK_TOKEN}\"\n",
        db.display()
    )
}

/// Polls `check` until it holds, failing after a generous deadline.
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn the_shipped_registry_refuses_the_test_kind_naming_the_key() {
    let text = config_text(
        Path::new("/tmp/never-opened.db"),
        ([127, 0, 0, 1], 9).into(),
    );
    let e = synchro::config::load_str(
        &text,
        Path::new("t.toml"),
        &HashMap::new(),
        &Kinds::builtin(),
    )
    .expect_err("notes is not a shipped kind");
    let kind = e
        .problems
        .iter()
        .find(|p| p.key == "tenants[0].sources[0].kind")
        .unwrap_or_else(|| panic!("no problem names the kind:\n{}", e.report()));
    assert_eq!(
        kind.reason,
        "unknown source kind; expected one of: demarches, calendar, content"
    );
    // With the kind registered, the same file loads, and the new kind is
    // listed with the others when another one is wrong.
    let kinds = Kinds::builtin().register::<NotesKind>();
    let c = synchro::config::load_str(&text, Path::new("t.toml"), &HashMap::new(), &kinds)
        .unwrap_or_else(|e| panic!("{}", e.report()));
    let source = c.sources().next().expect("one source");
    assert_eq!(source.kind_name(), "notes");
    assert_eq!(
        source.kind.get::<NotesConfig>().map(|n| n.token.expose()),
        Some(NOTES_TOKEN)
    );
    let typo = text.replace("kind = \"notes\"", "kind = \"note\"");
    let e = synchro::config::load_str(&typo, Path::new("t.toml"), &HashMap::new(), &kinds)
        .expect_err("a typo in the kind");
    assert!(
        e.report()
            .contains("expected one of: demarches, calendar, content, notes"),
        "{}",
        e.report()
    );
    // A key the kind does not read is reported like any unknown key.
    let extra = text.replace("hook_token =", "colour = \"red\"\nhook_token =");
    let e = synchro::config::load_str(&extra, Path::new("t.toml"), &HashMap::new(), &kinds)
        .expect_err("an unknown key");
    assert!(
        e.problems
            .iter()
            .any(|p| p.key == "tenants[0].sources[0].colour"),
        "{}",
        e.report()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_defined_in_a_test_syncs_end_to_end_and_takes_webhook_calls() {
    let upstream = upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kinds = Kinds::builtin().register::<NotesKind>();
    let config = synchro::config::load_str(
        &config_text(&dir.path().join("notes.db"), upstream),
        &dir.path().join("synchro.toml"),
        &HashMap::new(),
        &kinds,
    )
    .unwrap_or_else(|e| panic!("{}", e.report()));

    // The daemon's parts, assembled as `synchro run` does.
    let store = Store::open(&config.storage.database)
        .await
        .expect("open the store");
    let redactor = Redactor::new(config.secrets());
    let http = HttpClient::new(&config.http, redactor.clone()).expect("client");
    let engine = Engine::new(store.clone(), redactor);
    let stop = CancellationToken::new();
    let scheduler = Scheduler::start(&config, engine, http, stop.child_token())
        .await
        .expect("scheduler");
    let hooks = Webhooks::new(kinds.clone());
    hooks.install(&config, scheduler.triggers(), scheduler.engine());
    let ready = Readiness::default();
    ready.set(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the daemon");
    let daemon = listener.local_addr().expect("daemon address");
    let limits = Limits::new(&config.server);
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        router(
            ready,
            hooks,
            synchro::server::ChangeFeed::default(),
            None,
            &limits,
        ),
        limits,
        server_stop.clone(),
    ));

    // The first run, started by the scheduler, lists every note in pages.
    let key = SourceKey::new("acme", "jotter");
    let status = || async {
        store
            .source_status(&key, "notes")
            .await
            .expect("source status")
    };
    wait_until("the first run to succeed", || async {
        status().await.last_outcome.as_deref() == Some("success")
    })
    .await;
    let after_sync = status().await;
    assert_eq!(after_sync.records, NOTES as i64);
    assert_eq!(after_sync.kind, "notes");
    assert_eq!(after_sync.phase, "incremental");
    let progress = store
        .load_progress(&key)
        .await
        .expect("progress")
        .expect("stored");
    assert_eq!(progress.state, serde_json::json!({ "after": NOTES }));

    // A webhook call stores one more note at once.
    let hook = format!("http://{daemon}/webhooks/notes/acme/jotter");
    let client = reqwest::Client::new();
    let note = r#"{"id":"99","updated":"2026-02-01T00:00:00Z","text":"pushed"}"#;
    let answer = client
        .post(&hook)
        .header("x-notes-token", HOOK_TOKEN)
        .body(note)
        .send()
        .await
        .expect("webhook call");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.text().await.expect("body"), "noted\n");
    assert_eq!(status().await.records, NOTES as i64 + 1);

    // Refused like the shipped kinds' calls: wrong token, wrong method.
    let wrong = client
        .post(&hook)
        .header("x-notes-token", "guess")
        .body(note)
        .send()
        .await
        .expect("refused call");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.text().await.expect("body"), "who are you?\n");
    let get = client.get(&hook).send().await.expect("GET");
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(status().await.records, NOTES as i64 + 1);

    server_stop.cancel();
    let _ = server.await;
    assert!(scheduler.shutdown(Duration::from_secs(10)).await);
    stop.cancel();
    store.close().await;
}
