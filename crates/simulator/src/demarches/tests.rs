//! Tests of the simulated Démarches Simplifiées, over real HTTP.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::DEFAULT_DS_TOKEN;
use super::QUERY;
use crate::time::{format_us, now_us, parse_us};
use crate::{Fault, Simulator};

const DEMARCHE: i64 = 1234;
const SINCE: &str = "2000-01-01T00:00:00Z";

async fn start() -> Simulator {
    match Simulator::start("127.0.0.1:0".parse().unwrap()).await {
        Ok(sim) => sim,
        Err(e) => panic!("cannot start simulator: {e}"),
    }
}

/// Raw POST: (status, headers, body).
async fn post_raw(
    sim: &Simulator,
    token: Option<&str>,
    body: String,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new()
        .post(sim.ds_endpoint())
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

/// A GraphQL request with `token`; asserts HTTP 200 and returns the body.
async fn gql_as(sim: &Simulator, token: &str, query: &str, op: Option<&str>, vars: Value) -> Value {
    let body = json!({ "query": query, "operationName": op, "variables": vars });
    let (status, _, text) = post_raw(sim, Some(token), body.to_string()).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

async fn gql(sim: &Simulator, query: &str, op: Option<&str>, vars: Value) -> Value {
    gql_as(sim, DEFAULT_DS_TOKEN, query, op, vars).await
}

/// One `getDemarche` page of the client's own query.
async fn page(sim: &Simulator, first: i64, after: Option<&str>, since: &str) -> Value {
    let vars = json!({ "demarcheNumber": DEMARCHE, "first": first, "after": after, "updatedSince": since });
    let v = gql(sim, QUERY, Some("getDemarche"), vars).await;
    assert!(v.get("errors").is_none(), "{v}");
    v["data"]["demarche"]["dossiers"].clone()
}

/// Every node of `getDemarche` from `since`, walking the cursors.
async fn list_all(sim: &Simulator, since: &str) -> (Vec<Value>, usize) {
    let mut nodes = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let conn = page(sim, 100, after.as_deref(), since).await;
        pages += 1;
        nodes.extend(conn["nodes"].as_array().unwrap().iter().cloned());
        if conn["pageInfo"]["hasNextPage"] != json!(true) {
            break;
        }
        after = Some(conn["pageInfo"]["endCursor"].as_str().unwrap().to_string());
    }
    (nodes, pages)
}

fn numbers(nodes: &[Value]) -> Vec<i64> {
    nodes
        .iter()
        .map(|n| n["number"].as_i64().unwrap())
        .collect()
}

fn error_code(v: &Value) -> String {
    v["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The exact µs modification time of a dossier.
fn updated_us(sim: &Simulator, number: i64) -> i64 {
    sim.ds().shared.store().dossiers[&number].updated_us
}

#[tokio::test]
async fn pagination_covers_every_dossier_exactly_once_in_order() {
    let sim = start().await;
    let seeded = sim.ds().seed(DEMARCHE, 2500);
    let (nodes, pages) = list_all(&sim, SINCE).await;
    assert_eq!(pages, 25);
    let got = numbers(&nodes);
    assert_eq!(got.len(), 2500);
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 2500);
    let mut sorted = got.clone();
    sorted.sort_unstable();
    let mut expected = seeded.clone();
    expected.sort_unstable();
    assert_eq!(sorted, expected);
    assert_eq!(sim.ds().live_numbers(DEMARCHE), expected);
    // Ordered by modification time (µs inside, seconds on the wire).
    let keys: Vec<i64> = got.iter().map(|n| updated_us(&sim, *n)).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    let shown: Vec<i64> = nodes
        .iter()
        .map(|n| parse_us(n["dateDerniereModification"].as_str().unwrap()).unwrap())
        .collect();
    assert!(shown.windows(2).all(|w| w[0] <= w[1]));
    assert!(shown.iter().all(|t| t % 1_000_000 == 0), "to the second");
    // `first` is capped at 100; an empty page after the end has no cursor.
    let conn = page(&sim, 1000, None, SINCE).await;
    assert_eq!(conn["nodes"].as_array().unwrap().len(), 100);
    assert_eq!(conn["pageInfo"]["hasNextPage"], json!(true));
    let last = nodes.last().unwrap()["number"].as_i64().unwrap();
    let cursor = super::store::Store::cursor(
        super::store::Listing::ByUpdate,
        (updated_us(&sim, last), last),
    )
    .encode();
    let conn = page(&sim, 100, Some(&cursor), SINCE).await;
    assert_eq!(conn["nodes"], json!([]));
    assert_eq!(conn["pageInfo"]["endCursor"], Value::Null);
    assert_eq!(conn["pageInfo"]["hasNextPage"], json!(false));
    sim.shutdown().await;
}

#[tokio::test]
async fn seeded_times_are_distinct() {
    let ds = super::DsSim::new();
    let numbers = ds.seed(7, 3000);
    assert_eq!(numbers.len(), 3000);
    let more = ds.seed(7, 10);
    let store = ds.shared.store();
    let times: HashSet<i64> = store.dossiers.values().map(|d| d.updated_us).collect();
    assert_eq!(times.len(), 3010);
    let newest_first = numbers.iter().map(|n| store.dossiers[n].updated_us).max();
    assert!(
        more.iter()
            .all(|n| Some(store.dossiers[n].updated_us) > newest_first)
    );
    assert!(store.dossiers.values().all(|d| d.depot_us <= d.updated_us));
}

#[tokio::test]
async fn updated_since_is_inclusive_to_the_microsecond() {
    let sim = start().await;
    sim.ds().seed(DEMARCHE, 50);
    let (all, _) = list_all(&sim, SINCE).await;
    let tenth = all[10]["number"].as_i64().unwrap();
    let us = updated_us(&sim, tenth);
    let (from, _) = list_all(&sim, &format_us(us)).await;
    assert_eq!(numbers(&from), numbers(&all[10..]));
    let (after, _) = list_all(&sim, &format_us(us + 1)).await;
    assert_eq!(numbers(&after), numbers(&all[11..]));
    // Any offset is accepted for the same instant.
    let paris = chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap())
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
    let (same, _) = list_all(&sim, &paris).await;
    assert_eq!(numbers(&same), numbers(&from));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_modified_dossier_moves_after_the_cursor() {
    let sim = start().await;
    sim.ds().seed(DEMARCHE, 30);
    let first = page(&sim, 10, None, SINCE).await;
    let seen = numbers(first["nodes"].as_array().unwrap());
    let before = first["nodes"][3].clone();
    let cursor = first["pageInfo"]["endCursor"].as_str().unwrap().to_string();
    sim.ds().update(seen[3]);
    let rest = page(&sim, 100, Some(&cursor), SINCE).await;
    let rest_nodes = rest["nodes"].as_array().unwrap();
    assert_eq!(rest_nodes.len(), 21);
    let moved = rest_nodes.last().unwrap();
    assert_eq!(moved["number"].as_i64(), Some(seen[3]));
    assert_ne!(moved, &before, "the content changed");
    assert!(
        parse_us(moved["dateDerniereModification"].as_str().unwrap()).unwrap()
            >= parse_us(before["dateDerniereModification"].as_str().unwrap()).unwrap()
    );
    // Two updates never share a modification instant.
    let a = updated_us(&sim, seen[3]);
    sim.ds().update(seen[4]);
    sim.ds().update(seen[3]);
    assert!(updated_us(&sim, seen[4]) > a);
    assert!(updated_us(&sim, seen[3]) > updated_us(&sim, seen[4]));
    // A new dossier also comes after the cursor.
    let created = sim.ds().create(DEMARCHE);
    let rest = page(&sim, 100, Some(&cursor), SINCE).await;
    assert_eq!(
        numbers(rest["nodes"].as_array().unwrap()).last(),
        Some(&created)
    );
    sim.shutdown().await;
}

const PENDING: &str = "query($d: Int!, $since: ISO8601DateTime) { demarche(number: $d) {
    pendingDeletedDossiers(deletedSince: $since) { pageInfo { hasNextPage endCursor } nodes { id number state reason dateSupression } }
    deletedDossiers(deletedSince: $since) { pageInfo { hasNextPage endCursor } nodes { id number state reason dateSupression } } } }";

#[tokio::test]
async fn hide_then_restore() {
    let sim = start().await;
    let numbers_ = sim.ds().seed(DEMARCHE, 20);
    let n = numbers_[5];
    let before = updated_us(&sim, n);
    sim.ds().hide(n);
    assert!(!sim.ds().live_numbers(DEMARCHE).contains(&n));
    assert_eq!(sim.ds().deleted_numbers(DEMARCHE), vec![n]);
    let (all, _) = list_all(&sim, SINCE).await;
    assert!(!numbers(&all).contains(&n));
    assert_eq!(all.len(), 19);
    let one = gql(
        &sim,
        QUERY,
        Some("getDossier"),
        json!({ "dossierNumber": n }),
    )
    .await;
    assert_eq!(error_code(&one), "not_found");
    let v = gql(&sim, PENDING, None, json!({ "d": DEMARCHE })).await;
    let pending = &v["data"]["demarche"]["pendingDeletedDossiers"]["nodes"];
    assert_eq!(pending.as_array().unwrap().len(), 1);
    assert_eq!(pending[0]["number"].as_i64(), Some(n));
    assert!(pending[0]["reason"].is_string());
    assert!(pending[0]["state"].is_string());
    let at = parse_us(pending[0]["dateSupression"].as_str().unwrap()).unwrap();
    assert!((now_us() - at).abs() < 5_000_000);
    assert_eq!(v["data"]["demarche"]["deletedDossiers"]["nodes"], json!([]));

    sim.ds().restore(n);
    assert!(sim.ds().live_numbers(DEMARCHE).contains(&n));
    assert!(sim.ds().deleted_numbers(DEMARCHE).is_empty());
    assert!(updated_us(&sim, n) > before);
    let (all, _) = list_all(&sim, SINCE).await;
    assert_eq!(
        numbers(&all).last(),
        Some(&n),
        "restored = newest modification"
    );
    let v = gql(&sim, PENDING, None, json!({ "d": DEMARCHE })).await;
    assert_eq!(
        v["data"]["demarche"]["pendingDeletedDossiers"]["nodes"],
        json!([])
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn purge_with_backdate_and_deleted_since() {
    let sim = start().await;
    let ns = sim.ds().seed(DEMARCHE, 10);
    let ds = sim.ds();
    ds.hide(ns[0]);
    ds.purge(ns[0], Some(Duration::from_secs(20 * 86_400)));
    ds.purge(ns[1], None);
    ds.hide(ns[2]);
    assert_eq!(ds.deleted_numbers(DEMARCHE), vec![ns[0], ns[1], ns[2]]);
    assert_eq!(ds.live_numbers(DEMARCHE).len(), 7);
    let day_ago = format_us(now_us() - 86_400_000_000);
    let v = gql(
        &sim,
        PENDING,
        None,
        json!({ "d": DEMARCHE, "since": day_ago }),
    )
    .await;
    let d = &v["data"]["demarche"];
    assert_eq!(
        numbers(d["deletedDossiers"]["nodes"].as_array().unwrap()),
        vec![ns[1]]
    );
    assert_eq!(
        numbers(d["pendingDeletedDossiers"]["nodes"].as_array().unwrap()),
        vec![ns[2]]
    );
    let month_ago = format_us(now_us() - 30 * 86_400_000_000);
    let v = gql(
        &sim,
        PENDING,
        None,
        json!({ "d": DEMARCHE, "since": month_ago }),
    )
    .await;
    let deleted = v["data"]["demarche"]["deletedDossiers"]["nodes"].clone();
    assert_eq!(numbers(deleted.as_array().unwrap()), vec![ns[0], ns[1]]);
    let old = parse_us(deleted[0]["dateSupression"].as_str().unwrap()).unwrap();
    let expected = now_us() - 20 * 86_400_000_000;
    assert!((old - expected).abs() < 5_000_000, "backdated by 20 days");
    // The client's own operations see the same.
    let vars = json!({ "demarcheNumber": DEMARCHE, "first": 100, "deletedSince": month_ago });
    let v = gql(&sim, QUERY, Some("getDeletedDossiers"), vars.clone()).await;
    assert_eq!(v["data"]["demarche"]["deletedDossiers"]["nodes"], deleted);
    let v = gql(&sim, QUERY, Some("getPendingDeletedDossiers"), vars).await;
    assert_eq!(
        numbers(
            v["data"]["demarche"]["pendingDeletedDossiers"]["nodes"]
                .as_array()
                .unwrap()
        ),
        vec![ns[2]]
    );
    // A purged dossier cannot be restored.
    ds.restore(ns[1]);
    assert!(!ds.live_numbers(DEMARCHE).contains(&ns[1]));
    sim.shutdown().await;
}

#[tokio::test]
async fn authentication_and_authorisation() {
    let sim = start().await;
    sim.ds().seed(DEMARCHE, 5);
    sim.ds().seed(DEMARCHE + 1, 5);
    let body = json!({ "query": "{ demarche(number: 1234) { number } }" }).to_string();

    let (status, _, text) = post_raw(&sim, None, body.clone()).await;
    assert_eq!(status, 403);
    assert_eq!(
        error_code(&serde_json::from_str(&text).unwrap()),
        "forbidden"
    );
    let (status, _, _) = post_raw(&sim, Some("nope"), body.clone()).await;
    assert_eq!(status, 403);

    sim.ds().add_token("old", None);
    let (status, _, _) = post_raw(&sim, Some("old"), body.clone()).await;
    assert_eq!(status, 200);
    sim.ds().expire_token("old");
    let (status, _, text) = post_raw(&sim, Some("old"), body.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(
        error_code(&serde_json::from_str(&text).unwrap()),
        "unauthorized"
    );

    sim.ds().add_token("narrow", Some(vec![DEMARCHE + 1]));
    let q = "query($d: Int!) { demarche(number: $d) { number title } }";
    let v = gql_as(&sim, "narrow", q, None, json!({ "d": DEMARCHE })).await;
    assert_eq!(v["data"]["demarche"], Value::Null);
    assert_eq!(error_code(&v), "unauthorized");
    let v = gql_as(&sim, "narrow", q, None, json!({ "d": DEMARCHE + 1 })).await;
    assert_eq!(v["data"]["demarche"]["number"], json!(DEMARCHE + 1));
    assert!(v.get("errors").is_none());
    let n = sim.ds().live_numbers(DEMARCHE)[0];
    let v = gql_as(
        &sim,
        "narrow",
        "query($n: Int!) { dossier(number: $n) { number } }",
        None,
        json!({ "n": n }),
    )
    .await;
    assert_eq!(error_code(&v), "unauthorized");

    let v = gql(&sim, q, None, json!({ "d": 999_999 })).await;
    assert_eq!(error_code(&v), "not_found");
    assert_eq!(v["data"]["demarche"], Value::Null);

    let (status, _, _) = post_raw(&sim, Some(DEFAULT_DS_TOKEN), "{not json".into()).await;
    assert_eq!(status, 400);

    let vars =
        json!({ "demarcheNumber": DEMARCHE, "after": "zz-not-a-cursor", "updatedSince": SINCE });
    let v = gql(&sim, QUERY, Some("getDemarche"), vars).await;
    assert_eq!(error_code(&v), "bad_request");
    assert_eq!(v["data"]["demarche"], Value::Null, "{v}");
    // A cursor of another ordering is rejected too.
    let conn = page(&sim, 2, None, SINCE).await;
    let cursor = conn["pageInfo"]["endCursor"].as_str().unwrap();
    let v = gql(
        &sim,
        "query($c: String) { demarche(number: 1234) { dossiers(after: $c) { nodes { number } } } }",
        None,
        json!({ "c": cursor }),
    )
    .await;
    assert_eq!(error_code(&v), "bad_request");
    assert_eq!(sim.ds().requests(), 12);
    sim.shutdown().await;
}

#[tokio::test]
async fn every_fault_kind() {
    let sim = start().await;
    sim.ds().seed(DEMARCHE, 3);
    let ds = sim.ds();
    let body = json!({ "query": "{ demarche(number: 1234) { number } }" }).to_string();
    let ok = json!({ "data": { "demarche": { "number": DEMARCHE } } });
    ds.inject(Fault::Pass, 1);
    ds.inject(Fault::Http500, 2);
    ds.inject(
        Fault::Http429 {
            retry_after_secs: Some(3),
        },
        1,
    );
    ds.inject(
        Fault::Http429 {
            retry_after_secs: None,
        },
        1,
    );
    ds.inject(
        Fault::Http503 {
            retry_after_secs: Some(7),
        },
        1,
    );
    ds.inject(Fault::MalformedJson, 1);
    ds.inject(
        Fault::GraphqlError {
            message: "Timeout on validation of query".into(),
            code: "timeout".into(),
        },
        1,
    );
    ds.inject(Fault::Slow(Duration::from_millis(300)), 1);
    let before = ds.requests();
    let send = || post_raw(&sim, Some(DEFAULT_DS_TOKEN), body.clone());

    let (s, _, t) = send().await;
    assert_eq!(
        (s, serde_json::from_str::<Value>(&t).unwrap()),
        (200, ok.clone())
    );
    for _ in 0..2 {
        assert_eq!(send().await.0, 500);
    }
    let (s, h, t) = send().await;
    assert_eq!(s, 429);
    assert!(serde_json::from_str::<Value>(&t).is_err(), "plain text");
    assert_eq!(h["retry-after"], "3");
    assert_eq!(h["ratelimit-remaining"], "0");
    let reset: i64 = h["ratelimit-reset"].to_str().unwrap().parse().unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!((now + 2..=now + 4).contains(&reset), "{reset} vs {now}");
    let (s, h, _) = send().await;
    assert_eq!(s, 429);
    assert!(h.get("retry-after").is_none());
    let reset: i64 = h["ratelimit-reset"].to_str().unwrap().parse().unwrap();
    assert!((now..=now + 2).contains(&reset));
    let (s, h, t) = send().await;
    assert_eq!(s, 503);
    assert_eq!(h["retry-after"], "7");
    assert_eq!(
        serde_json::from_str::<Value>(&t).unwrap(),
        json!({ "error": "maintenance" })
    );
    let (s, h, t) = send().await;
    assert_eq!(s, 200);
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert!(serde_json::from_str::<Value>(&t).is_err());
    let (s, _, t) = send().await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["data"], Value::Null);
    assert_eq!(error_code(&v), "timeout");
    assert_eq!(v["errors"][0]["message"], "Timeout on validation of query");
    let t0 = Instant::now();
    let (s, _, t) = send().await;
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        (s, serde_json::from_str::<Value>(&t).unwrap()),
        (200, ok.clone())
    );
    let (s, _, _) = send().await;
    assert_eq!(s, 200, "queue drained");
    assert_eq!(ds.requests() - before, 10);

    ds.inject(Fault::Http500, 5);
    ds.clear_faults();
    assert_eq!(send().await.0, 200);
    // Faults apply before authentication, and unauthorised requests count.
    ds.inject(Fault::Http500, 1);
    assert_eq!(post_raw(&sim, None, body.clone()).await.0, 500);
    assert_eq!(post_raw(&sim, None, body.clone()).await.0, 403);
    assert_eq!(ds.requests() - before, 13);
    sim.shutdown().await;
}

#[tokio::test]
async fn arbitrary_queries_are_executed_not_matched() {
    let sim = start().await;
    let ns = sim.ds().seed(DEMARCHE, 12);
    let q = r#"query Custom($n: Int!) {
        d: demarche(number: $n) {
          id title num: number
          desc: dossiers(first: 5, order: DESC, updatedSince: "2001-02-03T04:05:06+05:00") {
            pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
            edges { cursor node { number etat: state } }
          }
          byDepot: dossiers(first: 3) { nodes { number dateDepot } }
        }
        __typename
      }"#;
    let v = gql(&sim, q, Some("Custom"), json!({ "n": DEMARCHE })).await;
    assert!(v.get("errors").is_none(), "{v}");
    let d = &v["data"]["d"];
    assert_eq!(v["data"]["__typename"], "Query");
    assert_eq!(d["num"], json!(DEMARCHE));
    assert!(d["title"].as_str().unwrap().len() > 5);
    let edges = d["desc"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 5);
    let desc: Vec<i64> = edges
        .iter()
        .map(|e| e["node"]["number"].as_i64().unwrap())
        .collect();
    let mut by_update = ns.clone();
    by_update.sort_by_key(|n| std::cmp::Reverse(updated_us(&sim, *n)));
    assert_eq!(desc, by_update[..5]);
    assert_eq!(d["desc"]["pageInfo"]["hasNextPage"], json!(true));
    assert_eq!(d["desc"]["pageInfo"]["startCursor"], edges[0]["cursor"]);
    assert_eq!(d["desc"]["pageInfo"]["endCursor"], edges[4]["cursor"]);
    let states = [
        "en_construction",
        "en_instruction",
        "accepte",
        "refuse",
        "sans_suite",
    ];
    assert!(
        edges
            .iter()
            .all(|e| states.contains(&e["node"]["etat"].as_str().unwrap()))
    );
    let depots: Vec<i64> = d["byDepot"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| parse_us(n["dateDepot"].as_str().unwrap()).unwrap())
        .collect();
    assert!(depots.windows(2).all(|w| w[0] <= w[1]));

    // Fragments on the champ interface, the real field names.
    let n = ns[0];
    let q = "query($n: Int!) { dossier(number: $n) { champs { __typename label
        ... on CheckboxChamp { value } ... on IntegerNumberChamp { value } ... on DateChamp { date }
        ... on TextChamp { value } } demandeur { __typename id } } }";
    let v = gql(&sim, q, None, json!({ "n": n })).await;
    assert!(v.get("errors").is_none(), "{v}");
    let champs = v["data"]["dossier"]["champs"].as_array().unwrap();
    let types: Vec<&str> = champs
        .iter()
        .map(|c| c["__typename"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "TextChamp",
            "TextChamp",
            "CheckboxChamp",
            "IntegerNumberChamp",
            "DateChamp"
        ]
    );
    assert!(champs[2]["value"].is_boolean());
    assert!(
        champs[3]["value"].is_string() || champs[3]["value"].is_null(),
        "BigInt"
    );
    // Invalid documents are GraphQL errors, not crashes.
    let v = gql(&sim, "{ demarche(number: 1234) { nope } }", None, json!({})).await;
    assert!(v["errors"].as_array().is_some_and(|e| !e.is_empty()));
    sim.shutdown().await;
}

fn is_paris_second(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 25
        && (s.ends_with("+01:00") || s.ends_with("+02:00"))
        && b[10] == b'T'
        && parse_us(s).is_some()
}

#[tokio::test]
async fn snapshot_matches_what_the_client_receives() {
    let sim = start().await;
    let ns = sim.ds().seed(DEMARCHE, 150);
    sim.ds().seed(DEMARCHE + 1, 10);
    for n in &ns[..20] {
        sim.ds().update(*n);
    }
    sim.ds().hide(ns[30]);
    sim.ds().purge(ns[31], None);
    let (mut http, _) = list_all(&sim, SINCE).await;
    http.sort_by_key(|n| n["number"].as_i64());
    let snap = sim.ds().snapshot(DEMARCHE).await;
    assert_eq!(snap.len(), 148);
    assert_eq!(snap, http);
    // Same rendering on every read until modified.
    assert_eq!(sim.ds().snapshot(DEMARCHE).await, snap);
    let one = gql(
        &sim,
        QUERY,
        Some("getDossier"),
        json!({ "dossierNumber": ns[40] }),
    )
    .await;
    let pos = snap
        .iter()
        .position(|d| d["number"] == json!(ns[40]))
        .unwrap();
    assert_eq!(one["data"]["dossier"], snap[pos]);
    sim.ds().update(ns[40]);
    let after = sim.ds().snapshot(DEMARCHE).await;
    assert_ne!(after[pos], snap[pos]);

    // The shape the client stores.
    for d in &snap {
        for key in [
            "dateDepot",
            "dateDerniereModification",
            "datePassageEnConstruction",
        ] {
            assert!(
                is_paris_second(d[key].as_str().unwrap()),
                "{key}: {}",
                d[key]
            );
        }
        assert!(d["usager"]["email"].as_str().unwrap().contains('@'));
        let kind = d["demandeur"]["__typename"].as_str().unwrap();
        match kind {
            "PersonnePhysique" => assert!(d["demandeur"]["nom"].is_string()),
            "PersonneMorale" => assert_eq!(d["demandeur"]["siret"].as_str().unwrap().len(), 14),
            other => panic!("demandeur {other}"),
        }
        let champs = d["champs"].as_array().unwrap();
        assert!(champs.iter().any(|c| c["checked"].is_boolean()));
        assert!(champs.iter().any(|c| c.get("integerNumber").is_some()));
    }
    let states: HashSet<&str> = snap.iter().map(|d| d["state"].as_str().unwrap()).collect();
    assert!(states.len() >= 4, "{states:?}");
    sim.shutdown().await;
}

/// The engine's answer to `body` with `scope`, serialised as the server
/// sends it.
async fn engine_text(ds: &super::DsSim, scope: super::schema::Scope, body: &str) -> String {
    let request: async_graphql::Request = serde_json::from_str(body).expect("a GraphQL request");
    serde_json::to_string(&ds.execute(request, scope).await).expect("serialisable")
}

fn get_demarche_body(vars: Value) -> String {
    json!({ "query": QUERY, "operationName": "getDemarche", "variables": vars }).to_string()
}

/// The fast path answers synchro's page request with exactly the engine's
/// bytes: every page of both orderings (with and without `updatedSince`),
/// several page sizes, cursors, the empty last page, and dossiers that were
/// updated, created, restored, hidden or purged after seeding.
#[tokio::test]
async fn the_fast_path_answers_what_the_engine_answers() {
    use super::schema::Scope;
    let ds = super::DsSim::new();
    let numbers = ds.seed(DEMARCHE, 260);
    ds.seed(DEMARCHE + 1, 5);
    for n in numbers.iter().step_by(7) {
        ds.update(*n);
    }
    ds.hide(numbers[3]);
    ds.hide(numbers[4]);
    ds.restore(numbers[4]);
    ds.purge(numbers[5], None);
    for _ in 0..3 {
        ds.create(DEMARCHE);
    }
    let mut compared = 0;
    for since in [Some(SINCE), None, Some("2999-01-01T00:00:00+01:00")] {
        for first in [Some(100), Some(37), Some(1000), None] {
            let mut after: Option<String> = None;
            loop {
                let mut vars =
                    json!({ "demarcheNumber": DEMARCHE, "first": first, "after": after });
                if let Some(s) = since {
                    vars["updatedSince"] = json!(s);
                }
                let body = get_demarche_body(vars);
                let fast = ds
                    .fast_answer(&Scope::All, body.as_bytes())
                    .expect("the fast path serves synchro's request");
                assert_eq!(fast, engine_text(&ds, Scope::All, &body).await, "{body}");
                compared += 1;
                let v: Value = serde_json::from_str(&fast).expect("JSON");
                let info = &v["data"]["demarche"]["dossiers"]["pageInfo"];
                if info["hasNextPage"] != json!(true) {
                    break;
                }
                after = info["endCursor"].as_str().map(String::from);
            }
        }
    }
    assert!(compared > 20, "{compared} pages compared");
    assert_eq!(ds.fast_answers(), compared, "every answer counted");
    // A last page after the final cursor is empty, with a null endCursor.
    let all = Scope::Only(vec![DEMARCHE]);
    let mut end = Value::Null;
    loop {
        let body = get_demarche_body(
            json!({ "demarcheNumber": DEMARCHE, "first": 100, "after": end, "updatedSince": SINCE }),
        );
        let v: Value = serde_json::from_str(&ds.fast_answer(&all, body.as_bytes()).expect("fast"))
            .expect("JSON");
        let info = &v["data"]["demarche"]["dossiers"]["pageInfo"];
        end = info["endCursor"].clone();
        if info["hasNextPage"] != json!(true) {
            break;
        }
    }
    let body = get_demarche_body(
        json!({ "demarcheNumber": DEMARCHE, "first": 10, "after": end, "updatedSince": SINCE }),
    );
    let empty = ds.fast_answer(&all, body.as_bytes()).expect("fast");
    assert!(empty.contains("\"endCursor\":null"), "{empty}");
    assert_eq!(empty, engine_text(&ds, all, &body).await);
}

/// Whatever would make the engine answer differently from a page (errors,
/// other operations or documents, unexpected variables) goes to the engine.
#[tokio::test]
async fn the_fast_path_leaves_everything_else_to_the_engine() {
    use super::schema::Scope;
    let ds = super::DsSim::new();
    ds.seed(DEMARCHE, 3);
    let ok = json!({ "demarcheNumber": DEMARCHE, "first": 10, "updatedSince": SINCE });
    assert!(
        ds.fast_answer(&Scope::All, get_demarche_body(ok.clone()).as_bytes())
            .is_some()
    );
    let with = |key: &str, value: Value| {
        let mut vars = ok.clone();
        vars[key] = value;
        get_demarche_body(vars)
    };
    let refused = [
        with("demarcheNumber", json!(999)),
        with("demarcheNumber", json!(1i64 << 40)),
        with("first", json!(-1)),
        with("first", json!(2.5)),
        with("after", json!("not-a-cursor")),
        with(
            "after",
            json!(
                super::codec::Cursor {
                    tag: 'd',
                    key: 1,
                    number: 2
                }
                .encode()
            ),
        ),
        with("updatedSince", json!("yesterday")),
        with("deletedSince", json!(SINCE)),
        json!({ "query": QUERY, "operationName": "getDemarcheWithDeletions", "variables": ok })
            .to_string(),
        json!({ "query": format!("{QUERY}\n"), "operationName": "getDemarche", "variables": ok })
            .to_string(),
        json!({ "query": QUERY, "variables": ok }).to_string(),
        "not json".to_string(),
    ];
    for body in &refused {
        assert!(
            ds.fast_answer(&Scope::All, body.as_bytes()).is_none(),
            "{body}"
        );
    }
    assert_eq!(ds.fast_answers(), 1, "the first request, not the refusals");
    let body = get_demarche_body(ok);
    assert!(
        ds.fast_answer(&Scope::Only(vec![DEMARCHE + 1]), body.as_bytes())
            .is_none()
    );
}

/// Injected faults apply to the requests the fast path serves too.
#[tokio::test]
async fn faults_apply_to_fast_path_requests() {
    let sim = start().await;
    sim.ds().seed(DEMARCHE, 5);
    let body = get_demarche_body(
        json!({ "demarcheNumber": DEMARCHE, "first": 100, "updatedSince": SINCE }),
    );
    sim.ds().inject(Fault::Http500, 1);
    sim.ds().inject(
        Fault::GraphqlError {
            message: "boom".into(),
            code: "timeout".into(),
        },
        1,
    );
    let (status, _, _) = post_raw(&sim, Some(DEFAULT_DS_TOKEN), body.clone()).await;
    assert_eq!(status, 500);
    let (status, _, text) = post_raw(&sim, Some(DEFAULT_DS_TOKEN), body.clone()).await;
    assert_eq!(status, 200);
    assert!(text.contains("timeout"), "{text}");
    let (status, headers, text) = post_raw(&sim, Some(DEFAULT_DS_TOKEN), body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let expected = engine_text(&sim.ds(), super::schema::Scope::All, &body).await;
    assert_eq!(text, expected);
    sim.shutdown().await;
}
