//! `make bench`: every performance goal of docs/performance.md, measured in one run against
//! the stack's two PostgreSQL servers (`primary`, `secondary`), through the real functions
//! (release builds under `cargo lambda watch`, real HTTP), and printed as a table of figures,
//! ratios and goals, overall and per server.
//!
//! It runs inside the bench's own stack (`scripts/stack.sh run` with `STACK_DIR=.local/bench`,
//! see the Makefile), whose variables tell it where the API and PostgreSQL are. Sizes:
//! `BENCH_TENANTS` (1000: the fleet, created through the API, which migrate-all runs over),
//! `BENCH_LIST_TENANTS` (10000: registry rows for the list benchmark), `BENCH_FLOOR_SAMPLES`
//! (50), `BENCH_LIST_SAMPLES` (200), `BENCH_COLD_SAMPLES` (5), and the live-migration
//! benchmark's `BENCH_LIVE_TENANTS` (4) and `BENCH_LIVE_ROWS` (200000), and
//! `BENCH_PLAN_ROWS` (100000: the registry rows a queued run is planned over).

mod cold;
mod fanout;
mod floor;
mod live;
mod table;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use e2e::{database_name, json};
use futures_util::{stream, StreamExt, TryStreamExt};
use reqwest::StatusCode;
use serde_json::Value;
use table::{ms, Row, Stats, Table};

/// Prefix of every tenant the bench creates (and removes before it starts).
const FLEET_PREFIX: &str = "bench_";

struct Settings {
    tenants: usize,
    list_tenants: usize,
    floor_samples: usize,
    list_samples: usize,
    cold_samples: usize,
    plan_rows: usize,
    profile: String,
}

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name} must be a number, got {v:?}")),
    }
}

fn slug(i: usize) -> String {
    format!("{FLEET_PREFIX}{i:06}")
}

#[tokio::main]
async fn main() -> Result<()> {
    let s = Settings {
        tenants: env_usize("BENCH_TENANTS", 1000)?.max(1),
        list_tenants: env_usize("BENCH_LIST_TENANTS", 10_000)?.max(100),
        floor_samples: env_usize("BENCH_FLOOR_SAMPLES", 50)?.max(1),
        list_samples: env_usize("BENCH_LIST_SAMPLES", 200)?.max(1),
        cold_samples: env_usize("BENCH_COLD_SAMPLES", 5)?.max(1),
        plan_rows: env_usize("BENCH_PLAN_ROWS", 100_000)?.max(1),
        profile: std::env::var("DBTOOLS_BUILD_PROFILE").unwrap_or_else(|_| "unknown".into()),
    };
    if s.profile != "release" {
        eprintln!(
            "warning: the stack serves {} builds; the goals are for release builds (make bench)",
            s.profile
        );
    }
    let machine = machine().await?;
    println!("{machine}");
    let mut table = Table::default();

    // For working on one part: BENCH_ONLY=live measures only the live migration.
    if std::env::var("BENCH_ONLY").as_deref() == Ok("live") {
        cleanup().await?;
        warm_up().await?;
        live::measure(&mut table).await?;
        println!("{}", table.render());
        return Ok(());
    }
    // BENCH_ONLY=plan measures only the planning of a queued run.
    if std::env::var("BENCH_ONLY").as_deref() == Ok("plan") {
        cleanup().await?;
        warm_up().await?;
        fanout::planning(s.plan_rows, &s.profile, &mut table).await?;
        println!("{}", table.render());
        return Ok(());
    }
    // BENCH_ONLY=cold measures only the cold starts.
    if std::env::var("BENCH_ONLY").as_deref() == Ok("cold") {
        cleanup().await?;
        warm_up().await?;
        cold::measure(
            &s.profile,
            s.cold_samples,
            &format!("{FLEET_PREFIX}warmup"),
            &mut table,
        )
        .await?;
        println!("{}", table.render());
        return Ok(());
    }
    step("removing what an earlier run left");
    cleanup().await?;
    step("warming up the functions (the first request of each starts its instances)");
    warm_up().await?;

    step(&format!(
        "CREATE DATABASE strategies, {} samples each",
        s.floor_samples
    ));
    floor::strategies(s.floor_samples).await?.rows(&mut table);

    step(&format!(
        "provisioning {} tenants through POST /api/tenants, one at a time, with {} floor samples \
         (raw CREATE DATABASE + tenant DDL) between them",
        s.tenants, s.floor_samples
    ));
    let mut floors = Vec::new();
    for server in e2e::SERVERS {
        floors.push(floor::Floor::new(server).await?);
    }
    let provision = provision_fleet(s.tenants, s.floor_samples, &mut floors).await?;
    let mut all_floor = Vec::new();
    for floor in &mut floors {
        floor.drop_all().await?;
        floor.rows(&mut table);
        all_floor.extend(floor.totals());
    }
    let floor_p50 = Stats::of(all_floor).p50;
    let all = Stats::of(provision.iter().map(|(_, ms)| *ms).collect());
    let ratio = all.p50 / floor_p50;
    table.push(Row::goal(
        "POST /api/tenants, both servers (p50; p90, max)",
        format!("{} ms ({}, {})", ms(all.p50), ms(all.p90), ms(all.max)),
        format!("{ratio:.2}x the floor of both"),
        "≤ 1.25x the floor",
        ratio <= 1.25,
    ));
    for floor in &floors {
        let mine: Vec<f64> = provision
            .iter()
            .filter(|(server, _)| server == floor.server())
            .map(|(_, ms)| *ms)
            .collect();
        let n = mine.len();
        let stats = Stats::of(mine);
        table.push(Row::info(
            &format!("POST /api/tenants placed on {} (p50; p90)", floor.server()),
            format!("{} ms ({})", ms(stats.p50), ms(stats.p90)),
            format!("{n} tenants, {:.2}x its floor", stats.p50 / floor.p50()),
        ));
    }

    let placed = placement().await?;
    step("sequential baseline: a connection and one query per tenant, one after another");
    let baseline = sequential_baseline(&placed).await?;
    let baseline_per = baseline.as_secs_f64() * 1000.0 / s.tenants as f64;
    table.push(Row::info(
        &format!(
            "baseline: {} tenants, connect + 1 query each, sequential",
            s.tenants
        ),
        format!("{} ms", ms(baseline.as_secs_f64() * 1000.0)),
        format!("{baseline_per:.2} ms per tenant"),
    ));

    // Goals are stated for 1,000 tenants; another fleet size scales them.
    let scale = s.tenants as f64 / 1000.0;
    step("migrate-all with nothing pending (3 runs)");
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(
            migrate_all(&json!({}), s.tenants + 1, "up_to_date")
                .await?
                .0,
        );
    }
    let current = Stats::of(runs.iter().map(|d| d.as_secs_f64() * 1000.0).collect());
    let per = current.p50 / s.tenants as f64;
    let speedup = baseline_per / per;
    table.push(Row::goal(
        &format!("migrate-all, {} tenants, nothing pending", s.tenants),
        format!("{} ms", ms(current.p50)),
        format!("{per:.3} ms per tenant, {speedup:.1}x the baseline"),
        &format!("< {} ms and ≥ 10x", ms(2000.0 * scale)),
        current.p50 < 2000.0 * scale && speedup >= 10.0,
    ));

    step("migrate-all with nothing pending, verifying every tenant database");
    let (verify, _) = migrate_all(
        &json!({"verify": true, "inline": true}),
        s.tenants + 1,
        "up_to_date",
    )
    .await?;
    let verify_ms = verify.as_secs_f64() * 1000.0;
    table.push(Row::info(
        &format!(
            "migrate-all {{\"verify\": true}}, {} tenants, nothing pending",
            s.tenants
        ),
        format!("{} ms", ms(verify_ms)),
        format!(
            "{:.3} ms per tenant, {:.1}x the baseline",
            verify_ms / s.tenants as f64,
            baseline.as_secs_f64() * 1000.0 / verify_ms
        ),
    ));

    step("migrate-all with one pending migration in every tenant, inline");
    let budgets = fanout::budgets().await?;
    undo_latest(&placed).await?;
    let sampler = fanout::ConnSampler::start().await;
    let (pending, report) = migrate_all(&json!({"inline": true}), s.tenants, "migrated").await?;
    let inline_seen = sampler.stop().await;
    let pending_ms = pending.as_secs_f64() * 1000.0;
    table.push(Row::goal(
        &format!("migrate-all, {} tenants, one pending migration", s.tenants),
        format!("{} ms", ms(pending_ms)),
        format!("{:.2} ms per tenant", pending_ms / s.tenants as f64),
        &format!("< {} ms", ms(6000.0 * scale)),
        pending_ms < 6000.0 * scale,
    ));
    per_server_runs(&report, &mut table)?;
    table.push(fanout::connections_row(&inline_seen, &budgets));

    step("the same, through the queue (migrate-tenant workers, the local trigger)");
    undo_latest(&placed).await?;
    let sampler = fanout::ConnSampler::start().await;
    let (queued, _) = fanout::queued_run(s.tenants).await?;
    let queued_seen = sampler.stop().await;
    let queued_ms = queued.as_secs_f64() * 1000.0;
    table.push(Row::info(
        &format!(
            "migrate-all, {} tenants, one pending migration, through the queue",
            s.tenants
        ),
        format!("{} ms", ms(queued_ms)),
        format!(
            "{:.2}x inline; {} workers at once (QUEUE_MAX_CONCURRENCY), a 1% canary first",
            queued_ms / pending_ms,
            std::env::var("DBTOOLS_QUEUE_MAX_CONCURRENCY").unwrap_or_else(|_| "?".into())
        ),
    ));
    table.push(fanout::connections_row(&queued_seen, &budgets));

    live::measure(&mut table).await?;

    step(&format!(
        "list: {} registry rows, {} requests per page",
        s.list_tenants, s.list_samples
    ));
    list(&s, &mut table).await?;

    step("cold starts: each function's release binary, started for one request");
    cold::measure(&s.profile, s.cold_samples, &slug(0), &mut table).await?;
    cold::watch_instances(&s.profile, &mut table)?;

    step(&format!(
        "planning a queued run over {} registry rows",
        s.plan_rows
    ));
    fanout::planning(s.plan_rows, &s.profile, &mut table).await?;

    println!();
    println!("{machine}");
    let rendered = table.render();
    println!("{rendered}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report.md");
    std::fs::write(&out, format!("{machine}\n\n{rendered}\n"))
        .with_context(|| format!("write {}", out.display()))?;
    println!("(also written to target/bench-report.md)");
    if table.missed() > 0 {
        println!("{} goal(s) missed", table.missed());
    }
    Ok(())
}

fn step(what: &str) {
    eprintln!("\x1b[1m[bench]\x1b[0m {what}");
}

/// What the figures were measured on.
async fn machine() -> Result<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let admin = e2e::admin().await;
    let version: String = admin
        .query_one("SELECT current_setting('server_version')", &[])
        .await?
        .get(0);
    let settings: Vec<(String, String)> = admin
        .query(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name IN \
             ('fsync', 'synchronous_commit', 'shared_buffers', 'password_encryption') ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let settings: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(format!(
        "Machine: {cpu}, {cores} cores, {mem_gib:.0} GiB; PostgreSQL {version} on localhost ({}); \
         functions: {} builds under cargo lambda watch",
        settings.join(", "),
        std::env::var("DBTOOLS_BUILD_PROFILE").unwrap_or_else(|_| "unknown".into())
    ))
}

/// Drops the bench's tenant databases (on every server) and registry rows left by an earlier
/// run.
async fn cleanup() -> Result<()> {
    for server in e2e::SERVERS {
        let admin = e2e::admin_on(server).await;
        let names: Vec<String> = admin
            .query(
                "SELECT datname FROM pg_database \
                 WHERE datname LIKE 'dbtools\\_tenant\\_bench\\_%' \
                    OR datname LIKE 'bench\\_floor\\_%'",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        drop_databases(server, names).await?;
    }
    // The registry may not exist yet (a fresh stack creates it on its first migrate-all).
    let registry = e2e::registry().await;
    let _ = registry
        .execute(
            "DELETE FROM tenants WHERE slug LIKE 'bench\\_%' OR slug LIKE 'benchlist\\_%' \
             OR slug LIKE 'benchplan\\_%'",
            &[],
        )
        .await;
    // A queued run an interrupted bench left at work would make every run `already_running`.
    let _ = registry
        .execute("DELETE FROM runs WHERE status = 'running'", &[])
        .await;
    Ok(())
}

async fn drop_databases(server: &str, names: Vec<String>) -> Result<()> {
    stream::iter(names)
        .map(|name| async move {
            e2e::admin_on(server)
                .await
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await
                .with_context(|| format!("drop {name}"))
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn warm_up() -> Result<()> {
    let (status, report) = e2e::invoke_migrate_all(&json!({})).await;
    ensure!(status.is_success(), "migrate-all failed: {report}");
    let warm = format!("{FLEET_PREFIX}warmup");
    let r = e2e::post_tenant(&json!({"name": "Warm-up", "slug": warm})).await;
    ensure!(
        r.status == StatusCode::CREATED || r.status == StatusCode::CONFLICT,
        "warm-up POST: {}",
        r.text
    );
    for _ in 0..3 {
        let r = e2e::get(&format!("/api/tenants/{warm}")).await;
        ensure!(r.status == StatusCode::OK, "warm-up GET: {}", r.text);
        let r = e2e::get("/api/tenants?limit=1").await;
        ensure!(r.status == StatusCode::OK, "warm-up list: {}", r.text);
        let r = e2e::delete(&format!("/api/tenants/{FLEET_PREFIX}missing")).await;
        ensure!(
            r.status == StatusCode::NOT_FOUND,
            "warm-up DELETE: {}",
            r.text
        );
    }
    Ok(())
}

/// Creates the fleet; returns each POST's server and duration (ms).
async fn provision_fleet(
    n: usize,
    floor_samples: usize,
    floors: &mut [floor::Floor],
) -> Result<Vec<(String, f64)>> {
    let mut samples = Vec::with_capacity(n);
    let every = (n / floor_samples).max(1);
    for i in 0..n {
        if i % every == 0 && i / every < floor_samples {
            for floor in floors.iter_mut() {
                floor.sample().await?;
            }
        }
        let body = json!({"name": format!("Bench tenant {i}"), "slug": slug(i)});
        let started = Instant::now();
        let r = e2e::post_tenant(&body).await;
        let took = started.elapsed().as_secs_f64() * 1000.0;
        ensure!(
            r.status == StatusCode::CREATED,
            "POST {}: {} {}",
            slug(i),
            r.status,
            r.text
        );
        ensure!(r.body["status"] == "active", "{}", r.text);
        ensure!(r.body["credentials_secret_arn"].is_string(), "{}", r.text);
        let server = r.body["server"].as_str().context("a server")?.to_owned();
        samples.push((server, took));
    }
    // Every tenant is what a user would check: active, at the latest version, with its tables.
    let registry = e2e::registry().await;
    let active: i64 = registry
        .query_one(
            "SELECT count(*) FROM tenants WHERE slug LIKE 'bench\\_0%' AND status = 'active' \
             AND schema_version = (SELECT max(schema_version) FROM tenants)",
            &[],
        )
        .await?
        .get(0);
    ensure!(active as usize == n, "{active} of {n} tenants active");
    Ok(samples)
}

/// Each bench tenant's server, as the registry records it, in slug order.
async fn placement() -> Result<Vec<(String, String)>> {
    Ok(e2e::registry()
        .await
        .query(
            "SELECT slug, server FROM tenants WHERE slug LIKE 'bench\\_0%' ORDER BY slug",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Per server, from a migrate-all report: its tenants, their durations, its budget.
fn per_server_runs(report: &Value, table: &mut Table) -> Result<()> {
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
        table.push(Row::info(
            &format!("  … its tenants on {name} (per tenant p50; p90)"),
            format!("{} ms ({})", ms(stats.p50), ms(stats.p90)),
            format!(
                "{n} tenants ({sampled} in the answer), at most {} at once",
                server["migrate_concurrency"]
            ),
        ));
    }
    Ok(())
}

/// What operators would write without migrate-all: for each tenant, open a connection (to its
/// server), read its version, close.
async fn sequential_baseline(placed: &[(String, String)]) -> Result<Duration> {
    let started = Instant::now();
    for (i, (slug, server)) in placed.iter().enumerate() {
        let mut cfg: tokio_postgres::Config = e2e::pg_url_of(server).parse()?;
        cfg.dbname(database_name(slug));
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
        let conn = tokio::spawn(conn);
        let version: Option<i32> = client
            .query_one("SELECT max(version) FROM refinery_schema_history", &[])
            .await?
            .get(0);
        ensure!(version.is_some(), "no history in tenant {i}");
        drop(client);
        let _ = conn.await;
    }
    Ok(started.elapsed())
}

/// Invokes migrate-all through the local Invoke API; checks that `expect` tenants ended in
/// `outcome` and none failed. Returns its duration and its report.
async fn migrate_all(event: &Value, expect: usize, outcome: &str) -> Result<(Duration, Value)> {
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

/// Requests `cargo lambda watch` itself failed (a bare problem-details 500 that no function
/// logged; seen now and then in long runs), retried once and counted in the table rather than
/// aborting the run.
static EMULATOR_500S: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn timed_get(path: &str) -> Result<(f64, Value)> {
    for attempt in 0..2 {
        let started = Instant::now();
        let r = e2e::get(path).await;
        let took = started.elapsed().as_secs_f64() * 1000.0;
        let emulator = r.status == StatusCode::INTERNAL_SERVER_ERROR
            && r.body["type"] == "https://httpstatuses.com/500";
        if emulator && attempt == 0 {
            EMULATOR_500S.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        }
        ensure!(
            r.status == StatusCode::OK,
            "GET {path}: {} {}",
            r.status,
            r.text
        );
        return Ok((took, r.body));
    }
    unreachable!("the second attempt returns")
}

async fn list(s: &Settings, table: &mut Table) -> Result<()> {
    let registry = e2e::registry().await;
    let existing: i64 = registry
        .query_one("SELECT count(*) FROM tenants", &[])
        .await?
        .get(0);
    let add = s.list_tenants.saturating_sub(existing as usize);
    // Registered directly (the list reads only the registry), oldest first, a second apart.
    registry
        .execute(
            "INSERT INTO tenants (name, slug, database_name, status, schema_version, created_at, \
               server) \
             SELECT 'List tenant ' || g, 'benchlist_' || lpad(g::text, 6, '0'), \
                    'dbtools_tenant_benchlist_' || lpad(g::text, 6, '0'), 'active', 2, \
                    now() - make_interval(secs => $1::int - g), 'primary' \
             FROM generate_series(1, $1::int) g",
            &[&(add as i32)],
        )
        .await?;
    registry.batch_execute("ANALYZE tenants").await?;
    let total: i64 = registry
        .query_one("SELECT count(*) FROM tenants", &[])
        .await?
        .get(0);

    // Warm the instance and the server's caches, then measure.
    for _ in 0..5 {
        timed_get("/api/tenants?limit=100").await?;
    }
    let mut first = Vec::new();
    for _ in 0..s.list_samples {
        let (took, body) = timed_get("/api/tenants?limit=100").await?;
        ensure!(
            body["tenants"].as_array().map_or(0, Vec::len) == 100,
            "{body}"
        );
        first.push(took);
    }
    let first = Stats::of(first);
    table.push(Row::goal(
        &format!("GET /api/tenants?limit=100, {total} tenants (p50; p90)"),
        format!("{} ms ({})", ms(first.p50), ms(first.p90)),
        "first page".into(),
        "p50 < 10 ms",
        first.p50 < 10.0,
    ));

    // A page from the middle, reached by following the cursor: keyset pagination costs the
    // same wherever the page is.
    let mut cursor = None;
    for _ in 0..(total as usize / 200) {
        let path = match &cursor {
            None => "/api/tenants?limit=100".to_owned(),
            Some(c) => format!("/api/tenants?limit=100&cursor={c}"),
        };
        let (_, body) = timed_get(&path).await?;
        cursor = body["next_cursor"].as_str().map(str::to_owned);
    }
    let cursor = cursor.context("no next_cursor in the middle of the list")?;
    let mut middle = Vec::new();
    for _ in 0..s.list_samples {
        let (took, body) = timed_get(&format!("/api/tenants?limit=100&cursor={cursor}")).await?;
        ensure!(
            body["tenants"].as_array().map_or(0, Vec::len) == 100,
            "{body}"
        );
        middle.push(took);
    }
    let middle = Stats::of(middle);
    table.push(Row::info(
        &format!(
            "GET /api/tenants?limit=100&cursor=…, page {} of {}",
            total / 200,
            total / 100
        ),
        format!("{} ms ({})", ms(middle.p50), ms(middle.p90)),
        format!("{:.2}x the first page", middle.p50 / first.p50),
    ));
    let retried = EMULATOR_500S.load(std::sync::atomic::Ordering::Relaxed);
    if retried > 0 {
        table.push(Row::info(
            "list requests cargo lambda watch failed by itself (retried once)",
            retried.to_string(),
            "the emulator's bare 500, no function invoked".into(),
        ));
    }
    // They have no databases: a migrate-all after the bench would report them failed.
    registry
        .execute("DELETE FROM tenants WHERE slug LIKE 'benchlist\\_%'", &[])
        .await?;
    Ok(())
}
