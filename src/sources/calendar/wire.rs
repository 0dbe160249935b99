//! The JSON shapes of Google Calendar `events.list`, read leniently: only the
//! fields synchro relies on are required.

use serde::Deserialize;

use crate::model::Payload;
use crate::sources::payload;

/// One page of `events.list`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsPage {
    /// Kept raw: stored as they came; [`EventKey`] is all synchro reads.
    #[serde(default)]
    pub items: Vec<Payload>,
    #[serde(default)]
    pub next_page_token: Option<String>,
    #[serde(default)]
    pub next_sync_token: Option<String>,
}

/// What synchro reads of an event.
#[derive(Debug, Deserialize)]
pub struct EventKey {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub updated: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
}

impl EventKey {
    /// The keys of an event's text, and whether the text has whitespace to
    /// compact away: one pass over the text ([`payload::scan`]), or serde
    /// when the scan leaves the text to it.
    pub fn read(text: &str) -> Result<(EventKey, bool), serde_json::Error> {
        let Some(scan) = payload::scan(text, ["id", "updated", "status"]) else {
            return Ok((serde_json::from_str(text)?, true));
        };
        let field = |raw: Option<&str>| -> Result<Option<String>, serde_json::Error> {
            raw.map_or(Ok(None), serde_json::from_str)
        };
        let key = EventKey {
            id: field(scan.values[0])?,
            updated: field(scan.values[1])?,
            status: field(scan.values[2])?,
        };
        Ok((key, scan.spaced))
    }
}

/// `{"error": {"code", "message", "errors": [{"domain", "reason", "message"}]}}`.
#[derive(Debug, Deserialize, Default)]
pub struct ErrorBody {
    #[serde(default)]
    pub error: ErrorInner,
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct ErrorInner {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub errors: Vec<ErrorItem>,
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct ErrorItem {
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

impl ErrorBody {
    /// Parses an error body; anything unreadable gives an empty one.
    pub fn parse(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// Whether the API says the sync token cannot be used any more
    /// (400 "Invalid sync token value" — 410 is recognised by its status).
    pub fn invalid_sync_token(&self) -> bool {
        let says = |m: &str| m.to_ascii_lowercase().contains("invalid sync token");
        says(&self.error.message) || self.error.errors.iter().any(|e| says(&e.message))
    }

    /// A one-line summary for errors: message and reasons, no values.
    pub fn summary(&self) -> String {
        let reasons: Vec<&str> = self
            .error
            .errors
            .iter()
            .map(|e| e.reason.as_str())
            .filter(|r| !r.is_empty())
            .collect();
        match (self.error.message.is_empty(), reasons.is_empty()) {
            (true, true) => "no error details".to_string(),
            (false, true) => self.error.message.clone(),
            (true, false) => reasons.join(", "),
            (false, false) => format!("{} ({})", self.error.message, reasons.join(", ")),
        }
    }
}
