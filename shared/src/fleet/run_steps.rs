//! Where a migrate-all run's time went, step by step, in its last log line: what `make
//! bench` reads to say where planning and an inline run spend their time. (Each tenant's own
//! steps are in its report: `outcome::Steps`.)

use std::time::Duration;

use tracing::info;

use super::report::MigrateAllReport;
use crate::{
    invocation::millis,
    metrics::{self, Unit},
};

/// Where a run's time went, step by step, for its last log line (`make bench` reads them):
/// the system database, the fleet lock and the ledger, the servers (reachable, templates,
/// orphans), reconcile, lifecycle work, the tenants' list, and the tenants themselves (inline:
/// their migrations; queued: their ledger rows and the first wave's messages).
#[derive(Default)]
pub(super) struct RunSteps {
    pub(super) system: Duration,
    pub(super) fleet: Duration,
    pub(super) servers: Duration,
    pub(super) reconcile: Duration,
    pub(super) lifecycle: Duration,
    pub(super) list: Duration,
    pub(super) tenants: Duration,
}

impl RunSteps {
    /// The run's last log line: its outcome, counts and steps.
    pub(super) fn log(&self, report: &MigrateAllReport) {
        let c = &report.counts;
        let status = serde_json::to_value(report.status).unwrap_or_default();
        metrics::emit(
            &[("Status", status.as_str().unwrap_or("unknown"))],
            &[
                ("Runs", 1.0, Unit::Count),
                ("RunDuration", report.duration_ms as f64, Unit::Milliseconds),
                ("RunTenantsMigrated", c.migrated as f64, Unit::Count),
                ("RunTenantsUpToDate", c.up_to_date as f64, Unit::Count),
                ("RunTenantsFailed", c.failed as f64, Unit::Count),
                ("RunTenantsDeferred", c.deferred as f64, Unit::Count),
                ("RunTenantsNotStarted", c.not_started as f64, Unit::Count),
            ],
        );
        info!(
            run_id = %report.run_id,
            status = ?report.status,
            mode = report.mode.as_str(),
            migrated = c.migrated,
            up_to_date = c.up_to_date,
            pending = c.pending,
            failed = c.failed,
            deferred = c.deferred,
            skipped = c.skipped,
            not_started = c.not_started,
            duration_ms = report.duration_ms,
            system_ms = millis(self.system),
            fleet_ms = millis(self.fleet),
            servers_ms = millis(self.servers),
            reconcile_ms = millis(self.reconcile),
            lifecycle_ms = millis(self.lifecycle),
            list_ms = millis(self.list),
            tenants_ms = millis(self.tenants),
            "migrate-all finished"
        );
    }
}
