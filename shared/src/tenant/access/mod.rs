//! A tenant's access: its login (see [`crate::tenant::access::login`]) on the tenant's server, and the secret
//! that holds its credentials (see [`crate::aws::secrets`]) with that server's host and port, made,
//! repaired, disabled and removed together, each step safe to repeat and touching only what is
//! proven ours. Every function takes the admin connection of the tenant's server.
//!
//! The password is only ever in the function's memory and in the secret: the login gets its
//! SCRAM verifier. Where a step died between the two (a login without its secret, or a secret
//! whose password the login may not have), [`ensure`] re-keys both with a new password.

pub(crate) mod login;

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tracing::{info, warn};
use uuid::Uuid;

use crate::{
    aws::secrets::{Deletion, NewSecret, SecretState, TenantCredentials},
    config::ConnOverrides,
    database::{credentials::parse_secret, Admin, Database},
    pg::{Conn, DbError},
    tenant::access::login::{Login, RoleState},
};

/// The names of a tenant's access, as its registry row stores them.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    pub tenant_id: Uuid,
    pub slug: String,
    pub database: String,
    pub role: String,
    pub secret_name: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AccessError {
    /// A login or secret of the tenant's name exists that the product did not make: never
    /// adopted, altered nor deleted.
    #[error("a {0} of this tenant's name exists outside the registry")]
    Foreign(&'static str),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<crate::aws::secrets::SecretsError> for AccessError {
    fn from(e: crate::aws::secrets::SecretsError) -> Self {
        AccessError::Db(e.into())
    }
}

impl Access {
    /// From a registry row that has `id`, `slug`, `database_name`, `role_name` and
    /// `secret_name`. A row made before logins existed has neither name: the names it would
    /// have had (nothing of the tenant's can exist under them yet; what does is not ours).
    pub(crate) fn from_row(
        row: &tokio_postgres::Row,
        secret_prefix: &str,
    ) -> Result<Access, DbError> {
        let slug: String = row.try_get("slug")?;
        let database: String = row.try_get("database_name")?;
        Ok(Access {
            tenant_id: row.try_get("id")?,
            role: row
                .try_get::<_, Option<String>>("role_name")?
                .unwrap_or_else(|| database.clone()),
            secret_name: row
                .try_get::<_, Option<String>>("secret_name")?
                .unwrap_or_else(|| format!("{secret_prefix}{slug}")),
            database,
            slug,
        })
    }

    fn login(&self, db: &Database) -> Login<'_> {
        Login {
            role: &self.role,
            database: &self.database,
            tenant_id: self.tenant_id,
            connection_limit: db.config().tenants.connection_limit,
        }
    }

    fn credentials<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        password: &'a SecretString,
    ) -> TenantCredentials<'a> {
        TenantCredentials {
            engine: "postgres",
            host,
            port,
            dbname: &self.database,
            username: &self.role,
            password,
        }
    }

    /// Makes the secret with `password`; turns rotation on when configured. `Foreign` when
    /// the name is taken by a secret that is not ours.
    async fn create_secret(
        &self,
        db: &Database,
        admin: &Admin<'_>,
        password: &SecretString,
    ) -> Result<String, AccessError> {
        let (host, port) = admin.server().endpoint().await?;
        let settings = &db.config().tenants;
        let new = NewSecret {
            name: &self.secret_name,
            tenant_id: self.tenant_id,
            slug: &self.slug,
            kms_key_id: settings.secret_kms_key_id.as_deref(),
            credentials: self.credentials(&host, port, password),
        };
        let arn = match db.secrets().create(&new).await? {
            Some(arn) => arn,
            None => match db
                .secrets()
                .state(&self.secret_name, self.tenant_id)
                .await?
            {
                // Made by an earlier attempt whose answer was lost: give it this password.
                SecretState::Ours {
                    arn,
                    deleting: false,
                } => {
                    db.secrets().put(&arn, &new.credentials).await?;
                    arn
                }
                SecretState::Ours { deleting: true, .. } | SecretState::NotOurs => {
                    return Err(AccessError::Foreign("secret"))
                }
                SecretState::Absent => {
                    return Err(AccessError::Db(DbError::Unavailable(
                        "the secret's name was taken and then free again; retry".into(),
                    )))
                }
            },
        };
        if let Some(rotation) = &settings.rotation {
            db.secrets()
                .enable_rotation(&arn, &rotation.function_arn, rotation.days)
                .await?;
        }
        Ok(arn)
    }
}

/// A new tenant's access, after its database exists: the login (with `CONNECT` on the
/// database) on the tenant's server, then the secret, which names that server. Returns the
/// secret's ARN.
pub(crate) async fn create(
    db: &Database,
    admin: &Admin<'_>,
    access: &Access,
) -> Result<(String, AccessTimes), AccessError> {
    let started = Instant::now();
    let password = login::new_password();
    if !access.login(db).create(admin, &password, true).await? {
        // A role of that name exists; a new row's id cannot be in its mark.
        return Err(AccessError::Foreign("login"));
    }
    let login = started.elapsed();
    let started = Instant::now();
    let arn = access.create_secret(db, admin, &password).await?;
    Ok((
        arn,
        AccessTimes {
            login,
            secret: started.elapsed(),
        },
    ))
}

/// How long a new tenant's login and secret took to make (the create logs them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AccessTimes {
    pub(crate) login: Duration,
    pub(crate) secret: Duration,
}

/// Brings a tenant's access to what it must be, whatever an interrupted step left: a login of
/// ours (made if missing), that may log in or not (`can_login`), with `CONNECT` on its
/// database, and a secret of ours whose password the login has. With `rekey`, or whenever a
/// piece is missing, both get a new password; otherwise the password is left as it is (a
/// restore: the application keeps its secret). Returns the secret's ARN.
pub(crate) async fn ensure(
    db: &Database,
    admin: &Admin<'_>,
    access: &Access,
    rekey: bool,
    can_login: bool,
) -> Result<String, AccessError> {
    let role = login::state(admin, &access.role, access.tenant_id).await?;
    let secret = db
        .secrets()
        .state(&access.secret_name, access.tenant_id)
        .await?;
    if role == RoleState::NotOurs {
        return Err(AccessError::Foreign("login"));
    }
    let arn = match secret {
        SecretState::NotOurs | SecretState::Ours { deleting: true, .. } => {
            return Err(AccessError::Foreign("secret"))
        }
        SecretState::Ours { arn, .. } => Some(arn),
        SecretState::Absent => None,
    };
    let login = access.login(db);
    if !rekey && role != RoleState::Absent {
        if let Some(arn) = arn {
            // Both there: the password stays; attributes and grants are set again.
            login.refresh(admin, can_login).await?;
            return Ok(arn);
        }
    }
    let password = login::new_password();
    match role {
        RoleState::Absent => {
            if !login.create(admin, &password, can_login).await? {
                return Err(AccessError::Foreign("login"));
            }
        }
        _ => login.rekey(admin, &password, can_login).await?,
    }
    let arn = match arn {
        Some(arn) => {
            let (host, port) = admin.server().endpoint().await?;
            let credentials = access.credentials(&host, port, &password);
            db.secrets().put(&arn, &credentials).await?;
            arn
        }
        None => access.create_secret(db, admin, &password).await?,
    };
    info!(tenant.slug = %access.slug, "the tenant's login and secret were made or re-keyed");
    Ok(arn)
}

/// The tenant's login on a move's target server, with `password` (the one its secret holds)
/// and `CONNECT` on its database there, refusing sessions until the move's switch opens it
/// (`login::set_login`). Made, or set again when an earlier attempt made it.
pub(crate) async fn place_closed(
    db: &Database,
    admin: &Admin<'_>,
    access: &Access,
    password: &SecretString,
) -> Result<(), AccessError> {
    let login = access.login(db);
    match login::state(admin, &access.role, access.tenant_id).await? {
        RoleState::NotOurs => Err(AccessError::Foreign("login")),
        RoleState::Ours { .. } => Ok(login.rekey(admin, password, false).await?),
        RoleState::Absent => {
            login::ensure_group(admin).await?;
            if login.create(admin, password, false).await? {
                Ok(())
            } else {
                Err(AccessError::Foreign("login"))
            }
        }
    }
}

/// What the tenant's secret holds now (`AWSCURRENT`): its password, host and port.
pub(crate) struct Current {
    pub password: SecretString,
    pub host: String,
    pub port: u16,
}

/// Reads the tenant's secret as it is now.
pub(crate) async fn current(db: &Database, arn: &str) -> Result<Current, AccessError> {
    let text = db
        .secrets()
        .value(arn, None, "AWSCURRENT")
        .await?
        .ok_or(AccessError::Foreign("secret"))?;
    // The RDS format, read as a server's admin secret is (its errors never quote a value).
    let params =
        parse_secret(text.expose_secret(), &ConnOverrides::default()).map_err(DbError::from)?;
    Ok(Current {
        password: params.password,
        host: params.host,
        port: params.port,
    })
}

/// Points the tenant's secret at the admin connection's server (a new version, `AWSCURRENT`),
/// its password unchanged. Nothing is written when it points there already.
pub(crate) async fn point_secret(
    db: &Database,
    admin: &Admin<'_>,
    access: &Access,
    arn: &str,
) -> Result<(), AccessError> {
    let (host, port) = admin.server().endpoint().await?;
    let now = current(db, arn).await?;
    if now.host == host && now.port == port {
        return Ok(());
    }
    let credentials = access.credentials(&host, port, &now.password);
    db.secrets().put(arn, &credentials).await?;
    info!(tenant.slug = %access.slug, "the tenant's secret names its new server");
    Ok(())
}

/// Refuses new sessions of the tenant's login and ends its sessions (a soft delete). A login
/// that is not ours, or none, is left alone.
pub(crate) async fn disable(admin: &Conn, access: &Access) -> Result<(), DbError> {
    match login::state(admin, &access.role, access.tenant_id).await? {
        RoleState::Ours { can_login } => {
            if can_login {
                login::set_login(admin, &access.role, false).await?;
            }
            // Sessions opened before NOLOGIN took effect end here, on every call.
            let ended = login::end_sessions(admin, &access.role).await?;
            if ended > 0 {
                info!(tenant.slug = %access.slug, ended, "ended the sessions of a deleted tenant's login");
            }
        }
        RoleState::NotOurs => {
            warn!(tenant.slug = %access.slug, "the login of this tenant's name is not ours; left alone")
        }
        RoleState::Absent => {}
    }
    Ok(())
}

/// Drops the login and deletes the secret, where ours (`deletion`: at once for a rollback, with
/// a recovery window for a purge).
pub(crate) async fn remove(
    db: &Database,
    admin: &Admin<'_>,
    access: &Access,
    deletion: Deletion,
) -> Result<(), DbError> {
    login::drop_if_ours(admin, &access.role, access.tenant_id).await?;
    match db
        .secrets()
        .state(&access.secret_name, access.tenant_id)
        .await?
    {
        SecretState::Ours {
            arn,
            deleting: false,
        } => {
            db.secrets().delete(&arn, deletion).await?;
            info!(tenant.slug = %access.slug, "deleted the tenant's secret");
        }
        SecretState::NotOurs => {
            warn!(tenant.slug = %access.slug, "the secret of this tenant's name is not ours; left alone")
        }
        SecretState::Ours { deleting: true, .. } | SecretState::Absent => {}
    }
    Ok(())
}
