//! Changing a registered server's state, capacity or budget.

use tracing::{info, instrument};

use super::{
    error::ServersError,
    state::ServerState,
    view::{view, ServerView},
};
use crate::{database::Database, domain::ServerName};

/// What a `PATCH` changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerPatch {
    pub state: Option<ServerState>,
    pub max_tenants: Option<i32>,
    pub migrate_concurrency: Option<i32>,
}

/// Changes a server's state, capacity or budget.
#[instrument(skip_all, fields(server = %name))]
pub async fn update_server(
    db: &Database,
    name: &ServerName,
    patch: &ServerPatch,
) -> Result<ServerView, ServersError> {
    let sys = db.system().await?;
    let updated = sys
        .locking()
        .execute(
            "UPDATE servers SET state = coalesce($2, state), \
               max_tenants = coalesce($3, max_tenants), \
               migrate_concurrency = coalesce($4, migrate_concurrency), updated_at = now() \
             WHERE name = $1",
            &[
                &name.as_str(),
                &patch.state.map(ServerState::as_str),
                &patch.max_tenants,
                &patch.migrate_concurrency,
            ],
        )
        .await?;
    if updated == 0 {
        return Err(ServersError::NotFound(Some(name.to_string())));
    }
    info!(?patch, "updated a server");
    view(&sys, name).await
}
