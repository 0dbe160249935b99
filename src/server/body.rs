//! Reading a request body with a size and a time limit. Handlers call it
//! only after the caller is authenticated: a stranger's body is never read,
//! so it costs neither memory nor a slot held open while it trickles in.

use std::time::Duration;

use axum::body::Body;
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

/// Why a body was not read whole.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum BodyError {
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the body did not arrive within {0:?}")]
    TooSlow(Duration),
    #[error("the body could not be read: {0}")]
    Broken(String),
}

impl BodyError {
    /// The answer the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooSlow(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Broken(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// The size and time a body may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Bytes read at most; one more and the body is refused.
    pub max_bytes: usize,
    /// Time the whole body may take to arrive.
    pub timeout: Duration,
}

/// Reads the whole body, refusing at once one whose declared length is over
/// the limit, and stopping at the first byte over it or at the deadline.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limits: BodyLimits,
) -> Result<Bytes, BodyError> {
    let too_large = BodyError::TooLarge {
        limit: limits.max_bytes,
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return Err(too_large);
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
            if buf.len() + chunk.len() > limits.max_bytes {
                return Err(too_large);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(limits.timeout, read)
        .await
        .unwrap_or(Err(BodyError::TooSlow(limits.timeout)))
}
