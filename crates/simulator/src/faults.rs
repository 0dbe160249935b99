//! Injected upstream failures: a FIFO of faults, each consumed by one HTTP
//! request, and the response each one produces.

use std::collections::VecDeque;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One injected failure, applied to one upstream HTTP request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 500 with a plain-text body.
    Http500,
    /// HTTP 429, plain-text body, `RateLimit-Remaining: 0` and
    /// `RateLimit-Reset: <epoch now + n>`; `Retry-After: n` only when given.
    Http429 {
        /// Seconds to announce in `Retry-After` (and in the reset, default 1).
        retry_after_secs: Option<u64>,
    },
    /// HTTP 429 like [`Fault::Http429`] but with `RateLimit-Reset` and
    /// `Retry-After` sent verbatim, as a broken or hostile upstream may
    /// (`18446744073709551615`, `-1`, `soon`).
    Http429Raw {
        /// The `RateLimit-Reset` value.
        ratelimit_reset: String,
        /// The `Retry-After` value, if any.
        retry_after: Option<String>,
    },
    /// HTTP 503 maintenance page `{"error":"maintenance"}`.
    Http503 {
        /// Seconds to announce in `Retry-After`.
        retry_after_secs: Option<u64>,
    },
    /// Answers normally after this delay.
    Slow(Duration),
    /// HTTP 403 rate limit (Google Calendar: reason `rateLimitExceeded`;
    /// Démarches Simplifiées: plain-text 403).
    RateLimit403,
    /// HTTP 200, JSON content type, truncated body.
    MalformedJson,
    /// HTTP 200 `{"data":null,"errors":[{message, extensions.code}]}`.
    GraphqlError {
        /// Error message.
        message: String,
        /// `extensions.code` (`timeout`, `bad_request`...).
        code: String,
    },
    /// Answers normally (to fault a later request only).
    Pass,
    /// HTTP 200 whose body breaks off after a few bytes: the connection is
    /// aborted mid-response, as a reset or a dying proxy does.
    Reset,
}

/// The pending faults, in injection order.
#[derive(Debug, Default)]
pub struct FaultQueue {
    queue: VecDeque<(Fault, usize)>,
}

impl FaultQueue {
    /// Queues `fault` for the next `times` requests (after those already queued).
    pub fn push(&mut self, fault: Fault, times: usize) {
        if times > 0 {
            self.queue.push_back((fault, times));
        }
    }

    /// Drops every pending fault.
    pub fn clear(&mut self) {
        self.queue.clear();
    }

    /// The fault for the request being served, if any.
    pub fn next(&mut self) -> Option<Fault> {
        let (fault, left) = self.queue.front_mut()?;
        let fault = fault.clone();
        *left -= 1;
        if *left == 0 {
            self.queue.pop_front();
        }
        Some(fault)
    }
}

fn header(name: &'static str, value: impl ToString) -> (HeaderName, Option<HeaderValue>) {
    (
        HeaderName::from_static(name),
        HeaderValue::from_str(&value.to_string()).ok(),
    )
}

fn with_headers(
    status: StatusCode,
    headers: Vec<(HeaderName, Option<HeaderValue>)>,
    body: String,
) -> Response {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let Some(value) = value {
            map.insert(name, value);
        }
    }
    (status, map, body).into_response()
}

/// Applies `fault`: `Some(response)` replaces the normal answer, `None` lets
/// the request be served (possibly after a delay).
pub async fn apply(fault: &Fault) -> Option<Response> {
    let json = "application/json; charset=utf-8";
    let text = "text/plain; charset=utf-8";
    match fault {
        Fault::Pass => None,
        Fault::Slow(delay) => {
            tokio::time::sleep(*delay).await;
            None
        }
        Fault::Http500 => Some(with_headers(
            StatusCode::INTERNAL_SERVER_ERROR,
            vec![header("content-type", text)],
            "Internal Server Error".into(),
        )),
        Fault::Http429 { retry_after_secs } => {
            let reset = chrono::Utc::now().timestamp() + retry_after_secs.unwrap_or(1) as i64;
            let mut headers = vec![
                header("content-type", text),
                header("ratelimit-remaining", 0),
                header("ratelimit-reset", reset),
            ];
            if let Some(secs) = retry_after_secs {
                headers.push((
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&secs.to_string()).ok(),
                ));
            }
            Some(with_headers(
                StatusCode::TOO_MANY_REQUESTS,
                headers,
                "You have reached the limit of 400 requests per 60 seconds. Please retry later."
                    .into(),
            ))
        }
        Fault::Http429Raw {
            ratelimit_reset,
            retry_after,
        } => {
            let mut headers = vec![
                header("content-type", text),
                header("ratelimit-remaining", 0),
                header("ratelimit-reset", ratelimit_reset),
            ];
            if let Some(v) = retry_after {
                headers.push(header("retry-after", v));
            }
            Some(with_headers(
                StatusCode::TOO_MANY_REQUESTS,
                headers,
                "You have reached the limit of 400 requests per 60 seconds. Please retry later."
                    .into(),
            ))
        }
        Fault::Http503 { retry_after_secs } => {
            let mut headers = vec![header("content-type", json)];
            if let Some(secs) = retry_after_secs {
                headers.push((
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&secs.to_string()).ok(),
                ));
            }
            Some(with_headers(
                StatusCode::SERVICE_UNAVAILABLE,
                headers,
                r#"{"error":"maintenance"}"#.into(),
            ))
        }
        Fault::RateLimit403 => Some(with_headers(
            StatusCode::FORBIDDEN,
            vec![header("content-type", text)],
            "Rate Limit Exceeded".into(),
        )),
        Fault::MalformedJson => Some(with_headers(
            StatusCode::OK,
            vec![header("content-type", json)],
            r#"{"data":{"demarche":{"number":1,"dossiers":{"pageInfo":{"hasNextPage":tr"#.into(),
        )),
        Fault::Reset => {
            let chunks: Vec<Result<&'static str, std::io::Error>> = vec![
                Ok("{\"data\":"),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated connection reset",
                )),
            ];
            let mut resp =
                axum::body::Body::from_stream(futures::stream::iter(chunks)).into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(json));
            Some(resp)
        }
        Fault::GraphqlError { message, code } => {
            let body = serde_json::json!({
                "data": null,
                "errors": [{ "message": message, "extensions": { "code": code } }],
            });
            Some(with_headers(
                StatusCode::OK,
                vec![header("content-type", json)],
                body.to_string(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_consumed_in_order() {
        let mut q = FaultQueue::default();
        q.push(Fault::Http500, 2);
        q.push(Fault::Pass, 0);
        q.push(Fault::MalformedJson, 1);
        assert_eq!(q.next(), Some(Fault::Http500));
        assert_eq!(q.next(), Some(Fault::Http500));
        assert_eq!(q.next(), Some(Fault::MalformedJson));
        assert_eq!(q.next(), None);
        q.push(Fault::Pass, 3);
        q.clear();
        assert_eq!(q.next(), None);
    }

    #[tokio::test]
    async fn a_raw_429_sends_its_header_values_verbatim() {
        let fault = Fault::Http429Raw {
            ratelimit_reset: u64::MAX.to_string(),
            retry_after: Some("-1".into()),
        };
        let resp = apply(&fault).await.expect("a response");
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = resp.headers();
        assert_eq!(h["ratelimit-reset"], "18446744073709551615");
        assert_eq!(h["retry-after"], "-1");
    }
}
