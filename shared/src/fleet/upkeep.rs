//! The lifecycle work a run does besides migrating, each tenant under its lock, each failure
//! reported for its tenant while the run goes on:
//! - purges that died half-way are finished, and tenants deleted more than `PURGE_AFTER_DAYS`
//!   ago are purged (see `lifecycle`);
//! - a deleted tenant whose login can still log in (a delete that died between its steps) has
//!   it disabled;
//! - an active tenant without a secret (made by a release before logins existed) gets its
//!   login and secret.

use std::{collections::HashSet, time::Instant};

use tracing::warn;

use super::{
    prepare::FleetServer,
    report::{UpkeepAction, Upkept},
    sanitize::sanitize_db,
};
use crate::{
    database::Database,
    domain::TenantStatus,
    pg::{
        locks::{self, Lock},
        Conn, DbError,
    },
    tenant::{
        access::{self, AccessError},
        lifecycle::{self, Entry},
        registry::TENANT_COLUMNS,
    },
};

#[derive(Clone, Copy)]
enum Task {
    Purge,
    DisableLogin,
    MakeCredentials,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Purge => "purge",
            Task::DisableLogin => "disable_login",
            Task::MakeCredentials => "make_credentials",
        }
    }

    /// Whether the task is (still) due for a tenant in this state: read again under its lock,
    /// since a restore or a delete may have come in between.
    fn due(self, entry: &Entry) -> bool {
        match self {
            Task::Purge | Task::DisableLogin => entry.tenant.status == TenantStatus::Deleted,
            Task::MakeCredentials => {
                entry.tenant.status == TenantStatus::Active
                    && entry.tenant.credentials_secret_arn.is_none()
            }
        }
    }

    /// The tenants this task is due for: `$1` the run's slugs (NULL: every tenant), `$2`
    /// `PURGE_AFTER_DAYS`.
    fn query(self) -> String {
        let columns = format!("{TENANT_COLUMNS}, {}", Entry::COLUMNS);
        let named = "($1::text[] IS NULL OR slug = ANY($1))";
        match self {
            Task::Purge => format!(
                "SELECT {columns} FROM tenants WHERE {named} AND status = 'deleted' \
                 AND (purge_requested_at IS NOT NULL \
                      OR ($2::bigint > 0 AND deleted_at < now() - make_interval(days => $2::int))) \
                 ORDER BY deleted_at"
            ),
            // Every deleted tenant; those whose login can log in are found on their servers.
            Task::DisableLogin => format!(
                "SELECT {columns} FROM tenants WHERE {named} AND status = 'deleted' \
                 AND $2::bigint IS NOT NULL ORDER BY deleted_at"
            ),
            Task::MakeCredentials => format!(
                "SELECT {columns} FROM tenants WHERE {named} AND status = 'active' \
                 AND $2::bigint IS NOT NULL AND credentials_secret_arn IS NULL ORDER BY created_at"
            ),
        }
    }
}

/// Runs every task for the tenants it is due for, among `slugs` when the run names some (a
/// dry run lists them). A tenant on a server that is down is reported failed without trying
/// (and a deleted tenant's login there cannot be looked at: the next run does).
pub(super) async fn run(
    db: &Database,
    sys: &Conn,
    servers: &[FleetServer],
    slugs: Option<&[String]>,
    dry_run: bool,
    stop_at: Instant,
) -> Result<Vec<Upkept>, DbError> {
    let mut out = Vec::new();
    let purge_after = db.config().tenants.purge_after_days;
    let down = |entry: &Entry| {
        servers
            .iter()
            .find(|s| Some(s.name.as_str()) == entry.tenant.server.as_deref())
            .is_none_or(|s| s.down.is_some())
    };
    for task in [Task::Purge, Task::DisableLogin, Task::MakeCredentials] {
        let rows = sys.query(&task.query(), &[&slugs, &purge_after]).await?;
        let mut entries = rows
            .iter()
            .map(|row| Entry::from_row(row, &db.config().tenants.secret_prefix))
            .collect::<Result<Vec<_>, _>>()?;
        if let Task::DisableLogin = task {
            entries = can_still_log_in(servers, entries).await?;
        }
        for entry in entries {
            let (action, error) = if dry_run {
                (UpkeepAction::Pending, None)
            } else if down(&entry) {
                (
                    UpkeepAction::Failed,
                    Some("its server is unreachable; the next run retries".to_owned()),
                )
            } else if Instant::now() >= stop_at {
                // The invocation's deadline is near: the next run takes it.
                (UpkeepAction::Skipped, None)
            } else {
                match one(db, sys, task, &entry, stop_at).await {
                    Ok(action) => (action, None),
                    // The invocation's deadline came: the next run takes it.
                    Err(e) if e.is_timed_out() => (UpkeepAction::Skipped, Some(sanitize_db(&e))),
                    Err(e) => {
                        warn!(tenant.slug = %entry.tenant.slug, task = task.name(), error = %e, "lifecycle upkeep failed");
                        (UpkeepAction::Failed, Some(sanitize_db(&e)))
                    }
                }
            };
            out.push(Upkept {
                slug: entry.tenant.slug,
                task: task.name(),
                action,
                error,
            });
        }
    }
    Ok(out)
}

/// The deleted tenants whose login (of ours or not: `disable` looks) can still log in, looked
/// up on each reachable server in one query.
async fn can_still_log_in(
    servers: &[FleetServer],
    entries: Vec<Entry>,
) -> Result<Vec<Entry>, DbError> {
    let mut due = HashSet::new();
    for server in servers.iter().filter(|s| s.down.is_none()) {
        let here: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.tenant.server.as_deref() == Some(server.name.as_str()))
            .collect();
        if here.is_empty() {
            continue;
        }
        let roles: Vec<&str> = here.iter().map(|e| e.access.role.as_str()).collect();
        let admin = match server.handle.admin().await {
            Ok(admin) => admin,
            Err(e) => {
                warn!(server = %server.name, error = %e, "server unreachable; logins of deleted tenants not checked");
                continue;
            }
        };
        let rows = match admin
            .query(
                "SELECT rolname::text AS name FROM pg_roles \
                 WHERE rolname = ANY($1) AND rolcanlogin",
                &[&roles],
            )
            .await
        {
            Ok(rows) => rows,
            // Down since the run prepared it: the next run looks again; the others go on.
            Err(e) => {
                warn!(server = %server.name, error = %e, "logins of deleted tenants not checked");
                continue;
            }
        };
        let can: HashSet<String> = rows
            .iter()
            .map(|r| r.try_get("name"))
            .collect::<Result<_, _>>()?;
        due.extend(
            here.into_iter()
                .filter(|e| can.contains(&e.access.role))
                .map(|e| e.tenant.id),
        );
    }
    Ok(entries
        .into_iter()
        .filter(|e| due.contains(&e.tenant.id))
        .collect())
}

/// One task for one tenant, under its lock, its work cut at `until` (`DbError::TimedOut`:
/// every step is safe to repeat, and the next run does).
async fn one(
    db: &Database,
    sys: &Conn,
    task: Task,
    entry: &Entry,
    until: Instant,
) -> Result<UpkeepAction, DbError> {
    let lock = Lock::Tenant(entry.tenant.slug.clone());
    let wait = db
        .config()
        .lock_timeout
        .min(until.saturating_duration_since(Instant::now()));
    let Some(guard) = locks::acquire(sys, lock, wait).await? else {
        return Ok(UpkeepAction::Skipped);
    };
    let done = async {
        let row = sys
            .query_opt(
                &format!(
                    "SELECT {TENANT_COLUMNS}, {} FROM tenants WHERE id = $1",
                    Entry::COLUMNS
                ),
                &[&entry.tenant.id],
            )
            .await?;
        let fresh = row
            .map(|r| Entry::from_row(&r, &db.config().tenants.secret_prefix))
            .transpose()?;
        let Some(entry) = fresh.filter(|e| !e.moving() && task.due(e)) else {
            return Ok(UpkeepAction::Skipped);
        };
        let entry = &entry;
        Ok(match task {
            Task::Purge => {
                lifecycle::purge(db, sys, entry).await?;
                UpkeepAction::Purged
            }
            Task::DisableLogin => {
                let server = entry.server(db, sys).await?;
                let admin = server.admin().await?;
                access::disable(&admin, &entry.access).await?;
                UpkeepAction::LoginDisabled
            }
            Task::MakeCredentials => {
                let server = entry.server(db, sys).await?;
                let admin = server.admin().await?;
                let arn = access::ensure(db, &admin, &entry.access, true, true)
                    .await
                    .map_err(|e| match e {
                        AccessError::Db(e) => e,
                        foreign => DbError::Other(anyhow::Error::new(foreign)),
                    })?;
                sys.locking()
                    .execute(
                        "UPDATE tenants SET credentials_secret_arn = $2, role_name = $3, \
                           secret_name = $4, updated_at = now() \
                         WHERE id = $1 AND status = 'active'",
                        &[
                            &entry.tenant.id,
                            &arn,
                            &entry.access.role,
                            &entry.access.secret_name,
                        ],
                    )
                    .await?;
                UpkeepAction::CredentialsMade
            }
        })
    };
    let done = match tokio::time::timeout_at(until.into(), done).await {
        Ok(done) => done,
        Err(_) => Err(DbError::TimedOut(
            "out of time: the next run does it".into(),
        )),
    };
    guard.release().await;
    done
}
