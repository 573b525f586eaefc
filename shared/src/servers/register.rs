//! Registering a server: its secret and the server itself checked for real before its record
//! is written (see [`crate::servers`]).

use secrecy::ExposeSecret;
use tokio_postgres::error::SqlState;
use tracing::{info, instrument, warn};

use super::{
    error::ServersError,
    hardening,
    view::{view, ServerView},
};
use crate::{
    aws::secrets::{self, NamedSecret, SecretsError},
    config::{ConnOverrides, CredentialSource},
    database::{credentials::parse_secret, Database, PRIMARY},
    domain::ServerName,
    pg::{error_chain, transport, Conn, DbError},
};

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
    // Registered: only now are its shared databases changed (see `crate::servers::hardening`; every
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
/// SCRAM-SHA-256 (see [`crate::pg::transport`]).
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
