//! The real routes over HTTP (`Reply`, `request*`, the tenant shorthands) and the local
//! Lambda Invoke API for the functions that have no route (`invoke*`).

use std::{sync::OnceLock, time::Duration};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::env::api_url;

fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("http client")
    })
}

/// A response as a test looks at it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
    pub request_id: Option<String>,
    pub content_type: Option<String>,
}

impl Reply {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn detail_fields(&self) -> Vec<String> {
        self.body["error"]["details"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|x| x["field"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Error bodies never carry SQL, host names, stack traces or secrets.
    pub fn assert_no_internals(&self) {
        let lower = self.text.to_lowercase();
        for needle in [
            "select ",
            "insert ",
            "update ",
            "create database",
            "drop database",
            "sqlstate",
            "127.0.0.1",
            "localhost",
            "5433",
            "5435",
            "password",
            "postgres://",
            "panicked",
            "backtrace",
            "dbtools/admin",
            "dbtools/servers/",
            "refinery",
        ] {
            assert!(
                !lower.contains(needle),
                "response leaks {needle:?}: {}",
                self.text
            );
        }
    }

    pub fn assert_json_with_request_id(&self) {
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/json"),
            "{self:?}"
        );
        assert!(
            self.request_id.as_deref().is_some_and(|r| !r.is_empty()),
            "no request id: {self:?}"
        );
        if self.status.is_client_error() || self.status.is_server_error() {
            assert_eq!(
                self.body["error"]["request_id"].as_str(),
                self.request_id.as_deref(),
                "{self:?}"
            );
        }
    }
}

pub async fn request(method: Method, path: &str, body: Option<Vec<u8>>) -> Reply {
    request_as(method, path, body, "application/json").await
}

pub async fn request_as(
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    content_type: &str,
) -> Reply {
    request_with_headers(method, path, body, &[("content-type", content_type)]).await
}

pub async fn request_with_headers(
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> Reply {
    send(http(), method, path, body, headers).await
}

/// A request on a client of its own: for code that runs on another runtime than the test's
/// (a `Drop` through [`block_on_own_thread`]), where the shared client's pooled connections,
/// which belong to the test's runtime, would never be driven.
///
/// [`block_on_own_thread`]: crate::block_on_own_thread
pub async fn request_on_own_client(method: Method, path: &str, body: Option<Vec<u8>>) -> Reply {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");
    send(&client, method, path, body, &[]).await
}

async fn send(
    client: &reqwest::Client,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = client.request(method, format!("{}{path}", api_url()));
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    let resp = req.send().await.expect("the local API answers");
    let status = resp.status();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        body,
        text,
        request_id,
        content_type,
    }
}

pub async fn post_tenant(body: &Value) -> Reply {
    request(
        Method::POST,
        "/api/tenants",
        Some(body.to_string().into_bytes()),
    )
    .await
}

/// `POST /api/tenants` with an `Idempotency-Key`.
pub async fn post_with_key(body: &Value, key: &str) -> Reply {
    request_with_headers(
        Method::POST,
        "/api/tenants",
        Some(body.to_string().into_bytes()),
        &[("idempotency-key", key)],
    )
    .await
}

pub async fn post_raw(body: &[u8]) -> Reply {
    request(Method::POST, "/api/tenants", Some(body.to_vec())).await
}

pub async fn get(path: &str) -> Reply {
    request(Method::GET, path, None).await
}

pub async fn delete(path: &str) -> Reply {
    request(Method::DELETE, path, None).await
}

/// Invokes a non-HTTP function through the local Lambda Invoke API.
pub async fn invoke(function: &str, event: &Value) -> (StatusCode, Value) {
    let resp = http()
        .post(format!(
            "{}/2015-03-31/functions/{function}/invocations",
            api_url()
        ))
        .body(event.to_string())
        .send()
        .await
        .expect("the local Lambda API answers");
    let status = resp.status();
    let text = resp.text().await.expect("a payload");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Invokes migrate-all through the local Lambda Invoke API (what `cargo lambda invoke`
/// does). Returns the status and the JSON payload (the report, or `errorType`/`errorMessage`).
pub async fn invoke_migrate_all(event: &Value) -> (StatusCode, Value) {
    invoke("migrate-all", event).await
}
