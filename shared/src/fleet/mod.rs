//! migrate-all: bring the system database and every active tenant database to the latest
//! migration, tenant by tenant, with bounded concurrency, and report what happened to each.
//!
//! Safety rules:
//! - one run per fleet (advisory lock; a second run ends at once with `already_running`);
//! - one tenant at a time per tenant (the tenant lock that create and delete also take);
//! - a failing tenant is rolled back to its last good version (refinery runs each migration
//!   in its own transaction), reported, and the run goes on; so is a dead provisioning that
//!   cannot be reconciled;
//! - released migrations are immutable: a history that disagrees with the embedded files
//!   (changed checksum, or a version that no longer exists) fails that tenant, with the reason;
//! - a database is touched only if it is the one the registry made (its OID, see
//!   `ownership`).
//!
//! Deadlines: each tenant's work is bounded (`MIGRATE_TENANT_TIMEOUT_SECS`), and the run
//! reads the invocation's deadline: it starts no tenant once the time left is short, cuts
//! running ones at that point, and answers with what it did; the tenants it did not start are
//! reported `not_started` (the next run takes them). Each tenant's outcome is written to the
//! registry as it finishes, so a run cut short, even killed, keeps what it did.
//!
//! What a run opens: the registry says, for every tenant, the version and the migration
//! fingerprint its database was last seen at (created from the template, or checked by a
//! run). A tenant recorded at this release's fingerprint is up to date without a connection;
//! every other tenant's database is opened, its OID and history read in one query, and
//! refinery runs only when something is pending. `{"verify": true}` opens every tenant
//! database, to catch changes made behind the registry's back (a restored backup, a
//! hand-edited history); the SAM template schedules one such run a week.
//!
//! Rollout (`rollout`): the tenants to open go in a canary wave, then the rest only if no
//! canary failed; the brake (`max_failures`) halts the run once passed. A run with more
//! tenants to open than `MIGRATE_INLINE_MAX_TENANTS` is not migrated here: it is written to
//! the run ledger and queued on SQS, one message per tenant, and the `migrate-tenant` workers
//! (`worker`) migrate each with the same code (`tenant`) and close the run. `retry_run`
//! reopens a run for its unfinished tenants, in a new attempt.
//!
//! Modules: `prepare` (the servers: admin connection, template, orphans), `reconcile` (dead
//! provisionings), `upkeep` (lifecycle work), `rollout` (the run over its tenants), `tenant`
//! (one tenant), `worker` (one message), `report` (what the run answers).

pub mod ledger;
mod one_tenant;
mod prepare;
mod reconcile;
mod report;
mod rollout;
mod upkeep;
mod worker;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::info;
use uuid::Uuid;

pub use report::{
    Counts, MigrateAllReport, Reconciled, RunStatus, ServerReport, SystemReport, TemplateReport,
    TenantOutcome, TenantReport,
};
pub use upkeep::{UpkeepAction, Upkept};
pub use worker::{migrate_from_queue, Delivery};

use crate::{
    config::MAX_MIGRATE_CONCURRENCY,
    database::Database,
    domain::Slug,
    invocation::Invocation,
    migrate::{self, read_history},
    pg::{
        error_chain,
        locks::{self, Lock},
        DbError,
    },
    tenant::template,
};

/// The longest reserve kept at the end of an invocation to answer (and the share of the time
/// left, for short invocations): no tenant works into it.
const RESERVE: Duration = Duration::from_secs(10);
const RESERVE_SHARE: u32 = 10; // a tenth

/// The options of a run. Unknown fields are refused, so that a typo (`dryRun`) never runs a
/// real migration of the fleet.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MigrateAllRequest {
    #[serde(default)]
    pub dry_run: bool,
    /// Limit the run to these tenants.
    #[serde(default)]
    pub slugs: Option<Vec<String>>,
    /// Override `MIGRATE_CONCURRENCY` for this run.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Open every tenant database, even those the registry records as current.
    #[serde(default)]
    pub verify: bool,
    /// `true`: migrate the tenants in this invocation; `false`: send them to the queue;
    /// unset: the queue when one is configured and the run has more tenants to open than
    /// `MIGRATE_INLINE_MAX_TENANTS`.
    #[serde(default)]
    pub inline: Option<bool>,
    /// The canary wave's size (0: none). Default: 1% of the tenants to open, at least 1 (none
    /// in a verify run, which looks for every drifted tenant).
    #[serde(default)]
    pub canary: Option<usize>,
    /// The brake: a count (`3`) or a share of the tenants to open (`"10%"`). The run halts
    /// once more tenants than that have failed. Default: none.
    #[serde(default)]
    pub max_failures: Option<MaxFailures>,
    /// Retry this run: its failed, halted, not started (and still pending) tenants, in it.
    #[serde(default)]
    pub retry_run: Option<Uuid>,
}

/// `max_failures`: a count, or a percentage of the tenants a run opens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "max_failures: a count of tenants (3) or a percentage (\"10%\")"
)]
pub enum MaxFailures {
    Count(u32),
    Share(String),
}

impl MaxFailures {
    /// The percentage of a `Share` (0 to 100).
    fn percent(&self) -> Result<Option<f64>, String> {
        match self {
            MaxFailures::Count(_) => Ok(None),
            MaxFailures::Share(text) => text
                .trim()
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<f64>().ok())
                .filter(|p| (0.0..=100.0).contains(p))
                .map(Some)
                .ok_or_else(|| {
                    format!(
                        "max_failures must be a count (3) or a percentage (\"10%\"), got {:?}",
                        text.chars().take(32).collect::<String>()
                    )
                }),
        }
    }

    /// How many failures of `tenants` the brake tolerates.
    pub(crate) fn of(&self, tenants: usize) -> usize {
        match (self, self.percent()) {
            (MaxFailures::Count(n), _) => *n as usize,
            (_, Ok(Some(p))) => (tenants as f64 * p / 100.0).floor() as usize,
            _ => 0,
        }
    }
}

impl MigrateAllRequest {
    /// The invocation's event: the options, `{}` or `null`, or an EventBridge event (a rule's
    /// or EventBridge Scheduler's envelope, recognised by its `source`, `detail-type` and
    /// `detail`), which is treated as `{}`.
    pub fn from_event(event: Value) -> Result<MigrateAllRequest, MigrateAllError> {
        if event.is_null() || is_eventbridge_envelope(&event) {
            return Ok(MigrateAllRequest::default());
        }
        if !event.is_object() {
            // serde would read a struct from an array, too.
            return Err(MigrateAllError::InvalidRequest(
                "invalid event: expected a JSON object of options, such as {} or \
                 {\"dry_run\": true}"
                    .into(),
            ));
        }
        serde_json::from_value(event)
            .map_err(|e| MigrateAllError::InvalidRequest(format!("invalid event: {e}")))
    }
}

fn is_eventbridge_envelope(event: &Value) -> bool {
    event.get("source").is_some_and(Value::is_string)
        && event.get("detail-type").is_some_and(Value::is_string)
        && event.get("detail").is_some()
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateAllError {
    #[error("invalid event: {0}")]
    InvalidRequest(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("system database migration failed: {0}")]
    SystemMigration(String),
    #[error("migrate-all failed: {0}")]
    Unexpected(String),
}

impl From<DbError> for MigrateAllError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) | DbError::TimedOut(m) => MigrateAllError::Unavailable(m),
            other => MigrateAllError::Unexpected(error_chain(&other)),
        }
    }
}

impl MigrateAllError {
    /// The `errorType` Lambda reports.
    pub fn error_type(&self) -> &'static str {
        match self {
            MigrateAllError::InvalidRequest(_) => "InvalidRequest",
            MigrateAllError::Unavailable(_) => "DatabaseUnavailable",
            MigrateAllError::SystemMigration(_) => "SystemMigrationFailed",
            MigrateAllError::Unexpected(_) => "Unexpected",
        }
    }
}

/// The request's slugs, parsed; all the problems at once.
fn parse_slugs(list: Option<&[String]>) -> Result<Option<Vec<String>>, MigrateAllError> {
    let Some(list) = list else { return Ok(None) };
    let mut parsed = Vec::new();
    let mut bad = Vec::new();
    for s in list {
        match Slug::parse(s) {
            Ok(slug) => parsed.push(slug.as_str().to_owned()),
            Err(e) => bad.push(format!("{:?}: {e}", s.chars().take(64).collect::<String>())),
        }
    }
    if bad.is_empty() {
        Ok(Some(parsed))
    } else {
        Err(MigrateAllError::InvalidRequest(format!(
            "invalid slugs: {}",
            bad.join("; ")
        )))
    }
}

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
    let mut run_id = Uuid::new_v4();
    let config = db.config();
    let concurrency = req.concurrency.unwrap_or(config.migrate_concurrency);
    if !(1..=MAX_MIGRATE_CONCURRENCY).contains(&concurrency) {
        return Err(MigrateAllError::InvalidRequest(format!(
            "concurrency must be from 1 to {MAX_MIGRATE_CONCURRENCY}, got {concurrency}"
        )));
    }
    let mut slugs = parse_slugs(req.slugs.as_deref())?;
    check_rollout(req, config.migrate_queue_url.is_some())?;
    let plan = one_tenant::Plan {
        dry_run: req.dry_run,
        verify: req.verify,
        concurrency,
        ..one_tenant::Plan::within(config, inv)
    };
    let latest_version = migrate::latest_tenant_version();
    let mut report = MigrateAllReport {
        run_id,
        status: RunStatus::Completed,
        mode: "inline",
        canary: 0,
        max_failures: None,
        error: None,
        dry_run: req.dry_run,
        latest_version,
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
    };
    info!(%run_id, dry_run = req.dry_run, concurrency, latest_version,
        time_left_ms = inv.time_left().as_millis() as u64, "migrate-all started");

    // The system database first. A dry run only reports what is pending, and stops there when
    // something is: the registry of a later release cannot be read as this one reads it.
    let system = if req.dry_run {
        let system = system_pending(db).await?;
        if !system.pending.is_empty() {
            report.error = Some(format!(
                "the registry lacks this release's system migrations {:?}: a dry run reports \
                 them and stops (a real run applies them first)",
                system.pending
            ));
            report.system = Some(system);
            report.duration_ms = started.elapsed().as_millis() as u64;
            return Ok(report);
        }
        system
    } else {
        let applied = crate::database::migrate_system(db)
            .await
            .map_err(|e| match e {
                DbError::Unavailable(m) | DbError::TimedOut(m) => MigrateAllError::Unavailable(m),
                other => MigrateAllError::SystemMigration(error_chain(&other)),
            })?;
        SystemReport {
            applied,
            pending: Vec::new(),
        }
    };
    report.system = Some(system);

    // A dry run reads the registry as it is (it is current: see above) and changes nothing.
    let sys = if req.dry_run {
        db.system_as_is().await?
    } else {
        db.system().await?
    };
    // One run per fleet. A dry run changes nothing and needs no lock.
    let fleet_lock = if req.dry_run {
        None
    } else {
        match locks::try_acquire(&sys, Lock::Fleet).await? {
            Some(lock) => Some(lock),
            None => {
                let alive = ledger::alive(&sys).await.unwrap_or(None);
                info!(%run_id, "another migrate-all run is in progress; this one stops here");
                skipped(&sys, req, run_id, alive, &mut report).await;
                report.duration_ms = started.elapsed().as_millis() as u64;
                return Ok(report);
            }
        }
    };

    // The run ledger (real runs only: a dry run changes nothing, the ledger included).
    let mut ledger_run = None;
    let mut attempt = 0;
    if fleet_lock.is_some() {
        match open_run(&sys, req, run_id, config).await {
            Ok(Opened::New) => ledger_run = Some(run_id),
            Ok(Opened::Retry(id, again, retried)) => {
                info!(run_id = %id, attempt = again, tenants = retried.len(), "retrying a run");
                run_id = id;
                report.run_id = id;
                slugs = Some(retried);
                ledger_run = Some(id);
                attempt = again;
            }
            Ok(Opened::Busy(alive)) => {
                info!(%run_id, running = %alive, "a queued run is still at work; this one stops here");
                skipped(&sys, req, run_id, Some(alive), &mut report).await;
                if let Some(lock) = fleet_lock {
                    lock.release().await;
                }
                report.run_id = alive;
                report.duration_ms = started.elapsed().as_millis() as u64;
                return Ok(report);
            }
            Err(e) => {
                if let Some(lock) = fleet_lock {
                    lock.release().await;
                }
                return Err(e);
            }
        }
    }
    let waves = rollout::Waves {
        // A retry takes its tenants at once: its run had its canary. A verify run looks for
        // every tenant that drifted: one found first must not hide the others.
        canary: if req.retry_run.is_some() || (req.verify && req.canary.is_none()) {
            Some(0)
        } else {
            req.canary
        },
        max_failures: req.max_failures.clone(),
        queue: match (req.dry_run, req.inline) {
            (true, _) | (_, Some(true)) => None,
            _ => config.migrate_queue_url.clone(),
        },
        inline_max: match req.inline {
            Some(false) => 0,
            _ => config.migrate_inline_max_tenants,
        },
    };
    let plan = one_tenant::Plan {
        ledger: ledger_run,
        waves,
        attempt,
        ..plan
    };
    let mut went = rollout::Went::Inline;
    let result: Result<(), MigrateAllError> = async {
        // Each server: reachable or not, its template, its orphans.
        let mut servers = prepare::load(db, &sys).await?;
        for server in &mut servers {
            let prepared = prepare::prepare(db, &sys, server, req.dry_run, plan.stop_at).await;
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
        report.reconciled =
            reconcile::reconcile_expired(db, &sys, &down, req.dry_run, plan.stop_at).await?;
        report.lifecycle = upkeep::run(
            db,
            &sys,
            &servers,
            slugs.as_deref(),
            req.dry_run,
            plan.stop_at,
        )
        .await?;
        // From here on, the only connections the run opens on a server are its tenants'.
        for server in &servers {
            server.handle.close_admin().await;
        }
        // What failed so far (a template, a reconcile, lifecycle work) is in the ledger before
        // any tenant is queued: the last worker then closes the run `failed`.
        if let (Some(run), Some(error)) = (ledger_run, report.error_type()) {
            ledger::note_error(&sys, run, error).await;
        }
        let tenants = one_tenant::list(&sys, slugs.as_deref()).await?;
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
    if let Some(run) = ledger_run.filter(|_| went == rollout::Went::Inline || result.is_err()) {
        let (status, error) = match &result {
            Err(e) => ("failed", Some(e.error_type().to_owned())),
            Ok(()) if report.status == RunStatus::Halted => ("halted", report.error.clone()),
            Ok(()) => (
                report.ledger_status(),
                report.error_type().map(str::to_owned),
            ),
        };
        ledger::close(&sys, run, status, error.as_deref()).await;
    }
    if let Some(lock) = fleet_lock {
        lock.release().await;
    }
    result?;
    report.cap_tenants(MAX_ANSWER_TENANTS);
    report.duration_ms = started.elapsed().as_millis() as u64;
    let c = &report.counts;
    info!(
        %run_id,
        status = ?report.status,
        mode = report.mode,
        migrated = c.migrated,
        up_to_date = c.up_to_date,
        pending = c.pending,
        failed = c.failed,
        deferred = c.deferred,
        skipped = c.skipped,
        not_started = c.not_started,
        duration_ms = report.duration_ms,
        "migrate-all finished"
    );
    Ok(report)
}

/// The rules between a run's options.
fn check_rollout(req: &MigrateAllRequest, has_queue: bool) -> Result<(), MigrateAllError> {
    let invalid = |m: &str| Err(MigrateAllError::InvalidRequest(m.into()));
    if req.retry_run.is_some()
        && (req.slugs.is_some() || req.canary.is_some() || req.dry_run || req.verify)
    {
        return invalid(
            "retry_run retries the run's own tenants: it takes no slugs, canary, verify nor \
             dry_run",
        );
    }
    if req.dry_run && req.inline == Some(false) {
        return invalid(
            "a dry run is always inline: it changes nothing and answers with the report",
        );
    }
    if req.inline == Some(false) && !has_queue {
        return invalid("inline: false needs a queue, and MIGRATE_QUEUE_URL is not set");
    }
    if let Some(m) = &req.max_failures {
        m.percent().map_err(MigrateAllError::InvalidRequest)?;
    }
    Ok(())
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
    sys: &crate::pg::Conn,
    req: &MigrateAllRequest,
    run_id: Uuid,
    config: &crate::Config,
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
    sys: &crate::pg::Conn,
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

/// The system migrations the registry lacks, read without applying any (a registry that does
/// not exist yet lacks them all).
async fn system_pending(db: &Database) -> Result<SystemReport, MigrateAllError> {
    let all = || {
        migrate::system_runner()
            .get_migrations()
            .iter()
            .map(|m| i64::from(m.version()))
            .collect::<Vec<i64>>()
    };
    let client = match db.system_as_is().await {
        Ok(client) => client,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => {
            return Ok(SystemReport {
                applied: Vec::new(),
                pending: all(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let history = read_history(&client).await?;
    let applied: Vec<i64> = history.iter().map(|h| h.version).collect();
    let pending = migrate::system_runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .filter(|v| !applied.contains(v))
        .collect();
    Ok(SystemReport {
        applied: Vec::new(),
        pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventbridge_envelopes_are_an_empty_request() {
        for event in [
            serde_json::json!({"version": "0", "id": "x", "detail-type": "Scheduled Event",
                "source": "aws.scheduler", "account": "123456789012", "time": "2026-11-22T03:00:00Z",
                "region": "us-east-1", "resources": [], "detail": {}}),
            serde_json::json!({"version": "0", "id": "y", "detail-type": "Scheduled Event",
                "source": "aws.events", "detail": {}}),
            serde_json::json!({}),
            Value::Null,
        ] {
            assert_eq!(
                MigrateAllRequest::from_event(event.clone()).unwrap(),
                MigrateAllRequest::default(),
                "{event}"
            );
        }
    }

    #[test]
    fn canary_waves_and_the_brake_are_sized_from_the_tenants_to_open() {
        // 1% of the tenants to open, at least one, at most all of them.
        for (asked, work, canary) in [
            (None, 0, 0),
            (None, 1, 1),
            (None, 100, 1),
            (None, 101, 2),
            (None, 250, 3),
            (Some(0), 100, 0),
            (Some(5), 3, 3),
        ] {
            assert_eq!(
                rollout::canary_size(asked, work),
                canary,
                "{asked:?} of {work}"
            );
        }
        let share = |s: &str| MaxFailures::Share(s.into());
        assert_eq!(MaxFailures::Count(3).of(100), 3);
        assert_eq!(share("10%").of(55), 5);
        assert_eq!(share(" 2.5 % ").of(1000), 25);
        assert_eq!(share("0%").of(1000), 0);
        for bad in ["10", "ten%", "101%", "-1%", ""] {
            assert!(share(bad).percent().is_err(), "{bad:?}");
        }
        let req = MigrateAllRequest::from_event(serde_json::json!({
            "max_failures": "10%", "canary": 2, "inline": false
        }))
        .unwrap();
        assert_eq!(req.max_failures, Some(share("10%")));
        assert_eq!((req.canary, req.inline), (Some(2), Some(false)));
        assert_eq!(
            MigrateAllRequest::from_event(serde_json::json!({"max_failures": 4}))
                .unwrap()
                .max_failures,
            Some(MaxFailures::Count(4))
        );
        // Options that contradict each other are refused before anything runs.
        let retry = MigrateAllRequest {
            retry_run: Some(Uuid::nil()),
            canary: Some(1),
            ..MigrateAllRequest::default()
        };
        assert!(check_rollout(&retry, true).is_err());
        let queued_without_queue = MigrateAllRequest {
            inline: Some(false),
            ..MigrateAllRequest::default()
        };
        assert!(check_rollout(&queued_without_queue, false).is_err());
        assert!(check_rollout(&queued_without_queue, true).is_ok());
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        for (event, needle) in [
            (
                serde_json::json!({"dryRun": true}),
                "unknown field `dryRun`",
            ),
            (serde_json::json!({"dry_run": "yes"}), "invalid type"),
            (serde_json::json!({"detail": {}}), "unknown field `detail`"),
            (serde_json::json!([]), "expected a JSON object"),
            (serde_json::json!([true]), "expected a JSON object"),
        ] {
            let e = MigrateAllRequest::from_event(event.clone()).unwrap_err();
            assert_eq!(e.error_type(), "InvalidRequest", "{event}");
            assert!(e.to_string().contains(needle), "{event}: {e}");
        }
        let ok = MigrateAllRequest::from_event(
            serde_json::json!({"dry_run": true, "verify": true, "slugs": ["acme"], "concurrency": 2}),
        )
        .unwrap();
        assert!(ok.dry_run && ok.verify);
        assert_eq!(ok.concurrency, Some(2));
    }
}
