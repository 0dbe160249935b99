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
    let started = std::time::Instant::now();
    match get(3, &url).await {
        Err(HttpError::WaitTooLong { wait_secs, .. }) => assert_eq!(wait_secs, 3600),
        other => panic!("expected WaitTooLong, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));
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
