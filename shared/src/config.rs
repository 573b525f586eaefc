//! Configuration, read once at start-up from an explicit list of environment variables.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DB_SECRET_ID` | Secrets Manager secret (id or ARN) in the RDS format | required unless `DATABASE_URL` |
//! | `DATABASE_URL` | `postgres://user:pass@host:port/db`, replaces the secret (quick local use) | unset |
//! | `DB_HOST`, `DB_PORT`, `DB_NAME` | supply or override the secret's `host`, `port`, `dbname` | unset |
//! | `SYSTEM_DB_NAME` | the registry database | `dbtools` |
//! | `DB_SSLMODE` | `disable` or `require` (TLS with certificate and host name verification) | `require` |
//! | `DB_CA_BUNDLE` | PEM file of the CAs trusted for PostgreSQL's certificate (all certificates in it, instead of the system roots) | unset |
//! | `DB_CONNECT_TIMEOUT_SECS` | TCP + TLS + authentication | `3` |
//! | `DB_STATEMENT_TIMEOUT_SECS` | server-side statement timeout on our sessions (0 = none) | `20` |
//! | `DB_LOCK_TIMEOUT_SECS` | longest wait for a tenant or fleet lock | `10` |
//! | `PROVISIONING_LEASE_SECONDS` | how long a `provisioning` row is presumed alive | `35` |
//!
//! The secret's `dbname` (or `DB_NAME`) is the *maintenance* database: it is used only to
//! create the system database when it does not exist yet. Default `postgres`.

use std::{path::PathBuf, time::Duration};

use secrecy::SecretString;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("missing configuration: set {0}")]
    Missing(&'static str),
    #[error("invalid configuration: {var} {reason}")]
    Invalid { var: &'static str, reason: String },
}

/// Where the PostgreSQL credentials come from.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// A Secrets Manager secret id or ARN.
    Secret(String),
    /// A connection URL (local use).
    Url(SecretString),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// TLS is mandatory (never falls back to plaintext) and the server certificate is verified.
    Require,
}

/// Values that supply or override what the secret holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnOverrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub credentials: CredentialSource,
    pub overrides: ConnOverrides,
    pub system_db: String,
    pub ssl_mode: SslMode,
    pub ca_bundle: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    /// A little above the create function's timeout (28 s): past it, a `provisioning` row
    /// belongs to a dead process.
    pub provisioning_lease: Duration,
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get` (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let credentials = match (get("DB_SECRET_ID"), get("DATABASE_URL")) {
            (Some(id), _) => CredentialSource::Secret(id),
            (None, Some(url)) => CredentialSource::Url(SecretString::from(url)),
            (None, None) => return Err(ConfigError::Missing("DB_SECRET_ID (or DATABASE_URL)")),
        };
        let port = match get("DB_PORT") {
            None => None,
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                ConfigError::Invalid {
                    var: "DB_PORT",
                    reason: format!("must be a TCP port, got {p:?}"),
                }
            })?),
        };
        let ssl_mode = match get("DB_SSLMODE").as_deref() {
            None | Some("require") => SslMode::Require,
            Some("disable") => SslMode::Disable,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "DB_SSLMODE",
                    reason: format!("must be `disable` or `require`, got {other:?}"),
                })
            }
        };
        let system_db = get("SYSTEM_DB_NAME").unwrap_or_else(|| "dbtools".to_owned());
        if system_db.len() > 63 {
            return Err(ConfigError::Invalid {
                var: "SYSTEM_DB_NAME",
                reason: "must be at most 63 bytes".into(),
            });
        }
        Ok(Config {
            credentials,
            overrides: ConnOverrides {
                host: get("DB_HOST"),
                port,
                dbname: get("DB_NAME"),
            },
            system_db,
            ssl_mode,
            ca_bundle: get("DB_CA_BUNDLE").map(PathBuf::from),
            connect_timeout: secs(&get, "DB_CONNECT_TIMEOUT_SECS", 3)?,
            statement_timeout: secs(&get, "DB_STATEMENT_TIMEOUT_SECS", 20)?,
            lock_timeout: secs(&get, "DB_LOCK_TIMEOUT_SECS", 10)?,
            provisioning_lease: secs(&get, "PROVISIONING_LEASE_SECONDS", 35)?,
        })
    }
}

fn secs(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
) -> Result<Duration, ConfigError> {
    match get(var) {
        None => Ok(Duration::from_secs(default)),
        Some(v) => v
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| ConfigError::Invalid {
                var,
                reason: format!("must be a whole number of seconds, got {v:?}"),
            }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn names_the_missing_credentials_variable() {
        let err = config(&[]).unwrap_err();
        assert_eq!(err, ConfigError::Missing("DB_SECRET_ID (or DATABASE_URL)"));
        assert!(err.to_string().contains("DB_SECRET_ID"));
    }

    #[test]
    fn secret_with_defaults() {
        let c = config(&[("DB_SECRET_ID", "dbtools/admin")]).unwrap();
        assert!(matches!(c.credentials, CredentialSource::Secret(ref s) if s == "dbtools/admin"));
        assert_eq!(c.system_db, "dbtools");
        assert_eq!(
            c.ssl_mode,
            SslMode::Require,
            "TLS unless explicitly disabled"
        );
        assert_eq!(c.overrides, ConnOverrides::default());
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
    }

    #[test]
    fn overrides_and_ssl() {
        let c = config(&[
            ("DB_SECRET_ID", "x"),
            ("DB_HOST", "db.internal"),
            ("DB_PORT", "6432"),
            ("DB_NAME", "postgres"),
            ("DB_SSLMODE", "disable"),
            ("SYSTEM_DB_NAME", "registry"),
        ])
        .unwrap();
        assert_eq!(c.overrides.host.as_deref(), Some("db.internal"));
        assert_eq!(c.overrides.port, Some(6432));
        assert_eq!(c.ssl_mode, SslMode::Disable);
        assert_eq!(c.system_db, "registry");
    }

    #[test]
    fn rejects_bad_values_naming_the_variable() {
        let e = config(&[("DB_SECRET_ID", "x"), ("DB_SSLMODE", "prefer")]).unwrap_err();
        assert!(e.to_string().contains("DB_SSLMODE"), "{e}");
        let e = config(&[("DB_SECRET_ID", "x"), ("DB_PORT", "99999")]).unwrap_err();
        assert!(e.to_string().contains("DB_PORT"), "{e}");
        let e = config(&[("DB_SECRET_ID", "x"), ("DB_CONNECT_TIMEOUT_SECS", "soon")]).unwrap_err();
        assert!(e.to_string().contains("DB_CONNECT_TIMEOUT_SECS"), "{e}");
    }

    #[test]
    fn database_url_replaces_the_secret() {
        let c = config(&[("DATABASE_URL", "postgres://u:p@h/d")]).unwrap();
        assert!(matches!(c.credentials, CredentialSource::Url(_)));
    }
}
