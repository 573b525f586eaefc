//! Lifecycle events: one event on an EventBridge bus (`EVENT_BUS_NAME`; unset: none) per
//! outcome of a tenant or a run, for the rest of a SaaS (billing, onboarding, an
//! application's cache of tenant credentials) to learn of it without polling.
//!
//! **At least once, never for what did not commit.** Triggers on the registry's `tenants` and
//! `runs` tables (system migration V11) write each event into the `events` table, the outbox,
//! in the same transaction as the change it tells of; no code path can commit an outcome and
//! forget its event. After its work, every function that changes tenants or runs sends what is
//! pending ([`send_pending`]): oldest first, ten per `PutEvents`, one sender at a time (the
//! `Events` advisory lock, so that events leave in the order they were written), each row
//! deleted once EventBridge has taken it. A function killed between its commit and its send
//! leaves the row, which the next sender sends: any later create, delete or move, and at the
//! latest the next migrate-all (its upkeep sends what is pending before and after its run).
//! A sender killed after `PutEvents` and before its delete sends the same event twice, so
//! consumers de-duplicate by `detail.event_id`.
//!
//! | `detail-type` | when | `detail` besides `event_id` and `occurred_at` |
//! |---|---|---|
//! | `provisionSuccess` | a create committed its tenant `active` (also a dead create rolled forward) | `tenant_id`, `slug`, `name`, `status`, `server`, `database_name`, `credentials_secret_arn`, `schema_version` (the API's names) |
//! | `provisionFailure` | a create failed and was undone (also a dead create rolled back) | the same; `credentials_secret_arn` null |
//! | `deactivateSuccess` | a delete (`active` → `deleted`) | the same |
//! | `activateSuccess` | a restore (`deleted` → `active`) | the same |
//! | `deprovisionSuccess` | a purge finished (`purged`: database, login and secret gone) | the same; `credentials_secret_arn` the secret the purge deleted |
//! | `tenantMoved` | a move switched the tenant to its new server | the same, and `from_server`, `to_server`, `move_id`, `mode` |
//! | `migrationRunFinished` | a run of migrate-all ended (a dry run writes no ledger: none) | `run_id`, `status`, `counts`, `latest_version`, `started_at`, `finished_at` |
//!
//! The names are SaaS Builder Toolkit's where one applies. No event carries a password, a
//! host name or SQL. With no bus configured, nothing is sent and migrate-all's upkeep
//! discards what the triggers wrote.

use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};
use uuid::Uuid;

use crate::{
    aws::bus::{self, Entry, BATCH},
    database::Database,
    invocation::Invocation,
    metrics::{self, Unit},
    pg::{
        locks::{self, Lock},
        DbError,
    },
};

/// What a send did: events taken by the bus, and whether some were left for later.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub sent: usize,
    pub left: bool,
}

/// The longest a function spends sending events after its work.
const SEND_BUDGET: Duration = Duration::from_secs(3);

/// [`send_pending`] at the end of an invocation: within [`SEND_BUDGET`] and its deadline.
pub async fn send_after(db: &Database, inv: &Invocation) -> Sent {
    send_pending(db, inv.deadline.min(Instant::now() + SEND_BUDGET)).await
}

/// Sends the pending events, oldest first, until none is left, the bus refuses one, or
/// `deadline`. Never fails the caller's operation: what could not be sent stays pending (a
/// warning says why) for the next sender.
pub async fn send_pending(db: &Database, deadline: Instant) -> Sent {
    let Some(target) = db.config().events.clone() else {
        return Sent::default();
    };
    let mut total = Sent::default();
    while Instant::now() < deadline {
        match send_batch(db, &target.bus, &target.source, deadline).await {
            Ok((0, left)) => {
                total.left = left;
                break;
            }
            Ok((n, left)) => {
                total.sent += n;
                total.left = left;
                if left {
                    break;
                }
            }
            Err(e) => {
                warn!(error = %e, "lifecycle events left for the next sender");
                total.left = true;
                break;
            }
        }
    }
    if total.sent > 0 {
        info!(
            events = total.sent,
            left = total.left,
            "lifecycle events sent"
        );
    }
    if total.sent > 0 || total.left {
        metrics::emit(
            &[],
            &[
                ("EventsSent", total.sent as f64, Unit::Count),
                (
                    "EventsUndelivered",
                    f64::from(u8::from(total.left)),
                    Unit::Count,
                ),
            ],
        );
    }
    total
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error("another sender held the events for the whole lock timeout")]
    Busy,
    #[error("out of time")]
    Deadline,
}

/// One `PutEvents` of up to ten pending events, in a transaction that holds the `Events` lock
/// and deletes what the bus took. (sent, whether some were left pending).
async fn send_batch(
    db: &Database,
    bus_name: &str,
    source: &str,
    deadline: Instant,
) -> Result<(usize, bool), SendError> {
    let sys = db.system().await?;
    let tx = sys.begin().await?;
    // The wait for another sender ends by the deadline too (the server ends it).
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .min(db.config().lock_timeout)
        .max(Duration::from_millis(1));
    let waited = async {
        tx.batch_execute(&format!("SET LOCAL lock_timeout = {}", wait.as_millis()))
            .await?;
        locks::wait_xact(&tx, Lock::Events).await
    }
    .await;
    if let Err(e) = waited {
        tx.rollback().await;
        return Err(if e.is_lock_timeout() {
            SendError::Busy
        } else {
            e.into()
        });
    }
    let rows = match tx
        .query(
            "SELECT id, detail_type, \
                    (detail || jsonb_build_object('event_id', id, 'occurred_at', created_at))::text, \
                    created_at \
               FROM events ORDER BY created_at, id LIMIT $1",
            &[&(BATCH as i64)],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tx.rollback().await;
            return Err(e.into());
        }
    };
    if rows.is_empty() {
        tx.commit().await?;
        return Ok((0, false));
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: Uuid = row.try_get(0).map_err(DbError::from)?;
        let at: chrono::DateTime<chrono::Utc> = row.try_get(3).map_err(DbError::from)?;
        ids.push(id);
        entries.push(Entry {
            detail_type: row.try_get(1).map_err(DbError::from)?,
            detail: row.try_get(2).map_err(DbError::from)?,
            time: SystemTime::from(at),
        });
    }
    let put = tokio::time::timeout_at(deadline.into(), bus::put(bus_name, source, &entries)).await;
    let taken = match put {
        Ok(Ok(taken)) => taken,
        Ok(Err(e)) => {
            tx.rollback().await;
            return Err(e.into());
        }
        Err(_) => {
            tx.rollback().await;
            return Err(SendError::Deadline);
        }
    };
    let sent: Vec<Uuid> = ids
        .iter()
        .zip(&taken)
        .filter(|(_, took)| **took)
        .map(|(id, _)| *id)
        .collect();
    tx.execute("DELETE FROM events WHERE id = ANY($1)", &[&sent])
        .await?;
    tx.commit().await?;
    Ok((sent.len(), sent.len() < ids.len()))
}

/// With no bus configured, the outbox is emptied (migrate-all's upkeep): events are not kept
/// for a bus that may be configured later. The number of events discarded.
pub async fn discard_unsent(db: &Database) -> Result<u64, DbError> {
    if db.config().events.is_some() {
        return Ok(0);
    }
    db.system().await?.execute("DELETE FROM events", &[]).await
}
