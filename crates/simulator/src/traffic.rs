//! What the simulated upstreams receive, seen from the server side: request
//! rate and requests in flight on the one listener that serves all three
//! APIs. All of them share one scheme, host and port, so this is exactly
//! what a real upstream host would see of synchro's per-host budget.
//!
//! The rate is measured over a *sliding* window: the largest number of
//! requests that arrived within any one second, `(t - 1 s, t]` for every
//! arrival `t`. That is stricter than fixed, clock-aligned windows (which can
//! split a burst in two), so a client that respects N requests per second is
//! seen at N, plus whatever arrival jitter (scheduling, the network) moved
//! across the window's edge. Requests to the control API (`/_sim/...`) are
//! not upstream traffic and are not counted.
//!
//! Listings are also counted per source (a démarche, a calendar, a
//! Contentor account): how many listing requests of one source were being
//! answered at the same time. A client that never runs two syncs of one
//! source at once never has two in flight; two runs that overlap do, as
//! soon as their pages take any time to answer.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::time::Instant;

/// The length of the rate window.
const WINDOW: Duration = Duration::from_secs(1);

/// Traffic counters of one simulator. Cheap to clone, shared.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Arrivals within the last [`WINDOW`].
    recent: Mutex<VecDeque<Instant>>,
    total: AtomicU64,
    max_per_second: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// Per source: listing requests in flight now, and the most at once.
    listings: Mutex<BTreeMap<String, (u64, u64)>>,
}

/// Counts a listing request of one source as in flight until dropped.
struct Listing(Arc<Inner>, String);

impl Drop for Listing {
    fn drop(&mut self) {
        let mut listings = self
            .0
            .listings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((now, _)) = listings.get_mut(&self.1) {
            *now = now.saturating_sub(1);
        }
    }
}

/// Counts a request as in flight until dropped (also when the client goes
/// away and the handler is dropped half-way).
struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Traffic {
    /// Records one arrival; the returned guard keeps it in flight.
    fn arrive(&self) -> InFlight {
        let now = Instant::now();
        let inner = &self.inner;
        inner.total.fetch_add(1, Ordering::SeqCst);
        let in_window = {
            let mut recent = inner
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            while recent.front().is_some_and(|t| *t + WINDOW <= now) {
                recent.pop_front();
            }
            recent.push_back(now);
            recent.len() as u64
        };
        inner.max_per_second.fetch_max(in_window, Ordering::SeqCst);
        let flying = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        inner.max_in_flight.fetch_max(flying, Ordering::SeqCst);
        InFlight(inner.clone())
    }

    /// Records a listing request of `source`; the guard keeps it in flight.
    fn listing(&self, source: String) -> Listing {
        let mut listings = self
            .inner
            .listings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (now, max) = listings.entry(source.clone()).or_default();
        *now += 1;
        *max = (*max).max(*now);
        Listing(self.inner.clone(), source)
    }

    /// The most listing requests of one source answered at the same time,
    /// per source (`demarche 42`, `calendar team@example.com`, `content
    /// <account>`): above 1, two syncs of that source overlapped.
    pub fn concurrent_listings(&self) -> BTreeMap<String, u64> {
        self.inner
            .listings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, (_, max))| (k.clone(), *max))
            .collect()
    }

    /// Upstream requests received so far.
    pub fn total(&self) -> u64 {
        self.inner.total.load(Ordering::SeqCst)
    }

    /// The most requests received within any one second.
    pub fn max_requests_per_second(&self) -> u64 {
        self.inner.max_per_second.load(Ordering::SeqCst)
    }

    /// The most requests being answered at the same time.
    pub fn max_in_flight(&self) -> u64 {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    /// Requests being answered now.
    pub fn in_flight(&self) -> u64 {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Forgets the maxima and the window (not the total, nor what is in
    /// flight), to measure one phase of a test on its own.
    pub fn reset_maxima(&self) {
        let inner = &self.inner;
        inner
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        inner.max_per_second.store(0, Ordering::SeqCst);
        inner
            .max_in_flight
            .store(inner.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// axum middleware over the whole simulator: counts every upstream request.
pub(super) async fn count(State(traffic): State<Traffic>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/_sim/") {
        return next.run(req).await;
    }
    let _in_flight = traffic.arrive();
    let (req, source) = listed_source(req).await;
    let _listing = source.map(|s| traffic.listing(s));
    next.run(req).await
}

/// The largest request body read to find the source it lists (GraphQL
/// queries are a few KB).
const MAX_PEEK: usize = 1 << 20;

/// The source a listing request lists, if it is one: a démarche's GraphQL
/// query (by its number), a calendar's events, a Contentor account's
/// content list (by its token). The body read to find out is put back.
async fn listed_source(req: Request) -> (Request, Option<String>) {
    let path = req.uri().path().to_string();
    if req.method() == axum::http::Method::GET {
        if let Some(calendar) = path
            .strip_prefix("/calendar/v3/calendars/")
            .and_then(|p| p.strip_suffix("/events"))
        {
            return (req, Some(format!("calendar {calendar}")));
        }
        if path.ends_with("/content") {
            let account = req
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            return (req, Some(format!("content {account}")));
        }
        return (req, None);
    }
    if req.method() != axum::http::Method::POST || !path.ends_with("/graphql") {
        return (req, None);
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_PEEK).await else {
        return (Request::from_parts(parts, axum::body::Body::empty()), None);
    };
    let demarche = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.pointer("/variables/demarcheNumber")
                .and_then(|n| n.as_i64())
        });
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
    (req, demarche.map(|n| format!("demarche {n}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_is_the_most_arrivals_within_any_second() {
        let t = Traffic::default();
        // 5 arrivals 100 ms apart, then a pause, then 3 at once.
        for _ in 0..5 {
            drop(t.arrive());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(t.max_requests_per_second(), 5);
        tokio::time::sleep(Duration::from_secs(2)).await;
        for _ in 0..3 {
            drop(t.arrive());
        }
        assert_eq!(t.max_requests_per_second(), 5);
        assert_eq!(t.total(), 8);
        // A window that straddles two clock seconds still counts as one:
        // 4 at x.9 s and 4 at (x+1).1 s are 8 within one second.
        tokio::time::sleep(Duration::from_millis(2900)).await;
        for _ in 0..4 {
            drop(t.arrive());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..4 {
            drop(t.arrive());
        }
        assert_eq!(t.max_requests_per_second(), 8);
        // Exactly one second apart is two windows.
        t.reset_maxima();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(t.arrive());
        tokio::time::sleep(WINDOW).await;
        drop(t.arrive());
        assert_eq!(t.max_requests_per_second(), 1);
    }

    #[tokio::test]
    async fn in_flight_is_counted_until_the_guard_drops() {
        let t = Traffic::default();
        let a = t.arrive();
        let b = t.arrive();
        assert_eq!((t.in_flight(), t.max_in_flight()), (2, 2));
        drop(a);
        let c = t.arrive();
        assert_eq!((t.in_flight(), t.max_in_flight()), (2, 2));
        drop((b, c));
        assert_eq!((t.in_flight(), t.max_in_flight()), (0, 2));
        t.reset_maxima();
        assert_eq!(t.max_in_flight(), 0);
    }

    #[tokio::test]
    async fn the_simulator_counts_upstream_requests_but_not_its_control_api() {
        let sim = crate::Simulator::start(([127, 0, 0, 1], 0).into())
            .await
            .unwrap();
        let http = reqwest::Client::new();
        for _ in 0..3 {
            let r = http
                .get(format!("{}/content", sim.content_endpoint()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403);
        }
        let r = http
            .post(sim.ds_endpoint())
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let report: serde_json::Value = http
            .get(format!("http://{}/_sim/traffic", sim.addr()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(report["requests"], 4);
        assert_eq!(sim.traffic().total(), 4);
        // All 4 within one second unless the machine stalls; never more.
        assert!((1..=4).contains(&sim.max_requests_per_second()));
        assert_eq!(sim.max_in_flight(), 1);
        assert_eq!(sim.traffic().in_flight(), 0);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn listings_of_one_source_answered_at_once_are_counted_per_source() {
        let sim = crate::Simulator::start(([127, 0, 0, 1], 0).into())
            .await
            .unwrap();
        sim.calendar()
            .inject(crate::Fault::Slow(Duration::from_millis(300)), 100);
        sim.content()
            .inject(crate::Fault::Slow(Duration::from_millis(300)), 100);
        let http = reqwest::Client::new();
        let get = |url: String| {
            let http = http.clone();
            async move { http.get(url).bearer_auth("tok").send().await.unwrap() }
        };
        let cal = |id: &str| format!("{}/calendars/{id}/events", sim.calendar_endpoint());
        // Two listings of calendar a at once, one of b, then one more of b
        // after it: a overlapped, b did not.
        let (_, _, _) = tokio::join!(get(cal("a")), get(cal("a")), get(cal("b")));
        get(cal("b")).await;
        get(format!("{}/content", sim.content_endpoint())).await;
        let ds = |n: i64| {
            let http = http.clone();
            let url = sim.ds_endpoint();
            async move {
                http.post(url)
                    .json(&serde_json::json!({"query": "{}", "variables": {"demarcheNumber": n}}))
                    .send()
                    .await
                    .unwrap()
            }
        };
        ds(7).await;
        let counted = sim.traffic().concurrent_listings();
        assert_eq!(counted.get("calendar a"), Some(&2), "{counted:?}");
        assert_eq!(counted.get("calendar b"), Some(&1), "{counted:?}");
        assert_eq!(counted.get("content Bearer tok"), Some(&1), "{counted:?}");
        assert_eq!(counted.get("demarche 7"), Some(&1), "{counted:?}");
        assert_eq!(
            counted.len(),
            4,
            "token and import requests are no listings"
        );
        sim.shutdown().await;
    }
}
