//! The typed views over what a real sync stored: the real binary syncs the
//! three simulated upstreams, then each view must hold one row per live
//! upstream object, with its fields where upstream has them. A view that
//! read a misspelt field, or a timestamp Postgres could not cast, would
//! leave a column NULL and fail here.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::*;

const DEMARCHE: i64 = 4242;
const CAL: &str = "team@example.com";

/// One number a query returns; the query must succeed.
async fn number(db: &Db, sql: &str) -> i64 {
    let mut conn = db.connect().await.expect("open db");
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(db.sql(sql)))
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// How many of `items` have a non-null value at `path`.
fn having(items: &[Value], path: &str) -> i64 {
    let n = items
        .iter()
        .filter(|v| v.pointer(path).is_some_and(|x| !x.is_null()))
        .count();
    i64::try_from(n).expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_view_has_a_row_per_live_upstream_object_with_its_fields() {
    let sim = simulator().await;
    let numbers = sim.ds().seed(DEMARCHE, 300);
    let events = sim.calendar().seed(CAL, 300);
    sim.content().seed(200, 10);
    let setup = Setup::build_all(
        &sim,
        &[DsSource::new("acme", "permits", DEMARCHE)],
        &[CalSource::new("acme", "agenda", CAL)],
        &[ContentSource::new("acme", "translations")],
    );
    setup.sync_ok(&[]).await;
    // Deletions: tombstones in the table, absent from the views.
    for n in &numbers[..5] {
        sim.ds().hide(*n);
    }
    for id in &events[..5] {
        sim.calendar().cancel(CAL, id);
    }
    setup.sync_ok(&[]).await;
    let db = setup.db();

    let dossiers = sim.ds().snapshot(DEMARCHE).await;
    assert_eq!(dossiers.len(), 295);
    assert_eq!(
        number(&db, "SELECT count(*) FROM demarches_dossiers").await,
        295
    );
    let listed: BTreeSet<(i64, String)> = dossiers
        .iter()
        .map(|d| {
            let n = d["number"].as_i64().expect("number");
            (n, d["state"].as_str().expect("state").to_string())
        })
        .collect();
    let mut conn = db.connect().await.expect("open db");
    let viewed: BTreeSet<(i64, String)> =
        sqlx::query_as::<_, (i64, String)>("SELECT number, state FROM demarches_dossiers")
            .fetch_all(&mut conn)
            .await
            .expect("dossiers")
            .into_iter()
            .collect();
    assert_eq!(viewed, listed, "numbers and states");
    for (column, path) in [
        ("archived", "/archived"),
        ("date_depot", "/dateDepot"),
        ("date_passage_en_instruction", "/datePassageEnInstruction"),
        ("date_traitement", "/dateTraitement"),
        ("date_derniere_modification", "/dateDerniereModification"),
        ("usager_email", "/usager/email"),
        ("demandeur_type", "/demandeur/__typename"),
        ("demandeur_nom", "/demandeur/nom"),
        ("demandeur_prenom", "/demandeur/prenom"),
        ("demandeur_siret", "/demandeur/siret"),
    ] {
        let sql = format!("SELECT count({column}) FROM demarches_dossiers");
        assert_eq!(number(&db, &sql).await, having(&dossiers, path), "{column}");
    }
    let archived =
        i64::try_from(dossiers.iter().filter(|d| d["archived"] == true).count()).expect("a count");
    assert_eq!(
        number(
            &db,
            "SELECT count(*) FROM demarches_dossiers WHERE archived"
        )
        .await,
        archived,
        "archived"
    );

    let live = sim.calendar().live_events(CAL);
    assert_eq!(live.len(), 295);
    let listed: BTreeSet<String> = live
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_string())
        .collect();
    let viewed: BTreeSet<String> =
        sqlx::query_scalar::<_, String>("SELECT id FROM calendar_events")
            .fetch_all(&mut conn)
            .await
            .expect("events")
            .into_iter()
            .collect();
    assert_eq!(viewed, listed, "event ids");
    let all_day = having(&live, "/start/date");
    assert!(all_day > 0, "the simulator makes some all-day events");
    assert_eq!(
        number(&db, "SELECT count(*) FROM calendar_events WHERE all_day").await,
        all_day,
        "all_day"
    );
    for (column, path) in [
        ("status", "/status"),
        ("summary", "/summary"),
        ("start_date_time", "/start/dateTime"),
        ("start_date", "/start/date"),
        ("end_date_time", "/end/dateTime"),
        ("end_date", "/end/date"),
        ("recurring_event_id", "/recurringEventId"),
        ("organizer_email", "/organizer/email"),
        ("updated", "/updated"),
    ] {
        let sql = format!("SELECT count({column}) FROM calendar_events");
        assert_eq!(number(&db, &sql).await, having(&live, path), "{column}");
    }

    let requests = sim.content().api_requests();
    assert_eq!(requests.len(), 200);
    let listed: BTreeSet<(i64, String)> = requests
        .iter()
        .map(|r| {
            let id = r["id"].as_i64().expect("id");
            (id, r["state"].as_str().expect("state").to_string())
        })
        .collect();
    let viewed: BTreeSet<(i64, String)> =
        sqlx::query_as::<_, (i64, String)>("SELECT id, state FROM content_requests")
            .fetch_all(&mut conn)
            .await
            .expect("requests")
            .into_iter()
            .collect();
    assert_eq!(viewed, listed, "ids and states");
    for (column, path) in [
        ("language", "/language"),
        ("created", "/created"),
        ("completed", "/completed"),
        ("last_state_change", "/lastStateChange"),
    ] {
        let sql = format!("SELECT count({column}) FROM content_requests");
        assert_eq!(number(&db, &sql).await, having(&requests, path), "{column}");
    }
}
