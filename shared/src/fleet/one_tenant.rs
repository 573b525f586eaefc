//! One tenant's migration, the same inline and in a `migrate-tenant` worker: a slot of its
//! server's budget, its lock, a time limit, no start once the invocation's deadline is near,
//! and its version written to the registry as soon as it is known.

use std::time::{Duration, Instant};

use tokio_postgres::{error::SqlState, SimpleQueryMessage};
use tracing::{info, warn};

use super::{
    prepare::FleetServer,
    report::{sanitize_db, sanitize_refinery, Deferral, TenantOutcome, TenantReport},
};
use crate::{
    database::{Database, Server},
    fleet::ledger,
    migrate::{
        self, history::history_rows, ExpectedHistory, HistoryCheck, HistoryRow, RunFailure,
        HISTORY_TABLE,
    },
    pg::{
        locks::{self, Lock},
        Conn, DbError,
    },
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
    /// is given back (`Attempted::GiveBack`) to be sent again later, instead of waited for.
    pub give_back_when_busy: bool,
    /// A worker of the queue whose message has tries left: a tenant whose server cannot be
    /// reached is given back rather than recorded deferred.
    pub give_back_unreachable: bool,
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
            give_back_unreachable: false,
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
    /// Its outcome. A queue worker's is in the run ledger already, written before the tenant's
    /// locks were given back.
    Done(TenantReport),
    /// A queue worker's: nothing was done, for now (the server's budget was full, the tenant's
    /// lock taken, or its server unreachable with tries left: `unreachable`): the message is
    /// given back, to come again later.
    GiveBack { unreachable: bool },
    /// A queue worker's: once it held the tenant's lock, the tenant had its outcome already
    /// (another copy of its message was first), or its run had moved on.
    NotPending,
    /// A queue worker's: the registry failed it (taking a slot or a lock, reading or writing
    /// the run ledger), so its outcome, if any, is not recorded. The message comes back after
    /// its visibility timeout (and after five deliveries goes to the dead-letter queue and its
    /// alarm); a migration done is not repeated, only found done.
    Unrecorded,
}

/// One tenant: a slot of its server's budget, its lock, its work within its time limit,
/// its record in the registry. Inline, the answer is always `Done`. A queue worker
/// (`plan.give_back_when_busy`) waits for nothing (`GiveBack`), checks once it holds the
/// tenant's lock that the tenant is still pending in its run's attempt, and records the
/// outcome in the run ledger before it gives the lock back, so that no other copy of the
/// message can start in between. Every way out of a worker's attempt is one of: recorded
/// (`Done`), given back, not pending, or left for the message's redelivery (`Unrecorded`):
/// never a message deleted with its tenant still pending.
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
    let on_server = |mut report: TenantReport| {
        report.server = Some(server.name.clone());
        report
    };
    if limit < plan.min_time {
        return Attempted::Done(on_server(TenantReport::new(
            &tenant.slug,
            TenantOutcome::NotStarted,
        )));
    }
    let worker = plan.give_back_when_busy;
    if !sys.is_usable() {
        if worker {
            return Attempted::Unrecorded;
        }
        let report = TenantReport::deferred(
            &tenant.slug,
            Deferral::Unreachable,
            "the registry connection was lost (and the run's locks with it); not started",
        );
        return Attempted::Done(finish(on_server(report), started));
    }
    // A dry run opens one connection per tenant and changes nothing: no slot, no lock.
    let (slot, lock) = if plan.dry_run {
        (None, None)
    } else {
        let wait = if worker {
            Duration::ZERO
        } else {
            plan.lock_wait.min(limit)
        };
        let held = take_slot_and_lock(sys, server, tenant, wait).await;
        match held {
            Ok(Held::Both(slot, lock)) => (Some(slot), Some(lock)),
            Ok(Held::NoSlot | Held::Locked) if worker => {
                return Attempted::GiveBack { unreachable: false }
            }
            Ok(Held::NoSlot) => {
                let why = format!(
                    "server '{}' had no free migration slot (its migrate_concurrency) in time",
                    server.name
                );
                let report = TenantReport::deferred(&tenant.slug, Deferral::Busy, why);
                return Attempted::Done(finish(on_server(report), started));
            }
            Ok(Held::Locked) => {
                let why = "the tenant was locked by another operation (a create, a delete, a \
                           rotation) the whole time";
                let report = TenantReport::deferred(&tenant.slug, Deferral::Busy, why);
                return Attempted::Done(finish(on_server(report), started));
            }
            Err(e) => {
                warn!(tenant.slug = %tenant.slug, error = %e, "could not take the tenant's slot or lock");
                if worker {
                    return Attempted::Unrecorded;
                }
                let report = match Failure::of(&e).deferral {
                    Some(why) => TenantReport::deferred(&tenant.slug, why, sanitize_db(&e)),
                    None => TenantReport {
                        error: Some(sanitize_db(&e)),
                        ..TenantReport::new(&tenant.slug, TenantOutcome::Failed)
                    },
                };
                return Attempted::Done(finish(on_server(report), started));
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
    let report = on_server(TenantReport::new(&tenant.slug, TenantOutcome::Failed));
    let attempted = match pending {
        Ok(true) => Attempted::Done(work(db, sys, server, tenant, plan, expected, report).await),
        Ok(false) => Attempted::NotPending,
        Err(e) => {
            warn!(tenant.slug = %tenant.slug, error = %e, "could not read the run ledger");
            Attempted::Unrecorded
        }
    };
    // A worker's outcome goes to the ledger while it still holds the tenant's lock; one whose
    // server could not be reached is first given back a few times (a blip is not worth a
    // deferral), then recorded deferred.
    let attempted = match (run, attempted) {
        (Some(_), Attempted::Done(report))
            if report.deferral == Some(Deferral::Unreachable) && plan.give_back_unreachable =>
        {
            Attempted::GiveBack { unreachable: true }
        }
        (Some(_), Attempted::Done(_)) if !sys.is_usable() => Attempted::Unrecorded,
        (Some(run), Attempted::Done(report)) => {
            match ledger::record_once(sys, run, plan.attempt, &report).await {
                Ok(_) => Attempted::Done(report),
                Err(e) => {
                    warn!(%run, tenant.slug = %tenant.slug, error = %e,
                        "could not record the outcome in the run ledger");
                    Attempted::Unrecorded
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

/// What a tenant's attempt holds before it works.
enum Held<'c> {
    Both(Slot<'c>, locks::LockGuard<'c>),
    /// The server's budget had no free slot within the wait.
    NoSlot,
    /// The tenant's lock stayed taken within the wait.
    Locked,
}

/// A slot of the tenant's server's budget, then the tenant's lock, each within `wait` (zero:
/// one try). What was taken is given back when the rest cannot be.
async fn take_slot_and_lock<'c>(
    sys: &'c Conn,
    server: &FleetServer,
    tenant: &TenantRow,
    wait: Duration,
) -> Result<Held<'c>, DbError> {
    let Some(slot) = take_slot(sys, server, wait).await? else {
        return Ok(Held::NoSlot);
    };
    match locks::acquire(sys, Lock::Tenant(tenant.slug.clone()), wait).await {
        Ok(Some(lock)) => Ok(Held::Both(slot, lock)),
        Ok(None) => {
            slot.release(server).await;
            Ok(Held::Locked)
        }
        Err(e) => {
            slot.release(server).await;
            Err(e)
        }
    }
}

/// The work on one tenant once it is ours: its database migrated (or inspected) within its
/// limit, and its version recorded in the registry. `report` is its report so far.
async fn work(
    db: &Database,
    sys: &Conn,
    server: &FleetServer,
    tenant: &TenantRow,
    plan: &Plan,
    expected: &ExpectedHistory,
    mut report: TenantReport,
) -> TenantReport {
    let started = Instant::now();
    let limit = plan
        .stop_at
        .saturating_duration_since(started)
        .min(plan.tenant_timeout);
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
            deferral: Some(Deferral::Unreachable),
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
            report.status = match failure.deferral {
                Some(_) => TenantOutcome::Deferred,
                None => TenantOutcome::Failed,
            };
            report.error = Some(failure.message.clone());
            report.deferral = failure.deferral;
            (report.to_version.unwrap_or(tenant.schema_version), None)
        }
    };
    if !plan.dry_run
        && report.verified
        && report.status != TenantOutcome::Skipped
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
///
/// A slot is given back only once its tenant's connection has closed on the server (see
/// `Conn::close`): the budget counts backends, not promises.
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
    if matches!(r.status, TenantOutcome::Failed | TenantOutcome::Deferred) {
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

/// Why a tenant's work did not end well: the sanitised reason, and whether it is to be
/// deferred (busy, out of time, unreachable: nothing is wrong with its migrations) rather than
/// failed.
struct Failure {
    message: String,
    deferral: Option<Deferral>,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            message,
            deferral: None,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::from(message.to_owned())
    }
}

impl Failure {
    /// What an error of the database means for the tenant: unreachable, busy and out of time
    /// are deferrals; anything else a failure.
    fn of(e: &DbError) -> Failure {
        let deferral = if e.is_unavailable() {
            Some(Deferral::Unreachable)
        } else if e.is_lock_timeout() {
            Some(Deferral::Busy)
        } else if e.is_timed_out() {
            Some(Deferral::OutOfTime)
        } else {
            None
        };
        Failure {
            message: sanitize_db(e),
            deferral,
        }
    }
}

/// The body of one tenant's migration. `Ok(true)` when the database ends at the released
/// migrations, `Ok(false)` when it does not (a dry run with pending migrations, or a database
/// a newer release migrated); `Err` is why it did not end well. The tenant's connection is
/// closed on the server before this returns (see `take_slot`).
async fn migrate_one(
    db: &Database,
    server: &Server,
    tenant: &TenantRow,
    dry_run: bool,
    expected: &ExpectedHistory,
    until: Instant,
    report: &mut TenantReport,
) -> Result<bool, Failure> {
    let mut conn = match server.connect(&tenant.database_name).await {
        Ok(c) => c,
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
            return Err("tenant database does not exist".into())
        }
        Err(e) => return Err(Failure::of(&e)),
    };
    let outcome = migrate_on(db, &mut conn, tenant, dry_run, expected, until, report).await;
    conn.close().await;
    outcome
}

async fn migrate_on(
    db: &Database,
    conn: &mut Conn,
    tenant: &TenantRow,
    dry_run: bool,
    expected: &ExpectedHistory,
    until: Instant,
    report: &mut TenantReport,
) -> Result<bool, Failure> {
    // One cheap read decides whether this is our database and whether refinery is needed.
    let (oid, history) = read_tenant(conn).await.map_err(|e| Failure::of(&e))?;
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
        // Newer migrations than this release's, which the registry knows of: a newer release's
        // run migrated it (a deploy in progress), not ours to judge. Unknown to the registry,
        // they were put there behind its back: reported as any other divergence.
        HistoryCheck::Ahead(newer)
            if newer.iter().max().copied().unwrap_or(i64::MAX) > tenant.schema_version =>
        {
            let shown: Vec<String> = newer.iter().map(|v| format!("V{v}")).collect();
            return Err(format!(
                "applied migration {} is not among the released migrations, and the registry \
                 knows of no release that made it (it records version {})",
                shown.join(", "),
                tenant.schema_version
            )
            .into());
        }
        HistoryCheck::Ahead(newer) => {
            report.status = TenantOutcome::Skipped;
            report.error = Some(format!(
                "migrated by a newer release (its migrations {newer:?} are not in this one); \
                 left as it is"
            ));
            return Ok(false);
        }
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
    let (applied, outcome) = migrate::run(
        conn,
        migrate::tenant_runner,
        &db.config().migrate_session,
        until,
    )
    .await
    .map_err(|e| Failure::of(&e))?;
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
        // A connection lost on the way (a failover) is no failed migration: deferred; nor is
        // a statement that ran past MIGRATE_STATEMENT_TIMEOUT_SECS (or was cancelled): out of
        // time.
        Err(RunFailure::Refinery(e)) => match migrate::failure::refinery_failure(&e, "") {
            lost if lost.is_unavailable() => Err(Failure::of(&lost)),
            _ if crate::migrate::failure::pg_error(&e).and_then(tokio_postgres::Error::code)
                == Some(&SqlState::QUERY_CANCELED) =>
            {
                Err(Failure {
                    message: format!(
                        "{} (the statement ran out of time: MIGRATE_STATEMENT_TIMEOUT_SECS); \
                         the next run goes on from there",
                        sanitize_refinery(&e)
                    ),
                    deferral: Some(Deferral::OutOfTime),
                })
            }
            _ => Err(sanitize_refinery(&e).into()),
        },
        Err(e) => Err(Failure::of(&migrate::run_failure(
            &e,
            "tenant migrations failed",
        ))),
    }
}
