//! Timestamps. Upstreams send RFC 3339 strings in various offsets and
//! precisions (DS: Paris time to the second; Contentor: ms); synchro keeps the
//! string as received for export and compares instants in µs UTC.

use chrono::{DateTime, TimeZone, Utc};

/// Parses an RFC 3339 timestamp to µs since the epoch (UTC).
pub fn parse_us(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc).timestamp_micros())
}

/// Formats µs since the epoch as RFC 3339 UTC with µs precision.
pub fn format_us(us: i64) -> String {
    match Utc.timestamp_micros(us).single() {
        Some(d) => d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        None => "1970-01-01T00:00:00.000000Z".to_string(),
    }
}

/// Now, in µs since the epoch.
pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets_to_the_same_instant() {
        assert_eq!(
            parse_us("2024-03-01T11:15:42+01:00"),
            parse_us("2024-03-01T10:15:42Z")
        );
        assert_eq!(
            parse_us("2024-03-01T10:15:42.123Z"),
            Some(1_709_288_142_123_000)
        );
        assert_eq!(parse_us("yesterday"), None);
    }

    #[test]
    fn format_round_trips() {
        let us = 1_709_288_142_123_456;
        assert_eq!(parse_us(&format_us(us)), Some(us));
    }
}
