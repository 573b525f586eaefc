//! Configuration, read once at start-up from an explicit list of environment variables, and
//! checked for values that contradict each other.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DB_SECRET_ID` | Secrets Manager secret (id or ARN) in the RDS format | required unless `DATABASE_URL` |
//! | `DATABASE_URL` | `postgres://user:pass@host:port/db`, replaces the secret (quick local use) | unset |
//! | `DB_HOST`, `DB_PORT`, `DB_NAME` | supply or override the secret's `host`, `port`, `dbname` | unset |
//! | `SYSTEM_DB_NAME` | the registry database | `dbtools` |
//! | `DB_SSLMODE` | `disable` or `require` (TLS with certificate and host name verification) | `require` |
//! | `DB_CA_BUNDLE` | PEM file of the CAs trusted for PostgreSQL's certificate (all certificates in it, instead of the system roots) | unset |
//! | `DB_CONNECT_TIMEOUT_SECS` | a whole connection: TCP, TLS, authentication | `3` |
//! | `DB_QUERY_TIMEOUT_SECS` | client-side deadline of one registry statement or lock poll; a server that does not answer in time is unavailable and the connection is discarded | `3` |
//! | `DB_STATEMENT_TIMEOUT_SECS` | server-side statement timeout on our sessions; long statements (DDL, migrations) get it plus `DB_QUERY_TIMEOUT_SECS` client-side | `20` |
//! | `DB_LOCK_TIMEOUT_SECS` | longest wait for a tenant, template or fleet lock, and for a table lock | `10` |
//! | `PROVISIONING_LEASE_SECONDS` | how long a `provisioning` row is presumed alive; a create never works past it | `35` |
//! | `IDEMPOTENCY_KEY_TTL_HOURS` | how long an `Idempotency-Key` is remembered | `24` |
//! | `MIGRATE_CONCURRENCY` | migrate-all: tenants migrated at once (1-64) | `10` |
//! | `MIGRATE_TENANT_TIMEOUT_SECS` | migrate-all: longest time one tenant's migration may take | `300` |
//! | `MIGRATE_LOCK_TIMEOUT_MS` | `lock_timeout` of a migration: how long it may make the tenant's queries wait behind it (10-60000) | `2000` |
//! | `MIGRATE_LOCK_RETRIES` | how many times a migration that timed out on a lock is retried, after growing pauses (0-10) | `3` |
//! | `MIGRATE_STATEMENT_TIMEOUT_SECS` | `statement_timeout` of a migration's statements (a concurrent index build on a large table is one) | `MIGRATE_TENANT_TIMEOUT_SECS` |
//! | `RUN_LEDGER_DAYS` | how long the run ledger keeps a run (1-3650) | `90` |
//! | `MIGRATE_QUEUE_URL` | the SQS queue migrate-all fans tenants out on (the `migrate-tenant` function consumes it) | unset: every run inline |
//! | `MIGRATE_INLINE_MAX_TENANTS` | a run with at most this many tenants to open runs inline, in the migrate-all invocation, even with a queue (0-100000) | `50` |
//! | `RUN_STALL_SECS` | a queued run with no progress for this long is stalled: the next migrate-all closes it (`failed`) instead of answering `already_running` | `900` |
//! | `TENANT_CONNECTION_LIMIT` | `CONNECTION LIMIT` of each tenant login (1-10000) | `20` |
//! | `TENANT_SECRET_PREFIX` | tenant secrets are `{prefix}{slug}` | `dbtools/tenants/` |
//! | `TENANT_NAMES` | `slug`: a tenant's database and login are `dbtools_tenant_{slug}`; `opaque`: `dbtools_tenant_0{its id's 32 hex digits}`, so that the catalogs every login can read (`pg_database`, `pg_roles`) name no customer | `slug` |
//! | `HARDEN_SHARED_DATABASES` | `true`: revoke `PUBLIC`'s `CONNECT` and `TEMPORARY` on each server's `postgres` and `template1` where the admin may (see `hardening`); `false`: only report them | `true` |
//! | `SERVER_SECRET_PREFIX` | the admin secrets of registered servers must be named `{prefix}...` (and never the registry's own, nor another server's) | `dbtools/servers/` |
//! | `TENANT_SECRET_KMS_KEY_ID` | KMS key of the tenant secrets | unset: `aws/secretsmanager` |
//! | `TENANT_SECRET_RECOVERY_DAYS` | recovery window of a purged tenant's secret (7-30) | `7` |
//! | `PURGE_AFTER_DAYS` | migrate-all purges tenants deleted this long ago (0: never) | `30` |
//! | `TENANT_ROTATION_DAYS` | turn rotation on for new tenant secrets, every so many days (1-1000) | unset: off |
//! | `TENANT_ROTATION_FUNCTION_ARN` | the rotation function (`rotate-tenant-secret`); required with `TENANT_ROTATION_DAYS` | unset |
//!
//! The secret's `dbname` (or `DB_NAME`) is the *maintenance* database: it is used only to
//! create the system database when it does not exist yet. Default `postgres`.
//!
//! Rules between values, checked by [`Config::from_lookup`]:
//! - every timeout is at least 1 s (0 would mean "wait forever" to PostgreSQL, and every wait
//!   has a deadline);
//! - `DB_STATEMENT_TIMEOUT_SECS` exceeds `DB_LOCK_TIMEOUT_SECS`, so that a lock
//!   wait ends as a lock timeout (a 409 "busy") and not as a cancelled statement (a 500);
//! - `PROVISIONING_LEASE_SECONDS` exceeds `DB_LOCK_TIMEOUT_SECS` plus `DB_QUERY_TIMEOUT_SECS`:
//!   a create waits for its tenant lock and then works, all within its lease (it stops at the
//!   lease, so a lease shorter than the function's timeout shortens creates; it never lets a
//!   live create be taken for dead);
//! - `MIGRATE_STATEMENT_TIMEOUT_SECS` exceeds the migration lock timeout and is at most
//!   `MIGRATE_TENANT_TIMEOUT_SECS`;
//! - `RUN_STALL_SECS` exceeds `MIGRATE_TENANT_TIMEOUT_SECS`: one tenant's migration, however
//!   long, never makes its run look stalled.

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
    pub query_timeout: Duration,
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    /// A little above the create function's timeout (28 s): past it, a `provisioning` row
    /// belongs to a dead process. A create never works past its own lease.
    pub provisioning_lease: Duration,
    pub idempotency_key_ttl: Duration,
    pub migrate_concurrency: usize,
    pub migrate_tenant_timeout: Duration,
    /// How a migration meets a busy database (see [`crate::migrate`]).
    pub migrate_session: MigrationPolicy,
    /// How long the run ledger keeps a run.
    pub run_ledger_days: i32,
    /// The queue of the fan-out (`None`: every run is inline).
    pub migrate_queue_url: Option<String>,
    /// Runs with at most this many tenants to open stay inline.
    pub migrate_inline_max_tenants: usize,
    /// A queued run without progress for this long is stalled.
    pub run_stall: Duration,
    pub tenants: TenantSettings,
    /// The admin secrets of registered servers are named `{prefix}...`.
    pub server_secret_prefix: String,
    /// Revoke `PUBLIC`'s privileges on the servers' shared databases (else only report them).
    pub harden_shared_databases: bool,
}

/// What tenant logins and secrets are made with, and when deleted tenants are purged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSettings {
    pub connection_limit: i32,
    pub secret_prefix: String,
    pub secret_kms_key_id: Option<String>,
    pub secret_recovery_days: i64,
    /// 0: never.
    pub purge_after_days: i64,
    pub rotation: Option<Rotation>,
    /// What a new tenant's database and login are named after.
    pub names: TenantNames,
}

/// What a new tenant's database and login are named after (`TENANT_NAMES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantNames {
    /// `dbtools_tenant_{slug}`: readable, and every login of the server can read them.
    Slug,
    /// `dbtools_tenant_0{id's hex digits}`: names no customer.
    Opaque,
}

/// Rotation of new tenant secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub days: i64,
    pub function_arn: String,
}

/// `MIGRATE_CONCURRENCY` and a run's `concurrency` are within 1..=`MAX_MIGRATE_CONCURRENCY`.
/// What a migration session is allowed: the server-side timeouts and the retries (see
/// [`crate::migrate::runner`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationPolicy {
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
    pub lock_retries: u32,
}

pub(crate) const MAX_MIGRATE_CONCURRENCY: usize = 64;

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
        let migrate_tenant_timeout = secs(&get, "MIGRATE_TENANT_TIMEOUT_SECS", 300)?;
        let config = Config {
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
            query_timeout: secs(&get, "DB_QUERY_TIMEOUT_SECS", 3)?,
            statement_timeout: secs(&get, "DB_STATEMENT_TIMEOUT_SECS", 20)?,
            lock_timeout: secs(&get, "DB_LOCK_TIMEOUT_SECS", 10)?,
            provisioning_lease: secs(&get, "PROVISIONING_LEASE_SECONDS", 35)?,
            idempotency_key_ttl: Duration::from_secs(
                3600 * whole(&get, "IDEMPOTENCY_KEY_TTL_HOURS", 24, 1..=24 * 365)?,
            ),
            migrate_concurrency: whole(
                &get,
                "MIGRATE_CONCURRENCY",
                10,
                1..=MAX_MIGRATE_CONCURRENCY as u64,
            )? as usize,
            migrate_tenant_timeout,
            migrate_session: MigrationPolicy {
                lock_timeout: Duration::from_millis(whole(
                    &get,
                    "MIGRATE_LOCK_TIMEOUT_MS",
                    2000,
                    10..=60_000,
                )?),
                statement_timeout: secs(
                    &get,
                    "MIGRATE_STATEMENT_TIMEOUT_SECS",
                    migrate_tenant_timeout.as_secs(),
                )?,
                lock_retries: whole(&get, "MIGRATE_LOCK_RETRIES", 3, 0..=10)? as u32,
            },
            run_ledger_days: whole(&get, "RUN_LEDGER_DAYS", 90, 1..=3650)? as i32,
            migrate_queue_url: get("MIGRATE_QUEUE_URL"),
            migrate_inline_max_tenants: whole(&get, "MIGRATE_INLINE_MAX_TENANTS", 50, 0..=100_000)?
                as usize,
            run_stall: secs(&get, "RUN_STALL_SECS", 900)?,
            tenants: tenant_settings(&get)?,
            server_secret_prefix: secret_prefix(&get, "SERVER_SECRET_PREFIX", "dbtools/servers/")?,
            harden_shared_databases: match get("HARDEN_SHARED_DATABASES").as_deref() {
                None | Some("true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        var: "HARDEN_SHARED_DATABASES",
                        reason: format!("must be `true` or `false`, got {other:?}"),
                    })
                }
            },
        };
        config.check()?;
        Ok(config)
    }

    /// The rules between values (see the module documentation).
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |var, reason: String| Err(ConfigError::Invalid { var, reason });
        for (var, value) in [
            ("DB_CONNECT_TIMEOUT_SECS", self.connect_timeout),
            ("DB_QUERY_TIMEOUT_SECS", self.query_timeout),
            ("DB_STATEMENT_TIMEOUT_SECS", self.statement_timeout),
            ("DB_LOCK_TIMEOUT_SECS", self.lock_timeout),
            ("PROVISIONING_LEASE_SECONDS", self.provisioning_lease),
            ("MIGRATE_TENANT_TIMEOUT_SECS", self.migrate_tenant_timeout),
            (
                "MIGRATE_STATEMENT_TIMEOUT_SECS",
                self.migrate_session.statement_timeout,
            ),
            ("RUN_STALL_SECS", self.run_stall),
        ] {
            if value.is_zero() {
                return invalid(
                    var,
                    "must be at least 1 (0 would mean waiting forever)".into(),
                );
            }
        }
        let (stmt, lock) = (self.statement_timeout, self.lock_timeout);
        if stmt <= lock {
            return invalid(
                "DB_STATEMENT_TIMEOUT_SECS",
                format!(
                    "({}) must exceed DB_LOCK_TIMEOUT_SECS ({}): a lock wait must end as a lock \
                     timeout, not as a cancelled statement",
                    stmt.as_secs(),
                    lock.as_secs()
                ),
            );
        }
        if self.provisioning_lease <= lock + self.query_timeout {
            return invalid(
                "PROVISIONING_LEASE_SECONDS",
                format!(
                    "({}) must exceed DB_LOCK_TIMEOUT_SECS + DB_QUERY_TIMEOUT_SECS ({}): a create \
                     waits for its tenant lock and works within its lease",
                    self.provisioning_lease.as_secs(),
                    (lock + self.query_timeout).as_secs()
                ),
            );
        }
        let migration = &self.migrate_session;
        if migration.statement_timeout <= migration.lock_timeout {
            return invalid(
                "MIGRATE_STATEMENT_TIMEOUT_SECS",
                format!(
                    "({}) must exceed MIGRATE_LOCK_TIMEOUT_MS ({} ms)",
                    migration.statement_timeout.as_secs(),
                    migration.lock_timeout.as_millis()
                ),
            );
        }
        if migration.statement_timeout > self.migrate_tenant_timeout {
            return invalid(
                "MIGRATE_STATEMENT_TIMEOUT_SECS",
                format!(
                    "({}) must be at most MIGRATE_TENANT_TIMEOUT_SECS ({}): a statement cannot \
                     outlast its tenant's time",
                    migration.statement_timeout.as_secs(),
                    self.migrate_tenant_timeout.as_secs()
                ),
            );
        }
        if self.run_stall <= self.migrate_tenant_timeout {
            return invalid(
                "RUN_STALL_SECS",
                format!(
                    "({}) must exceed MIGRATE_TENANT_TIMEOUT_SECS ({}): a run busy with one long \
                     tenant is not stalled",
                    self.run_stall.as_secs(),
                    self.migrate_tenant_timeout.as_secs()
                ),
            );
        }
        Ok(())
    }

    /// The client-side deadline of a long statement (DDL, a migration): the server's
    /// statement timeout plus a query timeout for the answer to arrive.
    pub fn long_statement_timeout(&self) -> Duration {
        self.statement_timeout + self.query_timeout
    }
}

/// Whole seconds, at most a day (every wait is bounded; nothing here needs longer).
fn secs(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
) -> Result<Duration, ConfigError> {
    whole(get, var, default, 0..=86_400).map(Duration::from_secs)
}

fn tenant_settings(get: &impl Fn(&str) -> Option<String>) -> Result<TenantSettings, ConfigError> {
    let secret_prefix = secret_prefix(get, "TENANT_SECRET_PREFIX", "dbtools/tenants/")?;
    let names = match get("TENANT_NAMES").as_deref() {
        None | Some("slug") => TenantNames::Slug,
        Some("opaque") => TenantNames::Opaque,
        Some(other) => {
            return Err(ConfigError::Invalid {
                var: "TENANT_NAMES",
                reason: format!("must be `slug` or `opaque`, got {other:?}"),
            })
        }
    };
    let rotation = match (
        get("TENANT_ROTATION_DAYS"),
        get("TENANT_ROTATION_FUNCTION_ARN"),
    ) {
        (None, _) => None,
        (Some(_), None) => return Err(ConfigError::Missing("TENANT_ROTATION_FUNCTION_ARN")),
        (Some(_), Some(function_arn)) => Some(Rotation {
            days: whole(get, "TENANT_ROTATION_DAYS", 30, 1..=1000)? as i64,
            function_arn,
        }),
    };
    Ok(TenantSettings {
        connection_limit: whole(get, "TENANT_CONNECTION_LIMIT", 20, 1..=10_000)? as i32,
        secret_prefix,
        secret_kms_key_id: get("TENANT_SECRET_KMS_KEY_ID"),
        secret_recovery_days: whole(get, "TENANT_SECRET_RECOVERY_DAYS", 7, 7..=30)? as i64,
        purge_after_days: whole(get, "PURGE_AFTER_DAYS", 30, 0..=36_500)? as i64,
        rotation,
        names,
    })
}

/// A prefix of secret names: Secrets Manager's name alphabet, with room left for a 48-character
/// slug in its 512. Never empty (an empty variable is unset: the default), since a prefix that
/// matched every secret would bound nothing.
fn secret_prefix(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: &str,
) -> Result<String, ConfigError> {
    let prefix = get(var).unwrap_or_else(|| default.into());
    if prefix.len() > 400
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c))
    {
        return Err(ConfigError::Invalid {
            var,
            reason: "may hold only letters, digits and /_+=.@- (at most 400)".into(),
        });
    }
    Ok(prefix)
}

fn whole(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let Some(v) = get(var) else {
        return Ok(default);
    };
    match v.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ConfigError::Invalid {
            var,
            reason: format!(
                "must be a whole number from {} to {}, got {v:?}",
                range.start(),
                range.end()
            ),
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

    #[test]
    fn contradictions_are_refused_with_the_variable_and_the_reason() {
        let e = config(&[("DB_SECRET_ID", "x"), ("DB_LOCK_TIMEOUT_SECS", "0")]).unwrap_err();
        assert!(
            e.to_string().contains("DB_LOCK_TIMEOUT_SECS") && e.to_string().contains("forever"),
            "{e}"
        );
        let e = config(&[
            ("DB_SECRET_ID", "x"),
            ("DB_LOCK_TIMEOUT_SECS", "20"),
            ("DB_STATEMENT_TIMEOUT_SECS", "20"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("DB_STATEMENT_TIMEOUT_SECS"), "{e}");
        // No statement timeout at all would be a wait without a deadline.
        let e = config(&[("DB_SECRET_ID", "x"), ("DB_STATEMENT_TIMEOUT_SECS", "0")]).unwrap_err();
        assert!(e.to_string().contains("DB_STATEMENT_TIMEOUT_SECS"), "{e}");
        let e = config(&[("DB_SECRET_ID", "x"), ("PROVISIONING_LEASE_SECONDS", "12")]).unwrap_err();
        assert!(e.to_string().contains("PROVISIONING_LEASE_SECONDS"), "{e}");
        let e = config(&[("DB_SECRET_ID", "x"), ("MIGRATE_CONCURRENCY", "65")]).unwrap_err();
        assert!(e.to_string().contains("MIGRATE_CONCURRENCY"), "{e}");
        let e = config(&[("DB_SECRET_ID", "x"), ("IDEMPOTENCY_KEY_TTL_HOURS", "0")]).unwrap_err();
        assert!(e.to_string().contains("IDEMPOTENCY_KEY_TTL_HOURS"), "{e}");
        for (var, value) in [
            ("MIGRATE_LOCK_TIMEOUT_MS", "0"),
            ("MIGRATE_LOCK_RETRIES", "11"),
            ("MIGRATE_STATEMENT_TIMEOUT_SECS", "0"),
            // Longer than a tenant's whole time.
            ("MIGRATE_STATEMENT_TIMEOUT_SECS", "301"),
            // One long tenant would make a run look stalled.
            ("RUN_STALL_SECS", "300"),
            ("MIGRATE_INLINE_MAX_TENANTS", "100001"),
        ] {
            let e = config(&[("DB_SECRET_ID", "x"), (var, value)]).unwrap_err();
            assert!(e.to_string().contains(var), "{var}={value}: {e}");
        }
        // Not above the migration lock timeout.
        let e = config(&[
            ("DB_SECRET_ID", "x"),
            ("MIGRATE_LOCK_TIMEOUT_MS", "5000"),
            ("MIGRATE_STATEMENT_TIMEOUT_SECS", "5"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("MIGRATE_LOCK_TIMEOUT_MS"), "{e}");
    }

    #[test]
    fn long_statements_get_the_statement_timeout_plus_a_query_timeout() {
        let c = config(&[("DB_SECRET_ID", "x")]).unwrap();
        assert_eq!(c.long_statement_timeout(), Duration::from_secs(23));
        assert_eq!(c.idempotency_key_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(c.migrate_concurrency, 10);
        assert_eq!(
            c.migrate_session,
            MigrationPolicy {
                lock_timeout: Duration::from_millis(2000),
                statement_timeout: Duration::from_secs(300),
                lock_retries: 3,
            }
        );
    }

    #[test]
    fn tenant_settings_have_defaults_and_rules() {
        let c = config(&[("DB_SECRET_ID", "x")]).unwrap();
        assert_eq!(
            c.tenants,
            TenantSettings {
                connection_limit: 20,
                secret_prefix: "dbtools/tenants/".into(),
                secret_kms_key_id: None,
                secret_recovery_days: 7,
                purge_after_days: 30,
                rotation: None,
                names: TenantNames::Slug,
            }
        );
        assert_eq!(c.server_secret_prefix, "dbtools/servers/");
        let opaque = config(&[("DB_SECRET_ID", "x"), ("TENANT_NAMES", "opaque")]).unwrap();
        assert_eq!(opaque.tenants.names, TenantNames::Opaque);
        let e = config(&[("DB_SECRET_ID", "x"), ("TENANT_NAMES", "uuid")]).unwrap_err();
        assert!(e.to_string().contains("TENANT_NAMES"), "{e}");
        let e = config(&[("DB_SECRET_ID", "x"), ("SERVER_SECRET_PREFIX", "a b")]).unwrap_err();
        assert!(e.to_string().contains("SERVER_SECRET_PREFIX"), "{e}");
        let e = config(&[("DB_SECRET_ID", "x"), ("TENANT_ROTATION_DAYS", "30")]).unwrap_err();
        assert_eq!(e, ConfigError::Missing("TENANT_ROTATION_FUNCTION_ARN"));
        let c = config(&[
            ("DB_SECRET_ID", "x"),
            ("TENANT_ROTATION_DAYS", "30"),
            (
                "TENANT_ROTATION_FUNCTION_ARN",
                "arn:aws:lambda:eu-west-1:1:function:r",
            ),
            ("PURGE_AFTER_DAYS", "0"),
        ])
        .unwrap();
        assert_eq!(c.tenants.rotation.map(|r| r.days), Some(30));
        assert_eq!(c.tenants.purge_after_days, 0, "0 means never");
        for (var, value) in [
            ("TENANT_SECRET_RECOVERY_DAYS", "3"),
            ("TENANT_CONNECTION_LIMIT", "0"),
            ("TENANT_SECRET_PREFIX", "bad prefix/"),
        ] {
            let e = config(&[("DB_SECRET_ID", "x"), (var, value)]).unwrap_err();
            assert!(e.to_string().contains(var), "{e}");
        }
    }
}
