//! Before the tenants: provisionings that died (finished or undone, see `provision`), and
//! databases that no registry row owns (reported, never touched).

use std::time::Instant;

use tracing::warn;

use super::report::{sanitize_db, Reconciled};
use crate::{
    db::{Conn, Database, DbError},
    domain::Slug,
    provision::{self, ReconcileAction},
};

/// Finishes or undoes every provisioning past its lease whose lock is free. A tenant whose
/// reconcile fails is reported (`failed`, with the reason) and the others go on.
pub(super) async fn reconcile_expired(
    db: &Database,
    sys: &Conn,
    dry_run: bool,
    stop_at: Instant,
) -> Result<Vec<Reconciled>, DbError> {
    let rows = sys
        .query(
            "SELECT slug FROM tenants WHERE status = 'provisioning' AND lease_expires_at < now() \
             ORDER BY created_at",
            &[],
        )
        .await?;
    let mut out = Vec::new();
    for row in rows {
        let raw: String = row.try_get("slug")?;
        let Ok(slug) = Slug::parse(&raw) else {
            continue;
        };
        let (action, error) = if dry_run {
            (ReconcileAction::Pending, None)
        } else if Instant::now() >= stop_at {
            // The invocation's deadline is near: the next run takes it.
            (ReconcileAction::Skipped, None)
        } else {
            match provision::reconcile_slug(db, sys, &slug).await {
                Ok(action) => (action, None),
                Err(e) => {
                    warn!(tenant.slug = %slug, error = %e, "could not reconcile a dead provisioning");
                    (ReconcileAction::Failed, Some(sanitize_db(&e)))
                }
            }
        };
        out.push(Reconciled {
            slug: raw,
            action,
            error,
        });
    }
    Ok(out)
}

/// Tenant-prefixed databases that no row owns (by name *and* OID: a database of a tenant's
/// name that is not the one the registry made is an orphan too), and invalid ones
/// (`datconnlimit = -2`).
pub(super) async fn find_orphans(sys: &Conn) -> Result<(Vec<String>, Vec<String>), DbError> {
    let rows = sys
        .query(
            "SELECT d.datname::text AS name, d.datconnlimit = -2 AS invalid, \
                    NOT EXISTS (SELECT 1 FROM tenants t WHERE t.database_name = d.datname \
                                AND t.database_oid = d.oid::bigint) AS orphan \
             FROM pg_database d WHERE d.datname LIKE 'dbtools\\_tenant\\_%' ESCAPE '\\' \
             ORDER BY 1",
            &[],
        )
        .await?;
    let mut orphans = Vec::new();
    let mut invalid = Vec::new();
    for row in rows {
        let name: String = row.try_get("name")?;
        if row.try_get::<_, bool>("invalid")? {
            invalid.push(name.clone());
        }
        if row.try_get::<_, bool>("orphan")? {
            orphans.push(name);
        }
    }
    if !orphans.is_empty() || !invalid.is_empty() {
        warn!(
            ?orphans,
            ?invalid,
            "tenant databases without a registry row, or invalid"
        );
    }
    Ok((orphans, invalid))
}
