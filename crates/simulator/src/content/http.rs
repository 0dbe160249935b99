//! HTTP surface: `GET {API_PATH}/content?query=..&page=N` and
//! `PUT {API_PATH}/content/{id}/import`, with JSON error bodies and
//! injected faults (on the listing only).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{Value, json};

use super::query::Query;
use super::{ContentSim, ImportMode, Report, lock};
use crate::Fault;
use crate::faults;
use crate::text;

/// Path prefix of the Contentor API (the connector's `endpoint`).
pub const API_PATH: &str = "/contentor/v1";

/// Routes of the simulated Contentor API.
pub fn router(sim: ContentSim) -> Router {
    Router::new()
        .route(&format!("{API_PATH}/content"), get(list))
        .route(&format!("{API_PATH}/content/{{id}}/import"), put(import))
        .with_state(sim)
}

/// `{"status": N, "error": "<reason>", "message": "..."}`.
fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "status": status.as_u16(),
        "error": status.canonical_reason().unwrap_or("Error"),
        "message": message,
    });
    (status, axum::Json(body)).into_response()
}

/// Applies `fault` the way Contentor would fail: `Some(response)` replaces
/// the normal answer, `None` lets the request be served (maybe later).
async fn apply_fault(fault: &Fault) -> Option<Response> {
    match fault {
        Fault::Http500 => Some(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "An unexpected error occurred",
        )),
        Fault::RateLimit403 => Some(error(StatusCode::FORBIDDEN, "Rate limit exceeded")),
        Fault::GraphqlError { message, .. } => Some(error(StatusCode::BAD_REQUEST, message)),
        Fault::MalformedJson => Some(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"requests":[{"id":184301,"batchId":20417,"type":"transl"#,
            )
                .into_response(),
        ),
        // 429 (with RateLimit-* and Retry-After), 503, Slow, Pass.
        other => faults::apply(other).await,
    }
}

fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default()
}

fn forbidden() -> Response {
    error(StatusCode::FORBIDDEN, "Invalid or missing access token")
}

/// `GET /contentor/v1/content?query=<JSON>&page=N`.
async fn list(
    State(sim): State<ContentSim>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Some(fault) = sim.begin_request()
        && let Some(response) = apply_fault(&fault).await
    {
        return response;
    }
    if !sim.authorized(bearer(&headers)) {
        return forbidden();
    }
    let (mut query, mut page) = (None, None);
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "query" => query = Some(v.into_owned()),
            "page" => page = Some(v.into_owned()),
            _ => {}
        }
    }
    let query = match query.as_deref().map(Query::parse) {
        None => Query::default(),
        Some(Ok(q)) => q,
        Some(Err(message)) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let page = match page.as_deref().map(str::parse::<usize>) {
        None => 1,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => return error(StatusCode::BAD_REQUEST, "page must be a positive integer"),
    };
    let (requests, total, pages) = sim.store().list(&query, page, sim.page_size());
    text::json_response(StatusCode::OK, page_body(&requests, total, pages, page))
}

/// `{"page", "pages", "requests", "total"}` around requests already
/// encoded: the bytes `axum::Json(json!({...}))` of the same values sends.
pub(super) fn page_body(requests: &[Arc<str>], total: usize, pages: usize, page: usize) -> String {
    text::object(vec![
        ("requests", text::array(requests)),
        ("total", total.to_string()),
        ("pages", pages.to_string()),
        ("page", page.to_string()),
    ])
}

/// A valid import-state body: (`importState`, `message`).
fn parse_import(body: &[u8]) -> Result<(String, Option<String>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let state = match v.get("importState").and_then(Value::as_str) {
        Some(s @ ("success" | "fail")) => s.to_string(),
        _ => return Err("importState must be \"success\" or \"fail\"".into()),
    };
    let message = match v.get("message") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Err("message must be a string".into()),
    };
    Ok((state, message))
}

/// The import mode to answer with, once it is not [`ImportMode::Hang`];
/// `None` when the server shuts down first.
async fn wait_for_answer(sim: &ContentSim) -> Option<ImportMode> {
    let mut rx = sim.shared.import_mode.subscribe();
    loop {
        let mode = *rx.borrow_and_update();
        if mode != ImportMode::Hang {
            return Some(mode);
        }
        tokio::select! {
            changed = rx.changed() => changed.ok()?,
            () = sim.shared.closing.cancelled() => return None,
        }
    }
}

/// `PUT /contentor/v1/content/{id}/import`.
async fn import(
    State(sim): State<ContentSim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.shared.attempts.fetch_add(1, Ordering::SeqCst);
    if !sim.authorized(bearer(&headers)) {
        return forbidden();
    }
    let not_found = || {
        error(
            StatusCode::NOT_FOUND,
            &format!("No content request with id {id}"),
        )
    };
    let Ok(id_number) = id.parse::<i64>() else {
        return not_found();
    };
    if sim.store().get(id_number).is_none() {
        return not_found();
    }
    let (import_state, message) = match parse_import(&body) {
        Ok(v) => v,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    match wait_for_answer(&sim).await {
        None => error(StatusCode::SERVICE_UNAVAILABLE, "Shutting down"),
        Some(ImportMode::Fail) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Could not update the import state",
        ),
        Some(_) => {
            let completed = sim
                .store()
                .get(id_number)
                .and_then(|r| r.completed_ms)
                .map(super::store::format_ms);
            lock(&sim.shared.reports).push(Report {
                id: id_number,
                import_state: import_state.clone(),
                message,
                completed,
            });
            axum::Json(json!({ "id": id_number, "importState": import_state })).into_response()
        }
    }
}
