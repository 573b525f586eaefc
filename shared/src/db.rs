//! Connections: TLS, deadlines, the sandbox's cached system connection, and the
//! classification of errors into "unavailable" (the connection or the server failed us) and
//! everything else (a statement's own error, or ours).
//!
//! Every wait has a deadline, enforced by the client whatever the server does (a server that
//! stops answering still accepts TCP and acknowledges packets, so only the client can tell):
//! - a whole connection (TCP, TLS, authentication) within `DB_CONNECT_TIMEOUT_SECS`;
//! - each registry statement and lock poll within `DB_QUERY_TIMEOUT_SECS`;
//! - each long statement (DDL, a migration) within the server's statement timeout plus
//!   `DB_QUERY_TIMEOUT_SECS`;
//! - TCP: keepalives after 10 s idle, every 5 s, 3 probes, and `tcp_user_timeout` 15 s, so
//!   that a network black hole ends even a long statement's wait.
//!
//! A connection that missed a deadline, or failed at the connection level, is *discarded*:
//! its socket is closed at once (so the server ends the session and releases its advisory
//! locks as soon as it notices) and the sandbox opens a new one on next use. So is one dropped
//! while a call is still in flight (a future abandoned at a deadline): tokio-postgres would
//! otherwise keep its socket open until the server answers. A migration that misses its limit
//! is also cancelled on the server (a cancel request) before its connection is discarded.
//!
//! The first use of the registry in a sandbox checks that its system migrations are applied,
//! and applies them (creating the system database if needed) when this release brings new
//! ones: a deploy needs no step before the functions serve.

use std::{
    fs,
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use native_tls::{Certificate, TlsConnector};
use postgres_native_tls::MakeTlsConnector;
use secrecy::ExposeSecret;
use tokio::{
    sync::{MappedMutexGuard, Mutex, MutexGuard},
    task::{AbortHandle, JoinHandle},
};
use tokio_postgres::{error::SqlState, types::ToSql, Client, Row, SimpleQueryMessage, ToStatement};
use tracing::{debug, warn};

use crate::{
    config::{Config, SslMode},
    credentials::{parse_secret, ConnectParams, CredentialProvider, CredentialsError},
    secrets::{Secrets, SecretsError},
    session::{self, Policy, RunFailure},
    transport::{self, Guarded, GuardedTls},
};

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

/// Secrets Manager unreachable is unavailable (503, retry); a secret that cannot be used is
/// the operator's to fix (500, the cause in the log): retrying would not help.
impl From<CredentialsError> for DbError {
    fn from(e: CredentialsError) -> Self {
        match e {
            CredentialsError::Unavailable(_) => DbError::Unavailable(e.to_string()),
            CredentialsError::Invalid(_) => DbError::Other(anyhow::Error::new(e)),
        }
    }
}

/// Secrets Manager is a dependency like PostgreSQL: unreachable is unavailable (503); a refusal
/// (permissions, a KMS key) is the operator's to fix (500, with the cause in the log).
impl From<SecretsError> for DbError {
    fn from(e: SecretsError) -> Self {
        match e {
            SecretsError::Unavailable(m) => DbError::Unavailable(m),
            refused => DbError::Other(anyhow::Error::new(refused)),
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

/// Builds the TLS connector once: the certificates of `DB_CA_BUNDLE` when it is set (and only
/// those: a database needs its own CA, not the web's), the system roots otherwise.
///
/// Loading the system roots costs OpenSSL tens of milliseconds (it parses the whole bundle),
/// which is why `DB_SSLMODE=disable` builds no connector at all.
fn tls_connector(config: &Config) -> anyhow::Result<MakeTlsConnector> {
    let mut builder = TlsConnector::builder();
    if let Some(path) = &config.ca_bundle {
        builder.disable_built_in_roots(true);
        let pem =
            fs::read(path).map_err(|e| anyhow::anyhow!("DB_CA_BUNDLE {}: {e}", path.display()))?;
        let certs = Certificate::stack_from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("DB_CA_BUNDLE {}: {e}", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("DB_CA_BUNDLE {} holds no certificate", path.display());
        }
        for cert in certs {
            builder.add_root_certificate(cert);
        }
    }
    Ok(MakeTlsConnector::new(builder.build()?))
}

/// A connection whose every call has a client-side deadline. A call that misses it, or fails
/// at the connection level, discards the connection (see the module documentation); every
/// later call on it fails at once as unavailable.
pub struct Conn {
    client: Client,
    /// The task that drives the socket: aborting it closes the socket.
    task: AbortHandle,
    /// The same task, to wait for its end in [`Conn::close`].
    ended: std::sync::Mutex<Option<JoinHandle<()>>>,
    broken: AtomicBool,
    /// Calls started and not finished; above 0 when the connection is dropped, a call was
    /// abandoned mid-way.
    in_flight: AtomicUsize,
    /// Where cancel requests go.
    canceller: Canceller,
    /// What an abandoned call leaves behind (see [`Abandon`]).
    on_abandon: Abandon,
    query_timeout: Duration,
    lock_timeout: Duration,
    long_timeout: Duration,
}

/// What happens to a connection when a call on it is abandoned (its caller's deadline) or
/// misses its own deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abandon {
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
struct Canceller {
    token: tokio_postgres::CancelToken,
    host: String,
    port: u16,
    /// `None` with `DB_SSLMODE=disable`.
    tls: Option<MakeTlsConnector>,
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
struct InFlight<'c> {
    conn: &'c Conn,
    finished: bool,
}

impl<'c> InFlight<'c> {
    fn start(conn: &'c Conn) -> InFlight<'c> {
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

/// Calls on a [`Conn`] with one deadline: [`Conn::long`] and [`Conn::within`] give other
/// deadlines than the query timeout of the plain methods.
pub struct Timed<'c> {
    conn: &'c Conn,
    limit: Duration,
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

    /// Calls with the query timeout (the default of the plain methods).
    fn timed(&self) -> Timed<'_> {
        self.within(self.query_timeout)
    }

    /// Calls that may run as long as the server lets a statement run (DDL, migrations).
    pub fn long(&self) -> Timed<'_> {
        self.within(self.long_timeout)
    }

    /// Asks the server to cancel what this session is running, within a query timeout.
    async fn cancel_running(&self) {
        if !self.canceller.cancel(self.query_timeout).await {
            warn!("could not send a cancel request; the server ends the statement when it sees the session closed");
        }
    }

    /// A call was abandoned mid-way: its statement is cancelled on the server (from a task of
    /// its own, as this runs in a `Drop`) and the connection discarded.
    fn abandon(&self) {
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
    /// [`crate::transport`]), at most [`transport::CLOSE_WAIT`] and a little. True when it
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

    /// Calls that may wait for a row or table lock: the server's lock timeout ends the wait
    /// first (SQLSTATE 55P03), then the answer has a query timeout to arrive.
    pub fn locking(&self) -> Timed<'_> {
        self.within(self.lock_wait())
    }

    /// The deadline of [`Conn::locking`].
    pub fn lock_wait(&self) -> Duration {
        self.lock_timeout + self.query_timeout
    }

    /// Calls with a deadline of their own.
    pub fn within(&self, limit: Duration) -> Timed<'_> {
        Timed { conn: self, limit }
    }

    pub async fn query<T>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError>
    where
        T: ?Sized + ToStatement,
    {
        self.timed().query(sql, params).await
    }

    pub async fn query_one<T>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, DbError>
    where
        T: ?Sized + ToStatement,
    {
        self.timed().query_one(sql, params).await
    }

    pub async fn query_opt<T>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, DbError>
    where
        T: ?Sized + ToStatement,
    {
        self.timed().query_opt(sql, params).await
    }

    pub async fn execute<T>(&self, sql: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError>
    where
        T: ?Sized + ToStatement,
    {
        self.timed().execute(sql, params).await
    }

    pub async fn batch_execute(&self, sql: &str) -> Result<(), DbError> {
        self.timed().batch_execute(sql).await
    }

    pub async fn simple_query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, DbError> {
        self.timed().simple_query(sql).await
    }

    /// Runs refinery on this connection until `until`, as [`crate::session`] says (short lock
    /// waits with retries, migrations outside a transaction where declared). Returns the
    /// versions applied and how the run ended. A run that misses its deadline is cancelled
    /// on the server and its connection discarded: the open migration's transaction is rolled
    /// back.
    pub(crate) async fn migrate(
        &mut self,
        runner: impl Fn() -> refinery::Runner,
        policy: &Policy,
        until: Instant,
    ) -> Result<(Vec<i64>, Result<(), RunFailure>), DbError> {
        if !self.is_usable() {
            return Err(DbError::Unavailable("connection discarded".into()));
        }
        let limit = until.saturating_duration_since(Instant::now());
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let outcome =
            tokio::time::timeout(limit, session::run(&mut self.client, runner, policy, until))
                .await;
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        match outcome {
            Ok(result) => Ok(result),
            Err(_) => {
                // The session is left open: once the cancel took effect, `close` ends it and
                // waits for its backend to be gone (a server's budget counts it until then).
                self.cancel_running().await;
                Err(DbError::TimedOut(format!(
                    "the migrations did not finish within their time limit ({} s) and were \
                     cancelled; the next run goes on from there",
                    limit.as_secs()
                )))
            }
        }
    }
}

impl Timed<'_> {
    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, DbError> {
        let conn = self.conn;
        if !conn.is_usable() {
            return Err(DbError::Unavailable(
                "connection discarded or closed".into(),
            ));
        }
        let limit = self.limit;
        let mut call = InFlight::start(conn);
        let outcome = tokio::time::timeout(limit, fut).await;
        call.finished = true;
        drop(call);
        let Ok(outcome) = outcome else {
            // The statement may still run: cancelled (on a connection that cancels), then the
            // connection discarded.
            conn.abandon();
            conn.discard();
            return Err(DbError::Unavailable(format!(
                "no answer within {} ms; connection discarded",
                limit.as_millis()
            )));
        };
        outcome.map_err(|e| {
            let e = DbError::from(e);
            if e.is_unavailable() {
                conn.discard();
            }
            e
        })
    }

    pub async fn query<T>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError>
    where
        T: ?Sized + ToStatement,
    {
        self.call(self.conn.client.query(sql, params)).await
    }

    pub async fn query_one<T>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, DbError>
    where
        T: ?Sized + ToStatement,
    {
        self.call(self.conn.client.query_one(sql, params)).await
    }

    pub async fn query_opt<T>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, DbError>
    where
        T: ?Sized + ToStatement,
    {
        self.call(self.conn.client.query_opt(sql, params)).await
    }

    pub async fn execute<T>(&self, sql: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError>
    where
        T: ?Sized + ToStatement,
    {
        self.call(self.conn.client.execute(sql, params)).await
    }

    pub async fn batch_execute(&self, sql: &str) -> Result<(), DbError> {
        self.call(self.conn.client.batch_execute(sql)).await
    }

    pub async fn simple_query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, DbError> {
        self.call(self.conn.client.simple_query(sql)).await
    }
}

/// A transaction on a [`Conn`]; [`Tx::commit`] or [`Tx::rollback`] end it. Dropped without
/// either, it discards its connection (the server rolls the transaction back), so a
/// transaction can never be left open on a cached connection.
pub struct Tx<'c> {
    conn: &'c Conn,
    done: bool,
}

impl Conn {
    pub async fn begin(&self) -> Result<Tx<'_>, DbError> {
        self.batch_execute("BEGIN").await?;
        Ok(Tx {
            conn: self,
            done: false,
        })
    }
}

impl Tx<'_> {
    pub async fn commit(mut self) -> Result<(), DbError> {
        self.done = true;
        self.conn.batch_execute("COMMIT").await
    }

    pub async fn rollback(mut self) {
        self.done = true;
        if self.conn.batch_execute("ROLLBACK").await.is_err() {
            self.conn.discard();
        }
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.discard();
        }
    }
}

/// A PostgreSQL server tenant databases live on, as this sandbox reaches it: its credentials
/// (read once, again after an authentication failure) and one admin connection to its
/// maintenance database, opened lazily and reopened when found closed or discarded. `primary`
/// uses the functions' own credentials; another server, the admin secret it was registered
/// with, at the host and port it was registered with.
///
/// A server this sandbox could not reach is remembered as down for [`DOWN_FOR`]: placement
/// passes it over without waiting for another connect timeout on every create.
pub struct Server {
    name: String,
    /// `None` for `primary`.
    source: Option<ServerSource>,
    params: Mutex<Option<Arc<ConnectParams>>>,
    admin: Mutex<Option<Conn>>,
    down_until: std::sync::Mutex<Option<Instant>>,
}

/// How long a server that could not be reached is passed over by placement in this sandbox.
const DOWN_FOR: Duration = Duration::from_secs(30);

/// Where a registered server is and which secret opens it, as its registry row says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSource {
    pub secret_id: String,
    pub host: String,
    pub port: u16,
}

impl ServerSource {
    /// From a row with `host`, `port` and `secret_arn`: `None` when they are null (`primary`).
    pub(crate) fn from_row(row: &Row) -> Result<Option<ServerSource>, DbError> {
        let port: Option<i32> = row.try_get("port")?;
        let (Some(host), Some(port), Some(secret_id)) =
            (row.try_get("host")?, port, row.try_get("secret_arn")?)
        else {
            return Ok(None);
        };
        let port = u16::try_from(port)
            .map_err(|_| DbError::Other(anyhow::anyhow!("the registry holds port {port}")))?;
        Ok(Some(ServerSource {
            secret_id,
            host,
            port,
        }))
    }
}

/// Exclusive use of a server's admin connection for one operation, with the server it is on.
pub struct Admin<'a> {
    server: &'a Server,
    conn: MappedMutexGuard<'a, Conn>,
}

impl std::ops::Deref for Admin<'_> {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl Admin<'_> {
    pub fn server(&self) -> &Server {
        self.server
    }
}

impl Server {
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn params(&self, db: &Database) -> Result<Arc<ConnectParams>, DbError> {
        let Some(source) = &self.source else {
            return Ok(db.credentials.get().await?);
        };
        let mut cached = self.params.lock().await;
        if let Some(params) = cached.as_ref() {
            return Ok(params.clone());
        }
        let text = db.secrets.read(&source.secret_id).await?.ok_or_else(|| {
            DbError::Other(anyhow::anyhow!(
                "the admin secret of server {} is gone",
                self.name
            ))
        })?;
        let overrides = crate::config::ConnOverrides {
            host: Some(source.host.clone()),
            port: Some(source.port),
            dbname: None,
        };
        let params = Arc::new(parse_secret(&text, &overrides).map_err(|e| {
            DbError::Other(anyhow::anyhow!(
                "the admin secret of server {}: {e}",
                self.name
            ))
        })?);
        *cached = Some(params.clone());
        Ok(params)
    }

    async fn invalidate(&self, db: &Database) {
        match &self.source {
            None => db.credentials.invalidate().await,
            Some(_) => *self.params.lock().await = None,
        }
    }

    /// Where its databases are reached: what a tenant's secret names.
    pub(crate) async fn endpoint(&self, db: &Database) -> Result<(String, u16), DbError> {
        let params = self.params(db).await?;
        Ok((params.host.clone(), params.port))
    }

    /// True while this sandbox remembers the server as unreachable.
    pub(crate) fn seems_down(&self) -> bool {
        let until = *self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|t| Instant::now() < t)
    }

    fn note(&self, result: &Result<Conn, DbError>) {
        let mut until = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        *until = match result {
            Err(DbError::Unavailable(_)) => Some(Instant::now() + DOWN_FOR),
            _ => None,
        };
    }

    /// A new connection to `dbname` on this server, as its admin (re-reading the secret once
    /// after an authentication failure, as for the registry).
    pub(crate) async fn connect(&self, db: &Database, dbname: &str) -> Result<Conn, DbError> {
        let result = async {
            let params = self.params(db).await?;
            match db.connect_with(&params, dbname).await? {
                Ok(conn) => Ok(conn),
                Err(e) if e.code() == Some(&SqlState::INVALID_PASSWORD) => {
                    warn!(server = %self.name, "authentication failed; reading the server's secret again");
                    self.invalidate(db).await;
                    let params = self.params(db).await?;
                    Ok(db.connect_with(&params, dbname).await??)
                }
                Err(e) => Err(e.into()),
            }
        }
        .await;
        self.note(&result);
        result
    }

    /// The server's admin connection (its maintenance database), for what spans the server:
    /// databases, roles, the catalogs.
    pub(crate) async fn admin(&self, db: &Database) -> Result<Admin<'_>, DbError> {
        let guard = self.admin.lock().await;
        let mut guard =
            match MutexGuard::try_map(guard, |slot| slot.as_mut().filter(|c| c.is_usable())) {
                Ok(conn) => return Ok(Admin { server: self, conn }),
                Err(guard) => guard,
            };
        *guard = None;
        let maintenance = self.params(db).await?.maintenance_db.clone();
        let conn = self.connect(db, &maintenance).await?;
        Ok(Admin {
            server: self,
            conn: MutexGuard::map(guard, |slot| slot.insert(conn)),
        })
    }

    /// Closes the cached admin connection, if any, and waits until its session has ended on
    /// the server (migrate-all, before it opens its budget of tenant connections there).
    pub(crate) async fn close_admin(&self) {
        let conn = self.admin.lock().await.take();
        if let Some(conn) = conn {
            conn.close().await;
        }
    }
}

/// The sandbox's connection state: credentials (cached), the TLS connector, and one
/// connection to the system database, opened lazily and reopened when found closed or
/// discarded.
pub struct Database {
    config: Config,
    secrets: Arc<Secrets>,
    credentials: CredentialProvider,
    /// `None` with `DB_SSLMODE=disable`.
    tls: Option<MakeTlsConnector>,
    system: Mutex<Option<Conn>>,
    /// The servers this sandbox has met, by name.
    servers: Mutex<std::collections::HashMap<String, Arc<Server>>>,
    /// Set once this sandbox has seen the registry at this release's system migrations.
    registry_current: tokio::sync::OnceCell<()>,
    application_name: String,
}

/// Exclusive use of the sandbox's system connection for one operation.
pub type SystemConn<'a> = MappedMutexGuard<'a, Conn>;

impl Database {
    /// No network I/O: connections and the secret are fetched on first use.
    pub fn new(config: Config, application_name: &str) -> anyhow::Result<Database> {
        // Built at start-up with `require`, so that a bad bundle fails there, by name.
        let tls = match config.ssl_mode {
            SslMode::Require => Some(tls_connector(&config)?),
            SslMode::Disable => None,
        };
        let secrets = Arc::new(Secrets::default());
        let credentials = CredentialProvider::new(
            config.credentials.clone(),
            config.overrides.clone(),
            secrets.clone(),
        );
        Ok(Database {
            config,
            secrets,
            credentials,
            tls,
            system: Mutex::new(None),
            servers: Mutex::new(std::collections::HashMap::new()),
            registry_current: tokio::sync::OnceCell::new(),
            application_name: application_name.to_owned(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The sandbox's Secrets Manager client (tenant secrets).
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// The cached connection to the system database, reconnecting if it was closed or
    /// discarded (a frozen sandbox often finds its connection gone). The first use in a
    /// sandbox brings the registry to this release's system migrations.
    pub async fn system(&self) -> Result<SystemConn<'_>, DbError> {
        self.system_conn(true).await
    }

    /// The same connection, the registry as it is: nothing applied, nothing created (a dry
    /// run changes nothing). Fails with SQLSTATE 3D000 when there is no registry yet.
    pub async fn system_as_is(&self) -> Result<SystemConn<'_>, DbError> {
        self.system_conn(false).await
    }

    async fn system_conn(&self, current: bool) -> Result<SystemConn<'_>, DbError> {
        let guard = self.system.lock().await;
        let mut guard =
            match MutexGuard::try_map(guard, |slot| slot.as_mut().filter(|c| c.is_usable())) {
                Ok(live) => {
                    // Opened as it was by a dry run: brought current on first real use.
                    if current && self.registry_current.get().is_none() {
                        self.registry_current
                            .get_or_try_init(|| {
                                crate::migrations::bring_registry_current(self, Some(&*live))
                            })
                            .await?;
                    }
                    return Ok(live);
                }
                Err(guard) => guard,
            };
        if guard.is_some() {
            debug!("system connection was closed or discarded; reconnecting");
        }
        *guard = None;
        let conn = match self.connect(&self.config.system_db).await {
            Err(e) if current && e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
                // A new deployment: the registry does not exist yet.
                self.registry_current
                    .get_or_try_init(|| crate::migrations::bring_registry_current(self, None))
                    .await?;
                self.connect(&self.config.system_db).await?
            }
            other => other?,
        };
        if current {
            self.registry_current
                .get_or_try_init(|| crate::migrations::bring_registry_current(self, Some(&conn)))
                .await?;
        }
        let mut conn = conn;
        conn.on_abandon = Abandon::Keep;
        Ok(MutexGuard::map(guard, |slot| slot.insert(conn)))
    }

    /// The server `name`, as the registry records it now (one query, none for `primary`): the
    /// sandbox's handle for it, made again when the record changed (a server removed and
    /// registered again elsewhere is never reached at its old address).
    pub(crate) async fn server(&self, sys: &Conn, name: &str) -> Result<Arc<Server>, DbError> {
        let source = if name == crate::servers::PRIMARY {
            None
        } else {
            let row = sys
                .query_opt(
                    "SELECT host, port, secret_arn FROM servers WHERE name = $1",
                    &[&name],
                )
                .await?
                .ok_or_else(|| {
                    DbError::Other(anyhow::anyhow!("the registry has no server named {name}"))
                })?;
            ServerSource::from_row(&row)?
        };
        Ok(self.server_at(name, source).await)
    }

    /// The sandbox's handle for the server `name` at `source` (`None`: `primary`).
    pub(crate) async fn server_at(&self, name: &str, source: Option<ServerSource>) -> Arc<Server> {
        let mut servers = self.servers.lock().await;
        if let Some(server) = servers.get(name).filter(|s| s.source == source) {
            return server.clone();
        }
        let server = Arc::new(Server {
            name: name.to_owned(),
            source,
            params: Mutex::new(None),
            admin: Mutex::new(None),
            down_until: std::sync::Mutex::new(None),
        });
        if let Some(old) = servers.insert(name.to_owned(), server.clone()) {
            old.close_admin().await;
        }
        server
    }

    /// Forgets a server (removed from the registry).
    pub(crate) async fn forget_server(&self, name: &str) {
        let old = self.servers.lock().await.remove(name);
        if let Some(old) = old {
            old.close_admin().await;
        }
    }

    /// Forgets the cached system connection (closing it): the next `system()` opens a new
    /// one. Called before retrying an operation whose connection failed under it, and after
    /// an operation abandoned at its deadline.
    pub async fn reset_system(&self) {
        if let Some(conn) = self.system.lock().await.take() {
            conn.discard();
        }
    }

    /// A new connection to `dbname` (a tenant database, or the maintenance database), within
    /// `DB_CONNECT_TIMEOUT_SECS` from the first byte to the last of authentication.
    pub async fn connect(&self, dbname: &str) -> Result<Conn, DbError> {
        let params = self.credentials.get().await?;
        match self.connect_with(&params, dbname).await? {
            Ok(conn) => Ok(conn),
            Err(e) if e.code() == Some(&SqlState::INVALID_PASSWORD) => {
                // The password may have been rotated: read the secret again, once.
                warn!("authentication failed; refreshing the database secret and retrying once");
                self.credentials.invalidate().await;
                let params = self.credentials.get().await?;
                Ok(self.connect_with(&params, dbname).await??)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A new connection to `dbname` with other credentials than the admin's (a tenant's
    /// login: the rotation's test of a new password), with the same TLS and deadlines.
    pub(crate) async fn connect_as(
        &self,
        params: &ConnectParams,
        dbname: &str,
    ) -> Result<Conn, DbError> {
        Ok(self.connect_with(params, dbname).await??)
    }

    /// [`Database::connect_as`], with what the server said kept apart: the outer error is no
    /// connection within the connect timeout, the inner one the socket's or the server's
    /// answer (an authentication refusal, say), for the caller to classify.
    pub(crate) async fn try_connect_as(
        &self,
        params: &ConnectParams,
        dbname: &str,
    ) -> Result<Result<Conn, tokio_postgres::Error>, DbError> {
        self.connect_with(params, dbname).await
    }

    /// The maintenance database named by the secret (or `DB_NAME`).
    pub async fn maintenance_db(&self) -> Result<String, DbError> {
        Ok(self.credentials.get().await?.maintenance_db.clone())
    }

    /// The outer error: no connection within the connect timeout; the inner one: what the
    /// socket or the server said (the caller looks at its SQLSTATE before classifying it).
    async fn connect_with(
        &self,
        params: &ConnectParams,
        dbname: &str,
    ) -> Result<Result<Conn, tokio_postgres::Error>, DbError> {
        let limit = self.config.connect_timeout;
        tokio::time::timeout(limit, self.open(params, dbname))
            .await
            .map_err(|_| {
                DbError::Unavailable(format!("no connection within {} ms", limit.as_millis()))
            })?
    }

    /// The outer error: no TCP connection (refused, no such host); the inner one: what the
    /// server said. The caller bounds the whole of it.
    async fn open(
        &self,
        params: &ConnectParams,
        dbname: &str,
    ) -> Result<Result<Conn, tokio_postgres::Error>, DbError> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.user(&params.user)
            .password(params.password.expose_secret())
            .dbname(dbname)
            .application_name(&self.application_name)
            .ssl_mode(match self.config.ssl_mode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                // Never `prefer`: that would silently fall back to plaintext.
                SslMode::Require => tokio_postgres::config::SslMode::Require,
            });
        let stmt = self.config.statement_timeout.as_millis();
        let lock = self.config.lock_timeout.as_millis();
        cfg.options(format!(
            "-c statement_timeout={stmt} -c lock_timeout={lock}"
        ));
        let tcp = transport::connect_tcp(&params.host, params.port, self.config.connect_timeout)
            .await
            .map_err(|e| DbError::Unavailable(format!("no TCP connection: {e}")))?;
        let db = dbname.to_owned();
        let log_end = move |result: Result<(), tokio_postgres::Error>| {
            if let Err(e) = result {
                debug!(database = %db, error = %e, "connection ended");
            }
        };
        let (client, task) = match &self.tls {
            Some(tls) => {
                let tls = GuardedTls::new(tls, &params.host)
                    .map_err(|e| DbError::Other(anyhow::anyhow!("TLS: {e}")))?;
                let (client, connection) = match cfg.connect_raw(tcp, tls).await {
                    Ok(pair) => pair,
                    Err(e) => return Ok(Err(e)),
                };
                (
                    client,
                    tokio::spawn(async move { log_end(connection.await) }),
                )
            }
            None => {
                let (client, connection) = match cfg
                    .connect_raw(Guarded::new(tcp), tokio_postgres::NoTls)
                    .await
                {
                    Ok(pair) => pair,
                    Err(e) => return Ok(Err(e)),
                };
                (
                    client,
                    tokio::spawn(async move { log_end(connection.await) }),
                )
            }
        };
        Ok(Ok(Conn {
            canceller: Canceller {
                token: client.cancel_token(),
                host: params.host.clone(),
                port: params.port,
                tls: self.tls.clone(),
            },
            client,
            task: task.abort_handle(),
            ended: std::sync::Mutex::new(Some(task)),
            broken: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            on_abandon: Abandon::Cancel,
            query_timeout: self.config.query_timeout,
            lock_timeout: self.config.lock_timeout,
            long_timeout: self.config.long_statement_timeout(),
        }))
    }
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
