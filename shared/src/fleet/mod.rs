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
//!   `pg::ownership`).
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
//! | module | owns |
//! | --- | --- |
//! | [`request`] | the invocation's event, its rules, and the errors that end an invocation |
//! | [`run`] | one invocation, step by step, and the run opened and closed in the ledger |
//! | [`system`] | the system migrations, first |
//! | [`prepare`] | the servers: admin connection, group role, template, orphans |
//! | [`reconcile`] | provisionings that died, and databases no registry row owns |
//! | [`upkeep`] | lifecycle work: purges due, logins to disable, credentials to make |
//! | [`plan`] | a run's settings and its tenants |
//! | [`rollout`] | the run over its tenants: waves, the brake, inline or queued |
//! | [`one_tenant`] | one tenant: slot, lock, time limit, outcome recorded |
//! | [`slots`] | a server's budget for fleet work |
//! | [`tenant_db`] | the work on a tenant's own database |
//! | [`worker`] | `migrate-tenant`: one queued message |
//! | [`ledger`] | the run ledger: runs and their tenants' outcomes, written as the work happens |
//! | [`outcome`], [`report`], [`run_steps`], [`summary`], [`sanitize`] | what a run answers and logs |
//! | [`gauges`] | after the lifecycle work: the moves' upkeep, and the fleet's gauges (tenants per server and status, servers unreachable) |

mod gauges;
mod inline;
pub mod ledger;
mod one_tenant;
mod outcome;
mod plan;
mod prepare;
mod reconcile;
mod report;
mod request;
mod rollout;
mod run;
mod run_steps;
mod sanitize;
mod slots;
mod summary;
mod system;
mod tenant_db;
mod upkeep;
mod worker;

pub use outcome::{Counts, TenantOutcome, TenantReport};
pub use report::{
    MigrateAllReport, Reconciled, RunStatus, ServerReport, SystemReport, TemplateReport,
    UpkeepAction, Upkept,
};
pub use request::{MaxFailures, MigrateAllError, MigrateAllRequest};
pub use run::{migrate_all, MAX_ANSWER_TENANTS};
pub use worker::{migrate_from_queue, Delivery};
