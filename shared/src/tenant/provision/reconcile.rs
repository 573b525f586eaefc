//! Reconciling a provisioning that died half-way, once its lease has expired and nobody holds
//! its lock: the decision table of the module documentation.

use std::time::{Duration, Instant};

use tracing::{error, info, instrument, warn};

use super::steps::{finish_provisioning, roll_back};
use crate::{
    database::Database,
    domain::Slug,
    pg::{
        error_chain,
        locks::{self, Lock},
        ownership, Conn, DbError,
    },
    tenant::access::{Access, AccessError},
};

/// What reconciling a dead provisioning did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconcileAction {
    /// Our database existed: migrations finished, tenant `active`.
    RolledForward,
    /// Nothing worth keeping: our database (if any) dropped, row removed.
    RolledBack,
    /// A database of the tenant's name exists that this registry did not make: left
    /// untouched (an orphan), row removed so the slug is not stuck.
    Disowned,
    /// Not ours to touch now: the lease has not expired, or a live process holds the lock.
    Skipped,
    /// Dry run: past its lease, would be reconciled.
    Pending,
    /// Reconciling raised an error (migrate-all reports it and goes on).
    Failed,
}

/// If the slug's row is `provisioning` with an expired lease and nobody holds its lock,
/// reconciles it. True when the slug is free again.
pub(super) async fn reconcile_if_expired(
    db: &Database,
    sys: &Conn,
    slug: &Slug,
) -> Result<bool, DbError> {
    Ok(matches!(
        reconcile_slug(db, sys, slug).await?,
        ReconcileAction::RolledBack | ReconcileAction::Disowned
    ))
}

/// Reconciles the slug's dead provisioning, if it has one and nobody holds its lock.
pub async fn reconcile_slug(
    db: &Database,
    sys: &Conn,
    slug: &Slug,
) -> Result<ReconcileAction, DbError> {
    let far = Instant::now() + Duration::from_secs(24 * 3600);
    reconcile_slug_until(db, sys, slug, far).await
}

/// [`reconcile_slug`], its work cut at `until` (what it was doing is cancelled: each step is
/// safe to repeat, and the next attempt decides again): `DbError::TimedOut` then.
pub(crate) async fn reconcile_slug_until(
    db: &Database,
    sys: &Conn,
    slug: &Slug,
    until: Instant,
) -> Result<ReconcileAction, DbError> {
    let Some(lock) = locks::try_acquire(sys, Lock::Tenant(slug.to_string())).await? else {
        return Ok(ReconcileAction::Skipped);
    };
    let outcome = match tokio::time::timeout_at(until.into(), reconcile_row(db, sys, slug)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(DbError::TimedOut(
            "out of time: the next run reconciles it".into(),
        )),
    };
    lock.release().await;
    outcome
}

/// Applies the decision table of the module documentation to the slug's row, on the server
/// the row names. The caller holds the tenant's lock.
#[instrument(skip_all, fields(tenant.slug = %slug))]
async fn reconcile_row(db: &Database, sys: &Conn, slug: &Slug) -> Result<ReconcileAction, DbError> {
    let Some(row) = sys
        .query_opt(
            "SELECT id, slug, database_name, database_oid, role_name, secret_name, server \
             FROM tenants \
             WHERE slug = $1 AND status = 'provisioning' AND lease_expires_at < now()",
            &[&slug.as_str()],
        )
        .await?
    else {
        return Ok(ReconcileAction::Skipped);
    };
    // The stored names, never recomputed.
    let access = Access::from_row(&row, &db.config().tenants.secret_prefix)?;
    let recorded: Option<i64> = row.try_get("database_oid")?;
    let server: String = row.try_get("server")?;
    let server = db.server(sys, &server).await?;
    let admin = server.admin().await?;
    let admin = &admin;
    let action = match ownership::find(admin, &access.database).await? {
        None => match roll_back(db, sys, admin, &access, recorded).await {
            true => ReconcileAction::RolledBack,
            false => ReconcileAction::Skipped,
        },
        Some(found) if !found.is(recorded) => {
            warn!(database = %access.database, "a database of this tenant's name was not made by this registry; left untouched");
            match roll_back(db, sys, admin, &access, recorded).await {
                true => ReconcileAction::Disowned,
                false => ReconcileAction::Skipped,
            }
        }
        Some(found) if found.invalid => {
            // Left invalid by an interrupted DROP DATABASE.
            match roll_back(db, sys, admin, &access, recorded).await {
                true => ReconcileAction::RolledBack,
                false => ReconcileAction::Skipped,
            }
        }
        Some(_) => match finish_provisioning(db, sys, admin, &access).await {
            Ok(_) => ReconcileAction::RolledForward,
            // Unreachable, busy (a migration or a catalog lock that stayed taken) or out of
            // time: the database is ours and may be in use; the next attempt finishes it.
            // Never a rollback over what did not fail.
            Err(AccessError::Db(e)) if e.is_transient() => return Err(e),
            Err(e) => {
                error!(error = %error_chain(&e), "could not finish a dead provisioning; rolling back");
                match (roll_back(db, sys, admin, &access, recorded).await, e) {
                    (false, _) => ReconcileAction::Skipped,
                    (true, AccessError::Foreign(_)) => ReconcileAction::Disowned,
                    (true, _) => ReconcileAction::RolledBack,
                }
            }
        },
    };
    info!(action = ?action, database = %access.database, server = %server.name(), "reconciled a provisioning past its lease");
    Ok(action)
}
