//! What a migrate-all run answers and logs: per tenant, counts, the run's own steps, and the
//! failure summary that becomes the invocation's error message. Reasons are sanitised: a
//! report names objects and SQLSTATEs, never hosts or credentials.

use serde::Serialize;
use tracing::error;
use uuid::Uuid;

use super::upkeep::{UpkeepAction, Upkept};
use crate::{
    pg::{is_unavailable, DbError},
    servers::ServerState,
    tenant::provision::ReconcileAction,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantOutcome {
    /// Pending migrations were applied.
    Migrated,
    /// Nothing was pending.
    UpToDate,
    /// Dry run: migrations are pending (listed in `pending`).
    Pending,
    /// Its migrations' own SQL failed, or its database is not the one the registry made, or
    /// its history differs from the released migrations (see `error`); left at its last good
    /// version. Counted by the canary and the brake.
    Failed,
    /// Not migrated, and nothing is wrong with its migrations: it was busy (its tables stayed
    /// locked through every lock attempt, or another operation held it), out of time, or its
    /// server could not be reached (see `error`). Recorded, never counted by the canary or the
    /// brake; the next run (or `retry_run`) takes it.
    Deferred,
    /// Not migrated by design: named in `slugs` but not active, or unknown.
    Skipped,
    /// Not attempted: the invocation's deadline was near. The next run takes it.
    NotStarted,
    /// Not attempted: the run halted first (its canary wave failed, or the brake).
    Halted,
    /// Sent to the queue: a `migrate-tenant` worker migrates it and records its outcome in
    /// the run ledger (where it is `pending` until then). In migrate-all's answer only.
    Queued,
}

impl TenantOutcome {
    /// As the report and the run ledger spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantOutcome::Migrated => "migrated",
            TenantOutcome::UpToDate => "up_to_date",
            TenantOutcome::Pending => "pending",
            TenantOutcome::Failed => "failed",
            TenantOutcome::Deferred => "deferred",
            TenantOutcome::Skipped => "skipped",
            TenantOutcome::NotStarted => "not_started",
            TenantOutcome::Halted => "halted",
            // The ledger's name for a tenant whose outcome is still to come.
            TenantOutcome::Queued => "pending",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantReport {
    pub slug: String,
    /// The server that holds its database.
    pub server: Option<String>,
    pub status: TenantOutcome,
    pub from_version: Option<i64>,
    pub to_version: Option<i64>,
    pub applied: Vec<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<i64>,
    pub error: Option<String>,
    /// True when this run read the tenant database's own history; false when the registry
    /// vouched for it (recorded at this release's migrations).
    pub verified: bool,
    pub duration_ms: u64,
    /// Why it was deferred (not in the answer: `error` says it in words).
    #[serde(skip)]
    pub(crate) deferral: Option<Deferral>,
}

/// Why a tenant was deferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deferral {
    /// Its tables stayed locked through every lock attempt, its lock was held by another
    /// operation, or its server's budget had no free slot.
    Busy,
    /// Its migrations ran past their time limit (and were cancelled).
    OutOfTime,
    /// Its server (or the registry) could not be reached, or the connection was lost.
    Unreachable,
}

impl TenantReport {
    pub(crate) fn new(slug: &str, status: TenantOutcome) -> TenantReport {
        TenantReport {
            slug: slug.to_owned(),
            server: None,
            status,
            from_version: None,
            to_version: None,
            applied: Vec::new(),
            pending: Vec::new(),
            error: None,
            verified: false,
            duration_ms: 0,
            deferral: None,
        }
    }

    /// A tenant deferred, for `why` (in words: `error`).
    pub(crate) fn deferred(slug: &str, why: Deferral, error: impl Into<String>) -> TenantReport {
        TenantReport {
            error: Some(error.into()),
            deferral: Some(why),
            ..TenantReport::new(slug, TenantOutcome::Deferred)
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub migrated: usize,
    pub up_to_date: usize,
    pub pending: usize,
    pub failed: usize,
    pub deferred: usize,
    pub skipped: usize,
    pub not_started: usize,
    pub halted: usize,
    /// Sent to the queue (migrate-all's answer of a queued run only).
    #[serde(skip_serializing_if = "is_zero")]
    pub queued: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Counts {
    pub(crate) fn add(&mut self, outcome: TenantOutcome) {
        match outcome {
            TenantOutcome::Migrated => self.migrated += 1,
            TenantOutcome::UpToDate => self.up_to_date += 1,
            TenantOutcome::Pending => self.pending += 1,
            TenantOutcome::Failed => self.failed += 1,
            TenantOutcome::Deferred => self.deferred += 1,
            TenantOutcome::Skipped => self.skipped += 1,
            TenantOutcome::NotStarted => self.not_started += 1,
            TenantOutcome::Halted => self.halted += 1,
            TenantOutcome::Queued => self.queued += 1,
        }
    }
}

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
    /// `template1`, say). See `hardening`.
    pub open_to_every_login: Vec<String>,
    /// Its tenants' outcomes in this run.
    pub counts: Counts,
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
    pub mode: &'static str,
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
    pub(crate) fn ledger_status(&self) -> &'static str {
        match self.error_type() {
            Some("TenantMigrationsFailed" | "TemplateFailed" | "ReconcileFailed")
            | Some("LifecycleFailed" | "DatabaseUnavailable") => "failed",
            Some(_) => "incomplete",
            None if self.counts.not_started > 0 || self.counts.deferred > 0 => "incomplete",
            None => "completed",
        }
    }

    fn template_error(&self) -> Option<&str> {
        self.template.as_ref().and_then(|t| t.error.as_deref())
    }

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

/// A PostgreSQL error as a report may show it: SQLSTATE and the server's message (which
/// names objects, never hosts or credentials); connection problems as one fixed sentence.
pub(crate) fn sanitize_pg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None if is_unavailable(e) => "tenant database unreachable".into(),
        None => "database error".into(),
    }
}

pub(crate) fn sanitize_db(e: &DbError) -> String {
    match e {
        DbError::Unavailable(detail) => {
            error!(cause = %detail, "tenant database unavailable");
            "tenant database unreachable or not answering".into()
        }
        DbError::Postgres(pg) => sanitize_pg(pg),
        DbError::LockTimeout(what) | DbError::TimedOut(what) => what.clone(),
        // Our own messages (the outermost context only): they name objects, never hosts.
        DbError::Other(e) => e.to_string(),
    }
}

pub(crate) fn sanitize_refinery(e: &refinery::Error) -> String {
    use refinery::error::Kind;
    match e.kind() {
        Kind::Connection(msg, _) => {
            let pg = crate::migrate::failure::pg_error(e);
            let detail = pg
                .map(sanitize_pg)
                .unwrap_or_else(|| "database error".into());
            // refinery's message names the migration ("error applying migration V3__x").
            let which = msg
                .split_whitespace()
                .find(|w| w.starts_with('V'))
                .unwrap_or("");
            if which.is_empty() {
                detail
            } else {
                format!("migration {which} failed: {detail}")
            }
        }
        Kind::DivergentVersion(applied, embedded) => {
            format!("applied migration {applied} differs from the released {embedded}")
        }
        Kind::MissingVersion(m) => {
            format!("applied migration {m} is not among the released migrations")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(counts: Counts) -> MigrateAllReport {
        MigrateAllReport {
            run_id: Uuid::nil(),
            status: RunStatus::Completed,
            mode: "inline",
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
        let with = |counts: Counts| report(counts).ledger_status();
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
        assert_eq!(down.ledger_status(), "incomplete");
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
