//! Draining a server (`POST /api/servers/{name}/drain`): the server stops taking new tenants
//! (`draining`), and each of its active tenants is moved to the open server with the most room
//! (running moves to a server count against its room). The moves run as any other, within
//! both servers' `migrate_concurrency` budgets. Starting a move takes a few round trips;
//! the tenants a call had no time for are reported `remaining`, and calling again starts
//! them (a tenant already moving is skipped). Deleted tenants cannot move: they are listed,
//! and the server can be removed once they are purged.

use std::time::{Duration, Instant};

use serde::Serialize;
use uuid::Uuid;

use super::{
    record::MoveMode,
    start::{start_move, MoveError, MoveRequest},
};
use crate::{
    database::Database,
    domain::{ServerName, Slug},
    pg::DbError,
};

/// What a drain call did.
#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    pub server: String,
    pub state: &'static str,
    /// The moves this call started.
    pub started: Vec<Started>,
    /// Active tenants already moving (started by an earlier call, or by hand).
    pub moving: i64,
    /// Active tenants not started for lack of time or of room: call again.
    pub remaining: i64,
    /// Tenants that cannot move (deleted ones): purge them before removing the server.
    pub not_movable: Vec<String>,
    /// Why tenants were left (no open server with room, a target away), if any.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Started {
    pub slug: String,
    pub move_id: Uuid,
    pub to: String,
}

/// Marks the server draining and starts the moves of its tenants until `until`.
pub async fn drain_server(
    db: &Database,
    name: &ServerName,
    until: Instant,
) -> Result<Drain, MoveError> {
    // The registry's connection is one per sandbox, held while in use: each step below
    // takes it again (a move's start takes it too).
    let sys = db.system().await?;
    let marked = sys
        .locking()
        .execute(
            "UPDATE servers SET state = 'draining', updated_at = now() WHERE name = $1",
            &[&name.as_str()],
        )
        .await?;
    if marked != 1 {
        return Err(MoveError::ServerNotFound(name.to_string()));
    }
    let rows = sys
        .query(
            "SELECT slug, status, EXISTS (SELECT 1 FROM moves m WHERE m.tenant_id = t.id \
               AND m.state = 'running') AS moving \
             FROM tenants t WHERE server = $1 AND status <> 'purged' ORDER BY created_at, id",
            &[&name.as_str()],
        )
        .await?;
    let mut drain = Drain {
        server: name.to_string(),
        state: "draining",
        started: Vec::new(),
        moving: 0,
        remaining: 0,
        not_movable: Vec::new(),
        errors: Vec::new(),
    };
    drop(sys);
    let mut todo = Vec::new();
    for row in &rows {
        let slug: String = row.try_get("slug").map_err(DbError::from)?;
        let status: String = row.try_get("status").map_err(DbError::from)?;
        if status != "active" {
            drain.not_movable.push(slug);
        } else if row.try_get::<_, bool>("moving").map_err(DbError::from)? {
            drain.moving += 1;
        } else {
            todo.push(slug);
        }
    }
    for slug in todo {
        // A start takes a few round trips; keep the rest for the next call.
        if Instant::now() + Duration::from_secs(2) >= until || !drain.errors.is_empty() {
            drain.remaining += 1;
            continue;
        }
        let Some(to) = target(db, name).await? else {
            drain
                .errors
                .push("no open server has room for the rest".into());
            drain.remaining += 1;
            continue;
        };
        let Ok(parsed) = Slug::parse(&slug) else {
            drain.not_movable.push(slug);
            continue;
        };
        let req = MoveRequest {
            to,
            mode: MoveMode::Copy,
        };
        match start_move(db, &parsed, &req).await {
            Ok(mv) => drain.started.push(Started {
                slug,
                move_id: mv.id,
                to: mv.to,
            }),
            Err(MoveError::Conflict(_)) => drain.moving += 1,
            Err(MoveError::Db(e)) => return Err(MoveError::Db(e)),
            Err(e) => {
                drain.errors.push(e.to_string());
                drain.remaining += 1;
            }
        }
    }
    tracing::info!(server = %name, started = drain.started.len(), moving = drain.moving,
        remaining = drain.remaining, not_movable = drain.not_movable.len(), "drain");
    Ok(drain)
}

/// The open server (not `from`) with the most room, counting the moves running to it.
async fn target(db: &Database, from: &ServerName) -> Result<Option<ServerName>, DbError> {
    let row = db
        .system()
        .await?
        .query_opt(
            "SELECT s.name, s.max_tenants \
               - (SELECT count(*) FROM tenants t WHERE t.server = s.name AND t.status <> 'purged') \
               - (SELECT count(*) FROM moves m WHERE m.to_server = s.name AND m.state = 'running') \
               AS room \
             FROM servers s WHERE s.state = 'open' AND s.name <> $1 \
             ORDER BY room DESC, s.name LIMIT 1",
            &[&from.as_str()],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let room: i64 = row.try_get("room")?;
    if room <= 0 {
        return Ok(None);
    }
    let name: String = row.try_get("name")?;
    Ok(ServerName::parse(&name).ok())
}
