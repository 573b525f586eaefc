//! rotate-tenant-secret: Secrets Manager's rotation function for tenant secrets (single user).
//! Secrets Manager invokes it four times per rotation (`createSecret`, `setSecret`,
//! `testSecret`, `finishSecret`); see `shared::rotation`.

use aws_lambda_events::event::secretsmanager::SecretsManagerSecretRotationEvent;
use lambda_runtime::{run, service_fn, Diagnostic, Error, LambdaEvent};
use shared::{metrics, tenant::rotation, Config, Database};

async fn handler(
    db: &Database,
    event: LambdaEvent<SecretsManagerSecretRotationEvent>,
) -> Result<(), Diagnostic> {
    let e = &event.payload;
    let done = rotation::rotate(db, &e.step, &e.secret_id, &e.client_request_token).await;
    // The step as Secrets Manager names it, or `other` (a dimension never carries what a
    // caller made up).
    let step = match e.step.as_str() {
        s @ ("createSecret" | "setSecret" | "testSecret" | "finishSecret") => s,
        _ => "other",
    };
    metrics::emit(
        &[
            ("Step", step),
            ("Outcome", if done.is_ok() { "ok" } else { "failed" }),
        ],
        &[("Rotations", 1.0, metrics::Unit::Count)],
    );
    done.map_err(|err| {
        tracing::error!(step = %e.step, error = %err, "rotation step failed");
        Diagnostic {
            error_type: err.error_type().into(),
            error_message: err.to_string(),
        }
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let db = Database::new(Config::from_env()?, "rotate-tenant-secret")?;
    run(service_fn(|event| handler(&db, event))).await
}
