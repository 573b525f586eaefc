//! The tenant template: a database with every tenant migration applied once, which
//! provisioning copies (`CREATE DATABASE ... TEMPLATE`) instead of running the migrations in
//! each new database. Copying is what `CREATE DATABASE` does anyway (from `template1`), so a
//! tenant costs one copy and a few registry writes, whatever the migrations contain.
//!
//! - Its name carries the fingerprint of the embedded migrations and the registry's
//!   (`dbtools_template_<16 hex digits>_<8 hex digits of the system database's name>`): a
//!   release with other migrations builds and uses its own template, two versions deployed side
//!   by side never copy each other's, and two registries on one server (staging and production,
//!   say) each have theirs: neither could prove the other's.
//! - Each server has its own, built under an advisory lock of the registry (one per server), by
//!   whichever comes first: migrate-all (every run checks every server) or a create placed on a
//!   server that has none.
//! - **Built from a clean source**, `template0`, never `template1`: every login of a server may
//!   connect to `template1` where the admin cannot revoke that (RDS's belongs to `rdsadmin`),
//!   and what a tenant left there (a large object needs no privilege) would be copied into
//!   every later tenant. Extensions a tenant needs belong in a tenant migration.
//! - **Closed to every login at every instant**: made with `ALLOW_CONNECTIONS false`, opened
//!   only after `PUBLIC`'s privileges are revoked (the admin alone may connect while it is
//!   migrated), and closed again once built. No session of anybody else's can plant rows in it
//!   nor hold it open (which would fail every `CREATE DATABASE ... TEMPLATE`).
//! - Its OID is chosen and recorded in the registry (`tenant_templates`, per server) before it
//!   is made (see [`crate::pg::ownership`]), and the record says when it was ready: only a template
//!   with the recorded name and OID, recorded ready and taking no connection, is used; only
//!   one with the recorded name and OID is rebuilt or dropped. A database that merely carries a
//!   template's name is left alone, and the build reports it. A build that died half-way left
//!   a template not recorded ready: the next build drops it and starts again.
//! - It is owned by the role that built it; PostgreSQL lets the owner copy a database that is
//!   not marked `IS_TEMPLATE`, which keeps the template droppable and needs no superuser (RDS).
//! - migrate-all drops the recorded templates of *older* releases (a lower migration version);
//!   those of a newer release (a deploy in progress: the old release's run still going) are
//!   kept, with their records. A create of an older release still running would rebuild its
//!   own, once.
//! - Changes made to `template0` never happen; changes an operator wants in every tenant are a
//!   tenant migration.

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::{
    database::{Admin, Database},
    domain::quote_ident,
    migrate::{self, ExpectedHistory},
    pg::{
        error_chain,
        locks::{self, Lock},
        ownership::{self, DropOutcome},
        Conn, DbError,
    },
    tenant::access::login,
};

/// Every template's name starts with this (never a tenant's: those start `dbtools_tenant_`).
pub const PREFIX: &str = "dbtools_template_";

/// What a template is copied from: PostgreSQL's pristine database, which nobody can connect to.
const CLEAN_SOURCE: &str = "template0";

/// The template of this release: what new tenants are copied from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Template {
    pub name: String,
    /// The latest tenant migration it holds.
    pub version: i64,
    pub fingerprint: String,
    /// True when this call built it.
    #[serde(skip)]
    pub built: bool,
}

/// The template's name for a migration fingerprint, in the registry `system_db`.
pub fn name_for(fingerprint: &str, system_db: &str) -> String {
    let registry = Sha256::digest(system_db.as_bytes());
    format!(
        "{PREFIX}{fingerprint}_{:02x}{:02x}{:02x}{:02x}",
        registry[0], registry[1], registry[2], registry[3]
    )
}

/// The template this release would use in the registry `system_db`, without looking at the
/// server.
pub fn expected(system_db: &str) -> Template {
    let expected = ExpectedHistory::tenant();
    Template {
        name: name_for(expected.fingerprint(), system_db),
        version: expected.latest(),
        fingerprint: expected.fingerprint().to_owned(),
        built: false,
    }
}

/// The OID the registry recorded for a template on a server, if any.
async fn recorded_oid(sys: &Conn, server: &str, name: &str) -> Result<Option<i64>, DbError> {
    Ok(recorded(sys, server, name).await?.map(|(oid, _)| oid))
}

/// The OID the registry recorded for a template on a server, and whether its build finished.
async fn recorded(sys: &Conn, server: &str, name: &str) -> Result<Option<(i64, bool)>, DbError> {
    let row = sys
        .query_opt(
            "SELECT database_oid, ready_at IS NOT NULL AS ready FROM tenant_templates \
             WHERE server = $1 AND name = $2",
            &[&server, &name],
        )
        .await?;
    Ok(match row {
        Some(r) => Some((r.try_get("database_oid")?, r.try_get("ready")?)),
        None => None,
    })
}

/// True when the server's template is the one this registry recorded there, its build
/// finished, and it takes no connection. One query on each side.
pub async fn is_ready(sys: &Conn, admin: &Admin<'_>, name: &str) -> Result<bool, DbError> {
    let Some((oid, true)) = recorded(sys, admin.server().name(), name).await? else {
        return Ok(false);
    };
    Ok(ownership::find(admin, name)
        .await?
        .is_some_and(|f| f.is(Some(oid)) && !f.invalid && !f.allows_connections))
}

/// Brings a database of ours (a template being built, or a tenant whose create died after
/// its copy) to the latest tenant migration: opened to its owner (us) alone, then migrated
/// (see [`migrate_to_latest`]).
pub(crate) async fn migrate_own_database(
    db: &Database,
    admin: &Admin<'_>,
    name: &str,
) -> Result<(), DbError> {
    ownership::open(admin, name).await?;
    migrate_to_latest(db, admin, name).await
}

/// Brings a tenant database (or a template) to the latest tenant migration: the tenant
/// logins' group made sure of (tenant migrations grant the tables to it), migrated on a
/// connection of its own under the migration policy, that connection gone from the server
/// before this returns.
pub(crate) async fn migrate_to_latest(
    db: &Database,
    admin: &Admin<'_>,
    name: &str,
) -> Result<(), DbError> {
    login::ensure_group(admin).await?;
    let mut client = admin.server().connect(name).await?;
    let migrated = migrate::migrate_tenant_to_latest(
        &mut client,
        &db.config().migrate_session,
        db.config().migrate_tenant_timeout,
    )
    .await;
    client.close().await;
    migrated
}

/// The ready template of this release on the admin connection's server, built first when
/// there is none, by `until` (a build cut there is cancelled, and the next one starts again).
/// Two queries when it exists.
pub async fn ensure(
    db: &Database,
    sys: &Conn,
    admin: &Admin<'_>,
    until: std::time::Instant,
) -> Result<Template, DbError> {
    let mut template = expected(&db.config().system_db);
    if is_ready(sys, admin, &template.name).await? {
        return Ok(template);
    }
    let wait = db.config().lock_timeout;
    let server = admin.server().name().to_owned();
    let Some(lock) = locks::acquire(sys, Lock::Template(server.clone()), wait).await? else {
        // Another process is building it (a new release's first requests): try again soon.
        return Err(DbError::Unavailable(format!(
            "another process has been building the tenant template of server {server} for {} s",
            wait.as_secs()
        )));
    };
    let built = async {
        // Somebody else may have built it while we waited for the lock.
        if is_ready(sys, admin, &template.name).await? {
            return Ok(false);
        }
        match tokio::time::timeout_at(until.into(), build(db, sys, admin, &template)).await {
            Ok(built) => built.map(|()| true),
            Err(_) => Err(DbError::TimedOut(format!(
                "the tenant template of server {server} could not be built in the time left; \
                 the next run (or create) builds it"
            ))),
        }
    }
    .await;
    lock.release().await;
    template.built = built?;
    Ok(template)
}

async fn build(
    db: &Database,
    sys: &Conn,
    admin: &Admin<'_>,
    template: &Template,
) -> Result<(), DbError> {
    let started = std::time::Instant::now();
    let name = template.name.as_str();
    let server = admin.server().name();
    // A build of ours that died half-way (the lock is ours, so nobody is building it now).
    let recorded = recorded_oid(sys, server, name).await?;
    match ownership::drop_if_ours(admin, name, recorded).await? {
        DropOutcome::NotOurs => {
            return Err(DbError::Other(anyhow::anyhow!(
                "a database named {name} exists on server {server} that this registry did not \
                 build; it is left untouched: drop or rename it"
            )))
        }
        DropOutcome::Dropped | DropOutcome::Absent => {}
    }
    let oid = ownership::new_oid();
    sys.execute(
        "INSERT INTO tenant_templates (server, name, database_oid, version) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (server, name) DO UPDATE SET database_oid = $3, version = $4, \
           created_at = now(), ready_at = NULL",
        &[
            &server,
            &name,
            &oid,
            &i32::try_from(template.version).unwrap_or(i32::MAX),
        ],
    )
    .await?;
    // Closed at birth, from the pristine template0 (see the module documentation).
    admin
        .long()
        .batch_execute(&ownership::create_sql(name, oid, CLEAN_SOURCE))
        .await?;
    let quoted = quote_ident(name);
    let outcome = async {
        // Gone from the server before the template is closed and copied.
        migrate_own_database(db, admin, name).await?;
        admin
            .batch_execute(&format!("ALTER DATABASE {quoted} ALLOW_CONNECTIONS false"))
            .await?;
        // The ready mark, in the registry.
        sys.execute(
            "UPDATE tenant_templates SET ready_at = now() \
             WHERE server = $1 AND name = $2 AND database_oid = $3",
            &[&server, &name, &oid],
        )
        .await?;
        Ok(())
    }
    .await;
    match &outcome {
        Ok(()) => info!(
            template = %name,
            server = %server,
            version = template.version,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "built the tenant template"
        ),
        Err(e) => {
            warn!(template = %name, server = %server, error = %error_chain(e), "building the tenant template failed; dropping it");
            if let Err(drop_err) = ownership::drop_if_ours(admin, name, Some(oid)).await {
                warn!(template = %name, error = %error_chain(&drop_err), "could not drop the failed template; the next build will");
            }
        }
    }
    outcome
}

/// Drops the recorded templates of older releases (a lower migration version than `keep`'s)
/// on the admin connection's server. A template of a newer release, or of this version with
/// other migrations, is another release's that may be serving creates right now (a deploy in
/// progress): kept, with its record. Best effort: a template being copied right now is skipped
/// and dropped by a later run.
pub async fn drop_stale(
    sys: &Conn,
    admin: &Admin<'_>,
    keep: &Template,
) -> Result<Vec<String>, DbError> {
    let server = admin.server().name();
    let version = i32::try_from(keep.version).unwrap_or(i32::MAX);
    let rows = sys
        .query(
            "SELECT name, database_oid FROM tenant_templates \
             WHERE server = $1 AND name <> $2 AND version < $3 ORDER BY name",
            &[&server, &keep.name, &version],
        )
        .await?;
    let mut dropped = Vec::new();
    for row in rows {
        let name: String = row.try_get("name")?;
        let oid: i64 = row.try_get("database_oid")?;
        match ownership::drop_if_ours(admin, &name, Some(oid)).await {
            Ok(outcome) => {
                if outcome == DropOutcome::NotOurs {
                    warn!(template = %name, server = %server, "a database carries the name of an old template but is not it; left untouched");
                }
                sys.execute(
                    "DELETE FROM tenant_templates WHERE server = $1 AND name = $2",
                    &[&server, &name],
                )
                .await?;
                if outcome == DropOutcome::Dropped {
                    info!(template = %name, server = %server, "dropped the template of another release");
                    dropped.push(name);
                }
            }
            Err(e) => {
                warn!(template = %name, server = %server, error = %error_chain(&e), "could not drop an old template")
            }
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_is_named_after_the_migrations_and_is_never_a_tenant() {
        let t = expected("dbtools");
        assert!(t
            .name
            .starts_with(&format!("dbtools_template_{}_", t.fingerprint)));
        assert_eq!(t.name.len(), 42);
        assert!(t.name.len() <= 63, "fits an identifier");
        assert_ne!(t.name, expected("dbtools_staging").name, "one per registry");
        assert!(!t.name.starts_with("dbtools_tenant_"));
        assert_eq!(t.version, migrate::latest_tenant_version());
    }
}
