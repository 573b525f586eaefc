//! The HTTP side: the API's routes and the Lambda Invoke API (`invoke`), each call with a
//! timeout and, when the address is not this machine, signed with SigV4 (see `sign`).

use std::time::Duration;

use reqwest::{Method, Url};
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::{
    error::CliError,
    sign::{is_local, region_of_api_host, Signer, Unsigned},
};

mod invoke;

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

/// A run's or a move's id as typed: a UUID (`6f1c0a3e-...`, 36 characters). Anything else is
/// a usage error, caught before any call.
pub fn id_arg<'a>(what: &str, s: &'a str) -> Result<&'a str, CliError> {
    let groups: Vec<&str> = s.split('-').collect();
    let shape = groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12];
    if shape && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
        Ok(s)
    } else {
        Err(CliError::Usage(format!(
            "{what} {s:?}: expected a UUID such as 6f1c0a3e-2b4d-4c8e-9a10-3d5e7f901234"
        )))
    }
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
            url.set_query(Some(&encode_query(query)));
        }
        Ok(url)
    }

    /// Seconds given to each API call (`--timeout`); Secrets Manager gets them too.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn signer(&self) -> Result<&Signer, CliError> {
        self.signer.get_or_try_init(Signer::load).await
    }

    /// The region to sign a call to `url` for: `--region`, else the called host's
    /// (`lambda.{region}...`), else the API host's, else the AWS configuration's.
    async fn region_for(&self, url: &Url) -> Result<String, CliError> {
        let named = self
            .region
            .clone()
            .or_else(|| region_of_api_host(url))
            .or_else(|| region_of_api_host(&self.api));
        match named {
            Some(r) => Ok(r),
            None => self.signer().await?.region(),
        }
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
            let region = self.region_for(&url).await?;
            let signed = self
                .signer()
                .await?
                .sign(
                    &Unsigned {
                        method: method.as_str(),
                        url: url.as_str(),
                        headers: &all,
                        body: &body,
                    },
                    service,
                    &region,
                )
                .await?;
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
}

/// `k=v&k2=v2`, each key and value percent-encoded but for RFC 3986's unreserved characters
/// (a space is `%20`, never `+`): the form SigV4 signs, so that what is sent is what is signed.
fn encode_query(query: &[(&str, String)]) -> String {
    fn encode(s: &str, out: &mut String) {
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in query.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(k, &mut out);
        out.push('=');
        encode(v, &mut out);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client(api: &str) -> Client {
        Client::new(Settings {
            api: api.into(),
            lambda_endpoint: None,
            function: "migrate-all".into(),
            region: None,
            timeout: Duration::from_secs(5),
            invoke_timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    #[test]
    fn query_values_are_encoded_as_sigv4_signs_them() {
        assert_eq!(
            encode_query(&[("status", "a b+c/é".into()), ("limit", "5".into())]),
            "status=a%20b%2Bc%2F%C3%A9&limit=5"
        );
        let c = client("https://abc.execute-api.eu-west-1.amazonaws.com/prod");
        let url = c
            .url(
                &[("", "api"), ("run", "x y")],
                &[("cursor", "a b".into()), ("limit", "2".into())],
            )
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://abc.execute-api.eu-west-1.amazonaws.com/prod/api/x%20y?cursor=a%20b&limit=2"
        );
        assert!(c.url(&[("run", "..")], &[]).is_err());
    }

    #[tokio::test]
    async fn the_signing_region_is_the_flag_then_the_called_host_then_the_api_host() {
        let api = "https://abc.execute-api.eu-west-1.amazonaws.com/prod";
        let lambda = Url::parse("https://lambda.us-west-2.amazonaws.com/").unwrap();
        let other = Url::parse("https://example.com/").unwrap();
        let c = client(api);
        assert_eq!(c.region_for(&lambda).await.unwrap(), "us-west-2");
        assert_eq!(c.region_for(&other).await.unwrap(), "eu-west-1");
        let mut c = client(api);
        c.region = Some("ap-south-1".into());
        assert_eq!(c.region_for(&lambda).await.unwrap(), "ap-south-1");
    }

    #[test]
    fn ids_must_be_uuids() {
        let ok = "0b7e0000-0000-4000-8000-000000000000";
        assert_eq!(id_arg("run id", ok).unwrap(), ok);
        for bad in ["", "6f1c", "0b7e0000-0000-4000-8000-00000000000g", "../x"] {
            let e = id_arg("run id", bad).unwrap_err();
            assert_eq!(e.exit_code(), crate::error::EXIT_USAGE, "{bad}");
        }
    }

    #[test]
    fn bad_addresses_are_usage_errors() {
        for api in ["notaurl", "ftp://x", "http://"] {
            let e = Client::new(Settings {
                api: api.into(),
                lambda_endpoint: None,
                function: "f".into(),
                region: None,
                timeout: Duration::from_secs(1),
                invoke_timeout: Duration::from_secs(1),
            })
            .err()
            .unwrap_or_else(|| panic!("{api} accepted"));
            assert_eq!(e.exit_code(), crate::error::EXIT_USAGE, "{api}: {e}");
        }
    }
}
