//! Upstream objects as stored: the JSON text the upstream sent, compacted,
//! never decoded into a tree and re-encoded. A sync reads only the few
//! fields it needs (id, version, status) from that text; the payload goes to
//! SQLite as it came, which saves an allocation per JSON node and a
//! serialisation per record.

use std::borrow::Cow;

use serde_json::value::RawValue;

use crate::model::Payload;

/// The same object without insignificant whitespace, so that an export line
/// stays one line whatever the upstream's formatting (Google pretty-prints
/// its answers). Already compact text, the common case, is returned as is.
pub(crate) fn compact(raw: Payload) -> Payload {
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

/// What one pass over an object's text found: the raw JSON text of the
/// wanted top-level members, and whether the text has whitespace outside
/// strings (so [`compact`] has work to do).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Scan<'a, const N: usize> {
    pub values: [Option<&'a str>; N],
    pub spaced: bool,
}

/// Reads the top-level members `keys` of the JSON object `text` in one
/// pass, without building anything: what a connector reads of a record it
/// otherwise stores as text. `text` must be valid JSON (a `RawValue` is).
/// `None` when it is not an object, or when a decoder could read it
/// differently (an escaped key, a wanted key twice): callers then decode
/// with serde, which has the last word on such text.
pub(crate) fn scan<'a, const N: usize>(text: &'a str, keys: [&str; N]) -> Option<Scan<'a, N>> {
    let bytes = text.as_bytes();
    let mut values: [Option<&'a str>; N] = [None; N];
    let mut spaced = false;
    let mut depth = 0usize;
    let mut expect_key = false;
    // The wanted member whose value is being read, and where it starts.
    let mut current: Option<(usize, usize)> = None;
    let mut i = 0;
    let close =
        |values: &mut [Option<&'a str>; N], current: &mut Option<(usize, usize)>, end: usize| {
            if let Some((k, start)) = current.take() {
                values[k] = Some(text[start..end].trim_end_matches(|c| is_space(c as u8)));
            }
        };
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'"' => {
                if depth == 0 {
                    return None;
                }
                let end = string_end(bytes, i);
                if depth == 1 && expect_key {
                    let key = &text[i + 1..end.saturating_sub(1).max(i + 1)];
                    if key.contains('\\') {
                        return None;
                    }
                    if let Some(k) = keys.iter().position(|w| *w == key) {
                        if values[k].is_some() {
                            return None;
                        }
                        // Marked as seen now; the value is set when it ends.
                        values[k] = Some("");
                        current = Some((k, end));
                    }
                    expect_key = false;
                }
                i = end;
                continue;
            }
            b':' if depth == 1 => {
                if let Some((k, _)) = current {
                    let mut start = i + 1;
                    while start < bytes.len() && is_space(bytes[start]) {
                        start += 1;
                    }
                    current = Some((k, start));
                }
            }
            b'{' | b'[' => {
                if depth == 0 && b != b'{' {
                    return None;
                }
                depth += 1;
                if depth == 1 {
                    expect_key = true;
                }
            }
            b'}' | b']' => {
                if depth == 1 {
                    close(&mut values, &mut current, i);
                }
                depth = depth.checked_sub(1)?;
            }
            b',' if depth == 1 => {
                close(&mut values, &mut current, i);
                expect_key = true;
            }
            _ if is_space(b) => spaced = true,
            _ if depth == 0 => return None,
            _ => {}
        }
        i += 1;
    }
    if depth != 0 || current.is_some() {
        return None;
    }
    Some(Scan { values, spaced })
}

/// Index just after the closing quote of the string opening at `start`.
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut end = start + 1;
    loop {
        if end >= bytes.len() {
            return bytes.len();
        }
        match memchr::memchr2(b'"', b'\\', &bytes[end..]) {
            Some(k) if bytes[end + k] == b'\\' => end += k + 2,
            Some(k) => return end + k + 1,
            None => return bytes.len(),
        }
    }
}

/// The text of a JSON string value found by [`scan`] (quotes included, as
/// the scan returns it): borrowed when it holds no escape, decoded by serde
/// when it does. `None` when the value is not a string.
pub(crate) fn str_value(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// [`compact`] when a [`scan`] said the text has whitespace to remove.
pub(crate) fn compact_scanned(raw: Payload, spaced: bool) -> Payload {
    if spaced { compact(raw) } else { raw }
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

    #[test]
    fn scan_reads_top_level_members_like_serde() {
        let text = r#"{"id":"a\"b","n":{"id":"inner","x":[1,{"updated":2}]},"updated":"2024-01-01T00:00:00Z","e":[],"status":null}"#;
        let s = scan(text, ["id", "updated", "status", "missing"]).expect("an object");
        assert_eq!(
            s.values,
            [
                Some(r#""a\"b""#),
                Some(r#""2024-01-01T00:00:00Z""#),
                Some("null"),
                None
            ]
        );
        assert!(!s.spaced);
        let pretty = "{\n  \"kind\" : \"x y\",\n  \"id\": 42 ,\n  \"z\": { \"id\": 1 }\n}\n";
        let s = scan(pretty, ["id", "kind"]).expect("an object");
        assert_eq!(s.values, [Some("42"), Some(r#""x y""#)]);
        assert!(s.spaced);
        assert_eq!(scan("{}", ["id"]).expect("empty").values, [None]);
        // What serde might read differently is left to serde.
        assert_eq!(scan(r#"{"id":1,"id":2}"#, ["id"]), None);
        assert_eq!(scan(r#"{"i\u0064":1}"#, ["id"]), None);
        assert_eq!(scan("[1,2]", ["id"]), None);
        assert_eq!(scan("\"text\"", ["id"]), None);
        assert_eq!(scan("12", ["id"]), None);
        // A key that only appears nested, or as a value, is not a member.
        let s = scan(r#"{"a":"id","b":{"id":3}}"#, ["id"]).expect("an object");
        assert_eq!(s.values, [None]);
    }

    #[test]
    fn scanned_values_decode_as_serde_decodes_the_object() {
        #[derive(serde::Deserialize, PartialEq, Debug)]
        struct Keys {
            id: Option<String>,
            updated: Option<String>,
            n: Option<i64>,
        }
        let texts = [
            r#"{"id":"x","updated":"2024-01-01T00:00:00Z","n":3}"#,
            "{ \"n\" : -7 , \"other\" : [ { } ] , \"id\" : \"é \\u00e9 \\\" q\" }",
            r#"{"updated":null}"#,
        ];
        for text in texts {
            let serde: Keys = serde_json::from_str(text).expect("valid");
            let s = scan(text, ["id", "updated", "n"]).expect("an object");
            fn get<T: serde::de::DeserializeOwned>(
                v: Option<&str>,
            ) -> Result<Option<T>, serde_json::Error> {
                v.map_or(Ok(None), serde_json::from_str)
            }
            let scanned = Keys {
                id: get(s.values[0]).expect("id"),
                updated: get(s.values[1]).expect("updated"),
                n: get(s.values[2]).expect("n"),
            };
            assert_eq!(scanned, serde, "{text}");
            assert_eq!(s.spaced, compact_text(text) != text, "{text}");
        }
    }
}
