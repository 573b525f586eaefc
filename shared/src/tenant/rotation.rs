//! Secrets Manager's rotation protocol for a tenant's secret, single-user strategy: the
//! tenant's login gets a new password; the application reads it from the secret.
//!
//! Secrets Manager calls the function four times with the same `ClientRequestToken` (the new
//! version's id), and may repeat any call; each step is idempotent:
//! 1. `createSecret`: the `AWSPENDING` version gets the current credentials with a new random
//!    password (nothing, if it has a value already);
//! 2. `setSecret`: the login gets the pending password (its SCRAM verifier, computed here), on
//!    the tenant's server;
//! 3. `testSecret`: a connection to the tenant's database *as the tenant's login*, with the
//!    pending credentials (their host and port: the tenant's server);
//! 4. `finishSecret`: `AWSCURRENT` moves to the new version.
//!
//! Only a secret the registry records as a tenant's (its `credentials_secret_arn`), of an
//! `active` tenant, whose login is ours, is rotated. The secret's tags are never trusted for
//! this: whoever may tag their own secret could otherwise have a neighbour's login re-keyed.
//! `setSecret` works under the tenant's lock and reads the tenant again there, so that a
//! delete (which disables the login under the same lock) is never undone by a rotation: a
//! tenant deleted meanwhile is refused, its login left disabled. Secrets Manager creates the
//! pending version's entry before `createSecret`; called without one (by hand, or by the local
//! tests that play Secrets Manager's part), `createSecret` creates it.

use secrecy::{ExposeSecret, SecretString};
use tracing::info;

use crate::{
    aws::secrets::SecretsError,
    config::ConnOverrides,
    database::{credentials::parse_secret, Database},
    domain::TenantStatus,
    pg::{
        locks::{self, Lock},
        Conn, DbError,
    },
    tenant::{
        access::login::{self, Login, RoleState},
        lifecycle::Entry,
        registry::TENANT_COLUMNS,
    },
};

const PENDING: &str = "AWSPENDING";
const CURRENT: &str = "AWSCURRENT";

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The event, or the secret it names, is not something this function rotates.
    #[error("{0}")]
    Invalid(String),
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

impl RotationError {
    /// The `errorType` Lambda reports.
    pub fn error_type(&self) -> &'static str {
        match self {
            RotationError::Invalid(_) => "InvalidRequest",
            RotationError::Unavailable(_) => "DependencyUnavailable",
            RotationError::Failed(_) => "RotationFailed",
        }
    }
}

impl From<DbError> for RotationError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) | DbError::TimedOut(m) => RotationError::Unavailable(m),
            other => RotationError::Failed(crate::pg::error_chain(&other)),
        }
    }
}

impl From<SecretsError> for RotationError {
    fn from(e: SecretsError) -> Self {
        DbError::from(e).into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Create,
    Set,
    Test,
    Finish,
}

impl Step {
    fn parse(raw: &str) -> Option<Step> {
        Some(match raw {
            "createSecret" => Step::Create,
            "setSecret" => Step::Set,
            "testSecret" => Step::Test,
            "finishSecret" => Step::Finish,
            _ => return None,
        })
    }
}

/// Runs one step of the protocol (`Step`, `SecretId`, `ClientRequestToken` of the event).
pub async fn rotate(
    db: &Database,
    step: &str,
    arn: &str,
    token: &str,
) -> Result<(), RotationError> {
    let step = Step::parse(step)
        .ok_or_else(|| RotationError::Invalid(format!("unknown step {:?}", clip(step))))?;
    if token.is_empty() || token.len() > 64 {
        return Err(RotationError::Invalid("invalid ClientRequestToken".into()));
    }
    let secrets = db.secrets();
    let versions = secrets
        .versions(arn)
        .await?
        .ok_or_else(|| RotationError::Invalid("no such secret".into()))?;
    let stages = versions.stages.get(token);
    if stages.is_some_and(|s| s.iter().any(|l| l == CURRENT)) {
        info!(?step, "this version is current already; nothing to do");
        return Ok(());
    }
    let pending = stages.is_some_and(|s| s.iter().any(|l| l == PENDING));
    if !pending && (step != Step::Create || stages.is_some()) {
        return Err(RotationError::Invalid(format!(
            "version {} is not pending rotation",
            clip(token)
        )));
    }
    let entry = tenant(db, &versions.arn).await?;
    let tenant_id = entry.tenant.id;
    match step {
        Step::Create => {
            if secrets.value(arn, Some(token), PENDING).await?.is_some() {
                return Ok(());
            }
            let current = secrets
                .value(arn, None, CURRENT)
                .await?
                .ok_or_else(|| RotationError::Failed("the secret has no current value".into()))?;
            let pending = with_new_password(&current)?;
            secrets.put_pending(arn, token, &pending).await?;
            info!(tenant.slug = %entry.access.slug, "created the pending version of a tenant secret");
        }
        Step::Set => {
            let password = pending_params(db, arn, token).await?.password;
            let sys = db.system().await?;
            let lock = Lock::Tenant(entry.tenant.slug.clone());
            let Some(guard) = locks::acquire(&sys, lock, db.config().lock_timeout).await? else {
                return Err(RotationError::Unavailable(format!(
                    "tenant '{}' is being changed by another operation",
                    entry.tenant.slug
                )));
            };
            let set = async {
                // Under the lock: still the active tenant of this secret?
                let entry = tenant_on(db, &sys, &versions.arn).await?;
                let server = entry.server(db, &sys).await?;
                let admin = server.admin().await?;
                if login::state(&admin, &entry.access.role, tenant_id).await? == RoleState::NotOurs
                {
                    return Err(RotationError::Failed(
                        "the login of this tenant's name is not ours".into(),
                    ));
                }
                let login = Login {
                    role: &entry.access.role,
                    database: &entry.access.database,
                    tenant_id,
                    connection_limit: db.config().tenants.connection_limit,
                };
                login.rekey(&admin, &password, true).await?;
                Ok(())
            }
            .await;
            guard.release().await;
            set?;
            info!(tenant.slug = %entry.access.slug, "set the tenant login's new password");
        }
        Step::Test => {
            let params = pending_params(db, arn, token).await?;
            let conn = db
                .connect_as(&params, &entry.access.database)
                .await
                .map_err(|e| {
                    RotationError::Failed(format!(
                        "the new password does not open the tenant's database: {}",
                        safe(&e)
                    ))
                })?;
            conn.query_one("SELECT 1", &[]).await?;
        }
        Step::Finish => {
            let from = versions
                .stages
                .iter()
                .find(|(_, labels)| labels.iter().any(|l| l == CURRENT))
                .map(|(id, _)| id.as_str());
            secrets.make_current(arn, token, from).await?;
            info!(tenant.slug = %entry.access.slug, "rotated a tenant secret");
        }
    }
    Ok(())
}

/// The active tenant whose secret the registry records at `arn`.
async fn tenant(db: &Database, arn: &str) -> Result<Entry, RotationError> {
    let sys = db.system().await?;
    tenant_on(db, &sys, arn).await
}

/// [`tenant`], on the caller's registry connection.
async fn tenant_on(db: &Database, sys: &Conn, arn: &str) -> Result<Entry, RotationError> {
    let row = sys
        .query_opt(
            &format!(
                "SELECT {TENANT_COLUMNS}, {} FROM tenants WHERE credentials_secret_arn = $1",
                Entry::COLUMNS
            ),
            &[&arn],
        )
        .await?
        .ok_or_else(|| {
            RotationError::Invalid("not a tenant secret of this product's registry".into())
        })?;
    let entry = Entry::from_row(&row, &db.config().tenants.secret_prefix)?;
    if entry.moving() {
        // Its password goes to the target's login during the move: rotated after it (Secrets
        // Manager tries the rotation again).
        return Err(RotationError::Failed(format!(
            "tenant '{}' is moving to another server; its secret is rotated after the move",
            entry.tenant.slug
        )));
    }
    if entry.tenant.status != TenantStatus::Active {
        return Err(RotationError::Failed(format!(
            "tenant '{}' is {}; its secret is rotated while it is active",
            entry.tenant.slug,
            entry.tenant.status.as_str()
        )));
    }
    Ok(entry)
}

/// The current credentials with a new random password.
fn with_new_password(current: &SecretString) -> Result<SecretString, RotationError> {
    let mut value: serde_json::Value = serde_json::from_str(current.expose_secret())
        .map_err(|_| RotationError::Failed("the current value is not JSON".into()))?;
    let fields = value
        .as_object_mut()
        .ok_or_else(|| RotationError::Failed("the current value is not a JSON object".into()))?;
    let password = login::new_password();
    fields.insert(
        "password".into(),
        serde_json::Value::String(password.expose_secret().to_owned()),
    );
    Ok(SecretString::from(value.to_string()))
}

async fn pending_params(
    db: &Database,
    arn: &str,
    token: &str,
) -> Result<crate::pg::ConnectParams, RotationError> {
    let text = db
        .secrets()
        .value(arn, Some(token), PENDING)
        .await?
        .ok_or_else(|| RotationError::Failed("the pending version has no value yet".into()))?;
    parse_secret(text.expose_secret(), &ConnOverrides::default())
        .map_err(|e| RotationError::Failed(e.to_string()))
}

/// An error of the tenant's own connection, as the answer may show it (no host).
fn safe(e: &DbError) -> String {
    match e {
        DbError::Postgres(pg) => pg
            .as_db_error()
            .map(|d| format!("{} ({})", d.message(), d.code().code()))
            .unwrap_or_else(|| "connection refused".into()),
        _ => "the database could not be reached".into(),
    }
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_password_keeps_everything_else() {
        let current = SecretString::from(
            serde_json::json!({"engine": "postgres", "host": "h", "port": 5432, "dbname": "d",
                "username": "u", "password": "old"})
            .to_string(),
        );
        let next: serde_json::Value =
            serde_json::from_str(with_new_password(&current).unwrap().expose_secret()).unwrap();
        assert_eq!(next["username"], "u");
        assert_eq!(next["port"], 5432);
        let password = next["password"].as_str().unwrap();
        assert_ne!(password, "old");
        assert_eq!(password.len(), 43);
    }

    #[test]
    fn only_the_four_steps_are_known() {
        assert_eq!(Step::parse("createSecret"), Some(Step::Create));
        assert_eq!(Step::parse("finishSecret"), Some(Step::Finish));
        assert_eq!(Step::parse("deleteSecret"), None);
    }
}
