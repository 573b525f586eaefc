//! What can go wrong, and the exit code each failure ends the process with.

use std::time::Duration;

use serde_json::Value;

/// Exit codes (docs/cli.md, "Exit codes").
pub const EXIT_ERROR: u8 = 1;
/// A usage error: clap's own (unknown flag, missing argument, a value of the wrong type), and
/// a value the CLI refuses before any call (`CliError::Usage`).
pub const EXIT_USAGE: u8 = 2;
/// A run ended `failed` or `halted`, or stalled; a move ended `failed` or `cancelled`, or
/// stalled; a drain left tenants behind.
pub const EXIT_UNSUCCESSFUL: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API answered an error body: `{"error": {"code", "message", "details"}}`, or API
    /// Gateway's own `{"message"}` (a 403 of a bad signature, a 429).
    #[error("{message}{}", details_suffix(.details))]
    Api {
        status: u16,
        code: String,
        message: String,
        details: Vec<(String, String)>,
    },
    /// The API answered something that is not the expected JSON.
    #[error("unexpected answer from {what} (HTTP {status}): {body}")]
    Unexpected {
        what: String,
        status: u16,
        body: String,
    },
    /// An AWS service (Secrets Manager) refused: its error code and message.
    #[error("{what} refused ({code}): {message}")]
    Service {
        what: String,
        code: String,
        message: String,
    },
    /// No answer: refused, timed out, TLS.
    #[error("could not reach {what}: {why}")]
    Transport { what: String, why: String },
    /// migrate-all's invocation failed (`errorType`, `errorMessage`).
    #[error("migrate-all failed ({error_type}): {message}")]
    Invocation { error_type: String, message: String },
    /// Signing or credentials.
    #[error("signing: {0}")]
    Signing(String),
    /// A flag or argument the CLI refuses before any call (exit 2, as clap's own).
    #[error("{0}")]
    Usage(String),
    /// What the CLI read cannot be used (a secret without a host, say).
    #[error("{0}")]
    Invalid(String),
    /// Stdout could not be written (a full disk); a closed pipe is `StdoutClosed`.
    #[error("could not write to stdout: {0}")]
    Output(String),
    /// The reader of stdout went away (`| head`): not a failure, nothing more to say.
    #[error("stdout closed")]
    StdoutClosed,
    /// A run or move that ended without success (the summary was printed already).
    #[error("{0}")]
    Unsuccessful(String),
}

fn details_suffix(details: &[(String, String)]) -> String {
    details
        .iter()
        .map(|(field, message)| format!("\n  {field}: {message}"))
        .collect()
}

impl CliError {
    /// Reads an API error body; anything else is `Unexpected`.
    pub fn from_body(what: &str, status: u16, text: &str) -> CliError {
        let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let error = &body["error"];
        if let Some(message) = error["message"].as_str() {
            return CliError::Api {
                status,
                code: error["code"].as_str().unwrap_or("").to_owned(),
                message: message.to_owned(),
                details: error["details"]
                    .as_array()
                    .map(|ds| {
                        ds.iter()
                            .map(|d| {
                                (
                                    d["field"].as_str().unwrap_or("").to_owned(),
                                    d["message"].as_str().unwrap_or("").to_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            };
        }
        // API Gateway's own answers (a signature refused, a throttle) are `{"message": ...}`.
        if let Some(message) = body["message"].as_str().or(body["Message"].as_str()) {
            return CliError::Api {
                status,
                code: String::new(),
                message: format!("{what} answered HTTP {status}: {message}"),
                details: Vec::new(),
            };
        }
        CliError::Unexpected {
            what: what.to_owned(),
            status,
            body: text.chars().take(500).collect(),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unsuccessful(_) => EXIT_UNSUCCESSFUL,
            CliError::Usage(_) => EXIT_USAGE,
            CliError::StdoutClosed => 0,
            // The run itself went wrong (a tenant failed, it halted, ...), not the request.
            CliError::Invocation { error_type, .. }
                if !matches!(
                    error_type.as_str(),
                    "InvalidRequest"
                        | "DatabaseUnavailable"
                        | "SystemMigrationFailed"
                        | "QueueUnavailable"
                        | "Unexpected"
                ) =>
            {
                EXIT_UNSUCCESSFUL
            }
            _ => EXIT_ERROR,
        }
    }

    /// A failure worth asking again while following a run or a move: no answer, a throttle
    /// (429), or the API's 500/502/503/504.
    pub fn is_transient(&self) -> bool {
        match self {
            CliError::Transport { .. } => true,
            CliError::Api { status, .. } | CliError::Unexpected { status, .. } => {
                matches!(status, 429 | 500 | 502 | 503 | 504)
            }
            _ => false,
        }
    }
}

impl From<std::io::Error> for CliError {
    /// A write to stdout that failed.
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::StdoutClosed
        } else {
            CliError::Output(e.to_string())
        }
    }
}

/// Runs `f` until it succeeds or fails for good; a transient failure is tried again after
/// `pause`, at most `tries` times in a row (a watch outlives a function's cold start or a
/// PostgreSQL failover, not an API that is gone).
pub async fn patiently<T, F, Fut>(tries: u32, pause: Duration, mut f: F) -> Result<T, CliError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CliError>>,
{
    let mut failed = 0;
    loop {
        match f().await {
            Err(e) if e.is_transient() && failed + 1 < tries => {
                failed += 1;
                eprintln!("{e} (trying again, {failed} of {})", tries - 1);
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_print_the_message_and_each_field() {
        let e = CliError::from_body(
            "the API",
            400,
            r#"{"error": {"code": "VALIDATION_ERROR", "message": "Invalid slug format",
                "details": [{"field": "slug", "message": "must start with a lowercase letter"}],
                "request_id": "r"}}"#,
        );
        assert_eq!(
            e.to_string(),
            "Invalid slug format\n  slug: must start with a lowercase letter"
        );
        assert_eq!(e.exit_code(), EXIT_ERROR);
        let e = CliError::from_body("the API", 502, "Bad Gateway");
        assert!(e.to_string().contains("HTTP 502"), "{e}");
        assert!(e.is_transient());
        let e = CliError::Invocation {
            error_type: "TenantMigrationsFailed".into(),
            message: "1 of 3".into(),
        };
        assert_eq!(e.exit_code(), EXIT_UNSUCCESSFUL);
    }

    #[test]
    fn api_gateway_messages_are_read_and_throttles_are_transient() {
        let e = CliError::from_body(
            "the API",
            403,
            r#"{"message":"The request signature we calculated does not match"}"#,
        );
        assert_eq!(
            e.to_string(),
            "the API answered HTTP 403: The request signature we calculated does not match"
        );
        assert!(!e.is_transient());
        let e = CliError::from_body("the API", 429, r#"{"message":"Too Many Requests"}"#);
        assert!(e.is_transient(), "{e}");
    }

    #[test]
    fn usage_errors_exit_2_and_a_closed_pipe_exits_0() {
        assert_eq!(CliError::Usage("--max-failures".into()).exit_code(), 2);
        assert_eq!(CliError::Invalid("no host".into()).exit_code(), 1);
        let pipe = CliError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(pipe.exit_code(), 0);
        let full = CliError::from(std::io::Error::other("No space left on device"));
        assert_eq!(full.exit_code(), 1);
        assert!(full.to_string().contains("No space left"), "{full}");
    }
}
