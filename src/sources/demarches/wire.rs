//! The JSON shapes of GraphQL responses, read leniently: only what synchro
//! relies on is required, and its absence is a clear "malformed" error.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::sources::SourceError;
use crate::sources::payload::Payload;

/// `{ data, errors }` as the API answers with HTTP 200.
#[derive(Debug, Deserialize)]
pub struct GraphqlResponse {
    /// `data.demarche`'s fields kept as text, read in the same pass as the
    /// body: a connection is decoded when asked for, and its nodes stay raw
    /// (they are stored as they came).
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    errors: Option<Vec<GraphqlError>>,
    #[serde(skip)]
    pub url: String,
}

#[derive(Debug, Deserialize)]
struct GraphqlError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    extensions: Option<serde_json::Value>,
}

impl GraphqlError {
    fn code(&self) -> Option<&str> {
        self.extensions.as_ref()?.get("code")?.as_str()
    }
}

/// All the errors of one response, summarised.
pub struct Errors {
    pub message: String,
    codes: Vec<String>,
    url: String,
}

impl Errors {
    pub fn has_code(&self, code: &str) -> bool {
        self.codes.iter().any(|c| c == code)
    }

    pub fn into_error(self) -> SourceError {
        SourceError::Upstream {
            url: self.url,
            message: self.message,
        }
    }
}

/// A connection: `{ pageInfo { hasNextPage endCursor }, nodes [...] }`.
#[derive(Debug, Deserialize)]
pub struct Connection {
    #[serde(rename = "pageInfo")]
    pub page_info: PageInfo,
    pub nodes: Vec<Payload>,
}

/// `data`: `{ demarche: { <field>: ... } }`, or `demarche: null`.
#[derive(Debug, Deserialize)]
struct Data {
    #[serde(default)]
    demarche: Option<HashMap<String, Box<RawValue>>>,
}

#[derive(Debug, Deserialize)]
pub struct PageInfo {
    #[serde(rename = "hasNextPage")]
    pub has_next_page: bool,
    #[serde(rename = "endCursor", default)]
    pub end_cursor: Option<String>,
}

impl GraphqlResponse {
    pub fn with_url(mut self, url: &str) -> Self {
        self.url = url.to_string();
        self
    }

    /// Any `errors` entry fails the page, even next to partial `data`.
    pub fn error(&self) -> Option<Errors> {
        let errors = self.errors.as_ref().filter(|e| !e.is_empty())?;
        let message = errors
            .iter()
            .map(|e| match e.code() {
                Some(code) => format!("{} ({code})", e.message),
                None => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ");
        Some(Errors {
            message: format!("GraphQL error: {message}"),
            codes: errors
                .iter()
                .filter_map(|e| e.code().map(str::to_string))
                .collect(),
            url: self.url.clone(),
        })
    }

    /// `data.demarche.<field>` as a connection.
    pub fn connection(&self, field: &str) -> Result<Connection, SourceError> {
        let malformed = |reason: String| SourceError::Malformed {
            url: self.url.clone(),
            reason,
        };
        let raw = self
            .data
            .as_ref()
            .and_then(|d| d.demarche.as_ref())
            .and_then(|d| d.get(field))
            .filter(|raw| raw.get() != "null")
            .ok_or_else(|| malformed(format!("`data.demarche.{field}` is missing")))?;
        serde_json::from_str(raw.get())
            .map_err(|e| malformed(format!("`data.demarche.{field}`: {e}")))
    }
}
