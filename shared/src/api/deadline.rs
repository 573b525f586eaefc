//! How a handler runs its operation: within the invocation's deadline, once more when the
//! cached connection was found dead, and answered as a response either way.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use super::{error::ApiError, response::ApiResponse};
use crate::{database::Database, invocation::Invocation};

/// Answers a handler's request: the response its operation built, or the operation's error
/// as the contract's body. Every handler is `respond(async { … }).await`.
pub(super) async fn respond(
    op: impl Future<Output = Result<ApiResponse, ApiError>>,
) -> ApiResponse {
    op.await.into()
}

/// A failure faster than this found the cached connection already dead (a frozen sandbox, a
/// terminated backend, a failover): worth one more try on a new connection. A slower one is
/// a server that did not answer in time, and is answered at once.
const FAST_FAILURE: Duration = Duration::from_secs(1);

/// Runs an operation within the invocation's deadline. Past it, the operation is abandoned
/// (its locks go with its connection, see `locks`) and the client gets a 503.
pub(super) async fn within_deadline<T, E>(
    db: &Database,
    inv: &Invocation,
    op: impl Future<Output = Result<T, E>>,
) -> Result<T, ApiError>
where
    ApiError: From<E>,
{
    match tokio::time::timeout_at(inv.deadline.into(), op).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(_) => {
            db.reset_system().await;
            Err(ApiError::unavailable(
                "the operation did not finish before the invocation's deadline",
            ))
        }
    }
}

/// Runs an idempotent operation within the deadline; if it failed fast because the cached
/// connection was dead, runs it once more on a new connection.
pub(super) async fn retry_once<T, E, F, Fut>(
    db: &Database,
    inv: &Invocation,
    op: F,
    unavailable: impl Fn(&E) -> bool,
) -> Result<T, ApiError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    ApiError: From<E>,
{
    let attempt = async {
        let started = Instant::now();
        match op().await {
            Err(e) if unavailable(&e) && started.elapsed() < FAST_FAILURE => {
                db.reset_system().await;
                op().await
            }
            other => other,
        }
    };
    within_deadline(db, inv, attempt).await
}
