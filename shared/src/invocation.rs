//! What an operation knows about the invocation that runs it, besides the request: by when it
//! must have answered, and who asked.

use std::time::{Duration, Instant, SystemTime};

/// The time an HTTP invocation gets when its runtime gave no deadline, or one already past
/// (`cargo lambda watch` sends a fixed deadline in 1970): API Gateway's own limit, about.
pub const HTTP_BUDGET: Duration = Duration::from_secs(25);
/// The same for a job such as migrate-all: Lambda's longest timeout.
pub const JOB_BUDGET: Duration = Duration::from_secs(900);

/// Milliseconds, for a log field (the step timings `make bench` reads from the logs).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// When the answer must be on its way: the Lambda deadline less a margin for answering.
    pub deadline: Instant,
    /// The caller's IAM principal (API Gateway's `requestContext.authorizer.iam.userArn`);
    /// `None` without IAM authorisation (the local stack).
    pub caller: Option<String>,
}

impl Invocation {
    /// From the Lambda deadline (`SystemTime`), keeping `margin` to answer. A deadline that is
    /// missing or already past gives `fallback` from now ([`HTTP_BUDGET`], [`JOB_BUDGET`]).
    pub fn new(
        lambda_deadline: SystemTime,
        margin: Duration,
        fallback: Duration,
        caller: Option<String>,
    ) -> Self {
        let left = lambda_deadline
            .duration_since(SystemTime::now())
            .ok()
            .and_then(|d| d.checked_sub(margin))
            .filter(|d| !d.is_zero())
            .unwrap_or(fallback);
        Invocation {
            deadline: Instant::now() + left,
            caller: caller.filter(|c| !c.is_empty()),
        }
    }

    /// An invocation with `budget` from now and no caller (tests, tools).
    pub fn within(budget: Duration) -> Self {
        Invocation {
            deadline: Instant::now() + budget,
            caller: None,
        }
    }

    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_keeps_a_margin_and_survives_a_missing_one() {
        let inv = Invocation::new(
            SystemTime::now() + Duration::from_secs(10),
            Duration::from_secs(1),
            HTTP_BUDGET,
            Some(String::new()),
        );
        let left = inv.time_left();
        assert!(
            left <= Duration::from_secs(9) && left > Duration::from_secs(8),
            "{left:?}"
        );
        assert_eq!(inv.caller, None, "an empty principal is none");
        // What cargo lambda watch sends: 600000 ms after the epoch.
        let watch = SystemTime::UNIX_EPOCH + Duration::from_millis(600_000);
        let past = Invocation::new(watch, Duration::from_secs(1), JOB_BUDGET, None);
        assert!(past.time_left() > Duration::from_secs(890));
    }
}
