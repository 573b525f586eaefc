//! The ways out of `active`, and back: soft delete, restore, purge. Each runs under the
//! tenant's lock, touches only what is proven ours, and is safe to repeat after a crash at any
//! step: the registry's status says what must be true, and each step makes it so.
//!
//! - **Delete** marks the row `deleted`, then refuses new sessions of the tenant's login
//!   (`NOLOGIN`) and ends its sessions; database and secret are kept. Deleting again answers
//!   the same and repeats the last two steps (a delete that died half-way is finished by the
//!   next one, or by migrate-all).
//! - **Restore** (a `deleted` tenant only) brings the database to the latest migration (the
//!   runs skip deleted tenants), makes the login log in again (its password unchanged: the
//!   application keeps its secret; a tenant of an older release gets its login and secret
//!   now), then marks the row `active`.
//! - **Purge** (a `deleted` tenant only) marks the row as being purged, drops the database
//!   and the login, deletes the secret with a recovery window (`TENANT_SECRET_RECOVERY_DAYS`),
//!   then marks the row `purged`; the row stays, so the slug is never reused. A purge that
//!   died is finished by the next purge request or by migrate-all, and is never restored.

use std::sync::Arc;

use tokio_postgres::Row;
use tracing::{info, instrument, warn};

use crate::{
    aws::secrets::Deletion,
    database::{Database, Server},
    domain::{Slug, Tenant, TenantStatus},
    migrate::ExpectedHistory,
    pg::{
        locks::{self, Lock, LockGuard},
        ownership::{self, DropOutcome},
        Conn, DbError,
    },
    tenant::{
        access::{self, Access, AccessError},
        moves,
        registry::{tenant_from_row, TENANT_COLUMNS},
        template,
    },
};

/// Why a lifecycle operation did not happen. One enum for the three operations: they fail in
/// the same ways, and `api` maps them in one place.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("tenant not found")]
    NotFound(Option<Slug>),
    /// The tenant is not in a state this operation applies to; the message says why.
    #[error("{1}")]
    Conflict(Slug, String),
    #[error("tenant '{0}' is busy")]
    Busy(Slug),
    /// The registry, a server or Secrets Manager failed it: a 503 to retry when one was away
    /// or busy, else a 500 (see `api::error`).
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<AccessError> for LifecycleError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Db(e) => e.into(),
            foreign => LifecycleError::Db(DbError::Other(anyhow::Error::new(foreign))),
        }
    }
}

/// A tenant's row with what the lifecycle needs.
pub(crate) struct Entry {
    pub tenant: Tenant,
    pub access: Access,
    pub database_oid: Option<i64>,
    pub purge_requested: bool,
}

impl Entry {
    pub(crate) const COLUMNS: &'static str =
        "database_oid, role_name, secret_name, purge_requested_at IS NOT NULL AS purge_requested";

    pub(crate) fn from_row(row: &Row, secret_prefix: &str) -> Result<Entry, DbError> {
        Ok(Entry {
            tenant: tenant_from_row(row)?,
            access: Access::from_row(row, secret_prefix)?,
            database_oid: row.try_get("database_oid")?,
            purge_requested: row.try_get("purge_requested")?,
        })
    }
}

impl Entry {
    /// A move of the tenant is running (`tenant::moves`): nothing else changes it meanwhile.
    pub(crate) fn moving(&self) -> bool {
        self.tenant.move_id.is_some()
    }

    /// The server that holds the tenant's database.
    pub(crate) async fn server(&self, db: &Database, sys: &Conn) -> Result<Arc<Server>, DbError> {
        let name = self.tenant.server.as_deref().ok_or_else(|| {
            DbError::Other(anyhow::anyhow!(
                "tenant '{}' is on no server (its server was removed)",
                self.tenant.slug
            ))
        })?;
        db.server(sys, name).await
    }
}

async fn load(db: &Database, sys: &Conn, slug: &Slug) -> Result<Option<Entry>, DbError> {
    let row = sys
        .query_opt(
            &format!(
                "SELECT {TENANT_COLUMNS}, {} FROM tenants WHERE slug = $1",
                Entry::COLUMNS
            ),
            &[&slug.as_str()],
        )
        .await?;
    row.map(|r| Entry::from_row(&r, &db.config().tenants.secret_prefix))
        .transpose()
}

/// The tenant's lock, waited for as long as the configuration says; `Busy` past that.
async fn lock<'c>(
    db: &Database,
    sys: &'c Conn,
    slug: &Slug,
) -> Result<LockGuard<'c>, LifecycleError> {
    locks::acquire(
        sys,
        Lock::Tenant(slug.to_string()),
        db.config().lock_timeout,
    )
    .await?
    .ok_or_else(|| LifecycleError::Busy(slug.clone()))
}

/// Runs `op` on the tenant's row under its lock; the lock is always given back.
async fn with_entry<T>(
    db: &Database,
    slug: &Slug,
    op: impl AsyncFnOnce(&Conn, Entry) -> Result<T, LifecycleError>,
) -> Result<T, LifecycleError> {
    let sys = db.system().await?;
    let guard = lock(db, &sys, slug).await?;
    let result = async {
        let entry = load(db, &sys, slug)
            .await?
            .ok_or_else(|| LifecycleError::NotFound(Some(slug.clone())))?;
        if entry.moving() {
            return Err(LifecycleError::Conflict(
                slug.clone(),
                format!("Tenant '{slug}' is moving to another server; retry when the move ends"),
            ));
        }
        op(&sys, entry).await
    }
    .await;
    guard.release().await;
    // A row or table lock that stayed taken (SQLSTATE 55P03): busy, not broken.
    result.map_err(|e| match e {
        LifecycleError::Db(e) if e.is_lock_timeout() => LifecycleError::Busy(slug.clone()),
        other => other,
    })
}

/// Marks the tenant `deleted` and disables its login; keeps its database and secret. Deleting
/// again answers the same tenant (and disables the login again, should a delete have died
/// before).
#[instrument(skip_all, fields(tenant.slug = %slug))]
pub async fn delete_tenant(db: &Database, slug: &Slug) -> Result<Tenant, LifecycleError> {
    with_entry(db, slug, async |sys, mut entry| {
        match entry.tenant.status {
            TenantStatus::Provisioning => {
                return Err(LifecycleError::Conflict(
                    slug.clone(),
                    format!("Tenant '{slug}' is still being provisioned; retry later"),
                ))
            }
            TenantStatus::Purged => return Ok(entry.tenant),
            TenantStatus::Active | TenantStatus::Deleted => {}
        }
        // Its server first: one that cannot be reached changes nothing.
        let server = entry.server(db, sys).await?;
        let admin = server.admin().await?;
        if entry.tenant.status == TenantStatus::Active {
            let row = sys
                .locking()
                .query_one(
                    &format!(
                        "UPDATE tenants SET status = 'deleted', deleted_at = now(), \
                           updated_at = now() \
                         WHERE id = $1 AND status = 'active' RETURNING {TENANT_COLUMNS}"
                    ),
                    &[&entry.tenant.id],
                )
                .await?;
            entry.tenant = tenant_from_row(&row)?;
        }
        // The status says deleted: now the login follows.
        access::disable(&admin, &entry.access).await?;
        Ok(entry.tenant)
    })
    .await
}

/// Brings a deleted tenant back: the latest migration, its login enabled, `active`.
#[instrument(skip_all, fields(tenant.slug = %slug))]
pub async fn restore_tenant(db: &Database, slug: &Slug) -> Result<Tenant, LifecycleError> {
    with_entry(db, slug, async |sys, entry| {
        if entry.tenant.status != TenantStatus::Deleted {
            return Err(LifecycleError::Conflict(
                slug.clone(),
                format!(
                    "Tenant '{slug}' is {}; only a deleted tenant can be restored",
                    entry.tenant.status.as_str()
                ),
            ));
        }
        if entry.purge_requested {
            return Err(LifecycleError::Conflict(
                slug.clone(),
                format!("Tenant '{slug}' is being purged; it cannot be restored"),
            ));
        }
        let server = entry.server(db, sys).await?;
        let admin = server.admin().await?;
        let ours = ownership::find(&admin, &entry.access.database)
            .await?
            .is_some_and(|found| found.is(entry.database_oid) && !found.invalid);
        if !ours {
            return Err(LifecycleError::Conflict(
                slug.clone(),
                format!(
                    "Tenant '{slug}' cannot be restored: its database is missing or is not the \
                     one this registry made"
                ),
            ));
        }
        template::migrate_to_latest(db, &admin, &entry.access.database).await?;
        let arn = access::ensure(db, &admin, &entry.access, false, true).await?;
        let expected = ExpectedHistory::tenant();
        let version = i32::try_from(expected.latest()).unwrap_or(i32::MAX);
        let row = sys
            .locking()
            .query_one(
                &format!(
                    "UPDATE tenants SET status = 'active', deleted_at = NULL, schema_version = $2, \
                       schema_fingerprint = $3, credentials_secret_arn = $4, role_name = $5, \
                       secret_name = $6, updated_at = now() \
                     WHERE id = $1 AND status = 'deleted' RETURNING {TENANT_COLUMNS}"
                ),
                &[
                    &entry.tenant.id,
                    &version,
                    &expected.fingerprint(),
                    &arn,
                    &entry.access.role,
                    &entry.access.secret_name,
                ],
            )
            .await?;
        info!("tenant restored");
        Ok(tenant_from_row(&row)?)
    })
    .await
}

/// Purges a deleted tenant (see the module documentation). A purged tenant answers the same.
#[instrument(skip_all, fields(tenant.slug = %slug))]
pub async fn purge_tenant(db: &Database, slug: &Slug) -> Result<Tenant, LifecycleError> {
    with_entry(db, slug, async |sys, entry| match entry.tenant.status {
        TenantStatus::Purged => Ok(entry.tenant),
        TenantStatus::Deleted => Ok(purge(db, sys, &entry).await?),
        other => Err(LifecycleError::Conflict(
            slug.clone(),
            format!(
                "Tenant '{slug}' is {}; only a deleted tenant can be purged",
                other.as_str()
            ),
        )),
    })
    .await
}

/// The purge of a deleted tenant whose lock the caller holds. Every step is safe to repeat.
pub(crate) async fn purge(db: &Database, sys: &Conn, entry: &Entry) -> Result<Tenant, DbError> {
    let id = entry.tenant.id;
    // Its server first: one that cannot be reached changes nothing.
    let server = entry.server(db, sys).await?;
    let admin = server.admin().await?;
    // First, so that a purge that dies is finished, never restored half-way; and only of a
    // tenant that is (still) deleted.
    let marked = sys
        .locking()
        .execute(
            "UPDATE tenants SET purge_requested_at = coalesce(purge_requested_at, now()), \
               updated_at = now() \
             WHERE id = $1 AND status = 'deleted'",
            &[&id],
        )
        .await?;
    if marked != 1 {
        return Err(DbError::Other(anyhow::anyhow!(
            "tenant '{}' is no longer deleted; not purged",
            entry.tenant.slug
        )));
    }
    let a = &entry.access;
    if ownership::drop_if_ours(&admin, &a.database, entry.database_oid).await?
        == DropOutcome::NotOurs
    {
        warn!(database = %a.database, "the database of this tenant's name is not the one this registry made; left untouched");
    }
    let days = db.config().tenants.secret_recovery_days;
    access::remove(db, &admin, a, Deletion::After(days)).await?;
    // The copies earlier moves kept on other servers go too: nothing of a purged tenant stays.
    moves::upkeep::drop_kept_copies(db, sys, id).await?;
    let row = sys
        .locking()
        .query_one(
            &format!(
                "UPDATE tenants SET status = 'purged', purged_at = now(), \
                   credentials_secret_arn = NULL, updated_at = now() \
                 WHERE id = $1 AND status = 'deleted' RETURNING {TENANT_COLUMNS}"
            ),
            &[&id],
        )
        .await?;
    info!(tenant.slug = %a.slug, "tenant purged: database, login and secret removed");
    tenant_from_row(&row)
}
