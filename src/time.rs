//! Timestamps. Upstreams send RFC 3339 strings in various offsets and
//! precisions (DS: Paris time to the second; Contentor: ms); synchro keeps the
//! string as received for export and compares instants in µs UTC.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeZone, Utc, Weekday};

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

/// Formats an instant the way Démarches Simplifiées does: Paris local time,
/// to the second, with its offset (`2024-03-01T11:15:42+01:00`).
pub fn format_paris(us: i64) -> String {
    let utc = match Utc.timestamp_micros(us).single() {
        Some(d) => d,
        None => return "1970-01-01T01:00:00+01:00".to_string(),
    };
    let offset_h = if is_eu_summer_time(utc) { 2 } else { 1 };
    match FixedOffset::east_opt(offset_h * 3600) {
        Some(tz) => utc
            .with_timezone(&tz)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        None => utc.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

/// EU summer time: from the last Sunday of March 01:00 UTC to the last Sunday
/// of October 01:00 UTC.
fn is_eu_summer_time(utc: DateTime<Utc>) -> bool {
    let year = utc.year();
    let start = last_sunday(year, 3)
        .and_hms_opt(1, 0, 0)
        .map(|d| d.and_utc());
    let end = last_sunday(year, 10)
        .and_hms_opt(1, 0, 0)
        .map(|d| d.and_utc());
    match (start, end) {
        (Some(s), Some(e)) => utc >= s && utc < e,
        _ => false,
    }
}

fn last_sunday(year: i32, month: u32) -> NaiveDate {
    let mut d = NaiveDate::from_ymd_opt(year, month + 1, 1)
        .and_then(|d| d.pred_opt())
        .unwrap_or_default();
    while d.weekday() != Weekday::Sun {
        d = d.pred_opt().unwrap_or_default();
    }
    d
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
    fn paris_time_follows_summer_time() {
        let winter = parse_us("2024-01-15T10:00:00Z").unwrap();
        let summer = parse_us("2024-07-15T10:00:00Z").unwrap();
        assert_eq!(format_paris(winter), "2024-01-15T11:00:00+01:00");
        assert_eq!(format_paris(summer), "2024-07-15T12:00:00+02:00");
        assert_eq!(parse_us(&format_paris(summer)), Some(summer));
    }

    #[test]
    fn format_round_trips() {
        let us = 1_709_288_142_123_456;
        assert_eq!(parse_us(&format_us(us)), Some(us));
    }
}
