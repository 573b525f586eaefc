//! SigV4 signing of the CLI's calls: API Gateway (`execute-api`) and the Lambda Invoke API
//! (`lambda`), one signer for both, with credentials from the standard AWS chain (environment,
//! profile, SSO, instance or container role). Local addresses are never signed.

use std::time::SystemTime;

use aws_credential_types::{provider::ProvideCredentials, Credentials};
use aws_sigv4::{
    http_request::{sign, SignableBody, SignableRequest, SigningSettings},
    sign::v4,
};
use reqwest::Url;

use crate::error::CliError;

/// A request as it is signed: what goes on the wire, less the headers signing adds.
pub struct Unsigned<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// The headers SigV4 adds to `req` (`x-amz-date`, `authorization`, and
/// `x-amz-security-token` with temporary credentials), signed at `time` for `service` in
/// `region`. Time and credentials are given, so that a test can check a known answer.
pub fn signing_headers(
    req: &Unsigned<'_>,
    credentials: &Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, CliError> {
    let fail = |e: &dyn std::fmt::Display| CliError::Signing(e.to_string());
    // The signer reads the host from the URL: make sure there is one (it would panic).
    let has_host = Url::parse(req.url)
        .map(|u| u.host_str().is_some_and(|h| !h.is_empty()))
        .unwrap_or(false);
    if !has_host {
        return Err(CliError::Signing(format!("{}: no host to sign", req.url)));
    }
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| fail(&e))?
        .into();
    let signable = SignableRequest::new(
        req.method,
        req.url,
        req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(req.body),
    )
    .map_err(|e| fail(&e))?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| fail(&e))?.into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// Whether `url` is this machine (`127.0.0.1`, `localhost`, `::1`): not signed.
pub fn is_local(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// The region of an API Gateway or Lambda host (`{id}.execute-api.{region}.amazonaws.com`,
/// `lambda.{region}.amazonaws.com`), if it is one.
pub fn region_of_api_host(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    let rest = match host.split_once(".execute-api.") {
        Some((_, rest)) => rest,
        None => host.strip_prefix("lambda.")?,
    };
    let region = rest.split('.').next()?;
    (!region.is_empty() && rest.contains(".amazonaws.")).then(|| region.to_owned())
}

/// Credentials and region from the standard AWS chain, loaded on first use.
pub struct Signer {
    credentials: Credentials,
    pub region: String,
}

impl Signer {
    /// Loads the AWS configuration; `region` (from the API's host or `--region`) wins over the
    /// configured one.
    pub async fn load(region: Option<String>) -> Result<Signer, CliError> {
        let config = aws_config::load_from_env().await;
        let region = region
            .or_else(|| config.region().map(|r| r.to_string()))
            .ok_or_else(|| {
                CliError::Signing(
                    "no AWS region: set AWS_REGION (or --region), or use the API's \
                     execute-api URL"
                        .into(),
                )
            })?;
        let provider = config
            .credentials_provider()
            .ok_or_else(|| CliError::Signing("no AWS credentials provider is configured".into()))?;
        let credentials = provider.provide_credentials().await.map_err(|e| {
            CliError::Signing(format!(
                "no AWS credentials (environment, profile, SSO or role): {}",
                error_chain(&e)
            ))
        })?;
        Ok(Signer {
            credentials,
            region,
        })
    }

    /// The signing headers of `req` for `service`, now.
    pub fn sign(
        &self,
        req: &Unsigned<'_>,
        service: &str,
    ) -> Result<Vec<(String, String)>, CliError> {
        signing_headers(
            req,
            &self.credentials,
            &self.region,
            service,
            SystemTime::now(),
        )
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    /// The AWS SigV4 test suite's `get-vanilla` case (the aws-sigv4 crate's
    /// `aws-signing-test-suite/v4/get-vanilla`: `context.json`, `header-signature.txt`,
    /// `header-signed-request.txt`), through the function the client signs with.
    #[test]
    fn get_vanilla_signs_as_the_aws_test_suite_says() {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test-suite",
        );
        // 2015-08-30T12:36:00Z
        let time = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let headers = signing_headers(
            &Unsigned {
                method: "GET",
                url: "https://example.amazonaws.com/",
                headers: &[],
                body: b"",
            },
            &credentials,
            "us-east-1",
            "service",
            time,
        )
        .unwrap();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(
            get("authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            )
        );
        assert_eq!(get("x-amz-security-token"), None);
    }

    #[test]
    fn local_addresses_are_not_signed_and_api_hosts_name_their_region() {
        for (url, local) in [
            ("http://127.0.0.1:9000", true),
            ("http://localhost:9000", true),
            ("http://[::1]:9000", true),
            ("https://abc123.execute-api.eu-west-1.amazonaws.com", false),
            ("https://api.example.com", false),
        ] {
            assert_eq!(is_local(&Url::parse(url).unwrap()), local, "{url}");
        }
        let api = Url::parse("https://abc123.execute-api.eu-west-1.amazonaws.com/").unwrap();
        assert_eq!(region_of_api_host(&api).as_deref(), Some("eu-west-1"));
        let lambda = Url::parse("https://lambda.us-west-2.amazonaws.com/").unwrap();
        assert_eq!(region_of_api_host(&lambda).as_deref(), Some("us-west-2"));
        assert_eq!(
            region_of_api_host(&Url::parse("https://api.example.com").unwrap()),
            None
        );
        let no_host = signing_headers(
            &Unsigned {
                method: "GET",
                url: "unix:/tmp/x",
                headers: &[],
                body: b"",
            },
            &Credentials::new("a", "b", None, None, "t"),
            "us-east-1",
            "service",
            SystemTime::now(),
        );
        assert!(no_host.is_err());
    }
}
