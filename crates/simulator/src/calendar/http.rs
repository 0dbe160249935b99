//! HTTP surface: `GET {API_PATH}/calendars/{calendarId}/events` and
//! `POST {TOKEN_PATH}`, with Google's error bodies and injected faults.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::store::{Filter, Store, SyncTokenError, time_zone};
use super::tokens::{Token, fnv};
use super::{CalSim, oauth};
use crate::Fault;
use crate::text;

/// Path prefix of the Calendar API (the connector's `endpoint`).
pub const API_PATH: &str = "/calendar/v3";
/// Path of the OAuth2 token endpoint.
pub const TOKEN_PATH: &str = "/oauth2/token";

/// Default and maximum `maxResults`.
const DEFAULT_MAX_RESULTS: usize = 250;
const MAX_RESULTS_CAP: usize = 2500;

/// Parameters that may not come with `syncToken`.
const FORBIDDEN_WITH_SYNC: &[&str] = &[
    "timeMin",
    "timeMax",
    "updatedMin",
    "q",
    "orderBy",
    "iCalUID",
    "privateExtendedProperty",
    "sharedExtendedProperty",
];

/// Routes of the simulated Calendar API and token endpoint.
pub fn router(cal: CalSim) -> Router {
    Router::new()
        .route(
            &format!("{API_PATH}/calendars/{{calendar_id}}/events"),
            get(list_events),
        )
        .route(TOKEN_PATH, post(token))
        .with_state(cal)
}

/// A Google API error: `{"error":{"code","message","errors":[...]}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    domain: &'static str,
    reason: &'static str,
    message: String,
    location: Option<(&'static str, &'static str)>,
}

impl ApiError {
    fn new(status: StatusCode, domain: &'static str, reason: &'static str, message: &str) -> Self {
        ApiError {
            status,
            domain,
            reason,
            message: message.to_string(),
            location: None,
        }
    }

    fn invalid(message: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "global", "invalid", message)
    }

    fn at(mut self, location: &'static str, location_type: &'static str) -> Self {
        self.location = Some((location, location_type));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut detail = json!({
            "domain": self.domain,
            "reason": self.reason,
            "message": self.message,
        });
        if let Some((location, location_type)) = self.location {
            detail["location"] = json!(location);
            detail["locationType"] = json!(location_type);
        }
        let mut error = json!({
            "code": self.status.as_u16(),
            "message": self.message,
            "errors": [detail],
        });
        let status = match self.status {
            StatusCode::UNAUTHORIZED => Some("UNAUTHENTICATED"),
            StatusCode::TOO_MANY_REQUESTS => Some("RESOURCE_EXHAUSTED"),
            StatusCode::FORBIDDEN => Some("PERMISSION_DENIED"),
            _ => None,
        };
        if let Some(s) = status {
            error["status"] = json!(s);
        }
        (self.status, axum::Json(json!({ "error": error }))).into_response()
    }
}

fn unauthenticated() -> Response {
    let body = json!({ "error": {
        "code": 401,
        "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        "errors": [{
            "message": "Invalid Credentials",
            "domain": "global",
            "reason": "authError",
            "location": "Authorization",
            "locationType": "header",
        }],
        "status": "UNAUTHENTICATED",
    }});
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"",
        )],
        axum::Json(body),
    )
        .into_response()
}

fn with_retry_after(mut response: Response, secs: Option<u64>) -> Response {
    if let Some(v) = secs.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// Applies `fault` the way Google would fail: `Some(response)` replaces
/// the normal answer, `None` lets the request be served (maybe later).
async fn apply_fault(fault: &Fault) -> Option<Response> {
    let rate_limit = |status| {
        ApiError::new(
            status,
            "usageLimits",
            "rateLimitExceeded",
            "Rate Limit Exceeded",
        )
    };
    match fault {
        Fault::Pass => None,
        Fault::Slow(delay) => {
            tokio::time::sleep(*delay).await;
            None
        }
        Fault::Http500 => Some(
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "global",
                "backendError",
                "Backend Error",
            )
            .into_response(),
        ),
        Fault::Http503 { retry_after_secs } => Some(with_retry_after(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "global",
                "backendError",
                "The service is currently unavailable.",
            )
            .into_response(),
            *retry_after_secs,
        )),
        Fault::Http429 { retry_after_secs } => Some(with_retry_after(
            rate_limit(StatusCode::TOO_MANY_REQUESTS).into_response(),
            *retry_after_secs,
        )),
        Fault::RateLimit403 => Some(rate_limit(StatusCode::FORBIDDEN).into_response()),
        Fault::MalformedJson => Some(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
                r#"{"kind":"calendar#events","etag":"\"p3","items":[{"kind":"calendar#ev"#,
            )
                .into_response(),
        ),
        Fault::GraphqlError { message, .. } => Some(
            ApiError::new(StatusCode::BAD_REQUEST, "global", "badRequest", message).into_response(),
        ),
        Fault::Reset | Fault::Http429Raw { .. } => crate::faults::apply(fault).await,
    }
}

/// `GET /calendar/v3/calendars/{calendarId}/events`.
async fn list_events(
    State(cal): State<CalSim>,
    Path(calendar_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Some(fault) = cal.begin_request()
        && let Some(response) = apply_fault(&fault).await
    {
        return response;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    if !cal.authorized(token) {
        return unauthenticated();
    }
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    match list(&cal, &calendar_id, &params) {
        Ok(body) => text::json_response(StatusCode::OK, body),
        Err(e) => e.into_response(),
    }
}

/// The validated query of one `events.list` request.
struct ListQuery<'a> {
    max: usize,
    filter: Filter,
    sync_token: Option<&'a str>,
    page_token: Option<&'a str>,
    params_hash: u64,
}

fn parse_bool(params: &HashMap<&str, &str>, name: &'static str) -> Result<bool, ApiError> {
    match params.get(name).copied() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(
            ApiError::invalid(&format!("Invalid boolean value: '{other}'.")).at(name, "parameter"),
        ),
    }
}

fn parse_time(params: &HashMap<&str, &str>, name: &'static str) -> Result<Option<i64>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => crate::time::parse_us(v).map(Some).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "global",
                "badRequest",
                "Bad Request",
            )
        }),
    }
}

fn parse_query<'a>(
    cal: &CalSim,
    calendar_id: &str,
    raw: &'a [(String, String)],
) -> Result<ListQuery<'a>, ApiError> {
    let params: HashMap<&str, &str> = raw.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let max = match params.get("maxResults") {
        None => DEFAULT_MAX_RESULTS,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => n.min(MAX_RESULTS_CAP),
            _ => {
                return Err(ApiError::invalid(&format!(
                    "Invalid value '{v}'. Values must be within the range: [1, 2500]"
                ))
                .at("maxResults", "parameter"));
            }
        },
    };
    let show_deleted = parse_bool(&params, "showDeleted")?;
    // Accepted and ignored: recurring events are never expanded.
    parse_bool(&params, "singleEvents")?;
    let sync_token = params.get("syncToken").copied();
    if sync_token.is_some()
        && let Some(name) = FORBIDDEN_WITH_SYNC
            .iter()
            .find(|p| params.contains_key(**p))
    {
        cal.shared
            .forbidden
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        return Err(ApiError::invalid(&format!(
            "Sync token cannot be combined with the '{name}' parameter."
        ))
        .at(name, "parameter"));
    }
    let time_min = parse_time(&params, "timeMin")?;
    let time_max = parse_time(&params, "timeMax")?;
    if let (Some(min), Some(max)) = (time_min, time_max)
        && max <= min
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "calendar",
            "timeRangeEmpty",
            "The specified time range is empty.",
        )
        .at("timeMax", "parameter"));
    }
    let mut bound: Vec<String> = raw
        .iter()
        .filter(|(k, _)| k != "pageToken" && k != "maxResults")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    bound.sort();
    bound.push(calendar_id.to_string());
    Ok(ListQuery {
        max,
        filter: Filter {
            show_deleted,
            time_min,
            time_max,
        },
        sync_token,
        page_token: params.get("pageToken").copied(),
        params_hash: fnv(&bound.join("&")),
    })
}

fn bad_page_token() -> ApiError {
    ApiError::invalid("Invalid page token value.").at("pageToken", "parameter")
}

/// Serves one page of `events.list`.
fn list(cal: &CalSim, calendar_id: &str, raw: &[(String, String)]) -> Result<String, ApiError> {
    if !cal.store().calendars.contains_key(calendar_id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "global",
            "notFound",
            "Not Found",
        ));
    }
    let q = parse_query(cal, calendar_id, raw)?;
    let cal_hash = fnv(calendar_id);
    let mut store = cal.store();
    let (items, next_page, next_sync) = match q.sync_token {
        Some(sync) => {
            let watermark = store
                .check_sync_token(calendar_id, sync)
                .map_err(|e| match e {
                    SyncTokenError::Expired => ApiError::new(
                        StatusCode::GONE,
                        "calendar",
                        "fullSyncRequired",
                        "Sync token is no longer valid, a full sync is required.",
                    ),
                    SyncTokenError::Invalid => {
                        ApiError::invalid("Invalid sync token value.").at("syncToken", "parameter")
                    }
                })?;
            let (after, upper, n) = match q.page_token {
                None => (watermark, store.seq().max(watermark), 0),
                Some(text) => match Token::decode(text) {
                    Some(Token::ChangesPage {
                        cal,
                        params,
                        upper,
                        after,
                        n,
                    }) if cal == cal_hash && params == q.params_hash => (after, upper, n),
                    _ => return Err(bad_page_token()),
                },
            };
            let page_token = |after| {
                Token::ChangesPage {
                    cal: cal_hash,
                    params: q.params_hash,
                    upper,
                    after,
                    n: n + 1,
                }
                .encode()
            };
            if cal.next_page_is_empty() {
                (Vec::new(), Some(page_token(after)), None)
            } else {
                match store.changes_page(calendar_id, after, upper, q.max) {
                    (items, Some(last)) => (items, Some(page_token(last)), None),
                    (items, None) => {
                        let sync = store.issue_sync_token(calendar_id, upper);
                        (items, None, Some(sync))
                    }
                }
            }
        }
        None => {
            let (after, snapshot, n) = match q.page_token {
                None => (0, store.seq(), 0),
                Some(text) => match Token::decode(text) {
                    Some(Token::FullPage {
                        cal,
                        params,
                        snapshot,
                        after,
                        n,
                    }) if cal == cal_hash && params == q.params_hash => (after, snapshot, n),
                    _ => return Err(bad_page_token()),
                },
            };
            let page_token = |after| {
                Token::FullPage {
                    cal: cal_hash,
                    params: q.params_hash,
                    snapshot,
                    after,
                    n: n + 1,
                }
                .encode()
            };
            if cal.next_page_is_empty() {
                (Vec::new(), Some(page_token(after)), None)
            } else {
                match store.full_page(calendar_id, q.filter, after, q.max) {
                    (items, Some(last)) => (items, Some(page_token(last)), None),
                    (items, None) => {
                        let sync = store.issue_sync_token(calendar_id, snapshot);
                        (items, None, Some(sync))
                    }
                }
            }
        }
    };
    Ok(envelope(&store, calendar_id, items, next_page, next_sync))
}

/// The `calendar#events` response around `items` (each already JSON
/// text): the bytes serialising the same response as a `Value` gives.
pub(super) fn envelope(
    store: &Store,
    calendar_id: &str,
    items: Vec<Arc<str>>,
    next_page: Option<String>,
    next_sync: Option<String>,
) -> String {
    let updated = store.calendar_updated(calendar_id);
    let mut fields = vec![
        ("kind", text::encode(&json!("calendar#events"))),
        (
            "etag",
            text::encode(&json!(format!("\"p3{:x}\"", fnv(&updated)))),
        ),
        ("summary", text::encode(&json!(calendar_id))),
        ("description", text::encode(&json!(""))),
        ("updated", text::encode(&json!(updated))),
        ("timeZone", text::encode(&json!(time_zone()))),
        ("accessRole", text::encode(&json!("owner"))),
        ("defaultReminders", "[]".to_string()),
        ("items", text::array(&items)),
    ];
    if let Some(t) = next_page {
        fields.push(("nextPageToken", text::encode(&json!(t))));
    }
    if let Some(t) = next_sync {
        fields.push(("nextSyncToken", text::encode(&json!(t))));
    }
    text::object(fields)
}

/// `POST /oauth2/token` (form-encoded refresh-token grant).
async fn token(State(cal): State<CalSim>, headers: HeaderMap, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(oauth::basic_credentials);
    let (status, body) = match cal.oauth().grant(&form, basic) {
        Ok(v) => (StatusCode::OK, v),
        Err((status, v)) => (status, v),
    };
    (
        status,
        [(
            header::CACHE_CONTROL,
            "no-cache, no-store, max-age=0, must-revalidate",
        )],
        axum::Json(body),
    )
        .into_response()
}
