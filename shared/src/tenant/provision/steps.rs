//! Steps 2 to 6 of a create (lock, database, login, secret, `active`), finishing a dead
//! provisioning whose database is ours, and undoing what a failed one made.

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tracing::{error, info, warn};
use uuid::Uuid;

use super::error::CreateTenantError;
use crate::{
    aws::secrets::Deletion,
    database::{Admin, Database},
    domain::{Slug, Tenant},
    invocation::millis,
    migrate::ExpectedHistory,
    pg::{
        error_chain,
        locks::{self, Lock},
        ownership::{self, DropOutcome},
        Conn, DbError,
    },
    tenant::{
        access::{self, Access, AccessError},
        registry::{tenant_from_row, TENANT_COLUMNS},
        template::{self, Template},
    },
};

/// A new tenant's secret: `{TENANT_SECRET_PREFIX}{slug}`.
pub(super) fn secret_name(db: &Database, slug: &Slug) -> String {
    format!("{}{slug}", db.config().tenants.secret_prefix)
}

/// How the new database is made: its OID, its template, the create's deadline, and how long
/// placing its row took (for the log line of a create).
pub(super) struct Made<'a> {
    pub(super) oid: i64,
    pub(super) template: &'a Template,
    pub(super) deadline: Instant,
    pub(super) placed: Duration,
}

/// Steps 2 to 6 for the row that this request inserted.
pub(super) async fn provision(
    db: &Database,
    sys: &Conn,
    admin: &Admin<'_>,
    access: &Access,
    slug: &Slug,
    made: &Made<'_>,
) -> Result<Tenant, CreateTenantError> {
    let (oid, template, placed) = (made.oid, made.template, made.placed);
    let started = Instant::now();
    let id = access.tenant_id;
    let db_name = &access.database;
    let step = Instant::now();
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

    let locked = step.elapsed();
    let create = ownership::create_sql(db_name, oid, &template.name);
    let answer = db.config().query_timeout;
    let step = Instant::now();
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

    let database = step.elapsed();
    let made = async {
        let (arn, times) = access::create(db, admin, access).await?;
        let step = Instant::now();
        let tenant = activate(sys, id, template.version, &template.fingerprint, &arn).await?;
        Ok::<_, AccessError>((tenant, times, step.elapsed()))
    }
    .await;
    let result = match made {
        Ok((tenant, times, activated)) => {
            // Where a create's time goes, step by step (`make bench` reads these).
            info!(
                tenant.id = %tenant.id,
                schema_version = tenant.schema_version,
                elapsed_ms = millis(started.elapsed() + placed),
                place_ms = millis(placed),
                lock_ms = millis(locked),
                database_ms = millis(database),
                login_ms = millis(times.login),
                secret_ms = millis(times.secret),
                activate_ms = millis(activated),
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

/// Runs `CREATE DATABASE` with a server-side statement timeout as a backstop: a statement the
/// create abandoned (and could not cancel: the server did not answer) can never commit after
/// the lease, when reconcile may have decided over the row. `answer` is the time an answer
/// takes to arrive once the server has finished; the lease ends `answer` after `deadline`.
///
/// The backstop ends the statement half of `answer` after the `deadline`, never at it: the
/// create abandons its work at the deadline itself (leaving the row for reconcile), and a
/// server that ended the statement at the same instant would race it, turning the same
/// abandoned create into a cleanly failed one (row removed) at random. One outcome per event.
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
    let backstop = left + answer / 2;
    admin
        .batch_execute(&format!("SET statement_timeout = {}", backstop.as_millis()))
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
pub(super) async fn finish_provisioning(
    db: &Database,
    sys: &Conn,
    admin: &Admin<'_>,
    access: &Access,
) -> Result<Tenant, AccessError> {
    // A create that died before its login left the database closed: opened to nobody but us
    // (its login gets CONNECT below).
    template::migrate_own_database(db, admin, &access.database).await?;
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
pub(super) async fn roll_back(
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
pub(super) async fn remove_row(sys: &Conn, id: Uuid) {
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
