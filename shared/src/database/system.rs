//! The registry's connection: one per sandbox, cached, and the registry itself brought to this
//! release's system migrations on its first use, so that a deploy needs no step before the
//! functions serve: a new release's functions never meet an older registry, nor a new
//! deployment a missing one.

use std::time::Instant;

use tokio::sync::{MappedMutexGuard, MutexGuard};
use tokio_postgres::error::SqlState;
use tracing::{debug, info};

use super::Database;
use crate::{
    domain::quote_ident,
    migrate::{self, read_history, run_failure, system_runner},
    pg::{
        locks::{self},
        Conn, DbError,
    },
};

/// Exclusive use of the sandbox's system connection for one operation.
pub type SystemConn<'a> = MappedMutexGuard<'a, Conn>;

impl Database {
    /// The cached connection to the system database, reconnecting if it was closed or
    /// discarded (a frozen sandbox often finds its connection gone). The first use in a
    /// sandbox brings the registry to this release's system migrations.
    pub async fn system(&self) -> Result<SystemConn<'_>, DbError> {
        self.system_conn(true).await
    }

    /// The same connection, the registry as it is: nothing applied, nothing created (a dry
    /// run changes nothing). Fails with SQLSTATE 3D000 when there is no registry yet.
    pub async fn system_as_is(&self) -> Result<SystemConn<'_>, DbError> {
        self.system_conn(false).await
    }

    async fn system_conn(&self, current: bool) -> Result<SystemConn<'_>, DbError> {
        let guard = self.system.lock().await;
        let mut guard =
            match MutexGuard::try_map(guard, |slot| slot.as_mut().filter(|c| c.is_usable())) {
                Ok(live) => {
                    // Opened as it was by a dry run: brought current on first real use.
                    if current && self.registry_current.get().is_none() {
                        self.registry_current
                            .get_or_try_init(|| bring_registry_current(self, Some(&*live)))
                            .await?;
                    }
                    return Ok(live);
                }
                Err(guard) => guard,
            };
        if guard.is_some() {
            debug!("system connection was closed or discarded; reconnecting");
        }
        *guard = None;
        let conn = match self.connect(&self.config.system_db).await {
            Err(e) if current && e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
                // A new deployment: the registry does not exist yet.
                self.registry_current
                    .get_or_try_init(|| bring_registry_current(self, None))
                    .await?;
                self.connect(&self.config.system_db).await?
            }
            other => other?,
        };
        if current {
            self.registry_current
                .get_or_try_init(|| bring_registry_current(self, Some(&conn)))
                .await?;
        }
        let mut conn = conn;
        conn.keep_on_abandon();
        Ok(MutexGuard::map(guard, |slot| slot.insert(conn)))
    }
}

/// Applies the system migrations this release brings if the registry lacks any: one query
/// when it is current. Runs once per sandbox, on the registry's first use (see
/// `Database::system`), so that a new release's functions never meet an older registry, nor
/// a new deployment a missing one (`conn`: `None`).
pub(crate) async fn bring_registry_current(
    db: &Database,
    conn: Option<&Conn>,
) -> Result<(), DbError> {
    if let Some(conn) = conn {
        let applied: Vec<i64> = read_history(conn)
            .await?
            .iter()
            .map(|h| h.version)
            .collect();
        let missing = system_runner()
            .get_migrations()
            .iter()
            .any(|m| !applied.contains(&i64::from(m.version())));
        if !missing {
            return Ok(());
        }
    }
    let applied = migrate_system(db).await.map_err(|e| match e {
        // The registry is busy (its tables held by other sessions): retry the request.
        DbError::LockTimeout(m) | DbError::TimedOut(m) => DbError::Unavailable(m),
        other => other,
    })?;
    info!(
        ?applied,
        "brought the registry to this release's system migrations"
    );
    Ok(())
}

/// Creates the system database when it does not exist, then brings it to the latest system
/// migration under a lock, so that concurrent callers never run refinery side by side. The
/// lock is held on the maintenance database's connection (every caller takes it there), so
/// that refinery has the system database's connection to itself.
pub async fn migrate_system(db: &Database) -> Result<Vec<i64>, DbError> {
    let config = db.config();
    let system_db = config.system_db.as_str();
    let admin = db.connect(&db.maintenance_db().await?).await?;
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&system_db],
        )
        .await?
        .is_some();
    if !exists {
        match admin
            .long()
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(system_db)))
            .await
        {
            Ok(()) => info!(database = %system_db, "created the system database"),
            // Somebody else created it in the meantime (a creation racing ours fails on the
            // catalog's unique index instead).
            Err(e)
                if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                    || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(e),
        }
    }
    let Some(lock) =
        locks::acquire(&admin, locks::Lock::SystemMigrations, config.lock_timeout).await?
    else {
        return Err(DbError::Other(anyhow::anyhow!(
            "another process has been migrating the system database for {}s",
            config.lock_timeout.as_secs()
        )));
    };
    let result = async {
        let mut client = db.connect(system_db).await?;
        migrate::run(
            &mut client,
            system_runner,
            &config.migrate_session,
            Instant::now() + config.migrate_tenant_timeout,
        )
        .await
    }
    .await;
    lock.release().await;
    let (applied, outcome) = result?;
    outcome.map_err(|e| run_failure(&e, "system migrations failed"))?;
    if !applied.is_empty() {
        info!(?applied, "system database migrated");
    }
    Ok(applied)
}
