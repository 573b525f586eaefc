//! Removing a server that holds no tenant, and then the templates built there.

use tokio_postgres::error::SqlState;
use tracing::{info, instrument, warn};

use super::{
    error::ServersError,
    view::{view, ServerView},
};
use crate::{
    database::{Database, ServerSource, PRIMARY},
    domain::ServerName,
    pg::{error_chain, ownership, DbError},
};

/// Removes a server that holds no tenant (purged ones hold no database), then drops the
/// templates this registry built there (best effort: a server being decommissioned may be gone
/// already; they are then logged and left, and a cluster registered again later meets them as
/// databases it cannot prove it made).
///
/// The check and the removal are one transaction that holds the server's row, as a placement
/// does until its tenant is committed: a tenant placed meanwhile is counted, and the answer is a
/// conflict that changed nothing (the templates stay). Only once the row is gone are its
/// templates dropped, by the proof (name and OID) read in that transaction.
#[instrument(skip_all, fields(server = %name))]
pub async fn remove_server(db: &Database, name: &ServerName) -> Result<ServerView, ServersError> {
    if name.as_str() == PRIMARY {
        return Err(ServersError::Conflict(
            "Server 'primary' holds the registry and cannot be removed".into(),
        ));
    }
    let holds_tenants = || {
        ServersError::Conflict(format!(
            "Server '{name}' holds tenants; drain it and purge them first"
        ))
    };
    let sys = db.system().await?;
    let before = view(&sys, name).await?;
    let tx = sys.begin().await?;
    let removed = async {
        let Some(server) = tx
            .locking()
            .query_opt(
                "SELECT host, port, secret_arn FROM servers WHERE name = $1 FOR UPDATE",
                &[&name.as_str()],
            )
            .await?
        else {
            return Ok(Err(ServersError::NotFound(Some(name.to_string()))));
        };
        let source = ServerSource::from_row(&server)?;
        let tenants: i64 = tx
            .query_one(
                "SELECT count(*) AS n FROM tenants WHERE server = $1 AND status <> 'purged'",
                &[&name.as_str()],
            )
            .await?
            .try_get("n")?;
        if tenants > 0 {
            return Ok(Err(holds_tenants()));
        }
        // A move running to or from it needs it until it ends (see `tenant::moves`).
        let moving: i64 = tx
            .query_one(
                "SELECT count(*) AS n FROM moves WHERE state = 'running' \
                   AND (to_server = $1 OR from_server = $1)",
                &[&name.as_str()],
            )
            .await?
            .try_get("n")?;
        if moving > 0 {
            return Ok(Err(ServersError::Conflict(format!(
                "Server '{name}' has tenant moves running to or from it; retry when they end"
            ))));
        }
        let templates: Vec<(String, i64)> = tx
            .query(
                "SELECT name, database_oid FROM tenant_templates WHERE server = $1",
                &[&name.as_str()],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("database_oid")?)))
            .collect::<Result<_, tokio_postgres::Error>>()?;
        // Its templates' records go with it (ON DELETE CASCADE); purged tenants keep no server.
        tx.locking()
            .execute("DELETE FROM servers WHERE name = $1", &[&name.as_str()])
            .await?;
        Ok::<_, DbError>(Ok((source, templates)))
    }
    .await;
    let (source, templates) = match removed {
        Ok(Ok(found)) => {
            tx.commit().await?;
            found
        }
        Ok(Err(refusal)) => {
            tx.rollback().await;
            return Err(refusal);
        }
        Err(e) => {
            tx.rollback().await;
            // A tenant committed under our snapshot: its server cannot be set to null.
            if e.code() == Some(&SqlState::CHECK_VIOLATION) {
                return Err(holds_tenants());
            }
            return Err(e.into());
        }
    };
    drop(sys);
    info!("removed a server");
    let server = db.server_at(name.as_str(), source).await;
    let dropped = async {
        let admin = server.admin().await?;
        for (template, oid) in &templates {
            ownership::drop_if_ours(&admin, template, Some(*oid)).await?;
        }
        Ok::<_, DbError>(())
    }
    .await;
    if let Err(e) = dropped {
        warn!(error = %error_chain(&e), "could not drop the removed server's templates; left there");
    }
    db.forget_server(name.as_str()).await;
    Ok(before)
}
