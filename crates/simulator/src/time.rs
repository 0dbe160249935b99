//! Timestamps as the simulated upstreams read and write them: RFC 3339
//! strings in, instants in µs since the epoch (UTC) inside, and Démarches
//! Simplifiées' Paris local time out.

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Europe::Paris;

/// Parses an RFC 3339 timestamp to µs since the epoch (UTC).
pub fn parse_us(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_micros())
}

/// Now, in µs since the epoch.
pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

/// Formats an instant the way Démarches Simplifiées does: Paris local time,
/// to the second, with its offset (`2024-03-01T11:15:42+01:00`).
pub fn format_paris(us: i64) -> String {
    DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .with_timezone(&Paris)
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// Formats µs since the epoch as RFC 3339 UTC with µs precision, as synchro
/// sends `updatedSince`.
#[cfg(test)]
pub fn format_us(us: i64) -> String {
    DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paris_time_follows_summer_time() {
        let winter = parse_us("2024-01-15T10:00:00Z").unwrap();
        let summer = parse_us("2024-07-15T10:00:00Z").unwrap();
        assert_eq!(format_paris(winter), "2024-01-15T11:00:00+01:00");
        assert_eq!(format_paris(summer), "2024-07-15T12:00:00+02:00");
        assert_eq!(parse_us(&format_paris(summer)), Some(summer));
    }

    #[test]
    fn summer_time_changes_at_one_utc_on_the_last_sundays_of_march_and_october() {
        let paris = |utc: &str| format_paris(parse_us(utc).unwrap());
        assert_eq!(paris("2024-03-31T00:59:59Z"), "2024-03-31T01:59:59+01:00");
        assert_eq!(paris("2024-03-31T01:00:00Z"), "2024-03-31T03:00:00+02:00");
        assert_eq!(paris("2024-10-27T00:59:59Z"), "2024-10-27T02:59:59+02:00");
        assert_eq!(paris("2024-10-27T01:00:00Z"), "2024-10-27T02:00:00+01:00");
    }

    #[test]
    fn format_round_trips() {
        let us = 1_709_288_142_123_456;
        assert_eq!(parse_us(&format_us(us)), Some(us));
    }
}
