//! migrate-all over the fleet, against the sequential baseline (see `baseline`): with nothing
//! pending (goal: under 2 s per 1,000 tenants and ≥ 10x the baseline), the same verifying
//! every tenant database, and one pending migration in every tenant, inline (goal: at most
//! 1.25x its floor, a bare client doing the same work: see `pending_floor`) and then through
//! the queue (against inline); with each server's figures and the most tenant connections
//! each server saw.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use e2e::json;
use futures_util::{stream, StreamExt};
use serde_json::Value;

use crate::{
    fanout, pending_floor,
    progress::step,
    table::{ms, named_ms, Row, Stats},
};

/// Measures migrate-all over the `tenants` tenants `placed` lists, the sequential baseline
/// having taken `baseline`; returns its rows.
pub async fn measure(
    tenants: usize,
    placed: &[(String, String)],
    baseline: Duration,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let baseline_per = baseline.as_secs_f64() * 1000.0 / tenants as f64;
    // Goals are stated for 1,000 tenants; another fleet size scales them.
    let scale = tenants as f64 / 1000.0;
    step("migrate-all with nothing pending (3 runs)");
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(invoke(&json!({}), tenants + 1, "up_to_date").await?.0);
    }
    let current = Stats::of(runs.iter().map(|d| d.as_secs_f64() * 1000.0).collect());
    let per = current.p50 / tenants as f64;
    let speedup = baseline_per / per;
    rows.push(Row::goal(
        &format!("migrate-all, {tenants} tenants, nothing pending"),
        format!("{} ms", ms(current.p50)),
        format!("{per:.3} ms per tenant, {speedup:.1}x the baseline"),
        &format!("< {} ms and ≥ 10x", ms(2000.0 * scale)),
        current.p50 < 2000.0 * scale && speedup >= 10.0,
    ));

    step("migrate-all with nothing pending, verifying every tenant database");
    let (verify, _) = invoke(
        &json!({"verify": true, "inline": true}),
        tenants + 1,
        "up_to_date",
    )
    .await?;
    let verify_ms = verify.as_secs_f64() * 1000.0;
    rows.push(Row::info(
        &format!("migrate-all {{\"verify\": true}}, {tenants} tenants, nothing pending"),
        format!("{} ms", ms(verify_ms)),
        format!(
            "{:.3} ms per tenant, {:.1}x the baseline",
            verify_ms / tenants as f64,
            baseline.as_secs_f64() * 1000.0 / verify_ms
        ),
    ));

    step("migrate-all with one pending migration in every tenant, inline");
    let budgets = fanout::budgets().await?;
    // Each server's budget at once, as the floor runs: the fleet's concurrency (10 by default,
    // fewer than the budgets' 15 here) would otherwise hold the product to fewer at once.
    let at_once: i64 = budgets.iter().map(|(_, b)| b).sum();
    undo_latest(placed).await?;
    let sampler = fanout::ConnSampler::start().await;
    let (pending, report) = invoke(
        &json!({"inline": true, "concurrency": at_once.clamp(1, 64)}),
        tenants,
        "migrated",
    )
    .await?;
    let inline_seen = sampler.stop().await;
    let pending_ms = pending.as_secs_f64() * 1000.0;
    let logged = pending_breakdown(tenants)?;

    step("its floor: a bare client applying the same migration at the same concurrency");
    let history = pending_floor::history_row(&placed[0].0).await?;
    undo_latest(placed).await?;
    let (floor, floor_steps) = pending_floor::measure(placed, &budgets, &history).await?;
    let floor_ms = floor.as_secs_f64() * 1000.0;
    let ratio = pending_ms / floor_ms;
    rows.push(Row::goal(
        &format!("migrate-all, {tenants} tenants, one pending migration"),
        format!("{} ms", ms(pending_ms)),
        format!(
            "{:.2} ms per tenant; {ratio:.2}x its floor; each server's budget at once \
             ({at_once} over the fleet)",
            pending_ms / tenants as f64
        ),
        "≤ 1.25x the floor",
        ratio <= 1.25,
    ));
    rows.push(Row::info(
        "  … its floor: a bare client, the same DDL and history row, same concurrency",
        format!("{} ms", ms(floor_ms)),
        format!(
            "{:.2} ms per tenant; per server at once: {}",
            floor_ms / tenants as f64,
            budgets
                .iter()
                .map(|(s, b)| format!("{s} {b}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    rows.push(logged.row(&floor_steps, pending_ms));
    rows.extend(per_server_runs(&report)?);
    rows.push(fanout::connections_row(&inline_seen, &budgets));

    // The queue's workers at once (the local event source mapping's MaximumConcurrency): the
    // inline run at the same concurrency is what the queued run is held against.
    let workers: usize = std::env::var("DBTOOLS_QUEUE_MAX_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .context("DBTOOLS_QUEUE_MAX_CONCURRENCY")?;
    step(&format!(
        "the same inline at the queue's concurrency ({workers} tenants at once)"
    ));
    undo_latest(placed).await?;
    let (equal, _) = invoke(
        &json!({"inline": true, "concurrency": workers}),
        tenants,
        "migrated",
    )
    .await?;
    let equal_ms = equal.as_secs_f64() * 1000.0;
    rows.push(Row::info(
        &format!("  … inline at the queue's concurrency ({workers} at once)"),
        format!("{} ms", ms(equal_ms)),
        format!("{:.2} ms per tenant", equal_ms / tenants as f64),
    ));

    step("the same, through the queue (migrate-tenant workers, the local trigger)");
    undo_latest(placed).await?;
    let sampler = fanout::ConnSampler::start().await;
    let (queued, _) = fanout::queued_run(tenants).await?;
    let queued_seen = sampler.stop().await;
    let queued_ms = queued.as_secs_f64() * 1000.0;
    let throughput = equal_ms / queued_ms;
    rows.push(Row::goal(
        &format!("migrate-all, {tenants} tenants, one pending migration, through the queue"),
        format!("{} ms", ms(queued_ms)),
        format!(
            "{throughput:.2}x the throughput inline at {workers} at once ({:.2}x inline at \
             the budgets); a 1% canary first",
            pending_ms / queued_ms
        ),
        "≥ 0.5x inline at equal concurrency (or the gap the stand-ins')",
        throughput >= 0.5,
    ));
    rows.push(fanout::message_breakdown(tenants)?);
    rows.push(fanout::connections_row(&queued_seen, &budgets));
    Ok(rows)
}

/// The steps of each tenant's line ("tenant migration"), in order.
const TENANT_STEPS: [&str; 6] = ["duration", "slot", "connect", "migrate", "close", "record"];

/// Where the pending run's time went, from its log lines: each tenant's steps (p50) and the
/// run's own before its tenants.
struct Logged {
    tenant: Vec<f64>,
    run: Vec<f64>,
}

/// The pending run's lines, read from the stack's log right after it: the last `tenants`
/// tenants migrated, and the last run finished.
fn pending_breakdown(tenants: usize) -> Result<Logged> {
    let log = e2e::stack_log("watch.log");
    Ok(Logged {
        tenant: fanout::logged_p50s(&log, "status=Migrated", &TENANT_STEPS, tenants)?,
        run: fanout::logged_p50s(&log, "migrate-all finished", &fanout::RUN_STEPS, 1)?,
    })
}

impl Logged {
    /// A tenant's steps beside the floor's (p50s), and the run's time before its tenants.
    fn row(&self, floor: &[pending_floor::Steps], run_ms: f64) -> Row {
        let p50 =
            |f: fn(&pending_floor::Steps) -> f64| Stats::of(floor.iter().map(f).collect()).p50;
        let t = &self.tenant;
        let before: f64 = self.run.iter().sum();
        Row::info(
            "  … where a tenant's time goes (p50, its log line) beside the floor's",
            format!("{} ms a tenant", ms(t[0])),
            format!(
                "slot and lock {} (registry), connect {}, read and migrate {}, close {} \
                 (until the backend is gone), version recorded {} (registry); the floor's \
                 connect {}, DDL and history {}, close {}; before the tenants {} ms of {} \
                 ({})",
                ms(t[1]),
                ms(t[2]),
                ms(t[3]),
                ms(t[4]),
                ms(t[5]),
                ms(p50(|s| s.connect)),
                ms(p50(|s| s.work)),
                ms(p50(|s| s.close)),
                ms(before),
                ms(run_ms),
                named_ms(&fanout::RUN_STEPS, &self.run)
            ),
        )
    }
}

/// Per server, from a migrate-all report: its tenants, their durations, its budget.
fn per_server_runs(report: &Value) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for server in report["servers"]
        .as_array()
        .context("servers in the report")?
    {
        let name = server["name"].as_str().unwrap_or("?");
        let durations: Vec<f64> = report["tenants"]
            .as_array()
            .context("tenants in the report")?
            .iter()
            .filter(|t| t["server"] == name && t["status"] == "migrated")
            .filter_map(|t| t["duration_ms"].as_f64())
            .collect();
        if durations.is_empty() {
            continue;
        }
        // The answer carries at most 1,000 tenant rows: the durations are those it carries,
        // the count the server's own.
        let sampled = durations.len();
        let n = server["counts"]["migrated"].as_u64().unwrap_or(0);
        let stats = Stats::of(durations);
        rows.push(Row::info(
            &format!("  … its tenants on {name} (per tenant p50; p90)"),
            format!("{} ms ({})", ms(stats.p50), ms(stats.p90)),
            format!(
                "{n} tenants ({sampled} in the answer), at most {} at once",
                server["migrate_concurrency"]
            ),
        ));
    }
    Ok(rows)
}

/// Invokes migrate-all through the local Invoke API; checks that `expect` tenants ended in
/// `outcome` and none failed. Returns its duration and its report.
async fn invoke(event: &Value, expect: usize, outcome: &str) -> Result<(Duration, Value)> {
    let started = Instant::now();
    let (status, report) = e2e::invoke_migrate_all(event).await;
    let took = started.elapsed();
    if !status.is_success() || report.get("counts").is_none() {
        bail!("migrate-all failed: {status} {report}");
    }
    let counts = &report["counts"];
    ensure!(counts["failed"] == 0, "tenants failed: {counts}");
    let got = counts[outcome].as_u64().unwrap_or(0) as usize;
    ensure!(
        got >= expect,
        "expected {expect} tenants {outcome}, got {counts}"
    );
    Ok((took, report))
}

/// Puts every bench tenant one migration behind, as a release that adds a migration would:
/// the latest migration's objects and history row removed, the registry at the version below.
async fn undo_latest(placed: &[(String, String)]) -> Result<()> {
    stream::iter(placed)
        .map(|(slug, _)| e2e::undo_v4(slug))
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    Ok(())
}
