//! Google's own way of saying "slow down": quota exhaustion comes as 403
//! with reason `rateLimitExceeded` or `userRateLimitExceeded`, a reason to
//! back off, not bad credentials. Declared to the shared client as this
//! kind's [`Quirks`].

use reqwest::StatusCode;

use crate::http::Quirks;

/// Google APIs' rate-limit answers.
#[derive(Debug)]
pub(super) struct GoogleQuirks;

impl Quirks for GoogleQuirks {
    fn rate_limited(&self, status: StatusCode, body: &[u8]) -> bool {
        is_rate_limit_403(status, body)
    }
}

/// Google answers quota exhaustion with 403 and reason `rateLimitExceeded`
/// or `userRateLimitExceeded`: a reason to back off, not bad credentials.
fn is_rate_limit_403(status: StatusCode, body: &[u8]) -> bool {
    if status != StatusCode::FORBIDDEN {
        return false;
    }
    #[derive(serde::Deserialize)]
    struct Body {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        #[serde(default)]
        errors: Vec<Reason>,
    }
    #[derive(serde::Deserialize)]
    struct Reason {
        #[serde(default)]
        reason: String,
    }
    serde_json::from_slice::<Body>(body).is_ok_and(|b| {
        b.error
            .errors
            .iter()
            .any(|e| e.reason == "rateLimitExceeded" || e.reason == "userRateLimitExceeded")
    })
}
