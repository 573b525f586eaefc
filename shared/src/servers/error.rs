//! The errors of the servers' operations, for the API to map to statuses.

use crate::{domain::FieldError, pg::DbError};

#[derive(Debug, thiserror::Error)]
pub enum ServersError {
    #[error("invalid request")]
    Validation {
        message: String,
        details: Vec<FieldError>,
    },
    #[error("server not found")]
    NotFound(Option<String>),
    #[error("{0}")]
    Conflict(String),
    /// The server (or its secret) cannot be used: the field at fault and the reason, for the
    /// client (it names no host and no secret value).
    #[error("{message}")]
    Refused {
        field: &'static str,
        message: String,
    },
    /// The server to register did not answer (the cause, for the log only: it names hosts).
    #[error("server unreachable")]
    Unreachable(String),
    /// The registry (or Secrets Manager) did not answer.
    #[error("database unavailable")]
    Unavailable(String),
    #[error("unexpected error")]
    Unexpected(#[source] anyhow::Error),
}

impl From<DbError> for ServersError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) | DbError::TimedOut(m) => ServersError::Unavailable(m),
            // A lock wait that ran out (the server's row, held by a placement): retry.
            e if e.is_lock_timeout() => ServersError::Unavailable(e.to_string()),
            other => ServersError::Unexpected(anyhow::Error::new(other)),
        }
    }
}
