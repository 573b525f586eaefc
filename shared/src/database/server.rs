//! The servers tenant databases live on, as this sandbox reaches them: a handle per server
//! with its credentials and one admin connection, the memory of a server found down, and the
//! handles met so far.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::{error::SqlState, Row};
use tracing::warn;

use super::credentials::{parse_secret, CredentialProvider};
use crate::{
    aws::secrets::Secrets,
    config::ConnOverrides,
    pg::{Conn, ConnectParams, Connector, DbError},
};

/// The server that holds the registry.
pub const PRIMARY: &str = "primary";

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
    reach: Arc<Reach>,
    params: Mutex<Option<Arc<ConnectParams>>>,
    admin: Mutex<Option<Conn>>,
    down_until: std::sync::Mutex<Option<Instant>>,
}

/// What opening a connection takes in this sandbox, shared by the registry's connection and
/// every server handle: how connections are opened (TLS, deadlines), the admin credentials of
/// `primary`, and the Secrets Manager client (which holds the other servers' admin secrets).
pub(crate) struct Reach {
    pub connector: Connector,
    pub credentials: CredentialProvider,
    pub secrets: Arc<Secrets>,
}

impl Reach {
    /// A new connection to `dbname` on `primary` as its admin, re-reading the secret once
    /// after an authentication failure (the password may have been rotated).
    pub(crate) async fn connect_primary(&self, dbname: &str) -> Result<Conn, DbError> {
        let params = self.credentials.get().await?;
        match self.connector.connect(&params, dbname).await? {
            Ok(conn) => Ok(conn),
            Err(e) if e.code() == Some(&SqlState::INVALID_PASSWORD) => {
                warn!("authentication failed; refreshing the database secret and retrying once");
                self.credentials.invalidate().await;
                let params = self.credentials.get().await?;
                Ok(self.connector.connect(&params, dbname).await??)
            }
            Err(e) => Err(e.into()),
        }
    }
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

    async fn params(&self) -> Result<Arc<ConnectParams>, DbError> {
        let Some(source) = &self.source else {
            return Ok(self.reach.credentials.get().await?);
        };
        let mut cached = self.params.lock().await;
        if let Some(params) = cached.as_ref() {
            return Ok(params.clone());
        }
        let text = self
            .reach
            .secrets
            .read(&source.secret_id)
            .await?
            .ok_or_else(|| {
                DbError::Other(anyhow::anyhow!(
                    "the admin secret of server {} is gone",
                    self.name
                ))
            })?;
        let overrides = ConnOverrides {
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

    async fn invalidate(&self) {
        match &self.source {
            None => self.reach.credentials.invalidate().await,
            Some(_) => *self.params.lock().await = None,
        }
    }

    /// Where its databases are reached: what a tenant's secret names.
    pub(crate) async fn endpoint(&self) -> Result<(String, u16), DbError> {
        let params = self.params().await?;
        Ok((params.host.clone(), params.port))
    }

    /// A libpq connection string to `dbname` on this server as its admin, for another server
    /// to connect with (an online move's subscription): it holds the admin's password.
    /// `tls`: `sslmode=require` (the other server has no CA of ours to verify against).
    pub(crate) async fn conninfo(&self, dbname: &str, tls: bool) -> Result<SecretString, DbError> {
        let params = self.params().await?;
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        Ok(SecretString::from(format!(
            "host={} port={} dbname={} user={} password={} sslmode={} connect_timeout=10",
            quote(&params.host),
            params.port,
            quote(dbname),
            quote(&params.user),
            quote(params.password.expose_secret()),
            if tls { "require" } else { "disable" },
        )))
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
    pub(crate) async fn connect(&self, dbname: &str) -> Result<Conn, DbError> {
        let result = async {
            let params = self.params().await?;
            match self.reach.connector.connect(&params, dbname).await? {
                Ok(conn) => Ok(conn),
                Err(e) if e.code() == Some(&SqlState::INVALID_PASSWORD) => {
                    warn!(server = %self.name, "authentication failed; reading the server's secret again");
                    self.invalidate().await;
                    let params = self.params().await?;
                    Ok(self.reach.connector.connect(&params, dbname).await??)
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
    pub(crate) async fn admin(&self) -> Result<Admin<'_>, DbError> {
        let guard = self.admin.lock().await;
        let mut guard =
            match MutexGuard::try_map(guard, |slot| slot.as_mut().filter(|c| c.is_usable())) {
                Ok(conn) => return Ok(Admin { server: self, conn }),
                Err(guard) => guard,
            };
        *guard = None;
        let maintenance = self.params().await?.maintenance_db.clone();
        let conn = self.connect(&maintenance).await?;
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

/// The server handles this sandbox has met, by name.
pub(crate) struct Servers {
    reach: Arc<Reach>,
    met: Mutex<HashMap<String, Arc<Server>>>,
}

impl Servers {
    pub(crate) fn new(reach: Arc<Reach>) -> Servers {
        Servers {
            reach,
            met: Mutex::new(HashMap::new()),
        }
    }

    /// The handle for the server `name` at `source` (`None`: `primary`), made again when the
    /// record changed (a server removed and registered again elsewhere is never reached at
    /// its old address).
    pub(crate) async fn at(&self, name: &str, source: Option<ServerSource>) -> Arc<Server> {
        let mut servers = self.met.lock().await;
        if let Some(server) = servers.get(name).filter(|s| s.source == source) {
            return server.clone();
        }
        let server = Arc::new(Server {
            name: name.to_owned(),
            source,
            reach: self.reach.clone(),
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
    pub(crate) async fn forget(&self, name: &str) {
        let old = self.met.lock().await.remove(name);
        if let Some(old) = old {
            old.close_admin().await;
        }
    }
}
