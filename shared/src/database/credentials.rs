//! The admin's PostgreSQL credentials: read from Secrets Manager (RDS secret format) once per
//! sandbox and cached, or taken from `DATABASE_URL`; and how their failures count.

use std::{str::FromStr, sync::Arc};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::{
    aws::secrets::{Secrets, SecretsError},
    config::{ConnOverrides, CredentialSource},
    pg::{ConnectParams, DbError},
};

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Secrets Manager could not be reached or answered with a service error.
    #[error("secrets manager unavailable: {0}")]
    Unavailable(String),
    /// The secret exists but cannot be used (operator error).
    #[error("database secret unusable: {0}")]
    Invalid(String),
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

/// The RDS secret format. `port` may be a number or a string; RDS-managed secrets carry only
/// `username` and `password`.
#[derive(Deserialize)]
struct RdsSecret {
    username: String,
    password: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    port: Option<PortValue>,
    #[serde(default)]
    dbname: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortValue {
    Number(u64),
    Text(String),
}

/// Parses an RDS-format secret and applies the overrides.
pub fn parse_secret(
    json: &str,
    overrides: &ConnOverrides,
) -> Result<ConnectParams, CredentialsError> {
    let secret: RdsSecret = serde_json::from_str(json).map_err(|e| {
        // Not serde's message: it can quote the offending value, i.e. the password.
        CredentialsError::Invalid(format!(
            "not an RDS-format JSON secret ({:?} error at line {} column {}; expected string \
             `username` and `password`)",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let secret_port = match secret.port {
        None => None,
        Some(PortValue::Number(n)) => Some(u16::try_from(n).ok()),
        Some(PortValue::Text(s)) => Some(s.trim().parse::<u16>().ok()),
    };
    let port = match (overrides.port, secret_port) {
        (Some(p), _) => p,
        (None, Some(Some(p))) if p != 0 => p,
        (None, Some(_)) => {
            return Err(CredentialsError::Invalid(
                "the secret's port is not a TCP port".into(),
            ))
        }
        (None, None) => 5432,
    };
    let host = overrides.host.clone().or(secret.host).ok_or_else(|| {
        CredentialsError::Invalid("no host in the secret and DB_HOST unset".into())
    })?;
    Ok(ConnectParams {
        host,
        port,
        user: secret.username,
        password: SecretString::from(secret.password),
        maintenance_db: overrides
            .dbname
            .clone()
            .or(secret.dbname)
            .unwrap_or_else(|| "postgres".into()),
    })
}

fn parse_url(
    url: &SecretString,
    overrides: &ConnOverrides,
) -> Result<ConnectParams, CredentialsError> {
    let cfg = tokio_postgres::Config::from_str(url.expose_secret()).map_err(|_| {
        CredentialsError::Invalid("DATABASE_URL is not a valid connection string".into())
    })?;
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => Some(h.clone()),
        _ => None,
    };
    Ok(ConnectParams {
        host: overrides
            .host
            .clone()
            .or(host)
            .ok_or_else(|| CredentialsError::Invalid("DATABASE_URL has no TCP host".into()))?,
        port: overrides
            .port
            .or(cfg.get_ports().first().copied())
            .unwrap_or(5432),
        user: cfg
            .get_user()
            .map(str::to_owned)
            .ok_or_else(|| CredentialsError::Invalid("DATABASE_URL has no user".into()))?,
        password: SecretString::from(
            cfg.get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
        ),
        maintenance_db: overrides
            .dbname
            .clone()
            .or(cfg.get_dbname().map(str::to_owned))
            .unwrap_or_else(|| "postgres".into()),
    })
}

/// Fetches credentials once and caches them for the life of the sandbox. `refresh` forgets
/// the cached value (after an authentication failure, e.g. a rotated password).
pub struct CredentialProvider {
    source: CredentialSource,
    overrides: ConnOverrides,
    secrets: Arc<Secrets>,
    cached: Mutex<Option<Arc<ConnectParams>>>,
}

impl CredentialProvider {
    pub fn new(source: CredentialSource, overrides: ConnOverrides, secrets: Arc<Secrets>) -> Self {
        CredentialProvider {
            source,
            overrides,
            secrets,
            cached: Mutex::new(None),
        }
    }

    pub async fn get(&self) -> Result<Arc<ConnectParams>, CredentialsError> {
        let mut cached = self.cached.lock().await;
        if let Some(params) = cached.as_ref() {
            return Ok(params.clone());
        }
        let params = Arc::new(self.fetch().await?);
        *cached = Some(params.clone());
        Ok(params)
    }

    /// Forgets the cached credentials so that the next `get` reads the secret again.
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn fetch(&self) -> Result<ConnectParams, CredentialsError> {
        match &self.source {
            CredentialSource::Url(url) => parse_url(url, &self.overrides),
            CredentialSource::Secret(id) => {
                let text = self
                    .secrets
                    .read(id)
                    .await
                    .map_err(|e| match e {
                        SecretsError::Unavailable(m) => CredentialsError::Unavailable(m),
                        // Access denied, a KMS key it may not use, a secret scheduled for
                        // deletion: the operator's to fix (a 500 with the cause in the log),
                        // not a server that is away (a 503 that marks it down).
                        SecretsError::Refused(m) => CredentialsError::Invalid(format!(
                            "Secrets Manager refused the secret {id}: {m}"
                        )),
                    })?
                    .ok_or_else(|| CredentialsError::Invalid(format!("secret {id} not found")))?;
                parse_secret(&text, &self.overrides)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_rds_secret_with_numeric_port() {
        let p = parse_secret(
            r#"{"username":"admin","password":"s3cret","host":"db.example","port":5432,"dbname":"postgres","engine":"postgres"}"#,
            &ConnOverrides::default(),
        )
        .unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.user.as_str()),
            ("db.example", 5432, "admin")
        );
        assert_eq!(p.password.expose_secret(), "s3cret");
        assert_eq!(p.maintenance_db, "postgres");
    }

    #[test]
    fn port_may_be_a_string() {
        let p = parse_secret(
            r#"{"username":"a","password":"b","host":"h","port":"6543"}"#,
            &ConnOverrides::default(),
        )
        .unwrap();
        assert_eq!(p.port, 6543);
    }

    #[test]
    fn rds_managed_secret_needs_host_from_environment() {
        let json = r#"{"username":"a","password":"b"}"#;
        let err = parse_secret(json, &ConnOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("DB_HOST"), "{err}");
        let p = parse_secret(
            json,
            &ConnOverrides {
                host: Some("h".into()),
                port: Some(5433),
                dbname: Some("m".into()),
            },
        )
        .unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.maintenance_db.as_str()),
            ("h", 5433, "m")
        );
    }

    #[test]
    fn overrides_win_over_the_secret() {
        let p = parse_secret(
            r#"{"username":"a","password":"b","host":"h","port":1}"#,
            &ConnOverrides {
                host: Some("o".into()),
                port: Some(2),
                dbname: None,
            },
        )
        .unwrap();
        assert_eq!((p.host.as_str(), p.port), ("o", 2));
    }

    #[test]
    fn malformed_secret_never_echoes_the_password() {
        let err = parse_secret(
            r#"{"username":"a","password":12345678}"#,
            &ConnOverrides::default(),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("12345678"), "{err}");
        let err = parse_secret("not json hunter2", &ConnOverrides::default()).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_redacts_the_password() {
        let p = parse_secret(
            r#"{"username":"a","password":"hunter2","host":"h"}"#,
            &ConnOverrides::default(),
        )
        .unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
