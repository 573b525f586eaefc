//! migrate-all through the Lambda Invoke API: `runs start` and `runs retry` have no HTTP route.

use reqwest::Method;
use serde_json::Value;

use super::{parse_url, segment, Client};
use crate::error::CliError;

impl Client {
    /// Invokes migrate-all (`--function`) with `event` through the Lambda Invoke API: the
    /// local `cargo lambda watch` (the API's own address) or `lambda.{region}.amazonaws.com`.
    /// Answers its payload; a failed invocation is `CliError::Invocation`.
    pub async fn invoke(&self, event: &Value) -> Result<Value, CliError> {
        let endpoint = match &self.lambda {
            Some(url) => url.clone(),
            None if self.api_is_local() => self.api.clone(),
            None => {
                let region = self.region_for(&self.api).await?;
                parse_url(
                    "lambda endpoint",
                    &format!("https://lambda.{region}.amazonaws.com"),
                )?
            }
        };
        let endpoint_shown = endpoint.to_string();
        let mut url = endpoint;
        url.set_query(None);
        {
            let mut path = url.path_segments_mut().map_err(|_| {
                CliError::Usage(format!(
                    "--lambda-endpoint {endpoint_shown}: not a base URL"
                ))
            })?;
            path.pop_if_empty().extend(["2015-03-31", "functions"]);
            path.push(segment("--function", &self.function)?);
            path.push("invocations");
        }
        let what = format!(
            "the Lambda Invoke API ({})",
            url.origin().ascii_serialization()
        );
        let (status, headers, text) = self
            .send(
                Method::POST,
                url,
                Some(event.to_string().into_bytes()),
                vec![("content-type".to_owned(), "application/json".to_owned())],
                "lambda",
                self.invoke_timeout,
            )
            .await?;
        let payload: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let function_error = headers.contains_key("x-amz-function-error");
        if let Some(error_type) = payload["errorType"].as_str() {
            if function_error || !(200..300).contains(&status) {
                return Err(CliError::Invocation {
                    error_type: error_type.to_owned(),
                    message: payload["errorMessage"].as_str().unwrap_or("").to_owned(),
                });
            }
        }
        if (200..300).contains(&status) && !function_error {
            return Ok(payload);
        }
        // The Lambda service's own error (no such function, access denied, throttled).
        let message = ["message", "Message", "errorMessage"]
            .iter()
            .find_map(|k| payload[*k].as_str())
            .map(str::to_owned);
        match message {
            Some(message) => Err(CliError::Api {
                status,
                code: payload["Type"].as_str().unwrap_or("").to_owned(),
                message: format!("{what}: {message}"),
                details: Vec::new(),
            }),
            None => Err(CliError::Unexpected {
                what,
                status,
                body: text.chars().take(500).collect(),
            }),
        }
    }
}
