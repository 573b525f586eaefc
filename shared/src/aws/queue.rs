//! The fan-out queue (SQS): migrate-all sends one message per tenant of a run, the
//! `migrate-tenant` function consumes them through Lambda's event source mapping (locally,
//! `scripts/queue_trigger.py`), and a worker that finds its server's budget full sends its
//! message again, delayed.
//!
//! - Messages are sent in batches of ten (`SendMessageBatch`, SQS's maximum), many batches at
//!   once; an entry SQS refuses for a passing reason is sent again, a few times; the first
//!   batch that cannot be sent, or the caller's deadline, ends the sending.
//! - Delivery is at least once: a message may arrive twice, or after a newer one. The worker
//!   makes that harmless (see `fleet::worker`); the sender never needs to know whether an
//!   earlier attempt got through, and simply sends again.
//! - Every call is bounded (connect, attempt and operation timeouts). Errors name the kind of
//!   failure and SQS's error code, never the queue's URL nor the endpoint.

use std::time::{Duration, Instant};

use aws_sdk_sqs::{error::SdkError, types::SendMessageBatchRequestEntry, Client};
use futures_util::{stream, FutureExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tracing::warn;
use uuid::Uuid;

use super::failure::{self, Failure};

/// SQS's largest batch.
const BATCH: usize = 10;
/// Batches in flight at once.
const IN_FLIGHT: usize = 16;
/// Attempts of an entry SQS refused for a passing reason (throttling, an internal error).
const ATTEMPTS: usize = 3;

/// One tenant of one run: the whole body of a message. The worker reads the rest (the run's
/// options, the tenant's server and database) from the registry, as it is when the message
/// arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantMessage {
    pub run_id: Uuid,
    pub slug: String,
    /// The run's attempt it was sent for (0, then one more per `retry_run`).
    #[serde(default)]
    pub attempt: i64,
    /// How many times a worker gave it back because the tenant's server could not be
    /// reached (see `fleet::worker`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tries: u32,
}

/// One step of a tenant's move (see `tenant::moves`): the worker reads the move's row and
/// runs its next steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveMessage {
    pub move_id: Uuid,
}

/// What a message of the queue carries: a tenant of a run, or a move.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum QueueMessage {
    Move(MoveMessage),
    Tenant(TenantMessage),
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// SQS could not be reached or did not answer in time.
    #[error("the queue is unreachable ({0})")]
    Unavailable(String),
    /// SQS refused (permissions, no such queue, a bad request).
    #[error("the queue refused the messages ({0})")]
    Refused(String),
}

fn classify<E, R>(e: &SdkError<E, R>) -> QueueError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata,
{
    match failure::classify(e) {
        Failure::Passing(code) => QueueError::Unavailable(code),
        Failure::Refused(code) => QueueError::Refused(code),
    }
}

async fn make_client() -> Client {
    Client::new(&crate::aws::config(Duration::from_secs(3), Duration::from_secs(8)).await)
}

/// The sandbox's SQS client, made on first use. Its futures are boxed, as the Secrets
/// Manager client's are (see `secrets`).
async fn client() -> &'static Client {
    static CLIENT: OnceCell<Client> = OnceCell::const_new();
    CLIENT.get_or_init(|| make_client().boxed()).await
}

/// Sends one message per slug of the run's `attempt`, before `deadline`. Stops at the first
/// batch that could not be sent after its attempts, or at the deadline, with an error (those
/// that were sent stay sent: sending them again is harmless).
pub async fn send_tenants(
    url: &str,
    run_id: Uuid,
    attempt: i64,
    slugs: &[String],
    deadline: Instant,
) -> Result<(), QueueError> {
    let bodies: Vec<String> = slugs
        .iter()
        .map(|slug| {
            serde_json::to_string(&TenantMessage {
                run_id,
                slug: slug.clone(),
                attempt,
                tries: 0,
            })
            .unwrap_or_default()
        })
        .collect();
    let all = stream::iter(bodies.chunks(BATCH).map(Ok))
        .try_for_each_concurrent(IN_FLIGHT, |chunk| send_batch(url, chunk));
    let sent = match tokio::time::timeout_at(deadline.into(), all).await {
        Ok(sent) => sent,
        Err(_) => Err(QueueError::Unavailable("out of time".into())),
    };
    if let Err(e) = &sent {
        warn!(%run_id, tenants = slugs.len(), error = %e, "could not queue every tenant");
    }
    sent
}

/// One batch, with its refused entries sent again (only those, a few times).
async fn send_batch(url: &str, bodies: &[String]) -> Result<(), QueueError> {
    let mut left: Vec<(String, &String)> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| (i.to_string(), b))
        .collect();
    let mut last = QueueError::Unavailable("not sent".into());
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        let entries = left
            .iter()
            .map(|(id, body)| {
                SendMessageBatchRequestEntry::builder()
                    .id(id.as_str())
                    .message_body(body.as_str())
                    .build()
                    .map_err(|_| QueueError::Refused("bad request".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = client()
            .await
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .boxed()
            .await;
        match out {
            Ok(out) => {
                let failed = out.failed();
                if failed.is_empty() {
                    return Ok(());
                }
                if let Some(f) = failed.iter().find(|f| f.sender_fault()) {
                    return Err(QueueError::Refused(f.code().to_owned()));
                }
                last = QueueError::Unavailable(failed[0].code().to_owned());
                left.retain(|(id, _)| failed.iter().any(|f| f.id() == id));
            }
            Err(e) => {
                last = classify(&e);
                if matches!(last, QueueError::Refused(_)) {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

/// Sends one message again, visible after `delay` (at most 15 minutes, SQS's limit).
pub async fn send_later(url: &str, body: &str, delay: Duration) -> Result<(), QueueError> {
    let delay = i32::try_from(delay.as_secs().min(900)).unwrap_or(900);
    client()
        .await
        .send_message()
        .queue_url(url)
        .message_body(body)
        .delay_seconds(delay)
        .send()
        .boxed()
        .await
        .map(|_| ())
        .map_err(|e| classify(&e))
}

/// Sends a move's message, visible after `delay`.
pub async fn send_move(url: &str, move_id: Uuid, delay: Duration) -> Result<(), QueueError> {
    let body = serde_json::to_string(&MoveMessage { move_id }).unwrap_or_default();
    send_later(url, &body, delay).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_a_move_or_a_tenant_of_a_run() {
        let id = Uuid::new_v4();
        let m: QueueMessage = serde_json::from_str(&format!(r#"{{"move_id":"{id}"}}"#)).unwrap();
        assert_eq!(m, QueueMessage::Move(MoveMessage { move_id: id }));
        let t: QueueMessage =
            serde_json::from_str(&format!(r#"{{"run_id":"{id}","slug":"acme"}}"#)).unwrap();
        assert!(
            matches!(t, QueueMessage::Tenant(TenantMessage { ref slug, .. }) if slug == "acme")
        );
        assert!(serde_json::from_str::<QueueMessage>(r#"{"slug":"acme"}"#).is_err());
    }
}
