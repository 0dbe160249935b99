//! Tests of the simulated Google Calendar, over real HTTP.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{
    DEFAULT_CALENDAR_TOKEN, DEFAULT_OAUTH_CLIENT_ID, DEFAULT_OAUTH_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
};
use crate::{Fault, Simulator};

const CAL: &str = "team@example.com";

async fn start() -> Simulator {
    match Simulator::start("127.0.0.1:0".parse().unwrap()).await {
        Ok(sim) => sim,
        Err(e) => panic!("cannot start simulator: {e}"),
    }
}

fn events_url(sim: &Simulator, calendar_id: &str) -> String {
    let mut url = url::Url::parse(&sim.calendar_endpoint()).unwrap();
    url.path_segments_mut()
        .unwrap()
        .extend(["calendars", calendar_id, "events"]);
    url.to_string()
}

/// Raw `events.list`: (status, headers, body).
async fn get_raw(
    sim: &Simulator,
    calendar_id: &str,
    token: Option<&str>,
    params: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new()
        .get(events_url(sim, calendar_id))
        .query(params);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

/// `events.list` with the default token: (status, JSON body).
async fn get(sim: &Simulator, calendar_id: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let (status, _, text) = get_raw(sim, calendar_id, Some(DEFAULT_CALENDAR_TOKEN), params).await;
    (status, serde_json::from_str(&text).unwrap())
}

/// One listing followed to its end: (items, pages, empty pages, nextSyncToken).
/// Asserts that only the last page carries `nextSyncToken`.
async fn list_all(
    sim: &Simulator,
    calendar_id: &str,
    params: &[(&str, &str)],
) -> (Vec<Value>, usize, usize, String) {
    let mut items = Vec::new();
    let mut page_token: Option<String> = None;
    let (mut pages, mut empty) = (0, 0);
    loop {
        let mut p = params.to_vec();
        if let Some(t) = &page_token {
            p.push(("pageToken", t));
        }
        let (status, v) = get(sim, calendar_id, &p).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["kind"], "calendar#events");
        pages += 1;
        let page = v["items"].as_array().unwrap();
        if page.is_empty() {
            empty += 1;
        }
        items.extend(page.iter().cloned());
        match (v["nextPageToken"].as_str(), v["nextSyncToken"].as_str()) {
            (Some(next), None) => page_token = Some(next.to_string()),
            (None, Some(sync)) => return (items, pages, empty, sync.to_string()),
            _ => panic!("a page needs exactly one of nextPageToken/nextSyncToken: {v}"),
        }
        assert!(pages < 10_000, "listing does not end");
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

fn by_id(items: &[Value]) -> HashMap<String, Value> {
    items
        .iter()
        .map(|e| (e["id"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

fn error_reason(v: &Value) -> (&str, i64) {
    (
        v["error"]["errors"][0]["reason"].as_str().unwrap_or(""),
        v["error"]["code"].as_i64().unwrap_or(0),
    )
}

#[tokio::test]
async fn full_listing_covers_every_live_event_once() {
    let sim = start().await;
    let cal = sim.calendar();
    let seeded = cal.seed(CAL, 3000);
    assert_eq!(seeded.len(), 3000);
    assert_eq!(seeded.iter().collect::<HashSet<_>>().len(), 3000);
    for id in &seeded[..20] {
        cal.cancel(CAL, id);
    }
    cal.set_empty_pages(4);
    let (items, pages, empty, sync) = list_all(&sim, CAL, &[("maxResults", "250")]).await;
    assert!(!sync.is_empty());
    assert!(empty >= 3, "{empty} empty pages out of {pages}");
    assert!(items.iter().all(|e| e["status"] != "cancelled"));
    let listed = ids(&items);
    assert_eq!(listed.len(), 2980);
    assert_eq!(
        listed.iter().collect::<HashSet<_>>().len(),
        2980,
        "duplicates"
    );
    assert_eq!(items, cal.live_events(CAL), "listing == live_events");
    assert_eq!(cal.cancelled_ids(CAL), seeded[..20].to_vec());

    // Realistic events.
    let e = &items[0];
    for key in [
        "kind",
        "etag",
        "id",
        "status",
        "htmlLink",
        "created",
        "updated",
        "summary",
        "start",
        "end",
        "iCalUID",
        "sequence",
        "creator",
        "organizer",
        "reminders",
        "eventType",
    ] {
        assert!(e.get(key).is_some(), "{key} missing in {e}");
    }
    assert_eq!(e["kind"], "calendar#event");
    assert_eq!(e["eventType"], "default");
    assert_eq!(e["reminders"], json!({ "useDefault": true }));
    let etag = e["etag"].as_str().unwrap();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let updated = e["updated"].as_str().unwrap();
    assert!(updated.ends_with('Z') && updated.len() == 24, "{updated}");
    assert!(
        e["id"]
            .as_str()
            .unwrap()
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='v').contains(&c))
    );
    let recurring = items
        .iter()
        .filter(|e| e.get("recurrence").is_some())
        .count();
    assert!((150..=450).contains(&recurring), "{recurring} recurring");
    assert!(items.iter().any(|e| e["start"].get("date").is_some()));
    assert!(items.iter().any(|e| e.get("attendees").is_some()));
    assert!(
        items
            .iter()
            .filter_map(|e| e["start"]["dateTime"].as_str())
            .all(|d| crate::time::parse_us(d).is_some())
    );
    // A single page when it fits, and the default page size is 250.
    cal.set_empty_pages(0);
    let (status, v) = get(&sim, CAL, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(v["items"].as_array().unwrap().len(), 250);
    assert!(v.get("nextSyncToken").is_none());
    let (status, v) = get(&sim, CAL, &[("maxResults", "99999")]).await;
    assert_eq!(status, 200);
    assert_eq!(v["items"].as_array().unwrap().len(), 2500, "capped");
    sim.shutdown().await;
}

#[tokio::test]
async fn incremental_sync_reports_exactly_the_changes() {
    let sim = start().await;
    let cal = sim.calendar();
    let seeded = cal.seed(CAL, 50);
    let (_, _, _, sync) = list_all(&sim, CAL, &[]).await;

    let created = cal.create(CAL);
    cal.update(CAL, &seeded[1]);
    cal.cancel(CAL, &seeded[2]);
    let (items, _, _, sync2) = list_all(&sim, CAL, &[("syncToken", &sync)]).await;
    let got = by_id(&items);
    assert_eq!(got.len(), 3, "{items:?}");
    let live = by_id(&cal.live_events(CAL));
    assert_eq!(got[&created], live[&created]);
    assert_eq!(got[&seeded[1]], live[&seeded[1]]);
    assert_eq!(got[&seeded[1]]["sequence"], 1);
    let stub = &got[&seeded[2]];
    assert_eq!(stub["status"], "cancelled");
    let keys: HashSet<&str> = stub
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, HashSet::from(["kind", "etag", "id", "status"]));

    // Nothing new: an empty page with a new token.
    let (status, v) = get(&sim, CAL, &[("syncToken", &sync2)]).await;
    assert_eq!(status, 200);
    assert_eq!(v["items"], json!([]));
    let sync3 = v["nextSyncToken"].as_str().unwrap().to_string();

    // A silent purge is never reported; an older token still works (and
    // reports the cancellation again, deletions being idempotent).
    cal.purge_silently(CAL, &seeded[3]);
    let (items, _, _, _) = list_all(&sim, CAL, &[("syncToken", &sync3)]).await;
    assert!(items.is_empty(), "{items:?}");
    assert!(!ids(&cal.live_events(CAL)).contains(&seeded[3]));
    assert!(!cal.cancelled_ids(CAL).contains(&seeded[3]));
    let (items, _, _, _) = list_all(&sim, CAL, &[("syncToken", &sync)]).await;
    assert_eq!(ids(&items).len(), 3);

    // Update then cancel: one entry, the stub. Cancelled events stay out of
    // full listings unless showDeleted=true.
    cal.update(CAL, &seeded[4]);
    cal.cancel(CAL, &seeded[4]);
    cal.update(CAL, &seeded[4]);
    let (items, _, _, _) = list_all(&sim, CAL, &[("syncToken", &sync3)]).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["status"], "cancelled");
    let (all, _, _, _) = list_all(&sim, CAL, &[]).await;
    assert!(!ids(&all).contains(&seeded[4]));
    let (all, _, _, _) = list_all(&sim, CAL, &[("showDeleted", "true")]).await;
    assert!(ids(&all).contains(&seeded[4]) && ids(&all).contains(&seeded[2]));
    sim.shutdown().await;
}

#[tokio::test]
async fn paged_incremental_keeps_the_same_sync_token() {
    let sim = start().await;
    let cal = sim.calendar();
    let seeded = cal.seed(CAL, 40);
    let (_, _, _, sync) = list_all(&sim, CAL, &[]).await;
    let (_, _, _, other_sync) = list_all(&sim, CAL, &[]).await;
    for id in &seeded[..30] {
        cal.update(CAL, id);
    }
    let (status, v) = get(&sim, CAL, &[("syncToken", &sync), ("maxResults", "10")]).await;
    assert_eq!(status, 200);
    assert_eq!(v["items"].as_array().unwrap().len(), 10);
    assert!(v.get("nextSyncToken").is_none());
    let page = v["nextPageToken"].as_str().unwrap().to_string();

    // The page token alone, or with another sync token, is refused.
    for params in [
        vec![("pageToken", page.as_str())],
        vec![
            ("pageToken", page.as_str()),
            ("syncToken", other_sync.as_str()),
        ],
        vec![
            ("pageToken", page.as_str()),
            ("syncToken", sync.as_str()),
            ("showDeleted", "true"),
        ],
    ] {
        let (status, v) = get(&sim, CAL, &params).await;
        assert_eq!(status, 400, "{params:?}: {v}");
    }

    // A change made during the paged listing is reported next time.
    cal.update(CAL, &seeded[35]);
    let mut seen = ids(v["items"].as_array().unwrap());
    let mut page = Some(page);
    let mut next_sync = None;
    while let Some(p) = page.take() {
        let (status, v) = get(
            &sim,
            CAL,
            &[
                ("syncToken", &sync),
                ("maxResults", "10"),
                ("pageToken", &p),
            ],
        )
        .await;
        assert_eq!(status, 200, "{v}");
        seen.extend(ids(v["items"].as_array().unwrap()));
        page = v["nextPageToken"].as_str().map(String::from);
        next_sync = v["nextSyncToken"].as_str().map(String::from);
        // The same page token can be reused later (client restart).
        let (status, again) = get(
            &sim,
            CAL,
            &[
                ("syncToken", &sync),
                ("maxResults", "10"),
                ("pageToken", &p),
            ],
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            ids(again["items"].as_array().unwrap()).len(),
            ids(v["items"].as_array().unwrap()).len()
        );
    }
    let mut expected = seeded[..30].to_vec();
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected);
    let (items, _, _, _) = list_all(&sim, CAL, &[("syncToken", &next_sync.unwrap())]).await;
    assert_eq!(ids(&items), vec![seeded[35].clone()]);
    sim.shutdown().await;
}

#[tokio::test]
async fn changes_during_a_full_listing_are_not_lost() {
    let sim = start().await;
    let cal = sim.calendar();
    let seeded = cal.seed(CAL, 100);
    let (status, v) = get(&sim, CAL, &[("maxResults", "10")]).await;
    assert_eq!(status, 200);
    let first_page = ids(v["items"].as_array().unwrap());
    let mut page = v["nextPageToken"].as_str().map(String::from);
    cal.update(CAL, &first_page[0]);
    cal.cancel(CAL, &first_page[1]);
    let created = cal.create(CAL);
    let mut sync = None;
    while let Some(p) = page.take() {
        let (status, v) = get(&sim, CAL, &[("maxResults", "10"), ("pageToken", &p)]).await;
        assert_eq!(status, 200);
        page = v["nextPageToken"].as_str().map(String::from);
        sync = v["nextSyncToken"].as_str().map(String::from);
    }
    let (items, _, _, _) = list_all(&sim, CAL, &[("syncToken", &sync.unwrap())]).await;
    let mut got = ids(&items);
    got.sort();
    let mut expected = vec![first_page[0].clone(), first_page[1].clone(), created];
    expected.sort();
    assert_eq!(got, expected);
    assert_eq!(seeded.len(), 100);
    sim.shutdown().await;
}

#[tokio::test]
async fn expired_and_invalid_sync_tokens() {
    let sim = start().await;
    let cal = sim.calendar();
    cal.seed(CAL, 20);
    let (_, _, _, sync) = list_all(&sim, CAL, &[]).await;
    cal.expire_sync_tokens(CAL);
    let (status, v) = get(&sim, CAL, &[("syncToken", &sync)]).await;
    assert_eq!(status, 410);
    assert_eq!(v["error"]["code"], 410);
    assert_eq!(
        v["error"]["message"],
        "Sync token is no longer valid, a full sync is required."
    );
    assert_eq!(v["error"]["errors"][0]["domain"], "calendar");
    assert_eq!(v["error"]["errors"][0]["reason"], "fullSyncRequired");
    assert_eq!(
        v["error"]["errors"][0]["message"],
        "Sync token is no longer valid, a full sync is required."
    );

    // A new full sync gives a working token.
    let (_, _, _, fresh) = list_all(&sim, CAL, &[]).await;
    let (status, _) = get(&sim, CAL, &[("syncToken", &fresh)]).await;
    assert_eq!(status, 200);

    cal.invalidate_sync_tokens(CAL);
    for token in [fresh.as_str(), "CPDAlvWDx70CEPDAlvWDx70CGAU=", "garbage"] {
        let (status, v) = get(&sim, CAL, &[("syncToken", token)]).await;
        assert_eq!(status, 400, "{token}");
        assert_eq!(v["error"]["message"], "Invalid sync token value.");
        assert_eq!(error_reason(&v), ("invalid", 400));
    }
    // A token of another calendar is not valid here.
    cal.seed("other", 1);
    let (_, _, _, other) = list_all(&sim, "other", &[]).await;
    let (status, _) = get(&sim, CAL, &[("syncToken", &other)]).await;
    assert_eq!(status, 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn filters_are_refused_with_a_sync_token() {
    let sim = start().await;
    let cal = sim.calendar();
    cal.seed(CAL, 5);
    let (_, _, _, sync) = list_all(&sim, CAL, &[]).await;
    let forbidden = [
        ("timeMin", "2024-01-01T00:00:00Z"),
        ("timeMax", "2024-01-01T00:00:00Z"),
        ("updatedMin", "2024-01-01T00:00:00Z"),
        ("q", "réunion"),
        ("orderBy", "updated"),
        ("iCalUID", "x@google.com"),
        ("privateExtendedProperty", "a=b"),
        ("sharedExtendedProperty", "a=b"),
    ];
    for (i, param) in forbidden.iter().enumerate() {
        let (status, v) = get(&sim, CAL, &[("syncToken", &sync), *param]).await;
        assert_eq!(status, 400, "{param:?}: {v}");
        assert_eq!(v["error"]["code"], 400);
        assert_eq!(cal.forbidden_param_requests(), i as u64 + 1);
    }
    // Fine without a sync token; showDeleted/singleEvents are fine with one.
    let (status, _) = get(&sim, CAL, &[("timeMin", "2024-01-01T00:00:00Z")]).await;
    assert_eq!(status, 200);
    let params = [
        ("syncToken", sync.as_str()),
        ("showDeleted", "true"),
        ("singleEvents", "false"),
    ];
    let (status, _) = get(&sim, CAL, &params).await;
    assert_eq!(status, 200);
    assert_eq!(cal.forbidden_param_requests(), 8);
    sim.shutdown().await;
}

#[tokio::test]
async fn time_window_and_page_token_binding() {
    let sim = start().await;
    let cal = sim.calendar();
    cal.seed(CAL, 400);
    let now = chrono::Utc::now();
    let min = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let max = (now + chrono::Duration::days(20)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let params = [("timeMin", min.as_str()), ("timeMax", max.as_str())];
    let (items, _, _, _) = list_all(&sim, CAL, &params).await;
    let all = cal.live_events(CAL);
    assert!(
        !items.is_empty() && items.len() < all.len(),
        "{}",
        items.len()
    );
    let (lo, hi) = (
        crate::time::parse_us(&min).unwrap(),
        crate::time::parse_us(&max).unwrap(),
    );
    for e in items.iter().filter(|e| e.get("recurrence").is_none()) {
        if let Some(start) = e["start"]["dateTime"].as_str() {
            assert!(crate::time::parse_us(start).unwrap() < hi, "{e}");
            let end = crate::time::parse_us(e["end"]["dateTime"].as_str().unwrap()).unwrap();
            assert!(end > lo, "{e}");
        }
    }
    let (status, v) = get(&sim, CAL, &[("timeMin", &max), ("timeMax", &min)]).await;
    assert_eq!((status, error_reason(&v)), (400, ("timeRangeEmpty", 400)));
    let (status, _) = get(&sim, CAL, &[("timeMin", "yesterday")]).await;
    assert_eq!(status, 400);
    let (status, _) = get(&sim, CAL, &[("maxResults", "0")]).await;
    assert_eq!(status, 400);

    // A page token only goes with the query that made it.
    let (_, v) = get(&sim, CAL, &[("maxResults", "10")]).await;
    let page = v["nextPageToken"].as_str().unwrap();
    let (status, _) = get(&sim, CAL, &[("pageToken", page), ("showDeleted", "true")]).await;
    assert_eq!(status, 400);
    let (status, v) = get(&sim, "other@example.com", &[("pageToken", page)]).await;
    assert_eq!((status, error_reason(&v)), (404, ("notFound", 404)));
    cal.create("other@example.com");
    let (status, _) = get(&sim, "other@example.com", &[("pageToken", page)]).await;
    assert_eq!(status, 400);
    let (status, _) = get(&sim, CAL, &[("pageToken", "nonsense")]).await;
    assert_eq!(status, 400);
    let (status, v) = get(&sim, CAL, &[("pageToken", page)]).await;
    assert_eq!(status, 200, "{v}");
    sim.shutdown().await;
}

#[tokio::test]
async fn cancelled_instances_are_listed_even_without_show_deleted() {
    let sim = start().await;
    let cal = sim.calendar();
    cal.seed(CAL, 200);
    let (_, _, _, sync) = list_all(&sim, CAL, &[]).await;
    let recurring = cal
        .live_events(CAL)
        .into_iter()
        .find(|e| e.get("recurrence").is_some())
        .unwrap();
    let base = recurring["id"].as_str().unwrap();
    let instance = cal.cancel_instance(CAL, base);
    let suffix = instance.strip_prefix(&format!("{base}_")).unwrap();
    assert_eq!(suffix.len(), 16, "{instance}");
    assert!(suffix.ends_with('Z') && suffix.as_bytes()[8] == b'T');
    let second = cal.cancel_instance(CAL, base);
    assert_ne!(second, instance);
    let plain = cal
        .live_events(CAL)
        .into_iter()
        .find(|e| e.get("recurrence").is_none())
        .unwrap();
    let plain = plain["id"].as_str().unwrap().to_string();
    assert_eq!(cal.cancel_instance(CAL, &plain), "", "not recurring");
    assert_eq!(cal.cancel_instance(CAL, "unknown"), "");
    cal.cancel(CAL, &plain);

    let (items, _, _, _) = list_all(&sim, CAL, &[("showDeleted", "false")]).await;
    let got = by_id(&items);
    assert!(!got.contains_key(&plain));
    let e = &got[&instance];
    assert_eq!(e["status"], "cancelled");
    assert_eq!(e["recurringEventId"], base);
    assert!(e["originalStartTime"]["dateTime"].is_string());
    assert_eq!(got[base]["status"], "confirmed");

    let (items, _, _, _) = list_all(&sim, CAL, &[("syncToken", &sync)]).await;
    let mut changed = ids(&items);
    changed.sort();
    let mut expected = vec![instance.clone(), second.clone(), plain.clone()];
    expected.sort();
    assert_eq!(changed, expected);
    let cancelled: HashSet<String> = cal.cancelled_ids(CAL).into_iter().collect();
    assert_eq!(cancelled, expected.into_iter().collect());
    sim.shutdown().await;
}

async fn grant(sim: &Simulator, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(sim.oauth_token_url())
        .form(form)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn refresh_form(refresh_token: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("grant_type", "refresh_token"),
        ("client_id", DEFAULT_OAUTH_CLIENT_ID),
        ("client_secret", DEFAULT_OAUTH_CLIENT_SECRET),
        ("refresh_token", refresh_token),
    ]
}

#[tokio::test]
async fn oauth_refresh_grants_and_access_tokens() {
    let sim = start().await;
    let cal = sim.calendar();
    cal.seed(CAL, 3);
    let (status, v) = grant(&sim, &refresh_form(DEFAULT_REFRESH_TOKEN)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
    assert!(v["scope"].is_string());
    let access = v["access_token"].as_str().unwrap().to_string();
    let (status, _, _) = get_raw(&sim, CAL, Some(&access), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(cal.token_grants(), 1);

    // Client credentials in HTTP Basic work too.
    let resp = reqwest::Client::new()
        .post(sim.oauth_token_url())
        .basic_auth(DEFAULT_OAUTH_CLIENT_ID, Some(DEFAULT_OAUTH_CLIENT_SECRET))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", DEFAULT_REFRESH_TOKEN),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(cal.token_grants(), 2);

    // Errors, Google style.
    let mut bad_secret = refresh_form(DEFAULT_REFRESH_TOKEN);
    bad_secret[2].1 = "wrong";
    let (status, v) = grant(&sim, &bad_secret).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    let mut bad_client = refresh_form(DEFAULT_REFRESH_TOKEN);
    bad_client[1].1 = "nobody";
    let (status, v) = grant(&sim, &bad_client).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    let (status, v) = grant(&sim, &refresh_form("unknown")).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    let mut code = refresh_form(DEFAULT_REFRESH_TOKEN);
    code[0].1 = "authorization_code";
    let (status, v) = grant(&sim, &code).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    assert_eq!(cal.token_grants(), 2);

    // Added and revoked refresh tokens.
    cal.add_refresh_token("rt-2");
    let (status, v) = grant(&sim, &refresh_form("rt-2")).await;
    assert_eq!(status, 200);
    let access2 = v["access_token"].as_str().unwrap().to_string();
    cal.revoke_refresh_token("rt-2");
    let (status, v) = grant(&sim, &refresh_form("rt-2")).await;
    assert_eq!(status, 400);
    assert_eq!(
        v,
        json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
    );
    let (status, _, _) = get_raw(&sim, CAL, Some(&access2), &[]).await;
    assert_eq!(status, 401);
    let (status, _, _) = get_raw(&sim, CAL, Some(&access), &[]).await;
    assert_eq!(status, 200);

    // TTL: a token past its lifetime is refused.
    cal.set_access_token_ttl(Duration::ZERO);
    let (status, v) = grant(&sim, &refresh_form(DEFAULT_REFRESH_TOKEN)).await;
    assert_eq!((status, v["expires_in"].as_u64()), (200, Some(0)));
    let short = v["access_token"].as_str().unwrap().to_string();
    let (status, _, _) = get_raw(&sim, CAL, Some(&short), &[]).await;
    assert_eq!(status, 401);
    cal.set_access_token_ttl(Duration::from_secs(60));
    let (_, v) = grant(&sim, &refresh_form(DEFAULT_REFRESH_TOKEN)).await;
    assert_eq!(v["expires_in"], 60);

    // Expire everything: granted tokens fail, the static one does not.
    cal.expire_access_tokens();
    let (status, _, _) = get_raw(&sim, CAL, Some(&access), &[]).await;
    assert_eq!(status, 401);
    let (status, _, _) = get_raw(&sim, CAL, Some(DEFAULT_CALENDAR_TOKEN), &[]).await;
    assert_eq!(status, 200);
    let (_, v) = grant(&sim, &refresh_form(DEFAULT_REFRESH_TOKEN)).await;
    let renewed = v["access_token"].as_str().unwrap().to_string();
    let (status, _, _) = get_raw(&sim, CAL, Some(&renewed), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(cal.token_grants(), 6);
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_credentials_and_unknown_calendars() {
    let sim = start().await;
    let cal = sim.calendar();
    cal.seed(CAL, 3);
    for token in [None, Some("nope")] {
        let (status, headers, text) = get_raw(&sim, CAL, token, &[]).await;
        assert_eq!(status, 401);
        assert!(headers.contains_key("www-authenticate"));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
        assert_eq!(v["error"]["errors"][0]["reason"], "authError");
        assert_eq!(v["error"]["errors"][0]["location"], "Authorization");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Request had invalid authentication credentials.")
        );
    }
    // The calendar id is URL-decoded.
    let url = format!(
        "{}/calendars/team%40example.com/events",
        sim.calendar_endpoint()
    );
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(DEFAULT_CALENDAR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, v) = get(&sim, "missing@example.com", &[]).await;
    assert_eq!((status, error_reason(&v)), (404, ("notFound", 404)));
    assert_eq!(cal.requests(), 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn faults_are_served_google_style() {
    let sim = start().await;
    let cal = sim.calendar();
    cal.seed(CAL, 3);
    cal.inject(Fault::Pass, 1);
    cal.inject(Fault::Http500, 1);
    cal.inject(Fault::RateLimit403, 1);
    cal.inject(
        Fault::Http429 {
            retry_after_secs: Some(3),
        },
        1,
    );
    cal.inject(
        Fault::Http503 {
            retry_after_secs: None,
        },
        1,
    );
    cal.inject(Fault::MalformedJson, 1);
    cal.inject(
        Fault::GraphqlError {
            message: "Bad things".into(),
            code: "badRequest".into(),
        },
        1,
    );
    cal.inject(Fault::Slow(Duration::from_millis(200)), 1);

    let (status, _) = get(&sim, CAL, &[]).await;
    assert_eq!(status, 200);
    let (status, v) = get(&sim, CAL, &[]).await;
    assert_eq!((status, error_reason(&v)), (500, ("backendError", 500)));
    let (status, v) = get(&sim, CAL, &[]).await;
    assert_eq!(
        (status, error_reason(&v)),
        (403, ("rateLimitExceeded", 403))
    );
    assert_eq!(v["error"]["errors"][0]["domain"], "usageLimits");
    let (status, headers, text) = get_raw(&sim, CAL, Some(DEFAULT_CALENDAR_TOKEN), &[]).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "3");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error_reason(&v), ("rateLimitExceeded", 429));
    let (status, headers, _) = get_raw(&sim, CAL, Some(DEFAULT_CALENDAR_TOKEN), &[]).await;
    assert_eq!(status, 503);
    assert!(!headers.contains_key("retry-after"));
    let (status, _, text) = get_raw(&sim, CAL, Some(DEFAULT_CALENDAR_TOKEN), &[]).await;
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&text).is_err());
    let (status, v) = get(&sim, CAL, &[]).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["message"], "Bad things");
    let t0 = Instant::now();
    let (status, _) = get(&sim, CAL, &[]).await;
    assert_eq!(status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(200));
    let (status, _) = get(&sim, CAL, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(cal.requests(), 9);
    assert_eq!(sim.ds().requests(), 0, "separate from the DS endpoint");

    cal.inject(Fault::Http500, 5);
    cal.clear_faults();
    let (status, _) = get(&sim, CAL, &[]).await;
    assert_eq!(status, 200);
    // Faults come before authentication, as on a real front end.
    cal.inject(Fault::Http500, 1);
    let (status, _, _) = get_raw(&sim, CAL, None, &[]).await;
    assert_eq!(status, 500);
    sim.shutdown().await;
}

/// Pages are served from each event's cached text: after every kind of
/// change the text is the event's current rendering, and a response body
/// is the bytes serialising the equivalent `Value` gives.
#[test]
fn cached_texts_follow_changes_and_bodies_match_the_values() {
    use super::http::envelope;
    use super::store::{Filter, Store};

    let mut store = Store::new();
    let ids = store.seed(CAL, 40);
    let all = Filter {
        show_deleted: true,
        ..Filter::default()
    };
    // Rendered before the changes, so that a stale cache would show.
    let (before, _) = store.full_page(CAL, all, 0, 100);
    assert_eq!(before.len(), 40);
    store.update(CAL, &ids[1]);
    store.update(CAL, &ids[1]);
    store.cancel(CAL, &ids[2]);
    let recurring = ids
        .iter()
        .find(|id| store.calendars[CAL].events[*id].recurrence.is_some())
        .cloned();
    if let Some(r) = recurring {
        assert!(!store.cancel_instance(CAL, &r).is_empty());
    }
    let created = store.create(CAL);
    for (id, e) in &store.calendars[CAL].events {
        assert_eq!(&*e.text(CAL), e.render(CAL).to_string(), "event {id}");
    }
    let (full, next) = store.full_page(CAL, all, 0, 25);
    let (changes, _) = store.changes_page(CAL, 30, store.seq(), 250);
    assert!(changes.len() >= 3, "the changes are listed");
    assert!(changes.iter().any(|t| t.contains(&created)));
    for (items, next_page, next_sync) in [
        (full, next.map(|n| n.to_string()), None),
        (changes, None, Some("sync-token".to_string())),
    ] {
        let values: Vec<Value> = items
            .iter()
            .map(|t| serde_json::from_str(t).expect("valid JSON"))
            .collect();
        let updated = store.calendar_updated(CAL);
        let mut expected = json!({
            "kind": "calendar#events",
            "etag": format!("\"p3{:x}\"", super::tokens::fnv(&updated)),
            "summary": CAL,
            "description": "",
            "updated": updated,
            "timeZone": super::store::time_zone(),
            "accessRole": "owner",
            "defaultReminders": [],
        });
        if let Some(t) = &next_page {
            expected["nextPageToken"] = json!(t);
        }
        if let Some(t) = &next_sync {
            expected["nextSyncToken"] = json!(t);
        }
        expected["items"] = Value::Array(values);
        let body = envelope(&store, CAL, items, next_page, next_sync);
        assert_eq!(body, expected.to_string());
    }
}
