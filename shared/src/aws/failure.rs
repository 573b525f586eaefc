//! What an SDK call's error was, told apart once for every client (SQS, EventBridge): a
//! passing failure worth another attempt later, or a refusal. Without the endpoint: the SDK's
//! display of a dispatch failure names the URL it tried.

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

/// A failed call, with the service's error code or the kind of failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Unreachable, too slow, throttled, or the service's own fault.
    Passing(String),
    /// Refused: permissions, no such resource, a bad request.
    Refused(String),
}

pub(crate) fn classify<E, R>(e: &SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata,
{
    match e {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("unknown error").to_owned();
            if code.contains("Throttl") || code.contains("Internal") {
                Failure::Passing(code)
            } else {
                Failure::Refused(code)
            }
        }
        SdkError::TimeoutError(_) => Failure::Passing("timed out".into()),
        SdkError::DispatchFailure(_) => Failure::Passing("connection failed".into()),
        SdkError::ResponseError(_) => Failure::Passing("unreadable answer".into()),
        SdkError::ConstructionFailure(_) => Failure::Refused("bad request".into()),
        _ => Failure::Passing("unknown error".into()),
    }
}
