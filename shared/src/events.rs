//! Lifecycle events: one event on an EventBridge bus (`EVENT_BUS_NAME`; unset: none) per
//! outcome of a tenant or a run, for the rest of a SaaS (billing, onboarding, an
//! application's cache of tenant credentials) to learn of it without polling.
//!
//! **At least once, never for what did not commit.** Triggers on the registry's `tenants`,
//! `moves` and `runs` tables (system migration V11) write each event into the `events` table,
//! the outbox, in the same transaction as the change it tells of; no code path can commit an
//! outcome and forget its event. After its work, every function that changes tenants, moves
//! or runs sends what is pending ([`send_after`]; an HTTP function only after an answer that
//! may follow a commit, [`worth_sending`]): oldest first, ten per `PutEvents`, one sender at a
//! time (the `Events` advisory lock, so that events leave in the order they were written),
//! each row deleted once EventBridge has taken it, all within a few seconds. A function killed
//! between its commit and its send leaves the row, which the next sender sends: any later
//! create, delete or move, and at the latest the next migrate-all, whose upkeep sends the
//! backlog after its run ([`send_upkeep`], up to a minute). A sender killed after `PutEvents`
//! and before its delete sends the same event twice, so consumers de-duplicate by
//! `detail.event_id`.
//!
//! | `detail-type` | when | `detail` besides `event_id` and `occurred_at` |
//! |---|---|---|
//! | `provisionSuccess` | a create committed its tenant `active` (also a dead create rolled forward) | `tenant_id`, `slug`, `name`, `status`, `server`, `database_name`, `credentials_secret_arn`, `schema_version` (the API's names) |
//! | `provisionFailure` | a create failed and was undone (also a dead create rolled back) | the same; `credentials_secret_arn` null |
//! | `deactivateSuccess` | a delete (`active` → `deleted`) | the same |
//! | `activateSuccess` | a restore (`deleted` → `active`) | the same |
//! | `deprovisionSuccess` | a purge finished (`purged`: database, login and secret gone) | the same; `credentials_secret_arn` the secret the purge deleted |
//! | `tenantMoved` | a move ended `done`: the registry, the login and the secret name the new server | the same, and `from_server`, `to_server`, `move_id`, `mode`, `writes_refused_ms` |
//! | `migrationRunFinished` | a run of migrate-all ended (again after a `retry_run`; a dry run writes no ledger: none) | `run_id`, `status`, `attempt`, `counts`, `latest_version`, `started_at`, `finished_at` |
//!
//! The names are SaaS Builder Toolkit's where one applies. No event carries a password, a
//! host name or SQL. With no bus configured, nothing is sent and migrate-all's upkeep
//! discards what the triggers wrote.

use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::error::SqlState;
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

/// What a send did: events taken by the bus, and whether some were left for later (the bus
/// refused one, an error, or time ran out with more to send).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub sent: usize,
    pub left: bool,
}

/// The longest a function spends sending events after its work.
const SEND_BUDGET: Duration = Duration::from_secs(3);
/// The longest migrate-all's upkeep spends sending: a backlog (a bus that refused for a day)
/// drains at its pace, ten events per `PutEvents`.
const UPKEEP_BUDGET: Duration = Duration::from_secs(60);

/// Whether an HTTP answer may follow a committed outcome, and so a pending event: a success,
/// or a 409 (a create that met something not ours, or a busy tenant, undid its row). A 4xx
/// refused the request before anything was written; after a 5xx the registry or a dependency
/// is away, and what the operation committed waits for the next sender.
pub fn worth_sending(status: u16) -> bool {
    (200..300).contains(&status) || status == 409
}

/// [`send_pending`] at the end of an invocation: within [`SEND_BUDGET`] and its deadline.
pub async fn send_after(db: &Database, inv: &Invocation) -> Sent {
    send_pending(db, inv.deadline.min(Instant::now() + SEND_BUDGET)).await
}

/// [`send_pending`] as migrate-all's upkeep: within [`UPKEEP_BUDGET`] and its deadline.
pub async fn send_upkeep(db: &Database, inv: &Invocation) -> Sent {
    send_pending(db, inv.deadline.min(Instant::now() + UPKEEP_BUDGET)).await
}

/// Sends the pending events, oldest first, until none is left, the bus refuses one, or
/// `deadline`. Never fails the caller's operation: what could not be sent stays pending (a
/// warning says why) for the next sender. Reads the registry as it is: it never creates nor
/// migrates it (a registry without the outbox has nothing to send).
///
/// It takes the sandbox's registry connection (`Database::system_as_is`): never call it while
/// holding that connection.
pub async fn send_pending(db: &Database, deadline: Instant) -> Sent {
    let Some(target) = db.config().events.clone() else {
        return Sent::default();
    };
    let mut total = Sent::default();
    loop {
        let batch = send_batch(db, &target.bus, &target.source, deadline);
        match tokio::time::timeout_at(deadline.into(), batch).await {
            Ok(Ok(Batch {
                sent,
                refused,
                full,
            })) => {
                total.sent += sent;
                if refused {
                    warn!("the event bus refused some lifecycle events; left for the next sender");
                    total.left = true;
                    break;
                }
                if !full {
                    break;
                }
            }
            Ok(Err(e)) => {
                warn!(error = %e, "lifecycle events left for the next sender");
                total.left = true;
                break;
            }
            Err(_) => {
                warn!("out of time; lifecycle events left for the next sender");
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
    #[error("another sender held the events until the deadline")]
    Busy,
}

/// What one batch did: how many the bus took, whether it refused some, and whether the batch
/// was full (more may be pending).
struct Batch {
    sent: usize,
    refused: bool,
    full: bool,
}

/// One `PutEvents` of up to ten pending events, in a transaction that holds the `Events` lock
/// and deletes what the bus took. The caller bounds it by `deadline` (dropped past it, its
/// transaction goes with its connection).
async fn send_batch(
    db: &Database,
    bus_name: &str,
    source: &str,
    deadline: Instant,
) -> Result<Batch, SendError> {
    let nothing = Batch {
        sent: 0,
        refused: false,
        full: false,
    };
    let sys = match db.system_as_is().await {
        Ok(sys) => sys,
        // No registry yet: nothing was ever written.
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => return Ok(nothing),
        Err(e) => return Err(e.into()),
    };
    // Most invocations have nothing to send: one read, no lock.
    match sys
        .query_one("SELECT EXISTS (SELECT 1 FROM events)", &[])
        .await
    {
        Ok(row) if !row.try_get::<_, bool>(0).map_err(DbError::from)? => return Ok(nothing),
        Ok(_) => {}
        // A registry before this release's system migrations: no outbox yet.
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => return Ok(nothing),
        Err(e) => return Err(e.into()),
    }
    let tx = sys.begin().await?;
    // The wait for another sender ends by the deadline too (the server ends it), and a sender
    // whose process vanished mid-call cannot hold the others for long.
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .min(db.config().lock_timeout)
        .max(Duration::from_millis(1));
    let waited = async {
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {}; SET LOCAL idle_in_transaction_session_timeout = 30000",
            wait.as_millis()
        ))
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
        return Ok(nothing);
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
    let taken = match bus::put(bus_name, source, &entries).await {
        Ok(taken) => taken,
        Err(e) => {
            tx.rollback().await;
            return Err(e.into());
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
    Ok(Batch {
        sent: sent.len(),
        refused: sent.len() < ids.len(),
        full: ids.len() == BATCH,
    })
}

/// With no bus configured, the outbox is emptied (migrate-all's upkeep): events are not kept
/// for a bus that may be configured later. The number of events discarded.
pub async fn discard_unsent(db: &Database) -> Result<u64, DbError> {
    if db.config().events.is_some() {
        return Ok(0);
    }
    db.system().await?.execute("DELETE FROM events", &[]).await
}
