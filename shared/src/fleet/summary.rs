//! The message a failed migrate-all invocation ends with: the most serious causes first, then
//! counts, then each failed tenant with its (sanitised) reason, short enough for a log line
//! and an alarm (the report in the log names every tenant).

use super::{
    outcome::TenantOutcome,
    report::{MigrateAllReport, UpkeepAction},
};
use crate::tenant::provision::ReconcileAction;

impl MigrateAllReport {
    /// The invocation error's message when it failed: the template's error if any, counts,
    /// then each failed tenant with its (sanitised) reason.
    pub fn failure_summary(&self) -> String {
        const NAMED: usize = 20;
        let c = &self.counts;
        let mut failed: Vec<String> = self
            .tenants
            .iter()
            .filter(|t| t.status == TenantOutcome::Failed)
            .take(NAMED)
            .map(|t| {
                format!(
                    "{} ({})",
                    t.slug,
                    t.error.as_deref().unwrap_or("unknown error")
                )
            })
            .collect();
        // The message stays short; the report in the log names every tenant.
        if c.failed > NAMED {
            failed.push(format!(
                "and {} more (see the report in the log)",
                c.failed - NAMED
            ));
        }
        let template = match self.template_error() {
            Some(e) => format!(
                "The tenant template could not be built ({e}); new tenants cannot be provisioned. "
            ),
            None => String::new(),
        };
        let reconcile: Vec<String> = self
            .reconciled
            .iter()
            .filter(|r| r.action == ReconcileAction::Failed)
            .take(NAMED)
            .map(|r| format!("{} ({})", r.slug, r.error.as_deref().unwrap_or("unknown")))
            .collect();
        let reconcile = if reconcile.is_empty() {
            String::new()
        } else {
            format!(
                "Dead provisionings could not be reconciled: {}. ",
                reconcile.join("; ")
            )
        };
        let upkeep: Vec<String> = self
            .lifecycle
            .iter()
            .filter(|u| u.action == UpkeepAction::Failed)
            .take(NAMED)
            .map(|u| {
                format!(
                    "{} ({}: {})",
                    u.slug,
                    u.task,
                    u.error.as_deref().unwrap_or("unknown")
                )
            })
            .collect();
        let upkeep = if upkeep.is_empty() {
            String::new()
        } else {
            format!("Lifecycle work failed: {}. ", upkeep.join("; "))
        };
        let not_started = if c.not_started > 0 {
            format!(
                "{} tenants were not started before the invocation's deadline (the next run \
                 takes them). ",
                c.not_started
            )
        } else {
            String::new()
        };
        let unreachable: Vec<&str> = self
            .servers
            .iter()
            .filter(|s| !s.reachable)
            .map(|s| s.name.as_str())
            .collect();
        let unreachable = if unreachable.is_empty() {
            String::new()
        } else {
            format!(
                "Servers unreachable (their tenants were not attempted): {}. ",
                unreachable.join(", ")
            )
        };
        let halted = match &self.error {
            Some(e) => format!("{e}. "),
            None => String::new(),
        };
        let halted = if self.registry_lost {
            format!(
                "The registry's connection was lost during the run: its outcomes may not all be \
                 recorded (the next run takes every tenant not recorded current). {halted}"
            )
        } else {
            halted
        };
        format!(
            "{halted}{unreachable}{template}{reconcile}{upkeep}{not_started}{} of {} tenants failed to migrate; migrated {}, \
             up to date {}, deferred {}, skipped {}; run {}. Failed: {}",
            c.failed,
            self.tenants.len() + self.tenants_omitted,
            c.migrated,
            c.up_to_date,
            c.deferred,
            c.skipped,
            self.run_id,
            if failed.is_empty() {
                "none".to_owned()
            } else {
                failed.join("; ")
            }
        )
    }
}
