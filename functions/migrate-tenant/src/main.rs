//! migrate-tenant: the worker of a queued migrate-all run, and of tenant moves. Lambda's event
//! source mapping delivers the queue's SQS messages: a tenant of a run (migrated by the same
//! code as an inline run, its outcome recorded in the run ledger, see `shared::fleet::worker`)
//! or a move (its next steps, see `shared::tenant::moves`).
//!
//! Answers with the messages to deliver again (`batchItemFailures`; the event source mapping
//! has `ReportBatchItemFailures`): the others are done, including those given back for later
//! because their server's budget was full. Records are taken one after the other (the
//! template's `BatchSize` is 1); those left when the invocation's time runs short come back.

use std::time::Duration;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde::de::DeserializeOwned;
use shared::{
    aws::queue::QueueMessage,
    events,
    fleet::{self, Delivery},
    invocation::{Invocation, JOB_BUDGET},
    metrics,
    tenant::moves,
    Config, Database,
};
use tracing::error;

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
    let ready = || inv.time_left() >= MIN_TIME;
    let handle = async |msg: QueueMessage| match msg {
        QueueMessage::Tenant(msg) => fleet::migrate_from_queue(db, &inv, queue_url, msg).await,
        QueueMessage::Move(msg) => {
            match moves::advance_move(db, &inv, queue_url, msg.move_id).await {
                moves::Delivered::Done => Delivery::Done,
                moves::Delivered::Retry => Delivery::Retry,
            }
        }
    };
    let response = each_record(event.payload.records, ready, handle).await;
    // tenantMoved, or the migrationRunFinished of the run whose last tenant this was.
    events::send_after(db, &inv).await;
    Ok(response)
}

/// A batch, record by record while `ready` (time is left), each body read as a `T` and handed
/// to `handle`: the records not done (none left time, no body, a body that is not a `T`, left
/// for the dead-letter queue; or `Delivery::Retry`) are the batch item failures, delivered
/// again.
async fn each_record<T: DeserializeOwned>(
    records: Vec<SqsMessage>,
    ready: impl Fn() -> bool,
    handle: impl AsyncFn(T) -> Delivery,
) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for record in records {
        queue_lag(&record);
        let delivery = match record.body.as_deref() {
            Some(_) if !ready() => Delivery::Retry,
            None => Delivery::Retry,
            Some(body) => match serde_json::from_str::<T>(body) {
                Ok(message) => handle(message).await,
                Err(_) => {
                    error!("a message of the queue is neither a tenant of a run nor a move; left for the dead-letter queue");
                    Delivery::Retry
                }
            },
        };
        if delivery == Delivery::Retry {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = record.message_id.unwrap_or_default();
            response.batch_item_failures.push(failure);
        }
    }
    response
}

/// `QueueLag`: how long the message waited in the queue (its `SentTimestamp` until now), by
/// kind (a tenant of a run, or a move); see `shared::metrics`.
fn queue_lag(record: &SqsMessage) {
    let Some(sent) = record
        .attributes
        .get("SentTimestamp")
        .and_then(|t| t.parse::<i64>().ok())
    else {
        return;
    };
    let kind = match record.body.as_deref() {
        Some(b) if b.contains("\"move_id\"") => "move",
        _ => "tenant",
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let lag = (now - sent).max(0);
    metrics::emit(
        &[("Kind", kind)],
        &[("QueueLag", lag as f64, metrics::Unit::Milliseconds)],
    );
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
