//! migrate-all: the scheduled (or hand-invoked) job that brings the system database and every
//! active tenant database to the latest migration. See `shared::fleet`.
//!
//! Event: `{}` or any EventBridge event (its fields are ignored), `{"dry_run": true}`,
//! `{"slugs": ["acme"]}`, `{"concurrency": 4}`. Returns the report; if any tenant failed, the
//! invocation fails (so that an alarm on the function's errors fires) after logging the
//! whole report.

use lambda_runtime::{run, service_fn, Diagnostic, Error, LambdaEvent};
use serde_json::Value;
use shared::{
    fleet::{self, MigrateAllRequest, DEFAULT_CONCURRENCY},
    Config, Database,
};

struct Deps {
    db: Database,
    concurrency: usize,
}

async fn handler(deps: &Deps, event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
    let req: MigrateAllRequest = serde_json::from_value(event.payload).map_err(|e| Diagnostic {
        error_type: "InvalidRequest".into(),
        error_message: format!("invalid event: {e}"),
    })?;
    let report = fleet::migrate_all(&deps.db, &req, deps.concurrency)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "migrate-all failed");
            Diagnostic {
                error_type: e.error_type().into(),
                error_message: e.to_string(),
            }
        })?;
    let body = serde_json::to_value(&report).map_err(|e| Diagnostic {
        error_type: "Unexpected".into(),
        error_message: format!("could not serialise the report: {e}"),
    })?;
    if report.failed() {
        tracing::error!(report = %body, "migrate-all finished with failures");
        return Err(Diagnostic {
            error_type: if report.counts.failed > 0 {
                "TenantMigrationsFailed"
            } else {
                "TemplateFailed"
            }
            .into(),
            error_message: report.failure_summary(),
        });
    }
    tracing::info!(report = %body, "migrate-all report");
    Ok(body)
}

fn concurrency_from_env() -> Result<usize, Error> {
    match std::env::var("MIGRATE_CONCURRENCY") {
        Err(_) => Ok(DEFAULT_CONCURRENCY),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=fleet::MAX_CONCURRENCY).contains(&n) => Ok(n),
            _ => Err(format!(
                "invalid configuration: MIGRATE_CONCURRENCY must be from 1 to {}, got {v:?}",
                fleet::MAX_CONCURRENCY
            )
            .into()),
        },
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = Config::from_env()?;
    let deps = Deps {
        db: Database::new(config, "migrate-all")?,
        concurrency: concurrency_from_env()?,
    };
    run(service_fn(|event| handler(&deps, event))).await
}
