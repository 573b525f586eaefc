//! Step 1: choosing the tenant's server, making its template ready, and inserting the
//! registry row as `provisioning` with its lease.

use std::{sync::Arc, time::Instant};

use tracing::warn;
use uuid::Uuid;

use super::{error::CreateTenantError, idempotency::IdempotencyKey, steps::secret_name};
use crate::{
    database::{Database, Server},
    domain::NewTenant,
    pg::{error_chain, ownership, Conn, DbError},
    servers::{self, Claim, NoRoom},
    tenant::template::{self, Template},
};

/// What the registry row of a new tenant is made of.
pub(super) struct NewRow<'a> {
    pub(super) id: Uuid,
    /// Its database's name, and its login's.
    pub(super) database: &'a str,
    pub(super) new: &'a NewTenant,
    pub(super) scope: &'a str,
    pub(super) key: Option<&'a IdempotencyKey>,
    pub(super) fingerprint: &'a str,
}

/// Chooses the tenant's server and inserts its row there (step 1): the requested server, or
/// the open server with the most room that answers. On each server tried, its template is
/// made ready first (before the row exists: a template that cannot be built leaves nothing
/// behind), then the row is inserted under the server's row lock, after counting its tenants
/// (see [`servers::claim`]). An error with SQLSTATE 23505 is the slug's or the key's unique
/// constraint: the caller decides.
pub(super) async fn place(
    db: &Database,
    sys: &Conn,
    row: &NewRow<'_>,
    until: Instant,
) -> Result<(Arc<Server>, Template, i64, Uuid, Instant), PlaceError> {
    let requested = row.new.server.as_ref();
    let candidates = match servers::candidates(sys, requested).await? {
        Ok(found) => found,
        Err(no_room) => return Err(no_room.into()),
    };
    // Servers this sandbox found unreachable moments ago go last: tried only when no other
    // can take the tenant.
    let mut servers = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        servers.push(db.server_at(&candidate.name, candidate.source).await);
    }
    servers.sort_by_key(|s| s.seems_down());
    let mut passed_over: Option<CreateTenantError> = None;
    for server in servers {
        let template = match ready_template(db, sys, &server, until).await {
            Ok(template) => template,
            Err(e) if requested.is_some() => return Err(e.into()),
            Err(e) => {
                warn!(server = %server.name(), error = %error_chain(&e), "server cannot take a tenant now; trying the next");
                passed_over.get_or_insert(e.into());
                continue;
            }
        };
        let started = Instant::now();
        let oid = ownership::new_oid();
        match insert_row(db, sys, row, server.name(), oid).await? {
            Ok(id) => return Ok((server, template, oid, id, started)),
            Err(claim) if requested.is_some() => {
                let name = server.name().to_owned();
                return Err(match claim {
                    Claim::Draining => NoRoom::Draining(name),
                    Claim::Gone => NoRoom::Unknown(name),
                    Claim::Full | Claim::Room => NoRoom::Full(Some(name)),
                }
                .into());
            }
            // Filled or closed since the candidates were listed: the next one.
            Err(_) => continue,
        }
    }
    Err(passed_over
        .map(PlaceError::Create)
        .unwrap_or(PlaceError::Create(CreateTenantError::NoRoom(NoRoom::Full(
            None,
        )))))
}

/// The server's template, built first when it has none (see [`template::ensure`]).
async fn ready_template(
    db: &Database,
    sys: &Conn,
    server: &Server,
    until: Instant,
) -> Result<Template, DbError> {
    let admin = server.admin().await?;
    template::ensure(db, sys, &admin, until).await
}

/// Inserts the row as `provisioning` on `server` if the server can take it: one transaction
/// that holds the server's row while it counts and inserts. `Ok(Err(claim))` when it cannot.
async fn insert_row(
    db: &Database,
    sys: &Conn,
    row: &NewRow<'_>,
    server: &str,
    oid: i64,
) -> Result<Result<Uuid, Claim>, DbError> {
    let config = db.config();
    let (new, key) = (row.new, row.key);
    let ttl = key.map(|_| config.idempotency_key_ttl.as_secs_f64());
    let tx = sys.begin().await?;
    let inserted = async {
        let claim = servers::claim(&tx, server).await?;
        if claim != Claim::Room {
            return Ok(Err(claim));
        }
        let inserted = tx
            .query_one(
                "INSERT INTO tenants (id, name, slug, database_name, database_oid, role_name, \
                   secret_name, status, lease_expires_at, idempotency_scope, idempotency_key, \
                   request_fingerprint, idempotency_expires_at, server) \
                 VALUES ($12, $1, $2, $3, $4, $3, $10, 'provisioning', \
                   now() + make_interval(secs => $5), $6, $7, $8, now() + make_interval(secs => $9), \
                   $11) \
                 RETURNING id",
                &[
                    &new.name.as_str(),
                    &new.slug.as_str(),
                    &row.database,
                    &oid,
                    &config.provisioning_lease.as_secs_f64(),
                    &key.map(|_| row.scope),
                    &key.map(IdempotencyKey::as_str),
                    &key.map(|_| row.fingerprint),
                    &ttl,
                    &secret_name(db, &new.slug),
                    &server,
                    &row.id,
                ],
            )
            .await?;
        Ok::<_, DbError>(Ok(inserted.try_get::<_, Uuid>("id")?))
    }
    .await;
    match inserted {
        Ok(Ok(id)) => {
            tx.commit().await?;
            Ok(Ok(id))
        }
        other => {
            tx.rollback().await;
            other
        }
    }
}

/// Why placing a tenant's row failed: a statement's error (the caller looks at unique
/// violations) or an answer for the client.
#[derive(Debug)]
pub(super) enum PlaceError {
    Db(DbError),
    Create(CreateTenantError),
}

impl From<DbError> for PlaceError {
    fn from(e: DbError) -> Self {
        PlaceError::Db(e)
    }
}

impl From<NoRoom> for PlaceError {
    fn from(e: NoRoom) -> Self {
        PlaceError::Create(CreateTenantError::NoRoom(e))
    }
}

impl From<PlaceError> for CreateTenantError {
    fn from(e: PlaceError) -> Self {
        match e {
            PlaceError::Db(e) => e.into(),
            PlaceError::Create(e) => e,
        }
    }
}

/// The constraint a PostgreSQL error names, if any.
pub(super) fn constraint(e: &DbError) -> Option<&str> {
    match e {
        DbError::Postgres(pg) => pg.as_db_error().and_then(|d| d.constraint()),
        _ => None,
    }
}
