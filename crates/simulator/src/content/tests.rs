//! Tests of the simulated Contentor API, over real HTTP.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{DEFAULT_CONTENT_TOKEN, ImportMode, Report};
use crate::{Fault, Simulator};

async fn start() -> Simulator {
    match Simulator::start("127.0.0.1:0".parse().unwrap()).await {
        Ok(sim) => sim,
        Err(e) => panic!("cannot start simulator: {e}"),
    }
}

/// Raw `GET /content`: (status, headers, body text).
async fn get_raw(
    sim: &Simulator,
    token: &str,
    params: &[(&str, String)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = reqwest::Client::new()
        .get(format!("{}/content", sim.content_endpoint()))
        .query(params)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

/// `GET /content?query=<q>&page=<page>` with the default token.
async fn get(sim: &Simulator, query: &Value, page: usize) -> (u16, Value) {
    let params = [("query", query.to_string()), ("page", page.to_string())];
    let (status, _, text) = get_raw(sim, DEFAULT_CONTENT_TOKEN, &params).await;
    (status, serde_json::from_str(&text).unwrap())
}

/// The synchro query: source api, lastStateChange from `from`, sorted.
fn since(from: &str, inclusive: Option<bool>) -> Value {
    let mut range = json!({ "from": from });
    if let Some(b) = inclusive {
        range["fromInclusive"] = json!(b);
    }
    json!({
        "criteria": [
            { "type": "source", "criteria": "api" },
            { "type": "lastStateChange", "criteria": range },
        ],
        "sortBy": ["lastStateChange"],
    })
}

fn api_only() -> Value {
    json!({ "criteria": [{ "type": "source", "criteria": "api" }], "sortBy": ["lastStateChange"] })
}

/// Every page of `query`, concatenated.
async fn list_all(sim: &Simulator, query: &Value) -> Vec<Value> {
    let mut items = Vec::new();
    for page in 1.. {
        let (status, v) = get(sim, query, page).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["page"], page);
        let batch = v["requests"].as_array().unwrap();
        if batch.is_empty() {
            assert!(page as u64 > v["pages"].as_u64().unwrap());
            break;
        }
        items.extend(batch.iter().cloned());
    }
    items
}

fn ids(items: &[Value]) -> Vec<i64> {
    items.iter().map(|r| r["id"].as_i64().unwrap()).collect()
}

fn lsc(r: &Value) -> String {
    r["lastStateChange"].as_str().unwrap().to_string()
}

fn import_url(sim: &Simulator, id: i64) -> String {
    format!("{}/content/{id}/import", sim.content_endpoint())
}

async fn put_import(sim: &Simulator, id: i64, token: &str, body: &Value) -> u16 {
    reqwest::Client::new()
        .put(import_url(sim, id))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn seed_is_batched_and_realistic() {
    let sim = start().await;
    let content = sim.content();
    let seeded = content.seed(5000, 50);
    assert_eq!(seeded.len(), 5000);
    let api = content.api_requests();
    assert_eq!(ids(&api), seeded, "api_requests is every seeded id, by id");
    // About 5 % more of source web, never among the returned ids.
    let all: Vec<i64> = (seeded[0] - 1..=*seeded.last().unwrap() + 1).collect();
    let web: Vec<i64> = all
        .iter()
        .copied()
        .filter(|id| content.request(*id).is_some_and(|r| r["source"] == "web"))
        .collect();
    assert_eq!(web.len(), 250);
    assert!(web.iter().all(|id| !seeded.contains(id)));

    let mut by_instant: BTreeMap<String, HashSet<i64>> = BTreeMap::new();
    let mut states = HashSet::new();
    for r in &api {
        by_instant
            .entry(lsc(r))
            .or_default()
            .insert(r["batchId"].as_i64().unwrap());
        states.insert(r["state"].as_str().unwrap().to_string());
        let stamp = lsc(r);
        assert!(stamp.ends_with('Z') && stamp.len() == 24, "{stamp}");
        assert!(r["import_response"].is_null());
        assert!(["translation", "copywriting"].contains(&r["type"].as_str().unwrap()));
        assert!(r["language"].is_string() && r["created"].is_string());
        let fields = r["fields"].as_array().unwrap();
        assert!(!fields.is_empty());
        if r["state"] == "completed" {
            assert_eq!(r["completed"], r["lastStateChange"]);
            assert!(fields.iter().all(|f| f["value"].is_string()));
        } else {
            assert!(r["completed"].is_null());
            assert!(fields.iter().all(|f| f["value"].is_null()));
        }
        assert!(fields.iter().all(|f| f["originalValue"].is_string()));
    }
    assert_eq!(by_instant.len(), 100, "one instant per batch of 50");
    assert!(
        by_instant.values().all(|b| b.len() == 1),
        "one batchId per instant"
    );
    for s in ["pending", "confirmed", "completed", "canceled", "failed"] {
        assert!(states.contains(s), "no {s} request");
    }
    // A second seed comes after everything seeded before.
    let last = lsc(api.iter().max_by_key(|r| lsc(r)).unwrap());
    let more = content.seed(10, 10);
    let r = content.request(more[0]).unwrap();
    assert!(lsc(&r) > last);
    sim.shutdown().await;
}

#[tokio::test]
async fn from_is_exclusive_unless_told_and_to_is_inclusive() {
    let sim = start().await;
    let content = sim.content();
    content.seed(30, 10);
    content.set_page_size(100);
    let api = content.api_requests();
    let mut instants: Vec<String> = api.iter().map(lsc).collect();
    instants.sort();
    instants.dedup();
    assert_eq!(instants.len(), 3);
    let middle = &instants[1];

    let (status, v) = get(&sim, &since(middle, Some(true)), 1).await;
    assert_eq!(status, 200);
    assert_eq!(v["total"], 20);
    assert!(
        v["requests"].as_array().unwrap()[..10]
            .iter()
            .all(|r| lsc(r) == *middle)
    );
    let (_, v) = get(&sim, &since(middle, Some(false)), 1).await;
    assert_eq!(v["total"], 10);
    assert!(
        v["requests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| lsc(r) == instants[2])
    );
    let (_, v) = get(&sim, &since(middle, None), 1).await;
    assert_eq!(v["total"], 10, "fromInclusive defaults to false");

    // A µs-precision bound compares as an instant.
    let micro = middle.replace('Z', "001Z");
    let (_, v) = get(&sim, &since(&micro, Some(true)), 1).await;
    assert_eq!(v["total"], 10);

    let to = json!({ "criteria": [
        { "type": "source", "criteria": "api" },
        { "type": "lastStateChange", "criteria": { "to": middle } },
    ]});
    let (_, v) = get(&sim, &to, 1).await;
    assert_eq!(v["total"], 20, "to is inclusive");
    let state = json!({ "criteria": [
        { "type": "source", "criteria": ["api"] },
        { "type": "state", "criteria": "completed" },
    ]});
    let (_, v) = get(&sim, &state, 1).await;
    let expected = api.iter().filter(|r| r["state"] == "completed").count();
    assert_eq!(v["total"], expected);
    sim.shutdown().await;
}

#[tokio::test]
async fn sorting_breaks_ties_by_id() {
    let sim = start().await;
    let content = sim.content();
    let seeded = content.seed(40, 8);
    content.set_page_size(1000);
    // Scramble: two batches moved at one instant, in reverse id order.
    content.set_state_batch(&[seeded[39], seeded[3], seeded[20]], "confirmed");
    content.set_state(seeded[0], "failed");

    let check = |items: &[Value], desc: bool| {
        for w in items.windows(2) {
            let (a, b) = (lsc(&w[0]), lsc(&w[1]));
            let ordered = if desc { a >= b } else { a <= b };
            assert!(ordered, "{a} then {b}");
            if a == b {
                assert!(
                    w[0]["id"].as_i64() < w[1]["id"].as_i64(),
                    "tie by id ascending"
                );
            }
        }
    };
    let (_, v) = get(&sim, &api_only(), 1).await;
    let asc = v["requests"].as_array().unwrap().clone();
    assert_eq!(asc.len(), 40);
    check(&asc, false);
    let tail = ids(&asc[36..]);
    assert_eq!(tail, vec![seeded[3], seeded[20], seeded[39], seeded[0]]);

    let q = json!({ "criteria": [{ "type": "source", "criteria": "api" }], "sortBy": ["lastStateChange:desc"] });
    let (_, v) = get(&sim, &q, 1).await;
    let desc = v["requests"].as_array().unwrap().clone();
    check(&desc, true);
    assert_eq!(desc[0]["id"], seeded[0]);

    let q = json!({ "criteria": [{ "type": "source", "criteria": "api" }], "sortBy": ["id:desc"] });
    let (_, v) = get(&sim, &q, 1).await;
    let mut expected = seeded.clone();
    expected.reverse();
    assert_eq!(ids(v["requests"].as_array().unwrap()), expected);

    let q = json!({ "criteria": [{ "type": "source", "criteria": "api" }], "sortBy": ["created"] });
    let (_, v) = get(&sim, &q, 1).await;
    let created: Vec<&str> = v["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["created"].as_str().unwrap())
        .collect();
    assert!(created.windows(2).all(|w| w[0] <= w[1]));
    sim.shutdown().await;
}

#[tokio::test]
async fn pages_are_computed_on_current_data() {
    let sim = start().await;
    let content = sim.content();
    let seeded = content.seed(47, 47);
    content.set_page_size(10);
    let (status, v) = get(&sim, &api_only(), 1).await;
    assert_eq!(status, 200);
    assert_eq!(
        (v["total"].as_u64(), v["pages"].as_u64()),
        (Some(47), Some(5))
    );
    assert_eq!(v["requests"].as_array().unwrap().len(), 10);
    let (_, v) = get(&sim, &api_only(), 5).await;
    assert_eq!(v["requests"].as_array().unwrap().len(), 7);
    let (_, v) = get(&sim, &api_only(), 6).await;
    assert_eq!(v["requests"], json!([]));
    assert_eq!(
        (v["page"].as_u64(), v["pages"].as_u64()),
        (Some(6), Some(5))
    );
    // No page parameter: page 1.
    let (_, _, text) = get_raw(
        &sim,
        DEFAULT_CONTENT_TOKEN,
        &[("query", api_only().to_string())],
    )
    .await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["page"], 1);
    assert_eq!(ids(v["requests"].as_array().unwrap()), seeded[..10]);
    assert_eq!(list_all(&sim, &api_only()).await.len(), 47);

    // A request of page 1 changes state between pages: page 2 now starts
    // one further, and one request is never seen by a page walk.
    let (_, p1) = get(&sim, &api_only(), 1).await;
    content.set_state(seeded[0], "confirmed");
    let (_, p2) = get(&sim, &api_only(), 2).await;
    assert_eq!(p1["requests"][9]["id"], seeded[9]);
    assert_eq!(p2["requests"][0]["id"], seeded[11]);
    // An empty listing.
    let (_, v) = get(&sim, &since("2999-01-01T00:00:00.000Z", Some(true)), 1).await;
    assert_eq!(
        (v["total"].as_u64(), v["pages"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(v["requests"], json!([]));
    sim.shutdown().await;
}

#[tokio::test]
async fn any_state_to_any_and_a_second_completion() {
    let sim = start().await;
    let content = sim.content();
    let seeded = content.seed(5, 5);
    let id = seeded[2];
    let before = lsc(&content.request(id).unwrap());
    let mut stamps = vec![before];
    for state in [
        "pending",
        "completed",
        "confirmed",
        "completed",
        "failed",
        "canceled",
    ] {
        content.set_state(id, state);
        let r = content.request(id).unwrap();
        assert_eq!(r["state"], state);
        stamps.push(lsc(&r));
    }
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {stamps:?}"
    );

    content.set_state(id, "completed");
    let first = content.request(id).unwrap();
    assert_eq!(first["completed"], first["lastStateChange"]);
    let values: Vec<Value> = first["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["value"].clone())
        .collect();
    assert!(values.iter().all(Value::is_string));
    content.set_state(id, "confirmed");
    let back = content.request(id).unwrap();
    assert!(back["completed"].is_null());
    content.set_state(id, "completed");
    let second = content.request(id).unwrap();
    assert!(second["completed"].as_str() > first["completed"].as_str());
    assert_ne!(
        second["fields"][0]["value"], first["fields"][0]["value"],
        "a revised delivery"
    );

    // A batch change shares one instant, later than everything before.
    content.set_state_batch(&seeded, "confirmed");
    let after: HashSet<String> = seeded
        .iter()
        .map(|id| lsc(&content.request(*id).unwrap()))
        .collect();
    assert_eq!(after.len(), 1);
    assert!(after.iter().all(|s| *s > lsc(&second)));
    sim.shutdown().await;
}

#[tokio::test]
async fn import_response_and_corruption_keep_the_state_change() {
    let sim = start().await;
    let content = sim.content();
    let seeded = content.seed(3, 3);
    let before = content.request(seeded[0]).unwrap();
    content.set_import_response(seeded[0], json!({ "page": "https://cms.example.com/p/42" }));
    let after = content.request(seeded[0]).unwrap();
    assert_eq!(after["lastStateChange"], before["lastStateChange"]);
    assert_eq!(
        after["import_response"]["page"],
        "https://cms.example.com/p/42"
    );

    let intact = content.request(seeded[1]).unwrap();
    content.corrupt(seeded[1]);
    let (_, v) = get(&sim, &api_only(), 1).await;
    let served = v["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == seeded[1])
        .unwrap()
        .clone();
    assert!(served["fields"].is_string(), "{served}");
    let inner: Value = serde_json::from_str(served["fields"].as_str().unwrap()).unwrap();
    assert!(inner.is_array());
    assert_eq!(served["state"], intact["state"]);
    assert_eq!(served["lastStateChange"], intact["lastStateChange"]);
    assert_eq!(inner, intact["fields"]);
    assert!(content.request(seeded[1]).unwrap()["fields"].is_string());
    assert!(content.request(99).is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn import_reports_ok_fail_and_validation() {
    let sim = start().await;
    let content = sim.content();
    let seeded = content.seed(2, 2);
    let id = seeded[0];
    content.set_state(id, "completed");
    let completed = content.request(id).unwrap()["completed"]
        .as_str()
        .map(str::to_string);

    assert_eq!(
        put_import(
            &sim,
            id,
            DEFAULT_CONTENT_TOKEN,
            &json!({ "importState": "success" })
        )
        .await,
        200
    );
    let body = json!({ "importState": "fail", "message": "no such page" });
    assert_eq!(
        put_import(&sim, id, DEFAULT_CONTENT_TOKEN, &body).await,
        200
    );
    assert_eq!(
        content.reports(),
        vec![
            Report {
                id,
                import_state: "success".into(),
                message: None,
                completed: completed.clone()
            },
            Report {
                id,
                import_state: "fail".into(),
                message: Some("no such page".into()),
                completed
            },
        ]
    );
    assert_eq!(
        put_import(
            &sim,
            1,
            DEFAULT_CONTENT_TOKEN,
            &json!({ "importState": "success" })
        )
        .await,
        404
    );
    assert_eq!(
        put_import(
            &sim,
            id,
            DEFAULT_CONTENT_TOKEN,
            &json!({ "importState": "done" })
        )
        .await,
        400
    );
    assert_eq!(
        put_import(
            &sim,
            id,
            DEFAULT_CONTENT_TOKEN,
            &json!({ "importState": "fail", "message": 3 })
        )
        .await,
        400
    );
    assert_eq!(
        put_import(&sim, id, "wrong", &json!({ "importState": "success" })).await,
        403
    );

    content.set_import_mode(ImportMode::Fail);
    assert_eq!(
        put_import(
            &sim,
            id,
            DEFAULT_CONTENT_TOKEN,
            &json!({ "importState": "success" })
        )
        .await,
        500
    );
    assert_eq!(content.reports().len(), 2, "a 500 records nothing");
    assert_eq!(content.report_attempts(), 7);
    assert_eq!(
        content.requests(),
        0,
        "import calls are not listing requests"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_hanging_import_is_released_by_a_mode_change() {
    let sim = start().await;
    let content = sim.content();
    let id = content.seed(1, 1)[0];
    content.set_import_mode(ImportMode::Hang);
    let url = import_url(&sim, id);
    let pending = tokio::spawn(async move {
        reqwest::Client::new()
            .put(url)
            .bearer_auth(DEFAULT_CONTENT_TOKEN)
            .json(&json!({ "importState": "success" }))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // A client that gives up gets nothing recorded.
    let gave_up = reqwest::Client::new()
        .put(import_url(&sim, id))
        .timeout(Duration::from_millis(200))
        .bearer_auth(DEFAULT_CONTENT_TOKEN)
        .json(&json!({ "importState": "fail" }))
        .send()
        .await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    // Other requests are still served meanwhile.
    let (status, _) = get(&sim, &api_only(), 1).await;
    assert_eq!(status, 200);
    assert!(!pending.is_finished());
    assert!(content.reports().is_empty());
    assert_eq!(content.report_attempts(), 2);

    content.set_import_mode(ImportMode::Ok);
    let status = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    let reports = content.reports();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].import_state, "success");

    // A hang does not hold up shutdown.
    content.set_import_mode(ImportMode::Hang);
    let url = import_url(&sim, id);
    let pending = tokio::spawn(async move {
        reqwest::Client::new()
            .put(url)
            .bearer_auth(DEFAULT_CONTENT_TOKEN)
            .json(&json!({ "importState": "success" }))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    while content.report_attempts() < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t0 = Instant::now();
    sim.shutdown().await;
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "shutdown hung: {:?}",
        t0.elapsed()
    );
    assert_eq!(pending.await.unwrap().unwrap(), 503);
    assert_eq!(content.reports().len(), 1);
}

#[tokio::test]
async fn bad_tokens_get_403_and_bad_queries_400() {
    let sim = start().await;
    let content = sim.content();
    content.seed(3, 3);
    let params = [("query", api_only().to_string())];
    let (status, _, text) = get_raw(&sim, "nope", &params).await;
    assert_eq!(status, 403);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v["message"].is_string());
    let (status, _, text) = get_raw(&sim, "", &params).await;
    assert_eq!(status, 403, "{text}");
    content.add_token("second");
    let (status, _, _) = get_raw(&sim, "second", &params).await;
    assert_eq!(status, 200);

    let bad = [
        ("{not json", "not valid JSON"),
        (
            r#"{"criteria":[{"type":"colour","criteria":"red"}]}"#,
            "unknown criteria type 'colour'",
        ),
        (
            r#"{"criteria":[{"type":"lastStateChange","criteria":{"from":"yesterday"}}]}"#,
            "not a valid date",
        ),
        (r#"{"sortBy":["weight"]}"#, "cannot sort by 'weight'"),
        (r#"{"criteria":{"type":"source"}}"#, "must be a list"),
    ];
    for (query, message) in bad {
        let (status, _, text) =
            get_raw(&sim, DEFAULT_CONTENT_TOKEN, &[("query", query.to_string())]).await;
        assert_eq!(status, 400, "{query}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["message"].as_str().unwrap().contains(message), "{text}");
    }
    for page in ["0", "two"] {
        let (status, _, _) =
            get_raw(&sim, DEFAULT_CONTENT_TOKEN, &[("page", page.to_string())]).await;
        assert_eq!(status, 400);
    }
    let (status, _, text) = get_raw(&sim, DEFAULT_CONTENT_TOKEN, &[]).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["total"].as_u64(),
        Some(3 + 1),
        "no query: every request, web included"
    );
    assert_eq!(content.requests(), 11);
    sim.shutdown().await;
}

#[tokio::test]
async fn faults_are_consumed_per_listing_request() {
    let sim = start().await;
    let content = sim.content();
    content.seed(3, 3);
    let params = [("query", api_only().to_string())];
    content.inject(Fault::Http500, 1);
    content.inject(
        Fault::Http429 {
            retry_after_secs: Some(7),
        },
        1,
    );
    content.inject(
        Fault::Http503 {
            retry_after_secs: None,
        },
        1,
    );
    content.inject(Fault::RateLimit403, 1);
    content.inject(
        Fault::GraphqlError {
            message: "query too complex".into(),
            code: "x".into(),
        },
        1,
    );
    content.inject(Fault::MalformedJson, 1);
    content.inject(Fault::Pass, 1);
    content.inject(Fault::Slow(Duration::from_millis(300)), 1);
    let mut got = Vec::new();
    for _ in 0..8 {
        let t0 = Instant::now();
        let (status, headers, text) = get_raw(&sim, DEFAULT_CONTENT_TOKEN, &params).await;
        got.push((status, headers, text, t0.elapsed()));
    }
    let statuses: Vec<u16> = got.iter().map(|g| g.0).collect();
    assert_eq!(statuses, [500, 429, 503, 403, 400, 200, 200, 200]);
    assert_eq!(got[1].1.get("retry-after").unwrap(), "7");
    assert!(got[4].2.contains("query too complex"));
    assert!(
        serde_json::from_str::<Value>(&got[5].2).is_err(),
        "malformed JSON"
    );
    assert!(serde_json::from_str::<Value>(&got[6].2).is_ok());
    assert!(got[7].3 >= Duration::from_millis(300));
    // Import reports are not faulted.
    content.inject(Fault::Http500, 5);
    let id = content.api_requests()[0]["id"].as_i64().unwrap();
    assert_eq!(
        put_import(
            &sim,
            id,
            DEFAULT_CONTENT_TOKEN,
            &json!({ "importState": "success" })
        )
        .await,
        200
    );
    content.clear_faults();
    let (status, _, _) = get_raw(&sim, DEFAULT_CONTENT_TOKEN, &params).await;
    assert_eq!(status, 200);
    assert_eq!(content.requests(), 9);
    sim.shutdown().await;
}

#[tokio::test]
async fn deliver_puts_webhook_bodies_with_the_bearer_token() {
    use axum::http::HeaderMap;
    type Seen = Arc<Mutex<Vec<(Option<String>, Value)>>>;
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::put(
                |axum::extract::State(seen): axum::extract::State<Seen>,
                 headers: HeaderMap,
                 axum::Json(body): axum::Json<Value>| async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    seen.lock().unwrap().push((auth, body));
                    axum::http::StatusCode::ACCEPTED
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let sim = start().await;
    let content = sim.content();
    let id = content.seed(1, 1)[0];
    let old = content.webhook_body(id);
    content.set_state(id, "completed");
    let new = content.webhook_body(id);
    assert_eq!(new["type"], "content-request");
    assert_eq!(new["request"]["state"], "completed");
    assert_eq!(new["request"], content.request(id).unwrap());
    let url = format!("http://{addr}/hook");
    assert_eq!(content.deliver(&url, "hook-secret", &new).await, 202);
    assert_eq!(content.deliver(&url, "hook-secret", &old).await, 202);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0.as_deref(), Some("Bearer hook-secret"));
    assert_eq!((&seen[0].1, &seen[1].1), (&new, &old));

    server.abort();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let closed = format!("http://{closed}/hook");
    assert_eq!(
        content.deliver(&closed, "hook-secret", &new).await,
        0,
        "unreachable"
    );
    sim.shutdown().await;
}

/// The indexed listing (synchro's query shape) pages exactly like a scan
/// and sort of everything, before and after state changes.
#[test]
fn the_change_index_pages_like_a_full_scan() {
    use super::query::Query;
    use super::store::Store;

    let mut store = Store::new();
    let ids = store.seed(500, 40);
    let page_all = |store: &mut Store, q: &Query, size: usize| {
        let mut indexed = Vec::new();
        let mut scanned = Vec::new();
        for page in 1..=(500 / size + 2) {
            let (items, total, pages) = store.list(q, page, size);
            let skip = (page - 1) * size;
            let (s_items, s_total, s_pages) = store.scan(q, skip, size);
            assert_eq!((total, pages), (s_total, s_pages), "page {page}");
            indexed.extend(items);
            scanned.extend(s_items);
        }
        assert_eq!(indexed, scanned);
        indexed.len()
    };
    let query = |from: &str, inclusive: bool| {
        Query::parse(
            &json!({
                "criteria": [
                    {"type": "source", "criteria": "api"},
                    {"type": "lastStateChange",
                     "criteria": {"from": from, "fromInclusive": inclusive}}
                ],
                "sortBy": ["lastStateChange"]
            })
            .to_string(),
        )
        .expect("valid query")
    };
    let everything = query("2000-01-01T00:00:00Z", true);
    assert!(everything.change_window().is_some());
    assert_eq!(page_all(&mut store, &everything, 20), 500);

    store.set_state(&ids[100..160], "completed");
    store.set_state(&ids[10..20], "confirmed");
    assert_eq!(page_all(&mut store, &everything, 7), 500);
    let watermark = store
        .get(ids[150])
        .map(|r| super::store::format_ms(r.last_state_change_ms))
        .expect("seeded");
    for inclusive in [true, false] {
        let n = page_all(&mut store, &query(&watermark, inclusive), 20);
        assert!(n > 0 && n < 500, "{n} requests from the watermark");
    }
}

/// Pages are served from each request's cached text: after every kind of
/// change the text is the request's current JSON, and a page body is the
/// bytes serialising the equivalent `Value` gives.
#[test]
fn cached_texts_follow_changes_and_bodies_match_the_values() {
    use super::query::Query;
    use super::store::Store;

    let mut store = Store::new();
    let ids = store.seed(60, 25);
    // Rendered before the changes, so that a stale cache would show.
    let (before, _, _) = store.list(&Query::default(), 1, 100);
    assert_eq!(before.len(), 63, "60 api requests and 3 web ones");
    store.set_state(&ids[3..5], "completed");
    store.set_state(&ids[5..6], "pending");
    store.set_import_response(ids[6], json!({"imported": true, "note": "é \"q\""}));
    store.corrupt(ids[7]);
    for id in &ids {
        let r = store.get(*id).expect("seeded");
        assert_eq!(&*r.text(), r.to_json().to_string(), "request {id}");
    }
    for (page, size) in [(1, 20), (2, 20), (4, 20), (9, 20), (1, 7)] {
        let (items, total, pages) = store.list(&Query::default(), page, size);
        let values: Vec<Value> = items
            .iter()
            .map(|t| serde_json::from_str(t).expect("valid JSON"))
            .collect();
        let expected =
            json!({ "requests": values, "total": total, "pages": pages, "page": page }).to_string();
        assert_eq!(super::http::page_body(&items, total, pages, page), expected);
    }
}

/// Seeded requests are product pages of about 1 KB of JSON (the size the
/// ingest benchmark is specified at), and a completed translation delivers
/// each field in its language: the description paragraphs included.
#[test]
fn seeded_requests_are_about_a_kilobyte_and_translations_are_translated() {
    use super::query::Query;
    use super::store::Store;

    let mut store = Store::new();
    store.seed(2_000, 50);
    let (items, _, _) = store.list(&Query::default(), 1, 10_000);
    assert!(items.len() >= 2_000, "{} requests", items.len());
    let mean = items.iter().map(|t| t.len()).sum::<usize>() / items.len();
    assert!((800..=1_300).contains(&mean), "mean request size {mean} B");

    let mut translated = 0;
    for text in &items {
        let r: Value = serde_json::from_str(text).expect("valid JSON");
        if r["type"] != "translation" || r["state"] != "completed" {
            continue;
        }
        for f in r["fields"].as_array().expect("fields") {
            let (original, value) = (&f["originalValue"], &f["value"]);
            assert!(value.is_string(), "completed field has a value: {f}");
            assert_ne!(
                original, value,
                "{} is translated to {}",
                f["name"], r["language"]
            );
        }
        translated += 1;
    }
    assert!(translated > 100, "{translated} completed translations");
}
