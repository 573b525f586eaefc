//! What every step of a move reads ([`Ctx`]) and how it ends when it does not finish
//! ([`StepError`]).

use std::{sync::Arc, time::Instant};

use tracing::warn;

use super::record::Move;
use crate::{
    database::{Database, Server},
    domain::TenantStatus,
    pg::{error_chain, Conn, DbError},
    tenant::access::{Access, AccessError},
};

/// Why a step did not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    /// A server, Secrets Manager or the time was away: the step runs again later.
    #[error("{0}")]
    Retry(DbError),
    /// The move cannot go on: before the switch it is undone. The message is for the
    /// client (no host, no SQL).
    #[error("{0}")]
    Fail(String),
}

impl From<DbError> for StepError {
    fn from(e: DbError) -> Self {
        if e.is_transient() {
            StepError::Retry(e)
        } else {
            warn!(error = %error_chain(&e), "a move step failed on PostgreSQL");
            StepError::Fail("PostgreSQL refused a step of the move (the log has the cause)".into())
        }
    }
}

impl From<AccessError> for StepError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Db(e) => e.into(),
            AccessError::Foreign(what) => StepError::Fail(format!(
                "a {what} of this tenant's name exists on the target that this registry did \
                 not make"
            )),
        }
    }
}

pub(crate) fn fail<T>(message: impl Into<String>) -> Result<T, StepError> {
    Err(StepError::Fail(message.into()))
}

/// What every step reads: the move, the tenant's access, both servers, the time left.
pub(crate) struct Ctx<'a> {
    pub db: &'a Database,
    pub sys: &'a Conn,
    pub mv: &'a Move,
    pub access: Access,
    pub secret_arn: Option<String>,
    pub status: TenantStatus,
    pub server: Option<String>,
    pub source: Arc<Server>,
    pub target: Arc<Server>,
    pub until: Instant,
    /// The tenant's database on both servers, kept between the steps of one delivery: the
    /// fence's steps would otherwise each open both again.
    pub conns: &'a TenantConns,
}

/// Connections to the tenant's database on the source and the target (see [`Ctx::conns`]).
pub(crate) type TenantConns = tokio::sync::Mutex<Option<(Conn, Conn)>>;

impl Ctx<'_> {
    /// The tenant's database on both servers: the delivery's connections, or new ones.
    pub(crate) async fn tenant_dbs(&self) -> Result<(Conn, Conn), StepError> {
        if let Some((source, target)) = self.conns.lock().await.take() {
            if source.is_usable() && target.is_usable() {
                return Ok((source, target));
            }
        }
        let name = &self.mv.database_name;
        let source = self.source.connect(name).await?;
        let target = self.target.connect(name).await?;
        Ok((source, target))
    }

    /// Keeps the connections for the delivery's next step.
    pub(crate) async fn keep(&self, source: Conn, target: Conn) {
        *self.conns.lock().await = Some((source, target));
    }
}
