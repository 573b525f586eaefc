//! What migrate-all does for moves on every run: sends the message of a running move again
//! when its lease passed (its message was lost, or its worker killed), and drops the old copy
//! of a moved tenant once its retention (`MOVE_RETENTION_DAYS`) ends, by proof of ownership.

use std::time::Duration;

use tracing::{info, warn};
use uuid::Uuid;

use super::record::LEASE_SECS;
use crate::{
    aws::queue,
    database::Database,
    pg::{
        locks::{self, Lock},
        ownership::{self, DropOutcome},
        Conn, DbError,
    },
    tenant::access::login,
};

/// What a run's move upkeep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MoveUpkeep {
    /// Running moves whose message was sent again.
    pub resent: usize,
    /// Old copies dropped after their retention.
    pub dropped: usize,
}

/// Both duties; a failure of one move's is logged and left for the next run.
pub async fn upkeep(db: &Database, sys: &Conn) -> Result<MoveUpkeep, DbError> {
    let mut done = MoveUpkeep::default();
    if let Some(url) = &db.config().migrate_queue_url {
        let stale = sys
            .query(
                "UPDATE moves SET lease_expires_at = now() + make_interval(secs => $1) \
                 WHERE state = 'running' AND lease_expires_at < now() RETURNING id",
                &[&(LEASE_SECS as f64)],
            )
            .await?;
        for row in &stale {
            let id: Uuid = row.try_get("id")?;
            match queue::send_move(url, id, Duration::ZERO).await {
                Ok(()) => done.resent += 1,
                Err(e) => {
                    warn!(move_id = %id, error = %e, "could not send a stale move's message again")
                }
            }
        }
    }
    let due = sys
        .query(
            "SELECT m.id, m.slug, m.tenant_id, m.from_server, m.database_name, m.source_oid, \
               t.server AS now_on, t.role_name, t.database_name AS live_database \
             FROM moves m JOIN tenants t ON t.id = m.tenant_id \
             WHERE m.state = 'done' AND m.source_dropped_at IS NULL \
               AND m.source_drop_after < now() \
               AND NOT EXISTS (SELECT 1 FROM moves r WHERE r.tenant_id = m.tenant_id \
                               AND r.state = 'running') \
             ORDER BY m.source_drop_after LIMIT 100",
            &[],
        )
        .await?;
    for row in &due {
        let id: Uuid = row.try_get("id")?;
        match drop_old_copy(db, sys, row).await {
            Ok(true) => done.dropped += 1,
            Ok(false) => {}
            Err(e) => {
                warn!(move_id = %id, error = %e, "could not drop a moved tenant's old copy; the next run tries again")
            }
        }
    }
    if done != MoveUpkeep::default() {
        info!(resent = done.resent, dropped = done.dropped, "moves upkeep");
    }
    Ok(done)
}

/// Drops one old copy under the tenant's lock: the database if its OID is the one the move
/// recorded, the login only when the tenant does not live on that server again (a tenant
/// with a running move is left for a later run: its move may be making that login).
async fn drop_old_copy(
    db: &Database,
    sys: &Conn,
    row: &tokio_postgres::Row,
) -> Result<bool, DbError> {
    let slug: String = row.try_get("slug")?;
    let Some(lock) = locks::try_acquire(sys, Lock::Tenant(slug.clone())).await? else {
        return Ok(false);
    };
    let dropped = async {
        let id: Uuid = row.try_get("id")?;
        let from: String = row.try_get("from_server")?;
        let name: String = row.try_get("database_name")?;
        let oid: i64 = row.try_get("source_oid")?;
        let now_on: Option<String> = row.try_get("now_on")?;
        let server = db.server(sys, &from).await?;
        let admin = server.admin().await?;
        if ownership::drop_if_ours(&admin, &name, Some(oid)).await? == DropOutcome::NotOurs {
            info!(move_id = %id, "the old copy's name holds another database now; left alone");
        }
        if now_on.as_deref() != Some(from.as_str()) {
            let role: Option<String> = row.try_get("role_name")?;
            let role = role.unwrap_or(name);
            login::drop_if_ours(&admin, &role, row.try_get("tenant_id")?).await?;
        }
        sys.execute(
            "UPDATE moves SET source_dropped_at = now(), updated_at = now() WHERE id = $1",
            &[&id],
        )
        .await?;
        info!(move_id = %id, tenant.slug = %slug, "dropped a moved tenant's old copy");
        Ok::<_, DbError>(true)
    }
    .await;
    lock.release().await;
    dropped
}
