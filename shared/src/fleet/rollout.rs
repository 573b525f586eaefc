//! The run over its tenants: decided without work, or opened in two waves (a canary, then
//! the rest), with a brake; migrated inline with bounded concurrency (over the fleet, and per
//! server its `migrate_concurrency`), or written to the run ledger and queued for the
//! `migrate-tenant` workers (see `worker`).

use std::{collections::BTreeMap, time::Instant};

use tracing::{info, warn};

use super::{
    inline::Wave,
    outcome::{Deferral, TenantOutcome, TenantReport},
    plan::{Plan, TenantRow},
    prepare::FleetServer,
    report::{MigrateAllReport, RunStatus},
    sanitize::sanitize_db,
};
use crate::{
    aws::queue,
    database::Database,
    fleet::ledger::{self, RunMode},
    invocation::millis,
    migrate::ExpectedHistory,
    pg::Conn,
};

/// The canary wave's size for `work` tenants to open: as asked (at most all of them), else
/// 1% of them, at least 1.
pub(super) fn canary_size(asked: Option<usize>, work: usize) -> usize {
    asked.unwrap_or_else(|| work.div_ceil(100).max(1)).min(work)
}

/// Decides, migrates (inline) or queues every listed tenant, and fills the report's tenants
/// and counts.
///
/// - Decided without work, and recorded at once: a tenant the registry vouches for (at this
///   release's migrations), and one whose server is down or unknown (failed, not attempted).
/// - The rest, the tenants to open, go in two waves: the canary (the first ones in registry
///   order), then, only if no canary failed, the others. The brake halts the run once more
///   of them failed than `max_failures`: the tenants not started yet are `halted`.
/// - Inline, each server's tenants run side by side with the others', at most its budget at
///   once, and at most `plan.concurrency` over the fleet. Queued, the ledger gets every
///   tenant `pending` with its wave, then the first wave goes to the queue; the workers do
///   the rest (see `worker`).
pub(super) async fn run(
    db: &Database,
    sys: &Conn,
    servers: &[FleetServer],
    tenants: &[TenantRow],
    slugs: Option<&[String]>,
    plan: &Plan,
    report: &mut MigrateAllReport,
) -> RunMode {
    let waves = &plan.waves;
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
    let mut work: Vec<&TenantRow> = Vec::new();
    for t in tenants {
        let failed = |why: String| TenantReport {
            server: t.server.clone(),
            error: Some(why),
            ..TenantReport::new(&t.slug, TenantOutcome::Failed)
        };
        match server_of(t) {
            None => results.push(failed("the tenant's server is not registered".into())),
            // A server down hurts only its own tenants, and halts nothing: deferred.
            Some(s) if s.down.is_some() => results.push(TenantReport {
                server: t.server.clone(),
                ..TenantReport::deferred(
                    &t.slug,
                    Deferral::Unreachable,
                    format!(
                        "server '{}' unreachable: not attempted; the next run retries",
                        s.name
                    ),
                )
            }),
            Some(_) if vouched(t) => results.push(TenantReport {
                server: t.server.clone(),
                from_version: Some(latest),
                to_version: Some(latest),
                ..TenantReport::new(&t.slug, TenantOutcome::UpToDate)
            }),
            Some(_) => work.push(t),
        }
    }
    // A dry run changes nothing: it has no waves and no brake.
    let canary = if plan.dry_run {
        0
    } else {
        canary_size(waves.canary, work.len())
    };
    let max_failures = match &waves.max_failures {
        Some(m) if !plan.dry_run => Some(m.of(work.len())),
        _ => None,
    };
    report.canary = canary;
    report.max_failures = max_failures;
    // Waves only when there is a rest to hold back.
    let two_waves = canary > 0 && canary < work.len();
    let went = if waves.queue.is_some() && work.len() > waves.inline_max {
        RunMode::Queue
    } else {
        RunMode::Inline
    };
    report.mode = went;

    // Named slugs that are not active tenants (or, in a retry, tenants of the run deleted
    // since) are reported, not silently dropped, and recorded with the decided ones.
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

    let mut unrecorded = Vec::new();
    let step = Instant::now();
    if let Some(run) = plan.ledger {
        // One wave without a canary: every tenant is in the last one.
        let wave_of = |i: usize| i64::from(!two_waves || i >= canary);
        let mut planned: Vec<ledger::Planned> = work
            .iter()
            .enumerate()
            .map(|(i, t)| ledger::Planned {
                slug: &t.slug,
                server: t.server.as_deref(),
                wave: Some(wave_of(i)),
            })
            .collect();
        planned.extend(results.iter().map(|r| ledger::Planned {
            slug: &r.slug,
            server: r.server.as_deref(),
            wave: None,
        }));
        let brake = max_failures.map(|m| i64::try_from(m).unwrap_or(i64::MAX));
        let canary_size = if two_waves { canary as i64 } else { 0 };
        let planned = match ledger::plan(sys, run, plan.attempt, &planned, brake, canary_size).await
        {
            Ok(()) => true,
            Err(e) => {
                warn!(%run, error = %e, "could not plan the run in the run ledger");
                false
            }
        };
        // Decided without work (vouched for, server down or unknown, not active): recorded
        // now, at once.
        let decided = ledger::record_all(sys, run, &results).await;
        if !decided {
            unrecorded.extend(results.iter().cloned());
        }
        if went == RunMode::Queue && !(planned && decided) {
            // A queued run lives in the ledger: without its rows, nothing is sent, and the run
            // is closed at once (`retry_run` takes it again).
            let why = "the run ledger could not be written; nothing was queued";
            ledger::abandon(sys, run, why).await;
            report.error = Some(format!("{why}; {{\"retry_run\": \"{run}\"}} queues them"));
            report.status = RunStatus::Queued;
            tally(report, results, tenants);
            return RunMode::Queue;
        }
    }

    if went == RunMode::Queue {
        let ledger_rows = step.elapsed();
        let step = Instant::now();
        send_first_wave(sys, plan, &work, two_waves.then_some(canary), report).await;
        // Where planning's time goes (`make bench` reads it).
        info!(
            tenants = work.len(),
            ledger_ms = millis(ledger_rows),
            send_ms = millis(step.elapsed()),
            "a queued run's tenants planned and sent"
        );
        results.extend(work.iter().map(|t| TenantReport {
            server: t.server.clone(),
            ..TenantReport::new(&t.slug, TenantOutcome::Queued)
        }));
        tally(report, results, tenants);
        return RunMode::Queue;
    }

    // Inline: the canary wave, then the rest, with the brake.
    let wave = Wave::new(db, sys, servers, plan, expected, max_failures);
    let done = wave.all(&work, two_waves.then_some(canary), report).await;
    for (report, recorded) in done {
        if !recorded {
            unrecorded.push(report.clone());
        }
        results.push(report);
    }

    // Any write that failed on the way, once more: in one statement.
    if let Some(run) = plan.ledger {
        ledger::record_all(sys, run, &unrecorded).await;
    }
    tally(report, results, tenants);
    RunMode::Inline
}

/// A queued run's first wave (the canary, or every tenant) sent, one message per tenant; if
/// that fails, the run is closed at once (its tenants `not_started`: those already queued
/// find it closed and do nothing) and `retry_run` queues them again.
async fn send_first_wave(
    sys: &Conn,
    plan: &Plan,
    work: &[&TenantRow],
    canary: Option<usize>,
    report: &mut MigrateAllReport,
) {
    let two_waves = canary.is_some();
    let canary = canary.unwrap_or_default();
    let waves = &plan.waves;
    let first: Vec<String> = work
        .iter()
        .take(if two_waves { canary } else { work.len() })
        .map(|t| t.slug.clone())
        .collect();
    let url = waves.queue.as_deref().unwrap_or_default();
    if let Some(run) = plan.ledger {
        let sent = match ledger::queue(sys, run, i64::from(!two_waves)).await {
            Ok(()) => queue::send_tenants(url, run, plan.attempt, &first, plan.stop_at)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!(
                "the run ledger could not be written ({})",
                sanitize_db(&e)
            )),
        };
        if let Err(e) = sent {
            // The run cannot finish as planned: closed at once, its tenants `not_started`
            // (those already queued find it closed and do nothing). `retry_run` queues
            // them again.
            ledger::abandon(sys, run, &format!("could not queue the tenants: {e}")).await;
            report.error = Some(format!(
                "could not queue the tenants: {e}; the run is closed, and {{\"retry_run\": \"{run}\"}} queues them again"
            ));
        } else if !two_waves {
            ledger::note_rest_sent(sys, run, plan.attempt).await;
        }
    }
    report.status = RunStatus::Queued;
}

/// Counts the outcomes (the run's and each server's) and puts them in the report, in
/// registry order (oldest first), whatever order they finished in.
fn tally(report: &mut MigrateAllReport, mut results: Vec<TenantReport>, tenants: &[TenantRow]) {
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
