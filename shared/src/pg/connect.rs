//! Opening a connection: TLS (or none), the server-side timeouts of our sessions, the whole
//! of it (TCP, TLS, authentication) within the connect timeout, on a socket of our own (see
//! [`super::transport`]).

use std::{
    fs,
    sync::atomic::{AtomicBool, AtomicUsize},
    time::Duration,
};

use native_tls::{Certificate, TlsConnector};
use postgres_native_tls::MakeTlsConnector;
use secrecy::{ExposeSecret, SecretString};
use tracing::debug;

use super::{
    conn::{Abandon, Canceller},
    transport::{self, Guarded, GuardedTls},
    Conn, DbError,
};
use crate::config::{Config, SslMode};

/// Everything needed to open a connection, apart from the database name.
#[derive(Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: SecretString,
    /// The maintenance database (used to create the system database).
    pub maintenance_db: String,
}

impl std::fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"[redacted]")
            .field("maintenance_db", &self.maintenance_db)
            .finish()
    }
}

/// What every connection of a sandbox is opened with: TLS, the application name, and the
/// configuration's deadlines.
pub(crate) struct Connector {
    /// `None` with `DB_SSLMODE=disable`.
    tls: Option<MakeTlsConnector>,
    ssl_mode: SslMode,
    application_name: String,
    connect_timeout: Duration,
    statement_timeout: Duration,
    lock_timeout: Duration,
    query_timeout: Duration,
    long_timeout: Duration,
}

impl Connector {
    /// Builds the TLS connector now, with `require`, so that a bad bundle fails at start-up,
    /// by name.
    pub(crate) fn new(config: &Config, application_name: &str) -> anyhow::Result<Connector> {
        let tls = match config.ssl_mode {
            SslMode::Require => Some(tls_connector(config)?),
            SslMode::Disable => None,
        };
        Ok(Connector {
            tls,
            ssl_mode: config.ssl_mode,
            application_name: application_name.to_owned(),
            connect_timeout: config.connect_timeout,
            statement_timeout: config.statement_timeout,
            lock_timeout: config.lock_timeout,
            query_timeout: config.query_timeout,
            long_timeout: config.long_statement_timeout(),
        })
    }

    /// A new connection to `dbname` with `params`. The outer error: no connection within the
    /// connect timeout; the inner one: what the
    /// socket or the server said (the caller looks at its SQLSTATE before classifying it).
    pub(crate) async fn connect(
        &self,
        params: &ConnectParams,
        dbname: &str,
    ) -> Result<Result<Conn, tokio_postgres::Error>, DbError> {
        let limit = self.connect_timeout;
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
            .ssl_mode(match self.ssl_mode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                // Never `prefer`: that would silently fall back to plaintext.
                SslMode::Require => tokio_postgres::config::SslMode::Require,
            });
        let stmt = self.statement_timeout.as_millis();
        let lock = self.lock_timeout.as_millis();
        cfg.options(format!(
            "-c statement_timeout={stmt} -c lock_timeout={lock}"
        ));
        let tcp = transport::connect_tcp(&params.host, params.port, self.connect_timeout)
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
            query_timeout: self.query_timeout,
            lock_timeout: self.lock_timeout,
            long_timeout: self.long_timeout,
        }))
    }
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
