//! What a migrate-all run answers and logs: its status, its own steps (system migrations, the
//! template, each server, reconciled provisionings, lifecycle work), counts and tenants, and
//! which `errorType` the invocation fails with. Each tenant's outcome is in [`super::outcome`],
//! the failure message in [`super::summary`]. Reasons are sanitised ([`super::sanitize`]): a
//! report names objects and SQLSTATEs, never hosts or credentials.

use serde::Serialize;
use uuid::Uuid;

use super::{
    ledger::{RunMode, RunState},
    outcome::{Counts, TenantOutcome, TenantReport},
};
use crate::{servers::ServerState, tenant::provision::ReconcileAction};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every tenant of the run was attempted and none was deferred.
    Completed,
    /// Some tenants were deferred (busy, out of time, unreachable) or not started (the
    /// invocation's deadline came first): the next run takes them.
    Incomplete,
    /// Another run holds the fleet lock, or a queued run is still at work; this one did
    /// nothing. The run ledger records it `skipped`; a skipped `verify` run fails the
    /// invocation (`RunSkipped`), so that the weekly check cannot vanish unseen.
    AlreadyRunning,
    /// The tenants went to the queue (`migrate-tenant` workers finish the run; follow it at
    /// `GET /api/runs/{run_id}`).
    Queued,
    /// Halted before every tenant was attempted: the canary wave failed, or more tenants
    /// failed than `max_failures`. The rest are `halted`; `{"retry_run": id}` takes them.
    Halted,
}

#[derive(Debug, Clone, Serialize)]
pub struct SystemReport {
    pub applied: Vec<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<i64>,
}

/// The tenant template of this release (see `template`).
#[derive(Debug, Clone, Serialize)]
pub struct TemplateReport {
    pub name: String,
    pub version: i64,
    pub ready: bool,
    /// Built by this run.
    pub built: bool,
    /// Templates of other releases, dropped by this run.
    pub dropped: Vec<String>,
    /// Why it could not be built. The tenants are migrated all the same, and the invocation
    /// fails at the end: provisioning needs the template.
    pub error: Option<String>,
}

/// One server of the fleet, as the run found it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    pub name: String,
    pub state: ServerState,
    /// False when the run could not open its admin connection: its tenants were not
    /// attempted, and are reported failed.
    pub reachable: bool,
    /// Why it could not be reached or prepared (sanitised).
    pub error: Option<String>,
    /// The most tenant connections the run opened on it at once.
    pub migrate_concurrency: usize,
    /// Its tenant template (`null` when unreachable).
    pub template: Option<TemplateReport>,
    /// Databases with the tenant prefix on it that no registry row of this server owns (by
    /// name and OID). Reported, never dropped.
    pub orphan_databases: Vec<String>,
    pub invalid_databases: Vec<String>,
    /// Databases every tenant login may still connect to (`postgres`, `template1`), because
    /// the admin may not revoke `PUBLIC`'s privileges there (it does not own them: RDS's
    /// `template1`, say). See `servers::hardening`.
    pub open_to_every_login: Vec<String>,
    /// Its tenants' outcomes in this run.
    pub counts: Counts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpkeepAction {
    /// Database, login and secret removed; the row is `purged`.
    Purged,
    /// The login of a deleted tenant can no longer log in, and its sessions ended.
    LoginDisabled,
    /// A tenant of an older release got its login and secret.
    CredentialsMade,
    /// Dry run: would be done.
    Pending,
    /// Could not be done (see `error`); the next run tries again.
    Failed,
    /// Another operation holds the tenant, or changed it since: the next run looks again.
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct Upkept {
    pub slug: String,
    /// What was due: `purge`, `disable_login` or `make_credentials`.
    pub task: &'static str,
    pub action: UpkeepAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reconciled {
    pub slug: String,
    pub action: ReconcileAction,
    /// Why reconciling failed (`action: failed`); the run went on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrateAllReport {
    pub run_id: Uuid,
    pub status: RunStatus,
    /// `inline`: the tenants were migrated in this invocation; `queue`: they were sent to the
    /// queue (their outcomes come in the run ledger).
    pub mode: RunMode,
    /// The canary wave's size (0: none) and the brake (`null`: none), as this run applies
    /// them.
    pub canary: usize,
    pub max_failures: Option<usize>,
    /// Why the run halted, why its tenants could not all be queued, why a `verify` run was
    /// skipped, or why a dry run stopped at the system migrations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub dry_run: bool,
    pub latest_version: i64,
    pub concurrency: usize,
    pub system: Option<SystemReport>,
    /// This release's template on every reachable server: ready when ready on each, built
    /// when built on one, the first server's error (each server's own is in `servers`).
    pub template: Option<TemplateReport>,
    /// Provisionings past their lease, finished or undone before migrating (see
    /// `provision`); in a dry run, listed as `pending`.
    pub reconciled: Vec<Reconciled>,
    /// Databases with the tenant prefix that no registry row owns (by name and OID), on any
    /// server (`servers` says which). Reported, never dropped.
    pub orphan_databases: Vec<String>,
    /// Tenant databases left invalid by an interrupted `DROP DATABASE`, on any server.
    pub invalid_databases: Vec<String>,
    /// Each server: reachable or not, its template, its orphans, its tenants' counts.
    pub servers: Vec<ServerReport>,
    /// Purges, logins disabled, credentials made (see `fleet::upkeep`).
    pub lifecycle: Vec<Upkept>,
    pub counts: Counts,
    /// At most `MAX_ANSWER_TENANTS`, failures first (the run ledger has every one).
    pub tenants: Vec<TenantReport>,
    /// Tenants of the run left out of `tenants` (0: none).
    pub tenants_omitted: usize,
    pub duration_ms: u64,
    /// The registry's connection was lost during the run (and the fleet lock with it): its
    /// outcomes may not all be recorded, and the invocation fails.
    #[serde(skip)]
    pub registry_lost: bool,
}

impl MigrateAllReport {
    /// Keeps at most `max` tenant rows, failures first, then the rest in run order.
    pub fn cap_tenants(&mut self, max: usize) {
        if self.tenants.len() <= max {
            return;
        }
        let total = self.tenants.len();
        self.tenants
            .sort_by_key(|t| t.status != TenantOutcome::Failed);
        self.tenants.truncate(max);
        self.tenants_omitted = total - max;
    }

    /// True when the invocation should fail: a tenant failed, a tenant was not started, a
    /// dead provisioning could not be reconciled, or the template could not be built.
    pub fn failed(&self) -> bool {
        self.error_type().is_some()
    }

    /// The `errorType` of a failed invocation, the most serious cause first.
    pub fn error_type(&self) -> Option<&'static str> {
        if self.registry_lost {
            Some("DatabaseUnavailable")
        } else if self.status == RunStatus::Halted {
            Some("RunHalted")
        } else if self.status == RunStatus::AlreadyRunning && self.error.is_some() {
            Some("RunSkipped")
        } else if self.status == RunStatus::Queued && self.error.is_some() {
            Some("QueueUnavailable")
        } else if self.counts.failed > 0 {
            Some("TenantMigrationsFailed")
        } else if self.counts.not_started > 0 {
            Some("RunIncomplete")
        } else if self.template_error().is_some() {
            Some("TemplateFailed")
        } else if self.servers.iter().any(|s| !s.reachable) {
            Some("ServerUnreachable")
        } else if self
            .reconciled
            .iter()
            .any(|r| r.action == ReconcileAction::Failed)
        {
            Some("ReconcileFailed")
        } else if self
            .lifecycle
            .iter()
            .any(|u| u.action == UpkeepAction::Failed)
        {
            Some("LifecycleFailed")
        } else {
            None
        }
    }

    /// What the run ledger records of an inline run that ended (not halted): `failed` when a
    /// tenant's migrations, the template, a reconcile or lifecycle work failed; `incomplete`
    /// when tenants were deferred or not started, or a server could not be reached (its
    /// tenants are the next run's); else `completed`.
    pub(crate) fn ledger_state(&self) -> RunState {
        match self.error_type() {
            Some("TenantMigrationsFailed" | "TemplateFailed" | "ReconcileFailed")
            | Some("LifecycleFailed" | "DatabaseUnavailable") => RunState::Failed,
            Some(_) => RunState::Incomplete,
            None if self.counts.not_started > 0 || self.counts.deferred > 0 => RunState::Incomplete,
            None => RunState::Completed,
        }
    }

    pub(super) fn template_error(&self) -> Option<&str> {
        self.template.as_ref().and_then(|t| t.error.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(counts: Counts) -> MigrateAllReport {
        MigrateAllReport {
            run_id: Uuid::nil(),
            status: RunStatus::Completed,
            mode: RunMode::Inline,
            canary: 0,
            max_failures: None,
            error: None,
            dry_run: false,
            latest_version: 2,
            concurrency: 1,
            system: None,
            template: None,
            reconciled: Vec::new(),
            orphan_databases: Vec::new(),
            invalid_databases: Vec::new(),
            servers: Vec::new(),
            lifecycle: Vec::new(),
            counts,
            tenants: Vec::new(),
            tenants_omitted: 0,
            duration_ms: 0,
            registry_lost: false,
        }
    }

    #[test]
    fn the_answer_keeps_failures_first_and_counts_what_it_leaves_out() {
        let mut r = report(Counts::default());
        for i in 0..10 {
            let status = if i % 4 == 3 {
                TenantOutcome::Failed
            } else {
                TenantOutcome::Migrated
            };
            r.tenants.push(TenantReport::new(&format!("t{i}"), status));
        }
        r.cap_tenants(20);
        assert_eq!((r.tenants.len(), r.tenants_omitted), (10, 0));
        r.cap_tenants(4);
        let kept: Vec<&str> = r.tenants.iter().map(|t| t.slug.as_str()).collect();
        // The two failures, then the others in run order.
        assert_eq!(kept, ["t3", "t7", "t0", "t1"]);
        assert_eq!(r.tenants_omitted, 6);
    }

    #[test]
    fn the_ledger_says_failed_only_for_what_failed() {
        let with = |counts: Counts| report(counts).ledger_state().as_str();
        assert_eq!(with(Counts::default()), "completed");
        let deferred = Counts {
            deferred: 2,
            migrated: 3,
            ..Counts::default()
        };
        assert_eq!(with(deferred.clone()), "incomplete");
        assert_eq!(
            report(deferred.clone()).error_type(),
            None,
            "fails no invocation"
        );
        let cut = Counts {
            not_started: 1,
            ..Counts::default()
        };
        assert_eq!(with(cut), "incomplete", "RunIncomplete is no failure");
        let failed = Counts {
            failed: 1,
            ..deferred
        };
        assert_eq!(with(failed), "failed");
        let mut down = report(Counts::default());
        down.servers.push(ServerReport {
            name: "eu-2".into(),
            state: ServerState::Open,
            reachable: false,
            error: None,
            migrate_concurrency: 1,
            template: None,
            orphan_databases: Vec::new(),
            invalid_databases: Vec::new(),
            open_to_every_login: Vec::new(),
            counts: Counts::default(),
        });
        assert_eq!(down.error_type(), Some("ServerUnreachable"));
        assert_eq!(down.ledger_state(), RunState::Incomplete);
    }

    #[test]
    fn the_error_type_names_the_most_serious_cause() {
        assert_eq!(report(Counts::default()).error_type(), None);
        let incomplete = report(Counts {
            not_started: 3,
            ..Counts::default()
        });
        assert_eq!(incomplete.error_type(), Some("RunIncomplete"));
        assert!(incomplete
            .failure_summary()
            .contains("3 tenants were not started"));
        let mut both = report(Counts {
            failed: 1,
            not_started: 3,
            ..Counts::default()
        });
        assert_eq!(both.error_type(), Some("TenantMigrationsFailed"));
        both.counts = Counts::default();
        both.reconciled.push(Reconciled {
            slug: "acme".into(),
            action: ReconcileAction::Failed,
            error: Some("tenant database unreachable".into()),
        });
        assert_eq!(both.error_type(), Some("ReconcileFailed"));
        assert!(both
            .failure_summary()
            .contains("acme (tenant database unreachable)"));
    }
}
