//! What creating a tenant answers when it does not create one.

use crate::{domain::FieldError, domain::Slug, pg::DbError, servers::NoRoom};

#[derive(Debug, thiserror::Error)]
pub enum CreateTenantError {
    #[error("invalid request")]
    Validation {
        message: String,
        details: Vec<FieldError>,
    },
    #[error("tenant with slug '{0}' already exists")]
    Conflict(Slug),
    /// A database, login or secret of the tenant's name exists but the registry did not make
    /// it: never adopted, never dropped.
    #[error("a {1} for slug '{0}' already exists outside the registry")]
    ExistsOutside(Slug, &'static str),
    /// The idempotency key was used before with another body.
    #[error("idempotency key reused with a different request")]
    IdempotencyMismatch,
    /// Another operation on the same tenant held it past the waiting time.
    #[error("tenant '{0}' is busy")]
    Busy(Slug),
    /// No server can take the tenant: the requested one is unknown, draining or full, or
    /// every open server is full.
    #[error("no server can take the tenant: {0:?}")]
    NoRoom(NoRoom),
    /// The registry, a server or Secrets Manager failed it (a lock wait that ran out: the server's row, held by
    /// concurrent placements): a 503 to retry when one was away
    /// or busy, else a 500 (see `api::error`).
    #[error(transparent)]
    Db(#[from] DbError),
}
