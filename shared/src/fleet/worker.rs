//! `migrate-tenant`: one tenant of a queued run per message (see `queue`), migrated by the
//! same code as an inline run (`one_tenant::migrate_tenant`), its outcome recorded in the run
//! ledger, and the run moved on (`ledger::next`: the brake, the canary, the end).
//!
//! SQS delivers at least once; every step is safe to repeat:
//! - a message whose tenant is no longer `pending` in its run (a duplicate, or one delivered
//!   after the run halted or closed) migrates nothing; it only moves its run on again, which
//!   finishes a step a killed worker left half done (releasing the rest after the canary);
//! - two copies at once: the tenant lock lets one work, the other is given back for later
//!   and then finds the tenant done;
//! - the outcome is written only over `pending` (or `halted`, for a tenant at work when its
//!   run halted): the first one recorded is the one the run keeps.
//!
//! The server's budget: a worker migrates a tenant only while it holds one of its server's
//! `migrate_concurrency` slots (advisory locks, see `Lock::Slot`). With none free, or the
//! tenant's lock taken, the message is sent again with a delay and this delivery succeeds,
//! so that waiting for room is never counted as a failure (nor moves the message towards the
//! dead-letter queue).
//!
//! Fault table (each step can die; what happens next):
//!
//! | killed | state left | what finishes it |
//! |---|---|---|
//! | before the tenant lock | message in flight | redelivered after the visibility timeout |
//! | mid-migration | tenant `pending`; refinery's transaction rolled back, or a concurrent index left invalid | redelivered; the migration resumes (an invalid index is rebuilt, see `migrate::runner`) |
//! | after the outcome, before `next` | outcome recorded | redelivered: not pending, so `next` only |
//! | after releasing the rest (the canary passed), before sending it | run at wave 1, the rest `pending`, no messages | the canary tenant's message, redelivered, sends the rest (again: duplicates are harmless) |
//! | before giving a busy message back | message in flight | redelivered |
//!
//! Outcomes say what happened. A tenant that was busy (its tables stayed locked through every
//! lock attempt), out of time (its migrations ran past `MIGRATE_TENANT_TIMEOUT_SECS`, and were
//! cancelled) or unreachable is recorded `deferred`, once: never counted by the canary or the
//! brake, taken by the next run or `retry_run`. A deferred canary tenant is replaced by the
//! next pending tenant of the run (`ledger::next`). An unreachable server gets two more
//! chances first (the message given back, a few seconds later, `tries` counting them), so a
//! blip costs no deferral. Only the registry failing the worker (it cannot record anything)
//! leaves the message to come back after its visibility timeout, and after five deliveries
//! the dead-letter queue and its alarm.

use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::{
    one_tenant::{self, Attempted},
    outcome::{TenantOutcome, TenantReport},
    plan::{self, Attempt, Plan},
    prepare,
};
use crate::{
    aws::queue::{self, TenantMessage},
    database::Database,
    domain::Slug,
    fleet::ledger::{self, Moved, Next, RunMode, RunState},
    invocation::{millis, Invocation},
    migrate::ExpectedHistory,
};

/// What becomes of a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Done with (migrated, recorded, given back for later, or nothing to do): delete it.
    Done,
    /// Not done: reported as a batch item failure, SQS delivers it again after its visibility
    /// timeout (and, after `maxReceiveCount` deliveries, moves it to the dead-letter queue).
    Retry,
}

/// How many times a message is given back because its tenant's server could not be reached,
/// before the tenant is recorded deferred.
const UNREACHABLE_TRIES: u32 = 2;

/// How long a message given back waits: a few seconds, spread so that the tenants given back
/// together do not all come back together.
fn later() -> Duration {
    Duration::from_millis(2000 + rand::random_range(0..3000))
}

/// Handles one message of the queue at `queue_url`.
pub async fn migrate_from_queue(
    db: &Database,
    inv: &Invocation,
    queue_url: &str,
    msg: TenantMessage,
) -> Delivery {
    if Slug::parse(&msg.slug).is_err() {
        error!(run_id = %msg.run_id, "a message names an invalid slug; left for the dead-letter queue");
        return Delivery::Retry;
    }
    let (run_id, slug, attempt) = (msg.run_id, msg.slug.as_str(), msg.attempt);
    let started = Instant::now();
    let sys = match db.system().await {
        Ok(sys) => sys,
        Err(e) => {
            warn!(%run_id, tenant.slug = %slug, error = %e, "registry unavailable; the message comes back");
            return Delivery::Retry;
        }
    };
    let assignment = match ledger::assignment(&sys, run_id, slug).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            info!(%run_id, tenant.slug = %slug, "no such tenant in the run (the run was forgotten); nothing to do");
            return Delivery::Done;
        }
        Err(e) => {
            warn!(%run_id, tenant.slug = %slug, error = %e, "could not read the run; the message comes back");
            return Delivery::Retry;
        }
    };
    if assignment.attempt != attempt || assignment.mode != Some(RunMode::Queue) {
        info!(%run_id, tenant.slug = %slug, attempt, run_attempt = assignment.attempt,
            "a message of an earlier attempt of the run (retry_run came since); nothing to do");
        return Delivery::Done;
    }
    if assignment.run_state != Some(RunState::Running) {
        info!(%run_id, tenant.slug = %slug, run_status = assignment.run_state.map_or("unknown", RunState::as_str),
            "the run is over; nothing to do");
        return Delivery::Done;
    }
    if !assignment.is_work(attempt) {
        // A duplicate, or the brake passed: only move the run on (a step a killed worker may
        // have left).
        info!(%run_id, tenant.slug = %slug, status = assignment.status.map_or("unknown", TenantOutcome::as_str),
            "the tenant is no longer to migrate in this run (a message delivered twice, or the \
             brake passed)");
        return move_on(&sys, queue_url, inv, &msg, assignment.wave, Moved::Again).await;
    }

    let config = db.config();
    let found = async {
        let tenants = plan::list(&sys, Some(&[slug.to_owned()])).await?;
        let servers = prepare::load(db, &sys).await?;
        Ok::<_, crate::pg::DbError>((tenants, servers))
    }
    .await;
    let (tenants, servers) = match found {
        Ok(found) => found,
        Err(e) => {
            warn!(%run_id, tenant.slug = %slug, error = %e, "could not read the registry; the message comes back");
            return Delivery::Retry;
        }
    };
    let server = tenants.first().and_then(|t| {
        servers
            .iter()
            .find(|s| t.server.as_deref() == Some(&s.name))
    });
    let migrating = Instant::now();
    let decided = match (tenants.first(), server) {
        (Some(t), Some(server)) => {
            let verify = assignment.options.get("verify") == Some(&serde_json::Value::Bool(true));
            let plan = Plan {
                ledger: Some(run_id),
                verify,
                give_back_when_busy: true,
                give_back_unreachable: msg.tries < UNREACHABLE_TRIES,
                attempt,
                ..Plan::within(config, inv)
            };
            let expected = ExpectedHistory::tenant();
            let attempt = Attempt {
                db,
                sys: &sys,
                server,
                tenant: t,
                plan: &plan,
                expected,
            };
            match one_tenant::migrate_tenant(&attempt).await {
                Attempted::Done(r) if r.status == TenantOutcome::NotStarted => {
                    // Too little time left in this invocation: later.
                    return give_back(queue_url, &msg, false).await;
                }
                Attempted::Done(_) => None,
                Attempted::GiveBack { unreachable } => {
                    return give_back(queue_url, &msg, unreachable).await
                }
                Attempted::NotPending => {
                    // Another copy recorded the tenant first, or the brake was passed
                    // meanwhile: only move the run on (it halts, if that is still to do).
                    info!(%run_id, tenant.slug = %slug,
                        "the tenant is no longer to migrate in this run; moving the run on");
                    return move_on(&sys, queue_url, inv, &msg, assignment.wave, Moved::Again)
                        .await;
                }
                Attempted::Unrecorded => {
                    warn!(%run_id, tenant.slug = %slug,
                        "the registry failed the worker; nothing recorded, the message comes back");
                    return Delivery::Retry;
                }
            }
        }
        (None, _) => Some(TenantReport {
            error: Some("not an active tenant (deleted since the run was planned)".into()),
            ..TenantReport::new(slug, TenantOutcome::Skipped)
        }),
        (Some(t), None) => Some(TenantReport {
            server: t.server.clone(),
            error: Some("the tenant's server is not registered".into()),
            ..TenantReport::new(slug, TenantOutcome::Failed)
        }),
    };
    let migrated = migrating.elapsed();
    let recording = Instant::now();
    // Decided without work: recorded here (a migrated one was, under its lock).
    if let Some(report) = decided {
        if let Err(e) = ledger::record_once(&sys, run_id, attempt, &report).await {
            warn!(%run_id, tenant.slug = %slug, error = %e,
                "could not record the outcome; the message comes back");
            return Delivery::Retry;
        }
    }
    let delivery = move_on(&sys, queue_url, inv, &msg, assignment.wave, Moved::Recorded).await;
    // Where a message's time goes in the worker (`make bench` reads these).
    info!(%run_id, tenant.slug = %slug,
        registry_ms = millis(migrating.duration_since(started)),
        migrate_ms = millis(migrated),
        ledger_ms = millis(recording.elapsed()),
        "a queued tenant handled");
    delivery
}

/// Sends the message again, for later (one more try counted when its tenant's server was
/// `unreachable`); this delivery is then done.
async fn give_back(queue_url: &str, msg: &TenantMessage, unreachable: bool) -> Delivery {
    let delay = later();
    let again = TenantMessage {
        tries: msg.tries + u32::from(unreachable),
        ..msg.clone()
    };
    let body = serde_json::to_string(&again).unwrap_or_default();
    match queue::send_later(queue_url, &body, delay).await {
        Ok(()) => {
            info!(run_id = %msg.run_id, tenant.slug = %msg.slug, delay_ms = delay.as_millis() as u64,
                "the server's budget is full or the tenant is busy; given back for later");
            Delivery::Done
        }
        Err(e) => {
            warn!(run_id = %msg.run_id, tenant.slug = %msg.slug, error = %e,
                "could not give the message back; it comes back after its visibility timeout");
            Delivery::Retry
        }
    }
}

/// What the alarm on queued runs looks for (the SAM template's metric filter): a queued run
/// that ended `failed` or `halted`.
pub const RUN_ENDED_BADLY: &str = "a queued run ended without success";

/// The `Runs` metric of a queued run its last worker closed (see `metrics`).
fn run_ended(state: RunState) {
    crate::metrics::emit(
        &[("Status", state.as_str())],
        &[("Runs", 1.0, crate::metrics::Unit::Count)],
    );
}

/// Moves the run on after an outcome (see `ledger::next`), sending the rest of the run when
/// this worker released it, or the tenants it put in the canary wave.
async fn move_on(
    sys: &crate::pg::Conn,
    queue_url: &str,
    inv: &Invocation,
    msg: &TenantMessage,
    wave: Option<i64>,
    moved: Moved,
) -> Delivery {
    let (run_id, attempt) = (msg.run_id, msg.attempt);
    let started = Instant::now();
    match ledger::next(sys, run_id, attempt, &msg.slug, wave, moved).await {
        Ok(Next::Continue) => Delivery::Done,
        Ok(Next::Closed(RunState::Completed)) => {
            info!(%run_id, "the run's last tenant is recorded; the run completed");
            run_ended(RunState::Completed);
            Delivery::Done
        }
        Ok(Next::Closed(state)) => {
            error!(%run_id, status = state.as_str(), "{RUN_ENDED_BADLY}: a tenant failed (see GET /api/runs/{{id}})");
            run_ended(state);
            Delivery::Done
        }
        Ok(Next::Halted(why)) => {
            error!(%run_id, status = RunState::Halted.as_str(), reason = %why, "{RUN_ENDED_BADLY}");
            run_ended(RunState::Halted);
            Delivery::Done
        }
        Ok(Next::Send(slugs)) => {
            match queue::send_tenants(queue_url, run_id, attempt, &slugs, inv.deadline).await {
                Ok(()) => {
                    info!(%run_id, tenants = ?slugs, "sent the canary wave's tenants (a deferred canary replaced)");
                    Delivery::Done
                }
                Err(e) => {
                    // This message's next delivery sends them again.
                    warn!(%run_id, error = %e, "could not queue the canary's tenants; the message comes back");
                    Delivery::Retry
                }
            }
        }
        Ok(Next::Release(slugs)) => {
            match queue::send_tenants(queue_url, run_id, attempt, &slugs, inv.deadline).await {
                Ok(()) => {
                    ledger::note_rest_sent(sys, run_id, attempt).await;
                    info!(%run_id, tenants = slugs.len(), duration_ms = started.elapsed().as_millis() as u64,
                        "the canary wave passed; the rest of the run is queued");
                    Delivery::Done
                }
                Err(e) => {
                    // This message's next delivery sends them again.
                    warn!(%run_id, error = %e, "could not queue the rest of the run; the message comes back");
                    Delivery::Retry
                }
            }
        }
        Err(e) => {
            warn!(%run_id, error = %e, "could not move the run on; the message comes back");
            Delivery::Retry
        }
    }
}
