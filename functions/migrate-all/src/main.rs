//! migrate-all: the scheduled (or hand-invoked) job that brings the system database and every
//! active tenant database to the latest migration. See `shared::fleet`.
//!
//! Event: `{}` or an EventBridge / Scheduler event (treated as `{}`), `{"dry_run": true}`,
//! `{"slugs": ["acme"]}`, `{"concurrency": 4}`, `{"verify": true}`; unknown fields are refused.
//! Returns the report; if any tenant failed (or was not started before the deadline), the
//! invocation fails (so that an alarm on the function's errors fires) after logging the whole
//! report.

use std::time::Duration;

use lambda_runtime::{run, service_fn, Diagnostic, Error, LambdaEvent};
use serde_json::Value;
use shared::{
    events,
    fleet::{self, MigrateAllRequest},
    invocation::{Invocation, JOB_BUDGET},
    Config, Database,
};

/// Kept from the Lambda deadline to log and send the report.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

async fn handler(db: &Database, event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
    let inv = Invocation::new(event.context.deadline(), ANSWER_MARGIN, JOB_BUDGET, None);
    let diagnostic = |e: fleet::MigrateAllError| {
        tracing::error!(error = %e, "migrate-all failed");
        Diagnostic {
            error_type: e.error_type().into(),
            error_message: e.to_string(),
        }
    };
    let req = MigrateAllRequest::from_event(event.payload).map_err(diagnostic)?;
    let report = fleet::migrate_all(db, &req, &inv).await;
    // The upkeep of the lifecycle events: the run's migrationRunFinished, and whatever a
    // function killed between its commit and its send left behind (or, with no bus, discard).
    // A dry run changes nothing, the outbox included.
    if !req.dry_run {
        events::send_upkeep(db, &inv).await;
        if let Err(e) = events::discard_unsent(db).await {
            tracing::warn!(error = %e, "could not discard the unsent lifecycle events");
        }
    }
    let report = report.map_err(diagnostic)?;
    let body = serde_json::to_value(&report).map_err(|e| Diagnostic {
        error_type: "Unexpected".into(),
        error_message: format!("could not serialise the report: {e}"),
    })?;
    if let Some(error_type) = report.error_type() {
        tracing::error!(report = %body, "migrate-all finished with failures");
        return Err(Diagnostic {
            error_type: error_type.into(),
            error_message: report.failure_summary(),
        });
    }
    tracing::info!(report = %body, "migrate-all report");
    Ok(body)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let db = Database::new(Config::from_env()?, "migrate-all")?;
    run(service_fn(|event| handler(&db, event))).await
}
