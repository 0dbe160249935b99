//! Upstream objects as stored: the JSON text the upstream sent, compacted,
//! never decoded into a tree and re-encoded. A sync reads only the few
//! fields it needs (id, version, status) from that text; the payload goes to
//! SQLite as it came, which saves an allocation per JSON node and a
//! serialisation per record.

use std::borrow::Cow;

use serde_json::value::RawValue;

/// An upstream object as stored.
pub type Payload = Box<RawValue>;

/// The same object without insignificant whitespace, so that an export line
/// stays one line whatever the upstream's formatting (Google pretty-prints
/// its answers). Already compact text, the common case, is returned as is.
pub fn compact(raw: Payload) -> Payload {
    match compact_text(raw.get()) {
        Cow::Borrowed(_) => raw,
        // Removing ASCII whitespace outside strings keeps valid JSON valid.
        Cow::Owned(text) => RawValue::from_string(text).unwrap_or(raw),
    }
}

/// A payload from a decoded value (records built by synchro itself, tests).
pub fn from_value(value: &serde_json::Value) -> Result<Payload, serde_json::Error> {
    serde_json::value::to_raw_value(value)
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// `text` without whitespace outside strings. Works on bytes: UTF-8
/// continuation bytes are never ASCII, so no character is split.
fn compact_text(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut in_string = false;
    let mut escaped = false;
    let mut out: Option<Vec<u8>> = None;
    for (i, &b) in bytes.iter().enumerate() {
        let keep = if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            true
        } else if b == b'"' {
            in_string = true;
            true
        } else {
            !is_space(b)
        };
        match (&mut out, keep) {
            (Some(o), true) => o.push(b),
            (None, false) => out = Some(bytes[..i].to_vec()),
            _ => {}
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(o) => String::from_utf8(o).map_or(Cow::Borrowed(text), Cow::Owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Payload {
        RawValue::from_string(text.to_string()).expect("valid JSON")
    }

    #[test]
    fn compact_text_is_kept_and_formatted_text_is_compacted() {
        let tight = r#"{"a":[1,2],"b":"x y"}"#;
        assert_eq!(compact(raw(tight)).get(), tight);
        let pretty = "{\n  \"kind\": \"calendar#event\",\n  \"s\": \"a \\\" b\\\\\",\n  \"n\": [ 1, 2 ],\n  \"é\" : \"\\t ü \"\n}\n";
        let c = compact(raw(pretty));
        assert_eq!(
            c.get(),
            "{\"kind\":\"calendar#event\",\"s\":\"a \\\" b\\\\\",\"n\":[1,2],\"é\":\"\\t ü \"}"
        );
        let before: serde_json::Value = serde_json::from_str(pretty).expect("json");
        let after: serde_json::Value = serde_json::from_str(c.get()).expect("json");
        assert_eq!(before, after, "same value");
    }
}
