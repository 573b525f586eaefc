//! The lifecycle events as a consumer sees them: a rule of the test's own on the local bus
//! (`EVENT_BUS_NAME`) that copies the events about the test's tenants or runs to a queue of
//! the test's own, so that tests running at once never read each other's events.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{
    aws::{local_aws, receive_json, sqs, OwnQueue},
    env::var,
    locks::block_on_own_thread,
};

async fn eventbridge() -> aws_sdk_eventbridge::Client {
    aws_sdk_eventbridge::Client::new(&local_aws(&var("AWS_ENDPOINT_URL_EVENTBRIDGE")).await)
}

/// A queue that receives the events whose `detail.{field}` is one of `values`, through a rule
/// on the stack's bus; both removed when dropped (the rule first).
pub struct EventTap {
    rule: String,
    /// Dropped after the rule is removed (a queue of the test's own, deleted when dropped).
    queue: OwnQueue,
}

impl EventTap {
    /// The events about these tenants (`detail.slug`).
    pub async fn slugs(slugs: &[&str]) -> EventTap {
        Self::on("slug", slugs).await
    }

    /// The events about these runs (`detail.run_id`).
    pub async fn runs(ids: &[&str]) -> EventTap {
        Self::on("run_id", ids).await
    }

    async fn on(field: &str, values: &[&str]) -> EventTap {
        Self::pattern(json!({"source": ["dbtools"], "detail": {field: values}})).await
    }

    /// The events that match an EventBridge event pattern.
    pub async fn pattern(pattern: Value) -> EventTap {
        let name = format!("dbtools-test-events-{}", uuid::Uuid::new_v4().simple());
        let queue = OwnQueue::new().await;
        let arn = sqs()
            .await
            .get_queue_attributes()
            .queue_url(&queue.url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
            .cloned()
            .expect("the queue's ARN");
        let bus = var("EVENT_BUS_NAME");
        let events = eventbridge().await;
        events
            .put_rule()
            .name(&name)
            .event_bus_name(&bus)
            .event_pattern(pattern.to_string())
            .send()
            .await
            .unwrap();
        events
            .put_targets()
            .rule(&name)
            .event_bus_name(&bus)
            .targets(
                aws_sdk_eventbridge::types::Target::builder()
                    .id("queue")
                    .arn(arn)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        EventTap { rule: name, queue }
    }

    /// The events (EventBridge's envelopes: `detail-type`, `source`, `detail`, ...) that
    /// arrive within `within`, stopping once `n` have.
    pub async fn receive(&self, n: usize, within: Duration) -> Vec<Value> {
        receive_json(&self.queue.url, n, within, true).await
    }

    /// The events whose `detail.{field}` is `value`, among those that arrive until one does
    /// (at most 15 s) and for a second more; the others are dropped.
    pub async fn matching(&self, field: &str, value: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut ours = Vec::new();
        while ours.is_empty() && Instant::now() < deadline {
            ours.extend(
                self.receive(10, Duration::from_secs(1))
                    .await
                    .into_iter()
                    .filter(|e| e["detail"][field] == value),
            );
        }
        ours.extend(
            self.receive(10, Duration::from_secs(1))
                .await
                .into_iter()
                .filter(|e| e["detail"][field] == value),
        );
        ours
    }

    /// The events of `detail_type` among those that arrive until one does (at most
    /// `within`) and for two seconds more; the others are dropped.
    pub async fn of_type(&self, detail_type: &str, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let of_type = |events: Vec<Value>| {
            events
                .into_iter()
                .filter(|e| e["detail-type"] == detail_type)
                .collect::<Vec<_>>()
        };
        let mut ours = Vec::new();
        while ours.is_empty() && Instant::now() < deadline {
            ours.extend(of_type(self.receive(10, Duration::from_secs(1)).await));
        }
        ours.extend(of_type(self.receive(10, Duration::from_secs(2)).await));
        ours
    }

    /// Exactly `n` events, then none for a second more (no duplicate, no stray event).
    pub async fn exactly(&self, n: usize) -> Vec<Value> {
        let events = self.receive(n, Duration::from_secs(15)).await;
        let more = self.receive(1, Duration::from_secs(1)).await;
        assert!(
            events.len() == n && more.is_empty(),
            "expected {n} events, got {events:#?} and then {more:#?}"
        );
        events
    }
}

impl Drop for EventTap {
    fn drop(&mut self) {
        let rule = self.rule.clone();
        block_on_own_thread(async move {
            let bus = var("EVENT_BUS_NAME");
            let events = eventbridge().await;
            let _ = events
                .remove_targets()
                .rule(&rule)
                .event_bus_name(&bus)
                .ids("queue")
                .send()
                .await;
            let _ = events
                .delete_rule()
                .name(&rule)
                .event_bus_name(&bus)
                .send()
                .await;
        });
    }
}

/// Puts one event on the stack's bus as the product would (`source` `dbtools`): the bench's
/// same-work floor of a create, which also tells its outcome.
pub async fn put_event(detail_type: &str, detail: &Value) {
    let out = eventbridge()
        .await
        .put_events()
        .entries(
            aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .event_bus_name(var("EVENT_BUS_NAME"))
                .source("dbtools")
                .detail_type(detail_type)
                .detail(detail.to_string())
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutEvents: {e:?}"));
    assert_eq!(out.failed_entry_count(), 0, "{out:?}");
}

/// The one event of `detail_type` among `events`.
pub fn event_of<'a>(events: &'a [Value], detail_type: &str) -> &'a Value {
    let of: Vec<&Value> = events
        .iter()
        .filter(|e| e["detail-type"] == detail_type)
        .collect();
    assert_eq!(of.len(), 1, "one {detail_type} in {events:#?}");
    of[0]
}
