//! Simulated Google Calendar API (`events.list` with full and incremental
//! sync) and OAuth2 token endpoint, and the handle tests use to drive them.
//!
//! Not simulated: `singleEvents=true` is accepted and ignored (recurring
//! events are never expanded into instances).

mod generate;
mod http;
mod oauth;
pub mod store;
#[cfg(test)]
mod tests;
mod tokens;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

use super::faults::{Fault, FaultQueue};
use oauth::OAuth;
use store::Store;

pub use http::{API_PATH, TOKEN_PATH, router};
pub use oauth::{DEFAULT_OAUTH_CLIENT_ID, DEFAULT_OAUTH_CLIENT_SECRET, DEFAULT_REFRESH_TOKEN};

/// Static access token accepted for every calendar (never expires).
pub const DEFAULT_CALENDAR_TOKEN: &str = "sim-calendar-token";

/// State shared by the HTTP handlers and every [`CalSim`] handle.
struct Shared {
    store: Mutex<Store>,
    oauth: Mutex<OAuth>,
    faults: Mutex<FaultQueue>,
    requests: AtomicU64,
    forbidden: AtomicU64,
    pages: AtomicU64,
    empty_every: AtomicUsize,
}

/// Cheap, cloneable handle on the simulated Google Calendar.
#[derive(Clone)]
pub struct CalSim {
    shared: Arc<Shared>,
}

impl Default for CalSim {
    fn default() -> Self {
        Self::new()
    }
}

impl CalSim {
    /// No calendar yet; accepts [`DEFAULT_CALENDAR_TOKEN`] and grants
    /// access tokens for [`DEFAULT_REFRESH_TOKEN`].
    pub fn new() -> Self {
        CalSim {
            shared: Arc::new(Shared {
                store: Mutex::new(Store::new()),
                oauth: Mutex::new(OAuth::new()),
                faults: Mutex::new(FaultQueue::default()),
                requests: AtomicU64::new(0),
                forbidden: AtomicU64::new(0),
                pages: AtomicU64::new(0),
                empty_every: AtomicUsize::new(0),
            }),
        }
    }

    /// The data, locked (a poisoned lock is still usable: every mutation
    /// leaves the store consistent before it can panic).
    fn store(&self) -> MutexGuard<'_, Store> {
        self.shared.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn oauth(&self) -> MutexGuard<'_, OAuth> {
        self.shared.oauth.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn faults(&self) -> MutexGuard<'_, FaultQueue> {
        self.shared.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the calendar if absent and adds `n` events (timed or all-day,
    /// about 10 % recurring) created over the past 90 days; returns their ids.
    pub fn seed(&self, calendar_id: &str, n: usize) -> Vec<String> {
        self.store().seed(calendar_id, n)
    }

    /// A new event, created now (the calendar is created if absent); returns its id.
    pub fn create(&self, calendar_id: &str) -> String {
        self.store().create(calendar_id)
    }

    /// Modifies a live event: new `updated`, etag and title, `sequence` + 1.
    /// Unknown or cancelled events are ignored.
    pub fn update(&self, calendar_id: &str, id: &str) {
        self.store().update(calendar_id, id);
    }

    /// Cancels a live event: status `cancelled`, reported as a stub to every
    /// sync token issued before.
    pub fn cancel(&self, calendar_id: &str, id: &str) {
        self.store().cancel(calendar_id, id);
    }

    /// Adds a cancelled exception (`{base}_{YYYYMMDDTHHMMSSZ}`, with
    /// `recurringEventId` and `originalStartTime`) for an occurrence of a
    /// live recurring event; returns its id, or an empty string when
    /// `recurring_id` is not a live recurring event or has no occurrence left.
    pub fn cancel_instance(&self, calendar_id: &str, recurring_id: &str) -> String {
        self.store().cancel_instance(calendar_id, recurring_id)
    }

    /// Removes an event without any cancellation ever being reported, as
    /// when Google drops old tombstones.
    pub fn purge_silently(&self, calendar_id: &str, id: &str) {
        self.store().purge_silently(calendar_id, id);
    }

    /// Every non-cancelled event exactly as `events.list`
    /// (`singleEvents=false`) returns it, in listing order.
    pub fn live_events(&self, calendar_id: &str) -> Vec<Value> {
        self.store().live_events(calendar_id)
    }

    /// Ids of the cancelled events and cancelled instances still known upstream.
    pub fn cancelled_ids(&self, calendar_id: &str) -> Vec<String> {
        self.store().cancelled_ids(calendar_id)
    }

    /// Every sync token issued so far for the calendar gets 410 `fullSyncRequired`.
    pub fn expire_sync_tokens(&self, calendar_id: &str) {
        self.store().expire_sync_tokens(calendar_id);
    }

    /// Every sync token issued so far for the calendar gets 400 "Invalid sync token value.".
    pub fn invalidate_sync_tokens(&self, calendar_id: &str) {
        self.store().invalidate_sync_tokens(calendar_id);
    }

    /// Every `every`-th page served is empty but carries `nextPageToken`
    /// (0: never; 1 behaves as 2 so that listings still end).
    pub fn set_empty_pages(&self, every: usize) {
        self.shared.empty_every.store(every, Ordering::SeqCst);
    }

    /// Requests rejected because `syncToken` came with a filter
    /// (`timeMin`, `timeMax`, `updatedMin`, `q`, `orderBy`, `iCalUID`,
    /// `privateExtendedProperty`, `sharedExtendedProperty`).
    pub fn forbidden_param_requests(&self) -> u64 {
        self.shared.forbidden.load(Ordering::SeqCst)
    }

    /// Number of `events.list` HTTP requests received, all included.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// The next `times` `events.list` requests get `fault` (after the faults
    /// already queued).
    pub fn inject(&self, fault: Fault, times: usize) {
        self.faults().push(fault, times);
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        self.faults().clear();
    }

    /// Accepts `refresh_token` for the default OAuth client.
    pub fn add_refresh_token(&self, refresh_token: &str) {
        self.oauth().add_refresh_token(refresh_token);
    }

    /// From now on, `refresh_token` gets `invalid_grant`, and the access
    /// tokens granted from it get 401.
    pub fn revoke_refresh_token(&self, refresh_token: &str) {
        self.oauth().revoke_refresh_token(refresh_token);
    }

    /// `expires_in` of the grants made from now on (default 3600 s); an
    /// access token used past it gets 401.
    pub fn set_access_token_ttl(&self, ttl: Duration) {
        self.oauth().set_ttl(ttl);
    }

    /// Every access token granted so far gets 401 from now on
    /// ([`DEFAULT_CALENDAR_TOKEN`] stays valid).
    pub fn expire_access_tokens(&self) {
        self.oauth().expire_access_tokens();
    }

    /// Number of successful OAuth grants.
    pub fn token_grants(&self) -> u64 {
        self.oauth().grants()
    }

    /// Counts one `events.list` request and returns the fault it gets, if any.
    fn begin_request(&self) -> Option<Fault> {
        self.shared.requests.fetch_add(1, Ordering::SeqCst);
        self.faults().next()
    }

    /// Whether the page being served must be empty (see [`CalSim::set_empty_pages`]).
    fn next_page_is_empty(&self) -> bool {
        let every = self.shared.empty_every.load(Ordering::SeqCst);
        if every == 0 {
            return false;
        }
        let n = self.shared.pages.fetch_add(1, Ordering::SeqCst) + 1;
        n.is_multiple_of(every.max(2) as u64)
    }

    /// Whether `token` (a bearer token) may read calendars.
    fn authorized(&self, token: &str) -> bool {
        token == DEFAULT_CALENDAR_TOKEN || self.oauth().is_valid(token)
    }
}
