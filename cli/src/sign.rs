//! SigV4 signing of the CLI's calls: API Gateway (`execute-api`) and the Lambda Invoke API
//! (`lambda`), one signer for both, with credentials from the standard AWS chain (environment,
//! profile, SSO, instance or container role). Local addresses are never signed.

use std::time::{Duration, SystemTime};

use aws_credential_types::{
    provider::{ProvideCredentials, SharedCredentialsProvider},
    Credentials,
};
use aws_sigv4::{
    http_request::{sign, SignableBody, SignableRequest, SigningSettings},
    sign::v4,
};
use reqwest::Url;
use tokio::sync::Mutex;

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
    signing_headers_with(
        req,
        credentials,
        region,
        service,
        time,
        SigningSettings::default(),
    )
}

/// `signing_headers` with other settings (the test suite's `sign_body` cases add
/// `x-amz-content-sha256`).
fn signing_headers_with(
    req: &Unsigned<'_>,
    credentials: &Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
    settings: SigningSettings,
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
        .settings(settings)
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

/// Credentials are asked again this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// The region and the credentials provider of the standard AWS chain, loaded on first use.
/// Credentials are resolved for each request from a cache that is refreshed before they
/// expire, so a watch of hours outlives an SSO or role session's refresh.
pub struct Signer {
    provider: SharedCredentialsProvider,
    cached: Mutex<Option<Credentials>>,
    configured_region: Option<String>,
}

impl Signer {
    /// Loads the AWS configuration (its region and credentials provider).
    pub async fn load() -> Result<Signer, CliError> {
        let config = aws_config::load_from_env().await;
        let provider = config
            .credentials_provider()
            .ok_or_else(|| CliError::Signing("no AWS credentials provider is configured".into()))?;
        Ok(Signer {
            provider,
            cached: Mutex::new(None),
            configured_region: config.region().map(|r| r.to_string()),
        })
    }

    /// The AWS configuration's region (`AWS_REGION`, the profile's `region`).
    pub fn region(&self) -> Result<String, CliError> {
        self.configured_region.clone().ok_or_else(|| {
            CliError::Signing(
                "no AWS region: set AWS_REGION (or --region), or use the API's execute-api URL"
                    .into(),
            )
        })
    }

    /// The credentials to sign with now: the cached ones while they are good for a while
    /// longer, else fresh ones from the provider.
    async fn credentials(&self) -> Result<Credentials, CliError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| still_good(c, SystemTime::now())) {
            return Ok(c.clone());
        }
        let fresh = self.provider.provide_credentials().await.map_err(|e| {
            CliError::Signing(format!(
                "no AWS credentials (environment, profile, SSO or role): {}",
                error_chain(&e)
            ))
        })?;
        *cached = Some(fresh.clone());
        Ok(fresh)
    }

    /// The signing headers of `req` for `service` in `region`, now.
    pub async fn sign(
        &self,
        req: &Unsigned<'_>,
        service: &str,
        region: &str,
    ) -> Result<Vec<(String, String)>, CliError> {
        let credentials = self.credentials().await?;
        signing_headers(req, &credentials, region, service, SystemTime::now())
    }
}

/// Whether `c` may still sign at `now`: no expiry, or one more than five minutes away.
fn still_good(c: &Credentials, now: SystemTime) -> bool {
    c.expiry().is_none_or(|at| now + REFRESH_BEFORE_EXPIRY < at)
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

    /// The AWS SigV4 test suite's credentials, and its time (2015-08-30T12:36:00Z).
    fn suite_credentials(token: Option<&str>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            token.map(str::to_owned),
            None,
            "test-suite",
        )
    }
    const SUITE_TIME: u64 = 1_440_938_160;

    /// Signs a case of the suite (region `us-east-1`, service `service`); its headers.
    fn sign_case(
        req: Unsigned<'_>,
        token: Option<&str>,
        settings: SigningSettings,
    ) -> Vec<(String, String)> {
        signing_headers_with(
            &req,
            &suite_credentials(token),
            "us-east-1",
            "service",
            UNIX_EPOCH + Duration::from_secs(SUITE_TIME),
            settings,
        )
        .unwrap()
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `Authorization` as the suite's `header-signed-request.txt` has it.
    fn authorization(signed_headers: &str, signature: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders={signed_headers}, Signature={signature}"
        )
    }

    /// The AWS SigV4 test suite (the aws-sigv4 crate's `aws-signing-test-suite/v4/{case}`:
    /// `context.json`, `request.txt`, `header-signed-request.txt`): each expected signature is
    /// copied from the suite's files, through the function the client signs with.
    #[test]
    fn requests_sign_as_the_aws_test_suite_says() {
        let get = |url| Unsigned {
            method: "GET",
            url,
            headers: &[],
            body: b"",
        };
        // get-vanilla
        let h = sign_case(
            get("https://example.amazonaws.com/"),
            None,
            SigningSettings::default(),
        );
        assert_eq!(header(&h, "x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(
            header(&h, "authorization"),
            Some(
                authorization(
                    "host;x-amz-date",
                    "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
                )
                .as_str()
            )
        );
        assert_eq!(header(&h, "x-amz-security-token"), None);

        // get-vanilla-query-order-key-case: the query is signed sorted.
        let h = sign_case(
            get("https://example.amazonaws.com/?Param2=value2&Param1=value1"),
            None,
            SigningSettings::default(),
        );
        assert_eq!(
            header(&h, "authorization"),
            Some(
                authorization(
                    "host;x-amz-date",
                    "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
                )
                .as_str()
            )
        );

        // get-vanilla-with-session-token: temporary credentials sign and send their token.
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let h = sign_case(
            get("https://example.amazonaws.com/"),
            Some(token),
            SigningSettings::default(),
        );
        assert_eq!(header(&h, "x-amz-security-token"), Some(token));
        assert_eq!(
            header(&h, "authorization"),
            Some(
                authorization(
                    "host;x-amz-date;x-amz-security-token",
                    "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
                )
                .as_str()
            )
        );

        // post-x-www-form-urlencoded: a body (`sign_body`: its hash is sent and signed).
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
        let h = sign_case(
            Unsigned {
                method: "POST",
                url: "https://example.amazonaws.com/",
                headers: &[
                    (
                        "Content-Type".into(),
                        "application/x-www-form-urlencoded".into(),
                    ),
                    ("Content-Length".into(), "13".into()),
                ],
                body: b"Param1=value1",
            },
            None,
            settings,
        );
        assert_eq!(
            header(&h, "x-amz-content-sha256"),
            Some("9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e")
        );
        assert_eq!(
            header(&h, "authorization"),
            Some(
                authorization(
                    "content-length;content-type;host;x-amz-content-sha256;x-amz-date",
                    "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b"
                )
                .as_str()
            )
        );
    }

    #[test]
    fn credentials_are_asked_again_before_they_expire() {
        let now = UNIX_EPOCH + Duration::from_secs(SUITE_TIME);
        let expiring =
            |secs| Credentials::new("a", "b", None, Some(now + Duration::from_secs(secs)), "t");
        assert!(still_good(&suite_credentials(None), now), "no expiry");
        assert!(still_good(&expiring(3600), now));
        assert!(!still_good(&expiring(120), now), "five minutes before");
        assert!(!still_good(&expiring(0), now));
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
