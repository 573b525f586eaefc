//! `tenants credentials`: the tenant's secret (RDS format: `host`, `port`, `dbname`,
//! `username`, `password`) read from Secrets Manager with the standard AWS chain, as the
//! tenant's application reads it, and printed as a connection string.

use std::time::Duration;

use aws_config::{timeout::TimeoutConfig, BehaviorVersion};
use aws_credential_types::Credentials;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use reqwest::Url;
use serde_json::{json, Value};

use crate::{client::Client, error::CliError};

/// The local stack's Secrets Manager (`make dev`), used when the API is local and no
/// endpoint is configured.
const LOCAL_SECRETS_MANAGER: &str = "http://127.0.0.1:5000";

const MASK: &str = "********";

pub async fn tenant_credentials(
    client: &Client,
    tenant: &Value,
    show_password: bool,
) -> Result<Value, CliError> {
    let slug = tenant["slug"].as_str().unwrap_or("");
    let Some(arn) = tenant["credentials_secret_arn"].as_str() else {
        return Err(CliError::Invalid(format!(
            "tenant '{slug}' has no secret (status {}): a purged tenant's is gone",
            tenant["status"].as_str().unwrap_or("unknown")
        )));
    };
    let secret = read_secret(client, arn).await?;
    let text = |k: &str| match &secret[k] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let (Some(host), Some(username), Some(password)) =
        (text("host"), text("username"), text("password"))
    else {
        return Err(CliError::Invalid(format!(
            "the secret of '{slug}' lacks host, username or password"
        )));
    };
    let port = text("port").unwrap_or_else(|| "5432".into());
    let dbname = text("dbname")
        .or_else(|| tenant["database_name"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let shown = if show_password {
        password.clone()
    } else {
        MASK.to_owned()
    };
    let connection_string = connection_string(&host, &port, &dbname, &username, &shown)?;
    Ok(json!({
        "slug": slug,
        "connection_string": connection_string,
        "host": host,
        "port": port.parse::<u16>().map(Value::from).unwrap_or(Value::String(port)),
        "dbname": dbname,
        "username": username,
        "password": shown,
        "secret_arn": arn,
    }))
}

/// `postgresql://user:password@host:port/dbname`, each part encoded.
fn connection_string(
    host: &str,
    port: &str,
    dbname: &str,
    username: &str,
    password: &str,
) -> Result<String, CliError> {
    let bad = || CliError::Invalid(format!("the secret's host {host:?} is not a host name"));
    let mut url = Url::parse(&format!("postgresql://{host}")).map_err(|_| bad())?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    url.set_port(Some(port)).map_err(|_| bad())?;
    url.set_username(username).map_err(|_| bad())?;
    if password == MASK {
        url.set_password(Some("PASSWORD")).map_err(|_| bad())?;
    } else {
        url.set_password(Some(password)).map_err(|_| bad())?;
    }
    url.set_path(dbname);
    let s = url.to_string();
    Ok(if password == MASK {
        s.replacen(":PASSWORD@", &format!(":{MASK}@"), 1)
    } else {
        s
    })
}

/// The region of a Secrets Manager ARN (`arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME`):
/// where the secret lives, whatever region this machine is configured for.
fn region_of_arn(arn: &str) -> Option<&str> {
    let mut parts = arn.split(':');
    if parts.next() != Some("arn") {
        return None;
    }
    let region = parts.nth(2)?;
    (!region.is_empty()).then_some(region)
}

async fn read_secret(client: &Client, id: &str) -> Result<Value, CliError> {
    let timeouts = TimeoutConfig::builder()
        .operation_timeout(client.timeout())
        .connect_timeout(Duration::from_secs(5).min(client.timeout()))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
    let configured = std::env::var("AWS_ENDPOINT_URL_SECRETS_MANAGER")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .ok();
    let endpoint =
        configured.or_else(|| client.api_is_local().then(|| LOCAL_SECRETS_MANAGER.into()));
    let local = endpoint
        .as_deref()
        .and_then(|e| Url::parse(e).ok())
        .is_some_and(|u| crate::sign::is_local(&u));
    if let Some(endpoint) = &endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if local {
        // The local Secrets Manager (moto) takes any credentials.
        loader = loader.credentials_provider(Credentials::new(
            "local",
            "local",
            None,
            None,
            "dbtools-local",
        ));
    }
    // The secret's own region first; locally (an ARN-less name) AWS_REGION, else us-east-1;
    // otherwise the AWS configuration's.
    let region = match region_of_arn(id) {
        Some(r) => Some(r.to_owned()),
        None if local => Some(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())),
        None => None,
    };
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r));
    }
    let config = loader.load().await;
    let sm = aws_sdk_secretsmanager::Client::new(&config);
    let what = format!("Secrets Manager ({})", endpoint.as_deref().unwrap_or("AWS"));
    let out = sm
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| secrets_manager_error(&what, client.timeout(), e))?;
    let text = out.secret_string().unwrap_or("");
    serde_json::from_str(text)
        .map_err(|_| CliError::Invalid(format!("the secret {id} is not a JSON object")))
}

/// A refusal (`ResourceNotFoundException`, `AccessDeniedException`, ...) names its code; no
/// answer is a transport error.
fn secrets_manager_error<E, R>(what: &str, timeout: Duration, e: SdkError<E, R>) -> CliError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match &e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            CliError::Service {
                what: what.to_owned(),
                code: err.code().unwrap_or("unknown error").to_owned(),
                message: err.message().unwrap_or("no message").to_owned(),
            }
        }
        SdkError::TimeoutError(_) => CliError::Transport {
            what: what.to_owned(),
            why: format!("no answer within {} s", timeout.as_secs()),
        },
        _ => CliError::Transport {
            what: what.to_owned(),
            why: aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_encode_and_mask() {
        assert_eq!(
            connection_string(
                "db.internal",
                "5432",
                "dbtools_tenant_acme",
                "dbtools_tenant_acme",
                MASK
            )
            .unwrap(),
            "postgresql://dbtools_tenant_acme:********@db.internal:5432/dbtools_tenant_acme"
        );
        assert_eq!(
            connection_string("127.0.0.1", "5433", "d", "u", "p@ss/w:rd").unwrap(),
            "postgresql://u:p%40ss%2Fw%3Ard@127.0.0.1:5433/d"
        );
        assert!(connection_string("bad host", "5432", "d", "u", "p").is_err());
    }

    #[test]
    fn a_refusal_names_its_code_and_no_answer_is_a_transport_error() {
        use aws_sdk_secretsmanager::{
            error::ErrorMetadata, operation::get_secret_value::GetSecretValueError,
        };
        let refused = GetSecretValueError::generic(
            ErrorMetadata::builder()
                .code("ResourceNotFoundException")
                .message("Secrets Manager can't find the specified secret.")
                .build(),
        );
        let e = secrets_manager_error(
            "Secrets Manager (AWS)",
            Duration::from_secs(30),
            SdkError::service_error(refused, ()),
        );
        assert_eq!(
            e.to_string(),
            "Secrets Manager (AWS) refused (ResourceNotFoundException): Secrets Manager can't \
             find the specified secret."
        );
        assert_eq!(e.exit_code(), 1);
        let e = secrets_manager_error::<GetSecretValueError, ()>(
            "Secrets Manager (AWS)",
            Duration::from_secs(30),
            SdkError::timeout_error("operation timed out"),
        );
        assert_eq!(
            e.to_string(),
            "could not reach Secrets Manager (AWS): no answer within 30 s"
        );
    }

    #[test]
    fn a_secret_is_read_in_the_region_of_its_arn() {
        assert_eq!(
            region_of_arn("arn:aws:secretsmanager:eu-west-1:123456789012:secret:dbtools/t-AbCd"),
            Some("eu-west-1")
        );
        assert_eq!(region_of_arn("dbtools/tenants/acme"), None);
        assert_eq!(region_of_arn("arn:aws:secretsmanager::1:secret:x"), None);
    }
}
