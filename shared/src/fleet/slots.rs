//! A server's budget for fleet work (`migrate_concurrency`): slots that are advisory locks in
//! the registry, one held by whoever migrates a tenant there (inline or queued), and the
//! tenant's own lock after it.

use std::time::{Duration, Instant};

use super::{plan::TenantRow, prepare::FleetServer};
use crate::pg::{
    locks::{self, Lock},
    Conn, DbError,
};

/// What a tenant's attempt holds before it works.
pub(super) enum Held<'c> {
    Both(Slot<'c>, locks::LockGuard<'c>),
    /// The server's budget had no free slot within the wait.
    NoSlot,
    /// The tenant's lock stayed taken within the wait.
    Locked,
}

/// A slot of the tenant's server's budget, then the tenant's lock, each within `wait` (zero:
/// one try). What was taken is given back when the rest cannot be.
pub(super) async fn take_slot_and_lock<'c>(
    sys: &'c Conn,
    server: &FleetServer,
    tenant: &TenantRow,
    wait: Duration,
) -> Result<Held<'c>, DbError> {
    let Some(slot) = take_slot(sys, server, wait).await? else {
        return Ok(Held::NoSlot);
    };
    match locks::acquire(sys, Lock::Tenant(tenant.slug.clone()), wait).await {
        Ok(Some(lock)) => Ok(Held::Both(slot, lock)),
        Ok(None) => {
            slot.release(server).await;
            Ok(Held::Locked)
        }
        Err(e) => {
            slot.release(server).await;
            Err(e)
        }
    }
}

/// One of a server's slots, held by this process.
pub(super) struct Slot<'c> {
    n: usize,
    guard: locks::LockGuard<'c>,
}

impl Slot<'_> {
    pub(super) async fn release(self, server: &FleetServer) {
        self.guard.release().await;
        server.held_slots().remove(&self.n);
    }
}

/// A free slot of the server's budget (see `Lock::Slot`), waiting at most `wait` (zero: one
/// look at each slot). Advisory locks are re-entrant within a session, and an inline run's
/// tenants share one: the slots this process already holds are skipped, so that each tenant
/// at work holds a slot of its own.
///
/// A slot is given back only once its tenant's connection has closed on the server (see
/// `Conn::close`): the budget counts backends, not promises.
async fn take_slot<'c>(
    sys: &'c Conn,
    server: &FleetServer,
    wait: Duration,
) -> Result<Option<Slot<'c>>, DbError> {
    let deadline = Instant::now() + wait;
    loop {
        for n in 0..server.budget {
            // Claimed before the lock is tried, so that two tenants of this run never try the
            // same slot at once.
            if !server.held_slots().insert(n) {
                continue;
            }
            match locks::try_acquire(sys, Lock::slot(&server.name, n)).await {
                Ok(Some(guard)) => return Ok(Some(Slot { n, guard })),
                Ok(None) => {
                    server.held_slots().remove(&n);
                }
                Err(e) => {
                    server.held_slots().remove(&n);
                    return Err(e);
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50).min(deadline - now)).await;
    }
}
