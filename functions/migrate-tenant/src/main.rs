//! migrate-tenant: the worker of a queued migrate-all run. Lambda's event source mapping
//! delivers the run's SQS messages, one tenant each; every tenant is migrated by the same code
//! as an inline run and its outcome recorded in the run ledger. See `shared::fleet::worker`.
//!
//! Answers with the messages to deliver again (`batchItemFailures`; the event source mapping
//! has `ReportBatchItemFailures`): the others are done, including those given back for later
//! because their server's budget was full. Records are taken one after the other (the
//! template's `BatchSize` is 1); those left when the invocation's time runs short come back.

use std::time::Duration;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::{
    fleet::{self, Delivery},
    invocation::{Invocation, JOB_BUDGET},
    Config, Database,
};

/// Kept from the Lambda deadline to answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);
/// A record is started only with at least this much time left.
const MIN_TIME: Duration = Duration::from_secs(5);

async fn handler(
    db: &Database,
    queue_url: &str,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, Error> {
    let inv = Invocation::new(event.context.deadline(), ANSWER_MARGIN, JOB_BUDGET, None);
    let mut response = SqsBatchResponse::default();
    for record in event.payload.records {
        let id = record.message_id.clone().unwrap_or_default();
        let delivery = match record.body.as_deref() {
            Some(body) if inv.time_left() >= MIN_TIME => {
                fleet::migrate_from_queue(db, &inv, queue_url, body).await
            }
            _ => Delivery::Retry,
        };
        if delivery == Delivery::Retry {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = Config::from_env()?;
    let queue_url = config
        .migrate_queue_url
        .clone()
        .ok_or("MIGRATE_QUEUE_URL is required: migrate-tenant gives busy tenants back to it")?;
    let db = Database::new(config, "migrate-tenant")?;
    run(service_fn(|event| handler(&db, &queue_url, event))).await
}
