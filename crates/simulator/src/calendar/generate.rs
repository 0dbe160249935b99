//! Realistic-looking seeded events: French meeting titles, rooms, people,
//! timed and all-day events, some weekly or daily series.

use chrono::{DateTime, Utc};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Map, Value, json};

use super::store::Recurrence;
use crate::time::format_paris;

/// Time zone of every simulated calendar.
pub const TIME_ZONE: &str = "Europe/Paris";

const ID_ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
const DAY_US: i64 = 86_400_000_000;
const HOUR_US: i64 = 3_600_000_000;

const TITLES: &[&str] = &[
    "Réunion d'équipe",
    "Point hebdo",
    "Comité de pilotage",
    "Revue de sprint",
    "Entretien annuel",
    "Formation sécurité",
    "Rendez-vous client",
    "Démo produit",
    "Atelier UX",
    "Rétrospective",
    "Point budget",
    "Séminaire",
    "Recrutement — entretien",
    "Planification trimestrielle",
    "Café mensuel",
];
const PEOPLE: &[(&str, &str)] = &[
    ("Camille", "Martin"),
    ("Léa", "Bernard"),
    ("Hugo", "Dubois"),
    ("Inès", "Petit"),
    ("Julien", "Durand"),
    ("Chloé", "Leroy"),
    ("Théo", "Moreau"),
    ("Élodie", "Simon"),
    ("François", "Lefèvre"),
    ("Zoé", "Garcia"),
    ("Maxime", "Roux"),
    ("Anaïs", "Fournier"),
];
const LOCATIONS: &[&str] = &[
    "Salle Voltaire, 3e étage",
    "Salle Hugo",
    "12 rue de la Paix, 75002 Paris",
    "Lyon — Part-Dieu",
    "Visioconférence",
    "Cafétéria",
    "Bâtiment B, salle 204",
];
const DESCRIPTIONS: &[&str] = &[
    "Ordre du jour : suivi des actions, points divers.",
    "Merci de préparer vos chiffres avant la réunion.",
    "Lien visio dans l'invitation. Prévoir 5 minutes d'avance.",
    "Compte rendu à envoyer à toute l'équipe.",
    "Présentation des résultats du trimestre.",
];
const RESPONSES: &[&str] = &["accepted", "needsAction", "declined", "tentative"];

/// A new event id: 26 characters of lowercase base32hex, like Google's.
pub fn new_id(rng: &mut StdRng) -> String {
    (0..26)
        .map(|_| char::from(ID_ALPHABET[rng.random_range(0..32)]))
        .collect()
}

/// The e-mail of the calendar's owner.
pub fn owner_email(calendar_id: &str) -> String {
    if calendar_id.contains('@') {
        calendar_id.to_string()
    } else {
        "owner@example.com".to_string()
    }
}

fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'é' | 'è' | 'ê' => 'e',
            'É' => 'e',
            'ï' | 'î' => 'i',
            'ç' => 'c',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// A random meeting title.
pub fn title(rng: &mut StdRng) -> String {
    let t = TITLES[rng.random_range(0..TITLES.len())];
    if rng.random_bool(0.2) {
        let (first, _) = PEOPLE[rng.random_range(0..PEOPLE.len())];
        format!("{t} avec {first}")
    } else {
        t.to_string()
    }
}

/// A random description.
pub fn description(rng: &mut StdRng) -> String {
    DESCRIPTIONS[rng.random_range(0..DESCRIPTIONS.len())].to_string()
}

/// A random location.
pub fn location(rng: &mut StdRng) -> String {
    LOCATIONS[rng.random_range(0..LOCATIONS.len())].to_string()
}

/// `{"dateTime": <Paris time>, "timeZone": "Europe/Paris"}`.
pub fn date_time(us: i64) -> Value {
    json!({ "dateTime": format_paris(us), "timeZone": TIME_ZONE })
}

fn date(us: i64) -> Value {
    let day = DateTime::<Utc>::from_timestamp_micros(us)
        .map(|d| d.date_naive().to_string())
        .unwrap_or_else(|| "1970-01-01".to_string());
    json!({ "date": day })
}

/// The descriptive content of one event.
pub struct Generated {
    /// summary, description, location, start, end, creator, organizer,
    /// attendees, recurrence, transparency...
    pub fields: Map<String, Value>,
    /// First instant covered and end of the last occurrence, µs.
    pub span: (i64, i64),
    /// The series, for recurring events.
    pub recurrence: Option<Recurrence>,
    /// Status: `confirmed` or `tentative`.
    pub status: &'static str,
}

/// A random event around `now_us` (± 60 days).
pub fn event(rng: &mut StdRng, calendar_id: &str, now_us: i64) -> Generated {
    let owner = owner_email(calendar_id);
    let mut fields = Map::new();
    fields.insert("summary".into(), json!(title(rng)));
    if rng.random_bool(0.6) {
        fields.insert("description".into(), json!(description(rng)));
    }
    if rng.random_bool(0.7) {
        fields.insert("location".into(), json!(location(rng)));
    }
    fields.insert("creator".into(), json!({ "email": owner, "self": true }));
    fields.insert("organizer".into(), json!({ "email": owner, "self": true }));
    let day0 = now_us.div_euclid(DAY_US) * DAY_US;
    let day = day0 + rng.random_range(-60..=60) * DAY_US;
    let recurring = rng.random_bool(0.1);
    let all_day = !recurring && rng.random_bool(0.15);
    let (span, recurrence) = if all_day {
        let days = rng.random_range(1..=3);
        fields.insert("start".into(), date(day));
        fields.insert("end".into(), date(day + days * DAY_US));
        fields.insert("transparency".into(), json!("transparent"));
        ((day, day + days * DAY_US), None)
    } else {
        let start = day + rng.random_range(14..36) * HOUR_US / 2;
        let duration = rng.random_range(1..=4) * HOUR_US / 2;
        fields.insert("start".into(), date_time(start));
        fields.insert("end".into(), date_time(start + duration));
        if recurring {
            let (rule, step, count) = match rng.random_range(0..3) {
                0 => ("FREQ=DAILY;COUNT=10".to_string(), DAY_US, 10),
                1 => ("FREQ=WEEKLY;COUNT=12".to_string(), 7 * DAY_US, 12),
                _ => ("FREQ=WEEKLY;INTERVAL=2;COUNT=8".to_string(), 14 * DAY_US, 8),
            };
            fields.insert("recurrence".into(), json!([format!("RRULE:{rule}")]));
            let r = Recurrence {
                start_us: start,
                step_us: step,
                count,
                duration_us: duration,
            };
            ((start, r.last_end_us()), Some(r))
        } else {
            ((start, start + duration), None)
        }
    };
    if rng.random_bool(0.4) {
        let n = rng.random_range(1..=4);
        let attendees: Vec<Value> = (0..n)
            .map(|_| {
                let (first, last) = PEOPLE[rng.random_range(0..PEOPLE.len())];
                json!({
                    "email": format!("{}.{}@example.com", ascii(first), ascii(last)),
                    "displayName": format!("{first} {last}"),
                    "responseStatus": RESPONSES[rng.random_range(0..RESPONSES.len())],
                })
            })
            .chain(std::iter::once(json!({
                "email": owner,
                "organizer": true,
                "self": true,
                "responseStatus": "accepted",
            })))
            .collect();
        fields.insert("attendees".into(), Value::Array(attendees));
    }
    let status = if rng.random_bool(0.05) {
        "tentative"
    } else {
        "confirmed"
    };
    Generated {
        fields,
        span,
        recurrence,
        status,
    }
}

/// A creation instant in the past 90 days and a later modification, both
/// before `now_us`, in ms.
pub fn history(rng: &mut StdRng, now_us: i64) -> (i64, i64) {
    let now_ms = now_us / 1000;
    let created = now_ms - rng.random_range(3_600_000..90 * 86_400_000);
    let updated = if rng.random_bool(0.5) {
        created
    } else {
        rng.random_range(created..now_ms)
    };
    (created, updated)
}

/// Formats ms since the epoch as RFC 3339 UTC with ms (`...T10:15:42.123Z`).
pub fn format_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_string())
}

/// The id suffix of an instance: `YYYYMMDDTHHMMSSZ` (UTC).
pub fn instance_suffix(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .map(|d| d.format("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|| "19700101T000000Z".to_string())
}
