//! What a migrate-all invocation asks: its event (the options, or an EventBridge schedule's
//! envelope), read strictly (a typo never runs a real migration of the fleet), the rules
//! between the options, and the errors that end an invocation.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    domain::Slug,
    pg::{error_chain, DbError},
};

/// The options of a run. Unknown fields are refused, so that a typo (`dryRun`) never runs a
/// real migration of the fleet.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MigrateAllRequest {
    #[serde(default)]
    pub dry_run: bool,
    /// Limit the run to these tenants.
    #[serde(default)]
    pub slugs: Option<Vec<String>>,
    /// Override `MIGRATE_CONCURRENCY` for this run.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Open every tenant database, even those the registry records as current.
    #[serde(default)]
    pub verify: bool,
    /// `true`: migrate the tenants in this invocation; `false`: send them to the queue;
    /// unset: the queue when one is configured and the run has more tenants to open than
    /// `MIGRATE_INLINE_MAX_TENANTS`.
    #[serde(default)]
    pub inline: Option<bool>,
    /// The canary wave's size (0: none). Default: 1% of the tenants to open, at least 1 (none
    /// in a verify run, which looks for every drifted tenant).
    #[serde(default)]
    pub canary: Option<usize>,
    /// The brake: a count (`3`) or a share of the tenants to open (`"10%"`). The run halts
    /// once more tenants than that have failed. Default: none.
    #[serde(default)]
    pub max_failures: Option<MaxFailures>,
    /// Retry this run: its failed, halted, not started (and still pending) tenants, in it.
    #[serde(default)]
    pub retry_run: Option<Uuid>,
}

/// `max_failures`: a count, or a percentage of the tenants a run opens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "max_failures: a count of tenants (3) or a percentage (\"10%\")"
)]
pub enum MaxFailures {
    Count(u32),
    Share(String),
}

impl MaxFailures {
    /// The percentage of a `Share` (0 to 100).
    pub(super) fn percent(&self) -> Result<Option<f64>, String> {
        match self {
            MaxFailures::Count(_) => Ok(None),
            MaxFailures::Share(text) => text
                .trim()
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<f64>().ok())
                .filter(|p| (0.0..=100.0).contains(p))
                .map(Some)
                .ok_or_else(|| {
                    format!(
                        "max_failures must be a count (3) or a percentage (\"10%\"), got {:?}",
                        text.chars().take(32).collect::<String>()
                    )
                }),
        }
    }

    /// How many failures of `tenants` the brake tolerates.
    pub(crate) fn of(&self, tenants: usize) -> usize {
        match (self, self.percent()) {
            (MaxFailures::Count(n), _) => *n as usize,
            (_, Ok(Some(p))) => (tenants as f64 * p / 100.0).floor() as usize,
            _ => 0,
        }
    }
}

impl MigrateAllRequest {
    /// The invocation's event: the options, `{}` or `null`, or an EventBridge event (a rule's
    /// or EventBridge Scheduler's envelope, recognised by its `source`, `detail-type` and
    /// `detail`), which is treated as `{}`.
    pub fn from_event(event: Value) -> Result<MigrateAllRequest, MigrateAllError> {
        if event.is_null() || is_eventbridge_envelope(&event) {
            return Ok(MigrateAllRequest::default());
        }
        if !event.is_object() {
            // serde would read a struct from an array, too.
            return Err(MigrateAllError::InvalidRequest(
                "invalid event: expected a JSON object of options, such as {} or \
                 {\"dry_run\": true}"
                    .into(),
            ));
        }
        serde_json::from_value(event)
            .map_err(|e| MigrateAllError::InvalidRequest(format!("invalid event: {e}")))
    }
}

fn is_eventbridge_envelope(event: &Value) -> bool {
    event.get("source").is_some_and(Value::is_string)
        && event.get("detail-type").is_some_and(Value::is_string)
        && event.get("detail").is_some()
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateAllError {
    #[error("invalid event: {0}")]
    InvalidRequest(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("system database migration failed: {0}")]
    SystemMigration(String),
    #[error("migrate-all failed: {0}")]
    Unexpected(String),
}

impl From<DbError> for MigrateAllError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) | DbError::TimedOut(m) => MigrateAllError::Unavailable(m),
            other => MigrateAllError::Unexpected(error_chain(&other)),
        }
    }
}

impl MigrateAllError {
    /// The `errorType` Lambda reports.
    pub fn error_type(&self) -> &'static str {
        match self {
            MigrateAllError::InvalidRequest(_) => "InvalidRequest",
            MigrateAllError::Unavailable(_) => "DatabaseUnavailable",
            MigrateAllError::SystemMigration(_) => "SystemMigrationFailed",
            MigrateAllError::Unexpected(_) => "Unexpected",
        }
    }
}

/// The request's slugs, parsed; all the problems at once.
pub(super) fn parse_slugs(list: Option<&[String]>) -> Result<Option<Vec<String>>, MigrateAllError> {
    let Some(list) = list else { return Ok(None) };
    let mut parsed = Vec::new();
    let mut bad = Vec::new();
    for s in list {
        match Slug::parse(s) {
            Ok(slug) => parsed.push(slug.as_str().to_owned()),
            Err(e) => bad.push(format!("{:?}: {e}", s.chars().take(64).collect::<String>())),
        }
    }
    if bad.is_empty() {
        Ok(Some(parsed))
    } else {
        Err(MigrateAllError::InvalidRequest(format!(
            "invalid slugs: {}",
            bad.join("; ")
        )))
    }
}

/// The rules between a run's options.
pub(super) fn check_rollout(
    req: &MigrateAllRequest,
    has_queue: bool,
) -> Result<(), MigrateAllError> {
    let invalid = |m: &str| Err(MigrateAllError::InvalidRequest(m.into()));
    if req.retry_run.is_some()
        && (req.slugs.is_some() || req.canary.is_some() || req.dry_run || req.verify)
    {
        return invalid(
            "retry_run retries the run's own tenants: it takes no slugs, canary, verify nor \
             dry_run",
        );
    }
    if req.dry_run && req.inline == Some(false) {
        return invalid(
            "a dry run is always inline: it changes nothing and answers with the report",
        );
    }
    if req.inline == Some(false) && !has_queue {
        return invalid("inline: false needs a queue, and MIGRATE_QUEUE_URL is not set");
    }
    if let Some(m) = &req.max_failures {
        m.percent().map_err(MigrateAllError::InvalidRequest)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventbridge_envelopes_are_an_empty_request() {
        for event in [
            serde_json::json!({"version": "0", "id": "x", "detail-type": "Scheduled Event",
                "source": "aws.scheduler", "account": "123456789012", "time": "2026-11-22T03:00:00Z",
                "region": "us-east-1", "resources": [], "detail": {}}),
            serde_json::json!({"version": "0", "id": "y", "detail-type": "Scheduled Event",
                "source": "aws.events", "detail": {}}),
            serde_json::json!({}),
            Value::Null,
        ] {
            assert_eq!(
                MigrateAllRequest::from_event(event.clone()).unwrap(),
                MigrateAllRequest::default(),
                "{event}"
            );
        }
    }

    #[test]
    fn canary_waves_and_the_brake_are_sized_from_the_tenants_to_open() {
        // 1% of the tenants to open, at least one, at most all of them.
        for (asked, work, canary) in [
            (None, 0, 0),
            (None, 1, 1),
            (None, 100, 1),
            (None, 101, 2),
            (None, 250, 3),
            (Some(0), 100, 0),
            (Some(5), 3, 3),
        ] {
            assert_eq!(
                super::super::rollout::canary_size(asked, work),
                canary,
                "{asked:?} of {work}"
            );
        }
        let share = |s: &str| MaxFailures::Share(s.into());
        assert_eq!(MaxFailures::Count(3).of(100), 3);
        assert_eq!(share("10%").of(55), 5);
        assert_eq!(share(" 2.5 % ").of(1000), 25);
        assert_eq!(share("0%").of(1000), 0);
        for bad in ["10", "ten%", "101%", "-1%", ""] {
            assert!(share(bad).percent().is_err(), "{bad:?}");
        }
        let req = MigrateAllRequest::from_event(serde_json::json!({
            "max_failures": "10%", "canary": 2, "inline": false
        }))
        .unwrap();
        assert_eq!(req.max_failures, Some(share("10%")));
        assert_eq!((req.canary, req.inline), (Some(2), Some(false)));
        assert_eq!(
            MigrateAllRequest::from_event(serde_json::json!({"max_failures": 4}))
                .unwrap()
                .max_failures,
            Some(MaxFailures::Count(4))
        );
        // Options that contradict each other are refused before anything runs.
        let retry = MigrateAllRequest {
            retry_run: Some(Uuid::nil()),
            canary: Some(1),
            ..MigrateAllRequest::default()
        };
        assert!(check_rollout(&retry, true).is_err());
        let queued_without_queue = MigrateAllRequest {
            inline: Some(false),
            ..MigrateAllRequest::default()
        };
        assert!(check_rollout(&queued_without_queue, false).is_err());
        assert!(check_rollout(&queued_without_queue, true).is_ok());
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        for (event, needle) in [
            (
                serde_json::json!({"dryRun": true}),
                "unknown field `dryRun`",
            ),
            (serde_json::json!({"dry_run": "yes"}), "invalid type"),
            (serde_json::json!({"detail": {}}), "unknown field `detail`"),
            (serde_json::json!([]), "expected a JSON object"),
            (serde_json::json!([true]), "expected a JSON object"),
        ] {
            let e = MigrateAllRequest::from_event(event.clone()).unwrap_err();
            assert_eq!(e.error_type(), "InvalidRequest", "{event}");
            assert!(e.to_string().contains(needle), "{event}: {e}");
        }
        let ok = MigrateAllRequest::from_event(
            serde_json::json!({"dry_run": true, "verify": true, "slugs": ["acme"], "concurrency": 2}),
        )
        .unwrap();
        assert!(ok.dry_run && ok.verify);
        assert_eq!(ok.concurrency, Some(2));
    }
}
