//! How long to wait before the next attempt.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use reqwest::header::HeaderMap;

/// Exponential back-off with equal jitter: with `cap = min(max, initial *
/// 2^(attempt-1))`, a random delay in `[cap/2, cap]`. The jitter keeps many
/// sources that failed together from retrying together; the floor keeps
/// each wait at least half its step.
pub fn backoff_delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(max);
    let low = cap / 2;
    let spread = cap.saturating_sub(low).as_millis() as u64;
    let jitter = if spread == 0 {
        0
    } else {
        rand::rng().random_range(0..=spread)
    };
    low + Duration::from_millis(jitter)
}

/// The wait the server asked for: `Retry-After` (seconds or an HTTP date,
/// in any of the three forms RFC 9110 names) or
/// `RateLimit-Reset` (Démarches Simplifiées: an absolute Unix epoch; a small
/// number is read as seconds from now, as in the IETF draft).
///
/// These are upstream numbers: nothing here can panic or overflow. A value
/// too large for any clock (`18446744073709551615`, more digits than a
/// `u64` holds, a date in year 9999) saturates to [`Duration::MAX`], a wait
/// longer than any limit; a negative or unreadable one is ignored (the
/// caller backs off exponentially instead).
pub fn server_delay(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    if let Some(v) = headers.get("retry-after").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if let Some(secs) = seconds(v) {
            return Some(secs);
        }
        if let Ok(at) = httpdate::parse_http_date(v) {
            let at = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
            return Some(at.saturating_sub(since_epoch));
        }
    }
    if let Some(n) = headers
        .get("ratelimit-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| seconds(v.trim()))
    {
        // Anything before 2001 cannot be an epoch: it is a delta.
        if n < Duration::from_secs(1_000_000_000) {
            return Some(n);
        }
        return Some(n.saturating_sub(since_epoch));
    }
    None
}

/// A whole number of seconds; all digits but too many for a `u64` is a
/// wait longer than anything ([`Duration::MAX`]). Signs, fractions and
/// anything else are not a number of seconds.
fn seconds(v: &str) -> Option<Duration> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().map_or(Duration::MAX, Duration::from_secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn backoff_grows_and_is_capped() {
        let i = Duration::from_millis(100);
        let m = Duration::from_secs(2);
        for _ in 0..50 {
            let d1 = backoff_delay(1, i, m);
            assert!(d1 >= Duration::from_millis(50) && d1 <= i, "{d1:?}");
            let d5 = backoff_delay(5, i, m);
            assert!(d5 >= Duration::from_millis(800) && d5 <= Duration::from_millis(1600));
            let d30 = backoff_delay(30, i, m);
            assert!(d30 >= Duration::from_secs(1) && d30 <= m);
        }
    }

    #[test]
    fn reads_retry_after_in_both_forms_and_ratelimit_reset() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(server_delay(&h, now), Some(Duration::from_secs(7)));

        let mut h = HeaderMap::new();
        // 1_700_000_030 = Tue, 14 Nov 2023 22:13:50 GMT
        h.insert(
            "retry-after",
            HeaderValue::from_static("Tue, 14 Nov 2023 22:13:50 GMT"),
        );
        assert_eq!(server_delay(&h, now), Some(Duration::from_secs(30)));
        // The obsolete forms a recipient must still read (RFC 9110 §5.6.7).
        for old_form in [
            "Tuesday, 14-Nov-23 22:13:50 GMT",
            "Tue Nov 14 22:13:50 2023",
        ] {
            let mut h = HeaderMap::new();
            h.insert("retry-after", HeaderValue::from_static(old_form));
            assert_eq!(
                server_delay(&h, now),
                Some(Duration::from_secs(30)),
                "{old_form}"
            );
        }

        let mut h = HeaderMap::new();
        h.insert("ratelimit-reset", HeaderValue::from_static("1700000012"));
        assert_eq!(server_delay(&h, now), Some(Duration::from_secs(12)));

        assert_eq!(server_delay(&HeaderMap::new(), now), None);
    }

    fn delay(name: &'static str, value: &str) -> Option<Duration> {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).expect("header"));
        server_delay(&h, now)
    }

    #[test]
    fn absurd_numbers_saturate_instead_of_panicking() {
        let max = u64::MAX.to_string();
        assert_eq!(
            delay("ratelimit-reset", &max),
            Some(Duration::from_secs(u64::MAX - 1_700_000_000))
        );
        assert_eq!(
            delay("retry-after", &max),
            Some(Duration::from_secs(u64::MAX))
        );
        let beyond = "99999999999999999999999999";
        let huge = Duration::from_secs(u64::MAX - 2_000_000_000);
        assert!(delay("ratelimit-reset", beyond) > Some(huge));
        assert_eq!(delay("retry-after", beyond), Some(Duration::MAX));
        let far = delay("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT").expect("date");
        assert!(far > Duration::from_secs(250_000_000_000), "{far:?}");
        // A reset in the past is "now".
        assert_eq!(delay("ratelimit-reset", "1600000000"), Some(Duration::ZERO));
        assert_eq!(
            delay("retry-after", "Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn negative_and_garbage_values_are_ignored() {
        for v in [
            "-1",
            "-18446744073709551615",
            "1.5",
            "soon",
            "",
            "0x10",
            "1e9",
        ] {
            assert_eq!(delay("retry-after", v), None, "Retry-After: {v}");
            assert_eq!(delay("ratelimit-reset", v), None, "RateLimit-Reset: {v}");
        }
        // Not HTTP dates: before 1970, a wrong weekday, an offset.
        for v in [
            "Mon, 01 Jan 1900 00:00:00 GMT",
            "Mon, 14 Nov 2023 22:13:50 GMT",
            "Tue, 14 Nov 2023 22:13:50 +0000",
        ] {
            assert_eq!(delay("retry-after", v), None, "Retry-After: {v}");
        }
    }
}
