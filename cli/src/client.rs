//! The HTTP side: the API's routes and the Lambda Invoke API, each call with a timeout and,
//! when the address is not this machine, signed with SigV4 (see `sign`).

use std::time::Duration;

use reqwest::{Method, Url};
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::{
    error::CliError,
    sign::{is_local, region_of_api_host, Signer, Unsigned},
};

/// Where and how to call.
pub struct Settings {
    pub api: String,
    pub lambda_endpoint: Option<String>,
    pub function: String,
    pub region: Option<String>,
    pub timeout: Duration,
    pub invoke_timeout: Duration,
}

pub struct Client {
    http: reqwest::Client,
    api: Url,
    lambda: Option<Url>,
    function: String,
    region: Option<String>,
    timeout: Duration,
    invoke_timeout: Duration,
    signer: OnceCell<Signer>,
}

fn parse_url(flag: &str, raw: &str) -> Result<Url, CliError> {
    let url = Url::parse(raw).map_err(|e| CliError::Usage(format!("{flag} {raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(CliError::Usage(format!(
            "{flag} {raw:?}: expected an http(s) URL such as http://127.0.0.1:9000"
        )));
    }
    Ok(url)
}

/// A path segment a user typed: `.` and `..` (which a URL would resolve away) and empty ones
/// cannot name anything.
fn segment<'a>(what: &str, s: &'a str) -> Result<&'a str, CliError> {
    if s.is_empty() || s == "." || s == ".." {
        return Err(CliError::Usage(format!("{what} {s:?} cannot exist")));
    }
    Ok(s)
}

impl Client {
    pub fn new(s: Settings) -> Result<Client, CliError> {
        let api = parse_url("--api", &s.api)?;
        let lambda = s
            .lambda_endpoint
            .as_deref()
            .map(|raw| parse_url("--lambda-endpoint", raw))
            .transpose()?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5).min(s.timeout))
            .user_agent(concat!("dbtools-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Transport {
                what: "the HTTP client".into(),
                why: e.to_string(),
            })?;
        Ok(Client {
            http,
            api,
            lambda,
            function: s.function,
            region: s.region,
            timeout: s.timeout,
            invoke_timeout: s.invoke_timeout,
            signer: OnceCell::new(),
        })
    }

    /// Whether the API is this machine's (`make dev`): nothing is signed then.
    pub fn api_is_local(&self) -> bool {
        is_local(&self.api)
    }

    /// The URL of an API route: `segments` under the API's base, each encoded.
    pub fn url(
        &self,
        segments: &[(&str, &str)],
        query: &[(&str, String)],
    ) -> Result<Url, CliError> {
        let mut url = self.api.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| CliError::Usage(format!("--api {}: not a base URL", self.api)))?;
            path.pop_if_empty();
            for (what, s) in segments {
                path.push(segment(what, s)?);
            }
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(url)
    }

    async fn signer(&self, region_hint: Option<String>) -> Result<&Signer, CliError> {
        self.signer
            .get_or_try_init(|| Signer::load(self.region.clone().or(region_hint)))
            .await
    }

    /// Sends one request (signed for `service` unless local) and answers the status, the
    /// headers and the body.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        headers: Vec<(String, String)>,
        service: &str,
        timeout: Duration,
    ) -> Result<(u16, reqwest::header::HeaderMap, String), CliError> {
        let what = url.origin().ascii_serialization();
        let body = body.unwrap_or_default();
        let mut all = headers;
        if !is_local(&url) {
            let region = region_of_api_host(&url).or_else(|| region_of_api_host(&self.api));
            let signer = self.signer(region).await?;
            let signed = signer.sign(
                &Unsigned {
                    method: method.as_str(),
                    url: url.as_str(),
                    headers: &all,
                    body: &body,
                },
                service,
            )?;
            all.extend(signed);
        }
        let mut req = self.http.request(method, url).timeout(timeout);
        for (k, v) in &all {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| transport(&what, &e, timeout))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp
            .text()
            .await
            .map_err(|e| transport(&what, &e, timeout))?;
        Ok((status, headers, text))
    }

    /// Calls an API route; the JSON body of a 2xx answer, else the API's error.
    pub async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        extra: &[(&str, String)],
    ) -> Result<Value, CliError> {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        headers.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let body = body.map(|b| b.to_string().into_bytes());
        let (status, _, text) = self
            .send(method, url, body, headers, "execute-api", self.timeout)
            .await?;
        if (200..300).contains(&status) {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_str(&text).map_err(|_| CliError::Unexpected {
                what: "the API".into(),
                status,
                body: text.chars().take(500).collect(),
            })
        } else {
            Err(CliError::from_body("the API", status, &text))
        }
    }

    pub async fn get(
        &self,
        segments: &[(&str, &str)],
        query: &[(&str, String)],
    ) -> Result<Value, CliError> {
        let url = self.url(segments, query)?;
        self.call(Method::GET, url, None, &[]).await
    }

    pub async fn post(&self, segments: &[(&str, &str)], body: &Value) -> Result<Value, CliError> {
        let url = self.url(segments, &[])?;
        self.call(Method::POST, url, Some(body), &[]).await
    }

    /// Invokes migrate-all (`--function`) with `event` through the Lambda Invoke API: the
    /// local `cargo lambda watch` (the API's own address) or `lambda.{region}.amazonaws.com`.
    /// Answers its payload; a failed invocation is `CliError::Invocation`.
    pub async fn invoke(&self, event: &Value) -> Result<Value, CliError> {
        let endpoint = match &self.lambda {
            Some(url) => url.clone(),
            None if self.api_is_local() => self.api.clone(),
            None => {
                let region = match &self.region {
                    Some(r) => r.clone(),
                    None => match region_of_api_host(&self.api) {
                        Some(r) => r,
                        None => self.signer(None).await?.region.clone(),
                    },
                };
                parse_url(
                    "lambda endpoint",
                    &format!("https://lambda.{region}.amazonaws.com"),
                )?
            }
        };
        let mut url = endpoint;
        url.set_query(None);
        {
            let mut path = url.path_segments_mut().map_err(|_| {
                CliError::Usage(format!("--lambda-endpoint {}: not a base URL", self.api))
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

fn transport(what: &str, e: &reqwest::Error, timeout: Duration) -> CliError {
    let why = if e.is_timeout() {
        format!("no answer within {} s", timeout.as_secs())
    } else if e.is_connect() {
        "connection refused or unreachable (check --api; locally: is `make dev` running?)".into()
    } else {
        let mut s = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(inner) = source {
            s.push_str(": ");
            s.push_str(&inner.to_string());
            source = inner.source();
        }
        s
    };
    CliError::Transport {
        what: what.to_owned(),
        why,
    }
}
