//! Why an operation could not talk to PostgreSQL the way it needed to, in classes that decide
//! what happens next: *unavailable* (the connection or the server failed us: retry later,
//! never undo anything over it), a lock that stayed taken, work that ran out of time, and
//! everything else (a statement's own error, or ours).

use tokio_postgres::error::SqlState;

use super::transport;

/// Why an operation could not talk to PostgreSQL the way it needed to.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// PostgreSQL or Secrets Manager cannot be reached, did not answer in time, or refuses us
    /// right now. The message is for the log only: it may name hosts.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Any other error from PostgreSQL or the client: a statement's own error (a constraint,
    /// a failed migration), a query that found no row, a value that did not convert.
    #[error(transparent)]
    Postgres(tokio_postgres::Error),
    /// A migration kept waiting for a lock past its lock timeout, every attempt (the message
    /// names the migration and the attempts; no host).
    #[error("{0}")]
    LockTimeout(String),
    /// Work that ran out of the time it was given (a tenant's migrations past their limit): it
    /// was cancelled on the server. Nothing failed; the next attempt goes on from there.
    #[error("{0}")]
    TimedOut(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(refused) = transport::insecure_auth(&e) {
            // A server that cannot be used now, as one that is away: its requests are 503s,
            // it is passed over by placement, its tenants deferred (never a failed migration
            // that trips a run's brake). The log says why; it must be reconfigured.
            return DbError::Unavailable(refused.to_string());
        }
        if is_unavailable(&e) {
            DbError::Unavailable(error_chain(&e))
        } else {
            DbError::Postgres(e)
        }
    }
}

impl DbError {
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            DbError::Postgres(e) => e.code(),
            _ => None,
        }
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable(_))
    }

    /// Work cut at its time limit (see [`DbError::TimedOut`]).
    pub fn is_timed_out(&self) -> bool {
        matches!(self, DbError::TimedOut(_))
    }

    /// Nothing is wrong with the work itself: the server could not be reached, a lock stayed
    /// taken, or the time ran out. Trying again later is the answer, and nothing may be undone
    /// over it.
    pub fn is_transient(&self) -> bool {
        self.is_unavailable() || self.is_lock_timeout() || self.is_timed_out()
    }

    /// A wait for a row or table lock that ran out (SQLSTATE 55P03): the resource is busy.
    pub fn is_lock_timeout(&self) -> bool {
        matches!(self, DbError::LockTimeout(_))
            || self.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
    }
}

/// True for errors that mean "the server is not there for us right now": no connection,
/// connection lost or timed out, shutting down, too many connections, authentication refused.
/// A statement's own error, a query that found no row or a value that did not convert is not:
/// retrying it elsewhere would fail the same way.
pub(crate) fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => is_connection_failure(e),
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("28") // invalid authorization
                || c.starts_with("53") // insufficient resources (too many connections, ...)
                || c == "57P01" // admin shutdown
                || c == "57P02" // crash shutdown
                || c == "57P03" // cannot connect now
        }
    }
}

/// The client-side errors of tokio-postgres that are about the connection, not a statement.
/// Its error kinds are private; their messages are fixed strings (checked by the tests against
/// the real failures: a refused connection, a closed one, a timeout).
fn is_connection_failure(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || matches!(
            e.to_string().as_str(),
            "error communicating with the server"
                | "error connecting to server"
                | "error performing TLS handshake"
                | "timeout waiting for server"
                | "authentication error"
                | "unexpected message from server"
                | "error parsing response from server"
        )
}

/// The error and its sources on one line, for logs.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_timeout_is_unavailable() {
        let timeout = tokio_postgres::Error::__private_api_timeout();
        assert!(is_unavailable(&timeout), "{timeout}");
    }
}
