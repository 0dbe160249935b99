//! Simulated upstreams for synchro's tests, its bench, `synchro demo` and
//! `synchro simulate`: a Démarches Simplifiées GraphQL API, a Google
//! Calendar API (with its OAuth2 token endpoint) and a Contentor
//! content-requests API, served over HTTP on one address, with controllable
//! data, tokens and injected faults (from Rust through [`DsSim`], [`CalSim`]
//! and [`ContentSim`], or over HTTP through the control API under `/_sim/`).
//!
//! It speaks the upstreams' wire formats and nothing else: it does not
//! depend on synchro (synchro depends on it for `demo` and `simulate`).

pub mod calendar;
pub mod content;
mod control;
pub mod demarches;
mod faults;
mod text;
mod time;
mod traffic;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use calendar::{
    CalSim, DEFAULT_CALENDAR_TOKEN, DEFAULT_OAUTH_CLIENT_ID, DEFAULT_OAUTH_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
};
pub use content::{ContentSim, DEFAULT_CONTENT_TOKEN, ImportMode, Report};
pub use demarches::{DEFAULT_DS_TOKEN, DsSim};
pub use faults::Fault;
pub use traffic::Traffic;

use demarches::AuthError;

/// Path of the GraphQL endpoint.
const DS_PATH: &str = "/api/v2/graphql";

/// A running simulator: an HTTP server in a background task.
pub struct Simulator {
    addr: SocketAddr,
    ds: DsSim,
    cal: CalSim,
    content: ContentSim,
    traffic: Traffic,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Simulator {
    /// Binds `addr` (port 0 picks a free port) and serves in the background.
    pub async fn start(addr: SocketAddr) -> std::io::Result<Simulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let ds = DsSim::new();
        let cal = CalSim::new();
        let content = ContentSim::new();
        let traffic = Traffic::default();
        let app = Router::new()
            .route(DS_PATH, post(graphql))
            .merge(control::router())
            .with_state(ds.clone())
            .merge(calendar::router(cal.clone()))
            .merge(control::calendar_router().with_state(cal.clone()))
            .merge(content::router(content.clone()))
            .merge(control::content_router().with_state(content.clone()))
            .merge(
                Router::new()
                    .route("/_sim/traffic", get(traffic_report))
                    .with_state(traffic.clone()),
            )
            .layer(axum::middleware::from_fn_with_state(
                traffic.clone(),
                traffic::count,
            ));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "simulator server stopped");
            }
        });
        Ok(Simulator {
            addr,
            ds,
            cal,
            content,
            traffic,
            stop: Some(stop),
            task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// URL of the Démarches Simplifiées GraphQL endpoint.
    pub fn ds_endpoint(&self) -> String {
        format!("http://{}{DS_PATH}", self.addr)
    }

    /// Handle on the simulated Démarches Simplifiées data.
    pub fn ds(&self) -> DsSim {
        self.ds.clone()
    }

    /// Base URL of the Google Calendar API (`.../calendar/v3`), the
    /// connector's `endpoint`.
    pub fn calendar_endpoint(&self) -> String {
        format!("http://{}{}", self.addr, calendar::API_PATH)
    }

    /// URL of the OAuth2 token endpoint.
    pub fn oauth_token_url(&self) -> String {
        format!("http://{}{}", self.addr, calendar::TOKEN_PATH)
    }

    /// Handle on the simulated Google Calendar.
    pub fn calendar(&self) -> CalSim {
        self.cal.clone()
    }

    /// Base URL of the Contentor API (`.../contentor/v1`), the connector's
    /// `endpoint`.
    pub fn content_endpoint(&self) -> String {
        format!("http://{}{}", self.addr, content::API_PATH)
    }

    /// Handle on the simulated Contentor content requests.
    pub fn content(&self) -> ContentSim {
        self.content.clone()
    }

    /// What this simulator's host received: request rate and requests in
    /// flight, all three APIs together (they share one host and port).
    pub fn traffic(&self) -> Traffic {
        self.traffic.clone()
    }

    /// The most upstream requests received within any one second (sliding
    /// window, all APIs together): what a per-host rate limit must bound.
    pub fn max_requests_per_second(&self) -> u64 {
        self.traffic.max_requests_per_second()
    }

    /// The most upstream requests answered at the same time (all APIs
    /// together): what a per-host concurrency cap must bound.
    pub fn max_in_flight(&self) -> u64 {
        self.traffic.max_in_flight()
    }

    /// Stops the server (waits up to 5 s for in-flight requests; hanging
    /// Contentor import reports are answered 503 at once).
    pub async fn shutdown(mut self) {
        self.content.close();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// `GET /_sim/traffic`: the counters of [`Traffic`], for `synchro simulate`
/// users (benchmarks) who cannot call Rust.
async fn traffic_report(State(traffic): State<Traffic>) -> Response {
    axum::Json(json!({
        "requests": traffic.total(),
        "max_requests_per_second": traffic.max_requests_per_second(),
        "in_flight": traffic.in_flight(),
        "max_in_flight": traffic.max_in_flight(),
    }))
    .into_response()
}

/// A platform-style error body `{"errors":[{message, extensions.code}]}`.
fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (status, axum::Json(body)).into_response()
}

/// `POST /api/v2/graphql`: faults, then authentication, then GraphQL.
async fn graphql(State(ds): State<DsSim>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(fault) = ds.begin_request()
        && let Some(response) = faults::apply(&fault).await
    {
        return response;
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let scope = match ds.authorize(authorization) {
        Ok(scope) => scope,
        Err(AuthError::Forbidden) => {
            return error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Without a token, only persisted queries are allowed",
            );
        }
        Err(AuthError::Expired) => {
            return error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Le jeton utilisé a expiré",
            );
        }
    };
    if let Some(text) = ds.fast_answer(&scope, &body) {
        return text::json_response(StatusCode::OK, text);
    }
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("invalid JSON body: {e}"),
            );
        }
    };
    let response = ds.execute(request, scope).await;
    axum::Json(response).into_response()
}
