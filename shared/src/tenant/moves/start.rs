//! The operations a client asks for: start a move (`POST /api/tenants/{slug}/move`), cancel
//! one before its switch, read one or the newest.

use uuid::Uuid;

use super::{
    record::{self, Move, MoveMode, MoveState, LEASE_SECS, MOVE_COLUMNS},
    replication,
};
use crate::{
    aws::queue,
    database::Database,
    domain::{ServerName, Slug, TenantStatus},
    pg::{
        locks::{self, Lock},
        ownership, DbError,
    },
    servers::{self, Claim},
};

/// What a client asks: the server to move to, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveRequest {
    pub to: ServerName,
    pub mode: MoveMode,
}

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("tenant not found")]
    TenantNotFound(Option<Slug>),
    #[error("move not found")]
    NotFound,
    #[error("server '{0}' not found")]
    ServerNotFound(String),
    /// The tenant or the move is not in a state this applies to (409).
    #[error("{0}")]
    Conflict(String),
    /// The target cannot take the tenant (400).
    #[error("{0}")]
    BadTarget(String),
    /// The target server or the queue cannot be reached now (503).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for MoveError {
    fn from(e: tokio_postgres::Error) -> Self {
        MoveError::Db(e.into())
    }
}

/// Starts a move: checks the tenant and the target, records the move (its target OID chosen
/// before anything exists) and sends its first message. Nothing is changed on any server
/// here; the steps run in `migrate-tenant`.
pub async fn start_move(db: &Database, slug: &Slug, req: &MoveRequest) -> Result<Move, MoveError> {
    let url = db.config().migrate_queue_url.clone().ok_or_else(|| {
        MoveError::Unavailable("moves need the migrate queue (MIGRATE_QUEUE_URL)".into())
    })?;
    let sys = db.system().await?;
    let lock = locks::acquire(
        &sys,
        Lock::Tenant(slug.to_string()),
        db.config().lock_timeout,
    )
    .await?
    .ok_or_else(|| {
        MoveError::Conflict(format!(
            "Tenant '{slug}' is being changed by another operation; retry later"
        ))
    })?;
    let made = record_move(db, &sys, slug, req).await;
    lock.release().await;
    let mv = made?;
    if let Err(e) = queue::send_move(&url, mv.id, std::time::Duration::ZERO).await {
        tracing::warn!(move_id = %mv.id, error = %e, "could not send a new move's first message");
        record::end(
            &sys,
            mv.id,
            MoveState::Failed,
            Some("the queue could not be reached; nothing was changed"),
        )
        .await?;
        return Err(MoveError::Unavailable(
            "the queue could not be reached; nothing was changed, retry".into(),
        ));
    }
    tracing::info!(move_id = %mv.id, tenant.slug = %slug, from = %mv.from, to = %mv.to, "move started");
    Ok(mv)
}

async fn record_move(
    db: &Database,
    sys: &crate::pg::Conn,
    slug: &Slug,
    req: &MoveRequest,
) -> Result<Move, MoveError> {
    let row = sys
        .query_opt(
            "SELECT id, status, server, database_name, database_oid, \
               (SELECT id FROM moves WHERE moves.tenant_id = tenants.id \
                  AND moves.state = 'running') AS moving \
             FROM tenants WHERE slug = $1",
            &[&slug.as_str()],
        )
        .await?
        .ok_or_else(|| MoveError::TenantNotFound(Some(slug.clone())))?;
    let status: String = row.try_get("status")?;
    if let Some(id) = row.try_get::<_, Option<Uuid>>("moving")? {
        return Err(MoveError::Conflict(format!(
            "Tenant '{slug}' is already moving (move {id})"
        )));
    }
    if TenantStatus::parse(&status) != Some(TenantStatus::Active) {
        return Err(MoveError::Conflict(format!(
            "Tenant '{slug}' is {status}; only an active tenant can move"
        )));
    }
    let from: Option<String> = row.try_get("server")?;
    let source_oid: Option<i64> = row.try_get("database_oid")?;
    let (Some(from), Some(source_oid)) = (from, source_oid) else {
        return Err(MoveError::Conflict(format!(
            "Tenant '{slug}' has no server or no recorded database to move"
        )));
    };
    let to = req.to.as_str();
    if from == to {
        return Err(MoveError::BadTarget(format!(
            "Tenant '{slug}' is already on server '{to}'"
        )));
    }
    let target = sys
        .query_opt("SELECT state FROM servers WHERE name = $1", &[&to])
        .await?
        .ok_or_else(|| MoveError::BadTarget(format!("Server '{to}' not found")))?;
    let state: String = target.try_get("state")?;
    if state != "open" {
        return Err(MoveError::BadTarget(format!(
            "Server '{to}' is {state}; a tenant moves only to an open server"
        )));
    }
    // Reachable now, or the move would only wait: a 503 to retry.
    let server = db.server(sys, to).await?;
    server.admin().await.map_err(unreachable(to))?;
    if req.mode == MoveMode::Online {
        let source = db.server(sys, &from).await?;
        if let Some(why) = replication::unable(&source, &server)
            .await
            .map_err(unreachable(&from))?
        {
            return Err(MoveError::BadTarget(format!(
                "Tenant '{slug}' cannot move online: {why}"
            )));
        }
    }
    // The target's room, claimed as a create claims it: under the server's row lock, counting
    // its tenants and the moves running to it, in the transaction that records the move.
    let tx = sys.begin().await?;
    match servers::claim(&tx, to).await? {
        Claim::Room => {}
        refused => {
            tx.rollback().await;
            return Err(MoveError::BadTarget(match refused {
                Claim::Full => format!("Server '{to}' is full"),
                Claim::Gone => format!("Server '{to}' not found"),
                _ => format!("Server '{to}' is no longer open to new tenants"),
            }));
        }
    }
    let inserted = tx
        .query_one(
            &format!(
                "INSERT INTO moves (id, tenant_id, slug, from_server, to_server, mode, step, \
                   state, database_name, source_oid, target_oid, lease_expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $10, 'prepare', 'running', $6, $7, $8, \
                   now() + make_interval(secs => $9)) \
                 RETURNING {MOVE_COLUMNS}"
            ),
            &[
                &Uuid::new_v4(),
                &row.try_get::<_, Uuid>("id")?,
                &slug.as_str(),
                &from,
                &to,
                &row.try_get::<_, String>("database_name")?,
                &source_oid,
                &ownership::new_oid(),
                &(LEASE_SECS as f64),
                &req.mode.as_str(),
            ],
        )
        .await;
    let row = match inserted {
        Ok(row) => row,
        Err(e) => {
            tx.rollback().await;
            return Err(
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    MoveError::Conflict(format!("Tenant '{slug}' is already moving"))
                } else {
                    e.into()
                },
            );
        }
    };
    tx.commit().await?;
    Ok(Move::from_row(&row)?)
}

/// A server that cannot be reached now is a 503 to retry (the move would only wait).
fn unreachable(server: &str) -> impl Fn(DbError) -> MoveError + '_ {
    move |e| {
        if e.is_transient() {
            MoveError::Unavailable(format!("Server '{server}' cannot be reached; retry later"))
        } else {
            e.into()
        }
    }
}

/// Asks a running move to stop before its switch: its next step undoes it (the tenant
/// serves where it was). 409 once the registry names the target, or when it is over.
pub async fn cancel_move(db: &Database, id: Uuid) -> Result<Move, MoveError> {
    let sys = db.system().await?;
    let mv = record::load(&sys, id).await?.ok_or(MoveError::NotFound)?;
    if mv.state != MoveState::Running {
        return Err(MoveError::Conflict(format!(
            "The move is {}; only a running move can be cancelled",
            mv.state.as_str()
        )));
    }
    let n = sys
        .execute(
            "UPDATE moves SET cancel_requested = true, updated_at = now() \
             WHERE id = $1 AND state = 'running' AND step <> 'finish'",
            &[&id],
        )
        .await?;
    if n != 1 {
        return Err(MoveError::Conflict(
            "The move is past its switch (the registry names the new server); it only goes \
             forward"
                .into(),
        ));
    }
    if let Some(url) = &db.config().migrate_queue_url {
        // Its message may be waiting for minutes; this one undoes it now. Harmless twice.
        if let Err(e) = queue::send_move(url, id, std::time::Duration::ZERO).await {
            tracing::warn!(move_id = %id, error = %e, "could not send the cancelled move's message; its own message undoes it");
        }
    }
    record::load(&sys, id).await?.ok_or(MoveError::NotFound)
}

/// One move.
pub async fn get_move(db: &Database, id: Uuid) -> Result<Move, MoveError> {
    let sys = db.system().await?;
    record::load(&sys, id).await?.ok_or(MoveError::NotFound)
}

/// The newest moves, at most `limit`.
pub async fn list_moves(db: &Database, limit: i64) -> Result<Vec<Move>, MoveError> {
    let sys = db.system().await?;
    Ok(record::list(&sys, limit).await?)
}
