//! AWS: Secrets Manager ([`secrets`]), the fan-out queue ([`queue`]) and the lifecycle events'
//! bus ([`bus`]), each client made
//! from the SDK's shared configuration as this crate makes it: bounded calls
//! (connect, each attempt, the whole operation), so that an unreachable endpoint is a quick
//! error and never a hang. The SDK honours `AWS_ENDPOINT_URL` and the per-service
//! `AWS_ENDPOINT_URL_*` variables, which is how the local stack points clients at moto.

pub mod bus;
mod failure;
pub mod queue;
pub mod secret_versions;
pub mod secrets;

use std::time::Duration;

use aws_config::{timeout::TimeoutConfig, BehaviorVersion, SdkConfig};

pub(crate) async fn config(attempt: Duration, operation: Duration) -> SdkConfig {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(attempt)
        .operation_timeout(operation)
        .build();
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .load()
        .await
}
