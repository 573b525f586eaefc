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

mod prepare;
mod reconcile;
mod report;
mod tenant;
mod upkeep;

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

use crate::{
    config::MAX_MIGRATE_CONCURRENCY,
    db::{error_chain, Database, DbError},
    domain::Slug,
    invocation::Invocation,
    ledger,
    locks::{self, Lock},
    migrations::{self, read_history},
    template,
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
            DbError::Unavailable(m) => MigrateAllError::Unavailable(m),
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
    let run_id = Uuid::new_v4();
    let config = db.config();
    let concurrency = req.concurrency.unwrap_or(config.migrate_concurrency);
    if !(1..=MAX_MIGRATE_CONCURRENCY).contains(&concurrency) {
        return Err(MigrateAllError::InvalidRequest(format!(
            "concurrency must be from 1 to {MAX_MIGRATE_CONCURRENCY}, got {concurrency}"
        )));
    }
    let slugs = parse_slugs(req.slugs.as_deref())?;
    let reserve = RESERVE.min(inv.time_left() / RESERVE_SHARE);
    let plan = tenant::Plan {
        ledger: None,
        dry_run: req.dry_run,
        verify: req.verify,
        concurrency,
        lock_wait: config.lock_timeout,
        tenant_timeout: config.migrate_tenant_timeout,
        stop_at: inv.deadline.checked_sub(reserve).unwrap_or(inv.deadline),
        answer_by: inv.deadline,
        min_time: config.connect_timeout.min(Duration::from_secs(1)),
    };
    let latest_version = migrations::latest_tenant_version();
    let mut report = MigrateAllReport {
        run_id,
        status: RunStatus::Completed,
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
    };
    info!(%run_id, dry_run = req.dry_run, concurrency, latest_version,
        time_left_ms = inv.time_left().as_millis() as u64, "migrate-all started");

    // The system database first. A dry run only reports what is pending.
    let system = if req.dry_run {
        system_pending(db).await?
    } else {
        let applied = migrations::migrate_system(db).await.map_err(|e| match e {
            DbError::Unavailable(m) => MigrateAllError::Unavailable(m),
            other => MigrateAllError::SystemMigration(error_chain(&other)),
        })?;
        SystemReport {
            applied,
            pending: Vec::new(),
        }
    };
    report.system = Some(system);

    let sys = db.system().await?;
    // One run per fleet. A dry run changes nothing and needs no lock.
    let fleet_lock = if req.dry_run {
        None
    } else {
        match locks::try_acquire(&sys, Lock::Fleet).await? {
            Some(lock) => Some(lock),
            None => {
                info!(%run_id, "another migrate-all run is in progress; this one stops here");
                report.status = RunStatus::AlreadyRunning;
                report.duration_ms = started.elapsed().as_millis() as u64;
                return Ok(report);
            }
        }
    };

    // The run ledger (real runs only: a dry run changes nothing, the ledger included).
    let ledger_run = match &fleet_lock {
        Some(_) => {
            let options = serde_json::to_value(req).unwrap_or(Value::Null);
            let expected = migrations::ExpectedHistory::tenant();
            let opened = ledger::open(
                &sys,
                run_id,
                &options,
                expected.fingerprint(),
                expected.latest(),
                config.run_ledger_days,
            )
            .await;
            if let Err(e) = opened {
                if let Some(lock) = fleet_lock {
                    lock.release().await;
                }
                return Err(e.into());
            }
            Some(run_id)
        }
        None => None,
    };
    let plan = tenant::Plan {
        ledger: ledger_run,
        ..plan
    };
    let result: Result<(), MigrateAllError> = async {
        // Each server: reachable or not, its template, its orphans.
        let mut servers = prepare::load(db, &sys).await?;
        for server in &mut servers {
            let prepared = prepare::prepare(db, &sys, server, req.dry_run).await;
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
        let tenants = tenant::list(&sys, slugs.as_deref()).await?;
        if let Some(run) = plan.ledger {
            ledger::plan(&sys, run, &tenant::ledger_rows(&tenants)).await?;
        }
        tenant::run(
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
    if report.counts.not_started > 0 {
        report.status = RunStatus::Incomplete;
    }
    // Closed before the fleet lock is given back: the next run never takes it for a dead one.
    if let Some(run) = ledger_run {
        let (status, error) = match &result {
            Err(e) => ("failed", Some(e.error_type())),
            Ok(()) if report.counts.failed > 0 => ("failed", report.error_type()),
            Ok(()) if report.counts.not_started > 0 => ("incomplete", report.error_type()),
            Ok(()) if report.failed() => ("failed", report.error_type()),
            Ok(()) => ("completed", None),
        };
        ledger::close(&sys, run, status, &report.counts, error).await;
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
        migrated = c.migrated,
        up_to_date = c.up_to_date,
        pending = c.pending,
        failed = c.failed,
        skipped = c.skipped,
        not_started = c.not_started,
        duration_ms = report.duration_ms,
        "migrate-all finished"
    );
    Ok(report)
}

async fn system_pending(db: &Database) -> Result<SystemReport, MigrateAllError> {
    let client = db.system().await?;
    let history = read_history(&client).await?;
    let applied: Vec<i64> = history.iter().map(|h| h.version).collect();
    let pending = migrations::system_runner()
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
