//! The typed views (`migrations/*/20261206000002_views.sql`): payloads
//! shaped as each upstream sends them (the simulator renders the same
//! fields), committed as a sync commits them, read back column by column.
//! The backends differ where the README says: SQLite keeps timestamps as
//! the text received and booleans as 0/1; Postgres has `timestamptz`,
//! `date` and `boolean`, and a value it cannot read is NULL there.

use serde_json::{Map, Value, json};

use super::{export, page, raw};
use crate::model::{Record, SourceKey, Tombstone};
use crate::store::Store;
use crate::store::test_db::{Arg, Backend, both_backends};

/// What one column of a view row must hold.
#[derive(Debug, Clone, Copy)]
enum Want<'a> {
    Null,
    Text(&'a str),
    Int(i64),
    Bool(bool),
    /// A timestamp: this text on SQLite, this instant on Postgres.
    Time(&'a str),
    /// A timestamp Postgres refuses: the text on SQLite, NULL on Postgres.
    BadTime(&'a str),
    /// A day `YYYY-MM-DD`, the same on both.
    Day(&'a str),
    /// A day Postgres refuses: the text on SQLite, NULL on Postgres.
    BadDay(&'a str),
}

impl Want<'_> {
    fn holds(self, backend: Backend, got: &Value) -> bool {
        let postgres = backend == Backend::Postgres;
        match self {
            Want::Null => got.is_null(),
            Want::Text(t) | Want::Day(t) => got.as_str() == Some(t),
            Want::Int(i) => got.as_i64() == Some(i),
            Want::Bool(b) if postgres => got.as_bool() == Some(b),
            Want::Bool(b) => got.as_i64() == Some(i64::from(b)),
            Want::Time(t) if postgres => {
                let want = crate::time::parse_us(t);
                assert!(want.is_some(), "the test's timestamp {t} is readable");
                got.as_str().and_then(crate::time::parse_us) == want
            }
            Want::BadTime(_) | Want::BadDay(_) if postgres => got.is_null(),
            Want::Time(t) | Want::BadTime(t) | Want::BadDay(t) => got.as_str() == Some(t),
        }
    }
}

/// The columns of each view, in order, with their Postgres type.
const DOSSIERS: &[(&str, &str)] = &[
    ("tenant", "text"),
    ("source", "text"),
    ("number", "bigint"),
    ("state", "text"),
    ("archived", "boolean"),
    ("date_depot", "timestamp with time zone"),
    ("date_passage_en_instruction", "timestamp with time zone"),
    ("date_traitement", "timestamp with time zone"),
    ("date_derniere_modification", "timestamp with time zone"),
    ("usager_email", "text"),
    ("demandeur_type", "text"),
    ("demandeur_nom", "text"),
    ("demandeur_prenom", "text"),
    ("demandeur_siret", "text"),
];

const EVENTS: &[(&str, &str)] = &[
    ("tenant", "text"),
    ("source", "text"),
    ("id", "text"),
    ("status", "text"),
    ("summary", "text"),
    ("start_date_time", "timestamp with time zone"),
    ("start_date", "date"),
    ("end_date_time", "timestamp with time zone"),
    ("end_date", "date"),
    ("all_day", "boolean"),
    ("recurring_event_id", "text"),
    ("organizer_email", "text"),
    ("updated", "timestamp with time zone"),
];

const REQUESTS: &[(&str, &str)] = &[
    ("tenant", "text"),
    ("source", "text"),
    ("id", "bigint"),
    ("state", "text"),
    ("language", "text"),
    ("created", "timestamp with time zone"),
    ("completed", "timestamp with time zone"),
    ("last_state_change", "timestamp with time zone"),
];

/// Asserts the view's columns: names and order on both backends, and the
/// declared types on Postgres (SQLite's are checked value by value).
async fn assert_columns(store: &Store, backend: Backend, view: &str, columns: &[(&str, &str)]) {
    let (sql, want) = match backend {
        Backend::Sqlite => (
            "SELECT group_concat(name, ',') FROM (SELECT name FROM pragma_table_info($1) ORDER BY cid)",
            columns
                .iter()
                .map(|(c, _)| *c)
                .collect::<Vec<_>>()
                .join(","),
        ),
        Backend::Postgres => (
            "SELECT string_agg(column_name || ' ' || data_type, ',' ORDER BY ordinal_position) \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
            columns
                .iter()
                .map(|(c, t)| format!("{c} {t}"))
                .collect::<Vec<_>>()
                .join(","),
        ),
    };
    let got = store.test_sql(sql, &[Arg::Text(view.into())]).await;
    assert_eq!(got.as_deref(), Some(want.as_str()), "columns of {view}");
}

/// Every row of `view` as a JSON object (column → value, as the backend
/// renders its type), sorted by `key`'s value.
async fn rows(
    store: &Store,
    backend: Backend,
    view: &str,
    columns: &[(&str, &str)],
    key: &str,
) -> Vec<Map<String, Value>> {
    let sql = match backend {
        Backend::Sqlite => {
            let pairs: Vec<String> = columns.iter().map(|(c, _)| format!("'{c}', {c}")).collect();
            format!(
                "SELECT coalesce(json_group_array(json_object({})), '[]') FROM {view}",
                pairs.join(", ")
            )
        }
        Backend::Postgres => format!("SELECT coalesce(json_agg(v)::text, '[]') FROM {view} AS v"),
    };
    let text = store.test_sql(&sql, &[]).await.expect("one row");
    let mut rows: Vec<Map<String, Value>> = serde_json::from_str::<Vec<Value>>(&text)
        .expect("a JSON array")
        .into_iter()
        .map(|row| match row {
            Value::Object(map) => map,
            other => panic!("{view}: a row is not an object: {other}"),
        })
        .collect();
    rows.sort_by_key(|row| row.get(key).map(Value::to_string));
    rows
}

/// Asserts one row's columns (those `want` names; every column is in
/// `want` for the rows the tests describe in full).
fn assert_row(backend: Backend, view: &str, row: &Map<String, Value>, want: &[(&str, Want<'_>)]) {
    for (column, w) in want {
        let got = row
            .get(*column)
            .unwrap_or_else(|| panic!("{view} has no column {column}: {row:?}"));
        assert!(
            w.holds(backend, got),
            "{view}.{column} on {backend:?}: got {got}, want {w:?}"
        );
    }
}

fn record(id: &str, updated_at: &str, data: Value) -> Record {
    Record {
        id: id.into(),
        updated_at: updated_at.into(),
        updated_us: crate::time::parse_us(updated_at).expect("a timestamp"),
        data: raw(data),
    }
}

fn dossier(number: i64, state: &str, modified: &str) -> Value {
    json!({
        // The GraphQL id, base64 of `Dossier-<number>` (the views leave it out).
        "id": "RG9zc2llci0xMjM0",
        "number": number,
        "state": state,
        "archived": false,
        "dateDepot": "2024-03-01T11:15:42+01:00",
        "dateDerniereModification": modified,
        "datePassageEnConstruction": "2024-03-01T11:15:42+01:00",
        "datePassageEnInstruction": null,
        "dateTraitement": null,
        "motivation": null,
        "usager": { "email": "jeanne.martin@example.com" },
        "demandeur": {
            "__typename": "PersonnePhysique",
            "civilite": "Mme",
            "nom": "Martin",
            "prenom": "Jeanne"
        },
        "champs": [{
            "__typename": "TextChamp",
            "id": "Q2hhbXAtMTI=",
            "label": "Adresse des travaux",
            "stringValue": "3 rue des Lilas"
        }]
    })
}

fn event(id: &str, updated: &str, start: Value, end: Value) -> Value {
    json!({
        "kind": "calendar#event",
        "etag": "\"3418592437824000\"",
        "id": id,
        "status": "confirmed",
        "htmlLink": format!("https://www.google.com/calendar/event?eid={id}"),
        "created": "2023-12-01T08:00:00.000Z",
        "updated": updated,
        "summary": "Point équipe",
        "location": "Salle 2",
        "creator": { "email": "team@example.com", "self": true },
        "organizer": { "email": "team@example.com", "self": true },
        "start": start,
        "end": end,
        "iCalUID": format!("{id}@google.com"),
        "sequence": 0,
        "reminders": { "useDefault": true },
        "eventType": "default"
    })
}

fn paris(date_time: &str) -> Value {
    json!({ "dateTime": date_time, "timeZone": "Europe/Paris" })
}

fn request(id: i64, state: &str, completed: Option<&str>, changed: &str) -> Value {
    json!({
        "id": id,
        "batchId": 512,
        "type": "translation",
        "source": "api",
        "state": state,
        "created": "2024-02-01T08:00:00.000Z",
        "completed": completed,
        "lastStateChange": changed,
        "language": "sv",
        "fields": [{ "name": "title", "originalValue": "Hello", "value": null }],
        "import_response": null
    })
}

both_backends! {
    /// One row per live dossier, nothing of other kinds, no tombstone.
    async fn the_dossiers_view_has_each_live_dossiers_fields(store: Store, backend: Backend) {
        let key = SourceKey::new("acme", "permits");
        let mut accepted = dossier(1234, "accepte", "2024-04-02T09:30:00+02:00");
        accepted["archived"] = json!(true);
        accepted["datePassageEnInstruction"] = json!("2024-03-05T14:00:00+01:00");
        accepted["dateTraitement"] = json!("2024-04-02T09:30:00+02:00");
        accepted["motivation"] = json!("Dossier complet");
        let mut company = dossier(1235, "en_construction", "2024-03-02T08:00:00+01:00");
        company["usager"] = json!({ "email": "contact@boulangerie.example" });
        company["demandeur"] = json!({ "__typename": "PersonneMorale", "siret": "41816609600069" });
        let hidden = dossier(1236, "en_instruction", "2024-03-03T08:00:00+01:00");
        let upserts = vec![
            record("1234", "2024-04-02T09:30:00+02:00", accepted),
            record("1235", "2024-03-02T08:00:00+01:00", company),
            record("1236", "2024-03-03T08:00:00+01:00", hidden),
        ];
        store
            .commit_page(&key, "demarches", &page(upserts, vec![], "a"))
            .await
            .expect("commit");
        // Hidden by the administration: a tombstone that keeps the payload.
        let deletion = Tombstone {
            id: "1236".into(),
            deleted_at: Some("2024-03-04T08:00:00+01:00".into()),
            data: raw(json!({
                "id": "RG9zc2llci0xMjM2",
                "number": 1236,
                "state": "en_instruction",
                "reason": "procedure_removed",
                "dateSupression": "2024-03-04T08:00:00+01:00"
            })),
        };
        store
            .commit_page(&key, "demarches", &page(vec![], vec![deletion], "b"))
            .await
            .expect("commit");
        // A record of another kind in the same tenant.
        let event = event("e1", "2024-01-05T16:20:31.512Z", paris("2024-01-08T10:00:00+01:00"), paris("2024-01-08T10:30:00+01:00"));
        store
            .commit_page(
                &SourceKey::new("acme", "agenda"),
                "calendar",
                &page(vec![record("e1", "2024-01-05T16:20:31.512Z", event)], vec![], "c"),
            )
            .await
            .expect("commit");

        assert_columns(&store, backend, "demarches_dossiers", DOSSIERS).await;
        assert_eq!(export(&store, true).await.len(), 4, "the tombstone is stored");
        let rows = rows(&store, backend, "demarches_dossiers", DOSSIERS, "number").await;
        assert_eq!(rows.len(), 2, "live dossiers only: {rows:?}");
        assert_row(backend, "demarches_dossiers", &rows[0], &[
            ("tenant", Want::Text("acme")),
            ("source", Want::Text("permits")),
            ("number", Want::Int(1234)),
            ("state", Want::Text("accepte")),
            ("archived", Want::Bool(true)),
            ("date_depot", Want::Time("2024-03-01T11:15:42+01:00")),
            ("date_passage_en_instruction", Want::Time("2024-03-05T14:00:00+01:00")),
            ("date_traitement", Want::Time("2024-04-02T09:30:00+02:00")),
            ("date_derniere_modification", Want::Time("2024-04-02T09:30:00+02:00")),
            ("usager_email", Want::Text("jeanne.martin@example.com")),
            ("demandeur_type", Want::Text("PersonnePhysique")),
            ("demandeur_nom", Want::Text("Martin")),
            ("demandeur_prenom", Want::Text("Jeanne")),
            ("demandeur_siret", Want::Null),
        ]);
        assert_row(backend, "demarches_dossiers", &rows[1], &[
            ("number", Want::Int(1235)),
            ("state", Want::Text("en_construction")),
            ("archived", Want::Bool(false)),
            ("date_depot", Want::Time("2024-03-01T11:15:42+01:00")),
            // `null` in the payload, as the API sends them before instruction.
            ("date_passage_en_instruction", Want::Null),
            ("date_traitement", Want::Null),
            ("usager_email", Want::Text("contact@boulangerie.example")),
            ("demandeur_type", Want::Text("PersonneMorale")),
            ("demandeur_nom", Want::Null),
            ("demandeur_prenom", Want::Null),
            ("demandeur_siret", Want::Text("41816609600069")),
        ]);
    }

    /// Timed and all-day events, an instance of a recurring event, optional
    /// fields left out; cancelled events are not there.
    async fn the_events_view_tells_all_day_events_from_timed_ones(store: Store, backend: Backend) {
        let key = SourceKey::new("acme", "agenda");
        let mut instance = event(
            "4b2l0q8v1h3k5m7n9p0r2s4t6u_20240108T090000Z",
            "2024-01-05T16:20:31.512Z",
            paris("2024-01-08T10:00:00+01:00"),
            paris("2024-01-08T10:30:00+01:00"),
        );
        instance["recurringEventId"] = json!("4b2l0q8v1h3k5m7n9p0r2s4t6u");
        instance["originalStartTime"] = paris("2024-01-08T10:00:00+01:00");
        let mut all_day = event(
            "7c1d2e3f4g5h6i7j8k9l0m1n2o",
            "2024-01-03T08:00:00.000Z",
            json!({ "date": "2024-01-10" }),
            json!({ "date": "2024-01-12" }),
        );
        all_day["transparency"] = json!("transparent");
        all_day["summary"] = json!("Séminaire");
        let mut untitled = event(
            "9z8y7x6w5v4u3t2s1r0q9p8o7n",
            "2024-01-04T12:00:00.000Z",
            json!({ "dateTime": "2024-01-09T15:00:00Z" }),
            json!({ "dateTime": "2024-01-09T16:00:00Z" }),
        );
        let fields = untitled.as_object_mut().expect("an object");
        fields.remove("summary");
        fields.remove("location");
        let cancelled_later = event(
            "cancelledlater00000000000",
            "2024-01-02T08:00:00.000Z",
            paris("2024-01-11T09:00:00+01:00"),
            paris("2024-01-11T10:00:00+01:00"),
        );
        let upserts = vec![
            record("4b2l0q8v1h3k5m7n9p0r2s4t6u_20240108T090000Z", "2024-01-05T16:20:31.512Z", instance),
            record("7c1d2e3f4g5h6i7j8k9l0m1n2o", "2024-01-03T08:00:00.000Z", all_day),
            record("9z8y7x6w5v4u3t2s1r0q9p8o7n", "2024-01-04T12:00:00.000Z", untitled),
            record("cancelledlater00000000000", "2024-01-02T08:00:00.000Z", cancelled_later),
        ];
        store
            .commit_page(&key, "calendar", &page(upserts, vec![], "a"))
            .await
            .expect("commit");
        // Cancellations as an incremental listing returns them: stubs.
        let stub = |id: &str| Tombstone {
            id: id.into(),
            deleted_at: None,
            data: raw(json!({ "kind": "calendar#event", "etag": "\"1\"", "id": id, "status": "cancelled" })),
        };
        store
            .commit_page(&key, "calendar", &page(vec![], vec![stub("cancelledlater00000000000"), stub("neverseen")], "b"))
            .await
            .expect("commit");

        assert_columns(&store, backend, "calendar_events", EVENTS).await;
        let rows = rows(&store, backend, "calendar_events", EVENTS, "id").await;
        assert_eq!(rows.len(), 3, "live events only: {rows:?}");
        assert_row(backend, "calendar_events", &rows[0], &[
            ("tenant", Want::Text("acme")),
            ("source", Want::Text("agenda")),
            ("id", Want::Text("4b2l0q8v1h3k5m7n9p0r2s4t6u_20240108T090000Z")),
            ("status", Want::Text("confirmed")),
            ("summary", Want::Text("Point équipe")),
            ("start_date_time", Want::Time("2024-01-08T10:00:00+01:00")),
            ("start_date", Want::Null),
            ("end_date_time", Want::Time("2024-01-08T10:30:00+01:00")),
            ("end_date", Want::Null),
            ("all_day", Want::Bool(false)),
            ("recurring_event_id", Want::Text("4b2l0q8v1h3k5m7n9p0r2s4t6u")),
            ("organizer_email", Want::Text("team@example.com")),
            ("updated", Want::Time("2024-01-05T16:20:31.512Z")),
        ]);
        assert_row(backend, "calendar_events", &rows[1], &[
            ("id", Want::Text("7c1d2e3f4g5h6i7j8k9l0m1n2o")),
            ("summary", Want::Text("Séminaire")),
            ("start_date_time", Want::Null),
            ("start_date", Want::Day("2024-01-10")),
            ("end_date_time", Want::Null),
            ("end_date", Want::Day("2024-01-12")),
            ("all_day", Want::Bool(true)),
            ("recurring_event_id", Want::Null),
            ("updated", Want::Time("2024-01-03T08:00:00.000Z")),
        ]);
        assert_row(backend, "calendar_events", &rows[2], &[
            ("id", Want::Text("9z8y7x6w5v4u3t2s1r0q9p8o7n")),
            ("summary", Want::Null),
            ("start_date_time", Want::Time("2024-01-09T15:00:00Z")),
            ("end_date_time", Want::Time("2024-01-09T16:00:00Z")),
            ("all_day", Want::Bool(false)),
            ("recurring_event_id", Want::Null),
        ]);
    }

    async fn the_requests_view_has_each_requests_state_and_dates(store: Store, backend: Backend) {
        let key = SourceKey::new("acme", "translations");
        let upserts = vec![
            record(
                "81234",
                "2024-02-03T17:45:12.345Z",
                request(81234, "completed", Some("2024-02-03T17:45:12.345Z"), "2024-02-03T17:45:12.345Z"),
            ),
            record("81235", "2024-02-02T09:00:00.000Z", request(81235, "pending", None, "2024-02-02T09:00:00.000Z")),
        ];
        store
            .commit_page(&key, "content", &page(upserts, vec![], "a"))
            .await
            .expect("commit");

        assert_columns(&store, backend, "content_requests", REQUESTS).await;
        let rows = rows(&store, backend, "content_requests", REQUESTS, "id").await;
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_row(backend, "content_requests", &rows[0], &[
            ("tenant", Want::Text("acme")),
            ("source", Want::Text("translations")),
            ("id", Want::Int(81234)),
            ("state", Want::Text("completed")),
            ("language", Want::Text("sv")),
            ("created", Want::Time("2024-02-01T08:00:00.000Z")),
            ("completed", Want::Time("2024-02-03T17:45:12.345Z")),
            ("last_state_change", Want::Time("2024-02-03T17:45:12.345Z")),
        ]);
        assert_row(backend, "content_requests", &rows[1], &[
            ("id", Want::Int(81235)),
            ("state", Want::Text("pending")),
            ("completed", Want::Null),
            ("last_state_change", Want::Time("2024-02-02T09:00:00.000Z")),
        ]);
    }

    /// A value an upstream should never send makes its column NULL (on
    /// Postgres, where it would not cast; SQLite shows the text), never the
    /// whole query fail: a view that fails on one row fails for everyone.
    async fn a_malformed_value_is_null_not_an_error(store: Store, backend: Backend) {
        // (dateTraitement, whether Postgres reads it)
        let stamps = [
            ("2024-02-29T12:00:00+01:00", true),
            ("2023-02-29T12:00:00+01:00", false),
            ("1900-02-29T12:00:00Z", false),
            ("2000-02-29T12:00:00Z", true),
            ("2024-04-31T12:00:00Z", false),
            ("2024-13-01T12:00:00Z", false),
            ("0000-01-01T00:00:00Z", false),
            ("0001-01-01T00:00:00Z", true),
            ("2024-01-01T24:00:00Z", false),
            ("2024-01-01T12:00:00+16:00", false),
            ("2024-01-01T12:00:00-15:59", true),
            ("2024-01-01T12:00:00", false),
            ("2024-01-01 12:00:00Z", false),
            ("2024-01-01T12:00:00.5Z", true),
            ("2024-01-01", false),
            ("now", false),
            ("", false),
        ];
        let key = SourceKey::new("acme", "permits");
        let mut upserts = Vec::new();
        for (n, (stamp, _)) in (1..).zip(stamps) {
            let mut d = dossier(n, "accepte", "2024-04-02T09:30:00+02:00");
            d["dateTraitement"] = json!(stamp);
            upserts.push(record(&n.to_string(), "2024-04-02T09:30:00+02:00", d));
        }
        let mut odd = dossier(999, "accepte", "2024-04-02T09:30:00+02:00");
        odd["number"] = json!("999");
        odd["archived"] = json!("yes");
        odd["dateDepot"] = json!(1_709_288_142);
        odd["usager"] = json!("nobody");
        upserts.push(record("999", "2024-04-02T09:30:00+02:00", odd));
        store
            .commit_page(&key, "demarches", &page(upserts, vec![], "a"))
            .await
            .expect("commit");
        let mut bad_days = event("bad", "2024-01-01T10:00:00.000Z", json!({ "date": "2023-02-29" }), json!({ "date": "2024-1-2" }));
        bad_days["updated"] = json!("yesterday");
        let offsetless = event(
            "offsetless",
            "2024-01-01T10:00:00.000Z",
            json!({ "dateTime": "2024-01-09T15:00:00", "timeZone": "Europe/Paris" }),
            json!("2024-01-09T16:00:00Z"),
        );
        store
            .commit_page(
                &SourceKey::new("acme", "agenda"),
                "calendar",
                &page(
                    vec![
                        record("bad", "2024-01-01T10:00:00.000Z", bad_days),
                        record("offsetless", "2024-01-01T10:00:00.000Z", offsetless),
                    ],
                    vec![],
                    "b",
                ),
            )
            .await
            .expect("commit");
        let mut text_id = request(0, "completed", Some("2024-02-31T17:45:12.345Z"), "2024-02-03T17:45:12.345Z");
        text_id["id"] = json!("REQ-7");
        text_id["created"] = json!(null);
        store
            .commit_page(
                &SourceKey::new("acme", "translations"),
                "content",
                &page(vec![record("REQ-7", "2024-02-03T17:45:12.345Z", text_id)], vec![], "c"),
            )
            .await
            .expect("commit");

        let dossiers = rows(&store, backend, "demarches_dossiers", DOSSIERS, "date_passage_en_instruction").await;
        assert_eq!(dossiers.len(), stamps.len() + 1);
        let by_number = |n: i64| {
            dossiers
                .iter()
                .find(|row| row.get("number").and_then(Value::as_i64) == Some(n))
                .unwrap_or_else(|| panic!("dossier {n} in the view"))
        };
        for (n, (stamp, readable)) in (1..).zip(stamps) {
            let want = if readable { Want::Time(stamp) } else { Want::BadTime(stamp) };
            assert_row(backend, "demarches_dossiers", by_number(n), &[("date_traitement", want)]);
        }
        let odd = dossiers
            .iter()
            .find(|row| row["number"].is_null())
            .expect("the dossier whose number is a string");
        assert_row(backend, "demarches_dossiers", odd, &[
            ("number", Want::Null),
            ("state", Want::Text("accepte")),
            ("archived", Want::Null),
            ("date_depot", Want::Null),
            ("usager_email", Want::Null),
        ]);

        let events = rows(&store, backend, "calendar_events", EVENTS, "id").await;
        assert_row(backend, "calendar_events", &events[0], &[
            ("id", Want::Text("bad")),
            ("start_date", Want::BadDay("2023-02-29")),
            ("end_date", Want::BadDay("2024-1-2")),
            ("all_day", Want::Bool(true)),
            ("updated", Want::BadTime("yesterday")),
        ]);
        assert_row(backend, "calendar_events", &events[1], &[
            ("id", Want::Text("offsetless")),
            ("start_date_time", Want::BadTime("2024-01-09T15:00:00")),
            ("end_date_time", Want::Null),
            ("end_date", Want::Null),
            ("all_day", Want::Bool(false)),
        ]);

        let requests = rows(&store, backend, "content_requests", REQUESTS, "id").await;
        assert_row(backend, "content_requests", &requests[0], &[
            ("id", Want::Null),
            ("created", Want::Null),
            ("completed", Want::BadTime("2024-02-31T17:45:12.345Z")),
            ("last_state_change", Want::Time("2024-02-03T17:45:12.345Z")),
        ]);

        // Filters on typed columns, which Postgres may test before `kind`.
        for sql in [
            "SELECT CAST(count(*) AS TEXT) FROM demarches_dossiers \
             WHERE date_traitement > date_depot OR archived",
            "SELECT CAST(count(*) AS TEXT) FROM calendar_events \
             WHERE start_date < end_date OR updated < start_date_time",
            "SELECT CAST(count(*) AS TEXT) FROM content_requests WHERE id > 0 OR completed > created",
        ] {
            assert!(store.test_sql(sql, &[]).await.is_some(), "{sql}");
        }
    }
}
