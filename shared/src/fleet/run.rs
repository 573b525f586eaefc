//! One migrate-all invocation, step by step: the system migrations, the fleet lock and the
//! run ledger, the servers (templates, orphans), dead provisionings and lifecycle work, then
//! the tenants (see `rollout`), and the run closed in the ledger before the lock is given
//! back.

use std::{collections::HashSet, time::Instant};

use futures_util::future::join_all;
use serde_json::Value;
use tracing::info;
use uuid::Uuid;

use super::{
    ledger::{self, RunMode, RunState},
    outcome::Counts,
    plan::{self, Plan},
    prepare::{self, FleetServer},
    reconcile,
    report::{MigrateAllReport, RunStatus},
    request::{check_rollout, parse_slugs, MigrateAllError, MigrateAllRequest},
    rollout,
    run_steps::RunSteps,
    system, upkeep,
};
use crate::{
    config::{Config, MAX_MIGRATE_CONCURRENCY},
    database::Database,
    invocation::Invocation,
    migrate,
    pg::{
        locks::{self, Lock, LockGuard},
        Conn,
    },
    tenant::template,
};

/// The most tenant rows the invocation's answer (and its log line) carries: failures first.
/// The run ledger has them all (`GET /api/runs/{id}`).
pub const MAX_ANSWER_TENANTS: usize = 1000;

/// Runs migrate-all within the invocation's deadline.
pub async fn migrate_all(
    db: &Database,
    req: &MigrateAllRequest,
    inv: &Invocation,
) -> Result<MigrateAllReport, MigrateAllError> {
    let started = Instant::now();
    let config = db.config();
    let (plan, mut slugs) = settle(req, config, inv)?;
    let mut report = new_report(Uuid::new_v4(), req, plan.concurrency);
    info!(run_id = %report.run_id, dry_run = req.dry_run, concurrency = plan.concurrency,
        latest_version = report.latest_version,
        time_left_ms = inv.time_left().as_millis() as u64, "migrate-all started");

    // The system database first. A dry run only reports what is pending, and stops there when
    // something is: the registry of a later release cannot be read as this one reads it.
    let mut steps = RunSteps::default();
    let step = Instant::now();
    if !system::step(db, req, &mut report).await? {
        return Ok(finished(report, started));
    }
    // A dry run reads the registry as it is (it is current: see above) and changes nothing.
    let sys = if req.dry_run {
        db.system_as_is().await?
    } else {
        db.system().await?
    };
    steps.system = step.elapsed();
    let step = Instant::now();
    let (fleet_lock, plan) = match take_the_fleet(&sys, req, config, plan, &mut report).await? {
        Taken::Fleet(lock, plan, retried) => {
            slugs = retried.or(slugs);
            (lock, *plan)
        }
        Taken::Skipped => return Ok(finished(report, started)),
    };
    steps.fleet = step.elapsed();
    let mut went = RunMode::Inline;
    let result: Result<(), MigrateAllError> = async {
        let servers = before_tenants(
            db,
            &sys,
            req,
            slugs.as_deref(),
            &plan,
            &mut report,
            &mut steps,
        )
        .await?;
        let step = Instant::now();
        let tenants = plan::list(&sys, slugs.as_deref()).await?;
        steps.list = step.elapsed();
        let step = Instant::now();
        went = rollout::run(
            db,
            &sys,
            &servers,
            &tenants,
            slugs.as_deref(),
            &plan,
            &mut report,
        )
        .await;
        steps.tenants = step.elapsed();
        Ok(())
    }
    .await;
    report.registry_lost = !sys.is_usable();
    if (report.counts.not_started > 0 || report.counts.deferred > 0)
        && report.status == RunStatus::Completed
    {
        report.status = RunStatus::Incomplete;
    }
    // Closed before the fleet lock is given back: the next run never takes it for a dead one.
    // A queued run is closed by its last worker (or, if it could not be queued, already is).
    if let Some(run) = plan
        .ledger
        .filter(|_| went == RunMode::Inline || result.is_err())
    {
        let (state, error) = match &result {
            Err(e) => (RunState::Failed, Some(e.error_type().to_owned())),
            Ok(()) if report.status == RunStatus::Halted => {
                (RunState::Halted, report.error.clone())
            }
            Ok(()) => (
                report.ledger_state(),
                report.error_type().map(str::to_owned),
            ),
        };
        ledger::close(&sys, run, state, error.as_deref()).await;
    }
    if let Some(lock) = fleet_lock {
        lock.release().await;
    }
    result?;
    report.cap_tenants(MAX_ANSWER_TENANTS);
    let report = finished(report, started);
    steps.log(&report);
    Ok(report)
}

/// The request checked against the configuration, as a plan (no ledger, no waves yet) and
/// the slugs it names.
fn settle(
    req: &MigrateAllRequest,
    config: &Config,
    inv: &Invocation,
) -> Result<(Plan, Option<Vec<String>>), MigrateAllError> {
    let concurrency = req.concurrency.unwrap_or(config.migrate_concurrency);
    if !(1..=MAX_MIGRATE_CONCURRENCY).contains(&concurrency) {
        return Err(MigrateAllError::InvalidRequest(format!(
            "concurrency must be from 1 to {MAX_MIGRATE_CONCURRENCY}, got {concurrency}"
        )));
    }
    let slugs = parse_slugs(req.slugs.as_deref())?;
    check_rollout(req, config.migrate_queue_url.is_some())?;
    let plan = Plan {
        dry_run: req.dry_run,
        verify: req.verify,
        concurrency,
        ..Plan::within(config, inv)
    };
    Ok((plan, slugs))
}

fn new_report(run_id: Uuid, req: &MigrateAllRequest, concurrency: usize) -> MigrateAllReport {
    MigrateAllReport {
        run_id,
        status: RunStatus::Completed,
        mode: RunMode::Inline,
        canary: 0,
        max_failures: None,
        error: None,
        dry_run: req.dry_run,
        latest_version: migrate::latest_tenant_version(),
        concurrency,
        system: None,
        template: None,
        reconciled: Vec::new(),
        orphan_databases: Vec::new(),
        invalid_databases: Vec::new(),
        servers: Vec::new(),
        lifecycle: Vec::new(),
        counts: Counts::default(),
        tenants: Vec::new(),
        tenants_omitted: 0,
        duration_ms: 0,
        registry_lost: false,
    }
}

fn finished(mut report: MigrateAllReport, started: Instant) -> MigrateAllReport {
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}

/// What the run holds once it may work.
enum Taken<'c> {
    /// The fleet lock (`None` for a dry run, which needs none), the plan with its ledger run
    /// and waves, and the tenants of a retried run.
    Fleet(Option<LockGuard<'c>>, Box<Plan>, Option<Vec<String>>),
    /// Another run is at work: this one did nothing, and the report says so.
    Skipped,
}

/// One run per fleet: the fleet lock, then the run in the ledger (new, or the run to retry).
/// A dry run changes nothing, the ledger included, and needs no lock.
async fn take_the_fleet<'c>(
    sys: &'c Conn,
    req: &MigrateAllRequest,
    config: &Config,
    plan: Plan,
    report: &mut MigrateAllReport,
) -> Result<Taken<'c>, MigrateAllError> {
    let plan = Plan {
        waves: plan::Waves::of(req, config),
        ..plan
    };
    if req.dry_run {
        return Ok(Taken::Fleet(None, Box::new(plan), None));
    }
    let run_id = report.run_id;
    let Some(lock) = locks::try_acquire(sys, Lock::Fleet).await? else {
        let alive = ledger::alive(sys).await.unwrap_or(None);
        info!(%run_id, "another migrate-all run is in progress; this one stops here");
        skipped(sys, req, run_id, alive, report).await;
        return Ok(Taken::Skipped);
    };
    match open_run(sys, req, run_id, config).await {
        Ok(Opened::New) => Ok(Taken::Fleet(
            Some(lock),
            Box::new(Plan {
                ledger: Some(run_id),
                ..plan
            }),
            None,
        )),
        Ok(Opened::Retry(id, attempt, retried)) => {
            info!(run_id = %id, attempt, tenants = retried.len(), "retrying a run");
            report.run_id = id;
            Ok(Taken::Fleet(
                Some(lock),
                Box::new(Plan {
                    ledger: Some(id),
                    attempt,
                    ..plan
                }),
                Some(retried),
            ))
        }
        Ok(Opened::Busy(alive)) => {
            info!(%run_id, running = %alive, "a queued run is still at work; this one stops here");
            skipped(sys, req, run_id, Some(alive), report).await;
            lock.release().await;
            report.run_id = alive;
            Ok(Taken::Skipped)
        }
        Err(e) => {
            lock.release().await;
            Err(e)
        }
    }
}

/// Before the tenants: each server (reachable or not, its template, its orphans), dead
/// provisionings, lifecycle work. Afterwards the only connections the run opens on a server
/// are its tenants', and what failed so far is in the ledger.
async fn before_tenants(
    db: &Database,
    sys: &Conn,
    req: &MigrateAllRequest,
    slugs: Option<&[String]>,
    plan: &Plan,
    report: &mut MigrateAllReport,
    steps: &mut RunSteps,
) -> Result<Vec<FleetServer>, MigrateAllError> {
    let step = Instant::now();
    let mut servers = prepare::load(db, sys).await?;
    // Side by side: a server that is slow to answer (or down, until its connect timeout)
    // delays the others no more than its own tenants.
    let prepared = join_all(
        servers
            .iter_mut()
            .map(|server| prepare::prepare(db, sys, server, req.dry_run, plan.stop_at)),
    )
    .await;
    for prepared in prepared {
        report
            .orphan_databases
            .extend(prepared.orphan_databases.iter().cloned());
        report
            .invalid_databases
            .extend(prepared.invalid_databases.iter().cloned());
        report.servers.push(prepared);
    }
    let expected = template::expected(&db.config().system_db);
    report.template = Some(prepare::summarize_templates(&report.servers, &expected));
    let down: HashSet<&str> = servers
        .iter()
        .filter(|s| s.down.is_some())
        .map(|s| s.name.as_str())
        .collect();
    steps.servers = step.elapsed();
    let step = Instant::now();
    report.reconciled =
        reconcile::reconcile_expired(db, sys, &down, req.dry_run, plan.stop_at).await?;
    steps.reconcile = step.elapsed();
    let step = Instant::now();
    report.lifecycle = upkeep::run(db, sys, &servers, slugs, req.dry_run, plan.stop_at).await?;
    if !req.dry_run {
        super::gauges::after_lifecycle(db, sys, down.len()).await;
    }
    steps.lifecycle = step.elapsed();
    for server in &servers {
        server.handle.close_admin().await;
    }
    // What failed so far (a template, a reconcile, lifecycle work) is in the ledger before
    // any tenant is queued: the last worker then closes the run `failed`.
    if let (Some(run), Some(error)) = (plan.ledger, report.error_type()) {
        ledger::note_error(sys, run, error).await;
    }
    Ok(servers)
}

enum Opened {
    New,
    /// `retry_run`: the run, its new attempt, and its tenants to retry.
    Retry(Uuid, i64, Vec<String>),
    /// A queued run is still at work.
    Busy(Uuid),
}

/// Records the new run in the ledger, or reopens the run to retry.
async fn open_run(
    sys: &Conn,
    req: &MigrateAllRequest,
    run_id: Uuid,
    config: &Config,
) -> Result<Opened, MigrateAllError> {
    if let Some(id) = req.retry_run {
        return match ledger::reopen(sys, id, config.run_stall).await? {
            ledger::Reopened::Tenants(attempt, slugs) => Ok(Opened::Retry(id, attempt, slugs)),
            ledger::Reopened::Nothing(status) => Err(MigrateAllError::InvalidRequest(format!(
                "retry_run: run {id} is {status} and has no tenant to retry"
            ))),
            ledger::Reopened::Busy(alive) => Ok(Opened::Busy(alive)),
            ledger::Reopened::NoSuchRun => Err(MigrateAllError::InvalidRequest(format!(
                "retry_run: no run {id} in the run ledger"
            ))),
        };
    }
    let options = serde_json::to_value(req).unwrap_or(Value::Null);
    let expected = migrate::ExpectedHistory::tenant();
    let new = ledger::NewRun {
        id: run_id,
        options: &options,
        fingerprint: expected.fingerprint(),
        latest_version: expected.latest(),
    };
    Ok(
        match ledger::open(sys, &new, config.run_ledger_days, config.run_stall).await? {
            Ok(()) => Opened::New,
            Err(alive) => Opened::Busy(alive),
        },
    )
}

/// The run did nothing: another was at work (`alive`, when known). Recorded in the ledger
/// (`skipped`); a `verify` run says so as an error, so that the weekly check cannot vanish
/// unseen (the next `verify` is a week away).
async fn skipped(
    sys: &Conn,
    req: &MigrateAllRequest,
    run_id: Uuid,
    alive: Option<Uuid>,
    report: &mut MigrateAllReport,
) {
    report.status = RunStatus::AlreadyRunning;
    let options = serde_json::to_value(req).unwrap_or(Value::Null);
    let expected = migrate::ExpectedHistory::tenant();
    let run = ledger::NewRun {
        id: run_id,
        options: &options,
        fingerprint: expected.fingerprint(),
        latest_version: expected.latest(),
    };
    ledger::record_skipped(sys, &run, alive).await;
    if req.verify {
        report.error = Some(format!(
            "the verify run was skipped: {} was still at work; invoke migrate-all with \
             {{\"verify\": true}} once it has finished",
            alive.map_or_else(|| "another run".to_owned(), |id| format!("run {id}"))
        ));
    }
}
