//! The JSON shapes of GraphQL responses, read leniently: only what synchro
//! relies on is required, and its absence is a clear "malformed" error.

use serde::Deserialize;

use crate::sources::SourceError;

/// `{ data, errors }` as the API answers with HTTP 200.
#[derive(Debug, Deserialize)]
pub struct GraphqlResponse {
    #[serde(default)]
    data: Option<serde_json::Value>,
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
    pub nodes: Vec<serde_json::Value>,
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
        let value = self
            .data
            .as_ref()
            .and_then(|d| d.get("demarche"))
            .and_then(|d| d.get(field))
            .ok_or_else(|| SourceError::Malformed {
                url: self.url.clone(),
                reason: format!("`data.demarche.{field}` is missing"),
            })?;
        Connection::deserialize(value).map_err(|e| SourceError::Malformed {
            url: self.url.clone(),
            reason: format!("`data.demarche.{field}`: {e}"),
        })
    }
}
