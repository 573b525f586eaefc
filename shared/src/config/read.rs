//! Reading the configuration: each variable parsed with its default and range, then the rules
//! between values checked (see the module documentation of [`super`]).

use std::{path::PathBuf, time::Duration};

use secrecy::SecretString;

use super::{
    Config, ConfigError, ConnOverrides, CredentialSource, EventBus, MigrationPolicy, Rotation,
    SslMode, TenantNames, TenantSettings, MAX_MIGRATE_CONCURRENCY,
};

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
        let first_rung = whole(&get, "MIGRATE_LOCK_TIMEOUT_MS", 100, 10..=60_000)?;
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
                lock_timeout: Duration::from_millis(first_rung),
                // Never below the first rung: a lower ceiling (the default included, when only
                // the first rung is set above it) makes the first rung a fixed lock timeout.
                lock_timeout_max: Duration::from_millis(
                    whole(&get, "MIGRATE_LOCK_TIMEOUT_MAX_MS", 200, 10..=60_000)?.max(first_rung),
                ),
                statement_timeout: secs(
                    &get,
                    "MIGRATE_STATEMENT_TIMEOUT_SECS",
                    migrate_tenant_timeout.as_secs(),
                )?,
                lock_retries: whole(&get, "MIGRATE_LOCK_RETRIES", 20, 0..=100)? as u32,
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
            events: get("EVENT_BUS_NAME").map(|bus| EventBus {
                bus,
                source: get("EVENT_SOURCE").unwrap_or_else(|| "dbtools".into()),
            }),
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
        if migration.statement_timeout <= migration.lock_timeout_max {
            return invalid(
                "MIGRATE_STATEMENT_TIMEOUT_SECS",
                format!(
                    "({}) must exceed MIGRATE_LOCK_TIMEOUT_MAX_MS ({} ms)",
                    migration.statement_timeout.as_secs(),
                    migration.lock_timeout_max.as_millis()
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
        move_retention_days: whole(get, "MOVE_RETENTION_DAYS", 7, 0..=3650)? as i32,
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
