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

/// `text` without whitespace outside strings. Works on bytes (UTF-8
/// continuation bytes are never ASCII, so no character is split) and jumps
/// through strings with `memchr`, since most of a payload's bytes are in
/// its strings.
fn compact_text(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' {
            // Copy the whole string, quotes included: find its closing quote.
            let mut end = i + 1;
            loop {
                if end >= bytes.len() {
                    end = bytes.len();
                    break;
                }
                match memchr::memchr2(b'"', b'\\', &bytes[end..]) {
                    Some(k) if bytes[end + k] == b'\\' => end += k + 2,
                    Some(k) => {
                        end += k + 1;
                        break;
                    }
                    None => {
                        end = bytes.len();
                        break;
                    }
                }
            }
            if let Some(o) = &mut out {
                o.extend_from_slice(&bytes[i..end]);
            }
            i = end;
        } else {
            if is_space(b) {
                out.get_or_insert_with(|| bytes[..i].to_vec());
            } else if let Some(o) = &mut out {
                o.push(b);
            }
            i += 1;
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

    #[test]
    fn pretty_printed_values_compact_to_serde_compact_text() {
        let values = [
            serde_json::json!({"a": "x\"y", "b\\": ["\\", "\\\"", " { } "], "c": {"d": null}}),
            serde_json::json!([1, 2.5, -3e10, true, false, null, "é ü 日本", "\u{1F600}"]),
            serde_json::json!({"summary": "tab\tnew\nline", "empty": {}, "list": []}),
            serde_json::json!("just a string with  spaces"),
        ];
        for v in values {
            let pretty = serde_json::to_string_pretty(&v).expect("json");
            let tight = serde_json::to_string(&v).expect("json");
            assert_eq!(compact(raw(&pretty)).get(), tight);
            assert_eq!(compact(raw(&tight)).get(), tight);
        }
    }
}
