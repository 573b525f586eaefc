//! A secret's versions and their staging labels, as Secrets Manager's rotation protocol moves
//! them (`AWSPENDING` put, tested, made `AWSCURRENT`): the calls `tenant::rotation` makes.

use std::collections::HashMap;

use aws_sdk_secretsmanager::error::SdkError;
use futures_util::FutureExt;
use secrecy::{ExposeSecret, SecretString};

use super::secrets::{classify, Secrets, SecretsError};

/// The versions of a secret and their staging labels, and its ARN.
pub(crate) struct Versions {
    pub arn: String,
    pub stages: HashMap<String, Vec<String>>,
}

/// Every SDK future is boxed, as in [`super::secrets`].
impl Secrets {
    /// The rotation protocol's view of a secret: its versions' labels, and its ARN (whose tenant
    /// it is, the registry says: never a tag, which whoever may tag the secret could change).
    pub(crate) async fn versions(&self, id: &str) -> Result<Option<Versions>, SecretsError> {
        let out = match self
            .client()
            .await
            .describe_secret()
            .secret_id(id)
            .send()
            .boxed()
            .await
        {
            Ok(out) => out,
            Err(SdkError::ServiceError(se)) if se.err().is_resource_not_found_exception() => {
                return Ok(None)
            }
            Err(e) => return Err(classify(e)),
        };
        Ok(Some(Versions {
            arn: out.arn().unwrap_or_default().to_owned(),
            stages: out.version_ids_to_stages().cloned().unwrap_or_default(),
        }))
    }

    /// The value of one version (by id and label): `Ok(None)` when it has none.
    pub(crate) async fn value(
        &self,
        id: &str,
        version: Option<&str>,
        stage: &str,
    ) -> Result<Option<SecretString>, SecretsError> {
        let mut req = self
            .client()
            .await
            .get_secret_value()
            .secret_id(id)
            .version_stage(stage);
        if let Some(v) = version {
            req = req.version_id(v);
        }
        match req.send().boxed().await {
            Ok(out) => Ok(out
                .secret_string()
                .map(|s| SecretString::from(s.to_owned()))),
            Err(SdkError::ServiceError(se)) if se.err().is_resource_not_found_exception() => {
                Ok(None)
            }
            Err(e) => Err(classify(e)),
        }
    }

    /// Writes the `AWSPENDING` value of version `token` (idempotent for the same token).
    pub(crate) async fn put_pending(
        &self,
        id: &str,
        token: &str,
        value: &SecretString,
    ) -> Result<(), SecretsError> {
        self.client()
            .await
            .put_secret_value()
            .secret_id(id)
            .client_request_token(token)
            .secret_string(value.expose_secret())
            .version_stages("AWSPENDING")
            .send()
            .boxed()
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Moves `AWSCURRENT` to `token` (from `from`).
    pub(crate) async fn make_current(
        &self,
        id: &str,
        token: &str,
        from: Option<&str>,
    ) -> Result<(), SecretsError> {
        let mut req = self
            .client()
            .await
            .update_secret_version_stage()
            .secret_id(id)
            .version_stage("AWSCURRENT")
            .move_to_version_id(token);
        if let Some(from) = from {
            req = req.remove_from_version_id(from);
        }
        req.send().boxed().await.map_err(classify)?;
        Ok(())
    }
}
