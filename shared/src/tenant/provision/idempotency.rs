//! Idempotency keys: a request with a key its caller used before gets the tenant the first
//! request created (waiting while it is provisioned), or a mismatch when the body differs.

use std::time::{Duration, Instant};

use super::{
    error::CreateTenantError,
    reconcile::{reconcile_slug, ReconcileAction},
};
use crate::{
    database::Database,
    domain::{NewTenant, Slug, Tenant, TenantStatus},
    invocation::Invocation,
    pg::{Conn, DbError},
    tenant::registry::{tenant_from_row, TENANT_COLUMNS},
};

/// How long a request with an `Idempotency-Key` waits for the first request with that key
/// to finish before answering "busy" (never past its own deadline).
const IDEMPOTENT_WAIT: Duration = Duration::from_secs(25);
/// Between two looks at the first request's row.
const IDEMPOTENT_POLL: Duration = Duration::from_millis(100);

/// A client's `Idempotency-Key`: 1 to 255 visible ASCII characters. It is scoped to the caller
/// (two callers may use the same key) and remembered for `IDEMPOTENCY_KEY_TTL_HOURS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &[u8]) -> Result<IdempotencyKey, String> {
        if raw.is_empty() || raw.len() > 255 {
            return Err("must be 1 to 255 characters".into());
        }
        if !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err("may contain only visible ASCII characters".into());
        }
        Ok(IdempotencyKey(String::from_utf8_lossy(raw).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a request asked for, to recognise "the same body" whatever its JSON spelling.
/// Names hold no control characters, so the newline separates unambiguously. The server is
/// appended only when the request names one, so that keys stored before servers existed still
/// match their requests.
pub(super) fn fingerprint(new: &NewTenant) -> String {
    match &new.server {
        None => format!("{}\n{}", new.slug.as_str(), new.name.as_str()),
        Some(server) => format!("{}\n{}\n{server}", new.slug.as_str(), new.name.as_str()),
    }
}

/// True when the slug's row was inserted by this caller with this idempotency key (not
/// expired).
pub(super) async fn same_key_holds_slug(
    sys: &Conn,
    slug: &Slug,
    scope: &str,
    key: Option<&IdempotencyKey>,
) -> Result<bool, DbError> {
    let Some(key) = key else { return Ok(false) };
    let row = sys
        .query_opt(
            "SELECT 1 FROM tenants \
             WHERE slug = $1 AND idempotency_scope = $2 AND idempotency_key = $3 \
               AND idempotency_expires_at > now()",
            &[&slug.as_str(), &scope, &key.as_str()],
        )
        .await?;
    Ok(row.is_some())
}

/// Forgets the caller's key where it has expired, so that it can be used again.
pub(super) async fn forget_expired_key(
    sys: &Conn,
    scope: &str,
    key: Option<&IdempotencyKey>,
) -> Result<(), DbError> {
    let Some(key) = key else { return Ok(()) };
    sys.execute(
        "UPDATE tenants SET idempotency_scope = NULL, idempotency_key = NULL, \
           request_fingerprint = NULL, idempotency_expires_at = NULL \
         WHERE idempotency_scope = $1 AND idempotency_key = $2 \
           AND idempotency_expires_at <= now()",
        &[&scope, &key.as_str()],
    )
    .await?;
    Ok(())
}

/// With a key this caller used before (and that has not expired): the tenant it created,
/// waiting while it is still being provisioned (polling, at most [`IDEMPOTENT_WAIT`] and
/// never past the deadline), or `None` when no live row holds the key.
pub(super) async fn replay(
    db: &Database,
    sys: &Conn,
    scope: &str,
    key: &IdempotencyKey,
    fp: &str,
    inv: &Invocation,
) -> Result<Option<Tenant>, CreateTenantError> {
    let until = (Instant::now() + IDEMPOTENT_WAIT).min(inv.deadline);
    loop {
        let row = sys
            .query_opt(
                &format!(
                    "SELECT {TENANT_COLUMNS}, request_fingerprint, \
                       lease_expires_at < now() AS lease_expired \
                     FROM tenants WHERE idempotency_scope = $1 AND idempotency_key = $2 \
                       AND idempotency_expires_at > now()"
                ),
                &[&scope, &key.as_str()],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let stored_fp: Option<String> =
            row.try_get("request_fingerprint").map_err(DbError::from)?;
        if stored_fp.as_deref() != Some(fp) {
            return Err(CreateTenantError::IdempotencyMismatch);
        }
        let tenant = tenant_from_row(&row)?;
        if tenant.status != TenantStatus::Provisioning {
            return Ok(Some(tenant));
        }
        let slug = Slug::parse(&tenant.slug).map_err(|e| {
            CreateTenantError::Db(DbError::Other(anyhow::anyhow!("registry slug: {e}")))
        })?;
        let lease_expired: Option<bool> = row.try_get("lease_expired").map_err(DbError::from)?;
        if lease_expired == Some(true)
            && reconcile_slug(db, sys, &slug).await? != ReconcileAction::Skipped
        {
            continue; // decided: look again at once
        }
        if Instant::now() + IDEMPOTENT_POLL >= until {
            return Err(CreateTenantError::Busy(slug));
        }
        tokio::time::sleep(IDEMPOTENT_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantName;

    #[test]
    fn idempotency_key_rules() {
        assert!(IdempotencyKey::parse(b"order-42/a:b").is_ok());
        assert!(IdempotencyKey::parse(b"").is_err());
        assert!(IdempotencyKey::parse(&[b'a'; 256]).is_err());
        assert!(IdempotencyKey::parse(&[b'a'; 255]).is_ok());
        assert!(IdempotencyKey::parse(b"has space").is_err());
        assert!(IdempotencyKey::parse("é".as_bytes()).is_err());
    }

    #[test]
    fn fingerprint_ignores_json_spelling_but_not_content() {
        let a = NewTenant {
            name: TenantName::parse(" Acme ").unwrap(),
            slug: Slug::parse("acme").unwrap(),
            server: None,
        };
        let b = NewTenant {
            name: TenantName::parse("Acme").unwrap(),
            slug: Slug::parse("acme").unwrap(),
            server: None,
        };
        let c = NewTenant {
            name: TenantName::parse("Acme Corp").unwrap(),
            slug: Slug::parse("acme").unwrap(),
            server: None,
        };
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }
}
