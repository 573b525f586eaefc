//! The error contract: every code with its status, the error as the client sees it, and the
//! one mapping from every operation error to it. `ApiResponse::ok` is here too, since a body
//! that cannot be serialized is answered as the opaque 500.

use serde::Serialize;
use serde_json::{json, Map};
use tracing::error;

use super::{body::MAX_BODY_BYTES, response::ApiResponse};
use crate::{
    domain::{FieldError, Slug},
    pg::DbError,
    servers::{NoRoom, ServersError},
    tenant::{lifecycle::LifecycleError, provision::CreateTenantError, registry::GetTenantError},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum ErrorCode {
    ValidationError,
    NotFound,
    Conflict,
    PayloadTooLarge,
    /// 422: an `Idempotency-Key` reused with a different body.
    IdempotencyKeyReused,
    ServiceUnavailable,
    /// 503: no open server has room for a new tenant (or not the requested one).
    NoCapacity,
    InternalError,
}

impl ErrorCode {
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::ValidationError => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::IdempotencyKeyReused => 422,
            ErrorCode::ServiceUnavailable | ErrorCode::NoCapacity => 503,
            ErrorCode::InternalError => 500,
        }
    }
}

/// An error as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Vec<FieldError>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn validation(message: impl Into<String>, details: Vec<FieldError>) -> Self {
        ApiError {
            code: ErrorCode::ValidationError,
            message: message.into(),
            details,
        }
    }

    pub(super) fn unavailable(log_detail: &str) -> Self {
        error!(cause = %log_detail, "dependency unavailable");
        ApiError::new(
            ErrorCode::ServiceUnavailable,
            "The tenant database service is temporarily unavailable; retry later",
        )
    }

    fn internal(cause: &anyhow::Error, message: &str) -> Self {
        error!(cause = %format!("{cause:#}"), "request failed");
        ApiError::new(ErrorCode::InternalError, message)
    }

    pub fn payload_too_large() -> Self {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("Request body exceeds {MAX_BODY_BYTES} bytes"),
        )
    }

    pub fn into_response(self) -> ApiResponse {
        let mut error = Map::new();
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        if !self.details.is_empty() {
            error.insert("details".into(), json!(self.details));
        }
        ApiResponse {
            status: self.code.status(),
            body: json!({ "error": error }),
        }
    }
}

// ---- answers ----------------------------------------------------------------------------

impl ApiResponse {
    pub(super) fn ok(status: u16, body: impl Serialize) -> ApiResponse {
        match serde_json::to_value(body) {
            Ok(body) => ApiResponse { status, body },
            Err(e) => ApiError::internal(&e.into(), "Unexpected error").into_response(),
        }
    }
}

impl From<Result<ApiResponse, ApiError>> for ApiResponse {
    fn from(r: Result<ApiResponse, ApiError>) -> Self {
        r.unwrap_or_else(ApiError::into_response)
    }
}

// ---- the one mapping from operation errors to the contract ---------------------------------

impl From<CreateTenantError> for ApiError {
    fn from(e: CreateTenantError) -> Self {
        match e {
            CreateTenantError::Validation { message, details } => {
                ApiError::validation(message, details)
            }
            CreateTenantError::Conflict(slug) | CreateTenantError::ExistsOutside(slug, _) => {
                ApiError::new(
                    ErrorCode::Conflict,
                    format!("Tenant with slug '{slug}' already exists"),
                )
            }
            CreateTenantError::IdempotencyMismatch => ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "Idempotency-Key was already used with a different request body",
            ),
            CreateTenantError::Busy(slug) => ApiError::new(
                ErrorCode::Conflict,
                format!("Tenant '{slug}' is being changed by another operation; retry later"),
            ),
            CreateTenantError::NoRoom(no_room) => no_room.into(),
            CreateTenantError::Db(e) => ApiError::failed(
                e,
                "Provisioning failed; it is safe to retry (what was made is undone now or by the \
                 next attempt)",
            ),
        }
    }
}

impl From<NoRoom> for ApiError {
    fn from(e: NoRoom) -> Self {
        match e {
            NoRoom::Unknown(name) => ApiError::validation(
                "Unknown server",
                vec![FieldError::new(
                    "server",
                    format!("no server named '{name}' is registered"),
                )],
            ),
            NoRoom::Draining(name) => ApiError::new(
                ErrorCode::Conflict,
                format!("Server '{name}' is draining and takes no new tenants"),
            ),
            NoRoom::Full(Some(name)) => ApiError::new(
                ErrorCode::NoCapacity,
                format!("Server '{name}' holds its max_tenants; it takes no new tenant"),
            ),
            NoRoom::Full(None) => ApiError::new(
                ErrorCode::NoCapacity,
                "No open server has room for a new tenant",
            ),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::failed(e, "Unexpected error")
    }
}

impl ApiError {
    /// What every operation's failure of a dependency answers: the registry, a server or
    /// Secrets Manager away, out of time, or busy (a lock wait that ran out) is a 503 to
    /// retry; anything else a 500 with `message` (the operation's own sentence). The cause
    /// goes to the log only.
    pub(super) fn failed(e: DbError, message: &str) -> ApiError {
        match e {
            DbError::Unavailable(m) | DbError::TimedOut(m) => ApiError::unavailable(&m),
            e if e.is_lock_timeout() => ApiError::unavailable(&e.to_string()),
            other => ApiError::internal(&anyhow::Error::new(other), message),
        }
    }
}

impl From<ServersError> for ApiError {
    fn from(e: ServersError) -> Self {
        match e {
            ServersError::Validation { message, details } => ApiError::validation(message, details),
            ServersError::NotFound(Some(name)) => {
                ApiError::new(ErrorCode::NotFound, format!("Server '{name}' not found"))
            }
            ServersError::NotFound(None) => ApiError::new(ErrorCode::NotFound, "Server not found"),
            ServersError::Conflict(message) => ApiError::new(ErrorCode::Conflict, message),
            ServersError::Refused { field, message } => ApiError::validation(
                message,
                vec![FieldError::new(
                    field,
                    "the server or its secret cannot be used",
                )],
            ),
            ServersError::Unreachable(m) => {
                error!(cause = %m, "the server to register cannot be reached");
                ApiError::new(
                    ErrorCode::ServiceUnavailable,
                    "The server could not be reached with the given host, port and secret; \
                     check them (and the network path), then retry",
                )
            }
            ServersError::Db(e) => e.into(),
        }
    }
}

impl From<GetTenantError> for ApiError {
    fn from(e: GetTenantError) -> Self {
        match e {
            GetTenantError::NotFound(slug) => not_found(slug.as_ref()),
            GetTenantError::Db(e) => e.into(),
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::NotFound(slug) => not_found(slug.as_ref()),
            LifecycleError::Conflict(_, message) => ApiError::new(ErrorCode::Conflict, message),
            LifecycleError::Busy(slug) => ApiError::new(
                ErrorCode::Conflict,
                format!("Tenant '{slug}' is being changed by another operation; retry later"),
            ),
            LifecycleError::Db(e) => ApiError::failed(
                e,
                "The operation failed; it is safe to retry (each step is repeatable)",
            ),
        }
    }
}

fn not_found(slug: Option<&Slug>) -> ApiError {
    match slug {
        Some(slug) => ApiError::new(ErrorCode::NotFound, format!("Tenant '{slug}' not found")),
        None => ApiError::new(ErrorCode::NotFound, "Tenant not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_statuses() {
        assert_eq!(ErrorCode::ValidationError.status(), 400);
        assert_eq!(ErrorCode::NotFound.status(), 404);
        assert_eq!(ErrorCode::Conflict.status(), 409);
        assert_eq!(ErrorCode::PayloadTooLarge.status(), 413);
        assert_eq!(ErrorCode::ServiceUnavailable.status(), 503);
        assert_eq!(ErrorCode::InternalError.status(), 500);
        let r = ApiError::new(ErrorCode::Conflict, "x").into_response();
        assert_eq!(
            r.body,
            json!({"error": {"code": "CONFLICT", "message": "x"}})
        );
    }

    #[test]
    fn unavailable_and_internal_errors_hide_their_cause() {
        let r = ApiError::from(CreateTenantError::Db(DbError::Unavailable(
            "connect to db.internal:5432 refused".into(),
        )))
        .into_response();
        assert_eq!(r.status, 503);
        assert!(!r.body.to_string().contains("db.internal"));
        let r = ApiError::from(CreateTenantError::Db(DbError::Other(anyhow::anyhow!(
            "syntax error at SELECT"
        ))))
        .into_response();
        assert_eq!(r.status, 500);
        assert!(!r.body.to_string().contains("SELECT"));
    }
}
