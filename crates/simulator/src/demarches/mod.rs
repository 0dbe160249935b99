//! Simulated Démarches Simplifiées: the data, the GraphQL schema subset of
//! API v2, token scopes, and the handle tests use to drive it.

pub(crate) mod codec;
mod fast;
mod generate;
pub mod schema;
pub mod store;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};

use super::faults::{Fault, FaultQueue};
use schema::{DsSchema, Scope};
use store::Store;

/// The GraphQL document synchro's démarches source sends, byte for byte (a
/// copy of its `query.graphql`): [`fast`] answers its `getDemarche`
/// operation without the GraphQL engine, [`DsSim::snapshot`] lists dossiers
/// with it, and tests and the bench send it as synchro does. synchro's
/// integration test `demarches_sync::synchro_pages_take_the_simulators_fast_path`
/// fails when the two documents differ.
pub const QUERY: &str = include_str!("query.graphql");

/// Token accepted for every démarche.
pub const DEFAULT_DS_TOKEN: &str = "sim-ds-token";

/// An API token the simulator knows.
#[derive(Clone, Debug)]
struct Token {
    scope: Scope,
    expired: bool,
}

/// Why a request was refused before reaching GraphQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// Missing or unknown token: HTTP 403, code `forbidden`.
    Forbidden,
    /// Expired token: HTTP 401, code `unauthorized`.
    Expired,
}

/// State shared by the HTTP server, the schema and every [`DsSim`] handle.
pub struct Shared {
    store: Mutex<Store>,
    tokens: Mutex<HashMap<String, Token>>,
    faults: Mutex<FaultQueue>,
    requests: AtomicU64,
    /// Requests answered by [`fast`].
    fast_answers: AtomicU64,
}

impl Shared {
    /// The data, locked (a poisoned lock is still usable: every mutation
    /// leaves the store consistent before it can panic).
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tokens(&self) -> MutexGuard<'_, HashMap<String, Token>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn faults(&self) -> MutexGuard<'_, FaultQueue> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Cheap, cloneable handle on the simulated platform.
#[derive(Clone)]
pub struct DsSim {
    shared: Arc<Shared>,
    schema: DsSchema,
}

impl Default for DsSim {
    fn default() -> Self {
        Self::new()
    }
}

impl DsSim {
    /// An empty platform that accepts [`DEFAULT_DS_TOKEN`].
    pub fn new() -> Self {
        let mut tokens = HashMap::new();
        tokens.insert(
            DEFAULT_DS_TOKEN.to_string(),
            Token {
                scope: Scope::All,
                expired: false,
            },
        );
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            tokens: Mutex::new(tokens),
            faults: Mutex::new(FaultQueue::default()),
            requests: AtomicU64::new(0),
            fast_answers: AtomicU64::new(0),
        });
        let schema = schema::build(shared.clone());
        DsSim { shared, schema }
    }

    /// Creates the démarche if absent and adds `n` dossiers with distinct
    /// modification times spread over the past days; returns their numbers.
    pub fn seed(&self, demarche: i64, n: usize) -> Vec<i64> {
        self.shared.store().seed(demarche, n)
    }

    /// A new dossier, modified now; returns its number.
    pub fn create(&self, demarche: i64) -> i64 {
        self.shared.store().create(demarche)
    }

    /// Modifies a live dossier; its modification date becomes a strictly
    /// later "now". Unknown or deleted dossiers are ignored.
    pub fn update(&self, number: i64) {
        self.shared.store().update(number);
    }

    /// Hides a live dossier (administration): it leaves `dossiers` and
    /// appears in `pendingDeletedDossiers`.
    pub fn hide(&self, number: i64) {
        self.shared.store().hide(number);
    }

    /// Brings a hidden dossier back into `dossiers` with a new modification date.
    pub fn restore(&self, number: i64) {
        self.shared.store().restore(number);
    }

    /// Purges a dossier into `deletedDossiers`, its `dateSupression` set back
    /// by `backdate`.
    pub fn purge(&self, number: i64, backdate: Option<std::time::Duration>) {
        let us = backdate.map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        self.shared.store().purge(number, us);
    }

    /// Numbers of the démarche's dossiers visible in `dossiers`, ascending.
    pub fn live_numbers(&self, demarche: i64) -> Vec<i64> {
        self.shared.store().live_numbers(demarche)
    }

    /// Numbers of the démarche's hidden and purged dossiers, ascending.
    pub fn deleted_numbers(&self, demarche: i64) -> Vec<i64> {
        self.shared.store().deleted_numbers(demarche)
    }

    /// Every live dossier of the démarche exactly as the client's query
    /// (`getDemarche` of [`QUERY`]) returns it,
    /// ordered by number.
    pub async fn snapshot(&self, demarche: i64) -> Vec<Value> {
        let mut by_number: std::collections::BTreeMap<i64, Value> = Default::default();
        let mut after: Option<String> = None;
        loop {
            let variables = json!({
                "demarcheNumber": demarche,
                "first": 100,
                "after": after,
                "updatedSince": "2000-01-01T00:00:00Z",
            });
            let request = async_graphql::Request::new(QUERY)
                .operation_name("getDemarche")
                .variables(async_graphql::Variables::from_json(variables));
            let response = self.execute(request, Scope::All).await;
            if !response.errors.is_empty() {
                break;
            }
            let Ok(data) = response.data.into_json() else {
                break;
            };
            let connection = &data["demarche"]["dossiers"];
            if let Some(nodes) = connection["nodes"].as_array() {
                for node in nodes {
                    if let Some(n) = node["number"].as_i64() {
                        by_number.insert(n, node.clone());
                    }
                }
            }
            let next = connection["pageInfo"]["endCursor"]
                .as_str()
                .map(String::from);
            if connection["pageInfo"]["hasNextPage"] != Value::Bool(true) || next.is_none() {
                break;
            }
            after = next;
        }
        let live = self.live_numbers(demarche);
        by_number.retain(|n, _| live.binary_search(n).is_ok());
        by_number.into_values().collect()
    }

    /// The next `times` GraphQL HTTP requests get `fault` (after the faults
    /// already queued).
    pub fn inject(&self, fault: Fault, times: usize) {
        self.shared.faults().push(fault, times);
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        self.shared.faults().clear();
    }

    /// Number of HTTP requests received on the GraphQL endpoint, all included.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Number of those requests the fast path answered: a sync that pages
    /// with [`QUERY`] is served there after its first request.
    pub fn fast_answers(&self) -> u64 {
        self.shared.fast_answers.load(Ordering::SeqCst)
    }

    /// Accepts `token` for these démarches (`None`: all of them).
    pub fn add_token(&self, token: &str, demarches: Option<Vec<i64>>) {
        let scope = demarches.map_or(Scope::All, Scope::Only);
        self.shared.tokens().insert(
            token.to_string(),
            Token {
                scope,
                expired: false,
            },
        );
    }

    /// From now on, `token` gets HTTP 401.
    pub fn expire_token(&self, token: &str) {
        self.shared
            .tokens()
            .entry(token.to_string())
            .or_insert(Token {
                scope: Scope::All,
                expired: true,
            })
            .expired = true;
    }

    /// Counts one HTTP request and returns the fault it gets, if any.
    pub(crate) fn begin_request(&self) -> Option<Fault> {
        self.shared.requests.fetch_add(1, Ordering::SeqCst);
        self.shared.faults().next()
    }

    /// The scope of an `Authorization` header value.
    pub(crate) fn authorize(&self, authorization: Option<&str>) -> Result<Scope, AuthError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Forbidden)?;
        match self.shared.tokens().get(token) {
            None => Err(AuthError::Forbidden),
            Some(t) if t.expired => Err(AuthError::Expired),
            Some(t) => Ok(t.scope.clone()),
        }
    }

    /// The response to a GraphQL request body when the fast path for
    /// synchro's page request can give it (see `fast.rs`); `None` otherwise.
    pub(crate) fn fast_answer(&self, scope: &Scope, body: &[u8]) -> Option<String> {
        let answer = fast::answer(&self.shared, scope, body)?;
        self.shared.fast_answers.fetch_add(1, Ordering::SeqCst);
        Some(answer)
    }

    /// Executes a GraphQL request with the given token scope.
    ///
    /// async-graphql drops a failed non-null field from its parent; the
    /// platform (graphql-ruby) nulls the nearest nullable ancestor instead.
    /// In this schema that ancestor is always the root field, so a root field
    /// with an error below it becomes `null`.
    pub(crate) async fn execute(
        &self,
        request: async_graphql::Request,
        scope: Scope,
    ) -> async_graphql::Response {
        let mut response = self.schema.execute(request.data(scope)).await;
        if let async_graphql::Value::Object(map) = &mut response.data {
            for error in &response.errors {
                if error.path.len() > 1
                    && let Some(async_graphql::PathSegment::Field(root)) = error.path.first()
                    && let Some(value) = map.get_mut(root.as_str())
                {
                    *value = async_graphql::Value::Null;
                }
            }
        }
        response
    }
}
