//! Running a move: a message of the queue names it; the worker takes the tenant's lock and a
//! slot of both servers' budgets, then runs its steps one after the other while the
//! invocation has time, recording each as it finishes. A move that must wait (its lock or a
//! slot taken, a server away) or runs out of time sends its message again and lets this
//! delivery succeed, so waiting never counts towards the dead-letter queue.

use std::time::{Duration, Instant};

use tracing::{error, info, warn};
use uuid::Uuid;

use super::{
    context::{Ctx, StepError, TenantConns},
    record::{self, Move, MoveState, Step, LEASE_SECS},
    steps,
};
use crate::{
    aws::queue,
    database::Database,
    domain::TenantStatus,
    invocation::Invocation,
    pg::{
        error_chain,
        locks::{self, Lock, LockGuard},
        Conn, DbError,
    },
    tenant::access::Access,
};

/// What becomes of a move's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Done with (the move advanced and its next message sent, or nothing to do).
    Done,
    /// The registry failed: SQS delivers it again after its visibility timeout.
    Retry,
}

/// A step is started only with this much of the invocation left.
const MIN_STEP_TIME: Duration = Duration::from_secs(10);
/// A move whose step kept failing for a passing reason this long is given up (before its
/// switch: undone).
const PATIENCE: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

fn later() -> Duration {
    Duration::from_millis(2000 + rand::random_range(0..3000))
}

/// Handles one delivery of the move `id`'s message.
pub async fn advance_move(db: &Database, inv: &Invocation, queue_url: &str, id: Uuid) -> Delivered {
    let sys = match db.system().await {
        Ok(sys) => sys,
        Err(e) => {
            warn!(move_id = %id, error = %e, "registry unavailable; the move's message comes back");
            return Delivered::Retry;
        }
    };
    let mv = match record::load(&sys, id).await {
        Ok(Some(mv)) if mv.state == MoveState::Running => mv,
        Ok(_) => {
            info!(move_id = %id, "the move is over or unknown; nothing to do");
            return Delivered::Done;
        }
        Err(e) => {
            warn!(move_id = %id, error = %e, "could not read the move; its message comes back");
            return Delivered::Retry;
        }
    };
    let Some(held) = hold(&sys, &mv).await else {
        return send_again(&sys, queue_url, id, later()).await;
    };
    let conns = TenantConns::default();
    let delivered = run_steps(db, &sys, inv, queue_url, id, &conns).await;
    if let Some((source, target)) = conns.into_inner() {
        source.close().await;
        target.close().await;
    }
    release(held).await;
    delivered
}

/// Gives back what [`hold`] took, the last taken first.
async fn release(held: Vec<LockGuard<'_>>) {
    for guard in held.into_iter().rev() {
        guard.release().await;
    }
}

/// The tenant's lock and a slot of each server's budget, or `None` (and nothing held) when
/// one is taken or the registry failed.
async fn hold<'c>(sys: &'c Conn, mv: &Move) -> Option<Vec<LockGuard<'c>>> {
    let mut held = Vec::new();
    let taken = async {
        held.push(
            locks::try_acquire(sys, Lock::Tenant(mv.slug.clone()))
                .await
                .ok()??,
        );
        for server in [&mv.from, &mv.to] {
            held.push(take_slot(sys, server).await?);
        }
        Some(())
    }
    .await;
    if taken.is_none() {
        info!(move_id = %mv.id, "the tenant or a server's budget is busy; the move waits");
        release(held).await;
        return None;
    }
    Some(held)
}

/// A free slot of the server's `migrate_concurrency` budget (see `Lock::Slot`).
async fn take_slot<'c>(sys: &'c Conn, server: &str) -> Option<LockGuard<'c>> {
    let row = sys
        .query_opt(
            "SELECT migrate_concurrency FROM servers WHERE name = $1",
            &[&server],
        )
        .await
        .ok()?;
    // A server removed meanwhile: the step finds out and fails the move.
    let budget: i32 = row.map_or(Ok(1), |r| r.try_get(0)).ok()?;
    for n in 0..usize::try_from(budget).unwrap_or(1) {
        if let Ok(Some(guard)) = locks::try_acquire(sys, Lock::slot(server, n)).await {
            return Some(guard);
        }
    }
    None
}

/// Sends the move's message again, `delay` from now, and moves its lease past that: the
/// upkeep takes a move whose lease passed for one whose message was lost.
async fn send_again(sys: &Conn, queue_url: &str, id: Uuid, delay: Duration) -> Delivered {
    let lease = LEASE_SECS as f64 + delay.as_secs_f64();
    if let Err(e) = sys
        .execute(
            "UPDATE moves SET lease_expires_at = now() + make_interval(secs => $2) \
             WHERE id = $1 AND state = 'running'",
            &[&id, &lease],
        )
        .await
    {
        warn!(move_id = %id, error = %e, "could not extend the move's lease");
    }
    match queue::send_move(queue_url, id, delay).await {
        Ok(()) => Delivered::Done,
        Err(e) => {
            warn!(move_id = %id, error = %e, "could not send the move's message again; this one comes back");
            Delivered::Retry
        }
    }
}

async fn run_steps(
    db: &Database,
    sys: &Conn,
    inv: &Invocation,
    queue_url: &str,
    id: Uuid,
    conns: &TenantConns,
) -> Delivered {
    loop {
        let mv = match record::load(sys, id).await {
            Ok(Some(mv)) if mv.state == MoveState::Running => mv,
            Ok(_) => return Delivered::Done,
            Err(_) => return Delivered::Retry,
        };
        if inv.time_left() < MIN_STEP_TIME {
            return send_again(sys, queue_url, id, Duration::ZERO).await;
        }
        let ctx = match context(db, sys, &mv, inv.deadline, conns).await {
            Ok(ctx) => ctx,
            Err(e) => {
                warn!(move_id = %id, error = %e, "could not read the move's tenant or servers; later");
                return send_again(sys, queue_url, id, later()).await;
            }
        };
        let step = mv.step;
        let undoing = mv.cancel_requested && !step.switched();
        let began = Instant::now();
        let result = if undoing {
            steps::undo(&ctx).await
        } else {
            steps::run(&ctx, step).await
        };
        info!(move_id = %id, step = step.as_str(), undoing, ok = result.is_ok(),
            step_ms = crate::invocation::millis(began.elapsed()), "move step ran");
        let recorded = match (result, undoing) {
            (Ok(()), true) => {
                let state = if mv.error.is_some() {
                    MoveState::Failed
                } else {
                    MoveState::Cancelled
                };
                info!(move_id = %id, state = state.as_str(), "move undone: the tenant serves where it was");
                record::end(sys, id, state, None).await
            }
            (Ok(()), false) => match step {
                // The switch records its next step in its own transaction.
                Step::Switch => Ok(()),
                Step::Finish => {
                    info!(move_id = %id, to = %mv.to, "tenant moved");
                    record::end(sys, id, MoveState::Done, None).await
                }
                _ => match step.next(mv.mode) {
                    Some(next) => record::advance(sys, id, step, next).await.map(|_| ()),
                    None => Ok(()),
                },
            },
            (Err(StepError::Retry(_)), false) if cancelled_meanwhile(sys, id).await => {
                // The undo runs now, in this delivery.
                continue;
            }
            (Err(StepError::Retry(e)), _) => {
                let stale = chrono::Utc::now() - mv.updated_at > PATIENCE;
                if stale && !step.switched() && !undoing {
                    give_up(
                        sys,
                        id,
                        "a server stayed unreachable or busy; the move was undone",
                    )
                    .await
                } else {
                    warn!(move_id = %id, step = step.as_str(), error = %error_chain(&e), "a move step must wait; later");
                    return send_again(sys, queue_url, id, later()).await;
                }
            }
            (Err(StepError::Fail(reason)), false) if !step.switched() => {
                warn!(move_id = %id, step = step.as_str(), %reason, "the move failed; undoing it");
                give_up(sys, id, &reason).await
            }
            (Err(StepError::Fail(reason)), _) => {
                error!(move_id = %id, step = step.as_str(), %reason,
                    "a move step cannot finish; it is tried again later");
                return send_again(sys, queue_url, id, Duration::from_secs(60)).await;
            }
        };
        if let Err(e) = recorded {
            warn!(move_id = %id, error = %e, "could not record the move's step; its message comes back");
            return Delivered::Retry;
        }
    }
}

/// True when a cancel came while the step ran (a long wait stops for it).
async fn cancelled_meanwhile(sys: &Conn, id: Uuid) -> bool {
    matches!(record::load(sys, id).await, Ok(Some(mv)) if mv.cancel_requested && !mv.step.switched())
}

/// Marks the move to be undone, with the reason it failed.
async fn give_up(sys: &Conn, id: Uuid, reason: &str) -> Result<(), DbError> {
    sys.execute(
        "UPDATE moves SET cancel_requested = true, error = $2, updated_at = now() \
         WHERE id = $1 AND state = 'running'",
        &[&id, &reason],
    )
    .await
    .map(|_| ())
}

async fn context<'a>(
    db: &'a Database,
    sys: &'a Conn,
    mv: &'a Move,
    until: Instant,
    conns: &'a TenantConns,
) -> Result<Ctx<'a>, DbError> {
    let row = sys
        .query_one(
            "SELECT id, slug, database_name, role_name, secret_name, credentials_secret_arn, \
               status, server FROM tenants WHERE id = $1",
            &[&mv.tenant_id],
        )
        .await?;
    let status: String = row.try_get("status")?;
    Ok(Ctx {
        db,
        sys,
        mv,
        access: Access::from_row(&row, &db.config().tenants.secret_prefix)?,
        secret_arn: row.try_get("credentials_secret_arn")?,
        status: TenantStatus::parse(&status).unwrap_or(TenantStatus::Provisioning),
        server: row.try_get("server")?,
        source: db.server(sys, &mv.from).await?,
        target: db.server(sys, &mv.to).await?,
        until,
        conns,
    })
}
