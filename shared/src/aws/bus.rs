//! The lifecycle events' bus (EventBridge `PutEvents`): up to ten entries a call, EventBridge's
//! maximum. Every call is bounded as the other clients' are; an error names the kind of
//! failure and EventBridge's code, never the endpoint.

use std::time::Duration;

use aws_sdk_eventbridge::{error::SdkError, primitives::DateTime, types::PutEventsRequestEntry};
use futures_util::FutureExt;
use tokio::sync::OnceCell;

use super::failure::{self, Failure};

/// EventBridge's largest `PutEvents`.
pub const BATCH: usize = 10;

/// One event as it goes on the bus.
#[derive(Debug, Clone)]
pub struct Entry {
    pub detail_type: String,
    /// The detail, JSON.
    pub detail: String,
    pub time: std::time::SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// EventBridge could not be reached or did not answer in time.
    #[error("the event bus is unreachable ({0})")]
    Unavailable(String),
    /// EventBridge refused the call (permissions, no such bus, a bad request).
    #[error("the event bus refused the events ({0})")]
    Refused(String),
}

fn classify<E, R>(e: &SdkError<E, R>) -> BusError
where
    E: aws_sdk_eventbridge::error::ProvideErrorMetadata,
{
    match failure::classify(e) {
        Failure::Passing(code) => BusError::Unavailable(code),
        Failure::Refused(code) => BusError::Refused(code),
    }
}

async fn client() -> &'static aws_sdk_eventbridge::Client {
    static CLIENT: OnceCell<aws_sdk_eventbridge::Client> = OnceCell::const_new();
    CLIENT
        .get_or_init(|| {
            async {
                let config =
                    crate::aws::config(Duration::from_secs(2), Duration::from_secs(5)).await;
                aws_sdk_eventbridge::Client::new(&config)
            }
            .boxed()
        })
        .await
}

/// Puts up to [`BATCH`] events on `bus` with `source`; returns, for each entry in order,
/// whether EventBridge took it (an entry it refused stays for the next attempt).
pub async fn put(bus: &str, source: &str, entries: &[Entry]) -> Result<Vec<bool>, BusError> {
    let request = entries
        .iter()
        .map(|e| {
            PutEventsRequestEntry::builder()
                .event_bus_name(bus)
                .source(source)
                .detail_type(e.detail_type.as_str())
                .detail(e.detail.as_str())
                .time(DateTime::from(e.time))
                .build()
        })
        .collect::<Vec<_>>();
    let out = client()
        .await
        .put_events()
        .set_entries(Some(request))
        .send()
        .boxed()
        .await
        .map_err(|e| classify(&e))?;
    let results = out.entries();
    // An entry without an event id was refused (its error code says why).
    Ok((0..entries.len())
        .map(|i| {
            results
                .get(i)
                .is_some_and(|r| r.event_id().is_some() && r.error_code().is_none())
        })
        .collect())
}
