//! The create itself: the steps of the module documentation in order, within the lease.

use std::time::Instant;

use tokio_postgres::error::SqlState;
use tracing::instrument;
use uuid::Uuid;

use super::{
    error::CreateTenantError,
    idempotency::{fingerprint, forget_expired_key, replay, same_key_holds_slug, IdempotencyKey},
    place::{constraint, place, NewRow, PlaceError},
    reconcile::reconcile_if_expired,
    steps::{provision, remove_row, secret_name, Made},
};
use crate::{
    config::TenantNames,
    database::Database,
    domain::{DatabaseName, NewTenant, Tenant},
    invocation::Invocation,
    pg::DbError,
    tenant::access::Access,
};

/// The tenant, and whether it is the replay of an earlier request with the same key.
#[derive(Debug)]
pub struct Created {
    pub tenant: Tenant,
    pub replayed: bool,
}

/// Creates the tenant (see the module documentation for the steps and the recovery rules).
#[instrument(skip_all, fields(tenant.slug = %new.slug))]
pub async fn create_tenant(
    db: &Database,
    new: &NewTenant,
    key: Option<&IdempotencyKey>,
    inv: &Invocation,
) -> Result<Created, CreateTenantError> {
    let sys = db.system().await?;
    let fp = fingerprint(new);
    let scope = inv.caller.as_deref().unwrap_or("");
    // The id is chosen here: an opaque database name is made of it (`TENANT_NAMES`).
    let id = Uuid::new_v4();
    let database = match db.config().tenants.names {
        TenantNames::Slug => new.slug.database_name(),
        TenantNames::Opaque => DatabaseName::opaque(id),
    };
    let row = NewRow {
        id,
        database: database.as_str(),
        new,
        scope,
        key,
        fingerprint: &fp,
    };
    // A few rounds at most: a round ends early when a dead provisioning was undone, when an
    // expired key was forgotten, or when a concurrent request with the same key inserted first.
    for _ in 0..3 {
        if let Some(key) = key {
            if let Some(tenant) = replay(db, &sys, scope, key, &fp, inv).await? {
                return Ok(Created {
                    tenant,
                    replayed: true,
                });
            }
        }
        let placing = Instant::now();
        let (server, template, oid, id, started) = match place(db, &sys, &row, inv.deadline).await {
            Ok(placed) => placed,
            Err(PlaceError::Db(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                if constraint(&e) == Some("tenants_idempotency_key_key") {
                    // A request with the same key won the insert (wait for it and replay), or
                    // an expired key still sits on an old row (forget it, then insert).
                    forget_expired_key(&sys, scope, key).await?;
                    continue;
                }
                if same_key_holds_slug(&sys, &new.slug, scope, key).await? {
                    continue;
                }
                // The slug is taken. By a provisioning that died? Then converge and retry.
                if !reconcile_if_expired(db, &sys, &new.slug).await? {
                    return Err(CreateTenantError::Conflict(new.slug.clone()));
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let placed = placing.elapsed();
        // Never past the lease (nor the invocation's deadline): abandoned there, the work is
        // what a dead process leaves, and reconcile takes it from there. A query timeout is
        // kept before the lease ends, so that what was on its way when the work was abandoned
        // (a statement being cancelled, a Secrets Manager call) has landed before reconcile
        // may look; the server itself ends our DDL by then (see `provision`).
        let config = db.config();
        let lease_end = started + config.provisioning_lease;
        let deadline = inv.deadline.min(
            lease_end
                .checked_sub(config.query_timeout)
                .unwrap_or(lease_end),
        );
        let access = Access {
            tenant_id: id,
            slug: new.slug.to_string(),
            database: row.database.to_owned(),
            role: row.database.to_owned(),
            secret_name: secret_name(db, &new.slug),
        };
        let work = async {
            let admin = match server.admin().await {
                Ok(admin) => admin,
                Err(e) => {
                    remove_row(&sys, id).await;
                    return Err(e.into());
                }
            };
            let made = Made {
                oid,
                template: &template,
                deadline,
                placed,
            };
            provision(db, &sys, &admin, &access, &new.slug, &made).await
        };
        return match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(result) => result.map(|tenant| Created {
                tenant,
                replayed: false,
            }),
            Err(_) => {
                sys.discard();
                Err(CreateTenantError::Db(DbError::Unavailable(
                    "provisioning did not finish within its lease".into(),
                )))
            }
        };
    }
    Err(CreateTenantError::Busy(new.slug.clone()))
}
