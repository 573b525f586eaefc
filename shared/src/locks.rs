//! PostgreSQL advisory locks, held on a session: they are released when the holder releases
//! them or when its connection ends (a killed Lambda never leaves one behind). Waits are
//! bounded by the session's `lock_timeout` (`DB_LOCK_TIMEOUT_SECS`), never endless.

use tokio_postgres::{error::SqlState, Client};
use tracing::warn;

use crate::db::DbError;

/// Key space of our locks: the first half of the two-integer advisory key.
const NS_GLOBAL: i32 = 0x6462_7400; // "dbt\0"
const NS_TENANT: i32 = 0x6462_7401;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lock {
    /// One migrate-all run per fleet.
    Fleet,
    /// refinery on the system database.
    SystemMigrations,
    /// Building (or replacing) the tenant template database.
    Template,
    /// Create, delete and migrate of one tenant never interleave.
    Tenant(String),
}

impl Lock {
    /// (namespace, key, text to hash for the key): the key of a tenant lock is
    /// `hashtext(slug)`, computed by the server.
    fn sql_args(&self) -> (i32, i32, Option<&str>) {
        match self {
            Lock::Fleet => (NS_GLOBAL, 1, None),
            Lock::SystemMigrations => (NS_GLOBAL, 2, None),
            Lock::Template => (NS_GLOBAL, 3, None),
            Lock::Tenant(slug) => (NS_TENANT, 0, Some(slug.as_str())),
        }
    }
}

/// A lock this session holds; give it back with [`release`].
#[derive(Debug)]
#[must_use = "release the lock"]
pub struct Held(Lock);

/// True when an error is a lock wait that ran out of time.
pub fn is_lock_timeout(e: &DbError) -> bool {
    e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
}

/// Waits for the lock, at most the session's `lock_timeout` (then SQLSTATE 55P03).
pub async fn acquire(client: &Client, lock: Lock) -> Result<Held, DbError> {
    let (ns, key, text) = lock.sql_args();
    client
        .execute(
            "SELECT pg_advisory_lock($1, COALESCE(hashtext($3::text), $2))",
            &[&ns, &key, &text],
        )
        .await?;
    Ok(Held(lock))
}

/// Takes the lock only if it is free right now.
pub async fn try_acquire(client: &Client, lock: Lock) -> Result<Option<Held>, DbError> {
    let (ns, key, text) = lock.sql_args();
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, COALESCE(hashtext($3::text), $2))",
            &[&ns, &key, &text],
        )
        .await?;
    Ok(row.try_get::<_, bool>(0)?.then_some(Held(lock)))
}

/// Gives the lock back. Best effort: if the connection is gone, so is the lock.
pub async fn release(client: &Client, held: Held) {
    let (ns, key, text) = held.0.sql_args();
    if let Err(e) = client
        .execute(
            "SELECT pg_advisory_unlock($1, COALESCE(hashtext($3::text), $2))",
            &[&ns, &key, &text],
        )
        .await
    {
        warn!(lock = ?held.0, error = %e, "could not release an advisory lock");
    }
}
