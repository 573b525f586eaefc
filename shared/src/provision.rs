//! Creating a tenant, and converging after a create that died half-way.
//!
//! `CREATE DATABASE` cannot run in a transaction, and a Lambda can be killed at any
//! instruction, so provisioning is a sequence of steps, each of which checks what exists
//! before acting and can be repeated:
//!
//! 1. insert the registry row as `provisioning`, with a lease (`PROVISIONING_LEASE_SECONDS`)
//!    and the optional idempotency key, committed (a concurrent duplicate gets a conflict from
//!    the unique slug and never reaches step 3);
//! 2. take the tenant's advisory lock (create, delete, reconcile and migrate-all of one tenant
//!    never interleave; the lock dies with its connection);
//! 3. `CREATE DATABASE ... TEMPLATE` the tenant template, which holds every tenant migration
//!    already (see [`crate::template`]; built first if this release has none yet). If the
//!    name exists, the database is not ours: remove our row, answer a conflict, touch nothing;
//! 4. revoke `CONNECT` from `PUBLIC`, mark `active` with its `schema_version` and migration
//!    fingerprint.
//!
//! A failure the process lives to see is compensated at once: close our connection to the new
//! database, `DROP DATABASE ... WITH (FORCE)`, remove the row. A process that dies leaves the
//! row `provisioning`; once its lease has expired and its lock is free (the holder is gone),
//! the next `POST` of the slug and every migrate-all run reconcile it ([`reconcile_row`]):
//!
//! | what exists when the lease has expired | decision |
//! |---|---|
//! | no database of that name | roll back: delete the row |
//! | the database, marked invalid by an interrupted `DROP DATABASE` | roll back: drop it, delete the row |
//! | the database, valid | roll forward: revoke `CONNECT`, apply the pending migrations (none, for a copy of the template), mark `active` |
//! | the database, valid, but a migration fails | roll back: drop it, delete the row |
//! | PostgreSQL unreachable, or the lock still held | nothing now; the next attempt decides |
//!
//! Rolling forward is chosen whenever the database exists because the work is done or
//! resumable and the client may already rely on it (its request may have timed out at the
//! gateway while the function ran on); rolling back is chosen when there is nothing to keep.

use std::time::{Duration, Instant};

use tokio_postgres::{error::SqlState, Client};
use tracing::{error, info, instrument, warn};
use uuid::Uuid;

use crate::{
    db::{error_chain, Database, DbError},
    domain::{quote_ident, DatabaseName, NewTenant, Slug, Tenant, TenantStatus},
    locks::{self, Lock},
    migrations::{self, ExpectedHistory},
    template::{self, Template},
    tenants::{tenant_from_row, FieldError, TENANT_COLUMNS},
};

/// How long a request with an `Idempotency-Key` waits for the first request with that key
/// to finish before answering "busy".
const IDEMPOTENT_WAIT: Duration = Duration::from_secs(25);

/// A client's `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &[u8]) -> Result<IdempotencyKey, String> {
        if raw.is_empty() || raw.len() > 255 {
            return Err("must be 1 to 255 characters".into());
        }
        if !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err("may contain only visible ASCII characters".into());
        }
        Ok(IdempotencyKey(String::from_utf8_lossy(raw).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a request asked for, to recognise "the same body" whatever its JSON spelling.
/// Names hold no control characters, so the newline separates unambiguously.
fn fingerprint(new: &NewTenant) -> String {
    format!("{}\n{}", new.slug.as_str(), new.name.as_str())
}

#[derive(Debug, thiserror::Error)]
pub enum CreateTenantError {
    #[error("invalid request")]
    Validation {
        message: String,
        details: Vec<FieldError>,
    },
    #[error("tenant with slug '{0}' already exists")]
    Conflict(Slug),
    /// A database of that name exists but the registry does not own it: never adopted,
    /// never dropped.
    #[error("database for slug '{0}' already exists outside the registry")]
    DatabaseExists(Slug),
    /// The idempotency key was used before with another body.
    #[error("idempotency key reused with a different request")]
    IdempotencyMismatch,
    /// Another operation on the same tenant held it past the waiting time.
    #[error("tenant '{0}' is busy")]
    Busy(Slug),
    #[error("database unavailable")]
    Unavailable(String),
    /// Provisioning failed and was undone (or could not be, see the log).
    #[error("provisioning failed")]
    Unexpected(#[source] anyhow::Error),
}

impl From<DbError> for CreateTenantError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) => CreateTenantError::Unavailable(m),
            other => CreateTenantError::Unexpected(anyhow::Error::new(other)),
        }
    }
}

/// The tenant, and whether it is the replay of an earlier request with the same key.
#[derive(Debug)]
pub struct Created {
    pub tenant: Tenant,
    pub replayed: bool,
}

/// Creates the tenant (see the module documentation for the steps and the recovery rules).
#[instrument(skip_all, fields(tenant.slug = %new.slug))]
pub async fn create_tenant(
    db: &Database,
    new: &NewTenant,
    key: Option<&IdempotencyKey>,
) -> Result<Created, CreateTenantError> {
    let sys = db.system().await?;
    // Before the row exists: a template that cannot be built leaves nothing behind.
    let template = template::ensure(db, &sys).await?;
    let fp = fingerprint(new);
    let lease = db.config().provisioning_lease;
    // A few rounds at most: a round ends early when a dead provisioning was undone, or when a
    // concurrent request with the same key inserted first.
    for _ in 0..3 {
        if let Some(key) = key {
            if let Some(tenant) = replay(db, &sys, key, &fp).await? {
                return Ok(Created {
                    tenant,
                    replayed: true,
                });
            }
        }
        let inserted = sys
            .query_one(
                "INSERT INTO tenants (name, slug, database_name, status, lease_expires_at, \
                   idempotency_key, request_fingerprint) \
                 VALUES ($1, $2, $3, 'provisioning', now() + make_interval(secs => $4), $5, $6) \
                 RETURNING id",
                &[
                    &new.name.as_str(),
                    &new.slug.as_str(),
                    &new.slug.database_name().as_str(),
                    &lease.as_secs_f64(),
                    &key.map(IdempotencyKey::as_str),
                    &key.map(|_| fp.as_str()),
                ],
            )
            .await;
        match inserted {
            Ok(row) => {
                let id: Uuid = row.try_get(0).map_err(DbError::from)?;
                let tenant = provision(&sys, id, &new.slug, &template).await?;
                return Ok(Created {
                    tenant,
                    replayed: false,
                });
            }
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                let constraint = e.as_db_error().and_then(|d| d.constraint()).unwrap_or("");
                if constraint == "tenants_idempotency_key_key"
                    || same_key_holds_slug(&sys, &new.slug, key).await?
                {
                    continue; // a request with the same key won the insert: wait for it and replay
                }
                // The slug is taken. By a provisioning that died? Then converge and retry.
                if !reconcile_if_expired(db, &sys, &new.slug).await? {
                    return Err(CreateTenantError::Conflict(new.slug.clone()));
                }
            }
            Err(e) => return Err(DbError::from(e).into()),
        }
    }
    Err(CreateTenantError::Busy(new.slug.clone()))
}

/// True when the slug's row was inserted with this idempotency key.
async fn same_key_holds_slug(
    sys: &Client,
    slug: &Slug,
    key: Option<&IdempotencyKey>,
) -> Result<bool, DbError> {
    let Some(key) = key else { return Ok(false) };
    let row = sys
        .query_opt(
            "SELECT 1 FROM tenants WHERE slug = $1 AND idempotency_key = $2",
            &[&slug.as_str(), &key.as_str()],
        )
        .await?;
    Ok(row.is_some())
}

/// With a key seen before: the tenant it created (waiting while it is still being
/// provisioned), or `None` when no live row holds the key.
async fn replay(
    db: &Database,
    sys: &Client,
    key: &IdempotencyKey,
    fp: &str,
) -> Result<Option<Tenant>, CreateTenantError> {
    let deadline = Instant::now() + IDEMPOTENT_WAIT;
    loop {
        let row = sys
            .query_opt(
                &format!(
                    "SELECT {TENANT_COLUMNS}, request_fingerprint, lease_expires_at < now() \
                     FROM tenants WHERE idempotency_key = $1"
                ),
                &[&key.as_str()],
            )
            .await
            .map_err(DbError::from)?;
        let Some(row) = row else { return Ok(None) };
        let stored_fp: Option<String> = row.try_get(8).map_err(DbError::from)?;
        if stored_fp.as_deref() != Some(fp) {
            return Err(CreateTenantError::IdempotencyMismatch);
        }
        let tenant = tenant_from_row(&row)?;
        if tenant.status != TenantStatus::Provisioning {
            return Ok(Some(tenant));
        }
        let expired: Option<bool> = row.try_get(9).map_err(DbError::from)?;
        let slug = Slug::parse(&tenant.slug)
            .map_err(|e| CreateTenantError::Unexpected(anyhow::anyhow!("registry slug: {e}")))?;
        if expired == Some(true) {
            reconcile_if_expired(db, sys, &slug).await?;
        } else if Instant::now() >= deadline {
            return Err(CreateTenantError::Busy(slug));
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Steps 2 to 4 for the row `id` that this request inserted.
async fn provision(
    sys: &Client,
    id: Uuid,
    slug: &Slug,
    template: &Template,
) -> Result<Tenant, CreateTenantError> {
    let started = Instant::now();
    let db_name = slug.database_name();
    let lock = match locks::acquire(sys, Lock::Tenant(slug.to_string())).await {
        Ok(lock) => lock,
        Err(e) => {
            remove_row(sys, id).await;
            return Err(if locks::is_lock_timeout(&e) {
                CreateTenantError::Busy(slug.clone())
            } else {
                e.into()
            });
        }
    };

    if let Err(e) = sys
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE {}",
            db_name.quoted(),
            quote_ident(&template.name)
        ))
        .await
    {
        let duplicate = e.code() == Some(&SqlState::DUPLICATE_DATABASE);
        remove_row(sys, id).await;
        locks::release(sys, lock).await;
        if duplicate {
            warn!(database = %db_name, "database exists but no registry row owns it; left untouched");
            return Err(CreateTenantError::DatabaseExists(slug.clone()));
        }
        return Err(DbError::from(e).into());
    }

    let finished = activate(sys, id, &db_name, template.version, &template.fingerprint).await;
    let result = match finished {
        Ok(tenant) => {
            info!(
                tenant.id = %tenant.id,
                schema_version = tenant.schema_version,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "tenant provisioned"
            );
            Ok(tenant)
        }
        Err(e) => {
            error!(error = %error_chain(&e), "provisioning failed; dropping the new database");
            roll_back(sys, id, &db_name).await;
            Err(e.into())
        }
    };
    locks::release(sys, lock).await;
    result
}

/// Revoke `CONNECT` from `PUBLIC`, apply the pending migrations, mark the row `active`.
/// Every step is safe to repeat. For a database that was not copied from the template (or
/// whose copy cannot be trusted: its provisioning died).
async fn finish_provisioning(
    db: &Database,
    sys: &Client,
    id: Uuid,
    db_name: &DatabaseName,
) -> Result<Tenant, DbError> {
    let mut tenant = db.connect(db_name.as_str()).await?;
    migrations::migrate_tenant_to_latest(&mut tenant).await?;
    drop(tenant); // closes our connection to the new database
    let expected = ExpectedHistory::tenant();
    activate(sys, id, db_name, expected.latest(), expected.fingerprint()).await
}

/// Revoke `CONNECT` from `PUBLIC` and mark the row `active` at `version`, whose migrations
/// have the fingerprint `fingerprint`. Safe to repeat.
async fn activate(
    sys: &Client,
    id: Uuid,
    db_name: &DatabaseName,
    version: i64,
    fingerprint: &str,
) -> Result<Tenant, DbError> {
    sys.batch_execute(&format!(
        "REVOKE CONNECT ON DATABASE {} FROM PUBLIC",
        db_name.quoted()
    ))
    .await?;
    let version = i32::try_from(version)
        .map_err(|_| anyhow::anyhow!("schema version {version} out of range"))?;
    let row = sys
        .query_one(
            &format!(
                "UPDATE tenants SET status = 'active', schema_version = $2, \
                   schema_fingerprint = $3, updated_at = now(), lease_expires_at = NULL \
                 WHERE id = $1 AND status = 'provisioning' RETURNING {TENANT_COLUMNS}"
            ),
            &[&id, &version, &fingerprint],
        )
        .await?;
    tenant_from_row(&row)
}

/// Drops the database (if any) and then removes the row. If the drop fails, the row stays:
/// it owns the leftover database, which must never become an orphan nobody knows about.
async fn roll_back(sys: &Client, id: Uuid, db_name: &DatabaseName) -> bool {
    match sys
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            db_name.quoted()
        ))
        .await
    {
        Ok(()) => {
            remove_row(sys, id).await;
            true
        }
        Err(e) => {
            error!(
                database = %db_name,
                error = %error_chain(&e),
                "could not drop the database of a failed provisioning; row kept as provisioning"
            );
            false
        }
    }
}

/// Removes the row of a provisioning that did not happen. Logged, never raised: the caller
/// is already answering an error.
async fn remove_row(sys: &Client, id: Uuid) {
    if let Err(e) = sys
        .execute(
            "DELETE FROM tenants WHERE id = $1 AND status = 'provisioning'",
            &[&id],
        )
        .await
    {
        error!(tenant.id = %id, error = %error_chain(&e), "could not remove the provisioning row");
    }
}

/// What reconciling a dead provisioning did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconcileAction {
    /// The database existed: migrations finished, tenant `active`.
    RolledForward,
    /// Nothing worth keeping: database (if any) dropped, row removed.
    RolledBack,
    /// Not ours to touch now: the lease has not expired, or a live process holds the lock.
    Skipped,
    /// Dry run: past its lease, would be reconciled.
    Pending,
}

/// If the slug's row is `provisioning` with an expired lease and nobody holds its lock,
/// reconciles it. True when the slug is free again (rolled back).
pub async fn reconcile_if_expired(
    db: &Database,
    sys: &Client,
    slug: &Slug,
) -> Result<bool, DbError> {
    Ok(reconcile_slug(db, sys, slug).await? == ReconcileAction::RolledBack)
}

/// Reconciles the slug's dead provisioning, if it has one and nobody holds its lock.
pub async fn reconcile_slug(
    db: &Database,
    sys: &Client,
    slug: &Slug,
) -> Result<ReconcileAction, DbError> {
    let Some(lock) = locks::try_acquire(sys, Lock::Tenant(slug.to_string())).await? else {
        return Ok(ReconcileAction::Skipped);
    };
    let outcome = reconcile_row(db, sys, slug).await;
    locks::release(sys, lock).await;
    outcome
}

/// Applies the decision table of the module documentation to the slug's row. The caller holds
/// the tenant's lock.
#[instrument(skip_all, fields(tenant.slug = %slug))]
pub async fn reconcile_row(
    db: &Database,
    sys: &Client,
    slug: &Slug,
) -> Result<ReconcileAction, DbError> {
    let Some(row) = sys
        .query_opt(
            "SELECT id, database_name FROM tenants \
             WHERE slug = $1 AND status = 'provisioning' AND lease_expires_at < now()",
            &[&slug.as_str()],
        )
        .await?
    else {
        return Ok(ReconcileAction::Skipped);
    };
    let id: Uuid = row.try_get(0)?;
    // The stored name, never a recomputed one.
    let stored: String = row.try_get(1)?;
    let db_name = DatabaseName::from_registry(stored);
    let found = sys
        .query_opt(
            "SELECT datconnlimit = -2 FROM pg_database WHERE datname = $1",
            &[&db_name.as_str()],
        )
        .await?;
    let action = match found {
        None => {
            remove_row(sys, id).await;
            ReconcileAction::RolledBack
        }
        Some(r) if r.try_get::<_, bool>(0)? => {
            // Left invalid by an interrupted DROP DATABASE.
            if roll_back(sys, id, &db_name).await {
                ReconcileAction::RolledBack
            } else {
                ReconcileAction::Skipped
            }
        }
        Some(_) => match finish_provisioning(db, sys, id, &db_name).await {
            Ok(_) => ReconcileAction::RolledForward,
            Err(DbError::Unavailable(m)) => return Err(DbError::Unavailable(m)),
            Err(e) => {
                error!(error = %error_chain(&e), "could not finish a dead provisioning; rolling back");
                if roll_back(sys, id, &db_name).await {
                    ReconcileAction::RolledBack
                } else {
                    ReconcileAction::Skipped
                }
            }
        },
    };
    info!(action = ?action, database = %db_name, "reconciled a provisioning past its lease");
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantName;

    #[test]
    fn idempotency_key_rules() {
        assert!(IdempotencyKey::parse(b"order-42/a:b").is_ok());
        assert!(IdempotencyKey::parse(b"").is_err());
        assert!(IdempotencyKey::parse(&[b'a'; 256]).is_err());
        assert!(IdempotencyKey::parse(&[b'a'; 255]).is_ok());
        assert!(IdempotencyKey::parse(b"has space").is_err());
        assert!(IdempotencyKey::parse("é".as_bytes()).is_err());
    }

    #[test]
    fn fingerprint_ignores_json_spelling_but_not_content() {
        let a = NewTenant {
            name: TenantName::parse(" Acme ").unwrap(),
            slug: Slug::parse("acme").unwrap(),
        };
        let b = NewTenant {
            name: TenantName::parse("Acme").unwrap(),
            slug: Slug::parse("acme").unwrap(),
        };
        let c = NewTenant {
            name: TenantName::parse("Acme Corp").unwrap(),
            slug: Slug::parse("acme").unwrap(),
        };
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }
}
