//! Reading the registry: one tenant, and pages of tenants. (Creating is `provision`; delete,
//! restore and purge are `lifecycle`.) One error enum per operation; `api` maps them to HTTP
//! in one place.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, Utc};
use tokio_postgres::{types::ToSql, Row};
use tracing::instrument;
use uuid::Uuid;

use crate::{
    database::Database,
    domain::{Slug, Tenant, TenantStatus},
    pg::DbError,
};

/// The columns [`tenant_from_row`] reads (by name).
pub(crate) const TENANT_COLUMNS: &str = "id, name, slug, status, database_name, schema_version, \
     credentials_secret_arn, server, created_at, deleted_at";

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
            DbError::Unavailable(m) | DbError::TimedOut(m) => GetTenantError::Unavailable(m),
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
            DbError::Unavailable(m) | DbError::TimedOut(m) => ListTenantsError::Unavailable(m),
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
