//! The system database's step of a run: its migrations applied before anything else (the
//! registry of a later release cannot be read as this one reads it), or, in a dry run, the
//! ones it lacks reported.

use super::{
    report::{MigrateAllReport, SystemReport},
    request::{MigrateAllError, MigrateAllRequest},
};
use crate::{
    database::{migrate_system, Database},
    migrate::{self, read_history},
    pg::{error_chain, DbError},
};

/// The system migrations: applied (a real run), or reported (a dry run, which stops when
/// some are pending: false).
pub(super) async fn step(
    db: &Database,
    req: &MigrateAllRequest,
    report: &mut MigrateAllReport,
) -> Result<bool, MigrateAllError> {
    let system = if req.dry_run {
        let system = system_pending(db).await?;
        if !system.pending.is_empty() {
            report.error = Some(format!(
                "the registry lacks this release's system migrations {:?}: a dry run reports \
                 them and stops (a real run applies them first)",
                system.pending
            ));
            report.system = Some(system);
            return Ok(false);
        }
        system
    } else {
        let applied = migrate_system(db).await.map_err(|e| match e {
            DbError::Unavailable(m) | DbError::TimedOut(m) => MigrateAllError::Unavailable(m),
            other => MigrateAllError::SystemMigration(error_chain(&other)),
        })?;
        SystemReport {
            applied,
            pending: Vec::new(),
        }
    };
    report.system = Some(system);
    Ok(true)
}

/// The system migrations the registry lacks, read without applying any (a registry that does
/// not exist yet lacks them all).
async fn system_pending(db: &Database) -> Result<SystemReport, MigrateAllError> {
    let all = || {
        migrate::system_migrations()
            .iter()
            .map(|m| i64::from(m.version()))
            .collect::<Vec<i64>>()
    };
    let client = match db.system_as_is().await {
        Ok(client) => client,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => {
            return Ok(SystemReport {
                applied: Vec::new(),
                pending: all(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let history = read_history(&client).await?;
    let applied: Vec<i64> = history.iter().map(|h| h.version).collect();
    let pending = migrate::system_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .filter(|v| !applied.contains(v))
        .collect();
    Ok(SystemReport {
        applied: Vec::new(),
        pending,
    })
}
