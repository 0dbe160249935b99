//! The simulated content requests and the mutations tests drive. Every
//! state change takes an instant from a store-wide clock that never goes
//! back and never repeats (ms precision), except that a batch shares one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::generate;
use super::query::Query;
use crate::text::Cached;

/// A request in this state has `completed` set and field values.
pub const COMPLETED: &str = "completed";
/// Source of the requests the client syncs.
pub const API: &str = "api";
/// Source of the requests the client's criteria exclude.
pub const WEB: &str = "web";

const DAY_MS: i64 = 86_400_000;

/// One translatable or writable field of a request.
#[derive(Clone, Debug)]
pub struct Field {
    /// Field name (`title`, `body`...).
    pub name: &'static str,
    /// The customer's text.
    pub original: String,
    /// The delivered text, once completed.
    pub value: Option<String>,
}

/// One content request.
#[derive(Clone, Debug)]
pub struct ContentRequest {
    /// Request id.
    pub id: i64,
    /// Id of the batch it was ordered in.
    pub batch_id: i64,
    /// `translation`, `copywriting`...
    pub kind: &'static str,
    /// `api` or `web`.
    pub source: &'static str,
    /// `pending`, `confirmed`, `completed`, `canceled`, `failed` (or any).
    pub state: String,
    /// Creation, ms.
    pub created_ms: i64,
    /// Latest completion, ms (kept only while completed).
    pub completed_ms: Option<i64>,
    /// Latest state change, ms.
    pub last_state_change_ms: i64,
    /// Target language.
    pub language: &'static str,
    /// The fields.
    pub fields: Vec<Field>,
    /// Number of completions so far.
    pub completions: u32,
    /// Free-form import response.
    pub import_response: Value,
    /// Whether `fields` is served as a string (see `ContentSim::corrupt`).
    pub corrupt: bool,
    /// [`ContentRequest::to_json`] as text, cleared by every change.
    pub rendered: Cached,
}

/// Formats ms since the epoch as RFC 3339 UTC with ms (`...T10:15:42.123Z`).
pub fn format_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(d) => d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => "1970-01-01T00:00:00.000Z".to_string(),
    }
}

impl ContentRequest {
    /// The request as the API returns it.
    pub fn to_json(&self) -> Value {
        let fields: Vec<Value> = self
            .fields
            .iter()
            .map(|f| json!({ "name": f.name, "originalValue": f.original, "value": f.value }))
            .collect();
        let fields = if self.corrupt {
            Value::String(Value::Array(fields).to_string())
        } else {
            Value::Array(fields)
        };
        json!({
            "id": self.id,
            "batchId": self.batch_id,
            "type": self.kind,
            "source": self.source,
            "state": self.state,
            "created": format_ms(self.created_ms),
            "completed": self.completed_ms.map(format_ms),
            "lastStateChange": format_ms(self.last_state_change_ms),
            "language": self.language,
            "fields": fields,
            "import_response": self.import_response,
        })
    }

    /// [`ContentRequest::to_json`] as JSON text, rendered once per version.
    pub fn text(&self) -> Arc<str> {
        self.rendered.get_or_render(|| self.to_json())
    }
}

/// Every request, by id, and the clock.
pub struct Store {
    requests: BTreeMap<i64, ContentRequest>,
    next_id: i64,
    next_batch: i64,
    last_ms: i64,
    rng: StdRng,
    /// For each set of criteria listed since the last change: the matching
    /// requests as (`lastStateChange` µs, id), in listing order. Paging a
    /// large data set stays O(log n) a page instead of a scan and a sort.
    by_change: HashMap<String, Vec<(i64, i64)>>,
}

impl Store {
    /// No request.
    pub fn new() -> Self {
        Store {
            requests: BTreeMap::new(),
            next_id: 184_301,
            next_batch: 20_417,
            last_ms: 0,
            rng: StdRng::seed_from_u64(0x00c0_7e07),
            by_change: HashMap::new(),
        }
    }

    /// A new instant: now, or 1 ms after the latest one issued.
    fn tick(&mut self) -> i64 {
        let now = chrono::Utc::now().timestamp_millis();
        self.last_ms = now.max(self.last_ms + 1);
        self.last_ms
    }

    /// See `ContentSim::seed`: batches spread over the last 30 days (after
    /// every instant issued so far), or 1 ms apart from now when there is
    /// no room left.
    pub fn seed(&mut self, n: usize, batch: usize) -> Vec<i64> {
        let batch = batch.max(1);
        let batches = n.div_ceil(batch) as i64;
        let now = chrono::Utc::now().timestamp_millis();
        let start = (self.last_ms + 1).max(now - 30 * DAY_MS);
        let step = if batches > 0 && now - start >= batches {
            (now - start) / batches
        } else {
            0
        };
        let mut ids = Vec::with_capacity(n);
        for (b, chunk_start) in (0..n).step_by(batch).enumerate() {
            let at = if step > 0 {
                let at = start + b as i64 * step + self.rng.random_range(0..step);
                self.last_ms = self.last_ms.max(at);
                at
            } else {
                self.tick()
            };
            let batch_id = self.next_batch;
            self.next_batch += 1;
            for i in chunk_start..(chunk_start + batch).min(n) {
                if i % 20 == 0 {
                    self.add(batch_id, WEB, at);
                }
                ids.push(self.add(batch_id, API, at));
            }
        }
        ids
    }

    fn add(&mut self, batch_id: i64, source: &'static str, at: i64) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        let request = generate::request(&mut self.rng, id, batch_id, source, at);
        // Rendered now, so that serving it is a copy.
        request.text();
        self.requests.insert(id, request);
        self.by_change.clear();
        id
    }

    /// Moves every known id to `state` at one new instant.
    pub fn set_state(&mut self, ids: &[i64], state: &str) {
        self.by_change.clear();
        let at = self.tick();
        for id in ids {
            let Some(r) = self.requests.get_mut(id) else {
                continue;
            };
            r.rendered.clear();
            r.state = state.to_string();
            r.last_state_change_ms = at;
            if state == COMPLETED {
                r.completed_ms = Some(at);
                r.completions += 1;
                generate::fill_values(r);
            } else {
                r.completed_ms = None;
            }
        }
    }

    /// Replaces `import_response`; `lastStateChange` is unchanged.
    pub fn set_import_response(&mut self, id: i64, value: Value) {
        if let Some(r) = self.requests.get_mut(&id) {
            r.rendered.clear();
            r.import_response = value;
        }
    }

    /// Serves `fields` as a string from now on.
    pub fn corrupt(&mut self, id: i64) {
        if let Some(r) = self.requests.get_mut(&id) {
            r.rendered.clear();
            r.corrupt = true;
        }
    }

    /// One request.
    pub fn get(&self, id: i64) -> Option<&ContentRequest> {
        self.requests.get(&id)
    }

    /// Every `api` request as served, by id.
    pub fn api_requests(&self) -> Vec<Value> {
        self.requests
            .values()
            .filter(|r| r.source == API)
            .map(ContentRequest::to_json)
            .collect()
    }

    /// Page `page` (1-based) of the requests matching `query`, in its
    /// order, as JSON text: (requests, total, pages).
    pub fn list(
        &mut self,
        query: &Query,
        page: usize,
        page_size: usize,
    ) -> (Vec<Arc<str>>, usize, usize) {
        let skip = page.saturating_sub(1).saturating_mul(page_size);
        let Some((from, rest)) = query.change_window() else {
            return self.scan(query, skip, page_size);
        };
        let requests = &self.requests;
        let index = self
            .by_change
            .entry(rest.criteria_key())
            .or_insert_with(|| {
                let mut index: Vec<(i64, i64)> = requests
                    .values()
                    .filter(|r| rest.matches(r))
                    .map(|r| (r.last_state_change_ms * 1000, r.id))
                    .collect();
                index.sort_unstable();
                index
            });
        let start = match from {
            None => 0,
            Some((at, true)) => index.partition_point(|&(t, _)| t < at),
            Some((at, false)) => index.partition_point(|&(t, _)| t <= at),
        };
        let total = index.len() - start;
        let items = index[start..]
            .iter()
            .skip(skip)
            .take(page_size)
            .filter_map(|(_, id)| requests.get(id).map(ContentRequest::text))
            .collect();
        (items, total, total.div_ceil(page_size))
    }

    /// Any other query: filter and sort everything.
    pub(super) fn scan(
        &self,
        query: &Query,
        skip: usize,
        page_size: usize,
    ) -> (Vec<Arc<str>>, usize, usize) {
        let mut matching: Vec<&ContentRequest> = self
            .requests
            .values()
            .filter(|r| query.matches(r))
            .collect();
        // The map yields ids in ascending order and the sort is stable, so
        // ties stay in id order.
        matching.sort_by(|a, b| query.compare(a, b));
        let total = matching.len();
        let pages = total.div_ceil(page_size);
        let items = matching
            .iter()
            .skip(skip)
            .take(page_size)
            .map(|r| r.text())
            .collect();
        (items, total, pages)
    }
}
