//! The servers of a run, before any tenant: each one's admin connection (a server that cannot
//! be reached is marked down, and only its own tenants pay for it), the tenant logins' group
//! role, its template of this release (built when missing, those of other releases dropped),
//! and its orphan scan.

use std::sync::Arc;

use tracing::{error, warn};

use super::{
    outcome::Counts,
    reconcile,
    report::{ServerReport, TemplateReport},
    sanitize::sanitize_db,
};
use crate::{
    database::{Admin, Database, Server, ServerSource},
    pg::{error_chain, Conn, DbError},
    servers::{hardening, ServerState},
    tenant::{access::login, template},
};

/// A server of the run.
pub(super) struct FleetServer {
    pub name: String,
    pub handle: Arc<Server>,
    pub state: ServerState,
    /// Its `migrate_concurrency`: the most tenant connections the run opens on it at once.
    pub budget: usize,
    /// Why the run does not touch it (unreachable); `None` when it is usable.
    pub down: Option<String>,
    /// The slots of its budget this process holds (see `slots::take_slot`).
    pub slots: std::sync::Mutex<std::collections::HashSet<usize>>,
}

impl FleetServer {
    /// The slots of its budget this process holds.
    pub fn held_slots(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<usize>> {
        // Poisoned only by a panic while held, which nothing in it can cause.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every registered server, `primary` first.
pub(super) async fn load(db: &Database, sys: &Conn) -> Result<Vec<FleetServer>, DbError> {
    let rows = sys
        .query(
            "SELECT name, host, port, secret_arn, state, migrate_concurrency FROM servers \
             ORDER BY name <> 'primary', name",
            &[],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get("name")?;
        let state: String = row.try_get("state")?;
        let budget: i32 = row.try_get("migrate_concurrency")?;
        out.push(FleetServer {
            handle: db.server_at(&name, ServerSource::from_row(&row)?).await,
            state: ServerState::parse(&state).ok_or_else(|| {
                DbError::Other(anyhow::anyhow!("registry holds server state {state:?}"))
            })?,
            budget: usize::try_from(budget).unwrap_or(1).max(1),
            down: None,
            slots: Default::default(),
            name,
        });
    }
    Ok(out)
}

/// Prepares one server for the run (a dry run only looks) and reports it. A server whose
/// admin connection cannot be opened is marked down.
pub(super) async fn prepare(
    db: &Database,
    sys: &Conn,
    server: &mut FleetServer,
    dry_run: bool,
    until: std::time::Instant,
) -> ServerReport {
    let mut report = ServerReport {
        name: server.name.clone(),
        state: server.state,
        reachable: true,
        error: None,
        migrate_concurrency: server.budget,
        template: None,
        orphan_databases: Vec::new(),
        invalid_databases: Vec::new(),
        open_to_every_login: Vec::new(),
        counts: Counts::default(),
    };
    let admin = match server.handle.admin().await {
        Ok(admin) => admin,
        Err(e) => {
            warn!(server = %server.name, error = %error_chain(&e), "server unreachable; its tenants are not attempted");
            let reason = match e {
                DbError::Unavailable(_) => "server unreachable or not answering".to_owned(),
                other => sanitize_db(&other),
            };
            report.reachable = false;
            report.error = Some(reason.clone());
            server.down = Some(reason);
            return report;
        }
    };
    let prepared = async {
        if !dry_run {
            // Tenant migrations grant the tables to the tenant logins' group role.
            login::ensure_group(&admin).await?;
            let revoke = db.config().harden_shared_databases;
            report.open_to_every_login = hardening::harden(&admin, revoke).await?;
        }
        report.template =
            Some(check_template(db, sys, &admin, dry_run, server.state, until).await?);
        (report.orphan_databases, report.invalid_databases) =
            reconcile::find_orphans(sys, &admin).await?;
        Ok::<_, DbError>(())
    }
    .await;
    if let Err(e) = prepared {
        warn!(server = %server.name, error = %error_chain(&e), "could not prepare the server");
        report.error = Some(sanitize_db(&e));
        if e.is_unavailable() {
            report.reachable = false;
            server.down = report.error.clone();
        }
    }
    report
}

/// Builds this release's tenant template on the server if it is missing (an open server: a
/// draining one takes no new tenant) and drops those of other releases (a dry run only looks).
async fn check_template(
    db: &Database,
    sys: &Conn,
    admin: &Admin<'_>,
    dry_run: bool,
    state: ServerState,
    until: std::time::Instant,
) -> Result<TemplateReport, DbError> {
    let expected = template::expected(&db.config().system_db);
    let report = |ready, error| TemplateReport {
        name: expected.name.clone(),
        version: expected.version,
        ready,
        built: false,
        dropped: Vec::new(),
        error,
    };
    if dry_run || state != ServerState::Open {
        let ready = template::is_ready(sys, admin, &expected.name).await?;
        let mut r = report(ready, None);
        if !dry_run {
            r.dropped = template::drop_stale(sys, admin, &expected).await?;
        }
        return Ok(r);
    }
    let t = match template::ensure(db, sys, admin, until).await {
        Ok(t) => t,
        Err(DbError::Unavailable(m)) => return Err(DbError::Unavailable(m)),
        Err(e) => {
            error!(server = %admin.server().name(), error = %error_chain(&e), "the tenant template could not be built");
            return Ok(report(false, Some(sanitize_db(&e))));
        }
    };
    let dropped = template::drop_stale(sys, admin, &t).await?;
    Ok(TemplateReport {
        name: t.name,
        version: t.version,
        ready: true,
        built: t.built,
        dropped,
        error: None,
    })
}

/// The fleet's view of the template: ready when ready on every reachable open server, built
/// when built on one, every template dropped, the first error (named by its server).
pub(super) fn summarize_templates(
    servers: &[ServerReport],
    expected: &template::Template,
) -> TemplateReport {
    let mut out = TemplateReport {
        name: expected.name.clone(),
        version: expected.version,
        ready: true,
        built: false,
        dropped: Vec::new(),
        error: None,
    };
    for server in servers {
        let Some(t) = &server.template else { continue };
        if server.state == ServerState::Open {
            out.ready &= t.ready;
        }
        out.built |= t.built;
        out.dropped.extend(t.dropped.iter().cloned());
        if out.error.is_none() {
            out.error = t
                .error
                .as_ref()
                .map(|e| format!("server {}: {e}", server.name));
        }
    }
    out
}
