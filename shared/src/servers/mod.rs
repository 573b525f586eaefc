//! The PostgreSQL servers tenant databases live on: the registry's record of them (the
//! `servers` table and its HTTP API), and placement.
//!
//! - `primary` is the server that holds the registry, always there: its host, port and admin
//!   secret are the functions' own (`DB_SECRET_ID`, `DB_HOST`, `DB_PORT`). Every other server
//!   is registered with its host, port and the ARN (or name) of its admin secret, after a real
//!   check: the product connects with that secret and verifies what it needs there (PostgreSQL
//!   15 or later, `CREATEDB`, `CREATEROLE`, membership of `pg_signal_backend`).
//! - A server is `open` (takes new tenants) or `draining` (keeps its tenants, takes no new
//!   one), has a capacity (`max_tenants`: tenants not purged) and a connection budget for
//!   fleet work (`migrate_concurrency`).
//! - **Placement**: a new tenant goes where the request says, or else to the open server with
//!   the most room (that answers: one that cannot be reached is passed over). Capacity is
//!   never exceeded, even under concurrent creates: the tenant's row is inserted in a
//!   transaction that holds the server's row (`FOR UPDATE`) and counts its tenants after
//!   taking it.
//! - A server is deleted only when it holds no tenant (purged ones keep no database); `primary`
//!   never.

pub(crate) mod hardening;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use tracing::{info, instrument, warn};

pub use crate::domain::ServerName;
use tokio_postgres::error::SqlState;

use secrecy::ExposeSecret;

use crate::{
    aws::secrets::{self, NamedSecret, SecretsError},
    config::{ConnOverrides, CredentialSource},
    database::{credentials::parse_secret, Database, ServerSource},
    pg::{error_chain, ownership, transport, Conn, DbError, Tx},
    tenant::registry::FieldError,
};

pub use crate::database::PRIMARY;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    Open,
    Draining,
}

impl ServerState {
    pub(crate) fn parse(raw: &str) -> Option<ServerState> {
        match raw {
            "open" => Some(ServerState::Open),
            "draining" => Some(ServerState::Draining),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ServerState::Open => "open",
            ServerState::Draining => "draining",
        }
    }
}

/// A server's tenants that hold a database (purged ones do not).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TenantCounts {
    pub provisioning: i64,
    pub active: i64,
    pub deleted: i64,
    /// All of them: what `max_tenants` bounds.
    pub total: i64,
}

/// A server as the API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    pub name: String,
    /// `null` for `primary`: the functions' own `DB_HOST` or admin secret.
    pub host: Option<String>,
    pub port: Option<i32>,
    pub secret_arn: Option<String>,
    pub state: ServerState,
    pub max_tenants: i32,
    pub migrate_concurrency: i32,
    pub tenants: TenantCounts,
    /// `max_tenants` less `tenants.total` (0 when full or over).
    pub room: i64,
    #[serde(serialize_with = "crate::domain::rfc3339")]
    pub created_at: DateTime<Utc>,
}

const VIEW_SQL: &str = "SELECT s.name, s.host, s.port, s.secret_arn, s.state, s.max_tenants, \
       s.migrate_concurrency, s.created_at, \
       count(t.id) FILTER (WHERE t.status = 'provisioning') AS provisioning, \
       count(t.id) FILTER (WHERE t.status = 'active') AS active, \
       count(t.id) FILTER (WHERE t.status = 'deleted') AS deleted, \
       count(t.id) FILTER (WHERE t.status <> 'purged') AS total \
     FROM servers s LEFT JOIN tenants t ON t.server = s.name \
     WHERE $1::text IS NULL OR s.name = $1 \
     GROUP BY s.name ORDER BY s.name = 'primary' DESC, s.name";

fn view_from_row(row: &tokio_postgres::Row) -> Result<ServerView, DbError> {
    let state: String = row.try_get("state")?;
    let max_tenants: i32 = row.try_get("max_tenants")?;
    let tenants = TenantCounts {
        provisioning: row.try_get("provisioning")?,
        active: row.try_get("active")?,
        deleted: row.try_get("deleted")?,
        total: row.try_get("total")?,
    };
    Ok(ServerView {
        name: row.try_get("name")?,
        host: row.try_get("host")?,
        port: row.try_get("port")?,
        secret_arn: row.try_get("secret_arn")?,
        state: ServerState::parse(&state)
            .ok_or_else(|| anyhow::anyhow!("registry holds an unknown server state {state:?}"))?,
        max_tenants,
        migrate_concurrency: row.try_get("migrate_concurrency")?,
        room: (i64::from(max_tenants) - tenants.total).max(0),
        tenants,
        created_at: row.try_get("created_at")?,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ServersError {
    #[error("invalid request")]
    Validation {
        message: String,
        details: Vec<FieldError>,
    },
    #[error("server not found")]
    NotFound(Option<String>),
    #[error("{0}")]
    Conflict(String),
    /// The server (or its secret) cannot be used: the field at fault and the reason, for the
    /// client (it names no host and no secret value).
    #[error("{message}")]
    Refused {
        field: &'static str,
        message: String,
    },
    /// The server to register did not answer (the cause, for the log only: it names hosts).
    #[error("server unreachable")]
    Unreachable(String),
    /// The registry (or Secrets Manager) did not answer.
    #[error("database unavailable")]
    Unavailable(String),
    #[error("unexpected error")]
    Unexpected(#[source] anyhow::Error),
}

impl From<DbError> for ServersError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) | DbError::TimedOut(m) => ServersError::Unavailable(m),
            // A lock wait that ran out (the server's row, held by a placement): retry.
            e if e.is_lock_timeout() => ServersError::Unavailable(e.to_string()),
            other => ServersError::Unexpected(anyhow::Error::new(other)),
        }
    }
}

pub async fn list_servers(db: &Database) -> Result<Vec<ServerView>, ServersError> {
    let sys = db.system().await?;
    let rows = sys.query(VIEW_SQL, &[&None::<&str>]).await?;
    Ok(rows.iter().map(view_from_row).collect::<Result<_, _>>()?)
}

pub async fn get_server(db: &Database, name: &ServerName) -> Result<ServerView, ServersError> {
    let sys = db.system().await?;
    view(&sys, name).await
}

async fn view(sys: &Conn, name: &ServerName) -> Result<ServerView, ServersError> {
    let row = sys
        .query_opt(VIEW_SQL, &[&Some(name.as_str())])
        .await?
        .ok_or_else(|| ServersError::NotFound(Some(name.to_string())))?;
    Ok(view_from_row(&row)?)
}

/// A server to register, as the request gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewServer {
    pub name: ServerName,
    pub host: String,
    pub port: u16,
    pub secret_arn: String,
    pub max_tenants: i32,
    pub migrate_concurrency: i32,
}

/// What a `PATCH` changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerPatch {
    pub state: Option<ServerState>,
    pub max_tenants: Option<i32>,
    pub migrate_concurrency: Option<i32>,
}

fn invalid(message: &str, details: Vec<FieldError>) -> ServersError {
    ServersError::Validation {
        message: message.to_owned(),
        details,
    }
}

/// The request body as a JSON object, or the error that says why it is not one.
fn body_object(body: &[u8]) -> Result<Map<String, Value>, ServersError> {
    crate::api::body::json_object(body, "a JSON object")
        .map_err(|e| invalid(e.message, vec![e.detail]))
}

/// Reads the fields of a body: each problem is reported with its field, unknown fields too.
struct Fields {
    map: Map<String, Value>,
    details: Vec<FieldError>,
}

impl Fields {
    fn take(&mut self, name: &str, required: bool) -> Option<Value> {
        match self.map.remove(name) {
            None | Some(Value::Null) if required => {
                self.details.push(FieldError::new(name, "is required"));
                None
            }
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn text(&mut self, name: &str, required: bool, max: usize) -> Option<String> {
        match self.take(name, required)? {
            Value::String(s) if !s.trim().is_empty() && s.len() <= max => Some(s.trim().to_owned()),
            Value::String(_) => {
                self.details.push(FieldError::new(
                    name,
                    format!("must be 1 to {max} characters"),
                ));
                None
            }
            _ => {
                self.details.push(FieldError::new(name, "must be a string"));
                None
            }
        }
    }

    fn number(
        &mut self,
        name: &str,
        required: bool,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<i64> {
        match self.take(name, required)? {
            Value::Number(n) if n.as_i64().is_some_and(|n| range.contains(&n)) => n.as_i64(),
            _ => {
                self.details.push(FieldError::new(
                    name,
                    format!(
                        "must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                ));
                None
            }
        }
    }

    fn finish(mut self) -> Result<(), ServersError> {
        let mut unknown: Vec<String> = self.map.keys().cloned().collect();
        unknown.sort();
        for field in unknown {
            let shown: String = field.chars().take(64).collect();
            self.details.push(FieldError::new(shown, "unknown field"));
        }
        if self.details.is_empty() {
            Ok(())
        } else {
            Err(invalid("Invalid request body", self.details))
        }
    }
}

/// Parses a `POST /api/servers` body.
pub fn parse_new_server(body: &[u8]) -> Result<NewServer, ServersError> {
    let mut f = Fields {
        map: body_object(body)?,
        details: Vec::new(),
    };
    let name = f.text("name", true, 63).and_then(|n| {
        ServerName::parse(&n)
            .map_err(|e| f.details.push(FieldError::new("name", e)))
            .ok()
    });
    let host = f.text("host", true, 253);
    let port = f.number("port", true, 1..=65535);
    let secret_arn = f.text("secret_arn", true, 2048);
    let max_tenants = f.number("max_tenants", true, 0..=1_000_000);
    let migrate_concurrency = f.number("migrate_concurrency", true, 1..=64);
    f.finish()?;
    match (
        name,
        host,
        port,
        secret_arn,
        max_tenants,
        migrate_concurrency,
    ) {
        (Some(name), Some(host), Some(port), Some(secret_arn), Some(max), Some(conc)) => {
            Ok(NewServer {
                name,
                host,
                port: port as u16,
                secret_arn,
                max_tenants: max as i32,
                migrate_concurrency: conc as i32,
            })
        }
        _ => Err(invalid("Invalid request body", Vec::new())),
    }
}

/// Parses a `PATCH /api/servers/{name}` body: at least one of `state`, `max_tenants`,
/// `migrate_concurrency`.
pub fn parse_patch(body: &[u8]) -> Result<ServerPatch, ServersError> {
    let mut f = Fields {
        map: body_object(body)?,
        details: Vec::new(),
    };
    let state =
        f.take("state", false)
            .and_then(|v| match v.as_str().and_then(ServerState::parse) {
                Some(s) => Some(s),
                None => {
                    f.details
                        .push(FieldError::new("state", "must be \"open\" or \"draining\""));
                    None
                }
            });
    let max_tenants = f
        .number("max_tenants", false, 0..=1_000_000)
        .map(|n| n as i32);
    let migrate_concurrency = f
        .number("migrate_concurrency", false, 1..=64)
        .map(|n| n as i32);
    f.finish()?;
    let patch = ServerPatch {
        state,
        max_tenants,
        migrate_concurrency,
    };
    if patch == ServerPatch::default() {
        return Err(invalid(
            "Nothing to change",
            vec![FieldError::new(
                "body",
                "give state, max_tenants or migrate_concurrency",
            )],
        ));
    }
    Ok(patch)
}

/// Registers a server after checking it for real (see the module documentation).
#[instrument(skip_all, fields(server = %new.name))]
pub async fn register_server(db: &Database, new: &NewServer) -> Result<ServerView, ServersError> {
    if new.name.as_str() == PRIMARY {
        return Err(ServersError::Conflict(
            "Server 'primary' is the registry's own and always registered".into(),
        ));
    }
    let taken = || ServersError::Conflict(format!("Server '{}' is already registered", new.name));
    {
        let sys = db.system().await?;
        let exists = sys
            .query_opt(
                "SELECT 1 FROM servers WHERE name = $1",
                &[&new.name.as_str()],
            )
            .await?;
        if exists.is_some() {
            return Err(taken());
        }
    }
    let identifier = verify(db, new).await?;
    let sys = db.system().await?;
    if let Some(id) = identifier {
        // The registry's own cluster, read through the registry's connection.
        if system_identifier(&sys).await? == Some(id) {
            return Err(ServersError::Conflict(
                "This PostgreSQL server holds the registry: it is registered as 'primary'".into(),
            ));
        }
    }
    // Where the identifier cannot be read (the secret's role may not run pg_control_system()),
    // the address is what tells servers apart.
    let same_address: Option<String> = sys
        .query_opt(
            "SELECT name FROM servers WHERE lower(host) = lower($1) AND port = $2",
            &[&new.host, &i32::from(new.port)],
        )
        .await?
        .map(|r| r.try_get("name"))
        .transpose()
        .map_err(DbError::from)?;
    if let Some(other) = same_address {
        return Err(ServersError::Conflict(format!(
            "This PostgreSQL server is registered already, as '{other}'"
        )));
    }
    let inserted = sys
        .execute(
            "INSERT INTO servers (name, host, port, secret_arn, max_tenants, \
               migrate_concurrency, system_identifier) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
            &[
                &new.name.as_str(),
                &new.host,
                &i32::from(new.port),
                &new.secret_arn,
                &new.max_tenants,
                &new.migrate_concurrency,
                &identifier,
            ],
        )
        .await;
    match inserted {
        Ok(0) => return Err(taken()),
        Ok(_) => {}
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            let other: Option<String> = sys
                .query_opt(
                    "SELECT name FROM servers WHERE system_identifier = $1",
                    &[&identifier],
                )
                .await?
                .map(|r| r.try_get("name"))
                .transpose()
                .map_err(DbError::from)?;
            return Err(ServersError::Conflict(format!(
                "This PostgreSQL server is registered already, as '{}'",
                other.as_deref().unwrap_or("another server")
            )));
        }
        Err(e) => return Err(e.into()),
    }
    info!("registered a server");
    // Registered: only now are its shared databases changed (see `crate::hardening`; every
    // migrate-all run does it again, so a failure here is logged, not answered).
    let registered = view(&sys, &new.name).await;
    if let Err(e) = harden_registered(db, &sys, new.name.as_str()).await {
        warn!(error = %error_chain(&e), "could not harden the new server's shared databases; the next run does");
    }
    registered
}

async fn harden_registered(db: &Database, sys: &Conn, name: &str) -> Result<(), DbError> {
    let server = db.server(sys, name).await?;
    let admin = server.admin().await?;
    hardening::harden(&admin, db.config().harden_shared_databases).await?;
    Ok(())
}

/// The cluster's system identifier (`pg_control_system()`), which tells two servers apart
/// whatever address reaches them; `None` where the role may not read it.
async fn system_identifier(conn: &Conn) -> Result<Option<i64>, DbError> {
    match conn
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await
    {
        Ok(row) => Ok(Some(row.try_get("system_identifier")?)),
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Connects to the server with its secret and checks what the product needs there. Returns
/// its system identifier, where the secret's role may read it.
///
/// The secret is the operator's for this server, never anything else the functions can read:
/// its name is under `SERVER_SECRET_PREFIX`, it is not the registry's own admin secret, nor
/// another registered server's (a caller of this API must not be able to send a secret it can
/// name to a host it chooses). And its password goes only to a server that authenticates with
/// SCRAM-SHA-256 (see [`crate::transport`]).
async fn verify(db: &Database, new: &NewServer) -> Result<Option<i64>, ServersError> {
    let secret = own_secret(db, new).await?;
    let overrides = ConnOverrides {
        host: Some(new.host.clone()),
        port: Some(new.port),
        dbname: None,
    };
    let params = parse_secret(secret.text.expose_secret(), &overrides).map_err(|_| {
        refused(
            "secret_arn",
            "The secret is not in the RDS format (username and password at least)",
        )
    })?;
    let conn = match db.try_connect_as(&params, &params.maintenance_db).await {
        Ok(Ok(conn)) => conn,
        Err(e) => return Err(ServersError::Unreachable(e.to_string())),
        Ok(Err(e)) if transport::insecure_auth(&e).is_some() => {
            warn!(error = %e, "the server to register asked for a password in cleartext or MD5");
            return Err(refused(
                "host",
                "The server asks for the secret's credentials in cleartext or as an MD5 hash: \
                 the product authenticates only by SCRAM-SHA-256 (configure the server to \
                 authenticate the secret's user with scram-sha-256)",
            ));
        }
        Ok(Err(e)) => match e.code().map(|c| c.code().to_owned()) {
            // The server answered, and refused.
            Some(code)
                if !code.starts_with("08")
                    && !code.starts_with("53")
                    && !code.starts_with("57") =>
            {
                warn!(sqlstate = %code, "the server refused the secret");
                return Err(refused(
                    "secret_arn",
                    match code.as_str() {
                        "3D000" => "The secret's dbname does not exist on the server",
                        c if c.starts_with("28") => {
                            "The server refused the secret's credentials (authentication failed)"
                        }
                        _ => "The server refused a connection with the secret",
                    },
                ));
            }
            _ => return Err(ServersError::Unreachable(error_chain(&e))),
        },
    };
    let checked = check_server(&conn).await;
    conn.close().await;
    checked
}

/// The secret the request names, once it is known to be one made for a server of this
/// product (see [`verify`]).
async fn own_secret(db: &Database, new: &NewServer) -> Result<NamedSecret, ServersError> {
    let prefix = db.config().server_secret_prefix.as_str();
    // The prefix is not named: the answer tells nothing of what else the functions may read.
    let outside = || {
        refused(
            "secret_arn",
            "secret_arn must name a secret under the stack's server secret prefix \
             (SERVER_SECRET_PREFIX, ServerSecretPrefix), made for this server",
        )
    };
    // Before anything is read: the functions never read a secret outside the prefix for this.
    if !secrets::name_of(&new.secret_arn).starts_with(prefix) {
        return Err(outside());
    }
    let secret = match db.secrets().read_named(&new.secret_arn).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err(refused(
                "secret_arn",
                "The secret_arn names no secret in this account and region",
            ))
        }
        Err(SecretsError::Refused(cause)) => {
            warn!(cause = %cause, "Secrets Manager refused the server's secret");
            return Err(refused(
                "secret_arn",
                "Secrets Manager refused to give this function the secret (the functions read \
                 server secrets under the stack's ServerSecretPrefix only)",
            ));
        }
        Err(e) => return Err(DbError::from(e).into()),
    };
    // What Secrets Manager resolved the id to, checked again (an ARN's name part can be
    // spelled in more than one way).
    if !secret.name.starts_with(prefix) {
        return Err(outside());
    }
    if let CredentialSource::Secret(own) = &db.config().credentials {
        let own = db.secrets().read_named(own).await.map_err(DbError::from)?;
        if own.is_some_and(|own| own.arn == secret.arn) {
            return Err(refused(
                "secret_arn",
                "secret_arn names the registry's own admin secret: register each server with an \
                 admin secret of its own",
            ));
        }
    }
    let sys = db.system().await?;
    let rows = sys
        .query(
            "SELECT name, secret_arn FROM servers WHERE secret_arn IS NOT NULL ORDER BY name",
            &[],
        )
        .await?;
    for row in rows {
        let stored: String = row.try_get("secret_arn").map_err(DbError::from)?;
        if stored == secret.arn || secrets::name_of(&stored) == secret.name {
            let name: String = row.try_get("name").map_err(DbError::from)?;
            return Err(refused(
                "secret_arn",
                &format!(
                    "secret_arn is the admin secret of server '{name}' already: register each \
                     server with an admin secret of its own"
                ),
            ));
        }
    }
    Ok(secret)
}

/// What the product needs of the server, checked on the secret's connection. Returns its
/// system identifier, where the role may read it.
async fn check_server(conn: &Conn) -> Result<Option<i64>, ServersError> {
    let row = conn
        .query_one(
            "SELECT current_setting('server_version_num')::int AS version, r.rolsuper, \
                    r.rolcreatedb, r.rolcreaterole, pg_is_in_recovery() AS standby, \
                    pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') AS can_signal \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await?;
    if row.try_get::<_, bool>("standby").map_err(DbError::from)? {
        return Err(refused(
            "host",
            "The server is a read-only standby (pg_is_in_recovery()): register its primary",
        ));
    }
    let version: i32 = row.try_get("version").map_err(DbError::from)?;
    let superuser: bool = row.try_get("rolsuper").map_err(DbError::from)?;
    let mut missing = Vec::new();
    if version < 150_000 {
        missing.push("PostgreSQL 15 or later");
    }
    if !superuser {
        for (column, what) in [
            ("rolcreatedb", "CREATEDB"),
            ("rolcreaterole", "CREATEROLE"),
            ("can_signal", "membership of pg_signal_backend"),
        ] {
            if !row.try_get::<_, bool>(column).map_err(DbError::from)? {
                missing.push(what);
            }
        }
    }
    if !missing.is_empty() {
        return Err(refused(
            "secret_arn",
            &format!(
                "The server or the secret's user lacks what the product needs: {}",
                missing.join(", ")
            ),
        ));
    }
    Ok(system_identifier(conn).await?)
}

fn refused(field: &'static str, message: &str) -> ServersError {
    ServersError::Refused {
        field,
        message: message.to_owned(),
    }
}

/// Changes a server's state, capacity or budget.
#[instrument(skip_all, fields(server = %name))]
pub async fn update_server(
    db: &Database,
    name: &ServerName,
    patch: &ServerPatch,
) -> Result<ServerView, ServersError> {
    let sys = db.system().await?;
    let updated = sys
        .locking()
        .execute(
            "UPDATE servers SET state = coalesce($2, state), \
               max_tenants = coalesce($3, max_tenants), \
               migrate_concurrency = coalesce($4, migrate_concurrency), updated_at = now() \
             WHERE name = $1",
            &[
                &name.as_str(),
                &patch.state.map(ServerState::as_str),
                &patch.max_tenants,
                &patch.migrate_concurrency,
            ],
        )
        .await?;
    if updated == 0 {
        return Err(ServersError::NotFound(Some(name.to_string())));
    }
    info!(?patch, "updated a server");
    view(&sys, name).await
}

/// Removes a server that holds no tenant (purged ones hold no database), then drops the
/// templates this registry built there (best effort: a server being decommissioned may be gone
/// already; they are then logged and left, and a cluster registered again later meets them as
/// databases it cannot prove it made).
///
/// The check and the removal are one transaction that holds the server's row, as a placement
/// does until its tenant is committed: a tenant placed meanwhile is counted, and the answer is a
/// conflict that changed nothing (the templates stay). Only once the row is gone are its
/// templates dropped, by the proof (name and OID) read in that transaction.
#[instrument(skip_all, fields(server = %name))]
pub async fn remove_server(db: &Database, name: &ServerName) -> Result<ServerView, ServersError> {
    if name.as_str() == PRIMARY {
        return Err(ServersError::Conflict(
            "Server 'primary' holds the registry and cannot be removed".into(),
        ));
    }
    let holds_tenants = || {
        ServersError::Conflict(format!(
            "Server '{name}' holds tenants; drain it and purge them first"
        ))
    };
    let sys = db.system().await?;
    let before = view(&sys, name).await?;
    let tx = sys.begin().await?;
    let removed = async {
        let Some(server) = tx
            .locking()
            .query_opt(
                "SELECT host, port, secret_arn FROM servers WHERE name = $1 FOR UPDATE",
                &[&name.as_str()],
            )
            .await?
        else {
            return Ok(Err(ServersError::NotFound(Some(name.to_string()))));
        };
        let source = ServerSource::from_row(&server)?;
        let tenants: i64 = tx
            .query_one(
                "SELECT count(*) AS n FROM tenants WHERE server = $1 AND status <> 'purged'",
                &[&name.as_str()],
            )
            .await?
            .try_get("n")?;
        if tenants > 0 {
            return Ok(Err(holds_tenants()));
        }
        let templates: Vec<(String, i64)> = tx
            .query(
                "SELECT name, database_oid FROM tenant_templates WHERE server = $1",
                &[&name.as_str()],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("database_oid")?)))
            .collect::<Result<_, tokio_postgres::Error>>()?;
        // Its templates' records go with it (ON DELETE CASCADE); purged tenants keep no server.
        tx.locking()
            .execute("DELETE FROM servers WHERE name = $1", &[&name.as_str()])
            .await?;
        Ok::<_, DbError>(Ok((source, templates)))
    }
    .await;
    let (source, templates) = match removed {
        Ok(Ok(found)) => {
            tx.commit().await?;
            found
        }
        Ok(Err(refusal)) => {
            tx.rollback().await;
            return Err(refusal);
        }
        Err(e) => {
            tx.rollback().await;
            // A tenant committed under our snapshot: its server cannot be set to null.
            if e.code() == Some(&SqlState::CHECK_VIOLATION) {
                return Err(holds_tenants());
            }
            return Err(e.into());
        }
    };
    drop(sys);
    info!("removed a server");
    let server = db.server_at(name.as_str(), source).await;
    let dropped = async {
        let admin = server.admin().await?;
        for (template, oid) in &templates {
            ownership::drop_if_ours(&admin, template, Some(*oid)).await?;
        }
        Ok::<_, DbError>(())
    }
    .await;
    if let Err(e) = dropped {
        warn!(error = %error_chain(&e), "could not drop the removed server's templates; left there");
    }
    db.forget_server(name.as_str()).await;
    Ok(before)
}

/// Why no server could take a new tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoom {
    /// The requested server does not exist.
    Unknown(String),
    /// The requested server is draining.
    Draining(String),
    /// No open server (or not the requested one) has room.
    Full(Option<String>),
}

/// A server a new tenant may go to.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub name: String,
    pub source: Option<ServerSource>,
}

/// The servers a new tenant may go to, best first: the requested one, or every open server
/// with room, the most room first. Room is counted again, under the server's row lock, when
/// the tenant is inserted ([`claim`]).
pub(crate) async fn candidates(
    sys: &Conn,
    requested: Option<&ServerName>,
) -> Result<Result<Vec<Candidate>, NoRoom>, DbError> {
    let rows = sys
        .query(
            "SELECT s.name, s.state, s.host, s.port, s.secret_arn, \
                    s.max_tenants - count(t.id) FILTER (WHERE t.status <> 'purged') AS room \
             FROM servers s LEFT JOIN tenants t ON t.server = s.name \
             WHERE $1::text IS NULL OR s.name = $1 \
             GROUP BY s.name ORDER BY room DESC, s.name",
            &[&requested.map(ServerName::as_str)],
        )
        .await?;
    let mut found = Vec::new();
    for row in &rows {
        let name: String = row.try_get("name")?;
        let state: String = row.try_get("state")?;
        let room: i64 = row.try_get("room")?;
        if state != ServerState::Open.as_str() {
            if requested.is_some() {
                return Ok(Err(NoRoom::Draining(name)));
            }
            continue;
        }
        if room > 0 {
            found.push(Candidate {
                source: ServerSource::from_row(row)?,
                name,
            });
        }
    }
    Ok(match requested {
        Some(r) if rows.is_empty() => Err(NoRoom::Unknown(r.to_string())),
        Some(r) if found.is_empty() => Err(NoRoom::Full(Some(r.to_string()))),
        None if found.is_empty() => Err(NoRoom::Full(None)),
        _ => Ok(found),
    })
}

/// Whether a server can take one more tenant, decided in the caller's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Open, with room: the caller inserts its tenant in this transaction, and concurrent
    /// placements on the server wait for it to commit before counting.
    Room,
    Full,
    Draining,
    Gone,
}

/// Takes the server's row lock (`FOR UPDATE`, waited for within the lock timeout), then
/// counts its tenants: a statement of its own, so its snapshot sees every tenant committed by
/// the placements that held the lock before.
pub(crate) async fn claim(tx: &Tx<'_>, name: &str) -> Result<Claim, DbError> {
    let Some(row) = tx
        .locking()
        .query_opt(
            "SELECT state, max_tenants FROM servers WHERE name = $1 FOR UPDATE",
            &[&name],
        )
        .await?
    else {
        return Ok(Claim::Gone);
    };
    let state: String = row.try_get("state")?;
    if state != ServerState::Open.as_str() {
        return Ok(Claim::Draining);
    }
    let max: i32 = row.try_get("max_tenants")?;
    let count: i64 = tx
        .query_one(
            "SELECT count(*) AS n FROM tenants WHERE server = $1 AND status <> 'purged'",
            &[&name],
        )
        .await?
        .try_get("n")?;
    Ok(if count < i64::from(max) {
        Claim::Room
    } else {
        Claim::Full
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        for ok in ["primary", "eu-west-1a", "rds_2", "s"] {
            assert!(ServerName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Primary", "1a", "a b", "a.b", &"a".repeat(64)] {
            assert!(ServerName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bodies_name_each_problem() {
        let ok = parse_new_server(
            br#"{"name": "second", "host": "db2.internal", "port": 5432,
                 "secret_arn": "dbtools/servers/second", "max_tenants": 100,
                 "migrate_concurrency": 5}"#,
        )
        .unwrap();
        assert_eq!(
            (ok.name.as_str(), ok.port, ok.max_tenants),
            ("second", 5432, 100)
        );
        let fields = |body: &str| match parse_new_server(body.as_bytes()) {
            Err(ServersError::Validation { details, .. }) => {
                details.into_iter().map(|d| d.field).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            fields(r#"{"name": "Bad", "port": 0, "extra": 1}"#),
            [
                "name",
                "host",
                "port",
                "secret_arn",
                "max_tenants",
                "migrate_concurrency",
                "extra"
            ]
        );
        assert!(matches!(
            parse_patch(b"{}"),
            Err(ServersError::Validation { .. })
        ));
        assert!(matches!(
            parse_patch(br#"{"state": "closed"}"#),
            Err(ServersError::Validation { .. })
        ));
        assert_eq!(
            parse_patch(br#"{"state": "draining", "max_tenants": 0}"#).unwrap(),
            ServerPatch {
                state: Some(ServerState::Draining),
                max_tenants: Some(0),
                migrate_concurrency: None
            }
        );
    }
}
