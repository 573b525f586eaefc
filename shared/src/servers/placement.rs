//! Where a new tenant goes: the servers it may go to, best first, and the claim on a server's
//! room that the tenant's insertion holds until it commits.

use super::state::ServerState;
use crate::{
    database::ServerSource,
    domain::ServerName,
    pg::{Conn, DbError, Tx},
};

/// Why no server could take a new tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoom {
    /// The requested server does not exist.
    Unknown(String),
    /// The requested server is draining.
    Draining(String),
    /// No open server (or not the requested one) has room.
    Full(Option<String>),
}

/// A server a new tenant may go to.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub name: String,
    pub source: Option<ServerSource>,
}

/// The servers a new tenant may go to, best first: the requested one, or every open server
/// with room, the most room first. Room is counted again, under the server's row lock, when
/// the tenant is inserted ([`claim`]).
pub(crate) async fn candidates(
    sys: &Conn,
    requested: Option<&ServerName>,
) -> Result<Result<Vec<Candidate>, NoRoom>, DbError> {
    let rows = sys
        .query(
            "SELECT s.name, s.state, s.host, s.port, s.secret_arn, \
                    s.max_tenants - count(t.id) FILTER (WHERE t.status <> 'purged') \
                      - (SELECT count(*) FROM moves m \
                         WHERE m.to_server = s.name AND m.state = 'running') AS room \
             FROM servers s LEFT JOIN tenants t ON t.server = s.name \
             WHERE $1::text IS NULL OR s.name = $1 \
             GROUP BY s.name ORDER BY room DESC, s.name",
            &[&requested.map(ServerName::as_str)],
        )
        .await?;
    let mut found = Vec::new();
    for row in &rows {
        let name: String = row.try_get("name")?;
        let state: String = row.try_get("state")?;
        let room: i64 = row.try_get("room")?;
        if state != ServerState::Open.as_str() {
            if requested.is_some() {
                return Ok(Err(NoRoom::Draining(name)));
            }
            continue;
        }
        if room > 0 {
            found.push(Candidate {
                source: ServerSource::from_row(row)?,
                name,
            });
        }
    }
    Ok(match requested {
        Some(r) if rows.is_empty() => Err(NoRoom::Unknown(r.to_string())),
        Some(r) if found.is_empty() => Err(NoRoom::Full(Some(r.to_string()))),
        None if found.is_empty() => Err(NoRoom::Full(None)),
        _ => Ok(found),
    })
}

/// Whether a server can take one more tenant, decided in the caller's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Open, with room: the caller inserts its tenant in this transaction, and concurrent
    /// placements on the server wait for it to commit before counting.
    Room,
    Full,
    Draining,
    Gone,
}

/// Takes the server's row lock (`FOR UPDATE`, waited for within the lock timeout), then
/// counts its tenants and the moves running to it (a move takes the same lock to start): a
/// statement of its own, so its snapshot sees every tenant and move committed by those that
/// held the lock before.
pub(crate) async fn claim(tx: &Tx<'_>, name: &str) -> Result<Claim, DbError> {
    let Some(row) = tx
        .locking()
        .query_opt(
            "SELECT state, max_tenants FROM servers WHERE name = $1 FOR UPDATE",
            &[&name],
        )
        .await?
    else {
        return Ok(Claim::Gone);
    };
    let state: String = row.try_get("state")?;
    if state != ServerState::Open.as_str() {
        return Ok(Claim::Draining);
    }
    let max: i32 = row.try_get("max_tenants")?;
    let count: i64 = tx
        .query_one(
            "SELECT (SELECT count(*) FROM tenants WHERE server = $1 AND status <> 'purged') \
               + (SELECT count(*) FROM moves WHERE to_server = $1 AND state = 'running') AS n",
            &[&name],
        )
        .await?
        .try_get("n")?;
    Ok(if count < i64::from(max) {
        Claim::Room
    } else {
        Claim::Full
    })
}
