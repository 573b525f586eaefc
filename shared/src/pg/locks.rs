//! PostgreSQL advisory locks, held on a session (of the system database) by a guard.
//!
//! - A wait is a poll of `pg_try_advisory_lock`, each poll a short call with the connection's
//!   query timeout, until the wait's deadline: a lock wait never blocks a connection, never
//!   outlives its deadline, and a server that stops answering ends it like any other call.
//!   A wait of zero tries once.
//! - [`LockGuard::release`] gives the lock back. A guard dropped without it (an early return
//!   that forgot, a panic, a future dropped at its deadline) discards its connection: the
//!   socket closes, and the server releases every lock of that session as soon as it notices.
//!   A lock can therefore never outlive the operation that took it.

use std::time::{Duration, Instant};

use tracing::warn;

use super::{Conn, DbError};

/// Key space of our locks: the first half of the two-integer advisory key.
const NS_GLOBAL: i32 = 0x6462_7400; // "dbt\0"
const NS_TENANT: i32 = 0x6462_7401;
const NS_TEMPLATE: i32 = 0x6462_7402;
const NS_SLOT: i32 = 0x6462_7403;

/// The first pause between two polls; it doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(20);
const MAX_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lock {
    /// One migrate-all run per fleet.
    Fleet,
    /// refinery on the system database.
    SystemMigrations,
    /// One sender of the lifecycle events at a time (see `events`).
    Events,
    /// Building (or replacing) the tenant template database of a server (its name).
    Template(String),
    /// Create, delete and migrate of one tenant never interleave.
    Tenant(String),
    /// One of a server's `migrate_concurrency` slots for fleet work: a tenant is migrated
    /// only by whoever holds one (`{server}/{n}`), so that no server ever has more tenants
    /// migrating at once than its budget, whatever runs them (migrate-all inline, or any
    /// number of `migrate-tenant` workers).
    Slot(String),
}

impl Lock {
    /// The slot `n` (from 0) of `server`.
    pub fn slot(server: &str, n: usize) -> Lock {
        Lock::Slot(format!("{server}/{n}"))
    }
}

impl Lock {
    /// (namespace, key, text to hash for the key): the key of a tenant lock is
    /// `hashtext(slug)`, of a template lock `hashtext(server)`, computed by the server (two
    /// names that hash alike share a lock: a wait, never a fault).
    fn sql_args(&self) -> (i32, i32, Option<&str>) {
        match self {
            Lock::Fleet => (NS_GLOBAL, 1, None),
            Lock::SystemMigrations => (NS_GLOBAL, 2, None),
            Lock::Events => (NS_GLOBAL, 3, None),
            Lock::Template(server) => (NS_TEMPLATE, 0, Some(server.as_str())),
            Lock::Tenant(slug) => (NS_TENANT, 0, Some(slug.as_str())),
            Lock::Slot(slot) => (NS_SLOT, 0, Some(slot.as_str())),
        }
    }
}

/// A lock this session holds. Give it back with [`LockGuard::release`]; dropped without that,
/// it discards the connection that holds it.
#[must_use = "release the lock"]
pub struct LockGuard<'c> {
    conn: &'c Conn,
    lock: Lock,
    released: bool,
}

impl std::fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LockGuard").field(&self.lock).finish()
    }
}

impl LockGuard<'_> {
    /// Gives the lock back. If that fails, the connection is discarded (and the lock with it).
    pub async fn release(mut self) {
        self.released = true;
        let (ns, key, text) = self.lock.sql_args();
        match self
            .conn
            .query_one(
                "SELECT pg_advisory_unlock($1, COALESCE(hashtext($3::text), $2))",
                &[&ns, &key, &text],
            )
            .await
        {
            Ok(row) if row.try_get::<_, bool>(0).unwrap_or(false) => {}
            Ok(_) => warn!(lock = ?self.lock, "released a lock this session did not hold"),
            Err(e) => {
                warn!(lock = ?self.lock, error = %e, "could not release a lock; discarding its connection");
                self.conn.discard();
            }
        }
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if !self.released {
            warn!(lock = ?self.lock, "a lock guard was dropped unreleased; discarding its connection");
            self.conn.discard();
        }
    }
}

/// Takes the lock only if it is free right now.
pub async fn try_acquire(conn: &Conn, lock: Lock) -> Result<Option<LockGuard<'_>>, DbError> {
    let (ns, key, text) = lock.sql_args();
    let row = conn
        .query_one(
            "SELECT pg_try_advisory_lock($1, COALESCE(hashtext($3::text), $2))",
            &[&ns, &key, &text],
        )
        .await?;
    let taken: bool = row.try_get(0)?;
    // Built only when taken: a guard that exists is a lock that is held.
    Ok(if taken {
        Some(LockGuard {
            conn,
            lock,
            released: false,
        })
    } else {
        None
    })
}

/// Waits for the lock until the end of the transaction `tx` is in, at most the session's
/// `lock_timeout` (a lock timeout error past it). The wait shows in `pg_locks`.
pub async fn wait_xact(tx: &Conn, lock: Lock) -> Result<(), DbError> {
    let (ns, key, text) = lock.sql_args();
    tx.locking()
        .execute(
            "SELECT pg_advisory_xact_lock($1, COALESCE(hashtext($3::text), $2))",
            &[&ns, &key, &text],
        )
        .await?;
    Ok(())
}

/// Waits for the lock, at most `wait` (zero: one try). `None` when it stayed taken.
pub async fn acquire(
    conn: &Conn,
    lock: Lock,
    wait: Duration,
) -> Result<Option<LockGuard<'_>>, DbError> {
    let deadline = Instant::now() + wait;
    let mut pause = FIRST_POLL;
    loop {
        if let Some(guard) = try_acquire(conn, lock.clone()).await? {
            return Ok(Some(guard));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_POLL);
    }
}
