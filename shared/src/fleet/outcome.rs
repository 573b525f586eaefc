//! One tenant's outcome in a run (as the answer, the log and the run ledger say it), why a
//! tenant was deferred, and the counts of a run's outcomes.

use std::time::Instant;

use serde::Serialize;

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

/// The statuses of a tenant in the run ledger, in the order the API lists them.
pub const LEDGER_STATUSES: [TenantOutcome; 8] = [
    TenantOutcome::Pending,
    TenantOutcome::Migrated,
    TenantOutcome::UpToDate,
    TenantOutcome::Failed,
    TenantOutcome::Deferred,
    TenantOutcome::Skipped,
    TenantOutcome::NotStarted,
    TenantOutcome::Halted,
];

impl TenantOutcome {
    /// As the report and the run ledger spell it.
    pub const fn as_str(self) -> &'static str {
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

    /// A status as the run ledger spells it (`pending`: [`TenantOutcome::Pending`]).
    pub fn parse(s: &str) -> Option<TenantOutcome> {
        LEDGER_STATUSES.into_iter().find(|o| o.as_str() == s)
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
    /// Where its time went (in its log line, not in the answer).
    #[serde(skip)]
    pub(crate) steps: Steps,
}

/// Where one tenant's time went, in milliseconds, step by step: its server's slot and its
/// lock (on the registry), the connection to its database, the read and the migrations, the
/// connection's close (until its backend is gone), and its version written to the registry.
/// `make bench` reads them from the "tenant migration" log line. (Milliseconds, not
/// `Duration`s: a report travels by value, and stays small.)
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Steps {
    pub(crate) slot: u32,
    pub(crate) connect: u32,
    pub(crate) migrate: u32,
    pub(crate) close: u32,
    pub(crate) record: u32,
}

impl Steps {
    /// The milliseconds since `start`, for one of the steps.
    pub(crate) fn since(start: Instant) -> u32 {
        u32::try_from(start.elapsed().as_millis()).unwrap_or(u32::MAX)
    }
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
            steps: Steps::default(),
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
