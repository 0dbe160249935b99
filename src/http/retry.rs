//! How long to wait before the next attempt.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use reqwest::header::HeaderMap;

/// Exponential back-off with full jitter: a random delay in
/// `[base/2, min(max, initial * 2^(attempt-1))]`. The jitter keeps many
/// sources that failed together from retrying together.
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

/// The wait the server asked for: `Retry-After` (seconds or HTTP date) or
/// `RateLimit-Reset` (Démarches Simplifiées: an absolute Unix epoch; a small
/// number is read as seconds from now, as in the IETF draft).
pub fn server_delay(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(v) = headers.get("retry-after").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = httpdate_parse(v) {
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    if let Some(n) = headers
        .get("ratelimit-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        // Anything before 2001 cannot be an epoch: it is a delta.
        if n < 1_000_000_000 {
            return Some(Duration::from_secs(n));
        }
        let at = UNIX_EPOCH + Duration::from_secs(n);
        return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
    }
    None
}

fn httpdate_parse(s: &str) -> Result<SystemTime, ()> {
    chrono::DateTime::parse_from_rfc2822(s)
        .map(|d| UNIX_EPOCH + Duration::from_secs(d.timestamp().max(0) as u64))
        .map_err(|_| ())
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

        let mut h = HeaderMap::new();
        h.insert("ratelimit-reset", HeaderValue::from_static("1700000012"));
        assert_eq!(server_delay(&h, now), Some(Duration::from_secs(12)));

        assert_eq!(server_delay(&HeaderMap::new(), now), None);
    }
}
