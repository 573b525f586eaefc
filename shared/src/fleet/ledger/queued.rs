//! A queued run's workers: what a message's tenant is to its run, its outcome recorded once,
//! and the run moved on (the canary wave, the brake, the end).

use serde_json::Value;
use tracing::warn;
use uuid::Uuid;

use super::{
    canary::{canary_step, promoted_by, CanaryStep},
    state::{close_by_outcomes, RunMode, RunState, COUNTS_SQL},
};
use crate::{
    fleet::outcome::{TenantOutcome, TenantReport},
    pg::{Conn, DbError},
};

/// What a worker needs to know of its message's run and tenant. `None`: no such run (it was
/// forgotten) or no such tenant in it. A state, mode or status this release does not know
/// (a newer release's, during a deploy) is `None`: never work.
pub(crate) struct Assignment {
    /// The run's status: only a `running` run's tenants are migrated...
    pub run_state: Option<RunState>,
    /// ... a queued one's...
    pub mode: Option<RunMode>,
    /// ... in the attempt the message was sent for.
    pub attempt: i64,
    pub options: Value,
    /// The tenant's status in the run: only a `pending` tenant is migrated...
    pub status: Option<TenantOutcome>,
    pub wave: Option<i64>,
    /// ... and none once the brake is passed (the run halts at the next `next`).
    pub failed: i64,
    pub max_failures: Option<i64>,
}

impl Assignment {
    /// Whether a message of `attempt` is to migrate this tenant now.
    pub fn is_work(&self, attempt: i64) -> bool {
        self.run_state == Some(RunState::Running)
            && self.mode == Some(RunMode::Queue)
            && self.attempt == attempt
            && self.status == Some(TenantOutcome::Pending)
            && self.max_failures.is_none_or(|max| self.failed <= max)
    }
}

pub(crate) async fn assignment(
    sys: &Conn,
    run_id: Uuid,
    slug: &str,
) -> Result<Option<Assignment>, DbError> {
    let row = sys
        .query_opt(
            "SELECT r.status AS run_status, r.mode, r.attempt, r.options, t.status, t.wave, \
               r.max_failures, (SELECT count(*) FROM run_tenants f WHERE f.run_id = r.id \
                 AND f.status = 'failed' AND f.wave IS NOT NULL) AS failed \
             FROM runs r JOIN run_tenants t ON t.run_id = r.id \
             WHERE r.id = $1 AND t.slug = $2",
            &[&run_id, &slug],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let run_state: String = row.try_get("run_status")?;
    let mode: String = row.try_get("mode")?;
    let status: String = row.try_get("status")?;
    Ok(Some(Assignment {
        run_state: RunState::parse(&run_state),
        mode: RunMode::parse(&mode),
        attempt: row.try_get("attempt")?,
        options: row.try_get("options")?,
        status: TenantOutcome::parse(&status),
        wave: row.try_get("wave")?,
        failed: row.try_get("failed")?,
        max_failures: row.try_get("max_failures")?,
    }))
}

/// Records a worker's outcome for a tenant still `pending` (or `halted` while it worked), in
/// the attempt the worker's message was sent for: the first outcome recorded is the one the
/// run keeps, so that a message delivered twice records one, and a message of an earlier
/// attempt none. False when nothing was written.
pub(crate) async fn record_once(
    sys: &Conn,
    run_id: Uuid,
    attempt: i64,
    t: &TenantReport,
) -> Result<bool, DbError> {
    let duration = i64::try_from(t.duration_ms).unwrap_or(i64::MAX);
    let n = sys
        .execute(
            "UPDATE run_tenants t SET server = $4, status = $5, from_version = $6, \
               to_version = $7, error = $8, duration_ms = $9, finished_at = now() \
             FROM runs r WHERE r.id = t.run_id AND r.attempt = $3 \
               AND t.run_id = $1 AND t.slug = $2 AND t.status IN ('pending', 'halted')",
            &[
                &run_id,
                &t.slug,
                &attempt,
                &t.server,
                &t.status.as_str(),
                &t.from_version,
                &t.to_version,
                &t.error,
                &duration,
            ],
        )
        .await?;
    Ok(n == 1)
}

/// What a worker's message did before its run is moved on ([`next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Moved {
    /// Its tenant's outcome was recorded (deferred or not: in the canary wave, a deferred
    /// tenant is replaced whoever moves the run on next).
    Recorded,
    /// Its tenant had its outcome already (the message came twice, or came back after a
    /// worker died), or the run moved on.
    Again,
}

/// What a queued run does after a tenant's outcome is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Nothing: other tenants are still at work (or the message is of an earlier attempt).
    Continue,
    /// The worker sends these tenants' messages: in the canary wave now, in place of a deferred
    /// one (or again: a canary message delivered twice while the wave is open).
    Send(Vec<String>),
    /// This worker released the rest of the run: it sends these tenants' messages, then
    /// says so ([`note_rest_sent`]).
    Release(Vec<String>),
    /// The run halted (the canary wave failed, or the brake): its tenants still pending are
    /// `halted`.
    Halted(String),
    /// That was the last tenant: the run is closed, with this status.
    Closed(RunState),
}

/// After each recorded outcome of a queued run, in this order (each step a statement of its
/// own, after the outcome committed, so that of two workers finishing together the later one
/// sees both outcomes):
/// 1. the brake: more failures than `max_failures` halt the run;
/// 2. the canary (see [`canary_step`], under the run's row lock): a canary tenant deferred
///    (busy, out of time, unreachable: it says nothing of the migrations) is replaced by a
///    pending tenant of the rest, moved into the canary wave; once the wave has no tenant
///    pending, a failure in it halts the run, and otherwise exactly one worker (the one whose
///    step moves the run to wave 1) releases the rest;
/// 3. the end: with no tenant pending, the run is closed: `failed` if a tenant failed,
///    `incomplete` if one was deferred or not started, `completed` otherwise.
///
/// Only failures of tenants the run attempted count (not those decided at planning, such as
/// a tenant whose server is not registered); deferred ones never do. A message of an earlier
/// attempt moves nothing.
///
/// `Moved::Again`: the caller's tenant was already recorded (its message came twice). Its
/// message coming again while the canary wave is open sends again the tenants its worker moved
/// into the wave and are still pending (it may have died before sending them); a canary
/// tenant's message coming again after the rest was released, but before it was sent, sends
/// the rest (the worker that released it may have died first). A message sent twice is
/// harmless, and each is sent again only by its promoter's own message.
pub(crate) async fn next(
    sys: &Conn,
    run_id: Uuid,
    attempt: i64,
    slug: &str,
    wave: Option<i64>,
    moved: Moved,
) -> Result<Next, DbError> {
    let again = moved == Moved::Again;
    let row = sys
        .query_opt(
            "UPDATE runs SET updated_at = now() \
             WHERE id = $1 AND status = 'running' AND attempt = $2 \
             RETURNING wave, max_failures, rest_sent, \
               (SELECT count(*) FROM run_tenants WHERE run_id = $1 AND status = 'failed' \
                  AND wave IS NOT NULL) AS failed",
            &[&run_id, &attempt],
        )
        .await?;
    let Some(row) = row else {
        // Closed meanwhile (halted while this tenant worked): its counts take this outcome in.
        sys.execute(
            &format!(
                "UPDATE runs r SET counts = {COUNTS_SQL} \
                 WHERE r.id = $1 AND r.status <> 'running' AND r.attempt = $2"
            ),
            &[&run_id, &attempt],
        )
        .await?;
        return Ok(Next::Continue);
    };
    let run_wave: i64 = row.try_get("wave")?;
    let max_failures: Option<i64> = row.try_get("max_failures")?;
    let rest_sent: bool = row.try_get("rest_sent")?;
    let failed: i64 = row.try_get("failed")?;
    if let Some(max) = max_failures {
        if failed > max {
            let why = format!("halted: {failed} tenants failed, more than max_failures ({max})");
            return halt(sys, run_id, &why).await;
        }
    }
    if run_wave == 1 && wave == Some(0) && again && !rest_sent {
        let rest = pending_of_wave(sys, run_id, 1).await?;
        if !rest.is_empty() {
            return Ok(Next::Release(rest));
        }
    }
    if run_wave == 0 && wave == Some(0) {
        match canary_step(sys, run_id, attempt, slug).await? {
            CanaryStep::Open(mut send) => {
                // Again: what this tenant's worker moved into the wave before, whose messages
                // it may have died before sending (a message sent twice is harmless).
                if again {
                    for promoted in promoted_by(sys, run_id, slug).await? {
                        if !send.contains(&promoted) {
                            send.push(promoted);
                        }
                    }
                }
                return Ok(if send.is_empty() {
                    Next::Continue
                } else {
                    Next::Send(send)
                });
            }
            CanaryStep::Failed(n) => {
                let why = format!(
                    "halted: the canary wave failed ({n} tenants); the rest were not attempted"
                );
                return halt(sys, run_id, &why).await;
            }
            CanaryStep::Released(rest) if !rest.is_empty() => return Ok(Next::Release(rest)),
            CanaryStep::Released(_) | CanaryStep::Over => {}
        }
    }
    let closed = sys
        .query_opt(
            &format!(
                "{} RETURNING r.status",
                close_by_outcomes("r.id = $1 AND r.attempt = $2")
            ),
            &[&run_id, &attempt],
        )
        .await?;
    Ok(match closed {
        Some(row) => {
            let state: String = row.try_get(0)?;
            Next::Closed(RunState::parse(&state).ok_or_else(|| {
                DbError::Other(anyhow::anyhow!(
                    "the run ledger holds an unknown run state {state:?}"
                ))
            })?)
        }
        None => Next::Continue,
    })
}

/// Every tenant of the run's last wave was sent (by the planner, or by the worker that
/// released the rest after the canary wave). Best effort: while it is not recorded, a canary
/// message delivered again sends the rest again, which is harmless.
pub(crate) async fn note_rest_sent(sys: &Conn, run_id: Uuid, attempt: i64) {
    if let Err(e) = sys
        .execute(
            "UPDATE runs SET rest_sent = true WHERE id = $1 AND attempt = $2",
            &[&run_id, &attempt],
        )
        .await
    {
        warn!(%run_id, error = %e, "could not note that the rest of the run was sent");
    }
}

/// The run's tenants of `wave` still pending.
async fn pending_of_wave(sys: &Conn, run_id: Uuid, wave: i64) -> Result<Vec<String>, DbError> {
    let rows = sys
        .long()
        .query(
            "SELECT slug FROM run_tenants WHERE run_id = $1 AND wave = $2 AND status = 'pending' \
             ORDER BY slug",
            &[&run_id, &wave],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<Vec<String>, _>>()?)
}

/// Halts the run (once): it, and its tenants still pending, become `halted` together.
async fn halt(sys: &Conn, run_id: Uuid, why: &str) -> Result<Next, DbError> {
    let tx = sys.begin().await?;
    let halted = tx
        .execute(
            "UPDATE runs SET status = 'halted', error = $2, finished_at = now(), \
               updated_at = now() WHERE id = $1 AND status = 'running'",
            &[&run_id, &why],
        )
        .await?;
    if halted == 1 {
        tx.execute(
            "UPDATE run_tenants SET status = 'halted', error = 'not attempted: the run was halted' \
             WHERE run_id = $1 AND status = 'pending'",
            &[&run_id],
        )
        .await?;
        tx.execute(
            &format!("UPDATE runs r SET counts = {COUNTS_SQL} WHERE r.id = $1"),
            &[&run_id],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Next::Halted(why.to_owned()))
}
