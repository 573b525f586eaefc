//! The words of the run ledger: a run's state and mode, a tenant's statuses in a run, and the
//! SQL that derives a run's counts and closing state from its tenants' rows.

use crate::fleet::outcome::LEDGER_STATUSES;

/// The statuses of a tenant in a run.
pub const TENANT_STATUSES: [&str; 8] = {
    let mut names = [""; 8];
    let mut i = 0;
    while i < names.len() {
        names[i] = LEDGER_STATUSES[i].as_str();
        i += 1;
    }
    names
};

/// A run's state in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// At work (or killed: the next run that holds the fleet lock finds out).
    Running,
    /// Every tenant attempted, none failed or deferred.
    Completed,
    /// A tenant, the template, a reconcile or lifecycle work failed; or the run died.
    Failed,
    /// Tenants deferred or not started: the next run takes them.
    Incomplete,
    /// The canary wave failed, or the brake was passed.
    Halted,
    /// Another run was at work: this one did nothing.
    Skipped,
}

impl RunState {
    pub const fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Incomplete => "incomplete",
            RunState::Halted => "halted",
            RunState::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<RunState> {
        [
            RunState::Running,
            RunState::Completed,
            RunState::Failed,
            RunState::Incomplete,
            RunState::Halted,
            RunState::Skipped,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

/// Where a run's tenants are migrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// In the invocation of migrate-all.
    Inline,
    /// By `migrate-tenant` workers, one queued message per tenant.
    Queue,
}

impl RunMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            RunMode::Inline => "inline",
            RunMode::Queue => "queue",
        }
    }

    pub fn parse(s: &str) -> Option<RunMode> {
        [RunMode::Inline, RunMode::Queue]
            .into_iter()
            .find(|mode| mode.as_str() == s)
    }
}

/// A run's counts, per tenant status, from its tenants' rows (`r` is the run).
pub(super) const COUNTS_SQL: &str = "(SELECT jsonb_build_object(\
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
pub(super) fn close_by_outcomes(condition: &str) -> String {
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
