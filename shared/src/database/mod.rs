//! How this sandbox reaches PostgreSQL: the configuration, the admin credentials (cached),
//! the Secrets Manager client, one cached connection to the registry (the system database,
//! brought to this release's system migrations on first use, see [`system`]), and a handle
//! per server tenant databases live on (see [`server`]).

pub(crate) mod credentials;
mod server;
mod system;

use std::{collections::HashMap, sync::Arc};

use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tracing::warn;

pub use server::{Admin, Server, ServerSource, PRIMARY};
pub use system::{migrate_system, SystemConn};

use crate::{
    aws::secrets::Secrets,
    config::Config,
    pg::{Conn, ConnectParams, Connector, DbError},
};
use credentials::CredentialProvider;

/// The sandbox's connection state: credentials (cached), how connections are opened, one
/// connection to the system database, opened lazily and reopened when found closed or
/// discarded, and the servers met so far.
pub struct Database {
    config: Config,
    secrets: Arc<Secrets>,
    credentials: CredentialProvider,
    connector: Connector,
    system: Mutex<Option<Conn>>,
    /// The servers this sandbox has met, by name.
    servers: Mutex<HashMap<String, Arc<Server>>>,
    /// Set once this sandbox has seen the registry at this release's system migrations.
    registry_current: tokio::sync::OnceCell<()>,
}

impl Database {
    /// No network I/O: connections and the secret are fetched on first use.
    pub fn new(config: Config, application_name: &str) -> anyhow::Result<Database> {
        let connector = Connector::new(&config, application_name)?;
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
            connector,
            system: Mutex::new(None),
            servers: Mutex::new(HashMap::new()),
            registry_current: tokio::sync::OnceCell::new(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The sandbox's Secrets Manager client (tenant secrets).
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
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
        match self.connector.connect(&params, dbname).await? {
            Ok(conn) => Ok(conn),
            Err(e) if e.code() == Some(&SqlState::INVALID_PASSWORD) => {
                // The password may have been rotated: read the secret again, once.
                warn!("authentication failed; refreshing the database secret and retrying once");
                self.credentials.invalidate().await;
                let params = self.credentials.get().await?;
                Ok(self.connector.connect(&params, dbname).await??)
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
        Ok(self.connector.connect(params, dbname).await??)
    }

    /// [`Database::connect_as`], with what the server said kept apart: the outer error is no
    /// connection within the connect timeout, the inner one the socket's or the server's
    /// answer (an authentication refusal, say), for the caller to classify.
    pub(crate) async fn try_connect_as(
        &self,
        params: &ConnectParams,
        dbname: &str,
    ) -> Result<Result<Conn, tokio_postgres::Error>, DbError> {
        self.connector.connect(params, dbname).await
    }

    /// The maintenance database named by the secret (or `DB_NAME`).
    pub async fn maintenance_db(&self) -> Result<String, DbError> {
        Ok(self.credentials.get().await?.maintenance_db.clone())
    }
}
