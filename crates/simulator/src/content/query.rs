//! The `query` parameter of `GET /content`:
//! `{"criteria":[{"type":..,"criteria":..}],"sortBy":["field[:desc]"]}`.
//! Criteria are ANDed; results are sorted by the `sortBy` keys, then by id.

use std::cmp::Ordering;

use serde_json::Value;

use super::store::ContentRequest;

/// A date-valued property of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DateField {
    LastStateChange,
    Created,
    Completed,
}

impl DateField {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "lastStateChange" => Some(Self::LastStateChange),
            "created" => Some(Self::Created),
            "completed" => Some(Self::Completed),
            _ => None,
        }
    }

    /// The value, µs (`None`: a request never completed).
    fn of(self, r: &ContentRequest) -> Option<i64> {
        let ms = match self {
            Self::LastStateChange => Some(r.last_state_change_ms),
            Self::Created => Some(r.created_ms),
            Self::Completed => r.completed_ms,
        };
        ms.map(|ms| ms * 1000)
    }
}

/// A text-valued property of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TextField {
    Source,
    State,
    Type,
    Language,
}

impl TextField {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "source" => Some(Self::Source),
            "state" => Some(Self::State),
            "type" => Some(Self::Type),
            "language" => Some(Self::Language),
            _ => None,
        }
    }

    fn of(self, r: &ContentRequest) -> &str {
        match self {
            Self::Source => r.source,
            Self::State => &r.state,
            Self::Type => r.kind,
            Self::Language => r.language,
        }
    }
}

/// One criterion.
#[derive(Clone, Debug)]
enum Criterion {
    /// The property is one of these values.
    Text(TextField, Vec<String>),
    /// The date is within the bounds (µs, inclusive flag).
    Range {
        field: DateField,
        from: Option<(i64, bool)>,
        to: Option<(i64, bool)>,
    },
}

/// A sort key.
#[derive(Clone, Copy, Debug)]
enum SortKey {
    Id,
    Date(DateField),
}

/// A parsed query.
#[derive(Clone, Debug, Default)]
pub struct Query {
    criteria: Vec<Criterion>,
    sort: Vec<(SortKey, bool)>,
}

fn texts(value: &Value, kind: &str) -> Result<Vec<String>, String> {
    let one = |v: &Value| {
        v.as_str().map(str::to_string).ok_or_else(|| {
            format!("criteria of type '{kind}' must be a string or a list of strings")
        })
    };
    match value {
        Value::Array(values) => values.iter().map(one).collect(),
        v => Ok(vec![one(v)?]),
    }
}

fn bound(
    range: &serde_json::Map<String, Value>,
    key: &str,
    flag: &str,
    default_inclusive: bool,
    kind: &str,
) -> Result<Option<(i64, bool)>, String> {
    let Some(value) = range.get(key).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let at = value
        .as_str()
        .and_then(crate::time::parse_us)
        .ok_or_else(|| format!("'{key}' of criteria '{kind}' is not a valid date: {value}"))?;
    let inclusive = match range.get(flag) {
        None | Some(Value::Null) => default_inclusive,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(format!(
                "'{flag}' of criteria '{kind}' must be a boolean: {v}"
            ));
        }
    };
    Ok(Some((at, inclusive)))
}

fn criterion(item: &Value) -> Result<Criterion, String> {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .ok_or("each criteria needs a string 'type'")?;
    let value = item
        .get("criteria")
        .ok_or_else(|| format!("criteria of type '{kind}' has no 'criteria'"))?;
    if let Some(field) = TextField::parse(kind) {
        return Ok(Criterion::Text(field, texts(value, kind)?));
    }
    if let Some(field) = DateField::parse(kind) {
        let range = value
            .as_object()
            .ok_or_else(|| format!("criteria of type '{kind}' must be an object with from/to"))?;
        return Ok(Criterion::Range {
            field,
            from: bound(range, "from", "fromInclusive", false, kind)?,
            to: bound(range, "to", "toInclusive", true, kind)?,
        });
    }
    Err(format!("unknown criteria type '{kind}'"))
}

fn sort_key(item: &Value) -> Result<(SortKey, bool), String> {
    let text = item.as_str().ok_or("sortBy must be a list of strings")?;
    let (name, desc) = match text.split_once(':') {
        None => (text, false),
        Some((name, "desc")) => (name, true),
        Some((name, "asc")) => (name, false),
        Some(_) => return Err(format!("invalid sort order in '{text}'")),
    };
    let key = match name {
        "id" => SortKey::Id,
        other => SortKey::Date(
            DateField::parse(other).ok_or_else(|| format!("cannot sort by '{other}'"))?,
        ),
    };
    Ok((key, desc))
}

impl Query {
    /// Parses the JSON text of `query`; the error is the message of the 400.
    pub fn parse(text: &str) -> Result<Query, String> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("query is not valid JSON: {e}"))?;
        let obj = v.as_object().ok_or("query must be a JSON object")?;
        let list = |key: &str| -> Result<&[Value], String> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(&[]),
                Some(Value::Array(items)) => Ok(items),
                Some(_) => Err(format!("'{key}' must be a list")),
            }
        };
        Ok(Query {
            criteria: list("criteria")?
                .iter()
                .map(criterion)
                .collect::<Result<_, _>>()?,
            sort: list("sortBy")?
                .iter()
                .map(sort_key)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether `r` meets every criterion.
    pub fn matches(&self, r: &ContentRequest) -> bool {
        self.criteria.iter().all(|c| match c {
            Criterion::Text(field, values) => values.iter().any(|v| v == field.of(r)),
            Criterion::Range { field, from, to } => {
                let Some(at) = field.of(r) else {
                    return false;
                };
                let after = match from {
                    None => true,
                    Some((from, true)) => at >= *from,
                    Some((from, false)) => at > *from,
                };
                let before = match to {
                    None => true,
                    Some((to, true)) => at <= *to,
                    Some((to, false)) => at < *to,
                };
                after && before
            }
        })
    }

    /// The shape of synchro's own listing, which the store answers from an
    /// index instead of a scan: sorted by `lastStateChange` ascending (then
    /// id), with at most a lower bound on it. Returns that bound and the
    /// query of the other criteria, which selects the indexed set; `None` for
    /// any other shape.
    pub fn change_window(&self) -> Option<(Option<(i64, bool)>, Query)> {
        let by_change = matches!(
            self.sort.as_slice(),
            [(SortKey::Date(DateField::LastStateChange), false)]
                | [
                    (SortKey::Date(DateField::LastStateChange), false),
                    (SortKey::Id, false)
                ]
        );
        if !by_change {
            return None;
        }
        let mut from = None;
        let mut rest = Vec::new();
        for c in &self.criteria {
            match c {
                Criterion::Range {
                    field: DateField::LastStateChange,
                    from: bound,
                    to: None,
                } if from.is_none() => from = Some(*bound),
                other => rest.push(other.clone()),
            }
        }
        Some((
            from.flatten(),
            Query {
                criteria: rest,
                sort: Vec::new(),
            },
        ))
    }

    /// A key naming the criteria, for caches of their matching set.
    pub fn criteria_key(&self) -> String {
        format!("{:?}", self.criteria)
    }

    /// Listing order: the sort keys (a missing date sorts first), then id
    /// ascending.
    pub fn compare(&self, a: &ContentRequest, b: &ContentRequest) -> Ordering {
        self.sort
            .iter()
            .map(|(key, desc)| {
                let o = match key {
                    SortKey::Id => a.id.cmp(&b.id),
                    SortKey::Date(field) => field.of(a).cmp(&field.of(b)),
                };
                if *desc { o.reverse() } else { o }
            })
            .find(|o| o.is_ne())
            .unwrap_or_else(|| a.id.cmp(&b.id))
    }
}
