//! The tenant template: a database with every tenant migration applied once, which
//! provisioning copies (`CREATE DATABASE ... TEMPLATE`) instead of running the migrations in
//! each new database. Copying is what `CREATE DATABASE` does anyway (from `template1`), so a
//! tenant costs one copy and a few registry writes, whatever the migrations contain.
//!
//! - Its name carries the fingerprint of the embedded migrations
//!   (`dbtools_template_<16 hex digits>`): a release with other migrations builds and uses its
//!   own template, and two versions deployed side by side never copy each other's.
//! - It is built from `template1`, as tenant databases were before, under an advisory lock,
//!   by whichever comes first: migrate-all (every run checks it) or a create that finds none.
//! - `ALLOW_CONNECTIONS false` is set last and marks it ready. Nobody can connect to it
//!   afterwards, which is also what `CREATE DATABASE` needs of a template (no other session in
//!   it). A build that died half-way left a database that still allows connections: the next
//!   build drops it and starts again.
//! - It is owned by the role that built it; PostgreSQL lets the owner copy a database that is
//!   not marked `IS_TEMPLATE`, which keeps the template droppable and needs no superuser (RDS).
//! - migrate-all drops templates of other fingerprints (older releases). A create of an older
//!   release still running would rebuild its own, once.
//! - Changes made to `template1` after a template was built reach new tenants only with the
//!   next template (the next release's migrations, or dropping the template by hand).

use tokio_postgres::Client;
use tracing::{info, warn};

use crate::{
    db::{error_chain, Database, DbError},
    domain::quote_ident,
    locks::{self, Lock},
    migrations::{self, ExpectedHistory},
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

/// The template's name for a migration fingerprint.
pub fn name_for(fingerprint: &str) -> String {
    format!("{PREFIX}{fingerprint}")
}

/// The template this release would use, without looking at the server.
pub fn expected() -> Template {
    let expected = ExpectedHistory::tenant();
    Template {
        name: name_for(expected.fingerprint()),
        version: expected.latest(),
        fingerprint: expected.fingerprint().to_owned(),
        built: false,
    }
}

/// True when the template exists and its build finished.
pub async fn is_ready(sys: &Client, name: &str) -> Result<bool, DbError> {
    let row = sys
        .query_opt(
            "SELECT NOT datallowconn FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await?;
    Ok(match row {
        Some(r) => r.try_get(0)?,
        None => false,
    })
}

/// The ready template of this release, built first when there is none. One query when it
/// exists.
pub async fn ensure(db: &Database, sys: &Client) -> Result<Template, DbError> {
    let mut template = expected();
    if is_ready(sys, &template.name).await? {
        return Ok(template);
    }
    let lock = locks::acquire(sys, Lock::Template).await?;
    let built = async {
        // Somebody else may have built it while we waited for the lock.
        if is_ready(sys, &template.name).await? {
            return Ok(false);
        }
        build(db, sys, &template).await.map(|()| true)
    }
    .await;
    locks::release(sys, lock).await;
    template.built = built?;
    Ok(template)
}

async fn build(db: &Database, sys: &Client, template: &Template) -> Result<(), DbError> {
    let started = std::time::Instant::now();
    let quoted = quote_ident(&template.name);
    // A build that died half-way (the lock is ours, so nobody is building it now).
    sys.batch_execute(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        .await?;
    sys.batch_execute(&format!("CREATE DATABASE {quoted} TEMPLATE template1"))
        .await?;
    let outcome = async {
        sys.batch_execute(&format!("REVOKE CONNECT ON DATABASE {quoted} FROM PUBLIC"))
            .await?;
        let mut client = db.connect(&template.name).await?;
        migrations::migrate_tenant_to_latest(&mut client).await?;
        drop(client);
        // The ready mark: nobody connects from now on.
        sys.batch_execute(&format!("ALTER DATABASE {quoted} ALLOW_CONNECTIONS false"))
            .await?;
        Ok(())
    }
    .await;
    match &outcome {
        Ok(()) => info!(
            template = %template.name,
            version = template.version,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "built the tenant template"
        ),
        Err(e) => {
            warn!(template = %template.name, error = %error_chain(e), "building the tenant template failed; dropping it");
            if let Err(drop_err) = sys
                .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
                .await
            {
                warn!(template = %template.name, error = %error_chain(&drop_err), "could not drop the failed template; the next build will");
            }
        }
    }
    outcome
}

/// Drops the templates of other migration fingerprints (older releases). Best effort: a
/// template being copied right now is skipped and dropped by a later run.
pub async fn drop_stale(sys: &Client, keep: &str) -> Result<Vec<String>, DbError> {
    let names: Vec<String> = sys
        .query(
            "SELECT datname::text FROM pg_database \
             WHERE starts_with(datname, $1) AND datname <> $2 ORDER BY 1",
            &[&PREFIX, &keep],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut dropped = Vec::new();
    for name in names {
        match sys
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&name)
            ))
            .await
        {
            Ok(()) => {
                info!(template = %name, "dropped the template of another release");
                dropped.push(name);
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
        let t = expected();
        assert_eq!(t.name, format!("dbtools_template_{}", t.fingerprint));
        assert!(t.name.len() <= 63, "fits an identifier");
        assert!(!t.name.starts_with("dbtools_tenant_"));
        assert_eq!(t.version, migrations::latest_tenant_version());
    }
}
