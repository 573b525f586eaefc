//! A connection whose every call has a client-side deadline ([`Conn`]), and what becomes of
//! it when a call is abandoned or misses its deadline: the statement cancelled on the server
//! (where that matters) and the socket closed at once.

use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use postgres_native_tls::MakeTlsConnector;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_postgres::Client;
use tracing::{debug, warn};

use super::{
    transport::{self, GuardedTls},
    DbError,
};

/// A connection whose every call has a client-side deadline. A call that misses it, or fails
/// at the connection level, discards the connection (see the module documentation); every
/// later call on it fails at once as unavailable.
pub struct Conn {
    pub(super) client: Client,
    /// The task that drives the socket: aborting it closes the socket.
    pub(super) task: AbortHandle,
    /// The same task, to wait for its end in [`Conn::close`].
    pub(super) ended: std::sync::Mutex<Option<JoinHandle<()>>>,
    pub(super) broken: AtomicBool,
    /// Calls started and not finished; above 0 when the connection is dropped, a call was
    /// abandoned mid-way.
    pub(super) in_flight: AtomicUsize,
    /// Where cancel requests go.
    pub(super) canceller: Canceller,
    /// What an abandoned call leaves behind (see [`Abandon`]).
    pub(super) on_abandon: Abandon,
    pub(super) query_timeout: Duration,
    pub(super) lock_timeout: Duration,
    pub(super) long_timeout: Duration,
}

/// What happens to a connection when a call on it is abandoned (its caller's deadline) or
/// misses its own deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Abandon {
    /// The statement is cancelled on the server and the connection discarded: work we gave
    /// up (DDL on a server, a migration) must not go on and commit behind our back.
    Cancel,
    /// The registry's shared connection: an abandoned call's statement (short, and holding
    /// nothing that outlives it) finishes on its own and the session stays, with the advisory
    /// locks it holds for the rest of the operation (a migrate-all's fleet lock). A call that
    /// misses its own deadline still discards it (the server does not answer).
    Keep,
}

/// What a cancel request needs: the session's key, and the server's address and TLS.
#[derive(Clone)]
pub(super) struct Canceller {
    pub(super) token: tokio_postgres::CancelToken,
    pub(super) host: String,
    pub(super) port: u16,
    /// `None` with `DB_SSLMODE=disable`.
    pub(super) tls: Option<MakeTlsConnector>,
}

impl Canceller {
    /// Asks the server to cancel what the session is running, within `limit`. True when the
    /// request was delivered.
    async fn cancel(&self, limit: Duration) -> bool {
        let sent = async {
            let tcp = transport::connect_tcp(&self.host, self.port, limit)
                .await
                .ok()?;
            let result = match &self.tls {
                Some(tls) => {
                    let tls = GuardedTls::new(tls, &self.host).ok()?;
                    self.token.cancel_query_raw(tcp, tls).await
                }
                None => {
                    self.token
                        .cancel_query_raw(tcp, tokio_postgres::NoTls)
                        .await
                }
            };
            result.ok()
        };
        matches!(tokio::time::timeout(limit, sent).await, Ok(Some(())))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // An answer is still due (a migration cut short, say): cancel the statement (on a
            // connection that cancels) and close the socket now rather than wait for it.
            self.abandon();
            self.task.abort();
        }
    }
}

/// A call in flight on a [`Conn`]. Dropped before it was finished (its caller gave up, at a
/// deadline), the statement is cancelled on the server and the connection discarded: work we
/// abandoned must not go on, and commit, behind our back.
pub(super) struct InFlight<'c> {
    pub(super) conn: &'c Conn,
    pub(super) finished: bool,
}

impl<'c> InFlight<'c> {
    pub(super) fn start(conn: &'c Conn) -> InFlight<'c> {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            conn,
            finished: false,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !self.finished {
            self.conn.abandon();
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("usable", &self.is_usable())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// False once discarded, or when the server closed it.
    pub fn is_usable(&self) -> bool {
        !self.broken.load(Ordering::Acquire) && !self.client.is_closed()
    }

    /// Closes the socket now and marks the connection unusable. Safe to call from `Drop`.
    pub fn discard(&self) {
        if !self.broken.swap(true, Ordering::AcqRel) {
            debug!("discarding a database connection");
        }
        self.task.abort();
    }

    /// Asks the server to cancel what this session is running, within a query timeout.
    async fn cancel_running(&self) {
        if !self.canceller.cancel(self.query_timeout).await {
            warn!("could not send a cancel request; the server ends the statement when it sees the session closed");
        }
    }

    /// A call was abandoned mid-way: its statement is cancelled on the server (from a task of
    /// its own, as this runs in a `Drop`) and the connection discarded.
    pub(super) fn abandon(&self) {
        if self.broken.load(Ordering::Acquire) || self.on_abandon == Abandon::Keep {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let canceller = self.canceller.clone();
            let limit = self.query_timeout;
            runtime.spawn(async move {
                if !canceller.cancel(limit).await {
                    warn!("could not cancel an abandoned statement; the server ends it at its statement timeout");
                }
            });
        }
        self.discard();
    }

    /// Closes the connection and waits until the server has ended its session (see
    /// [`crate::pg::transport`]), at most [`transport::CLOSE_WAIT`] and a little. True when it
    /// did: the backend no longer exists. A connection that cannot close cleanly is discarded.
    pub(crate) async fn close(self) -> bool {
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner()).take();
        let usable = self.is_usable();
        let abort = self.task.clone();
        // Dropping the client sends Terminate; the task then shuts the socket and reads until
        // the server's end of file.
        drop(self);
        let Some(ended) = ended.filter(|_| usable) else {
            abort.abort();
            return false;
        };
        let limit = transport::CLOSE_WAIT + Duration::from_millis(500);
        match tokio::time::timeout(limit, ended).await {
            Ok(_) => true,
            Err(_) => {
                abort.abort();
                false
            }
        }
    }

    /// Makes this the registry's shared connection: an abandoned call leaves it as it is (see
    /// [`Abandon::Keep`]).
    pub(crate) fn keep_on_abandon(&mut self) {
        self.on_abandon = Abandon::Keep;
    }

    /// Hands the client to `work` (a migration run, which needs the session to itself) until
    /// `until`. Work that misses the deadline is cancelled on the server and `None` returned.
    /// The session is left open: once the cancel took effect, [`Conn::close`] ends it and
    /// waits for its backend to be gone (a server's budget counts it until then).
    pub(crate) async fn exclusive<T>(
        &mut self,
        until: Instant,
        work: impl AsyncFnOnce(&mut Client) -> T,
    ) -> Result<Option<T>, DbError> {
        if !self.is_usable() {
            return Err(DbError::Unavailable("connection discarded".into()));
        }
        let limit = until.saturating_duration_since(Instant::now());
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let outcome = tokio::time::timeout(limit, work(&mut self.client)).await;
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        match outcome {
            Ok(result) => Ok(Some(result)),
            Err(_) => {
                self.cancel_running().await;
                Ok(None)
            }
        }
    }
}
