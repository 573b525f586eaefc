//! Reasons a report may show: SQLSTATEs and the server's messages (which name objects), our
//! own messages, and connection problems as fixed sentences; never hosts or credentials.

use tracing::error;

use crate::pg::{is_unavailable, DbError};

/// A PostgreSQL error as a report may show it: SQLSTATE and the server's message (which
/// names objects, never hosts or credentials); connection problems as one fixed sentence.
pub(crate) fn sanitize_pg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None if is_unavailable(e) => "tenant database unreachable".into(),
        None => "database error".into(),
    }
}

pub(crate) fn sanitize_db(e: &DbError) -> String {
    match e {
        DbError::Unavailable(detail) => {
            error!(cause = %detail, "tenant database unavailable");
            "tenant database unreachable or not answering".into()
        }
        DbError::Postgres(pg) => sanitize_pg(pg),
        DbError::LockTimeout(what) | DbError::TimedOut(what) => what.clone(),
        // Our own messages (the outermost context only): they name objects, never hosts.
        DbError::Other(e) => e.to_string(),
    }
}

pub(crate) fn sanitize_refinery(e: &refinery::Error) -> String {
    use refinery::error::Kind;
    match e.kind() {
        Kind::Connection(msg, _) => {
            let pg = crate::migrate::failure::pg_error(e);
            let detail = pg
                .map(sanitize_pg)
                .unwrap_or_else(|| "database error".into());
            // refinery's message names the migration ("error applying migration V3__x").
            let which = msg
                .split_whitespace()
                .find(|w| w.starts_with('V'))
                .unwrap_or("");
            if which.is_empty() {
                detail
            } else {
                format!("migration {which} failed: {detail}")
            }
        }
        Kind::DivergentVersion(applied, embedded) => {
            format!("applied migration {applied} differs from the released {embedded}")
        }
        Kind::MissingVersion(m) => {
            format!("applied migration {m} is not among the released migrations")
        }
        other => other.to_string(),
    }
}
