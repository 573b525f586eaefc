//! Secrets Manager: one client per sandbox (the admin secret and the tenants' secrets share
//! it), and the operations on tenant secrets.
//!
//! A tenant's secret is `{TENANT_SECRET_PREFIX}{slug}`, in the RDS format, tagged with the
//! tenant's id and slug. The tag is written by `CreateSecret` itself, atomically with the
//! secret: it is the proof that the product made it for that tenant row. A secret of a
//! tenant's name without it is never changed nor deleted.

use std::time::Duration;

use aws_sdk_secretsmanager::{
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    types::{RotationRulesType, Tag},
    Client,
};
use futures_util::FutureExt;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::sync::OnceCell;
use uuid::Uuid;

/// The tag that proves a secret was made for a tenant row (its value is the row's id).
pub(crate) const TENANT_ID_TAG: &str = "dbtools:tenant-id";
pub(crate) const TENANT_SLUG_TAG: &str = "dbtools:tenant-slug";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Secrets Manager cannot be reached, throttles, or did not answer in time (log only: the
    /// message may name the endpoint).
    #[error("secrets manager unavailable: {0}")]
    Unavailable(String),
    /// Secrets Manager refused the request (permissions, a bad KMS key, a limit).
    #[error("secrets manager refused: {0}")]
    Refused(String),
}

pub(super) fn classify<E, R>(e: SdkError<E, R>) -> SecretsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = DisplayErrorContext(&e).to_string();
    match &e {
        SdkError::ServiceError(se) => match se.err().code() {
            Some("ThrottlingException" | "InternalServiceError" | "InternalFailure") => {
                SecretsError::Unavailable(detail)
            }
            _ => SecretsError::Refused(detail),
        },
        SdkError::ConstructionFailure(_) => SecretsError::Refused(detail),
        _ => SecretsError::Unavailable(detail),
    }
}

/// The sandbox's Secrets Manager client, made on first use.
#[derive(Default)]
pub struct Secrets {
    client: OnceCell<Client>,
}

/// What a tenant's secret name holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SecretState {
    Absent,
    /// Ours (the tag names this tenant row); `deleting` once a deletion is scheduled.
    Ours {
        arn: String,
        deleting: bool,
    },
    NotOurs,
}

/// A tenant's credentials as its secret holds them (the RDS format).
#[derive(Serialize)]
pub(crate) struct TenantCredentials<'a> {
    pub engine: &'static str,
    pub host: &'a str,
    pub port: u16,
    pub dbname: &'a str,
    pub username: &'a str,
    #[serde(serialize_with = "expose")]
    pub password: &'a SecretString,
}

fn expose<S: serde::Serializer>(p: &&SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.expose_secret())
}

impl TenantCredentials<'_> {
    fn to_json(&self) -> SecretString {
        SecretString::from(serde_json::to_string(self).unwrap_or_default())
    }
}

/// What a new secret is made with.
pub(crate) struct NewSecret<'a> {
    pub name: &'a str,
    pub tenant_id: Uuid,
    pub slug: &'a str,
    pub kms_key_id: Option<&'a str>,
    pub credentials: TenantCredentials<'a>,
}

/// A secret read by [`Secrets::read_named`].
pub(crate) struct NamedSecret {
    pub name: String,
    pub arn: String,
    pub text: SecretString,
}

/// The name a secret id designates: the id itself, or the name in an ARN (less the six
/// characters Secrets Manager appends to it, when they are there).
pub(crate) fn name_of(id: &str) -> &str {
    let Some((_, name)) = id.split_once(":secret:") else {
        return id;
    };
    match name.rsplit_once('-') {
        Some((base, suffix))
            if suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            base
        }
        _ => name,
    }
}

/// How [`Secrets::delete`] deletes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Deletion {
    /// At once: a secret that was never handed out (a rollback), so that the name is free.
    Now,
    /// After a recovery window of this many days (7 to 30): a purge.
    After(i64),
}

/// Every SDK future is boxed (`.boxed()`): they nest deep enough to overflow the compiler's
/// type layout limit in every crate that awaits through ours, and the allocation is nothing
/// next to a network call.
impl Secrets {
    pub async fn client(&self) -> &Client {
        self.client.get_or_init(|| make_client().boxed()).await
    }

    /// An admin secret's text (`DB_SECRET_ID`, a server's): `Ok(None)` when it does not exist.
    pub(crate) async fn read(&self, id: &str) -> Result<Option<String>, SecretsError> {
        Ok(self
            .read_named(id)
            .await?
            .map(|s| s.text.expose_secret().to_owned()))
    }

    /// A secret's text with its name and ARN, as Secrets Manager resolved the id:
    /// `Ok(None)` when it does not exist.
    pub(crate) async fn read_named(&self, id: &str) -> Result<Option<NamedSecret>, SecretsError> {
        match self
            .client()
            .await
            .get_secret_value()
            .secret_id(id)
            .send()
            .boxed()
            .await
        {
            Ok(out) => Ok(Some(NamedSecret {
                name: out.name().unwrap_or_default().to_owned(),
                arn: out.arn().unwrap_or_default().to_owned(),
                text: SecretString::from(out.secret_string().unwrap_or_default().to_owned()),
            })),
            Err(SdkError::ServiceError(se)) if se.err().is_resource_not_found_exception() => {
                Ok(None)
            }
            Err(e) => Err(classify(e)),
        }
    }

    /// Whose the secret of that name is.
    pub(crate) async fn state(
        &self,
        name: &str,
        tenant_id: Uuid,
    ) -> Result<SecretState, SecretsError> {
        let out = match self
            .client()
            .await
            .describe_secret()
            .secret_id(name)
            .send()
            .boxed()
            .await
        {
            Ok(out) => out,
            Err(SdkError::ServiceError(se)) if se.err().is_resource_not_found_exception() => {
                return Ok(SecretState::Absent)
            }
            Err(e) => return Err(classify(e)),
        };
        let ours = out
            .tags()
            .iter()
            .any(|t| t.key() == Some(TENANT_ID_TAG) && t.value() == Some(&tenant_id.to_string()));
        Ok(match (ours, out.arn()) {
            (true, Some(arn)) => SecretState::Ours {
                arn: arn.to_owned(),
                deleting: out.deleted_date().is_some(),
            },
            _ => SecretState::NotOurs,
        })
    }

    /// Makes the secret, tagged. `Ok(None)` when the name is taken (by anyone: the caller
    /// looks at [`Secrets::state`]).
    pub(crate) async fn create(&self, new: &NewSecret<'_>) -> Result<Option<String>, SecretsError> {
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        let value = new.credentials.to_json();
        let mut req = self
            .client()
            .await
            .create_secret()
            .name(new.name)
            .description(format!(
                "dbtools: credentials of tenant {} (its own PostgreSQL login)",
                new.slug
            ))
            .secret_string(value.expose_secret())
            .tags(tag(TENANT_ID_TAG, &new.tenant_id.to_string()))
            .tags(tag(TENANT_SLUG_TAG, new.slug));
        if let Some(key) = new.kms_key_id {
            req = req.kms_key_id(key);
        }
        match req.send().boxed().await {
            Ok(out) => Ok(Some(out.arn().unwrap_or(new.name).to_owned())),
            Err(SdkError::ServiceError(se))
                if se.err().is_resource_exists_exception()
                    // "a secret with this name is already scheduled for deletion"
                    || se.err().is_invalid_request_exception() =>
            {
                Ok(None)
            }
            Err(e) => Err(classify(e)),
        }
    }

    /// A new current value for an existing secret of ours.
    pub(crate) async fn put(
        &self,
        arn: &str,
        credentials: &TenantCredentials<'_>,
    ) -> Result<(), SecretsError> {
        let value = credentials.to_json();
        self.client()
            .await
            .put_secret_value()
            .secret_id(arn)
            .secret_string(value.expose_secret())
            .send()
            .boxed()
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Deletes a secret of ours. One already deleted, or scheduled for deletion, is done.
    pub(crate) async fn delete(&self, arn: &str, how: Deletion) -> Result<(), SecretsError> {
        let mut req = self.client().await.delete_secret().secret_id(arn);
        req = match how {
            Deletion::Now => req.force_delete_without_recovery(true),
            Deletion::After(days) => req.recovery_window_in_days(days),
        };
        match req.send().boxed().await {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(se))
                if se.err().is_resource_not_found_exception()
                    || se.err().is_invalid_request_exception() =>
            {
                Ok(())
            }
            Err(e) => Err(classify(e)),
        }
    }

    /// Turns rotation on, every `days` days, by `function_arn`, without rotating now.
    pub(crate) async fn enable_rotation(
        &self,
        arn: &str,
        function_arn: &str,
        days: i64,
    ) -> Result<(), SecretsError> {
        self.client()
            .await
            .rotate_secret()
            .secret_id(arn)
            .rotation_lambda_arn(function_arn)
            .rotation_rules(
                RotationRulesType::builder()
                    .automatically_after_days(days)
                    .build(),
            )
            .rotate_immediately(false)
            .send()
            .boxed()
            .await
            .map_err(classify)?;
        Ok(())
    }
}

async fn make_client() -> Client {
    // Bounded so that an unreachable endpoint is a quick 503, not a hang.
    Client::new(&crate::aws::config(Duration::from_secs(2), Duration::from_secs(4)).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_named_by_its_id_or_its_arn() {
        assert_eq!(name_of("dbtools/servers/a"), "dbtools/servers/a");
        assert_eq!(
            name_of(
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:dbtools/servers/a-Ab12Cd"
            ),
            "dbtools/servers/a"
        );
        assert_eq!(
            name_of("arn:aws:secretsmanager:eu-west-1:123456789012:secret:dbtools/x"),
            "dbtools/x"
        );
    }

    #[test]
    fn credentials_are_in_the_rds_format() {
        let password = SecretString::from("s3cret".to_owned());
        let c = TenantCredentials {
            engine: "postgres",
            host: "db.internal",
            port: 5432,
            dbname: "dbtools_tenant_acme",
            username: "dbtools_tenant_acme",
            password: &password,
        };
        let v: serde_json::Value = serde_json::from_str(c.to_json().expose_secret()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"engine": "postgres", "host": "db.internal", "port": 5432,
                "dbname": "dbtools_tenant_acme", "username": "dbtools_tenant_acme",
                "password": "s3cret"})
        );
    }
}
