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
    /// The registry, a server or Secrets Manager failed it: a 503 to retry when one was away
    /// or busy, else a 500 (see `api::error`).
    #[error(transparent)]
    Db(#[from] DbError),
}
