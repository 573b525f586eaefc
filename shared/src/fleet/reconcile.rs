//! Before the tenants: provisionings that died (finished or undone, see `provision`), and
//! each server's databases that no registry row owns (reported, never touched).

use std::{collections::HashSet, time::Instant};

use tracing::warn;

use super::{report::Reconciled, sanitize::sanitize_db};
use crate::{
    database::{Admin, Database},
    domain::Slug,
    pg::{Conn, DbError},
    tenant::provision::{self, ReconcileAction},
};

/// Finishes or undoes every provisioning past its lease whose lock is free. A tenant whose
/// reconcile fails is reported (`failed`, with the reason) and the others go on; one on a
/// server that is down is reported failed without trying.
pub(super) async fn reconcile_expired(
    db: &Database,
    sys: &Conn,
    down: &HashSet<&str>,
    dry_run: bool,
    stop_at: Instant,
) -> Result<Vec<Reconciled>, DbError> {
    let rows = sys
        .query(
            "SELECT slug, server FROM tenants \
             WHERE status = 'provisioning' AND lease_expires_at < now() ORDER BY created_at",
            &[],
        )
        .await?;
    let mut out = Vec::new();
    for row in rows {
        let raw: String = row.try_get("slug")?;
        let server: Option<String> = row.try_get("server")?;
        let Ok(slug) = Slug::parse(&raw) else {
            continue;
        };
        let (action, error) = if dry_run {
            (ReconcileAction::Pending, None)
        } else if server.as_deref().is_some_and(|s| down.contains(s)) {
            (
                ReconcileAction::Failed,
                Some("its server is unreachable; the next run retries".to_owned()),
            )
        } else if Instant::now() >= stop_at {
            // The invocation's deadline is near: the next run takes it.
            (ReconcileAction::Skipped, None)
        } else {
            match provision::reconcile_slug_until(db, sys, &slug, stop_at).await {
                Ok(action) => (action, None),
                // The invocation's deadline is near: the next run takes it.
                Err(e) if e.is_timed_out() => (ReconcileAction::Skipped, Some(sanitize_db(&e))),
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

/// The server's tenant-prefixed databases that no row of this server owns (by name *and*
/// OID: a database of a tenant's name that is not the one the registry made there is an
/// orphan too), and invalid ones (`datconnlimit = -2`).
pub(super) async fn find_orphans(
    sys: &Conn,
    admin: &Admin<'_>,
) -> Result<(Vec<String>, Vec<String>), DbError> {
    let rows = admin
        .query(
            "SELECT d.datname::text AS name, d.oid::bigint AS oid, d.datconnlimit = -2 AS invalid \
             FROM pg_database d WHERE d.datname LIKE 'dbtools\\_tenant\\_%' ESCAPE '\\' \
             ORDER BY 1",
            &[],
        )
        .await?;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        found.push((
            row.try_get::<_, String>("name")?,
            row.try_get::<_, i64>("oid")?,
            row.try_get::<_, bool>("invalid")?,
        ));
    }
    let names: Vec<&str> = found.iter().map(|(n, _, _)| n.as_str()).collect();
    let owned: HashSet<(String, i64)> = sys
        .query(
            "SELECT database_name, database_oid FROM tenants \
             WHERE server = $1 AND database_name = ANY($2) AND database_oid IS NOT NULL",
            &[&admin.server().name(), &names],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get("database_name")?, r.try_get("database_oid")?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let mut orphans = Vec::new();
    let mut invalid = Vec::new();
    for (name, oid, is_invalid) in found {
        if is_invalid {
            invalid.push(name.clone());
        }
        if !owned.contains(&(name.clone(), oid)) {
            orphans.push(name);
        }
    }
    if !orphans.is_empty() || !invalid.is_empty() {
        warn!(
            server = %admin.server().name(),
            ?orphans,
            ?invalid,
            "tenant databases without a registry row, or invalid"
        );
    }
    Ok((orphans, invalid))
}
