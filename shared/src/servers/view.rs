//! A server as the API shows it: its record, its tenants counted by status, and its room.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{error::ServersError, state::ServerState};
use crate::{
    database::Database,
    domain::ServerName,
    pg::{Conn, DbError},
};

/// A server's tenants that hold a database (purged ones do not).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TenantCounts {
    pub provisioning: i64,
    pub active: i64,
    pub deleted: i64,
    /// All of them: what `max_tenants` bounds.
    pub total: i64,
}

/// A server as the API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    pub name: String,
    /// `null` for `primary`: the functions' own `DB_HOST` or admin secret.
    pub host: Option<String>,
    pub port: Option<i32>,
    pub secret_arn: Option<String>,
    pub state: ServerState,
    pub max_tenants: i32,
    pub migrate_concurrency: i32,
    pub tenants: TenantCounts,
    /// `max_tenants` less `tenants.total` (0 when full or over).
    pub room: i64,
    #[serde(serialize_with = "crate::domain::rfc3339")]
    pub created_at: DateTime<Utc>,
}

const VIEW_SQL: &str = "SELECT s.name, s.host, s.port, s.secret_arn, s.state, s.max_tenants, \
       s.migrate_concurrency, s.created_at, \
       count(t.id) FILTER (WHERE t.status = 'provisioning') AS provisioning, \
       count(t.id) FILTER (WHERE t.status = 'active') AS active, \
       count(t.id) FILTER (WHERE t.status = 'deleted') AS deleted, \
       count(t.id) FILTER (WHERE t.status <> 'purged') AS total \
     FROM servers s LEFT JOIN tenants t ON t.server = s.name \
     WHERE $1::text IS NULL OR s.name = $1 \
     GROUP BY s.name ORDER BY s.name = 'primary' DESC, s.name";

fn view_from_row(row: &tokio_postgres::Row) -> Result<ServerView, DbError> {
    let state: String = row.try_get("state")?;
    let max_tenants: i32 = row.try_get("max_tenants")?;
    let tenants = TenantCounts {
        provisioning: row.try_get("provisioning")?,
        active: row.try_get("active")?,
        deleted: row.try_get("deleted")?,
        total: row.try_get("total")?,
    };
    Ok(ServerView {
        name: row.try_get("name")?,
        host: row.try_get("host")?,
        port: row.try_get("port")?,
        secret_arn: row.try_get("secret_arn")?,
        state: ServerState::parse(&state)
            .ok_or_else(|| anyhow::anyhow!("registry holds an unknown server state {state:?}"))?,
        max_tenants,
        migrate_concurrency: row.try_get("migrate_concurrency")?,
        room: (i64::from(max_tenants) - tenants.total).max(0),
        tenants,
        created_at: row.try_get("created_at")?,
    })
}

pub async fn list_servers(db: &Database) -> Result<Vec<ServerView>, ServersError> {
    let sys = db.system().await?;
    let rows = sys.query(VIEW_SQL, &[&None::<&str>]).await?;
    Ok(rows.iter().map(view_from_row).collect::<Result<_, _>>()?)
}

pub async fn get_server(db: &Database, name: &ServerName) -> Result<ServerView, ServersError> {
    let sys = db.system().await?;
    view(&sys, name).await
}

pub(super) async fn view(sys: &Conn, name: &ServerName) -> Result<ServerView, ServersError> {
    let row = sys
        .query_opt(VIEW_SQL, &[&Some(name.as_str())])
        .await?
        .ok_or_else(|| ServersError::NotFound(Some(name.to_string())))?;
    Ok(view_from_row(&row)?)
}
