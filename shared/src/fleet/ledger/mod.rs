//! The run ledger: every migrate-all run (its options, the migrations it brings tenants to,
//! its status and counts) and each tenant's outcome in it, written as the work happens, so
//! that a run cut short or killed keeps what it did, and read through `GET /api/runs`.
//!
//! - A run's row is written when it takes the fleet lock (`running`), its tenants' rows when
//!   they are listed (`pending`), each tenant's outcome as it finishes, and the run's status
//!   and counts at the end: `completed` (nothing failed), `failed` (a tenant, the template, a
//!   reconcile or lifecycle task failed), `incomplete` (the invocation's deadline came first;
//!   the tenants not started are `not_started`).
//! - A run killed outright stays `running`; the next run, which holds the fleet lock and so
//!   knows no other run is alive, marks it `failed` ("interrupted"), and its tenants still
//!   `pending` `not_started`.
//! - Dry runs change nothing, the ledger included: they are not recorded.
//! - A ledger write that fails is logged and the run goes on (the tenants' own records in
//!   `tenants` stay the truth of where each database is).

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

use serde_json::Value;
use tracing::warn;
use uuid::Uuid;

use crate::{
    database::Database,
    fleet::TenantReport,
    pg::{Conn, DbError},
    tenant::registry::Cursor,
};

/// The statuses of a tenant in a run.
pub const TENANT_STATUSES: [&str; 8] = [
    "pending",
    "migrated",
    "up_to_date",
    "failed",
    "deferred",
    "skipped",
    "not_started",
    "halted",
];

/// A run's counts, per tenant status, from its tenants' rows (`r` is the run).
const COUNTS_SQL: &str = "(SELECT jsonb_build_object(\
    'migrated', count(*) FILTER (WHERE t.status = 'migrated'), \
    'up_to_date', count(*) FILTER (WHERE t.status = 'up_to_date'), \
    'pending', count(*) FILTER (WHERE t.status = 'pending'), \
    'failed', count(*) FILTER (WHERE t.status = 'failed'), \
    'deferred', count(*) FILTER (WHERE t.status = 'deferred'), \
    'skipped', count(*) FILTER (WHERE t.status = 'skipped'), \
    'not_started', count(*) FILTER (WHERE t.status = 'not_started'), \
    'halted', count(*) FILTER (WHERE t.status = 'halted')) \
    FROM run_tenants t WHERE t.run_id = r.id)";

/// The statement that closes the running runs (`r`) meeting `condition` whose tenants all have
/// their outcome, as their last worker does: `failed` if a tenant failed or their planning did
/// (`error`), else `incomplete` if a tenant was deferred or not started, else `completed`;
/// with their counts.
fn close_by_outcomes(condition: &str) -> String {
    format!(
        "UPDATE runs r SET status = CASE WHEN r.error IS NOT NULL OR EXISTS \
           (SELECT 1 FROM run_tenants WHERE run_id = r.id AND status = 'failed') \
           THEN 'failed' WHEN EXISTS (SELECT 1 FROM run_tenants WHERE run_id = r.id \
             AND status IN ('deferred', 'not_started')) \
           THEN 'incomplete' ELSE 'completed' END, \
           counts = {COUNTS_SQL}, finished_at = now(), updated_at = now() \
         WHERE r.status = 'running' AND NOT EXISTS \
           (SELECT 1 FROM run_tenants WHERE run_id = r.id AND status = 'pending') \
           AND {condition}"
    )
}

/// Closes the runs that can no longer progress (the caller holds the fleet lock), with their
/// counts:
/// - an inline run still `running` belonged to an invocation that died (it held the fleet
///   lock until its end): `failed` ("interrupted");
/// - a queued run without progress for `stall` whose tenants all have their outcome (its last
///   worker died before closing it): closed by its outcomes, as that worker would have;
/// - any other queued run without progress for `stall`: `failed` ("stalled").
///
/// Tenants still `pending` become `not_started`. Returns the queued run still alive, if any.
async fn close_dead(sys: &Conn, stall: Duration) -> Result<Option<Uuid>, DbError> {
    let stall_secs = stall.as_secs_f64();
    sys.long()
        .execute(
            &close_by_outcomes(
                "r.mode = 'queue' AND r.updated_at < now() - make_interval(secs => $1)",
            ),
            &[&stall_secs],
        )
        .await?;
    let dead: Vec<Uuid> = sys
        .long()
        .query(
            "WITH dead AS ( \
               UPDATE runs SET status = 'failed', finished_at = now(), updated_at = now(), \
                 error = CASE mode WHEN 'inline' \
                   THEN 'interrupted: the invocation ended before the run did' \
                   ELSE 'stalled: no progress for RUN_STALL_SECS; retry_run queues its tenants again' END \
               WHERE status = 'running' AND (mode = 'inline' \
                 OR updated_at < now() - make_interval(secs => $1)) \
               RETURNING id), \
             t AS (UPDATE run_tenants SET status = 'not_started' \
               WHERE status = 'pending' AND run_id IN (SELECT id FROM dead)) \
             SELECT id FROM dead",
            &[&stall_secs],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    if !dead.is_empty() {
        sys.long()
            .execute(
                &format!("UPDATE runs r SET counts = {COUNTS_SQL} WHERE r.id = ANY($1)"),
                &[&dead],
            )
            .await?;
    }
    let alive = sys
        .query_opt(
            "SELECT id FROM runs WHERE status = 'running' ORDER BY started_at DESC LIMIT 1",
            &[],
        )
        .await?;
    Ok(match alive {
        Some(row) => Some(row.try_get(0)?),
        None => None,
    })
}

/// Opens a run: forgets the runs older than `keep_days`, closes the runs that cannot progress
/// (see [`close_dead`]), then records this one, `inline` until [`plan`] says otherwise.
/// `Ok(Err(id))`: a queued run is still at work; this one is not recorded.
pub(crate) async fn open(
    sys: &Conn,
    run: &NewRun<'_>,
    keep_days: i32,
    stall: Duration,
) -> Result<Result<(), Uuid>, DbError> {
    // Forgetting is best effort: a prune that fails or runs long is retried by the next run.
    if let Err(e) = sys
        .long()
        .execute(
            "DELETE FROM runs WHERE started_at < now() - make_interval(days => $1) \
             AND status <> 'running'",
            &[&keep_days],
        )
        .await
    {
        warn!(error = %e, "could not forget old runs; the next run tries again");
    }
    if let Some(alive) = close_dead(sys, stall).await? {
        return Ok(Err(alive));
    }
    sys.execute(
        "INSERT INTO runs (id, status, options, fingerprint, latest_version) \
         VALUES ($1, 'running', $2, $3, $4)",
        &[&run.id, run.options, &run.fingerprint, &run.latest_version],
    )
    .await?;
    Ok(Ok(()))
}

/// Records a run that did nothing because another was at work (`alive`, when known):
/// `skipped`, with why. Best effort (logged): the answer and the log say it too.
pub(crate) async fn record_skipped(sys: &Conn, run: &NewRun<'_>, alive: Option<Uuid>) {
    let why = match alive {
        Some(id) => format!("skipped: run {id} was still at work; this one did nothing"),
        None => "skipped: another run was still at work; this one did nothing".to_owned(),
    };
    if let Err(e) = sys
        .execute(
            "INSERT INTO runs (id, status, options, fingerprint, latest_version, error, \
               finished_at) VALUES ($1, 'skipped', $2, $3, $4, $5, now())",
            &[
                &run.id,
                run.options,
                &run.fingerprint,
                &run.latest_version,
                &why,
            ],
        )
        .await
    {
        warn!(run_id = %run.id, error = %e, "could not record the skipped run in the run ledger");
    }
}

/// The queued run at work, if any.
pub(crate) async fn alive(sys: &Conn) -> Result<Option<Uuid>, DbError> {
    let row = sys
        .query_opt(
            "SELECT id FROM runs WHERE status = 'running' ORDER BY started_at DESC LIMIT 1",
            &[],
        )
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get(0)?),
        None => None,
    })
}

/// A run about to be recorded.
pub(crate) struct NewRun<'a> {
    pub id: Uuid,
    pub options: &'a Value,
    pub fingerprint: &'a str,
    pub latest_version: i64,
}

/// What `{"retry_run": id}` found.
pub(crate) enum Reopened {
    /// Its failed, deferred, halted, not started and pending tenants, `pending` again, and the
    /// run's new attempt.
    Tenants(i64, Vec<String>),
    /// The run completed, or has no tenant to retry: nothing was changed.
    Nothing(String),
    /// No such run (or forgotten).
    NoSuchRun,
    /// Another queued run is at work (its id).
    Busy(Uuid),
}

/// Reopens a run for `retry_run` (the caller holds the fleet lock): its tenants that did not
/// end well (`failed`, `deferred`, `halted`, `not_started`, and `pending` ones, whose messages
/// may be lost) are `pending` again, in the last wave, and the run is `running` again in a new
/// attempt: the messages of earlier attempts, still queued or at work, change nothing more.
pub(crate) async fn reopen(sys: &Conn, id: Uuid, stall: Duration) -> Result<Reopened, DbError> {
    if let Some(alive) = close_dead(sys, stall).await? {
        if alive != id {
            return Ok(Reopened::Busy(alive));
        }
    }
    let Some(row) = sys
        .query_opt(
            "SELECT status, EXISTS (SELECT 1 FROM run_tenants WHERE run_id = $1 \
               AND status IN ('failed', 'deferred', 'halted', 'not_started', 'pending')) AS open \
             FROM runs WHERE id = $1",
            &[&id],
        )
        .await?
    else {
        return Ok(Reopened::NoSuchRun);
    };
    let status: String = row.try_get("status")?;
    if status == "completed" || !row.try_get::<_, bool>("open")? {
        return Ok(Reopened::Nothing(status));
    }
    let tx = sys.begin().await?;
    let attempt: i64 = tx
        .query_one(
            "UPDATE runs SET status = 'running', mode = 'inline', wave = 1, error = NULL, \
               finished_at = NULL, rest_sent = false, attempt = attempt + 1, updated_at = now() \
             WHERE id = $1 RETURNING attempt",
            &[&id],
        )
        .await?
        .try_get(0)?;
    let rows = tx
        .query(
            "UPDATE run_tenants SET status = 'pending', error = NULL, finished_at = NULL, \
               duration_ms = NULL, wave = 1 \
             WHERE run_id = $1 \
               AND status IN ('failed', 'deferred', 'halted', 'not_started', 'pending') \
             RETURNING slug",
            &[&id],
        )
        .await?;
    tx.commit().await?;
    let slugs = rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<Vec<String>, _>>()?;
    Ok(Reopened::Tenants(attempt, slugs))
}

/// A tenant as a run plans it: its server, and its wave (`None`: decided at planning).
pub(crate) struct Planned<'a> {
    pub slug: &'a str,
    pub server: Option<&'a str>,
    pub wave: Option<i64>,
}

/// Records the run's tenants, `pending`, in one statement (a tenant reopened by `retry_run`
/// keeps its row, in its new wave), the run's brake and its canary wave's size.
pub(crate) async fn plan(
    sys: &Conn,
    run_id: Uuid,
    tenants: &[Planned<'_>],
    max_failures: Option<i64>,
    canary: i64,
) -> Result<(), DbError> {
    sys.execute(
        "UPDATE runs SET max_failures = $2, canary = $3, updated_at = now() WHERE id = $1",
        &[&run_id, &max_failures, &canary],
    )
    .await?;
    let slugs: Vec<&str> = tenants.iter().map(|t| t.slug).collect();
    let servers: Vec<Option<&str>> = tenants.iter().map(|t| t.server).collect();
    let waves: Vec<Option<i64>> = tenants.iter().map(|t| t.wave).collect();
    sys.long()
        .execute(
            "INSERT INTO run_tenants (run_id, slug, server, status, wave) \
             SELECT $1, slug, server, 'pending', wave \
             FROM unnest($2::text[], $3::text[], $4::bigint[]) AS t(slug, server, wave) \
             ON CONFLICT (run_id, slug) DO UPDATE SET server = excluded.server, \
               wave = excluded.wave WHERE run_tenants.status = 'pending'",
            &[&run_id, &slugs, &servers, &waves],
        )
        .await?;
    Ok(())
}

/// Closes a run that could not be handed to the queue: `failed`, with `why`, and its tenants
/// still pending `not_started` (a message that did go out finds the run closed and does
/// nothing). Best effort: a run left `running` stalls, and the next run closes it.
pub(crate) async fn abandon(sys: &Conn, run_id: Uuid, why: &str) {
    let closed = sys
        .long()
        .execute(
            "WITH r AS (UPDATE runs SET status = 'failed', error = $2, finished_at = now(), \
               updated_at = now() WHERE id = $1 AND status = 'running' RETURNING id) \
             UPDATE run_tenants SET status = 'not_started' \
             WHERE run_id IN (SELECT id FROM r) AND status = 'pending'",
            &[&run_id, &why],
        )
        .await;
    let counted = sys
        .execute(
            &format!("UPDATE runs r SET counts = {COUNTS_SQL} WHERE r.id = $1"),
            &[&run_id],
        )
        .await;
    if let Err(e) = closed.and(counted) {
        warn!(%run_id, error = %e, "could not close the run in the run ledger");
    }
}

/// Hands the run to the queue: from here its workers record its tenants and close it. Its
/// first wave released is `wave` (0: the canary only).
pub(crate) async fn queue(sys: &Conn, run_id: Uuid, wave: i64) -> Result<(), DbError> {
    sys.execute(
        "UPDATE runs SET mode = 'queue', wave = $2, updated_at = now() WHERE id = $1",
        &[&run_id, &wave],
    )
    .await?;
    Ok(())
}

/// Records one tenant's outcome as soon as it is known. False (logged, not fatal) when it
/// could not be written.
pub(crate) async fn record(sys: &Conn, run_id: Uuid, t: &TenantReport) -> bool {
    record_all(sys, run_id, std::slice::from_ref(t)).await
}

/// Records the outcomes of tenants, in one statement (a tenant the run did not plan, such as
/// a named slug that is not active, gets its row here). False (logged, not fatal) when they
/// could not be written.
pub(crate) async fn record_all(sys: &Conn, run_id: Uuid, tenants: &[TenantReport]) -> bool {
    if tenants.is_empty() {
        return true;
    }
    let slugs: Vec<&str> = tenants.iter().map(|t| t.slug.as_str()).collect();
    let servers: Vec<Option<&str>> = tenants.iter().map(|t| t.server.as_deref()).collect();
    let statuses: Vec<&str> = tenants.iter().map(|t| t.status.as_str()).collect();
    let from: Vec<Option<i64>> = tenants.iter().map(|t| t.from_version).collect();
    let to: Vec<Option<i64>> = tenants.iter().map(|t| t.to_version).collect();
    let errors: Vec<Option<&str>> = tenants.iter().map(|t| t.error.as_deref()).collect();
    let durations: Vec<i64> = tenants
        .iter()
        .map(|t| i64::try_from(t.duration_ms).unwrap_or(i64::MAX))
        .collect();
    if let Err(e) = sys
        .long()
        .execute(
            "INSERT INTO run_tenants (run_id, slug, server, status, from_version, to_version, \
               error, duration_ms, finished_at) \
             SELECT $1, t.* , now() FROM unnest($2::text[], $3::text[], $4::text[], \
               $5::bigint[], $6::bigint[], $7::text[], $8::bigint[]) AS t \
             ON CONFLICT (run_id, slug) DO UPDATE SET server = excluded.server, \
               status = excluded.status, from_version = excluded.from_version, \
               to_version = excluded.to_version, error = excluded.error, \
               duration_ms = excluded.duration_ms, finished_at = excluded.finished_at",
            &[
                &run_id, &slugs, &servers, &statuses, &from, &to, &errors, &durations,
            ],
        )
        .await
    {
        warn!(%run_id, tenants = tenants.len(), error = %e, "could not record outcomes in the run ledger");
        return false;
    }
    true
}

/// Closes the run with its status, and its counts from its tenants' rows (a retried run's
/// count every tenant, not only those of the retry).
pub(crate) async fn close(sys: &Conn, run_id: Uuid, status: &str, error: Option<&str>) {
    if let Err(e) = sys
        .long()
        .execute(
            &format!(
                "UPDATE runs r SET status = $2, counts = {COUNTS_SQL}, error = $3, \
                   finished_at = now(), updated_at = now() WHERE r.id = $1"
            ),
            &[&run_id, &status, &error],
        )
        .await
    {
        warn!(%run_id, error = %e, "could not close the run in the run ledger");
    }
}

/// Notes what failed while a queued run was planned (a template, a reconcile): its last
/// worker closes it `failed`.
pub(crate) async fn note_error(sys: &Conn, run_id: Uuid, error: &str) {
    if let Err(e) = sys
        .execute(
            "UPDATE runs SET error = $2 WHERE id = $1 AND status = 'running'",
            &[&run_id, &error],
        )
        .await
    {
        warn!(%run_id, error = %e, "could not note the run's error in the run ledger");
    }
}

// ---------------------------------------------------------------------------------------------
// A queued run's workers
// ---------------------------------------------------------------------------------------------

/// What a worker needs to know of its message's run and tenant. `None`: no such run (it was
/// forgotten) or no such tenant in it.
pub(crate) struct Assignment {
    /// The run's status: only a `running` run's tenants are migrated...
    pub run_status: String,
    /// ... a queued one's...
    pub mode: String,
    /// ... in the attempt the message was sent for.
    pub attempt: i64,
    pub options: Value,
    /// The tenant's status in the run: only a `pending` tenant is migrated...
    pub status: String,
    pub wave: Option<i64>,
    /// ... and none once the brake is passed (the run halts at the next `next`).
    pub failed: i64,
    pub max_failures: Option<i64>,
}

impl Assignment {
    /// Whether a message of `attempt` is to migrate this tenant now.
    pub fn is_work(&self, attempt: i64) -> bool {
        self.run_status == "running"
            && self.mode == "queue"
            && self.attempt == attempt
            && self.status == "pending"
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
    Ok(Some(Assignment {
        run_status: row.try_get("run_status")?,
        mode: row.try_get("mode")?,
        attempt: row.try_get("attempt")?,
        options: row.try_get("options")?,
        status: row.try_get("status")?,
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
    Closed(String),
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
        Some(row) => Next::Closed(row.try_get(0)?),
        None => Next::Continue,
    })
}

/// Where the canary wave stands, decided under the run's row lock.
#[derive(Debug)]
enum CanaryStep {
    /// Still open: tenants of it pending; these were moved into it now (to send).
    Open(Vec<String>),
    /// Over, with this many failures: the run halts.
    Failed(i64),
    /// Over and passed: the run moved to wave 1 here; the rest, to send.
    Released(Vec<String>),
    /// The run is past its canary wave (or closed, or of another attempt).
    Over,
}

/// The canary wave, under the run's row lock (every worker's step is one transaction, so two
/// workers finishing together see each other's outcomes and promotions):
/// 1. each deferred tenant of the wave without a replacement gets one, a pending tenant of the
///    rest moved into the wave (`promoted_for` it, `promoted_by` the caller's tenant, whose
///    worker sends its message), while the rest has any;
/// 2. a tenant of the wave still pending: open;
/// 3. else a failure in it halts the run, or the run moves to wave 1 and the rest goes out.
async fn canary_step(
    sys: &Conn,
    run_id: Uuid,
    attempt: i64,
    me: &str,
) -> Result<CanaryStep, DbError> {
    let tx = sys.begin().await?;
    let step = async {
        let locked = tx
            .locking()
            .query_opt(
                "SELECT 1 FROM runs WHERE id = $1 AND attempt = $2 AND status = 'running' \
                   AND wave = 0 FOR UPDATE",
                &[&run_id, &attempt],
            )
            .await?;
        if locked.is_none() {
            return Ok(CanaryStep::Over);
        }
        let unreplaced: Vec<String> = tx
            .query(
                "SELECT d.slug FROM run_tenants d WHERE d.run_id = $1 AND d.wave = 0 \
                   AND d.status = 'deferred' AND NOT EXISTS (SELECT 1 FROM run_tenants r \
                     WHERE r.run_id = $1 AND r.promoted_for = d.slug) ORDER BY d.slug",
                &[&run_id],
            )
            .await?
            .iter()
            .map(|r| r.try_get("slug"))
            .collect::<Result<_, _>>()?;
        let mut promoted = Vec::new();
        if !unreplaced.is_empty() {
            let candidates: Vec<String> = tx
                .query(
                    "SELECT slug FROM run_tenants WHERE run_id = $1 AND wave = 1 \
                       AND status = 'pending' ORDER BY slug LIMIT $2",
                    &[&run_id, &(unreplaced.len() as i64)],
                )
                .await?
                .iter()
                .map(|r| r.try_get("slug"))
                .collect::<Result<_, _>>()?;
            for (replaced, slug) in unreplaced.iter().zip(candidates) {
                tx.execute(
                    "UPDATE run_tenants SET wave = 0, promoted_for = $3, promoted_by = $4 \
                     WHERE run_id = $1 AND slug = $2",
                    &[&run_id, &slug, replaced, &me],
                )
                .await?;
                promoted.push(slug);
            }
        }
        let row = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM run_tenants WHERE run_id = $1 AND wave = 0 \
                   AND status = 'pending') AS pending, \
                 (SELECT count(*) FROM run_tenants WHERE run_id = $1 AND wave = 0 \
                   AND status = 'failed') AS failed",
                &[&run_id],
            )
            .await?;
        if row.try_get::<_, bool>("pending")? {
            return Ok(CanaryStep::Open(promoted));
        }
        let failed: i64 = row.try_get("failed")?;
        if failed > 0 {
            return Ok(CanaryStep::Failed(failed));
        }
        tx.execute(
            "UPDATE runs SET wave = 1, updated_at = now() WHERE id = $1",
            &[&run_id],
        )
        .await?;
        let rest = tx
            .query(
                "SELECT slug FROM run_tenants WHERE run_id = $1 AND wave = 1 \
                   AND status = 'pending' ORDER BY slug",
                &[&run_id],
            )
            .await?
            .iter()
            .map(|r| r.try_get("slug"))
            .collect::<Result<_, _>>()?;
        Ok::<_, DbError>(CanaryStep::Released(rest))
    }
    .await;
    match step {
        Ok(step) => {
            tx.commit().await?;
            Ok(step)
        }
        Err(e) => {
            tx.rollback().await;
            Err(e)
        }
    }
}

/// The run's tenants still pending that the worker of `slug` moved into the canary wave.
async fn promoted_by(sys: &Conn, run_id: Uuid, slug: &str) -> Result<Vec<String>, DbError> {
    let rows = sys
        .query(
            "SELECT slug FROM run_tenants WHERE run_id = $1 AND promoted_by = $2 \
               AND status = 'pending' AND wave = 0 ORDER BY slug",
            &[&run_id, &slug],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<Vec<String>, _>>()?)
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

// ---------------------------------------------------------------------------------------------
// Reading it
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: Uuid,
    pub status: String,
    /// `inline` (in the migrate-all invocation) or `queue` (fanned out over SQS).
    pub mode: String,
    /// The last wave released: 0 while the canary wave runs, then 1.
    pub wave: i64,
    /// The canary wave's size (tenants really attempted: a deferred one is replaced).
    pub canary: i64,
    /// The brake: the run halts once more tenants than this have failed (`null`: never).
    pub max_failures: Option<i64>,
    pub options: Value,
    pub fingerprint: String,
    pub latest_version: i64,
    /// Per status; while `running`, counted from its tenants' rows.
    pub counts: Value,
    pub error: Option<String>,
    #[serde(serialize_with = "crate::domain::rfc3339")]
    pub started_at: DateTime<Utc>,
    /// The last progress.
    #[serde(serialize_with = "crate::domain::rfc3339")]
    pub updated_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::rfc3339_opt")]
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunTenant {
    pub slug: String,
    pub server: Option<String>,
    pub status: String,
    /// 0: the canary wave; 1: the rest; `null`: decided when the run was planned.
    pub wave: Option<i64>,
    pub from_version: Option<i64>,
    pub to_version: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: Option<i64>,
    #[serde(serialize_with = "crate::domain::rfc3339_opt")]
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunPage {
    pub runs: Vec<Run>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: Run,
    pub tenants: Vec<RunTenant>,
    pub next_cursor: Option<String>,
}

/// A position in a run's tenants (by slug): base64url of `t1:{slug}`.
pub fn encode_slug_cursor(slug: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("t1:{slug}"))
}

pub fn decode_slug_cursor(raw: &str) -> Option<String> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
    let slug = text.strip_prefix("t1:")?;
    crate::domain::Slug::parse(slug).ok().map(|s| s.to_string())
}

fn run_columns() -> String {
    format!(
        "r.id, r.status, r.mode, r.wave, r.canary, r.max_failures, r.options, r.fingerprint, \
         r.latest_version, CASE WHEN r.status = 'running' THEN {COUNTS_SQL} ELSE r.counts END \
         AS counts, r.error, r.started_at, r.updated_at, r.finished_at"
    )
}

fn run_from_row(row: &tokio_postgres::Row) -> Result<Run, tokio_postgres::Error> {
    Ok(Run {
        id: row.try_get("id")?,
        status: row.try_get("status")?,
        mode: row.try_get("mode")?,
        wave: row.try_get("wave")?,
        canary: row.try_get("canary")?,
        max_failures: row.try_get("max_failures")?,
        options: row.try_get("options")?,
        fingerprint: row.try_get("fingerprint")?,
        latest_version: row.try_get("latest_version")?,
        counts: row.try_get("counts")?,
        error: row.try_get("error")?,
        started_at: row.try_get("started_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// The runs, newest first.
pub async fn list_runs(
    db: &Database,
    limit: i64,
    cursor: Option<&Cursor>,
) -> Result<RunPage, DbError> {
    let sys = db.system().await?;
    let fetch = limit + 1;
    let rows = match cursor {
        None => {
            sys.query(
                &format!(
                    "SELECT {} FROM runs r ORDER BY r.started_at DESC, r.id DESC LIMIT $1",
                    run_columns()
                ),
                &[&fetch],
            )
            .await?
        }
        Some(c) => {
            sys.query(
                &format!(
                    "SELECT {} FROM runs r WHERE (r.started_at, r.id) < ($1, $2) \
                     ORDER BY r.started_at DESC, r.id DESC LIMIT $3",
                    run_columns()
                ),
                &[&c.created_at, &c.id, &fetch],
            )
            .await?
        }
    };
    let mut runs = rows
        .iter()
        .map(run_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if runs.len() as i64 > limit {
        runs.truncate(limit as usize);
        runs.last().map(|r| {
            Cursor {
                created_at: r.started_at,
                id: r.id,
            }
            .encode()
        })
    } else {
        None
    };
    Ok(RunPage { runs, next_cursor })
}

/// One run and a page of its tenants (by slug), optionally of one status. `None`: no such run.
pub async fn get_run(
    db: &Database,
    id: Uuid,
    status: Option<&str>,
    limit: i64,
    after: Option<&str>,
) -> Result<Option<RunDetail>, DbError> {
    let sys = db.system().await?;
    let Some(row) = sys
        .query_opt(
            &format!("SELECT {} FROM runs r WHERE r.id = $1", run_columns()),
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let run = run_from_row(&row)?;
    let fetch = limit + 1;
    let rows = sys
        .query(
            "SELECT slug, server, status, wave, from_version, to_version, error, duration_ms, \
                    finished_at \
             FROM run_tenants WHERE run_id = $1 AND ($2::text IS NULL OR status = $2) \
               AND ($3::text IS NULL OR slug > $3) \
             ORDER BY slug LIMIT $4",
            &[&id, &status, &after, &fetch],
        )
        .await?;
    let mut tenants = rows
        .iter()
        .map(|r| {
            Ok(RunTenant {
                slug: r.try_get("slug")?,
                server: r.try_get("server")?,
                status: r.try_get("status")?,
                wave: r.try_get("wave")?,
                from_version: r.try_get("from_version")?,
                to_version: r.try_get("to_version")?,
                error: r.try_get("error")?,
                duration_ms: r.try_get("duration_ms")?,
                finished_at: r.try_get("finished_at")?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    let next_cursor = if tenants.len() as i64 > limit {
        tenants.truncate(limit as usize);
        tenants.last().map(|t| encode_slug_cursor(&t.slug))
    } else {
        None
    };
    Ok(Some(RunDetail {
        run,
        tenants,
        next_cursor,
    }))
}
