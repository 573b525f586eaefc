//! One tenant's migration, the same inline and in a `migrate-tenant` worker: a slot of its
//! server's budget, its lock, a time limit, no start once the invocation's deadline is near,
//! and its version written to the registry as soon as it is known.

use std::time::{Duration, Instant};

use tokio_postgres::{error::SqlState, SimpleQueryMessage};
use tracing::{info, warn};

use super::{
    prepare::FleetServer,
    report::{sanitize_db, sanitize_refinery, TenantOutcome, TenantReport},
};
use crate::{
    db::{Conn, Database, DbError, Server},
    ledger,
    locks::{self, Lock},
    migrations::{self, history_rows, ExpectedHistory, HistoryCheck, HistoryRow, HISTORY_TABLE},
    session::RunFailure,
};

/// A tenant of the run, as the registry recorded it when the run listed the tenants.
pub(super) struct TenantRow {
    pub(super) slug: String,
    pub(super) server: Option<String>,
    pub(super) database_name: String,
    /// The proof of ownership (see `ownership`): the run touches a database only if its OID
    /// is this one.
    pub(super) database_oid: Option<i64>,
    pub(super) schema_version: i64,
    pub(super) schema_fingerprint: Option<String>,
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
    /// A worker of the queue: a tenant whose server has no free slot, or whose lock is taken,
    /// is given back (`Attempted::Busy`) to be sent again later, instead of waited for.
    pub give_back_when_busy: bool,
    /// The rollout (inline runs and planning only).
    pub waves: super::rollout::Waves,
    /// The run's attempt (0, then one more per `retry_run`): what its messages carry.
    pub attempt: i64,
}

impl Plan {
    /// Real work within the invocation's deadline, with the configured limits: it starts no
    /// tenant in the last tenth of the time left (at most the last 10 s), which is for
    /// answering. No ledger, one tenant at a time, waits for what is busy, no waves.
    pub fn within(config: &crate::Config, inv: &crate::Invocation) -> Plan {
        let reserve = super::RESERVE.min(inv.time_left() / super::RESERVE_SHARE);
        Plan {
            ledger: None,
            dry_run: false,
            verify: false,
            concurrency: 1,
            lock_wait: config.lock_timeout,
            tenant_timeout: config.migrate_tenant_timeout,
            stop_at: inv.deadline.checked_sub(reserve).unwrap_or(inv.deadline),
            answer_by: inv.deadline,
            min_time: config.connect_timeout.min(Duration::from_secs(1)),
            give_back_when_busy: false,
            waves: Default::default(),
            attempt: 0,
        }
    }
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

/// What became of one tenant's attempt.
pub(super) enum Attempted {
    /// Its outcome (a queue worker's is in the run ledger, written before the tenant's locks
    /// were given back).
    Done(TenantReport),
    /// A queue worker's: the server's budget was full or the tenant's lock taken; nothing was
    /// done, and the tenant is given back for later.
    Busy,
    /// A queue worker's: once it held the tenant's lock, the tenant had its outcome already
    /// (another copy of its message was first), or its run had moved on.
    NotPending,
    /// A queue worker's: the work was done but the outcome could not be written to the run
    /// ledger (the message comes back; the migration is not repeated).
    Unrecorded(TenantReport),
    /// A queue worker's: the tenant's server (or the registry) could not be reached or did not
    /// answer. Not recorded: the message comes back after its visibility timeout, and after
    /// too many deliveries goes to the dead-letter queue.
    Unavailable(TenantReport),
}

/// One tenant: a slot of its server's budget, its lock, its work within its time limit,
/// its record in the registry. Inline, the answer is always `Done`. A queue worker
/// (`plan.give_back_when_busy`) waits for nothing (`Busy`), checks once it holds the tenant's
/// lock that the tenant is still pending in its run's attempt, and records the outcome in the
/// run ledger before it gives the lock back, so that no other copy of the message can start
/// in between.
///
/// The same code migrates a tenant inline and in a `migrate-tenant` worker.
pub(super) async fn migrate_tenant(
    db: &Database,
    sys: &Conn,
    server: &FleetServer,
    tenant: &TenantRow,
    plan: &Plan,
    expected: &ExpectedHistory,
) -> Attempted {
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
        return Attempted::Done(new(TenantOutcome::NotStarted));
    }
    let mut report = new(TenantOutcome::Failed);
    if !sys.is_usable() {
        report.error = Some(
            "the registry connection was lost (and the run's locks with it); not started".into(),
        );
        return Attempted::Done(finish(report, started));
    }
    let worker = plan.give_back_when_busy;
    // A dry run opens one connection per tenant and changes nothing: no slot, no lock.
    let (slot, lock) = if plan.dry_run {
        (None, None)
    } else {
        let wait = if worker {
            Duration::ZERO
        } else {
            plan.lock_wait.min(limit)
        };
        let slot = match take_slot(sys, server, wait).await {
            Ok(Some(slot)) => slot,
            Ok(None) if worker => return Attempted::Busy,
            Ok(None) => {
                report.error = Some(format!(
                    "server '{}' has no free migration slot (its migrate_concurrency); retry later",
                    server.name
                ));
                return Attempted::Done(finish(report, started));
            }
            Err(e) => {
                report.error = Some(sanitize_db(&e));
                return Attempted::Done(finish(report, started));
            }
        };
        let lock = Lock::Tenant(tenant.slug.clone());
        match locks::acquire(sys, lock, wait).await {
            Ok(Some(lock)) => (Some(slot), Some(lock)),
            Ok(None) => {
                slot.release(server).await;
                if worker {
                    return Attempted::Busy;
                }
                report.error = Some(
                    "tenant is locked by another operation (create or delete); retry later".into(),
                );
                return Attempted::Done(finish(report, started));
            }
            Err(e) => {
                slot.release(server).await;
                report.error = Some(sanitize_db(&e));
                return Attempted::Done(finish(report, started));
            }
        }
    };
    let run = plan.ledger.filter(|_| worker);
    // A worker's tenant is still to migrate, now that the worker holds its lock?
    let pending = match run {
        Some(run) => ledger::assignment(sys, run, &tenant.slug)
            .await
            .map(|a| a.is_some_and(|a| a.is_work(plan.attempt))),
        None => Ok(true),
    };
    let attempted = match pending {
        Ok(true) => Attempted::Done(
            work(
                db, sys, server, tenant, plan, expected, started, limit, report,
            )
            .await,
        ),
        Ok(false) => Attempted::NotPending,
        Err(e) => {
            // Nothing done: the tenant comes back later.
            warn!(tenant.slug = %tenant.slug, error = %e, "could not read the run ledger");
            Attempted::Busy
        }
    };
    // A worker's outcome goes to the ledger while it still holds the tenant's lock.
    let attempted = match (run, attempted) {
        (Some(_), Attempted::Done(report)) if report.unavailable => Attempted::Unavailable(report),
        (Some(run), Attempted::Done(report)) => {
            match ledger::record_once(sys, run, plan.attempt, &report).await {
                Ok(_) => Attempted::Done(report),
                Err(e) => {
                    warn!(%run, tenant.slug = %tenant.slug, error = %e,
                        "could not record the outcome in the run ledger");
                    Attempted::Unrecorded(report)
                }
            }
        }
        (_, other) => other,
    };
    if let Some(lock) = lock {
        lock.release().await;
    }
    if let Some(slot) = slot {
        slot.release(server).await;
    }
    attempted
}

/// The work on one tenant once it is ours: its database migrated (or inspected) within its
/// limit, and its version recorded in the registry.
#[allow(clippy::too_many_arguments)]
async fn work(
    db: &Database,
    sys: &Conn,
    server: &FleetServer,
    tenant: &TenantRow,
    plan: &Plan,
    expected: &ExpectedHistory,
    started: Instant,
    limit: Duration,
    mut report: TenantReport,
) -> TenantReport {
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
        () = lost(sys) => Err(Failure {
            message: "the registry connection was lost (and the tenant's lock with it); the \
                migration was stopped and the next run retries".into(),
            unavailable: true,
        }),
    };
    // What the registry should say now: the version found, and the fingerprint only when the
    // history is known to match the released migrations.
    let (version, fingerprint) = match &outcome {
        Ok(current) => (
            report.to_version.unwrap_or(tenant.schema_version),
            current.then(|| expected.fingerprint().to_owned()),
        ),
        Err(failure) => {
            report.status = TenantOutcome::Failed;
            report.error = Some(failure.message.clone());
            report.unavailable = failure.unavailable;
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
    finish(report, started)
}

/// One of a server's slots, held by this process.
struct Slot<'c> {
    n: usize,
    guard: locks::LockGuard<'c>,
}

impl Slot<'_> {
    async fn release(self, server: &FleetServer) {
        self.guard.release().await;
        server.held_slots().remove(&self.n);
    }
}

/// A free slot of the server's budget (see `Lock::Slot`), waiting at most `wait` (zero: one
/// look at each slot). Advisory locks are re-entrant within a session, and an inline run's
/// tenants share one: the slots this process already holds are skipped, so that each tenant
/// at work holds a slot of its own.
async fn take_slot<'c>(
    sys: &'c Conn,
    server: &FleetServer,
    wait: Duration,
) -> Result<Option<Slot<'c>>, DbError> {
    let deadline = Instant::now() + wait;
    loop {
        for n in 0..server.budget {
            // Claimed before the lock is tried, so that two tenants of this run never try the
            // same slot at once.
            if !server.held_slots().insert(n) {
                continue;
            }
            match locks::try_acquire(sys, Lock::slot(&server.name, n)).await {
                Ok(Some(guard)) => return Ok(Some(Slot { n, guard })),
                Ok(None) => {
                    server.held_slots().remove(&n);
                }
                Err(e) => {
                    server.held_slots().remove(&n);
                    return Err(e);
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50).min(deadline - now)).await;
    }
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

/// Why a tenant's work failed: the sanitised reason, and whether the cause was a server or a
/// connection that could not be reached or did not answer (a queue worker lets the message
/// come back for those, rather than record a failure that is nobody's migration's).
struct Failure {
    message: String,
    unavailable: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            message,
            unavailable: false,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::from(message.to_owned())
    }
}

fn db_failure(e: &DbError) -> Failure {
    Failure {
        message: sanitize_db(e),
        unavailable: e.is_unavailable(),
    }
}

/// The body of one tenant's migration. `Ok(true)` when the database ends at the released
/// migrations, `Ok(false)` when it does not (dry run with pending migrations); `Err` is why it
/// failed.
async fn migrate_one(
    db: &Database,
    server: &Server,
    tenant: &TenantRow,
    dry_run: bool,
    expected: &ExpectedHistory,
    until: Instant,
    report: &mut TenantReport,
) -> Result<bool, Failure> {
    let mut conn = match server.connect(db, &tenant.database_name).await {
        Ok(c) => c,
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
            return Err("tenant database does not exist".into())
        }
        Err(e) => return Err(db_failure(&e)),
    };
    // One cheap read decides whether this is our database and whether refinery is needed.
    let (oid, history) = read_tenant(&conn).await.map_err(|e| db_failure(&e))?;
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
        HistoryCheck::Diverged(reason) => return Err(reason.into()),
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
        .map_err(|e| db_failure(&e))?;
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
        Err(RunFailure::Refinery(e)) => Err(sanitize_refinery(&e).into()),
        Err(e) => Err(db_failure(&migrations::run_failure(
            &e,
            "tenant migrations failed",
        ))),
    }
}
