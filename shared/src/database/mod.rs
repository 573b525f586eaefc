//! How this sandbox reaches PostgreSQL: the configuration, the admin credentials (cached,
//! [`credentials`]), the Secrets Manager client, one cached connection to the registry, and a
//! handle per server tenant databases live on ([`server`]).
//!
//! The registry (the system database) is brought to this release's system migrations on its
//! first use in a sandbox, and created when it does not exist, so that a deploy needs no step
//! before the functions serve: a new release's functions never meet an older registry, nor a
//! new deployment a missing one.

pub(crate) mod credentials;
mod server;

use std::{sync::Arc, time::Instant};

use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::error::SqlState;
use tracing::{debug, info};

pub use server::{Admin, Server, ServerSource, PRIMARY};
use server::{Reach, Servers};

use crate::{
    aws::secrets::Secrets,
    config::Config,
    domain::quote_ident,
    migrate::{self, read_history, run_failure, system_runner},
    pg::{locks, Conn, ConnectParams, Connector, DbError},
};
use credentials::CredentialProvider;

/// The sandbox's connection state: credentials (cached), how connections are opened, one
/// connection to the system database, opened lazily and reopened when found closed or
/// discarded, and the servers met so far.
pub struct Database {
    config: Config,
    reach: Arc<Reach>,
    system: Mutex<Option<Conn>>,
    servers: Servers,
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
        let reach = Arc::new(Reach {
            connector,
            credentials,
            secrets,
        });
        Ok(Database {
            config,
            servers: Servers::new(reach.clone()),
            reach,
            system: Mutex::new(None),
            registry_current: tokio::sync::OnceCell::new(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The sandbox's Secrets Manager client (tenant secrets).
    pub fn secrets(&self) -> &Secrets {
        &self.reach.secrets
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
        self.reach.connect_primary(dbname).await
    }

    /// A new connection to `dbname` with other credentials than the admin's (a tenant's
    /// login: the rotation's test of a new password), with the same TLS and deadlines.
    pub(crate) async fn connect_as(
        &self,
        params: &ConnectParams,
        dbname: &str,
    ) -> Result<Conn, DbError> {
        Ok(self.reach.connector.connect(params, dbname).await??)
    }

    /// [`Database::connect_as`], with what the server said kept apart: the outer error is no
    /// connection within the connect timeout, the inner one the socket's or the server's
    /// answer (an authentication refusal, say), for the caller to classify.
    pub(crate) async fn try_connect_as(
        &self,
        params: &ConnectParams,
        dbname: &str,
    ) -> Result<Result<Conn, tokio_postgres::Error>, DbError> {
        self.reach.connector.connect(params, dbname).await
    }

    /// The maintenance database named by the secret (or `DB_NAME`).
    pub async fn maintenance_db(&self) -> Result<String, DbError> {
        Ok(self.reach.credentials.get().await?.maintenance_db.clone())
    }

    /// The server `name`, as the registry records it now (one query, none for `primary`): the
    /// sandbox's handle for it, made again when the record changed (a server removed and
    /// registered again elsewhere is never reached at its old address).
    pub(crate) async fn server(&self, sys: &Conn, name: &str) -> Result<Arc<Server>, DbError> {
        let source = if name == PRIMARY {
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
        Ok(self.servers.at(name, source).await)
    }

    /// The sandbox's handle for the server `name` at `source` (`None`: `primary`).
    pub(crate) async fn server_at(&self, name: &str, source: Option<ServerSource>) -> Arc<Server> {
        self.servers.at(name, source).await
    }

    /// Forgets a server (removed from the registry).
    pub(crate) async fn forget_server(&self, name: &str) {
        self.servers.forget(name).await
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
                            .get_or_try_init(|| bring_registry_current(self, Some(&*live)))
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
                    .get_or_try_init(|| bring_registry_current(self, None))
                    .await?;
                self.connect(&self.config.system_db).await?
            }
            other => other?,
        };
        if current {
            self.registry_current
                .get_or_try_init(|| bring_registry_current(self, Some(&conn)))
                .await?;
        }
        let mut conn = conn;
        conn.keep_on_abandon();
        Ok(MutexGuard::map(guard, |slot| slot.insert(conn)))
    }
}

/// Exclusive use of the sandbox's system connection for one operation.
pub type SystemConn<'a> = MappedMutexGuard<'a, Conn>;

/// Applies the system migrations this release brings if the registry lacks any: one query
/// when it is current. Runs once per sandbox, on the registry's first use (see
/// `Database::system`), so that a new release's functions never meet an older registry, nor
/// a new deployment a missing one (`conn`: `None`).
pub(crate) async fn bring_registry_current(
    db: &Database,
    conn: Option<&Conn>,
) -> Result<(), DbError> {
    if let Some(conn) = conn {
        let applied: Vec<i64> = read_history(conn)
            .await?
            .iter()
            .map(|h| h.version)
            .collect();
        let missing = system_runner()
            .get_migrations()
            .iter()
            .any(|m| !applied.contains(&i64::from(m.version())));
        if !missing {
            return Ok(());
        }
    }
    let applied = migrate_system(db).await.map_err(|e| match e {
        // The registry is busy (its tables held by other sessions): retry the request.
        DbError::LockTimeout(m) | DbError::TimedOut(m) => DbError::Unavailable(m),
        other => other,
    })?;
    info!(
        ?applied,
        "brought the registry to this release's system migrations"
    );
    Ok(())
}

/// Creates the system database when it does not exist, then brings it to the latest system
/// migration under a lock, so that concurrent callers never run refinery side by side. The
/// lock is held on the maintenance database's connection (every caller takes it there), so
/// that refinery has the system database's connection to itself.
pub async fn migrate_system(db: &Database) -> Result<Vec<i64>, DbError> {
    let config = db.config();
    let system_db = config.system_db.as_str();
    let admin = db.connect(&db.maintenance_db().await?).await?;
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&system_db],
        )
        .await?
        .is_some();
    if !exists {
        match admin
            .long()
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(system_db)))
            .await
        {
            Ok(()) => info!(database = %system_db, "created the system database"),
            // Somebody else created it in the meantime (a creation racing ours fails on the
            // catalog's unique index instead).
            Err(e)
                if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                    || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(e),
        }
    }
    let Some(lock) =
        locks::acquire(&admin, locks::Lock::SystemMigrations, config.lock_timeout).await?
    else {
        return Err(DbError::Other(anyhow::anyhow!(
            "another process has been migrating the system database for {}s",
            config.lock_timeout.as_secs()
        )));
    };
    let result = async {
        let mut client = db.connect(system_db).await?;
        migrate::run(
            &mut client,
            system_runner,
            &config.migrate_session,
            Instant::now() + config.migrate_tenant_timeout,
        )
        .await
    }
    .await;
    lock.release().await;
    let (applied, outcome) = result?;
    outcome.map_err(|e| run_failure(&e, "system migrations failed"))?;
    if !applied.is_empty() {
        info!(?applied, "system database migrated");
    }
    Ok(applied)
}
