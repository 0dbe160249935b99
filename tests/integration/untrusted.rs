//! Upstreams that cannot be trusted with secrets or numbers: error bodies
//! echoing the bearer token (configured or obtained through OAuth), redirects
//! to another host, absurd `RateLimit-Reset` values. Each run fails with a
//! clear error, and no token reaches the logs, the runs table or `status`.
//! Also: `check` warns about secret files others can read.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::common::*;
use synchro_simulator::Fault;

/// Access tokens handed out by [`echo_upstream`], in order.
type Issued = Arc<Mutex<Vec<String>>>;

/// An OAuth token endpoint and a calendar API whose every answer is an
/// error echoing the `Authorization` header it received:
/// - calendar `echo-400`: Google's JSON error, 400, the header in `message`;
/// - calendar `echo-404`: plain text, 404, the header placed so that the
///   token straddles the 300-character cut of error excerpts;
/// - any other calendar: an empty last page (a successful sync).
async fn echo_upstream() -> (SocketAddr, Issued) {
    upstream_with_expiry(serde_json::json!(3599)).await
}

/// [`echo_upstream`] whose token endpoint announces `expires_in`.
async fn upstream_with_expiry(expires_in: serde_json::Value) -> (SocketAddr, Issued) {
    type Grants = (Issued, serde_json::Value);
    async fn token(State((issued, expires_in)): State<Grants>) -> Response {
        let mut issued = issued.lock().expect("lock");
        let token = format!("ya29.a0-runtime-token-{:04}", issued.len());
        issued.push(token.clone());
        axum::Json(serde_json::json!({
            "access_token": token,
            "expires_in": expires_in,
            "token_type": "Bearer",
        }))
        .into_response()
    }
    async fn events(Path(calendar): Path<String>, headers: HeaderMap) -> Response {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if calendar == "echo-400" {
            let body = serde_json::json!({"error": {
                "code": 400,
                "message": format!("Invalid header value {auth}"),
                "errors": [{"reason": "badRequest", "message": "bad request"}],
            }});
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
        if calendar != "echo-404" {
            let page =
                serde_json::json!({"kind": "calendar#events", "items": [], "nextSyncToken": "s1"});
            return axum::Json(page).into_response();
        }
        // "Bearer " ends at character 290: the token runs over the cut.
        let body = format!("{}{auth} is not allowed here", "x".repeat(283));
        (StatusCode::NOT_FOUND, body).into_response()
    }
    let issued = Issued::default();
    let app = axum::Router::new()
        .route("/token", post(token))
        .route("/calendar/v3/calendars/{calendar}/events", get(events))
        .with_state((issued.clone(), expires_in));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, issued)
}

/// Every `runs.error` stored, straight from the database.
async fn run_errors(db: &Db) -> Vec<String> {
    let mut conn = db.connect().await.expect("open db");
    sqlx::query_as::<_, (Option<String>,)>("SELECT error FROM runs")
        .fetch_all(&mut conn)
        .await
        .expect("runs")
        .into_iter()
        .filter_map(|(e,)| e)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_tokens_echoed_by_an_upstream_error_are_redacted_everywhere() {
    let sim = simulator().await;
    let (addr, issued) = echo_upstream().await;
    let mut a = CalSource::new("acme", "json", "echo-400");
    a.auth = CalAuth::OAuth("refresh-token-of-acme-json");
    let mut b = CalSource::new("acme", "text", "echo-404");
    b.auth = CalAuth::OAuth("refresh-token-of-acme-text");
    let setup = Setup::mixed(&sim, &[], &[a, b], "");
    setup.edit_config(&sim.oauth_token_url(), &format!("http://{addr}/token"));
    setup.edit_config(
        &sim.calendar_endpoint(),
        &format!("http://{addr}/calendar/v3"),
    );

    let out = setup.run(&["sync"]).await;
    let status = setup.run(&["status"]).await;
    let json = setup.run(&["status", "--json"]).await;
    let stored = run_errors(&setup.db()).await;
    let everything = format!(
        "{}{}{}{}{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&json.stdout),
        stored.join("\n")
    );
    assert_eq!(out.status.code(), Some(1), "{everything}");
    let issued = issued.lock().expect("lock").clone();
    assert_eq!(issued.len(), 2, "one token per source: {issued:?}");
    for token in &issued {
        // Not the token, nor a prefix long enough to matter.
        assert!(
            !everything.contains(&token[..12]),
            "{token} leaked:\n{everything}"
        );
    }
    assert_eq!(stored.len(), 2, "{stored:?}");
    for e in &stored {
        assert!(e.contains("Bearer [redacted]"), "{e}");
    }
    assert!(stored.iter().any(|e| e.contains("HTTP 400")), "{stored:?}");
    assert!(stored.iter().any(|e| e.contains("HTTP 404")), "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_across_the_excerpt_cut_leaks_no_prefix() {
    let sim = simulator().await;
    let (addr, _) = echo_upstream().await;
    let token = "static-token-straddling-the-cut";
    let mut cal = CalSource::new("acme", "team", "echo-404");
    cal.auth = CalAuth::Static(token);
    let setup = Setup::mixed(&sim, &[], &[cal], "");
    setup.edit_config(
        &sim.calendar_endpoint(),
        &format!("http://{addr}/calendar/v3"),
    );
    let out = setup.run(&["sync"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let stored = run_errors(&setup.db()).await.join("\n");
    assert!(stored.contains("HTTP 404"), "{stored}");
    for text in [&err, &stored] {
        assert!(!text.contains(&token[..6]), "a prefix leaked:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_rate_limit_reset_fails_the_run_clearly_and_the_next_one_syncs() {
    let sim = simulator().await;
    sim.ds().seed(61, 120);
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", 61)]);
    sim.ds().inject(
        Fault::Http429Raw {
            ratelimit_reset: u64::MAX.to_string(),
            retry_after: None,
        },
        1,
    );
    let out = setup.run(&["sync"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("acme/permits: failed"))
        .unwrap_or_else(|| panic!("no failure line:\n{err}"));
    assert!(
        line.contains("HTTP 429") && line.contains("asks to wait") && line.contains("max_backoff"),
        "{line}"
    );
    // Negative and garbage values are ignored: backed off and retried.
    for (reset, retry_after) in [("-1", Some("-5")), ("soon", Some("later")), ("1.5", None)] {
        sim.ds().inject(
            Fault::Http429Raw {
                ratelimit_reset: reset.into(),
                retry_after: retry_after.map(Into::into),
            },
            1,
        );
    }
    setup.sync_ok(&[]).await;
    assert_export_matches(&setup, &sim, "acme", "permits", 61).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_oauth_expires_in_does_not_kill_the_source() {
    let sim = simulator().await;
    for expires_in in [
        serde_json::json!(u64::MAX),
        serde_json::json!(-3600),
        serde_json::json!("soon"),
    ] {
        let (addr, issued) = upstream_with_expiry(expires_in.clone()).await;
        let mut cal = CalSource::new("acme", "team", "empty");
        cal.auth = CalAuth::OAuth("refresh-token-of-acme-team");
        let setup = Setup::mixed(&sim, &[], &[cal], "");
        setup.edit_config(&sim.oauth_token_url(), &format!("http://{addr}/token"));
        setup.edit_config(
            &sim.calendar_endpoint(),
            &format!("http://{addr}/calendar/v3"),
        );
        let out = setup.run(&["sync"]).await;
        let err = stderr(&out);
        assert!(out.status.success(), "expires_in {expires_in}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(issued.lock().expect("lock").len(), 1);
    }
}

/// Serves `app` on 127.0.0.1:0.
async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_host_fails_the_run_and_stores_nothing() {
    let sim = simulator().await;
    // Another host (named `localhost`) that answers anyone with an event.
    let elsewhere = serve(axum::Router::new().fallback(|| async {
        axum::Json(serde_json::json!({
            "items": [{"id": "planted", "updated": "2026-01-01T00:00:00Z", "status": "confirmed"}],
            "nextSyncToken": "s1",
        }))
    }))
    .await;
    let target = format!("http://localhost:{}/elsewhere?key=k3y", elsewhere.port());
    let redirector = serve(axum::Router::new().fallback(move || {
        let target = target.clone();
        async move { (StatusCode::FOUND, [("location", target)]).into_response() }
    }))
    .await;
    let setup = Setup::mixed(&sim, &[], &[CalSource::new("acme", "team", "primary")], "");
    setup.edit_config(
        &sim.calendar_endpoint(),
        &format!("http://{redirector}/calendar/v3"),
    );
    let out = setup.run(&["sync"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("acme/team: failed"))
        .unwrap_or_else(|| panic!("no failure line:\n{err}"));
    assert!(
        line.contains(&format!(
            "refused redirect from http://{redirector}/calendar/v3/calendars/primary/events \
             to http://localhost:{}: another host",
            elsewhere.port()
        )),
        "{line}"
    );
    assert!(!err.contains("k3y"), "{err}");
    assert!(setup.export(true).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_about_a_secret_file_others_can_read_and_still_passes() {
    use std::os::unix::fs::PermissionsExt;
    let sim = simulator().await;
    let setup = Setup::new(&sim, &[DsSource::new("acme", "permits", 1)]);
    let secret = setup.dir.path().join("ds-token");
    std::fs::write(
        &secret,
        format!("{}\n", synchro_simulator::DEFAULT_DS_TOKEN),
    )
    .expect("write");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    setup.edit_config(
        &format!("token = \"{}\"", synchro_simulator::DEFAULT_DS_TOKEN),
        "token = { file = \"ds-token\" }",
    );
    let out = setup.run(&["check"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("warning"))
        .unwrap_or_else(|| panic!("no warning:\n{err}"));
    assert!(
        line.starts_with(&setup.config.display().to_string()),
        "{line}"
    );
    assert!(line.contains("tenants[0].sources[0].token"), "{line}");
    assert!(line.contains(&secret.display().to_string()), "{line}");
    assert!(line.contains("mode 0644"), "{line}");
    assert!(!err.contains(synchro_simulator::DEFAULT_DS_TOKEN), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));

    // The daemon logs the same warning when it starts.
    let mut child = setup.spawn(&["run"]);
    wait_until(Duration::from_secs(30), "the daemon to start", || async {
        setup.spawned_stderr().contains("synchro is running")
    })
    .await;
    signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    let logs = setup.spawned_stderr();
    assert!(status.success(), "{logs}");
    assert!(
        logs.lines().any(|l| l.contains("WARN")
            && l.contains("tenants[0].sources[0].token")
            && l.contains("accessible to group or others")),
        "{logs}"
    );

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = setup.run(&["check"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}
