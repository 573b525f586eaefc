//! The local AWS services (moto) through the real AWS SDK: Secrets Manager (a tenant's
//! secret, read and written) and SQS (the migrate queue, its Lambda event, a queue of a
//! test's own).

use std::time::Duration;

use serde_json::{json, Value};

use crate::{env::var, locks::block_on_own_thread, runtime};

/// The AWS SDK's configuration for a local endpoint (moto, or the bench's SQS sink): fixed
/// credentials and region, every call bounded.
pub async fn local_aws(endpoint: &str) -> aws_config::SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .operation_timeout(Duration::from_secs(10))
        .build();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "local", "local", None, None, "tests",
        ))
        .load()
        .await
}

/// The local Secrets Manager (moto), through the real AWS SDK (what an application would use).
/// A client per call: the tests run on several runtimes (cleanup has one of its own), and a
/// client's pooled connections belong to the runtime that made them.
pub async fn secrets() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&local_aws(&var("AWS_ENDPOINT_URL_SECRETS_MANAGER")).await)
}

/// The local SQS (moto), through the real AWS SDK; a client per call, as [`secrets`].
pub async fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&local_aws(&var("AWS_ENDPOINT_URL_SQS")).await)
}

/// The migrate queue of the local stack.
pub fn queue_url() -> String {
    var("MIGRATE_QUEUE_URL")
}

/// The SQS event Lambda's event source mapping hands `migrate-tenant` for these message
/// bodies (one record each).
pub fn sqs_event(bodies: &[Value]) -> Value {
    let records: Vec<Value> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            serde_json::json!({
                "messageId": format!("test-{i}-{}", uuid::Uuid::new_v4()),
                "receiptHandle": "test", "body": body.to_string(),
                "attributes": {"ApproximateReceiveCount": "2", "SentTimestamp": "0",
                    "SenderId": "test", "ApproximateFirstReceiveTimestamp": "0"},
                "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:dbtools-migrate",
                "awsRegion": "us-east-1"})
        })
        .collect();
    serde_json::json!({ "Records": records })
}

/// A tenant's secret as the application reads it (`AWSCURRENT`), parsed. The stage is named
/// (as AWS defaults to it): moto answers an unnamed one with the version the secret was made
/// with, even after a rotation moved `AWSCURRENT`.
pub async fn read_secret(id: &str) -> Value {
    let out = secrets()
        .await
        .get_secret_value()
        .secret_id(id)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap_or_else(|e| panic!("read {id}: {e:?}"));
    serde_json::from_str(out.secret_string().expect("a secret string")).expect("JSON")
}

/// What Secrets Manager says of a secret name: `None` when there is none; `Some(true)` once
/// it is scheduled for deletion.
pub async fn secret_deleting(name: &str) -> Option<bool> {
    match secrets()
        .await
        .describe_secret()
        .secret_id(name)
        .send()
        .await
    {
        Ok(out) => Some(out.deleted_date().is_some()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            None
        }
        Err(e) => panic!("describe {name}: {e:?}"),
    }
}

/// Creates (or overwrites) a secret in the local Secrets Manager.
pub async fn put_secret(name: &str, value: &Value) {
    let client = secrets().await;
    let created = client
        .create_secret()
        .name(name)
        .secret_string(value.to_string())
        .send()
        .await;
    if let Err(e) = created {
        if !e
            .as_service_error()
            .is_some_and(|s| s.is_resource_exists_exception())
        {
            panic!("create {name}: {e:?}");
        }
        client
            .put_secret_value()
            .secret_id(name)
            .secret_string(value.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {name}: {e:?}"));
    }
}

/// The JSON bodies of up to `n` messages of the queue at `url`, waiting at most `within` for
/// them; deleted once read when `delete`.
pub async fn receive_json(url: &str, n: usize, within: Duration, delete: bool) -> Vec<Value> {
    let sqs = sqs().await;
    let mut bodies = Vec::new();
    let deadline = std::time::Instant::now() + within;
    while bodies.len() < n && std::time::Instant::now() < deadline {
        let got = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in got.messages() {
            bodies.push(serde_json::from_str(m.body().unwrap()).unwrap());
            if delete {
                sqs.delete_message()
                    .queue_url(url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
    bodies
}

/// A queue of the test's own in the local SQS (the local trigger does not deliver it), so that
/// the test hands its messages to a worker of its own; deleted when dropped.
pub struct OwnQueue {
    pub url: String,
}

impl OwnQueue {
    pub async fn new() -> OwnQueue {
        let url = sqs()
            .await
            .create_queue()
            .queue_name(format!("dbtools-test-{}", uuid::Uuid::new_v4()))
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_owned();
        OwnQueue { url }
    }

    /// The bodies of `n` messages (waiting at most 20 s for them).
    pub async fn receive(&self, n: usize) -> Vec<Value> {
        let bodies = receive_json(&self.url, n, Duration::from_secs(20), false).await;
        assert_eq!(bodies.len(), n, "{bodies:?}");
        bodies
    }

    /// A queued run of `slugs`, planned by a migrate-all of its own that sends to this queue:
    /// the run's id and its messages.
    pub async fn plan(&self, slugs: &[String]) -> (String, Vec<Value>) {
        let api = runtime::RuntimeApi::start(json!({"slugs": slugs, "inline": false})).await;
        let _planner = api.spawn("migrate-all", &[("MIGRATE_QUEUE_URL", &self.url)]);
        let answer = api
            .wait_response(Duration::from_secs(60))
            .await
            .expect("planned");
        assert_eq!(answer["status"], "queued", "{answer}");
        let id = answer["run_id"].as_str().unwrap().to_owned();
        (id, self.receive(slugs.len()).await)
    }
}

impl Drop for OwnQueue {
    fn drop(&mut self) {
        let url = self.url.clone();
        block_on_own_thread(async move {
            let _ = sqs().await.delete_queue().queue_url(&url).send().await;
        });
    }
}
