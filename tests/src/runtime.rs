//! A minimal Lambda Runtime API, so that a test can run a real function binary as its own
//! process (and SIGKILL it at a chosen moment), which `cargo lambda watch` does not survive.
//!
//! It hands out one event on the first `GET .../invocation/next`, records the response, and
//! never answers later polls (the function then idles, as a frozen sandbox would).

use std::{process::Stdio, sync::Arc, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::{Mutex, Notify},
};

pub struct RuntimeApi {
    pub port: u16,
    pub response: Arc<Mutex<Option<Value>>>,
    answered: Arc<Notify>,
}

/// The deadline an event gets unless the test says otherwise (Lambda's longest timeout).
const DEFAULT_DEADLINE: Duration = Duration::from_secs(900);

/// An API Gateway HTTP API (payload v2) event for a request, without IAM authorisation (as
/// the local stack sends it).
pub fn http_event(method: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> Value {
    http_event_from(None, method, path, body, headers)
}

/// The same event as API Gateway sends it for a request signed by `caller` (an IAM principal
/// ARN, in `requestContext.authorizer.iam.userArn`).
pub fn http_event_from(
    caller: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Value {
    let mut h = serde_json::Map::new();
    h.insert("content-type".into(), "application/json".into());
    for (k, v) in headers {
        h.insert((*k).into(), (*v).into());
    }
    let mut event = serde_json::json!({
        "version": "2.0", "routeKey": format!("{method} {path}"), "rawPath": path,
        "rawQueryString": "", "headers": h, "isBase64Encoded": false, "body": body,
        "requestContext": {"accountId": "123456789012", "apiId": "local", "domainName": "localhost",
            "domainPrefix": "localhost", "requestId": "test", "routeKey": format!("{method} {path}"),
            "stage": "$default", "time": "22/Nov/2026:00:00:00 +0000", "timeEpoch": 0,
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                "userAgent": "test"}}
    });
    if let Some(arn) = caller {
        event["requestContext"]["authorizer"] = serde_json::json!({"iam": {
            "accessKey": "AKIAEXAMPLE", "accountId": "123456789012", "callerId": "AIDAEXAMPLE",
            "principalOrgId": null, "userArn": arn, "userId": "AIDAEXAMPLE"}});
    }
    event
}

impl RuntimeApi {
    pub async fn start(event: Value) -> RuntimeApi {
        Self::start_with_deadline(event, DEFAULT_DEADLINE).await
    }

    /// As [`RuntimeApi::start`], the invocation's deadline `deadline` after the function asks
    /// for the event.
    pub async fn start_with_deadline(event: Value, deadline: Duration) -> RuntimeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let response = Arc::new(Mutex::new(None));
        let answered = Arc::new(Notify::new());
        let served = Arc::new(Mutex::new(false));
        let (resp, ev, done) = (response.clone(), event, answered.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(
                    stream,
                    ev.clone(),
                    deadline,
                    served.clone(),
                    resp.clone(),
                    done.clone(),
                ));
            }
        });
        RuntimeApi {
            port,
            response,
            answered,
        }
    }

    /// Starts `binary` (a function of this workspace, debug build) against this API, with the
    /// test's environment (the stack's variables) plus `extra`.
    pub fn spawn(&self, binary: &str, extra: &[(&str, &str)]) -> tokio::process::Child {
        self.spawn_profile("debug", binary, extra)
    }

    /// As [`RuntimeApi::spawn`], from the build profile `profile` (`debug` or `release`).
    pub fn spawn_profile(
        &self,
        profile: &str,
        binary: &str,
        extra: &[(&str, &str)],
    ) -> tokio::process::Child {
        self.spawn_logged(profile, binary, extra, None)
    }

    /// As [`RuntimeApi::spawn_profile`], its log (standard output and error) written to `log`
    /// when given, else dropped.
    pub fn spawn_logged(
        &self,
        profile: &str,
        binary: &str,
        extra: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> tokio::process::Child {
        let target = std::env::var("CARGO_TARGET_DIR")
            .unwrap_or_else(|_| format!("{}/../target", env!("CARGO_MANIFEST_DIR")));
        let path = format!("{target}/{profile}/{binary}");
        let mut cmd = tokio::process::Command::new(&path);
        cmd.env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{}", self.port))
            .env("AWS_LAMBDA_FUNCTION_NAME", binary)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "test")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .kill_on_drop(true);
        let file = log.map(|path| {
            std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        });
        match file {
            Some(f) => {
                let copy = f.try_clone().expect("the log file, twice");
                cmd.stdout(Stdio::from(f)).stderr(Stdio::from(copy));
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap_or_else(|e| panic!("start {path}: {e}"))
    }

    /// The function's response (or error) to the one event, once it arrives; `None` after
    /// `timeout`.
    pub async fn wait_response(&self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.answered.notified();
            if let Some(v) = self.response.lock().await.clone() {
                return Some(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.response.lock().await.clone();
            }
        }
    }
}

async fn serve(
    stream: TcpStream,
    event: Value,
    deadline: Duration,
    served: Arc<Mutex<bool>>,
    response: Arc<Mutex<Option<Value>>>,
    answered: Arc<Notify>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        if path.ends_with("/invocation/next") {
            let already = {
                let mut first = served.lock().await;
                std::mem::replace(&mut *first, true)
            };
            if already {
                // Later polls are never answered.
                std::future::pending::<()>().await;
            }
            let payload = event.to_string();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 lambda-runtime-aws-request-id: test-request\r\nlambda-runtime-deadline-ms: {}\r\n\
                 lambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:123456789012:function:test\r\n\
                 lambda-runtime-trace-id: Root=1-00000000-000000000000000000000000\r\n\r\n",
                payload.len(),
                // in ms since the epoch
                (std::time::SystemTime::now() + deadline)
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis()
            );
            if write.write_all(head.as_bytes()).await.is_err()
                || write.write_all(payload.as_bytes()).await.is_err()
            {
                return;
            }
        } else {
            if path.contains("/response") || path.contains("/error") {
                *response.lock().await = serde_json::from_slice(&body).ok();
                answered.notify_waiters();
            }
            if write
                .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
        }
    }
}
