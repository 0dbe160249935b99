//! Why the store failed, the same type for every backend. Messages name
//! the database, never a secret.

use crate::model::SourceKey;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bad database URL {0:?}: expected sqlite://PATH")]
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
    #[error("cannot open the database {path}: {source}")]
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
}

impl StoreError {
    /// Whether the database itself failed (disk full, I/O, a corrupt file),
    /// as opposed to a lock held elsewhere, a lost lease or bad data.
    pub(super) fn is_database_failure(&self) -> bool {
        let StoreError::Sql(e) = self else {
            return false;
        };
        match e {
            // I/O error, corrupt image, disk full, not a database: what
            // leaves a connection's transaction state in doubt.
            sqlx::Error::Database(d) => d
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| matches!(c & 0xff, 10 | 11 | 13 | 26)),
            sqlx::Error::Io(_) => true,
            // sqlx's own view of a transaction SQLite already ended.
            other => other.to_string().contains("transaction depth"),
        }
    }
}

/// Adds what an operator should check to the SQLite errors that mean
/// "the machine, not synchro": a full disk or file-size limit, a lock held
/// by another process, a read-only file.
fn describe_sql(e: &sqlx::Error) -> String {
    let code = match e {
        sqlx::Error::Database(d) => d.code().and_then(|c| c.parse::<i32>().ok()),
        _ => None,
    };
    // Primary result code: the low byte of the extended one.
    let hint = match code.map(|c| c & 0xff) {
        Some(13) => Some("the disk is full"),
        Some(10) => Some("a write failed: disk full, quota or file-size limit?"),
        Some(5) | Some(6) => Some("the database is locked by another process"),
        Some(8) => Some("the database file or its folder is read-only"),
        _ => None,
    };
    match hint {
        Some(h) => format!("{h} ({e})"),
        None => e.to_string(),
    }
}
