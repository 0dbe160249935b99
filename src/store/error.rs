//! Why the store failed, the same type for every backend. Messages name
//! the database, never a secret.

use crate::model::SourceKey;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bad database URL {0:?}: expected sqlite://PATH or postgres://USER@HOST[:PORT]/DB")]
    BadUrl(String),
    /// The database file is absent and the command must not create it.
    #[error(
        "the database {path} does not exist: check storage.database (a relative path is taken \
         from the config file's folder) and --config; this command never creates it"
    )]
    Missing { path: String },
    /// A read-only open found migrations that differ from this binary's.
    #[error("cannot read the database {path}: {reason}")]
    Schema { path: String, reason: String },
    #[error("cannot create the database folder {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the database {path}: {}", describe_sql(.source))]
    Open { path: String, source: sqlx::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {}", describe_sql(.0))]
    Sql(#[from] sqlx::Error),
    #[error("writing output failed: {0}")]
    Write(std::io::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the database is closed")]
    Closed,
    /// The run's lease moved to another run (this one was paused or cut off
    /// past its expiry): the commit was rolled back, nothing of it stored.
    /// A run holds the source: the operation would race with it.
    #[error("{0}")]
    Busy(String),
    #[error("lost the lease of {key} (epoch {epoch}) to another run; this commit was rolled back")]
    LeaseLost { key: SourceKey, epoch: i64 },
    /// A change-feed reader cannot continue from its position: changes it
    /// has not seen left no row behind (tombstones purged after
    /// `[storage] tombstone_retention`, a forgotten source), or the
    /// position is not one of this database's.
    #[error(
        "resync needed: position {since} cannot be continued ({}); start again from a full \
         export (every line carries its seq) or from 0",
        if *.since > *.last_seq {
            format!("this database's last change is {last_seq}: a position from another database or a restored backup")
        } else {
            format!("changes up to {purged_through} were purged before this reader saw them")
        }
    )]
    ResyncNeeded {
        since: i64,
        purged_through: i64,
        last_seq: i64,
    },
}

impl StoreError {
    /// `forget` met a source whose lease a live run holds.
    pub(super) fn forget_busy(key: &SourceKey, pid: Option<i64>, host: Option<String>) -> Self {
        StoreError::Busy(format!(
            "{key} is being synced now by pid {} on {}: stop that run (reload the daemon with \
             the source removed) and forget it then",
            pid.unwrap_or(0),
            host.unwrap_or_default()
        ))
    }

    /// Whether the database itself failed (disk full, I/O, a corrupt file,
    /// the server gone), as opposed to a lock held elsewhere, a lost lease
    /// or bad data.
    pub(super) fn is_database_failure(&self) -> bool {
        let StoreError::Sql(e) = self else {
            return false;
        };
        if let Some(state) = sqlstate(e) {
            // Insufficient resources, system error, internal error,
            // connection exception, operator intervention (shutdown,
            // pg_terminate_backend).
            return ["53", "58", "XX", "08", "57"]
                .iter()
                .any(|c| state.starts_with(c));
        }
        match e {
            // I/O error, corrupt image, disk full, not a database: what
            // leaves a connection's transaction state in doubt.
            sqlx::Error::Database(d) => d
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| matches!(c & 0xff, 10 | 11 | 13 | 26)),
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
            // sqlx's own view of a transaction SQLite already ended.
            other => other.to_string().contains("transaction depth"),
        }
    }
}

/// The SQLSTATE of a Postgres error (`None` for other databases' errors).
fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .map(|pg| pg.code().to_string()),
        _ => None,
    }
}

/// Adds what an operator should check to the errors that mean "the
/// machine or the server, not synchro": a full disk or file-size limit, a
/// lock held by another process, a read-only file, a database that does
/// not exist, a refused password, a server that went away.
fn describe_sql(e: &sqlx::Error) -> String {
    let hint = match sqlstate(e) {
        Some(state) => postgres_hint(&state),
        None => sqlite_hint(e),
    };
    let text = e.to_string();
    let hint = match hint {
        // pg_hba.conf has a `hostssl` line for us, not a `host` one.
        Some(_) if text.contains("no encryption") => Some(
            "the server accepts only TLS connections from here: add sslmode=verify-full (or require) to storage.database",
        ),
        other => other,
    };
    let hint = hint.or(match e {
        // rustls reports a refused certificate as an I/O error.
        sqlx::Error::Io(_) if text.contains("certificate") => Some(
            "the database server's TLS certificate was refused: sslrootcert must name the CA that signed it, and with sslmode=verify-full the URL's host must be a name the certificate names",
        ),
        sqlx::Error::Io(_) => Some("cannot reach the database server: is it running, and is storage.database's host and port right?"),
        sqlx::Error::Tls(_) => Some("the TLS connection to the database server failed: check sslmode and the server's certificate"),
        sqlx::Error::PoolTimedOut => Some("no database connection came free in time: the server is unreachable or storage.pool_size is too small for the load"),
        _ => None,
    });
    match hint {
        Some(h) => format!("{h} ({e})"),
        None => e.to_string(),
    }
}

fn sqlite_hint(e: &sqlx::Error) -> Option<&'static str> {
    let code = match e {
        sqlx::Error::Database(d) => d.code().and_then(|c| c.parse::<i32>().ok()),
        _ => None,
    };
    // Primary result code: the low byte of the extended one.
    match code.map(|c| c & 0xff) {
        Some(13) => Some("the disk is full"),
        Some(10) => Some("a write failed: disk full, quota or file-size limit?"),
        Some(5) | Some(6) => Some("the database is locked by another process"),
        Some(8) => Some("the database file or its folder is read-only"),
        _ => None,
    }
}

fn postgres_hint(state: &str) -> Option<&'static str> {
    Some(match state {
        "3D000" => "the database does not exist: create it (createdb) or fix storage.database",
        "28P01" | "28000" => {
            "the server refused the login: check the user in storage.database and storage.password"
        }
        "53100" => "the database server's disk is full",
        "53300" => {
            "the server has no connection left: lower storage.pool_size or raise max_connections"
        }
        "25006" => "the database is read-only (a standby?): point storage.database at the primary",
        "57P01" | "57P02" | "57P03" => {
            "the server ended the connection (shutdown, restart or pg_terminate_backend)"
        }
        "42501" => "the user lacks a privilege on the database or schema",
        s if s.starts_with("08") => "the connection to the database server failed",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::describe_sql;

    #[test]
    fn a_refused_server_certificate_is_told_apart_from_an_unreachable_server() {
        let refused = sqlx::Error::Io(std::io::Error::other(
            "invalid peer certificate: UnknownIssuer",
        ));
        let said = describe_sql(&refused);
        assert!(said.contains("TLS certificate was refused"), "{said}");
        assert!(said.contains("UnknownIssuer"), "the cause is kept: {said}");
        let down = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(describe_sql(&down).contains("cannot reach the database server"));
    }
}
