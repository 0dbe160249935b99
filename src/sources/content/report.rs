//! Contentor's import states (`PUT {endpoint}/content/{id}/import`): the
//! write-back the reporter sends from the outbox, one attempt per report
//! through the shared client. What an answer means is Contentor's: 5xx,
//! 429, 408, 401 and 403 (a token being rotated) are worth retrying later,
//! any other refusal never will be.

use std::time::Duration;

use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::http::{HttpClient, HttpError, Response};
use crate::sources::{Delivery, Outgoing, WriteBack};

/// Longest wait for one report: the upstream must not hold us up.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The import-state reports of one Contentor account.
pub(super) struct ImportStates {
    pub(super) base: url::Url,
    pub(super) token: Secret,
}

#[async_trait::async_trait]
impl WriteBack for ImportStates {
    fn url(&self) -> &url::Url {
        &self.base
    }

    async fn send(
        &self,
        http: &HttpClient,
        report: Outgoing<'_>,
        cancel: &CancellationToken,
    ) -> Result<Response, HttpError> {
        let mut url = self.base.clone();
        if let Ok(mut s) = url.path_segments_mut() {
            s.pop_if_empty()
                .push("content")
                .push(report.record_id)
                .push("import");
        }
        let mut body = serde_json::json!({ "importState": report.state });
        if let Some(m) = report.message {
            body["message"] = serde_json::Value::String(m.to_string());
        }
        let sent = http
            .send(
                |c| {
                    c.put(url.clone())
                        .bearer_auth(self.token.expose())
                        .timeout(TIMEOUT)
                        .json(&body)
                },
                cancel,
            )
            .await;
        sent.map(|(resp, _)| resp)
    }

    fn judge(&self, answer: Result<Response, HttpError>) -> Delivery {
        let resp = match answer {
            Ok(resp) => resp,
            // The upstream would redirect the same way next time.
            Err(e @ HttpError::Redirect { .. }) => return Delivery::Refused(e.to_string()),
            Err(HttpError::Transport { url, message, .. }) if message.starts_with("timed out") => {
                return Delivery::Retry(format!("{url}: no answer within {TIMEOUT:?}"));
            }
            Err(HttpError::Transport { url, message, .. }) => {
                return Delivery::Retry(format!("{url}: {message}"));
            }
            Err(e) => return Delivery::Retry(e.to_string()),
        };
        let status = resp.status;
        if status.is_success() {
            return Delivery::Sent;
        }
        let error = format!("{}: HTTP {}: {}", resp.url, status.as_u16(), resp.excerpt());
        let transient = status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::UNAUTHORIZED
            || status == StatusCode::FORBIDDEN;
        if transient {
            Delivery::Retry(error)
        } else {
            Delivery::Refused(error)
        }
    }
}
