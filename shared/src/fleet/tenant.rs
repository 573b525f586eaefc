//! One tenant's migration in a run, and the run over the selected tenants: bounded
//! concurrency (over the fleet, and per server its `migrate_concurrency`), a time limit per
//! tenant, no tenant started once the invocation's deadline is near, and each tenant's outcome
//! written to the registry as it finishes.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use futures_util::{future::join_all, stream, StreamExt};
use tokio::sync::Semaphore;
use tokio_postgres::{error::SqlState, SimpleQueryMessage};
use tracing::{info, warn};

use super::{
    prepare::FleetServer,
    report::{sanitize_db, sanitize_refinery, MigrateAllReport, TenantOutcome, TenantReport},
};
use crate::{
    db::{Conn, Database, DbError, Server},
    locks::{self, Lock},
    migrations::{self, history_rows, ExpectedHistory, HistoryCheck, HistoryRow, HISTORY_TABLE},
    session::RunFailure,
};

/// A tenant of the run, as the registry recorded it when the run listed the tenants.
pub(super) struct TenantRow {
    slug: String,
    server: Option<String>,
    database_name: String,
    /// The proof of ownership (see `ownership`): the run touches a database only if its OID
    /// is this one.
    database_oid: Option<i64>,
    schema_version: i64,
    schema_fingerprint: Option<String>,
}

/// How the run treats each tenant.
pub(super) struct Plan {
    /// The run's id in the run ledger, where each outcome is written (real runs).
    pub ledger: Option<uuid::Uuid>,
    pub dry_run: bool,
    pub verify: bool,
    pub concurrency: usize,
    /// The longest wait for a tenant's lock.
    pub lock_wait: Duration,
    /// The longest one tenant may take (`MIGRATE_TENANT_TIMEOUT_SECS`).
    pub tenant_timeout: Duration,
    /// No tenant is started after this, and none works past it: the time left after it is
    /// for answering.
    pub stop_at: Instant,
    /// The invocation's own deadline: recording a tenant's outcome never waits past it.
    pub answer_by: Instant,
    /// A tenant is started only with at least this much time before `stop_at`.
    pub min_time: Duration,
}

/// The active tenants of the run: all of them, or those named in `slugs`.
pub(super) async fn list(sys: &Conn, slugs: Option<&[String]>) -> Result<Vec<TenantRow>, DbError> {
    const COLUMNS: &str =
        "slug, server, database_name, database_oid, schema_version, schema_fingerprint";
    let rows = match slugs {
        None => {
            sys.query(
                &format!(
                    "SELECT {COLUMNS} FROM tenants WHERE status = 'active' ORDER BY created_at, id"
                ),
                &[],
            )
            .await?
        }
        Some(slugs) => {
            sys.query(
                &format!(
                    "SELECT {COLUMNS} FROM tenants \
                     WHERE status = 'active' AND slug = ANY($1) ORDER BY created_at, id"
                ),
                &[&slugs],
            )
            .await?
        }
    };
    rows.iter()
        .map(|r| {
            Ok(TenantRow {
                slug: r.try_get("slug")?,
                server: r.try_get("server")?,
                database_name: r.try_get("database_name")?,
                database_oid: r.try_get("database_oid")?,
                schema_version: i64::from(r.try_get::<_, i32>("schema_version")?),
                schema_fingerprint: r.try_get("schema_fingerprint")?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(DbError::from)
}

/// The run's tenants as the run ledger plans them: slug and server.
pub(super) fn ledger_rows(tenants: &[TenantRow]) -> Vec<(String, Option<String>)> {
    tenants
        .iter()
        .map(|t| (t.slug.clone(), t.server.clone()))
        .collect()
}

/// Migrates (or, in a dry run, inspects) every listed tenant and fills the report's tenants
/// and counts. Each server's tenants run side by side with the others', at most its budget at
/// once, and at most `plan.concurrency` over the fleet; a server that is down fails its own
/// tenants without an attempt.
pub(super) async fn run(
    db: &Database,
    sys: &Conn,
    servers: &[FleetServer],
    tenants: &[TenantRow],
    slugs: Option<&[String]>,
    plan: &Plan,
    report: &mut MigrateAllReport,
) {
    let expected = ExpectedHistory::tenant();
    let fingerprint = expected.fingerprint();
    let latest = expected.latest();
    // The registry vouches for tenants recorded at this release's migrations.
    let vouched = |t: &TenantRow| {
        !plan.verify
            && t.schema_version == latest
            && t.schema_fingerprint.as_deref() == Some(fingerprint)
    };
    let server_of = |t: &TenantRow| {
        servers
            .iter()
            .find(|s| Some(s.name.as_str()) == t.server.as_deref())
    };
    let mut results = Vec::new();
    for t in tenants {
        let failed = |why: String| TenantReport {
            server: t.server.clone(),
            error: Some(why),
            ..TenantReport::new(&t.slug, TenantOutcome::Failed)
        };
        match server_of(t) {
            None => results.push(failed("the tenant's server is not registered".into())),
            Some(s) if s.down.is_some() => results.push(failed(format!(
                "server '{}' unreachable: not attempted; the next run retries",
                s.name
            ))),
            Some(_) if vouched(t) => results.push(TenantReport {
                server: t.server.clone(),
                from_version: Some(latest),
                to_version: Some(latest),
                ..TenantReport::new(&t.slug, TenantOutcome::UpToDate)
            }),
            Some(_) => {}
        }
    }
    // Decided without work (vouched for, server down or unknown): recorded now, at once.
    let mut unrecorded = Vec::new();
    if let Some(run) = plan.ledger {
        if !crate::ledger::record_all(sys, run, &results).await {
            unrecorded.extend(results.iter().cloned());
        }
    }
    let fleet = Semaphore::new(plan.concurrency);
    let per_server = servers.iter().filter(|s| s.down.is_none()).map(|server| {
        let mine: Vec<&TenantRow> = tenants
            .iter()
            .filter(|t| t.server.as_deref() == Some(server.name.as_str()) && !vouched(t))
            .collect();
        let fleet = &fleet;
        async move {
            stream::iter(mine)
                .map(|t| async move {
                    // Closed never: the semaphore lives as long as the run.
                    let _permit = fleet.acquire().await.ok();
                    let report = migrate_tenant(db, sys, server, t, plan, expected).await;
                    // Each outcome as soon as it is known: a run cut short keeps it.
                    let recorded = match plan.ledger {
                        Some(run) => crate::ledger::record(sys, run, &report).await,
                        None => true,
                    };
                    (report, recorded)
                })
                .buffer_unordered(server.budget)
                .collect::<Vec<(TenantReport, bool)>>()
                .await
        }
    });
    for checked in join_all(per_server).await {
        for (report, recorded) in checked {
            if !recorded {
                unrecorded.push(report.clone());
            }
            results.push(report);
        }
    }

    // Named slugs that are not active tenants are reported, not silently dropped.
    let named_only = results.len();
    if let Some(slugs) = slugs {
        for slug in slugs {
            if !tenants.iter().any(|t| &t.slug == slug) && !results.iter().any(|r| &r.slug == slug)
            {
                results.push(TenantReport {
                    error: Some("not an active tenant".into()),
                    ..TenantReport::new(slug, TenantOutcome::Skipped)
                });
            }
        }
    }
    // Those, and any write that failed on the way (once more): in one statement.
    if let Some(run) = plan.ledger {
        unrecorded.extend(results[named_only..].iter().cloned());
        crate::ledger::record_all(sys, run, &unrecorded).await;
    }
    // Report in registry order (oldest first), whatever order they finished in.
    let order: BTreeMap<&str, usize> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| (t.slug.as_str(), i))
        .collect();
    results.sort_by_key(|r| order.get(r.slug.as_str()).copied().unwrap_or(usize::MAX));
    for r in &results {
        report.counts.add(r.status);
        if let Some(s) = report
            .servers
            .iter_mut()
            .find(|s| Some(s.name.as_str()) == r.server.as_deref())
        {
            s.counts.add(r.status);
        }
    }
    report.tenants = results;
}

/// One tenant: its lock, its work within its time limit, its record in the registry.
async fn migrate_tenant(
    db: &Database,
    sys: &Conn,
    server: &FleetServer,
    tenant: &TenantRow,
    plan: &Plan,
    expected: &ExpectedHistory,
) -> TenantReport {
    let started = Instant::now();
    let limit = plan
        .stop_at
        .saturating_duration_since(started)
        .min(plan.tenant_timeout);
    let new = |status| TenantReport {
        server: Some(server.name.clone()),
        ..TenantReport::new(&tenant.slug, status)
    };
    if limit < plan.min_time {
        return new(TenantOutcome::NotStarted);
    }
    let mut report = new(TenantOutcome::Failed);
    if !sys.is_usable() {
        report.error = Some(
            "the registry connection was lost (and the run's locks with it); not started".into(),
        );
        return finish(report, started);
    }
    let lock = if plan.dry_run {
        None
    } else {
        let lock = Lock::Tenant(tenant.slug.clone());
        match locks::acquire(sys, lock, plan.lock_wait.min(limit)).await {
            Ok(Some(lock)) => Some(lock),
            Ok(None) => {
                report.error = Some(
                    "tenant is locked by another operation (create or delete); retry later".into(),
                );
                return finish(report, started);
            }
            Err(e) => {
                report.error = Some(sanitize_db(&e));
                return finish(report, started);
            }
        }
    };
    // Only the work on the tenant's own connection is cut at the limit (refinery's run is
    // cancelled on the server, see `Conn::migrate`): the lock, on the shared system
    // connection, is always given back properly. Should that connection be lost meanwhile,
    // the lock is gone with it, and the work stops.
    let until = started + limit;
    let work = migrate_one(
        db,
        &server.handle,
        tenant,
        plan.dry_run,
        expected,
        until,
        &mut report,
    );
    let outcome = tokio::select! {
        outcome = work => outcome,
        () = lost(sys) => Err("the registry connection was lost (and the tenant's lock with it); \
            the migration was stopped and the next run retries".into()),
    };
    // What the registry should say now: the version found, and the fingerprint only when the
    // history is known to match the released migrations.
    let (version, fingerprint) = match &outcome {
        Ok(current) => (
            report.to_version.unwrap_or(tenant.schema_version),
            current.then(|| expected.fingerprint().to_owned()),
        ),
        Err(message) => {
            report.status = TenantOutcome::Failed;
            report.error = Some(message.clone());
            (report.to_version.unwrap_or(tenant.schema_version), None)
        }
    };
    if !plan.dry_run
        && report.verified
        && (version != tenant.schema_version || fingerprint != tenant.schema_fingerprint)
    {
        let wait = sys_lock_wait(sys, plan.answer_by);
        record(sys, wait, &tenant.slug, version, fingerprint.as_deref()).await;
    }
    if let Some(lock) = lock {
        lock.release().await;
    }
    finish(report, started)
}

/// Resolves once the system connection is unusable (polled).
async fn lost(sys: &Conn) {
    while sys.is_usable() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a registry write may wait for a row lock: the lock timeout, but never past the
/// invocation's deadline.
fn sys_lock_wait(sys: &Conn, answer_by: Instant) -> Duration {
    sys.lock_wait()
        .min(answer_by.saturating_duration_since(Instant::now()))
}

/// Writes what the run found of one tenant to the registry, as soon as it is known (a run cut
/// short keeps what it did). Only active tenants: one deleted meanwhile keeps its record. A
/// failure is logged: the registry then still names the old state, and the next run opens
/// the tenant again.
async fn record(sys: &Conn, wait: Duration, slug: &str, version: i64, fingerprint: Option<&str>) {
    let Ok(version) = i32::try_from(version) else {
        warn!(tenant.slug = %slug, version, "schema version out of range; not recorded");
        return;
    };
    if let Err(e) = sys
        .within(wait)
        .execute(
            "UPDATE tenants SET schema_version = $2, schema_fingerprint = $3, updated_at = now() \
             WHERE slug = $1 AND status = 'active'",
            &[&slug, &version, &fingerprint],
        )
        .await
    {
        warn!(tenant.slug = %slug, error = %e, "could not record the tenant's version");
    }
}

fn finish(mut report: TenantReport, started: Instant) -> TenantReport {
    report.duration_ms = started.elapsed().as_millis() as u64;
    let r = &report;
    if r.status == TenantOutcome::Failed {
        warn!(
            tenant.slug = %r.slug, status = ?r.status, from_version = ?r.from_version,
            to_version = ?r.to_version, applied = ?r.applied, error = r.error.as_deref().unwrap_or(""),
            duration_ms = r.duration_ms, "tenant migration"
        );
    } else {
        info!(
            tenant.slug = %r.slug, status = ?r.status, from_version = ?r.from_version,
            to_version = ?r.to_version, applied = ?r.applied, pending = ?r.pending,
            duration_ms = r.duration_ms, "tenant migration"
        );
    }
    report
}

/// The database's OID and its history, in one round trip.
async fn read_tenant(conn: &Conn) -> Result<(Option<i64>, Vec<HistoryRow>), DbError> {
    const OID: &str = "SELECT oid::bigint FROM pg_database WHERE datname = current_database()";
    let oid_of = |messages: &[SimpleQueryMessage]| {
        messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse::<i64>().ok()),
            _ => None,
        })
    };
    let both = format!(
        "{OID}; SELECT version::bigint, name::text, checksum::text FROM {HISTORY_TABLE} \
         ORDER BY version"
    );
    match conn.simple_query(&both).await {
        Ok(messages) => {
            // The first statement's answer ends at its CommandComplete.
            let split = messages
                .iter()
                .position(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)))
                .map_or(messages.len(), |i| i + 1);
            let (first, rest) = messages.split_at(split);
            Ok((oid_of(first), history_rows(rest)))
        }
        // No history table: nothing applied.
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
            Ok((oid_of(&conn.simple_query(OID).await?), Vec::new()))
        }
        Err(e) => Err(e),
    }
}

/// The body of one tenant's migration. `Ok(true)` when the database ends at the released
/// migrations, `Ok(false)` when it does not (dry run with pending migrations); `Err` is the
/// sanitised reason it failed.
async fn migrate_one(
    db: &Database,
    server: &Server,
    tenant: &TenantRow,
    dry_run: bool,
    expected: &ExpectedHistory,
    until: Instant,
    report: &mut TenantReport,
) -> Result<bool, String> {
    let mut conn = match server.connect(db, &tenant.database_name).await {
        Ok(c) => c,
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
            return Err("tenant database does not exist".into())
        }
        Err(e) => return Err(sanitize_db(&e)),
    };
    // One cheap read decides whether this is our database and whether refinery is needed.
    let (oid, history) = read_tenant(&conn).await.map_err(|e| sanitize_db(&e))?;
    if oid.is_none() || oid != tenant.database_oid {
        return Err(
            "the database of this name is not the one this registry made (its OID differs \
             from the registry's record); left untouched"
                .into(),
        );
    }
    report.verified = true;
    let from = history.iter().map(|h| h.version).max().unwrap_or(0);
    report.from_version = Some(from);
    report.to_version = Some(from);
    match expected.check(&history) {
        HistoryCheck::Diverged(reason) => return Err(reason),
        HistoryCheck::Current => {
            report.status = TenantOutcome::UpToDate;
            return Ok(true);
        }
        HistoryCheck::Pending(pending) if dry_run => {
            report.status = TenantOutcome::Pending;
            report.pending = pending;
            return Ok(false);
        }
        HistoryCheck::Pending(_) => {}
    }
    let (applied, outcome) = conn
        .migrate(
            migrations::tenant_runner,
            &db.config().migrate_session,
            until,
        )
        .await
        .map_err(|e| sanitize_db(&e))?;
    // Each migration commits on its own: the database is at the last one applied.
    report.applied = applied;
    let now_at = report.applied.iter().copied().fold(from, i64::max);
    report.to_version = Some(now_at);
    match outcome {
        Ok(()) => {
            report.status = if report.applied.is_empty() {
                TenantOutcome::UpToDate
            } else {
                TenantOutcome::Migrated
            };
            // refinery refuses divergent and missing versions: applied in full, the history
            // is the released one.
            Ok(now_at == expected.latest())
        }
        Err(RunFailure::Refinery(e)) => Err(sanitize_refinery(&e)),
        Err(e) => Err(sanitize_db(&migrations::run_failure(
            &e,
            "tenant migrations failed",
        ))),
    }
}
