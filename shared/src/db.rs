//! Connections: TLS, timeouts, the sandbox's cached system connection, and the
//! classification of PostgreSQL errors into "unavailable" and everything else.

use std::{fs, time::Duration};

use native_tls::{Certificate, TlsConnector};
use postgres_native_tls::MakeTlsConnector;
use secrecy::ExposeSecret;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::{error::SqlState, Client};
use tracing::{debug, warn};

use crate::{
    config::{Config, SslMode},
    credentials::{ConnectParams, CredentialProvider, CredentialsError},
};

/// Why an operation could not talk to PostgreSQL the way it needed to.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// PostgreSQL or Secrets Manager cannot be reached (or refuses us) right now. The message
    /// is for the log only: it may name hosts.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Any other error from PostgreSQL (a bug, a constraint, a failed migration, ...).
    #[error(transparent)]
    Postgres(tokio_postgres::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_unavailable(&e) {
            DbError::Unavailable(error_chain(&e))
        } else {
            DbError::Postgres(e)
        }
    }
}

impl From<CredentialsError> for DbError {
    fn from(e: CredentialsError) -> Self {
        DbError::Unavailable(e.to_string())
    }
}

impl DbError {
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            DbError::Postgres(e) => e.code(),
            _ => None,
        }
    }
}

/// True for errors that mean "the server is not there for us right now": no connection,
/// connection lost, shutting down, too many connections, authentication refused.
pub fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true, // I/O, TLS, timeout, closed connection: never a statement's fault
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

/// The error and its sources on one line, for logs.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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
pub fn tls_connector(config: &Config) -> anyhow::Result<MakeTlsConnector> {
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

/// The sandbox's connection state: credentials (cached), the TLS connector, and one
/// connection to the system database, opened lazily and reopened when found closed.
pub struct Database {
    config: Config,
    credentials: CredentialProvider,
    /// `None` with `DB_SSLMODE=disable`.
    tls: Option<MakeTlsConnector>,
    system: Mutex<Option<Client>>,
    application_name: String,
}

/// Exclusive use of the sandbox's system connection for one operation.
pub type SystemConn<'a> = MappedMutexGuard<'a, Client>;

impl Database {
    /// No network I/O: connections and the secret are fetched on first use.
    pub fn new(config: Config, application_name: &str) -> anyhow::Result<Database> {
        // Built at start-up with `require`, so that a bad bundle fails there, by name.
        let tls = match config.ssl_mode {
            SslMode::Require => Some(tls_connector(&config)?),
            SslMode::Disable => None,
        };
        let credentials =
            CredentialProvider::new(config.credentials.clone(), config.overrides.clone());
        Ok(Database {
            config,
            credentials,
            tls,
            system: Mutex::new(None),
            application_name: application_name.to_owned(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The cached connection to the system database, reconnecting if it was closed (a frozen
    /// sandbox often finds its connection gone).
    pub async fn system(&self) -> Result<SystemConn<'_>, DbError> {
        let guard = self.system.lock().await;
        let mut guard =
            match MutexGuard::try_map(guard, |slot| slot.as_mut().filter(|c| !c.is_closed())) {
                Ok(live) => return Ok(live),
                Err(guard) => guard,
            };
        if guard.is_some() {
            debug!("system connection was closed; reconnecting");
        }
        *guard = None;
        let client = self.connect(&self.config.system_db).await?;
        Ok(MutexGuard::map(guard, |slot| slot.insert(client)))
    }

    /// Forgets the cached system connection: the next `system()` opens a new one. Called
    /// before retrying an operation whose connection failed under it.
    pub async fn reset_system(&self) {
        *self.system.lock().await = None;
    }

    /// A new connection to `dbname` (a tenant database, or the maintenance database).
    pub async fn connect(&self, dbname: &str) -> Result<Client, DbError> {
        let params = self.credentials.get().await?;
        match self.connect_with(&params, dbname).await {
            Err(e) if e.code() == Some(&SqlState::INVALID_PASSWORD) => {
                // The password may have been rotated: read the secret again, once.
                warn!("authentication failed; refreshing the database secret and retrying once");
                self.credentials.invalidate().await;
                let params = self.credentials.get().await?;
                Ok(self.connect_with(&params, dbname).await?)
            }
            other => Ok(other?),
        }
    }

    /// The maintenance database named by the secret (or `DB_NAME`).
    pub async fn maintenance_db(&self) -> Result<String, DbError> {
        Ok(self.credentials.get().await?.maintenance_db.clone())
    }

    async fn connect_with(
        &self,
        params: &ConnectParams,
        dbname: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&params.host)
            .port(params.port)
            .user(&params.user)
            .password(params.password.expose_secret())
            .dbname(dbname)
            .application_name(&self.application_name)
            .connect_timeout(self.config.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
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
        let db = dbname.to_owned();
        let log_end = move |result: Result<(), tokio_postgres::Error>| {
            if let Err(e) = result {
                debug!(database = %db, error = %e, "connection ended");
            }
        };
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) = cfg.connect(tls.clone()).await?;
                tokio::spawn(async move { log_end(connection.await) });
                client
            }
            None => {
                let (client, connection) = cfg.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(async move { log_end(connection.await) });
                client
            }
        };
        Ok(client)
    }
}
