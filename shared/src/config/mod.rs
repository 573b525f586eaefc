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
//! | `HARDEN_SHARED_DATABASES` | `true`: revoke `PUBLIC`'s `CONNECT` and `TEMPORARY` on each server's `postgres` and `template1` where the admin may (see `servers::hardening`); `false`: only report them | `true` |
//! | `SERVER_SECRET_PREFIX` | the admin secrets of registered servers must be named `{prefix}...` (and never the registry's own, nor another server's) | `dbtools/servers/` |
//! | `TENANT_SECRET_KMS_KEY_ID` | KMS key of the tenant secrets | unset: `aws/secretsmanager` |
//! | `TENANT_SECRET_RECOVERY_DAYS` | recovery window of a purged tenant's secret (7-30) | `7` |
//! | `PURGE_AFTER_DAYS` | migrate-all purges tenants deleted this long ago (0: never) | `30` |
//! | `MOVE_RETENTION_DAYS` | a moved tenant's old copy is kept this long (login disabled), then dropped | `7` |
//! | `TENANT_ROTATION_DAYS` | turn rotation on for new tenant secrets, every so many days (1-1000) | unset: off |
//! | `TENANT_ROTATION_FUNCTION_ARN` | the rotation function (`rotate-tenant-secret`); required with `TENANT_ROTATION_DAYS` | unset |
//! | `EVENT_BUS_NAME` | the EventBridge bus the lifecycle events go on (see [`crate::events`]) | unset: no events |
//! | `EVENT_SOURCE` | the events' `source` (SaaS Builder Toolkit's control plane listens for its application plane's source) | `dbtools` |
//!
//! The secret's `dbname` (or `DB_NAME`) is the *maintenance* database: it is used only to
//! create the system database when it does not exist yet. Default `postgres`.
//!
//! Rules between values, checked when the configuration is read ([`Config::from_lookup`],
//! see `read`):
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

mod read;
#[cfg(test)]
mod tests;

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
    /// Where the lifecycle events go (`None`: nowhere).
    pub events: Option<EventBus>,
}

/// The EventBridge bus of the lifecycle events, and the `source` they carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBus {
    pub bus: String,
    pub source: String,
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
    /// Days a moved tenant's old copy is kept (login disabled) before migrate-all drops it.
    pub move_retention_days: i32,
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
    /// The first rung of the lock-timeout ladder: the `lock_timeout` of the first attempt.
    pub lock_timeout: Duration,
    /// The ladder's ceiling: no attempt's `lock_timeout` is longer, so no application query
    /// queues behind a migration's lock request for longer.
    pub lock_timeout_max: Duration,
    pub statement_timeout: Duration,
    /// Attempts after the first that timed out on a lock.
    pub lock_retries: u32,
}

pub(crate) const MAX_MIGRATE_CONCURRENCY: usize = 64;
