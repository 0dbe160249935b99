//! Simulated Contentor HTTP API v1 content requests: `GET /content?query=`
//! (criteria, sorting, 1-based pages computed on the current data) and
//! `PUT /content/{id}/import` (import-state reports), plus the handle tests
//! use to drive them and to play webhook deliveries.
//!
//! Criteria types: `source`, `state`, `type`, `language` (a string or a list
//! of strings) and the date ranges `lastStateChange`, `created`, `completed`
//! (`from`/`to`, `fromInclusive` default false, `toInclusive` default true);
//! sort keys: `lastStateChange`, `created`, `completed`, `id` (`:desc`).
//!
//! Not simulated: test tokens seeing a separate data set, other criteria.

mod generate;
mod http;
mod query;
mod store;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::faults::{Fault, FaultQueue};
use store::Store;

pub use http::{API_PATH, router};

/// Bearer token accepted by the simulated Contentor API.
pub const DEFAULT_CONTENT_TOKEN: &str = "sim-contentor-token";

/// Default number of requests per page.
const DEFAULT_PAGE_SIZE: usize = 20;

/// How the simulator answers `PUT /content/{id}/import`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImportMode {
    /// 200, and the report is recorded.
    #[default]
    Ok,
    /// 500, nothing recorded (the attempt is counted).
    Fail,
    /// No answer until the mode changes (then answered per the new mode) or
    /// the client gives up.
    Hang,
}

/// One import-state report received and answered 200.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Content request id.
    pub id: i64,
    /// `importState` as sent (`success` or `fail`).
    pub import_state: String,
    /// `message` as sent.
    pub message: Option<String>,
    /// The request's `completed` value when the report arrived.
    pub completed: Option<String>,
}

/// State shared by the HTTP handlers and every [`ContentSim`] handle.
struct Shared {
    store: Mutex<Store>,
    faults: Mutex<FaultQueue>,
    tokens: Mutex<HashSet<String>>,
    reports: Mutex<Vec<Report>>,
    import_mode: watch::Sender<ImportMode>,
    closing: CancellationToken,
    requests: AtomicU64,
    attempts: AtomicU64,
    page_size: AtomicUsize,
    client: OnceLock<reqwest::Client>,
}

/// Cheap, cloneable handle on the simulated Contentor API.
#[derive(Clone)]
pub struct ContentSim {
    shared: Arc<Shared>,
}

impl Default for ContentSim {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock is still usable: every mutation leaves its data
    // consistent before it can panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ContentSim {
    /// No request yet; accepts [`DEFAULT_CONTENT_TOKEN`], pages of 20,
    /// import reports answered 200.
    pub fn new() -> Self {
        let (import_mode, _) = watch::channel(ImportMode::Ok);
        ContentSim {
            shared: Arc::new(Shared {
                store: Mutex::new(Store::new()),
                faults: Mutex::new(FaultQueue::default()),
                tokens: Mutex::new(HashSet::from([DEFAULT_CONTENT_TOKEN.to_string()])),
                reports: Mutex::new(Vec::new()),
                import_mode,
                closing: CancellationToken::new(),
                requests: AtomicU64::new(0),
                attempts: AtomicU64::new(0),
                page_size: AtomicUsize::new(DEFAULT_PAGE_SIZE),
                client: OnceLock::new(),
            }),
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.shared.store)
    }

    /// Adds `n` requests of source `api` (plus about 5 % of source `web`,
    /// not returned), in batches of `batch` sharing one `lastStateChange`
    /// instant, later than every instant issued before; states are mixed.
    /// Returns the ids of the `api` requests.
    pub fn seed(&self, n: usize, batch: usize) -> Vec<i64> {
        self.store().seed(n, batch)
    }

    /// Moves a request to `state` (any to any) at a new instant, strictly
    /// later than every instant issued before. To `completed`: `completed`
    /// is that instant and the fields get (new) values. Unknown ids are ignored.
    pub fn set_state(&self, id: i64, state: &str) {
        self.store().set_state(&[id], state);
    }

    /// Like [`ContentSim::set_state`] for every id, all at one shared instant.
    pub fn set_state_batch(&self, ids: &[i64], state: &str) {
        self.store().set_state(ids, state);
    }

    /// Replaces `import_response` without touching `lastStateChange`.
    pub fn set_import_response(&self, id: i64, value: Value) {
        self.store().set_import_response(id, value);
    }

    /// From now on the request's `fields` is served as a JSON string (its
    /// array, encoded) instead of an array; state and `lastStateChange`
    /// are unchanged. Permanent.
    pub fn corrupt(&self, id: i64) {
        self.store().corrupt(id);
    }

    /// The request as the API returns it now.
    pub fn request(&self, id: i64) -> Option<Value> {
        self.store().get(id).map(store::ContentRequest::to_json)
    }

    /// Every request of source `api` as the API returns it now, by id.
    pub fn api_requests(&self) -> Vec<Value> {
        self.store().api_requests()
    }

    /// Every import-state report answered 200, in arrival order.
    pub fn reports(&self) -> Vec<Report> {
        lock(&self.shared.reports).clone()
    }

    /// Number of `PUT /content/{id}/import` requests received, whatever
    /// the answer.
    pub fn report_attempts(&self) -> u64 {
        self.shared.attempts.load(Ordering::SeqCst)
    }

    /// How the next import-state reports (and those hanging) are answered.
    pub fn set_import_mode(&self, mode: ImportMode) {
        self.shared.import_mode.send_replace(mode);
    }

    /// Requests per page (default 20; 0 counts as 1).
    pub fn set_page_size(&self, n: usize) {
        self.shared.page_size.store(n.max(1), Ordering::SeqCst);
    }

    /// Accepts `token` as a bearer token too.
    pub fn add_token(&self, token: &str) {
        lock(&self.shared.tokens).insert(token.to_string());
    }

    /// The next `times` `GET /content` requests get `fault` (after those
    /// already queued).
    pub fn inject(&self, fault: Fault, times: usize) {
        lock(&self.shared.faults).push(fault, times);
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Number of `GET /content` requests received, all included.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// The callback body Contentor sends for the request's current version:
    /// `{"type":"content-request","request":{...}}` (`null` if unknown).
    pub fn webhook_body(&self, id: i64) -> Value {
        json!({ "type": "content-request", "request": self.request(id) })
    }

    /// `PUT`s `body` to `url` with `Authorization: Bearer <token>`, as
    /// Contentor delivers a callback; returns the HTTP status (0 when no
    /// answer came within 10 s).
    pub async fn deliver(&self, url: &str, token: &str, body: &Value) -> u16 {
        let client = self.shared.client.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default()
        });
        match client.put(url).bearer_auth(token).json(body).send().await {
            Ok(resp) => resp.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Releases every hanging import-state report (answered 503) and makes
    /// the next ones fail at once: the server is shutting down.
    pub(crate) fn close(&self) {
        self.shared.closing.cancel();
    }

    /// Counts one `GET /content` request and returns the fault it gets, if any.
    fn begin_request(&self) -> Option<Fault> {
        self.shared.requests.fetch_add(1, Ordering::SeqCst);
        lock(&self.shared.faults).next()
    }

    /// Whether `token` (a bearer token) is accepted.
    fn authorized(&self, token: &str) -> bool {
        lock(&self.shared.tokens).contains(token)
    }

    fn page_size(&self) -> usize {
        self.shared.page_size.load(Ordering::SeqCst).max(1)
    }
}
