//! The run ledger: every migrate-all run (its options, the migrations it brings tenants to,
//! its status and counts) and each tenant's outcome in it, written as the work happens, so
//! that a run cut short or killed keeps what it did, and read through `GET /api/runs`.
//!
//! - A run's row is written when it takes the fleet lock (`running`), its tenants' rows when
//!   they are listed (`pending`), each tenant's outcome as it finishes, and the run's status
//!   and counts at the end: `completed` (nothing failed), `failed` (a tenant, the template, a
//!   reconcile or lifecycle task failed), `incomplete` (the invocation's deadline came first;
//!   the tenants not started are `not_started`).
//! - A run killed outright stays `running`; the next run, which holds the fleet lock and so
//!   knows no other run is alive, marks it `failed` ("interrupted"), and its tenants still
//!   `pending` `not_started`.
//! - Dry runs change nothing, the ledger included: they are not recorded.
//! - A ledger write that fails is logged and the run goes on (the tenants' own records in
//!   `tenants` stay the truth of where each database is).

//!
//! | module | owns |
//! | --- | --- |
//! | [`state`] | a run's state and mode, a tenant's statuses, the SQL of counts and closing |
//! | [`runs`] | a run's row: opened, reopened, skipped, closed; the dead ones closed |
//! | [`record`](mod@record) | a run's tenants: planned, then each outcome |
//! | [`queued`] | a queued run's workers: a message's tenant, its outcome once, the run moved on |
//! | [`canary`] | a queued run's canary wave, under the run's row lock |
//! | [`read`] | the ledger as `GET /api/runs` reads it |

mod canary;
mod queued;
mod read;
mod record;
mod runs;
mod state;

pub(crate) use queued::{assignment, next, note_rest_sent, record_once, Moved, Next};
pub use read::{get_run, list_runs, Run, RunDetail, RunPage, RunTenant};
pub(crate) use record::{abandon, plan, queue, record, record_all, Planned};
pub(crate) use runs::{alive, close, note_error, open, record_skipped, reopen, NewRun, Reopened};
pub use state::{RunMode, RunState, TENANT_STATUSES};
