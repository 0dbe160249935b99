//! The control API under `/_sim/`, to drive a running `synchro simulate` from
//! outside (curl, scripts): seed, modify, delete, inject faults.
//!
//! - `POST /_sim/ds/demarches/{d}/seed?n=N` → `{"numbers": [...]}`
//! - `POST /_sim/ds/demarches/{d}/dossiers` → `{"number": n}`
//! - `GET  /_sim/ds/demarches/{d}` → `{"live": [...], "deleted": [...]}`
//! - `POST /_sim/ds/dossiers/{n}/{update|hide|restore|purge}` (`purge?backdate_secs=S`)
//! - `POST /_sim/ds/faults?kind=K&times=T` with K one of `http500`, `http429`,
//!   `http503`, `rate_limit_403`, `slow` (`ms=`), `malformed_json`,
//!   `graphql_error` (`code=`, `message=`), `pass`; `retry_after_secs=` for 429/503;
//!   `http429_raw` sends `ratelimit_reset=` (and `retry_after=` if given) verbatim
//! - `DELETE /_sim/ds/faults`, `GET /_sim/ds/requests`
//!
//! Google Calendar (`{c}` is the URL-encoded calendar id):
//! - `POST /_sim/calendar/calendars/{c}/seed?n=N` → `{"ids": [...]}`
//! - `POST /_sim/calendar/calendars/{c}/events` → `{"id": "..."}`
//! - `GET  /_sim/calendar/calendars/{c}` → `{"live": [ids], "cancelled": [ids]}`
//! - `POST /_sim/calendar/calendars/{c}/events/{id}/{update|cancel|cancel_instance|purge_silently}`
//!   (`cancel_instance` → `{"id": "..."}`)
//! - `POST /_sim/calendar/calendars/{c}/{expire_sync_tokens|invalidate_sync_tokens}`
//! - `POST /_sim/calendar/faults?kind=K&times=T` (same kinds as above),
//!   `DELETE /_sim/calendar/faults`, `GET /_sim/calendar/requests`
//!
//! Contentor content requests:
//! - `POST /_sim/content/seed?n=N&batch=B` → `{"ids": [...]}`
//! - `GET  /_sim/content/requests/{id}` → the request as the API returns it
//! - `POST /_sim/content/requests/{id}/state?state=S` (any state; `completed` completes it)
//! - `POST /_sim/content/import_mode?mode=ok|fail|hang`
//! - `GET  /_sim/content/reports` → `{"reports": [{id, importState, message, completed}], "attempts": N}`
//! - `POST /_sim/content/faults?kind=K&times=T` (same kinds as above),
//!   `DELETE /_sim/content/faults`, `GET /_sim/content/requests`

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::{CalSim, ContentSim, DsSim, Fault, ImportMode};

/// Routes of the control API.
pub fn router() -> Router<DsSim> {
    Router::new()
        .route("/_sim/ds/demarches/{d}", get(numbers))
        .route("/_sim/ds/demarches/{d}/seed", post(seed))
        .route("/_sim/ds/demarches/{d}/dossiers", post(create))
        .route("/_sim/ds/dossiers/{n}/{action}", post(mutate))
        .merge(fault_routes("ds"))
}

type Params = Query<HashMap<String, String>>;

/// The knobs every simulated API has: a fault queue and a request counter.
trait Knobs: Clone + Send + Sync + 'static {
    fn inject(&self, fault: Fault, times: usize);
    fn clear_faults(&self);
    fn requests(&self) -> u64;
}

macro_rules! knobs {
    ($($t:ty),*) => {$(
        impl Knobs for $t {
            fn inject(&self, fault: Fault, times: usize) {
                <$t>::inject(self, fault, times)
            }
            fn clear_faults(&self) {
                <$t>::clear_faults(self)
            }
            fn requests(&self) -> u64 {
                <$t>::requests(self)
            }
        }
    )*};
}
knobs!(DsSim, CalSim, ContentSim);

/// `/_sim/{api}/faults` (POST to inject, DELETE to clear) and
/// `/_sim/{api}/requests`, the same for every simulated API.
fn fault_routes<S: Knobs>(api: &str) -> Router<S> {
    Router::new()
        .route(
            &format!("/_sim/{api}/faults"),
            post(inject::<S>).delete(clear::<S>),
        )
        .route(&format!("/_sim/{api}/requests"), get(requests::<S>))
}

async fn inject<S: Knobs>(State(sim): State<S>, Query(q): Params) -> Response {
    let Some(fault) = parse_fault(&q) else {
        return (StatusCode::BAD_REQUEST, "unknown fault kind").into_response();
    };
    sim.inject(fault, param(&q, "times").unwrap_or(1));
    StatusCode::NO_CONTENT.into_response()
}

async fn clear<S: Knobs>(State(sim): State<S>) -> Response {
    sim.clear_faults();
    StatusCode::NO_CONTENT.into_response()
}

async fn requests<S: Knobs>(State(sim): State<S>) -> Response {
    axum::Json(json!({ "requests": sim.requests() })).into_response()
}

fn param<T: std::str::FromStr>(q: &HashMap<String, String>, name: &str) -> Option<T> {
    q.get(name).and_then(|v| v.parse().ok())
}

async fn numbers(State(ds): State<DsSim>, Path(d): Path<i64>) -> Response {
    axum::Json(json!({ "live": ds.live_numbers(d), "deleted": ds.deleted_numbers(d) }))
        .into_response()
}

async fn seed(State(ds): State<DsSim>, Path(d): Path<i64>, Query(q): Params) -> Response {
    let n = param(&q, "n").unwrap_or(100);
    axum::Json(json!({ "numbers": ds.seed(d, n) })).into_response()
}

async fn create(State(ds): State<DsSim>, Path(d): Path<i64>) -> Response {
    axum::Json(json!({ "number": ds.create(d) })).into_response()
}

async fn mutate(
    State(ds): State<DsSim>,
    Path((n, action)): Path<(i64, String)>,
    Query(q): Params,
) -> Response {
    match action.as_str() {
        "update" => ds.update(n),
        "hide" => ds.hide(n),
        "restore" => ds.restore(n),
        "purge" => ds.purge(n, param(&q, "backdate_secs").map(Duration::from_secs)),
        _ => return (StatusCode::NOT_FOUND, "unknown action").into_response(),
    }
    StatusCode::NO_CONTENT.into_response()
}

/// The fault described by `kind=` and its parameters.
fn parse_fault(q: &HashMap<String, String>) -> Option<Fault> {
    let retry_after_secs = param(q, "retry_after_secs");
    Some(match q.get("kind").map(String::as_str) {
        Some("http500") => Fault::Http500,
        Some("http429") => Fault::Http429 { retry_after_secs },
        Some("http503") => Fault::Http503 { retry_after_secs },
        Some("http429_raw") => Fault::Http429Raw {
            ratelimit_reset: q.get("ratelimit_reset").cloned().unwrap_or_default(),
            retry_after: q.get("retry_after").cloned(),
        },
        Some("slow") => Fault::Slow(Duration::from_millis(param(q, "ms").unwrap_or(1000))),
        Some("malformed_json") => Fault::MalformedJson,
        Some("rate_limit_403") => Fault::RateLimit403,
        Some("graphql_error") => Fault::GraphqlError {
            message: q
                .get("message")
                .cloned()
                .unwrap_or_else(|| "Timeout".into()),
            code: q.get("code").cloned().unwrap_or_else(|| "timeout".into()),
        },
        Some("pass") => Fault::Pass,
        _ => return None,
    })
}

/// Routes of the calendar part of the control API.
pub fn calendar_router() -> Router<CalSim> {
    Router::new()
        .route("/_sim/calendar/calendars/{c}", get(cal_ids))
        .route("/_sim/calendar/calendars/{c}/seed", post(cal_seed))
        .route("/_sim/calendar/calendars/{c}/events", post(cal_create))
        .route("/_sim/calendar/calendars/{c}/{action}", post(cal_tokens))
        .route(
            "/_sim/calendar/calendars/{c}/events/{id}/{action}",
            post(cal_mutate),
        )
        .merge(fault_routes("calendar"))
}

async fn cal_ids(State(cal): State<CalSim>, Path(c): Path<String>) -> Response {
    let live: Vec<serde_json::Value> = cal
        .live_events(&c)
        .into_iter()
        .map(|e| e["id"].clone())
        .collect();
    axum::Json(json!({ "live": live, "cancelled": cal.cancelled_ids(&c) })).into_response()
}

async fn cal_seed(State(cal): State<CalSim>, Path(c): Path<String>, Query(q): Params) -> Response {
    let n = param(&q, "n").unwrap_or(100);
    axum::Json(json!({ "ids": cal.seed(&c, n) })).into_response()
}

async fn cal_create(State(cal): State<CalSim>, Path(c): Path<String>) -> Response {
    axum::Json(json!({ "id": cal.create(&c) })).into_response()
}

async fn cal_tokens(
    State(cal): State<CalSim>,
    Path((c, action)): Path<(String, String)>,
) -> Response {
    match action.as_str() {
        "expire_sync_tokens" => cal.expire_sync_tokens(&c),
        "invalidate_sync_tokens" => cal.invalidate_sync_tokens(&c),
        _ => return (StatusCode::NOT_FOUND, "unknown action").into_response(),
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn cal_mutate(
    State(cal): State<CalSim>,
    Path((c, id, action)): Path<(String, String, String)>,
) -> Response {
    match action.as_str() {
        "update" => cal.update(&c, &id),
        "cancel" => cal.cancel(&c, &id),
        "purge_silently" => cal.purge_silently(&c, &id),
        "cancel_instance" => {
            return axum::Json(json!({ "id": cal.cancel_instance(&c, &id) })).into_response();
        }
        _ => return (StatusCode::NOT_FOUND, "unknown action").into_response(),
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Routes of the Contentor part of the control API.
pub fn content_router() -> Router<ContentSim> {
    Router::new()
        .route("/_sim/content/seed", post(content_seed))
        .route("/_sim/content/requests/{id}", get(content_request))
        .route("/_sim/content/requests/{id}/state", post(content_state))
        .route("/_sim/content/import_mode", post(content_import_mode))
        .route("/_sim/content/reports", get(content_reports))
        .merge(fault_routes("content"))
}

async fn content_seed(State(content): State<ContentSim>, Query(q): Params) -> Response {
    let n = param(&q, "n").unwrap_or(100);
    let batch = param(&q, "batch").unwrap_or(10);
    axum::Json(json!({ "ids": content.seed(n, batch) })).into_response()
}

async fn content_request(State(content): State<ContentSim>, Path(id): Path<i64>) -> Response {
    match content.request(id) {
        Some(r) => axum::Json(r).into_response(),
        None => (StatusCode::NOT_FOUND, "unknown request").into_response(),
    }
}

async fn content_state(
    State(content): State<ContentSim>,
    Path(id): Path<i64>,
    Query(q): Params,
) -> Response {
    let Some(state) = q.get("state") else {
        return (StatusCode::BAD_REQUEST, "state= is required").into_response();
    };
    if content.request(id).is_none() {
        return (StatusCode::NOT_FOUND, "unknown request").into_response();
    }
    content.set_state(id, state);
    StatusCode::NO_CONTENT.into_response()
}

async fn content_import_mode(State(content): State<ContentSim>, Query(q): Params) -> Response {
    let mode = match q.get("mode").map(String::as_str) {
        Some("ok") => ImportMode::Ok,
        Some("fail") => ImportMode::Fail,
        Some("hang") => ImportMode::Hang,
        _ => return (StatusCode::BAD_REQUEST, "mode must be ok, fail or hang").into_response(),
    };
    content.set_import_mode(mode);
    StatusCode::NO_CONTENT.into_response()
}

async fn content_reports(State(content): State<ContentSim>) -> Response {
    let reports: Vec<serde_json::Value> = content
        .reports()
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "importState": r.import_state,
                "message": r.message,
                "completed": r.completed,
            })
        })
        .collect();
    axum::Json(json!({ "reports": reports, "attempts": content.report_attempts() })).into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use crate::{DEFAULT_DS_TOKEN, Simulator};

    #[tokio::test]
    async fn drives_the_simulator_over_http() {
        let sim = Simulator::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let base = format!("http://{}/_sim/ds", sim.addr());
        let http = reqwest::Client::new();
        let v: Value = http
            .post(format!("{base}/demarches/77/seed?n=5"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let seeded: Vec<i64> = serde_json::from_value(v["numbers"].clone()).unwrap();
        assert_eq!(seeded.len(), 5);
        let hide = http
            .post(format!("{base}/dossiers/{}/hide", seeded[0]))
            .send()
            .await
            .unwrap();
        assert_eq!(hide.status(), 204);
        assert_eq!(sim.ds().deleted_numbers(77), vec![seeded[0]]);
        let v: Value = http
            .get(format!("{base}/demarches/77"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["live"].as_array().unwrap().len(), 4);
        let r = http
            .post(format!(
                "{base}/faults?kind=http503&times=1&retry_after_secs=2"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let r = http
            .post(sim.ds_endpoint())
            .bearer_auth(DEFAULT_DS_TOKEN)
            .body(r#"{"query":"{ demarche(number: 77) { number } }"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(sim.ds().requests(), 1, "control calls are not counted");
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn drives_the_calendar_over_http() {
        let sim = Simulator::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let base = format!("http://{}/_sim/calendar", sim.addr());
        let http = reqwest::Client::new();
        let v: Value = http
            .post(format!("{base}/calendars/team%40example.com/seed?n=4"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<String> = serde_json::from_value(v["ids"].clone()).unwrap();
        assert_eq!(ids.len(), 4);
        let r = http
            .post(format!(
                "{base}/calendars/team%40example.com/events/{}/cancel",
                ids[0]
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(
            sim.calendar().cancelled_ids("team@example.com"),
            vec![ids[0].clone()]
        );
        let v: Value = http
            .get(format!("{base}/calendars/team%40example.com"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["live"].as_array().unwrap().len(), 3);
        let r = http
            .post(format!("{base}/faults?kind=rate_limit_403&times=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let r = http
            .get(format!(
                "{}/calendars/team%40example.com/events",
                sim.calendar_endpoint()
            ))
            .bearer_auth(crate::DEFAULT_CALENDAR_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(
            sim.calendar().requests(),
            1,
            "control calls are not counted"
        );
        assert_eq!(sim.ds().requests(), 0);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn drives_the_content_simulator_over_http() {
        let sim = Simulator::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let base = format!("http://{}/_sim/content", sim.addr());
        let http = reqwest::Client::new();
        let v: Value = http
            .post(format!("{base}/seed?n=4&batch=2"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<i64> = serde_json::from_value(v["ids"].clone()).unwrap();
        assert_eq!(ids.len(), 4);
        assert_eq!(sim.content().api_requests().len(), 4);
        let r = http
            .post(format!("{base}/requests/{}/state?state=completed", ids[1]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let v: Value = http
            .get(format!("{base}/requests/{}", ids[1]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["state"], "completed");
        let r = http
            .post(format!("{base}/import_mode?mode=fail"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let r = http
            .put(format!(
                "{}/content/{}/import",
                sim.content_endpoint(),
                ids[1]
            ))
            .bearer_auth(crate::DEFAULT_CONTENT_TOKEN)
            .json(&serde_json::json!({ "importState": "success" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        let v: Value = http
            .get(format!("{base}/reports"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v, serde_json::json!({ "reports": [], "attempts": 1 }));
        let r = http
            .post(format!("{base}/faults?kind=http503&times=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let r = http
            .get(format!("{}/content", sim.content_endpoint()))
            .bearer_auth(crate::DEFAULT_CONTENT_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let v: Value = http
            .get(format!("{base}/requests"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["requests"], 1, "control calls are not counted");
        sim.shutdown().await;
    }
}
