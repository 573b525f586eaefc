//! Creating a tenant, and converging after a create that died half-way.
//!
//! `CREATE DATABASE` cannot run in a transaction, and a Lambda can be killed at any
//! instruction, so provisioning is a sequence of steps, each of which checks what exists
//! before acting and can be repeated:
//!
//! 1. place the tenant ([`place`]): for the server the request names, or else each open
//!    server with room, most room first (see [`crate::servers`]), make sure its tenant template
//!    is ready, then insert the registry row as `provisioning` on that server, with a lease
//!    (`PROVISIONING_LEASE_SECONDS`), the OID its database will have there (the proof of
//!    ownership, see [`crate::ownership`]) and the optional idempotency key, in a transaction
//!    that holds the server's row and counts its tenants (capacity is never exceeded), committed
//!    (a concurrent duplicate gets a conflict from the unique slug and never reaches step 3). A
//!    server that cannot be reached or cannot make its template passes the tenant to the next;
//!    none left is a `NoRoom`;
//! 2. take the tenant's advisory lock (create, delete, reconcile and migrate-all of one tenant
//!    never interleave; the lock dies with its connection);
//! 3. `CREATE DATABASE ... OID = n TEMPLATE` the tenant template on the tenant's server, which
//!    holds every tenant migration already (see [`crate::template`]). Every step from here on
//!    runs on the row's server, as that server's admin.
//!    If the name exists, the database is not ours: remove our row, answer a conflict, touch
//!    nothing;
//! 4. make the tenant's login (a role named like the database, proven by its comment) with
//!    `CONNECT` on the database (none for `PUBLIC`), in one transaction (see [`crate::logins`]);
//! 5. make the tenant's secret (`{TENANT_SECRET_PREFIX}{slug}`, proven by its tag) with the
//!    login's password, and turn its rotation on when configured (see [`crate::access`]);
//! 6. mark `active` with its `schema_version`, migration fingerprint and secret ARN.
//!
//! The whole create works within its lease (and the invocation's deadline): past it, the work
//! is abandoned as if the process had died, so a live create is never taken for a dead one.
//!
//! A failure the process lives to see is compensated at once: drop the database (ours: its OID
//! is the row's), drop the login and delete the secret (ours: their mark and tag name the row;
//! the secret without a recovery window, it was never handed out), remove the row. The row is
//! removed only once nothing of ours is left. A process that dies leaves
//! the row `provisioning`; once its lease has expired and its lock is free (the holder is
//! gone), the next `POST` of the slug, a retry with the same key and every migrate-all run
//! reconcile it ([`reconcile_row`]):
//!
//! | what exists when the lease has expired | decision |
//! |---|---|
//! | no database of that name | roll back: drop our login and delete our secret if they exist (a rollback that died), delete the row |
//! | a database of that name whose OID is not the row's (a squatter: the create met it, got `DUPLICATE_DATABASE` and died before removing its row) | *disown*: the database is left untouched (migrate-all reports it as an orphan); our login and secret, if any, removed; the row is deleted so the slug is not stuck |
//! | ours, marked invalid by an interrupted `DROP DATABASE` | roll back: drop it, our login and secret, delete the row |
//! | ours, valid, with or without our login and our secret (killed before, between or after steps 4 and 5) | roll forward: apply the pending migrations (none, for a copy of the template), make what is missing and re-key the login and the secret together (a new password: the old one may be in neither or only one of them), mark `active` |
//! | ours, valid, but a login or a secret of the tenant's name is not ours | *disown*: roll back what is ours, leave that one untouched, delete the row |
//! | ours, valid, but a migration fails | roll back: drop it, our login and secret, delete the row |
//! | PostgreSQL unreachable (the registry, or the row's server), or the lock still held | nothing now; the next attempt decides (migrate-all reports the row's server unreachable and goes on with the others) |
//!
//! Rolling forward is chosen whenever our database exists because the work is done or
//! resumable and the client may already rely on it (its request may have timed out at the
//! gateway while the function ran on); rolling back is chosen when there is nothing to keep.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_postgres::error::SqlState;
use tracing::{error, info, instrument, warn};
use uuid::Uuid;

use crate::{
    aws::secrets::Deletion,
    config::TenantNames,
    database::{Admin, Database, Server},
    domain::{DatabaseName, NewTenant, Slug, Tenant, TenantStatus},
    invocation::Invocation,
    migrate::{self, ExpectedHistory},
    pg::{
        error_chain,
        locks::{self, Lock},
        ownership::{self, DropOutcome},
        Conn, DbError,
    },
    servers::{self, Claim, NoRoom},
    tenant::{
        access::{self, login, Access, AccessError},
        registry::{tenant_from_row, FieldError, TENANT_COLUMNS},
        template::{self, Template},
    },
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
fn fingerprint(new: &NewTenant) -> String {
    match &new.server {
        None => format!("{}\n{}", new.slug.as_str(), new.name.as_str()),
        Some(server) => format!("{}\n{}\n{server}", new.slug.as_str(), new.name.as_str()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CreateTenantError {
    #[error("invalid request")]
    Validation {
        message: String,
        details: Vec<FieldError>,
    },
    #[error("tenant with slug '{0}' already exists")]
    Conflict(Slug),
    /// A database, login or secret of the tenant's name exists but the registry did not make
    /// it: never adopted, never dropped.
    #[error("a {1} for slug '{0}' already exists outside the registry")]
    ExistsOutside(Slug, &'static str),
    /// The idempotency key was used before with another body.
    #[error("idempotency key reused with a different request")]
    IdempotencyMismatch,
    /// Another operation on the same tenant held it past the waiting time.
    #[error("tenant '{0}' is busy")]
    Busy(Slug),
    /// No server can take the tenant: the requested one is unknown, draining or full, or
    /// every open server is full.
    #[error("no server can take the tenant: {0:?}")]
    NoRoom(NoRoom),
    #[error("database unavailable")]
    Unavailable(String),
    /// Provisioning failed and was undone (or could not be, see the log).
    #[error("provisioning failed")]
    Unexpected(#[source] anyhow::Error),
}

impl From<DbError> for CreateTenantError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) | DbError::TimedOut(m) => CreateTenantError::Unavailable(m),
            // A lock wait that ran out (the server's row, held by concurrent placements): busy.
            e if e.is_lock_timeout() => CreateTenantError::Unavailable(e.to_string()),
            other => CreateTenantError::Unexpected(anyhow::Error::new(other)),
        }
    }
}

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
                Err(CreateTenantError::Unavailable(
                    "provisioning did not finish within its lease".into(),
                ))
            }
        };
    }
    Err(CreateTenantError::Busy(new.slug.clone()))
}

/// What the registry row of a new tenant is made of.
struct NewRow<'a> {
    id: Uuid,
    /// Its database's name, and its login's.
    database: &'a str,
    new: &'a NewTenant,
    scope: &'a str,
    key: Option<&'a IdempotencyKey>,
    fingerprint: &'a str,
}

/// Chooses the tenant's server and inserts its row there (step 1): the requested server, or
/// the open server with the most room that answers. On each server tried, its template is
/// made ready first (before the row exists: a template that cannot be built leaves nothing
/// behind), then the row is inserted under the server's row lock, after counting its tenants
/// (see [`servers::claim`]). An error with SQLSTATE 23505 is the slug's or the key's unique
/// constraint: the caller decides.
async fn place(
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
enum PlaceError {
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

/// A new tenant's secret: `{TENANT_SECRET_PREFIX}{slug}`.
fn secret_name(db: &Database, slug: &Slug) -> String {
    format!("{}{slug}", db.config().tenants.secret_prefix)
}

/// The constraint a PostgreSQL error names, if any.
fn constraint(e: &DbError) -> Option<&str> {
    match e {
        DbError::Postgres(pg) => pg.as_db_error().and_then(|d| d.constraint()),
        _ => None,
    }
}

/// True when the slug's row was inserted by this caller with this idempotency key (not
/// expired).
async fn same_key_holds_slug(
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
async fn forget_expired_key(
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
async fn replay(
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
        let slug = Slug::parse(&tenant.slug)
            .map_err(|e| CreateTenantError::Unexpected(anyhow::anyhow!("registry slug: {e}")))?;
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

/// How the new database is made: its OID, its template, and the create's deadline.
struct Made<'a> {
    oid: i64,
    template: &'a Template,
    deadline: Instant,
}

/// Steps 2 to 6 for the row that this request inserted.
async fn provision(
    db: &Database,
    sys: &Conn,
    admin: &Admin<'_>,
    access: &Access,
    slug: &Slug,
    made: &Made<'_>,
) -> Result<Tenant, CreateTenantError> {
    let (oid, template) = (made.oid, made.template);
    let started = Instant::now();
    let id = access.tenant_id;
    let db_name = &access.database;
    let lock = match locks::acquire(
        sys,
        Lock::Tenant(slug.to_string()),
        db.config().lock_timeout,
    )
    .await
    {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            remove_row(sys, id).await;
            return Err(CreateTenantError::Busy(slug.clone()));
        }
        Err(e) => {
            remove_row(sys, id).await;
            return Err(e.into());
        }
    };

    let create = ownership::create_sql(db_name, oid, &template.name);
    let answer = db.config().query_timeout;
    if let Err(e) = create_database(admin, &create, made.deadline, answer).await {
        // Nothing of ours exists, unless the answer was lost on the way: then the connection
        // is gone, and the row stays for reconcile to decide.
        if !e.is_unavailable() {
            remove_row(sys, id).await;
        }
        lock.release().await;
        if e.code() == Some(&SqlState::DUPLICATE_DATABASE) {
            warn!(database = %db_name, "database exists but this registry did not make it; left untouched");
            return Err(CreateTenantError::ExistsOutside(slug.clone(), "database"));
        }
        return Err(e.into());
    }

    let made = async {
        let arn = access::create(db, admin, access).await?;
        let tenant = activate(sys, id, template.version, &template.fingerprint, &arn).await?;
        Ok::<_, AccessError>(tenant)
    }
    .await;
    let result = match made {
        Ok(tenant) => {
            info!(
                tenant.id = %tenant.id,
                schema_version = tenant.schema_version,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "tenant provisioned"
            );
            Ok(tenant)
        }
        Err(e) => {
            error!(error = %error_chain(&e), "provisioning failed; undoing it");
            roll_back(db, sys, admin, access, Some(oid)).await;
            Err(match e {
                AccessError::Foreign(what) => CreateTenantError::ExistsOutside(slug.clone(), what),
                AccessError::Db(e) if e.is_lock_timeout() => CreateTenantError::Busy(slug.clone()),
                AccessError::Db(e) => e.into(),
            })
        }
    };
    lock.release().await;
    result
}

/// Runs `CREATE DATABASE` with a server-side statement timeout that ends by the create's
/// `deadline`: a statement the create abandoned (and could not cancel: the server did not
/// answer) can never commit after the lease, when reconcile may have decided over the row.
/// `answer` is the time an answer takes to arrive once the server has finished.
async fn create_database(
    admin: &Conn,
    create: &str,
    deadline: Instant,
    answer: Duration,
) -> Result<(), DbError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left < Duration::from_millis(100) {
        return Err(DbError::Unavailable(
            "no time left to make the database within the lease".into(),
        ));
    }
    admin
        .batch_execute(&format!("SET statement_timeout = {}", left.as_millis()))
        .await?;
    let created = admin.within(left + answer).batch_execute(create).await;
    // The admin connection is the server's shared one: its setting goes back (a connection
    // that cannot is discarded, and the next one starts with the configured timeout).
    if admin
        .batch_execute("RESET statement_timeout")
        .await
        .is_err()
    {
        admin.discard();
    }
    created
}

/// Applies the pending migrations, makes or repairs the login and the secret (re-keyed
/// together), marks the row `active`. Every step is safe to repeat. For a database of ours
/// whose provisioning died (a copy of the template: nothing is pending).
async fn finish_provisioning(
    db: &Database,
    sys: &Conn,
    admin: &Admin<'_>,
    access: &Access,
) -> Result<Tenant, AccessError> {
    login::ensure_group(admin).await?;
    // A create that died before its login left the database closed: opened to nobody but us
    // (its login gets CONNECT below).
    ownership::open(admin, &access.database).await?;
    let mut tenant = admin.server().connect(&access.database).await?;
    let migrated = migrate::migrate_tenant_to_latest(
        &mut tenant,
        &db.config().migrate_session,
        db.config().migrate_tenant_timeout,
    )
    .await;
    tenant.close().await;
    migrated?;
    let arn = access::ensure(db, admin, access, true, true).await?;
    let expected = ExpectedHistory::tenant();
    Ok(activate(
        sys,
        access.tenant_id,
        expected.latest(),
        expected.fingerprint(),
        &arn,
    )
    .await?)
}

/// Marks the row `active` at `version`, whose migrations have the fingerprint `fingerprint`,
/// with its secret. Safe to repeat.
async fn activate(
    sys: &Conn,
    id: Uuid,
    version: i64,
    fingerprint: &str,
    secret_arn: &str,
) -> Result<Tenant, DbError> {
    let version = i32::try_from(version)
        .map_err(|_| anyhow::anyhow!("schema version {version} out of range"))?;
    // A row lock may be held for a moment (a migrate-all recording the fleet): wait for it as
    // for any lock.
    let row = sys
        .locking()
        .query_one(
            &format!(
                "UPDATE tenants SET status = 'active', schema_version = $2, \
                   schema_fingerprint = $3, credentials_secret_arn = $4, updated_at = now(), \
                   lease_expires_at = NULL \
                 WHERE id = $1 AND status = 'provisioning' RETURNING {TENANT_COLUMNS}"
            ),
            &[&id, &version, &fingerprint, &secret_arn],
        )
        .await?;
    tenant_from_row(&row)
}

/// Drops our database (if any), our login and our secret, then removes the row. If any of
/// that fails, the row stays: it owns the leftovers, which must never become orphans nobody
/// knows about. True when the row was removed.
async fn roll_back(
    db: &Database,
    sys: &Conn,
    admin: &Admin<'_>,
    access: &Access,
    oid: Option<i64>,
) -> bool {
    let undone = async {
        if ownership::drop_if_ours(admin, &access.database, oid).await? == DropOutcome::NotOurs {
            warn!(database = %access.database, "a database of this name is not the one this registry made; left untouched");
        }
        access::remove(db, admin, access, Deletion::Now).await
    }
    .await;
    match undone {
        Ok(()) => {
            remove_row(sys, access.tenant_id).await;
            true
        }
        Err(e) => {
            error!(
                tenant.slug = %access.slug,
                error = %error_chain(&e),
                "could not undo a failed provisioning; row kept as provisioning for reconcile"
            );
            false
        }
    }
}

/// Removes the row of a provisioning that did not happen. Logged, never raised: the caller
/// is already answering an error.
async fn remove_row(sys: &Conn, id: Uuid) {
    if let Err(e) = sys
        .execute(
            "DELETE FROM tenants WHERE id = $1 AND status = 'provisioning'",
            &[&id],
        )
        .await
    {
        error!(tenant.id = %id, error = %error_chain(&e), "could not remove the provisioning row");
    }
}

/// What reconciling a dead provisioning did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconcileAction {
    /// Our database existed: migrations finished, tenant `active`.
    RolledForward,
    /// Nothing worth keeping: our database (if any) dropped, row removed.
    RolledBack,
    /// A database of the tenant's name exists that this registry did not make: left
    /// untouched (an orphan), row removed so the slug is not stuck.
    Disowned,
    /// Not ours to touch now: the lease has not expired, or a live process holds the lock.
    Skipped,
    /// Dry run: past its lease, would be reconciled.
    Pending,
    /// Reconciling raised an error (migrate-all reports it and goes on).
    Failed,
}

/// If the slug's row is `provisioning` with an expired lease and nobody holds its lock,
/// reconciles it. True when the slug is free again.
pub(crate) async fn reconcile_if_expired(
    db: &Database,
    sys: &Conn,
    slug: &Slug,
) -> Result<bool, DbError> {
    Ok(matches!(
        reconcile_slug(db, sys, slug).await?,
        ReconcileAction::RolledBack | ReconcileAction::Disowned
    ))
}

/// Reconciles the slug's dead provisioning, if it has one and nobody holds its lock.
pub async fn reconcile_slug(
    db: &Database,
    sys: &Conn,
    slug: &Slug,
) -> Result<ReconcileAction, DbError> {
    let far = Instant::now() + Duration::from_secs(24 * 3600);
    reconcile_slug_until(db, sys, slug, far).await
}

/// [`reconcile_slug`], its work cut at `until` (what it was doing is cancelled: each step is
/// safe to repeat, and the next attempt decides again): `DbError::TimedOut` then.
pub(crate) async fn reconcile_slug_until(
    db: &Database,
    sys: &Conn,
    slug: &Slug,
    until: Instant,
) -> Result<ReconcileAction, DbError> {
    let Some(lock) = locks::try_acquire(sys, Lock::Tenant(slug.to_string())).await? else {
        return Ok(ReconcileAction::Skipped);
    };
    let outcome = match tokio::time::timeout_at(until.into(), reconcile_row(db, sys, slug)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(DbError::TimedOut(
            "out of time: the next run reconciles it".into(),
        )),
    };
    lock.release().await;
    outcome
}

/// Applies the decision table of the module documentation to the slug's row, on the server
/// the row names. The caller holds the tenant's lock.
#[instrument(skip_all, fields(tenant.slug = %slug))]
async fn reconcile_row(db: &Database, sys: &Conn, slug: &Slug) -> Result<ReconcileAction, DbError> {
    let Some(row) = sys
        .query_opt(
            "SELECT id, slug, database_name, database_oid, role_name, secret_name, server \
             FROM tenants \
             WHERE slug = $1 AND status = 'provisioning' AND lease_expires_at < now()",
            &[&slug.as_str()],
        )
        .await?
    else {
        return Ok(ReconcileAction::Skipped);
    };
    // The stored names, never recomputed.
    let access = Access::from_row(&row, &db.config().tenants.secret_prefix)?;
    let recorded: Option<i64> = row.try_get("database_oid")?;
    let server: String = row.try_get("server")?;
    let server = db.server(sys, &server).await?;
    let admin = server.admin().await?;
    let admin = &admin;
    let action = match ownership::find(admin, &access.database).await? {
        None => match roll_back(db, sys, admin, &access, recorded).await {
            true => ReconcileAction::RolledBack,
            false => ReconcileAction::Skipped,
        },
        Some(found) if !found.is(recorded) => {
            warn!(database = %access.database, "a database of this tenant's name was not made by this registry; left untouched");
            match roll_back(db, sys, admin, &access, recorded).await {
                true => ReconcileAction::Disowned,
                false => ReconcileAction::Skipped,
            }
        }
        Some(found) if found.invalid => {
            // Left invalid by an interrupted DROP DATABASE.
            match roll_back(db, sys, admin, &access, recorded).await {
                true => ReconcileAction::RolledBack,
                false => ReconcileAction::Skipped,
            }
        }
        Some(_) => match finish_provisioning(db, sys, admin, &access).await {
            Ok(_) => ReconcileAction::RolledForward,
            // Unreachable, busy (a migration or a catalog lock that stayed taken) or out of
            // time: the database is ours and may be in use; the next attempt finishes it.
            // Never a rollback over what did not fail.
            Err(AccessError::Db(e)) if e.is_transient() => return Err(e),
            Err(e) => {
                error!(error = %error_chain(&e), "could not finish a dead provisioning; rolling back");
                match (roll_back(db, sys, admin, &access, recorded).await, e) {
                    (false, _) => ReconcileAction::Skipped,
                    (true, AccessError::Foreign(_)) => ReconcileAction::Disowned,
                    (true, _) => ReconcileAction::RolledBack,
                }
            }
        },
    };
    info!(action = ?action, database = %access.database, server = %server.name(), "reconciled a provisioning past its lease");
    Ok(action)
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
