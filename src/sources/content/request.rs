//! One Contentor content request: checked, turned into a record, and into
//! the import-state report it is owed. Shared by the polling connector and
//! the webhook, so both store and report a request the same way.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::model::{Record, Report, ReportOutcome};
use crate::model::Payload;
use crate::sources::payload;

/// States a request can be in (any to any).
const STATES: [&str; 5] = ["pending", "confirmed", "completed", "canceled", "failed"];

/// What to do with one request received from upstream.
#[derive(Debug, Clone)]
pub enum Checked {
    /// Store it; queue the report if it is owed.
    Store(Record, Option<Report>),
    /// It cannot be stored: log it and report `fail` if it completed.
    Reject {
        id: String,
        /// `lastStateChange` in µs when readable (the watermark still moves past it).
        changed_us: Option<i64>,
        reason: String,
        report: Option<Report>,
    },
    /// Not even an id: nothing to store or report.
    Garbage(String),
}

/// What synchro reads of a request, decoded by serde: the fallback for
/// text the one-pass scan leaves to it. Scalars are read as loose values so
/// that a wrong type is a rejection with a reason, not a parse error for the
/// whole page.
#[derive(Deserialize)]
struct OwnedKeys {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default, rename = "lastStateChange")]
    last_state_change: Option<Value>,
    #[serde(default)]
    state: Option<Value>,
    #[serde(default)]
    completed: Option<Value>,
    #[serde(default)]
    fields: Option<Box<RawValue>>,
}

/// What synchro reads of a request; the rest stays raw. Strings borrow the
/// request's text unless they hold escapes, so that checking a request
/// allocates nothing but what the record keeps.
struct Keys<'a> {
    /// The id as stored: a JSON number's text, or a string.
    id: Option<Cow<'a, str>>,
    last_state_change: Option<Cow<'a, str>>,
    state: Option<Cow<'a, str>>,
    completed: Option<Cow<'a, str>>,
    /// `fields` is present and is not a list.
    fields_not_a_list: bool,
}

impl<'a> Keys<'a> {
    /// The keys of a request's text, and whether the text has whitespace to
    /// compact away: one pass over the text ([`payload::scan`]), or serde
    /// when the scan leaves the text to it.
    fn read(text: &'a str) -> Option<(Keys<'a>, bool)> {
        let names = ["id", "lastStateChange", "state", "completed", "fields"];
        let Some(scan) = payload::scan(text, names) else {
            let owned: OwnedKeys = serde_json::from_str(text).ok()?;
            return Some((Keys::from_owned(owned), true));
        };
        // Null reads as absent, as `Option` does with serde.
        let present = |i: usize| scan.values[i].filter(|raw| *raw != "null");
        let keys = Keys {
            id: present(0).and_then(id_text),
            last_state_change: present(1).and_then(payload::str_value),
            state: present(2).and_then(payload::str_value),
            completed: present(3).and_then(payload::str_value),
            fields_not_a_list: present(4).is_some_and(not_a_list),
        };
        Some((keys, scan.spaced))
    }

    fn from_owned(keys: OwnedKeys) -> Keys<'static> {
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) => Some(Cow::Owned(s)),
            _ => None,
        };
        Keys {
            id: match keys.id {
                Some(Value::Number(n)) => Some(Cow::Owned(n.to_string())),
                Some(Value::String(s)) => Some(Cow::Owned(s)),
                _ => None,
            },
            last_state_change: text(keys.last_state_change),
            state: text(keys.state),
            completed: text(keys.completed),
            fields_not_a_list: keys.fields.is_some_and(|f| not_a_list(f.get())),
        }
    }
}

/// Whether a JSON value's text is something other than an array.
fn not_a_list(raw: &str) -> bool {
    !raw.trim_start().starts_with('[')
}

/// A request id's text as stored: a string as is, a number as serde prints
/// it. A non-negative integer literal that fits in 64 bits (the usual case;
/// JSON has no leading zeros) prints as itself; anything else (a sign, a
/// fraction, an exponent, a huge integer) goes through serde to keep its
/// printing exact.
fn id_text(raw: &str) -> Option<Cow<'_, str>> {
    if raw.starts_with('"') {
        return payload::str_value(raw);
    }
    if !raw.is_empty() && raw.len() <= 18 && raw.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Cow::Borrowed(raw));
    }
    match serde_json::from_str::<Value>(raw).ok()? {
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

/// Checks one request. `report` says whether import states are reported.
pub fn check(item: Payload, report: bool) -> Checked {
    let Some((keys, spaced)) = Keys::read(item.get()) else {
        return Checked::Garbage("a request is not an object with a usable `id`".to_string());
    };
    let id = match keys.id {
        Some(id) if !id.trim().is_empty() => id.into_owned(),
        _ => return Checked::Garbage("a request has no usable `id`".to_string()),
    };
    let changed = keys
        .last_state_change
        .as_deref()
        .and_then(|s| crate::time::parse_us(s).map(|us| (s.to_string(), us)));
    let state = keys.state.as_deref();
    let completed_at = keys
        .completed
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let owed = |outcome: ReportOutcome, version_us: Option<i64>| -> Option<Report> {
        match (&completed_at, state == Some("completed") && report) {
            (Some(c), true) => Some(Report {
                record_id: id.clone(),
                version_us,
                completed_at: c.clone(),
                outcome,
            }),
            _ => None,
        }
    };
    let problem = if changed.is_none() {
        Some("`lastStateChange` is missing or not a date".to_string())
    } else if !state.is_some_and(|s| STATES.contains(&s)) {
        Some("`state` is missing or unknown".to_string())
    } else if keys.fields_not_a_list {
        Some("`fields` is not a list".to_string())
    } else {
        None
    };
    match (problem, changed) {
        (None, Some((updated_at, updated_us))) => {
            let report = owed(ReportOutcome::Success, Some(updated_us));
            Checked::Store(
                Record {
                    id,
                    updated_at,
                    updated_us,
                    data: payload::compact_scanned(item, spaced),
                },
                report,
            )
        }
        (problem, changed) => {
            let reason = problem.unwrap_or_default();
            let report = owed(
                ReportOutcome::Fail(format!("synchro could not store the request: {reason}")),
                None,
            );
            Checked::Reject {
                id: id.clone(),
                changed_us: changed.map(|(_, us)| us),
                reason,
                report,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(v: serde_json::Value) -> Payload {
        payload::from_value(&v).expect("encodable")
    }

    fn req(state: &str, fields: serde_json::Value) -> Payload {
        raw(json!({
            "id": 42, "state": state, "lastStateChange": "2024-05-01T10:00:00.123Z",
            "completed": if state == "completed" { json!("2024-05-01T10:00:00.123Z") } else { json!(null) },
            "fields": fields,
        }))
    }

    /// The one-pass reading of an id prints it as the serde reading does.
    #[test]
    fn id_text_prints_ids_as_serde_does() {
        for raw in [
            "42",
            "0",
            "-0",
            "-7",
            "1.0",
            "1e3",
            "123456789012345678",
            "12345678901234567890",
            "99999999999999999999999",
            r#""abc""#,
            r#""a\"b""#,
            r#""\u00e9t\u00e9""#,
            "true",
            "[1]",
        ] {
            let serde = match serde_json::from_str::<Value>(raw).expect("json") {
                Value::Number(n) => Some(n.to_string()),
                Value::String(s) => Some(s),
                _ => None,
            };
            assert_eq!(id_text(raw).map(Cow::into_owned), serde, "{raw}");
        }
    }

    /// Escaped and plain text, with and without whitespace, read the same
    /// through the scan as through serde.
    #[test]
    fn scanned_and_decoded_keys_agree() {
        let texts = [
            r#"{"id":7,"state":"completed","lastStateChange":"2024-05-01T10:00:00.123Z","completed":"2024-05-01T10:00:00.123Z","fields":[]}"#,
            r#"{"id":"x\"y","state":"c\u006fmpleted","lastStateChange":"2024-05-01T10:00:00.123Z","completed":null,"fields":{"a":1}}"#,
            "{ \"id\" : 8 , \"state\" : \"pending\" , \"fields\" : \"no\" }",
        ];
        for text in texts {
            let (scanned, _) = Keys::read(text).expect("object");
            let decoded = Keys::from_owned(serde_json::from_str(text).expect("json"));
            assert_eq!(scanned.id, decoded.id, "{text}");
            assert_eq!(scanned.state, decoded.state, "{text}");
            assert_eq!(
                scanned.last_state_change, decoded.last_state_change,
                "{text}"
            );
            assert_eq!(scanned.completed, decoded.completed, "{text}");
            assert_eq!(
                scanned.fields_not_a_list, decoded.fields_not_a_list,
                "{text}"
            );
        }
    }

    #[test]
    fn a_completed_request_is_stored_and_owes_a_success() {
        let Checked::Store(rec, Some(rep)) = check(req("completed", json!([])), true) else {
            panic!("expected a stored request with a report");
        };
        assert_eq!(rec.id, "42");
        assert_eq!(rep.outcome, ReportOutcome::Success);
        assert_eq!(rep.version_us, Some(rec.updated_us));
        assert_eq!(rep.completed_at, "2024-05-01T10:00:00.123Z");
    }

    #[test]
    fn other_states_or_reporting_off_owe_nothing() {
        assert!(matches!(
            check(req("confirmed", json!([])), true),
            Checked::Store(_, None)
        ));
        assert!(matches!(
            check(req("completed", json!([])), false),
            Checked::Store(_, None)
        ));
    }

    #[test]
    fn an_invalid_completed_request_is_rejected_with_a_fail_report() {
        let Checked::Reject {
            id,
            reason,
            report: Some(rep),
            changed_us,
        } = check(req("completed", json!("garbage")), true)
        else {
            panic!("expected a rejection with a report");
        };
        assert_eq!(id, "42");
        assert!(reason.contains("fields"));
        assert!(changed_us.is_some());
        assert!(matches!(rep.outcome, ReportOutcome::Fail(m) if m.contains("fields")));
        assert!(matches!(
            check(raw(json!({"state": "completed"})), true),
            Checked::Garbage(_)
        ));
        assert!(matches!(
            check(
                raw(json!({"id": 1, "state": "completed", "lastStateChange": "yesterday"})),
                true
            ),
            Checked::Reject {
                changed_us: None,
                ..
            }
        ));
    }
}
