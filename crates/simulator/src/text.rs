//! Responses assembled from JSON text instead of `serde_json::Value` trees.
//!
//! Each simulated record keeps its serialised JSON ([`Cached`]), rendered
//! the first time it is served (or when seeded) and dropped when the record
//! changes, so serving a page is mostly concatenation. The envelopes are
//! written with the key order `serde_json::Value` gives (sorted: the
//! `preserve_order` feature is off), so a body is byte for byte what
//! serialising the equivalent `Value` gives; tests in each simulator check it.

use std::sync::{Arc, OnceLock};

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// A record's JSON text, rendered once.
#[derive(Clone, Debug, Default)]
pub struct Cached(OnceLock<Arc<str>>);

impl Cached {
    /// The text, rendering it with `render` if it is not cached yet.
    pub fn get_or_render(&self, render: impl FnOnce() -> Value) -> Arc<str> {
        self.0
            .get_or_init(|| Arc::from(render().to_string()))
            .clone()
    }

    /// Forgets the text (the record changed).
    pub fn clear(&mut self) {
        self.0 = OnceLock::new();
    }
}

/// A JSON object `{"key":value,...}` from keys and values already encoded
/// as JSON text, keys sorted as `serde_json::Map` sorts them.
pub fn object(mut fields: Vec<(&str, String)>) -> String {
    fields.sort_by(|a, b| a.0.cmp(b.0));
    let len = fields
        .iter()
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum::<usize>()
        + 2;
    let mut out = String::with_capacity(len);
    out.push('{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str_literal(&mut out, key);
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    out
}

/// A JSON array from items already encoded as JSON text.
pub fn array<S: AsRef<str>>(items: &[S]) -> String {
    let len = items.iter().map(|s| s.as_ref().len() + 1).sum::<usize>() + 2;
    let mut out = String::with_capacity(len);
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item.as_ref());
    }
    out.push(']');
    out
}

/// `value` encoded as JSON text.
pub fn encode(value: &Value) -> String {
    value.to_string()
}

/// Appends `s` as a JSON string literal, escaped as serde_json escapes it.
pub fn push_str_literal(out: &mut String, s: &str) {
    out.push_str(&Value::from(s).to_string());
}

/// A JSON response, as `axum::Json` sends it (same content type).
pub fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_and_arrays_match_serde_json() {
        let items = [json!({"b": 1, "a": "x\"y"}), json!([1, null, "é"])];
        let texts: Vec<String> = items.iter().map(encode).collect();
        let built = object(vec![
            ("total", encode(&json!(3))),
            ("items", array(&texts)),
            ("afterItems", encode(&json!("tab\there"))),
            ("Z", encode(&json!(null))),
        ]);
        let value = json!({
            "total": 3,
            "items": items,
            "afterItems": "tab\there",
            "Z": null,
        });
        assert_eq!(built, value.to_string());
        assert_eq!(array::<String>(&[]), "[]");
        assert_eq!(object(Vec::new()), "{}");
    }

    #[test]
    fn a_cached_text_is_rendered_once_until_cleared() {
        let mut cached = Cached::default();
        let mut calls = 0;
        let first = cached.get_or_render(|| {
            calls += 1;
            json!({"n": 1})
        });
        let again = cached.get_or_render(|| json!({"n": 2}));
        assert_eq!((&*first, &*again, calls), ("{\"n\":1}", "{\"n\":1}", 1));
        cached.clear();
        assert_eq!(&*cached.get_or_render(|| json!({"n": 2})), "{\"n\":2}");
    }
}
