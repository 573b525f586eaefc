//! `tenants credentials`: the tenant's secret (RDS format: `host`, `port`, `dbname`,
//! `username`, `password`) read from Secrets Manager with the standard AWS chain, as the
//! tenant's application reads it, and printed as a connection string.

use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
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
        return Err(CliError::Usage(format!(
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
        return Err(CliError::Usage(format!(
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
    let bad = || CliError::Usage(format!("the secret's host {host:?} is not a host name"));
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

async fn read_secret(client: &Client, id: &str) -> Result<Value, CliError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    let configured = std::env::var("AWS_ENDPOINT_URL_SECRETS_MANAGER")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .ok();
    let endpoint =
        configured.or_else(|| client.api_is_local().then(|| LOCAL_SECRETS_MANAGER.into()));
    if let Some(endpoint) = &endpoint {
        let local = Url::parse(endpoint)
            .map(|u| crate::sign::is_local(&u))
            .unwrap_or(false);
        loader = loader.endpoint_url(endpoint);
        if local {
            // The local Secrets Manager (moto) takes any credentials.
            loader = loader
                .credentials_provider(Credentials::new(
                    "local",
                    "local",
                    None,
                    None,
                    "dbtools-local",
                ))
                .region(aws_config::Region::new(
                    std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
                ));
        }
    }
    let config = loader.load().await;
    let sm = aws_sdk_secretsmanager::Client::new(&config);
    let out = sm
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| CliError::Transport {
            what: format!("Secrets Manager ({})", endpoint.as_deref().unwrap_or("AWS")),
            why: aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
        })?;
    let text = out.secret_string().unwrap_or("");
    serde_json::from_str(text)
        .map_err(|_| CliError::Usage(format!("the secret {id} is not a JSON object")))
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
}
