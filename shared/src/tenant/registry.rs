//! Reading the registry: one tenant, and pages of tenants. (Creating is `provision`; delete,
//! restore and purge are `lifecycle`.) One error enum per operation; `api` maps them to HTTP
//! in one place.

use tokio_postgres::{types::ToSql, Row};
use tracing::instrument;

use crate::{
    database::Database,
    domain::{Slug, Tenant, TenantStatus},
    page::{self, Cursor},
    pg::DbError,
};

/// The columns [`tenant_from_row`] reads (by name).
pub(crate) const TENANT_COLUMNS: &str = "id, name, slug, status, database_name, schema_version, \
     credentials_secret_arn, server, created_at, deleted_at, \
     (SELECT m.id FROM moves m WHERE m.tenant_id = tenants.id AND m.state = 'running') AS move_id";

pub(crate) fn tenant_from_row(row: &Row) -> Result<Tenant, DbError> {
    let status: String = row.try_get("status")?;
    let status = TenantStatus::parse(&status)
        .ok_or_else(|| anyhow::anyhow!("registry holds an unknown status {status:?}"))?;
    Ok(Tenant {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        slug: row.try_get("slug")?,
        status,
        database_name: row.try_get("database_name")?,
        schema_version: i64::from(row.try_get::<_, i32>("schema_version")?),
        credentials_secret_arn: row.try_get("credentials_secret_arn")?,
        server: row.try_get("server")?,
        created_at: row.try_get("created_at")?,
        deleted_at: row.try_get("deleted_at")?,
        move_id: row.try_get("move_id")?,
    })
}

// ---------------------------------------------------------------------------------------------
// Get
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub(crate) enum GetTenantError {
    #[error("tenant not found")]
    NotFound(Option<Slug>),
    /// The registry, a server or Secrets Manager failed it: a 503 to retry when one was away
    /// or busy, else a 500 (see `api::error`).
    #[error(transparent)]
    Db(#[from] DbError),
}

#[instrument(skip_all, fields(tenant.slug = %slug))]
pub(crate) async fn get_tenant(db: &Database, slug: &Slug) -> Result<Tenant, GetTenantError> {
    let sys = db.system().await?;
    let row = sys
        .query_opt(
            &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE slug = $1"),
            &[&slug.as_str()],
        )
        .await?;
    match row {
        Some(row) => Ok(tenant_from_row(&row)?),
        None => Err(GetTenantError::NotFound(Some(slug.clone()))),
    }
}

// ---------------------------------------------------------------------------------------------
// List
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<TenantStatus>,
    pub limit: i64,
    pub cursor: Option<Cursor>,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            status: None,
            limit: page::DEFAULT_LIMIT,
            cursor: None,
        }
    }
}

#[derive(Debug, serde::Serialize)]
pub struct TenantPage {
    pub tenants: Vec<Tenant>,
    pub next_cursor: Option<String>,
}

/// One page, oldest first, by keyset pagination on (created_at, id).
#[instrument(skip_all)]
pub async fn list_tenants(db: &Database, q: &ListQuery) -> Result<TenantPage, DbError> {
    let sys = db.system().await?;
    let status = q.status.map(TenantStatus::as_str);
    let fetch = q.limit + 1; // one more, to know whether there is a next page
    let mut sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE true");
    let mut args: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(status) = status.as_ref() {
        args.push(status);
        sql.push_str(&format!(" AND status = ${}", args.len()));
    }
    if let Some(c) = q.cursor.as_ref() {
        args.push(&c.created_at);
        args.push(&c.id);
        sql.push_str(&format!(
            " AND (created_at, id) > (${}, ${})",
            args.len() - 1,
            args.len()
        ));
    }
    args.push(&fetch);
    sql.push_str(&format!(" ORDER BY created_at, id LIMIT ${}", args.len()));
    let rows = sys.query(&sql, &args).await?;
    let mut tenants = rows
        .iter()
        .map(tenant_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if tenants.len() as i64 > q.limit {
        tenants.truncate(q.limit as usize);
        tenants.last().map(|t| {
            Cursor {
                created_at: t.created_at,
                id: t.id,
            }
            .encode()
        })
    } else {
        None
    };
    Ok(TenantPage {
        tenants,
        next_cursor,
    })
}
