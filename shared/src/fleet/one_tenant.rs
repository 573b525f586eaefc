//! One tenant's migration, the same inline and in a `migrate-tenant` worker: a slot of its
//! server's budget, its lock, a time limit, no start once the invocation's deadline is near,
//! and its version written to the registry as soon as it is known.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{
    outcome::{Deferral, Steps, TenantOutcome, TenantReport},
    plan::{Attempt, TenantRow},
    sanitize::sanitize_db,
    slots::{take_slot_and_lock, Held},
    tenant_db::{self, Failure},
};
use crate::{
    fleet::ledger,
    metrics::{self, Unit},
    pg::{Conn, DbError},
};

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
pub(super) async fn migrate_tenant(at: &Attempt<'_>) -> Attempted {
    let Attempt {
        sys,
        server,
        tenant,
        plan,
        ..
    } = *at;
    let started = Instant::now();
    let limit = plan.tenant_limit(started);
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
    let step = Instant::now();
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
    let mut report = on_server(TenantReport::new(&tenant.slug, TenantOutcome::Failed));
    report.steps.slot = Steps::since(step);
    // A tenant that is moving is migrated where it lands: a schema changed under an online
    // move would not replicate (its lock is the move's only during each of its steps).
    let moving = !plan.dry_run && pending.as_ref().is_ok_and(|p| *p) && moving(sys, tenant).await;
    let attempted = match pending {
        Ok(true) if moving && worker => Attempted::GiveBack { unreachable: false },
        Ok(true) if moving => {
            let why = "the tenant is moving to another server; a later run migrates it there";
            let report = TenantReport::deferred(&tenant.slug, Deferral::Busy, why);
            Attempted::Done(finish(on_server(report), started))
        }
        Ok(true) => Attempted::Done(work(at, report).await),
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

/// True when the tenant has a running move (or the registry could not say: then it waits too).
async fn moving(sys: &Conn, tenant: &TenantRow) -> bool {
    sys.query_one(
        "SELECT EXISTS (SELECT 1 FROM moves m JOIN tenants t ON t.id = m.tenant_id \
           WHERE t.slug = $1 AND m.state = 'running')",
        &[&tenant.slug],
    )
    .await
    .and_then(|row| row.try_get::<_, bool>(0).map_err(DbError::from))
    .unwrap_or(true)
}

/// The work on one tenant once it is ours: its database migrated (or inspected) within its
/// limit, and its version recorded in the registry. `report` is its report so far.
async fn work(at: &Attempt<'_>, mut report: TenantReport) -> TenantReport {
    let Attempt {
        sys,
        tenant,
        plan,
        expected,
        ..
    } = *at;
    let started = Instant::now();
    let limit = plan.tenant_limit(started);
    // Only the work on the tenant's own connection is cut at the limit (refinery's run is
    // cancelled on the server, see `migrate::run`): the lock, on the shared system
    // connection, is always given back properly. Should that connection be lost meanwhile,
    // the lock is gone with it, and the work stops.
    let until = started + limit;
    let work = tenant_db::migrate(at, until, &mut report);
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
        let step = Instant::now();
        record(sys, wait, &tenant.slug, version, fingerprint.as_deref()).await;
        report.steps.record = Steps::since(step);
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
    metrics::emit(
        &[("Outcome", r.status.as_str())],
        &[
            ("TenantMigrations", 1.0, Unit::Count),
            (
                "TenantMigrationDuration",
                r.duration_ms as f64,
                Unit::Milliseconds,
            ),
        ],
    );
    if matches!(r.status, TenantOutcome::Failed | TenantOutcome::Deferred) {
        warn!(
            tenant.slug = %r.slug, status = ?r.status, from_version = ?r.from_version,
            to_version = ?r.to_version, applied = ?r.applied, error = r.error.as_deref().unwrap_or(""),
            duration_ms = r.duration_ms, "tenant migration"
        );
    } else {
        let s = &r.steps;
        info!(
            tenant.slug = %r.slug, status = ?r.status, from_version = ?r.from_version,
            to_version = ?r.to_version, applied = ?r.applied, pending = ?r.pending,
            duration_ms = r.duration_ms, slot_ms = s.slot, connect_ms = s.connect,
            migrate_ms = s.migrate, close_ms = s.close, record_ms = s.record, "tenant migration"
        );
    }
    report
}
