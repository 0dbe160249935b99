//! One Contentor content request: checked, turned into a record, and into
//! the import-state report it is owed. Shared by the polling connector and
//! the webhook, so both store and report a request the same way.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::sources::payload::{self, Payload};
use crate::sources::{Record, Report, ReportOutcome};

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

/// What synchro reads of a request; the rest stays raw. Scalars are read as
/// loose values so that a wrong type is a rejection with a reason, not a
/// parse error for the whole page.
#[derive(Deserialize)]
struct Keys {
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

impl Keys {
    /// The keys of a request's text, and whether the text has whitespace to
    /// compact away: one pass over the text ([`payload::scan`]), or serde
    /// when the scan leaves the text to it.
    fn read(text: &str) -> Option<(Keys, bool)> {
        let names = ["id", "lastStateChange", "state", "completed", "fields"];
        let Some(scan) = payload::scan(text, names) else {
            return Some((serde_json::from_str(text).ok()?, true));
        };
        // Null reads as absent, as `Option` does with serde.
        let present = |i: usize| scan.values[i].filter(|raw| *raw != "null");
        let value = |i: usize| present(i).and_then(|raw| serde_json::from_str(raw).ok());
        let keys = Keys {
            id: value(0),
            last_state_change: value(1),
            state: value(2),
            completed: value(3),
            fields: present(4).and_then(|raw| RawValue::from_string(raw.to_string()).ok()),
        };
        Some((keys, scan.spaced))
    }
}

/// Checks one request. `report` says whether import states are reported.
pub fn check(item: Payload, report: bool) -> Checked {
    let Some((keys, spaced)) = Keys::read(item.get()) else {
        return Checked::Garbage("a request is not an object with a usable `id`".to_string());
    };
    let id = match keys.id {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        _ => return Checked::Garbage("a request has no usable `id`".to_string()),
    };
    let changed = keys
        .last_state_change
        .as_ref()
        .and_then(Value::as_str)
        .and_then(|s| crate::time::parse_us(s).map(|us| (s.to_string(), us)));
    let state = keys.state.as_ref().and_then(Value::as_str);
    let completed_at = keys
        .completed
        .as_ref()
        .and_then(Value::as_str)
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
    } else if keys
        .fields
        .as_ref()
        .is_some_and(|f| !f.get().trim_start().starts_with('['))
    {
        Some("`fields` is not a list".to_string())
    } else {
        None
    };
    match (problem, changed) {
        (None, Some((updated_at, updated_us))) => {
            let report = owed(ReportOutcome::Success, Some(updated_us));
            Checked::Store(
                Record {
                    id: id.clone(),
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
