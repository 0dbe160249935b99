//! The shared client against local upstreams on 127.0.0.1:0 that answer
//! with absurd numbers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use tokio_util::sync::CancellationToken;

use super::*;

pub(super) fn config(max_retries: u32, max_backoff: Duration) -> HttpConfig {
    HttpConfig {
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        max_retries,
        initial_backoff: Duration::from_millis(10),
        max_backoff,
        per_host_requests_per_second: 1000.0,
        per_host_concurrency: 4,
        hosts: Default::default(),
    }
}

/// Serves `app` on 127.0.0.1:0.
pub(super) async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// One scripted answer: status and headers; 200 "ok" once the script ends.
type Script = Arc<Mutex<VecDeque<(u16, Vec<(&'static str, String)>)>>>;

/// An upstream answering each request with the next scripted answer, and
/// counting the requests it saw.
async fn scripted(answers: Vec<(u16, Vec<(&'static str, String)>)>) -> (String, Arc<Mutex<u32>>) {
    let script: Script = Arc::new(Mutex::new(answers.into()));
    let hits = Arc::new(Mutex::new(0u32));
    let seen = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let script = script.clone();
        let hits = hits.clone();
        async move {
            *hits.lock().expect("lock") += 1;
            let next = script.lock().expect("lock").pop_front();
            let Some((status, headers)) = next else {
                return (StatusCode::OK, "ok").into_response();
            };
            let mut resp =
                (StatusCode::from_u16(status).expect("status"), "slow down").into_response();
            for (name, value) in headers {
                resp.headers_mut()
                    .insert(name, value.parse().expect("header value"));
            }
            resp
        }
    });
    let addr = serve(app).await;
    (format!("http://{addr}/api"), seen)
}

async fn get(max_retries: u32, url: &str) -> Result<(Response, u32), HttpError> {
    let http = HttpClient::new(
        &config(max_retries, Duration::from_secs(1)),
        Redactor::default(),
    )
    .expect("client");
    http.send(|c| c.get(url), &CancellationToken::new()).await
}

#[tokio::test]
async fn an_absurd_rate_limit_reset_fails_at_once_with_a_clear_error() {
    let max = u64::MAX.to_string();
    for (status, header) in [
        (429, "ratelimit-reset"),
        (429, "retry-after"),
        (503, "retry-after"),
    ] {
        let (url, hits) = scripted(vec![(status, vec![(header, max.clone())])]).await;
        let err = match get(3, &url).await {
            Err(e @ HttpError::WaitTooLong { .. }) => e.to_string(),
            other => panic!("{header}: expected WaitTooLong, got {other:?}"),
        };
        assert!(
            err.contains(&format!("HTTP {status}")) && err.contains("http.max_backoff (1s)"),
            "{err}"
        );
        // Not retried before the upstream's time, which never comes.
        assert_eq!(*hits.lock().expect("lock"), 1, "{header}");
    }
}

#[tokio::test]
async fn a_wait_longer_than_max_backoff_is_not_slept() {
    let (url, hits) = scripted(vec![(429, vec![("retry-after", "3600".into())])]).await;
    // A max_backoff long enough that sleeping it could not pass for the
    // time one local request takes on a loaded machine.
    let max_backoff = Duration::from_secs(60);
    let http = HttpClient::new(&config(3, max_backoff), Redactor::default()).expect("client");
    let started = std::time::Instant::now();
    match http.send(|c| c.get(&url), &CancellationToken::new()).await {
        Err(HttpError::WaitTooLong { wait_secs, .. }) => assert_eq!(wait_secs, 3600),
        other => panic!("expected WaitTooLong, got {other:?}"),
    }
    assert!(
        started.elapsed() < max_backoff / 2,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(*hits.lock().expect("lock"), 1);
}

#[tokio::test]
async fn negative_or_garbage_waits_fall_back_to_back_off() {
    let answers = ["-1", "-18446744073709551615", "soon", "1.5"]
        .into_iter()
        .map(|v| {
            (
                429,
                vec![
                    ("retry-after", v.to_string()),
                    ("ratelimit-reset", v.to_string()),
                ],
            )
        })
        .collect();
    let (url, hits) = scripted(answers).await;
    let (resp, attempts) = get(5, &url).await.expect("retried until it succeeds");
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(attempts, 5);
    assert_eq!(*hits.lock().expect("lock"), 5);
}

#[tokio::test]
async fn a_wait_within_max_backoff_is_honoured() {
    let (url, hits) = scripted(vec![(429, vec![("retry-after", "0".into())])]).await;
    let (resp, attempts) = get(1, &url).await.expect("retried");
    assert_eq!((resp.status, attempts), (StatusCode::OK, 2));
    assert_eq!(*hits.lock().expect("lock"), 2);
}

/// An upstream on 127.0.0.1 whose `/start` redirects to `location(port)`
/// (its own port given), and whose `/landing` answers "landed"; counts the
/// requests that reached `/landing`.
async fn redirecting(
    location: impl Fn(u16) -> String + Send + Sync + 'static,
) -> (SocketAddr, Arc<Mutex<u32>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let landed = Arc::new(Mutex::new(0u32));
    let seen = landed.clone();
    let target = location(addr.port());
    let app = axum::Router::new()
        .route(
            "/start",
            axum::routing::get(move || {
                let target = target.clone();
                async move { (StatusCode::FOUND, [("location", target)]).into_response() }
            }),
        )
        .route(
            "/loop",
            axum::routing::get(|| async {
                (StatusCode::FOUND, [("location", "/loop")]).into_response()
            }),
        )
        .route(
            "/landing",
            axum::routing::get(move || {
                let landed = landed.clone();
                async move {
                    *landed.lock().expect("lock") += 1;
                    "landed"
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

#[tokio::test]
async fn a_redirect_to_another_host_is_refused_naming_only_its_origin() {
    // Same port, another name for the same machine: another host all the same.
    let (addr, landed) =
        redirecting(|port| format!("http://localhost:{port}/landing?access_token=s3cr3t")).await;
    let err = match get(3, &format!("http://{addr}/start")).await {
        Err(e @ HttpError::Redirect { .. }) => e.to_string(),
        other => panic!("expected a refused redirect, got {other:?}"),
    };
    let port = addr.port();
    assert!(
        err.contains(&format!("to http://localhost:{port}: another host")),
        "{err}"
    );
    assert!(!err.contains("s3cr3t") && !err.contains("landing"), "{err}");
    assert_eq!(*landed.lock().expect("lock"), 0);
}

#[tokio::test]
async fn a_redirect_on_the_same_host_and_scheme_is_followed() {
    let (addr, landed) = redirecting(|_| "/landing".to_string()).await;
    let (resp, attempts) = get(0, &format!("http://{addr}/start"))
        .await
        .expect("followed");
    assert_eq!((resp.status, attempts), (StatusCode::OK, 1));
    assert_eq!(&resp.body[..], b"landed");
    assert_eq!(*landed.lock().expect("lock"), 1);
    // An absolute URL to the same origin too.
    let (addr, _) = redirecting(|port| format!("http://127.0.0.1:{port}/landing")).await;
    let (resp, _) = get(0, &format!("http://{addr}/start"))
        .await
        .expect("followed");
    assert_eq!(&resp.body[..], b"landed");
}

#[tokio::test]
async fn a_redirect_to_another_port_or_in_a_loop_is_refused() {
    let (other, _) = redirecting(|_| "/landing".to_string()).await;
    let op = other.port();
    let (addr, _) = redirecting(move |_| format!("http://127.0.0.1:{op}/landing")).await;
    match get(3, &format!("http://{addr}/start")).await {
        Err(HttpError::Redirect { target, reason, .. }) => {
            assert_eq!(target, format!("http://127.0.0.1:{op}"));
            assert_eq!(reason, "another host");
        }
        other => panic!("expected a refused redirect, got {other:?}"),
    }
    match get(3, &format!("http://{addr}/loop")).await {
        Err(HttpError::Redirect { reason, .. }) => assert_eq!(reason, "too many redirects"),
        other => panic!("expected a refused redirect, got {other:?}"),
    }
}

#[test]
fn only_same_origin_redirects_and_no_plain_http_outside_loopback() {
    let u = |s: &str| url::Url::parse(s).expect("url");
    let api = u("https://api.example.com/v1/x");
    assert_eq!(
        redirect_refusal(&api, &u("https://api.example.com/v2/y?a=b"), 1),
        None
    );
    assert_eq!(
        redirect_refusal(&api, &u("https://API.example.com:443/z"), 1),
        None
    );
    assert_eq!(
        redirect_refusal(&api, &u("https://evil.example.com/v1/x"), 1),
        Some("another host")
    );
    assert_eq!(
        redirect_refusal(&api, &u("https://api.example.com:8443/v1/x"), 1),
        Some("another host")
    );
    assert_eq!(
        redirect_refusal(&api, &u("http://api.example.com/v1/x"), 1),
        Some("another scheme")
    );
    assert_eq!(
        redirect_refusal(&api, &u("https://api.example.com/v1/x"), 11),
        Some("too many redirects")
    );
    let lan = u("http://10.0.0.7/v1");
    assert_eq!(
        redirect_refusal(&lan, &u("http://10.0.0.7/v2"), 1),
        Some("plain http outside loopback")
    );
    for local in [
        "http://127.0.0.1:9/a",
        "http://localhost:9/a",
        "http://[::1]:9/a",
    ] {
        assert_eq!(
            redirect_refusal(&u(local), &u(&format!("{local}/b")), 1),
            None
        );
    }
}
