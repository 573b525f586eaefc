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
//! - It is built from `template1`, as tenant databases were before, under an advisory lock,
//!   by whichever comes first: migrate-all (every run checks it) or a create that finds none.
//! - Its OID is chosen and recorded in the registry (`tenant_templates`) before it is made
//!   (see [`crate::ownership`]): only a template with the recorded name and OID is used,
//!   rebuilt or dropped. A database that merely carries a template's name is left alone, and
//!   the build reports it.
//! - `ALLOW_CONNECTIONS false` is set last and marks it ready. Nobody can connect to it
//!   afterwards, which is also what `CREATE DATABASE` needs of a template (no other session in
//!   it). A build that died half-way left a database that still allows connections: the next
//!   build drops it and starts again.
//! - It is owned by the role that built it; PostgreSQL lets the owner copy a database that is
//!   not marked `IS_TEMPLATE`, which keeps the template droppable and needs no superuser (RDS).
//! - migrate-all drops the recorded templates of other fingerprints (older releases). A create
//!   of an older release still running would rebuild its own, once.
//! - Changes made to `template1` after a template was built reach new tenants only with the
//!   next template (the next release's migrations, or dropping the template by hand).

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::{
    db::{error_chain, Conn, Database, DbError},
    domain::quote_ident,
    locks::{self, Lock},
    logins,
    migrations::{self, ExpectedHistory},
    ownership::{self, DropOutcome},
};

/// Every template's name starts with this (never a tenant's: those start `dbtools_tenant_`).
pub const PREFIX: &str = "dbtools_template_";

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

/// True when the template is the one this registry recorded and its build finished (it
/// takes no connections). One query.
pub async fn is_ready(sys: &Conn, name: &str) -> Result<bool, DbError> {
    let row = sys
        .query_opt(
            "SELECT NOT d.datallowconn AS ready FROM tenant_templates t \
             JOIN pg_database d ON d.datname = t.name AND d.oid::bigint = t.database_oid \
             WHERE t.name = $1",
            &[&name],
        )
        .await?;
    Ok(match row {
        Some(r) => r.try_get("ready")?,
        None => false,
    })
}

/// The ready template of this release, built first when there is none. One query when it
/// exists.
pub async fn ensure(db: &Database, sys: &Conn) -> Result<Template, DbError> {
    let mut template = expected(&db.config().system_db);
    if is_ready(sys, &template.name).await? {
        return Ok(template);
    }
    let wait = db.config().lock_timeout;
    let Some(lock) = locks::acquire(sys, Lock::Template, wait).await? else {
        // Another process is building it (a new release's first requests): try again soon.
        return Err(DbError::Unavailable(format!(
            "another process has been building the tenant template for {} s",
            wait.as_secs()
        )));
    };
    let built = async {
        // Somebody else may have built it while we waited for the lock.
        if is_ready(sys, &template.name).await? {
            return Ok(false);
        }
        build(db, sys, &template).await.map(|()| true)
    }
    .await;
    lock.release().await;
    template.built = built?;
    Ok(template)
}

/// The OID the registry recorded for a template, if any.
async fn recorded_oid(sys: &Conn, name: &str) -> Result<Option<i64>, DbError> {
    let row = sys
        .query_opt(
            "SELECT database_oid FROM tenant_templates WHERE name = $1",
            &[&name],
        )
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get("database_oid")?),
        None => None,
    })
}

async fn build(db: &Database, sys: &Conn, template: &Template) -> Result<(), DbError> {
    let started = std::time::Instant::now();
    let name = template.name.as_str();
    // A build of ours that died half-way (the lock is ours, so nobody is building it now).
    match ownership::drop_if_ours(sys, name, recorded_oid(sys, name).await?).await? {
        DropOutcome::NotOurs => {
            return Err(DbError::Other(anyhow::anyhow!(
                "a database named {name} exists that this registry did not build; it is left \
                 untouched: drop or rename it"
            )))
        }
        DropOutcome::Dropped | DropOutcome::Absent => {}
    }
    let oid = ownership::new_oid();
    sys.execute(
        "INSERT INTO tenant_templates (name, database_oid, version) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET database_oid = $2, version = $3, created_at = now()",
        &[
            &name,
            &oid,
            &i32::try_from(template.version).unwrap_or(i32::MAX),
        ],
    )
    .await?;
    sys.long()
        .batch_execute(&ownership::create_sql(name, oid, "template1"))
        .await?;
    let quoted = quote_ident(name);
    let outcome = async {
        sys.batch_execute(&format!("REVOKE CONNECT ON DATABASE {quoted} FROM PUBLIC"))
            .await?;
        // Tenant migrations grant the tables to the tenant logins' group role.
        logins::ensure_group(sys).await?;
        let mut client = db.connect(name).await?;
        migrations::migrate_tenant_to_latest(&mut client, db.config().migrate_tenant_timeout)
            .await?;
        drop(client);
        // The ready mark: nobody connects from now on.
        sys.batch_execute(&format!("ALTER DATABASE {quoted} ALLOW_CONNECTIONS false"))
            .await?;
        Ok(())
    }
    .await;
    match &outcome {
        Ok(()) => info!(
            template = %name,
            version = template.version,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "built the tenant template"
        ),
        Err(e) => {
            warn!(template = %name, error = %error_chain(e), "building the tenant template failed; dropping it");
            if let Err(drop_err) = ownership::drop_if_ours(sys, name, Some(oid)).await {
                warn!(template = %name, error = %error_chain(&drop_err), "could not drop the failed template; the next build will");
            }
        }
    }
    outcome
}

/// Drops the recorded templates of other migration fingerprints (older releases). Best
/// effort: a template being copied right now is skipped and dropped by a later run.
pub async fn drop_stale(sys: &Conn, keep: &str) -> Result<Vec<String>, DbError> {
    let rows = sys
        .query(
            "SELECT name, database_oid FROM tenant_templates WHERE name <> $1 ORDER BY name",
            &[&keep],
        )
        .await?;
    let mut dropped = Vec::new();
    for row in rows {
        let name: String = row.try_get("name")?;
        let oid: i64 = row.try_get("database_oid")?;
        match ownership::drop_if_ours(sys, &name, Some(oid)).await {
            Ok(outcome) => {
                if outcome == DropOutcome::NotOurs {
                    warn!(template = %name, "a database carries the name of an old template but is not it; left untouched");
                }
                sys.execute("DELETE FROM tenant_templates WHERE name = $1", &[&name])
                    .await?;
                if outcome == DropOutcome::Dropped {
                    info!(template = %name, "dropped the template of another release");
                    dropped.push(name);
                }
            }
            Err(e) => {
                warn!(template = %name, error = %error_chain(&e), "could not drop an old template")
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
        assert_eq!(t.version, migrations::latest_tenant_version());
    }
}
