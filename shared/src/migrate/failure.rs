//! How a migration run's failure counts: a connection lost on the way is *unavailable* (retry
//! later, never undo anything over it), a lock that stayed taken is *busy*, anything else is
//! the migrations' own failure.

use tokio_postgres::error::SqlState;

use crate::pg::{error_chain, is_unavailable, DbError};

/// True when refinery failed because a statement gave up waiting for a lock (SQLSTATE 55P03:
/// `lock_timeout`, or a concurrent index build's wait for older transactions).
pub(crate) fn is_lock_timeout(e: &refinery::Error) -> bool {
    pg_error(e)
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|c| *c == SqlState::LOCK_NOT_AVAILABLE)
}

/// The PostgreSQL error behind a refinery error, however deep refinery wrapped it (its reads
/// of the history wrap their own errors twice).
pub(crate) fn pg_error(e: &refinery::Error) -> Option<&tokio_postgres::Error> {
    match e.kind() {
        refinery::error::Kind::Connection(_, source) => source
            .downcast_ref::<tokio_postgres::Error>()
            .or_else(|| source.downcast_ref::<refinery::Error>().and_then(pg_error)),
        _ => None,
    }
}

/// A refinery failure as what it is: a connection lost on the way is *unavailable* (the
/// migrations did not fail: retry later, never undo anything over it); anything else is the
/// migrations' own failure.
pub(crate) fn refinery_failure(e: &refinery::Error, what: &str) -> DbError {
    let pg = pg_error(e);
    if let Some(pg) = pg {
        if is_unavailable(pg) {
            return DbError::Unavailable(format!("{what}: {}", error_chain(pg)));
        }
    }
    // refinery says only "db error": the server's own message (it names objects, never hosts).
    match pg.and_then(tokio_postgres::Error::as_db_error) {
        Some(d) => DbError::Other(anyhow::anyhow!(
            "{what}: {e}: {} ({})",
            d.message(),
            d.code().code()
        )),
        None => DbError::Other(anyhow::anyhow!("{what}: {e}")),
    }
}

/// How a migration run ended, as a [`DbError`]: a lock that stayed taken is
/// [`DbError::LockTimeout`] (busy: try later), a lost connection unavailable, anything else
/// the migrations' own failure.
pub(crate) fn run_failure(e: &RunFailure, what: &str) -> DbError {
    match e {
        RunFailure::Database(pg) => {
            if is_unavailable(pg) {
                DbError::Unavailable(error_chain(pg))
            } else {
                DbError::Other(anyhow::anyhow!("{what}: {pg}"))
            }
        }
        RunFailure::LockTimeout { attempts, last } => {
            DbError::LockTimeout(lock_timeout_message(*attempts, last))
        }
        RunFailure::Refinery(e) => refinery_failure(e, what),
    }
}

/// What a migration that kept waiting for a lock says: which one, and how many attempts.
pub(crate) fn lock_timeout_message(attempts: u32, last: &refinery::Error) -> String {
    let which = match last.kind() {
        refinery::error::Kind::Connection(msg, _) => msg
            .split_whitespace()
            .find(|w| w.starts_with('V'))
            .map(|v| format!("migration {v}"))
            .unwrap_or_else(|| "a migration".into()),
        _ => "a migration".into(),
    };
    format!(
        "{which} gave up waiting for a lock on the tenant's tables ({attempts} attempt{}, each \
         within the lock timeout); the next run tries again",
        if attempts == 1 { "" } else { "s" }
    )
}

/// Why a migration run ended without applying everything.
#[derive(Debug)]
pub(crate) enum RunFailure {
    /// The session could not be set up.
    Database(tokio_postgres::Error),
    /// A migration kept waiting for a lock past the lock timeout, every attempt.
    LockTimeout {
        attempts: u32,
        last: refinery::Error,
    },
    /// Anything else refinery reported (a failing migration, a diverged history, a lost
    /// connection).
    Refinery(refinery::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_lost_during_migrations_is_unavailable_not_a_failed_migration() {
        use refinery::error::WrapMigrationError;
        let lost: refinery::Error = Err::<(), _>(tokio_postgres::Error::__private_api_timeout())
            .migration_err("error applying migration V3__x", None)
            .unwrap_err();
        assert!(refinery_failure(&lost, "tenant migrations failed").is_unavailable());
        let failed: refinery::Error = Err::<(), _>(std::io::Error::other("syntax error"))
            .migration_err("error applying migration V3__x", None)
            .unwrap_err();
        assert!(!refinery_failure(&failed, "tenant migrations failed").is_unavailable());
    }
}
