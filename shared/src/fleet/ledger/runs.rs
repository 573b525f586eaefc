//! A run's own row: opened (new, skipped, or reopened for `retry_run`), the runs that died
//! closed by the next one, and a run closed with its state and counts.

use std::time::Duration;

use serde_json::Value;
use tracing::warn;
use uuid::Uuid;

use super::state::{close_by_outcomes, RunState, COUNTS_SQL};
use crate::pg::{Conn, DbError};

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
    // One transaction: each run's end and its counts commit together (its
    // `migrationRunFinished` event reads both at the commit).
    let tx = sys.begin().await?;
    let dead: Vec<Uuid> = tx
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
        tx.long()
            .execute(
                &format!("UPDATE runs r SET counts = {COUNTS_SQL} WHERE r.id = ANY($1)"),
                &[&dead],
            )
            .await?;
    }
    tx.commit().await?;
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

/// Closes the run with its status, and its counts from its tenants' rows (a retried run's
/// count every tenant, not only those of the retry).
pub(crate) async fn close(sys: &Conn, run_id: Uuid, state: RunState, error: Option<&str>) {
    if let Err(e) = sys
        .long()
        .execute(
            &format!(
                "UPDATE runs r SET status = $2, counts = {COUNTS_SQL}, error = $3, \
                   finished_at = now(), updated_at = now() WHERE r.id = $1"
            ),
            &[&run_id, &state.as_str(), &error],
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
