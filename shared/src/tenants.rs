//! The tenant lifecycle: create (provision), list, get and soft-delete, on the registry in
//! the system database. One error enum per operation; `api` maps them to HTTP in one place.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, Utc};
use tokio_postgres::{types::ToSql, Row};
use tracing::instrument;
use uuid::Uuid;

use crate::{
    db::{Conn, Database, DbError},
    domain::{Slug, Tenant, TenantStatus},
    locks::{self, Lock},
};

/// The columns [`tenant_from_row`] reads (by name).
pub(crate) const TENANT_COLUMNS: &str =
    "id, name, slug, status, database_name, schema_version, created_at, deleted_at";

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
        created_at: row.try_get("created_at")?,
        deleted_at: row.try_get("deleted_at")?,
    })
}

/// A field-level validation problem, reported to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Get
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub(crate) enum GetTenantError {
    #[error("tenant not found")]
    NotFound(Option<Slug>),
    #[error("database unavailable")]
    Unavailable(String),
    #[error("unexpected error")]
    Unexpected(#[source] anyhow::Error),
}

impl From<DbError> for GetTenantError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) => GetTenantError::Unavailable(m),
            other => GetTenantError::Unexpected(anyhow::Error::new(other)),
        }
    }
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

pub(crate) const LIST_DEFAULT_LIMIT: i64 = 100;
pub(crate) const LIST_MAX_LIMIT: i64 = 500;

/// Position after the last tenant of a page: (created_at, id), oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// The range of `created_at` a cursor can hold: every tenant was created in it, and all of it
/// is within PostgreSQL's `timestamptz` (a forged cursor out of it is a 400, not an error of
/// the server's range check).
const CURSOR_MICROS: std::ops::RangeInclusive<i64> = 0..=253_402_300_799_999_999; // 1970 to 9999

impl Cursor {
    /// Opaque to clients: base64url of `v1:{created_at in µs}:{id}`.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "v1:{}:{}",
            self.created_at.timestamp_micros(),
            self.id
        ))
    }

    pub fn decode(raw: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(3, ':');
        if parts.next()? != "v1" {
            return None;
        }
        let micros: i64 = parts
            .next()?
            .parse()
            .ok()
            .filter(|m| CURSOR_MICROS.contains(m))?;
        let id = Uuid::parse_str(parts.next()?).ok()?;
        Some(Cursor {
            created_at: DateTime::from_timestamp_micros(micros)?,
            id,
        })
    }
}

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
            limit: LIST_DEFAULT_LIMIT,
            cursor: None,
        }
    }
}

#[derive(Debug, serde::Serialize)]
pub struct TenantPage {
    pub tenants: Vec<Tenant>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ListTenantsError {
    #[error("database unavailable")]
    Unavailable(String),
    #[error("unexpected error")]
    Unexpected(#[source] anyhow::Error),
}

impl From<DbError> for ListTenantsError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) => ListTenantsError::Unavailable(m),
            other => ListTenantsError::Unexpected(anyhow::Error::new(other)),
        }
    }
}

/// One page, oldest first, by keyset pagination on (created_at, id).
#[instrument(skip_all)]
pub async fn list_tenants(db: &Database, q: &ListQuery) -> Result<TenantPage, ListTenantsError> {
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

// ---------------------------------------------------------------------------------------------
// Delete (soft)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum DeleteTenantError {
    #[error("tenant not found")]
    NotFound(Option<Slug>),
    #[error("tenant '{0}' is still being provisioned")]
    Provisioning(Slug),
    #[error("tenant '{0}' is busy")]
    Busy(Slug),
    #[error("database unavailable")]
    Unavailable(String),
    #[error("unexpected error")]
    Unexpected(#[source] anyhow::Error),
}

impl From<DbError> for DeleteTenantError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) => DeleteTenantError::Unavailable(m),
            other => DeleteTenantError::Unexpected(anyhow::Error::new(other)),
        }
    }
}

/// Marks the tenant `deleted` and keeps its database. Deleting again answers the same tenant.
#[instrument(skip_all, fields(tenant.slug = %slug))]
pub async fn delete_tenant(db: &Database, slug: &Slug) -> Result<Tenant, DeleteTenantError> {
    let sys = db.system().await?;
    let wait = db.config().lock_timeout;
    let Some(lock) = locks::acquire(&sys, Lock::Tenant(slug.to_string()), wait).await? else {
        return Err(DeleteTenantError::Busy(slug.clone()));
    };
    let result = soft_delete(&sys, slug).await;
    lock.release().await;
    let tenant = result?;
    if tenant.status != TenantStatus::Deleted {
        return Err(DeleteTenantError::Provisioning(slug.clone()));
    }
    Ok(tenant)
}

async fn soft_delete(sys: &Conn, slug: &Slug) -> Result<Tenant, DeleteTenantError> {
    // One statement: flips an active tenant, or returns the row as it is (deleted already,
    // or provisioning) so that the caller can answer.
    let row = sys
        .locking()
        .query_opt(
            &format!(
                "WITH flipped AS ( \
                   UPDATE tenants SET status = 'deleted', deleted_at = now(), updated_at = now() \
                   WHERE slug = $1 AND status = 'active' RETURNING {TENANT_COLUMNS}) \
                 SELECT {TENANT_COLUMNS} FROM flipped \
                 UNION ALL \
                 SELECT {TENANT_COLUMNS} FROM tenants \
                 WHERE slug = $1 AND NOT EXISTS (SELECT 1 FROM flipped)"
            ),
            &[&slug.as_str()],
        )
        .await?;
    match row {
        Some(row) => Ok(tenant_from_row(&row)?),
        None => Err(DeleteTenantError::NotFound(Some(slug.clone()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_to_the_microsecond() {
        let c = Cursor {
            created_at: DateTime::from_timestamp_micros(1_768_644_000_123_456).unwrap(),
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
    }

    #[test]
    fn cursor_rejects_garbage() {
        for bad in [
            "",
            "x",
            "!!!",
            &URL_SAFE_NO_PAD.encode("v2:1:abc"),
            &URL_SAFE_NO_PAD.encode("v1:1:not-a-uuid"),
            // Valid shape, but out of any range a tenant was created in (PostgreSQL would
            // refuse the timestamp).
            &URL_SAFE_NO_PAD.encode(format!("v1:-9223372036854775808:{}", Uuid::nil())),
            &URL_SAFE_NO_PAD.encode(format!("v1:-210866803200000001:{}", Uuid::nil())),
            &URL_SAFE_NO_PAD.encode(format!("v1:253402300800000000:{}", Uuid::nil())),
            &URL_SAFE_NO_PAD.encode(format!("v1:-1:{}", Uuid::nil())),
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
