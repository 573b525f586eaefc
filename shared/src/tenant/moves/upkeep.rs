//! What migrate-all does for moves on every run: sends the message of a running move again
//! when its lease passed (its message was lost, or its worker killed), and drops the old copy
//! of a moved tenant once its retention (`MOVE_RETENTION_DAYS`) ends, by proof of ownership
//! (a purge drops them at once: [`drop_kept_copies`]).

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
            &format!(
                "{KEPT} AND m.source_drop_after < now() \
                   AND NOT EXISTS (SELECT 1 FROM moves r WHERE r.tenant_id = m.tenant_id \
                                   AND r.state = 'running') \
                 ORDER BY m.source_drop_after LIMIT 100"
            ),
            &[],
        )
        .await?;
    for row in &due {
        let copy = KeptCopy::from_row(row)?;
        let Some(lock) = locks::try_acquire(sys, Lock::Tenant(copy.slug.clone())).await? else {
            continue;
        };
        let dropped = copy.drop(db, sys).await;
        lock.release().await;
        match dropped {
            Ok(()) => done.dropped += 1,
            Err(e) => {
                warn!(move_id = %copy.move_id, error = %e, "could not drop a moved tenant's old copy; the next run tries again")
            }
        }
    }
    if done != MoveUpkeep::default() {
        info!(resent = done.resent, dropped = done.dropped, "moves upkeep");
    }
    Ok(done)
}

/// The old copies moves kept (done, not dropped), with what dropping one needs; only on
/// servers still registered (a removed server's copies are the operator's).
const KEPT: &str =
    "SELECT m.id, m.slug, m.tenant_id, m.from_server, m.database_name, m.source_oid, \
       t.server AS now_on, coalesce(t.role_name, t.database_name) AS role \
     FROM moves m JOIN tenants t ON t.id = m.tenant_id \
       JOIN servers s ON s.name = m.from_server \
     WHERE m.state = 'done' AND m.source_dropped_at IS NULL";

/// An old copy of a moved tenant.
struct KeptCopy {
    move_id: Uuid,
    slug: String,
    tenant_id: Uuid,
    server: String,
    database: String,
    oid: i64,
    role: String,
    now_on: Option<String>,
}

impl KeptCopy {
    fn from_row(row: &tokio_postgres::Row) -> Result<KeptCopy, DbError> {
        Ok(KeptCopy {
            move_id: row.try_get("id")?,
            slug: row.try_get("slug")?,
            tenant_id: row.try_get("tenant_id")?,
            server: row.try_get("from_server")?,
            database: row.try_get("database_name")?,
            oid: row.try_get("source_oid")?,
            role: row.try_get("role")?,
            now_on: row.try_get("now_on")?,
        })
    }

    /// Drops the database if its OID is the one the move recorded, and the login only when
    /// the tenant does not live on that server again; the caller holds the tenant's lock.
    async fn drop(&self, db: &Database, sys: &Conn) -> Result<(), DbError> {
        let server = db.server(sys, &self.server).await?;
        let admin = server.admin().await?;
        if ownership::drop_if_ours(&admin, &self.database, Some(self.oid)).await?
            == DropOutcome::NotOurs
        {
            info!(move_id = %self.move_id, "the old copy's name holds another database now; left alone");
        }
        if self.now_on.as_deref() != Some(self.server.as_str()) {
            login::drop_if_ours(&admin, &self.role, self.tenant_id).await?;
        }
        sys.execute(
            "UPDATE moves SET source_dropped_at = now(), updated_at = now() WHERE id = $1",
            &[&self.move_id],
        )
        .await?;
        info!(move_id = %self.move_id, tenant.slug = %self.slug, "dropped a moved tenant's old copy");
        Ok(())
    }
}

/// Drops every old copy of one tenant now, whatever their retention (a purge: nothing of a
/// purged tenant is kept). The caller holds the tenant's lock.
pub(crate) async fn drop_kept_copies(
    db: &Database,
    sys: &Conn,
    tenant_id: Uuid,
) -> Result<(), DbError> {
    let rows = sys
        .query(&format!("{KEPT} AND m.tenant_id = $1"), &[&tenant_id])
        .await?;
    for row in &rows {
        KeptCopy::from_row(row)?.drop(db, sys).await?;
    }
    Ok(())
}
