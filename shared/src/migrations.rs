//! The embedded migrations (refinery) for tenant databases and for the system database.
//!
//! refinery records what it applied in `refinery_schema_history` inside each database and,
//! by default, refuses to run when that history diverges from (or misses) the embedded files:
//! released migrations are immutable, add a new file instead.

use refinery::{Migration, Runner};
use tokio_postgres::Client;
use tracing::info;

use crate::{
    db::{Database, DbError},
    domain::quote_ident,
    locks,
};

mod tenant {
    refinery::embed_migrations!("../migrations_tenant");
    pub fn runner() -> refinery::Runner {
        migrations::runner()
    }
}

mod system {
    refinery::embed_migrations!("../migrations_system");
    pub fn runner() -> refinery::Runner {
        migrations::runner()
    }
}

/// refinery's history table, in every migrated database.
pub const HISTORY_TABLE: &str = "refinery_schema_history";

/// A runner for tenant databases: one transaction per migration, divergence and
/// missing-version checks on.
pub fn tenant_runner() -> Runner {
    tenant::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true)
}

pub fn system_runner() -> Runner {
    system::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true)
}

/// The embedded tenant migrations, in version order.
pub fn tenant_migrations() -> Vec<Migration> {
    let mut all = tenant::runner().get_migrations().to_vec();
    all.sort_by_key(|m| m.version());
    all
}

/// The highest embedded tenant migration version.
pub fn latest_tenant_version() -> i64 {
    tenant_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

/// Applies every pending tenant migration; returns the versions applied, in order.
pub async fn apply_tenant_migrations(client: &mut Client) -> Result<Vec<i64>, refinery::Error> {
    let report = tenant_runner().run_async(client).await?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .collect())
}

/// The highest version recorded in a database's history (0 when none, or no history table).
pub async fn applied_version(client: &Client) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!("SELECT COALESCE(max(version), 0)::bigint FROM {HISTORY_TABLE}"),
            &[],
        )
        .await;
    match row {
        Ok(row) => row.try_get(0),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Creates the system database when it does not exist, then brings it to the latest system
/// migration under a lock, so that concurrent callers never run refinery side by side.
pub async fn migrate_system(db: &Database) -> Result<Vec<i64>, DbError> {
    let system_db = db.config().system_db.clone();
    let maintenance = db.maintenance_db().await?;
    {
        let admin = db.connect(&maintenance).await?;
        let exists = admin
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&system_db],
            )
            .await?
            .is_some();
        if !exists {
            match admin
                .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&system_db)))
                .await
            {
                Ok(()) => info!(database = %system_db, "created the system database"),
                // Somebody else created it in the meantime.
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut client = db.connect(&system_db).await?;
    let lock = locks::acquire(&client, locks::Lock::SystemMigrations).await?;
    let result = system_runner().run_async(&mut client).await;
    locks::release(&client, lock).await;
    let report =
        result.map_err(|e| DbError::Other(anyhow::anyhow!("system migrations failed: {e}")))?;
    let applied: Vec<i64> = report
        .applied_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .collect();
    if !applied.is_empty() {
        info!(?applied, "system database migrated");
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_migrations_are_embedded_in_order() {
        let names: Vec<(i64, String)> = tenant_migrations()
            .iter()
            .map(|m| (i64::from(m.version()), m.name().to_owned()))
            .collect();
        assert!(names.len() >= 2, "{names:?}");
        assert_eq!(names[0], (1, "create_settings".to_owned()));
        assert_eq!(names[1], (2, "create_activity_log".to_owned()));
        assert_eq!(latest_tenant_version(), names.last().unwrap().0);
    }
}
