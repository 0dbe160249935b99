//! The JSON shapes of GraphQL responses, read leniently: only what synchro
//! relies on is required, and its absence is a clear "malformed" error.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::model::Payload;
use crate::sources::SourceError;

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
    /// The connections, when the body was read in one typed pass
    /// ([`GraphqlResponse::parse`]); `data` is then empty.
    #[serde(skip)]
    typed: HashMap<&'static str, Connection>,
}

/// The same body with synchro's connections decoded in the same pass: the
/// common case, a well-formed answer, then reads every byte once. Any
/// other answer is read the lenient way, field by field.
#[derive(Deserialize)]
struct Typed {
    #[serde(default)]
    data: Option<TypedData>,
    #[serde(default)]
    errors: Option<Vec<GraphqlError>>,
}

#[derive(Deserialize)]
struct TypedData {
    #[serde(default)]
    demarche: Option<TypedDemarche>,
}

#[derive(Deserialize)]
struct TypedDemarche {
    #[serde(default)]
    dossiers: Option<Connection>,
    #[serde(default, rename = "pendingDeletedDossiers")]
    pending: Option<Connection>,
    #[serde(default, rename = "deletedDossiers")]
    deleted: Option<Connection>,
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
    /// Reads a body: in one typed pass when it is well formed, else field by
    /// field (the errors then name the field that is wrong).
    pub fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        let Ok(typed) = serde_json::from_slice::<Typed>(body) else {
            return serde_json::from_slice(body);
        };
        let mut connections = HashMap::new();
        if let Some(d) = typed.data.and_then(|d| d.demarche) {
            for (field, conn) in [
                ("dossiers", d.dossiers),
                ("pendingDeletedDossiers", d.pending),
                ("deletedDossiers", d.deleted),
            ] {
                if let Some(conn) = conn {
                    connections.insert(field, conn);
                }
            }
        }
        Ok(GraphqlResponse {
            data: None,
            errors: typed.errors,
            url: String::new(),
            typed: connections,
        })
    }

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

    /// `data.demarche.<field>` as a connection (each one is taken once).
    pub fn connection(&mut self, field: &str) -> Result<Connection, SourceError> {
        if let Some(conn) = self.typed.remove(field) {
            return Ok(conn);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn conn_text(c: &Connection) -> String {
        let nodes: Vec<&str> = c.nodes.iter().map(|n| n.get()).collect();
        format!(
            "{} {:?} {}",
            c.page_info.has_next_page,
            c.page_info.end_cursor,
            nodes.join("|")
        )
    }

    /// A well-formed body is read in one typed pass and gives the same
    /// connections as the field-by-field reading; anything else still gets
    /// the field-by-field errors.
    #[test]
    fn the_typed_pass_reads_what_the_lenient_one_reads() {
        let body = br#"{"data":{"demarche":{"number":1,"dossiers":{"pageInfo":{"hasNextPage":true,"endCursor":"c1"},"nodes":[{"number":2,"x":[1, {"y":"z"}]},{"number":3}]},"pendingDeletedDossiers":null,"deletedDossiers":{"pageInfo":{"hasNextPage":false},"nodes":[]}}}}"#;
        let mut typed = GraphqlResponse::parse(body).expect("typed");
        assert!(!typed.typed.is_empty(), "read in the typed pass");
        let mut lenient: GraphqlResponse = serde_json::from_slice(body).expect("lenient");
        for field in ["dossiers", "deletedDossiers"] {
            let a = typed.connection(field).expect("typed connection");
            let b = lenient.connection(field).expect("lenient connection");
            assert_eq!(conn_text(&a), conn_text(&b), "{field}");
        }
        for field in ["pendingDeletedDossiers", "nothing"] {
            assert!(typed.connection(field).is_err(), "{field}");
            assert!(lenient.connection(field).is_err(), "{field}");
        }

        let broken = br#"{"data":{"demarche":{"dossiers":{"nodes":[]}}},"errors":[{"message":"m","extensions":{"code":"timeout"}}]}"#;
        let mut r = GraphqlResponse::parse(broken).expect("lenient reading");
        assert!(r.error().is_some_and(|e| e.has_code("timeout")));
        let e = r.connection("dossiers").expect_err("no pageInfo");
        assert!(e.to_string().contains("`data.demarche.dossiers`"), "{e}");
        assert!(GraphqlResponse::parse(b"{\"data\":").is_err());
    }
}
