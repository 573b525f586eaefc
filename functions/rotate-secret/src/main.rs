//! rotate-tenant-secret: Secrets Manager's rotation function for tenant secrets (single user).
//! Secrets Manager invokes it four times per rotation (`createSecret`, `setSecret`,
//! `testSecret`, `finishSecret`); see `shared::rotation`.

use aws_lambda_events::event::secretsmanager::SecretsManagerSecretRotationEvent;
use lambda_runtime::{run, service_fn, Diagnostic, Error, LambdaEvent};
use shared::{tenant::rotation, Config, Database};

async fn handler(
    db: &Database,
    event: LambdaEvent<SecretsManagerSecretRotationEvent>,
) -> Result<(), Diagnostic> {
    let e = &event.payload;
    rotation::rotate(db, &e.step, &e.secret_id, &e.client_request_token)
        .await
        .map_err(|err| {
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
