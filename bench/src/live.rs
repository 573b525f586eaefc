//! The live-migration benchmark: tenants with a large `activity_log` under an application
//! workload (short reads and writes through each tenant's own login, and now and then a long
//! report that holds the table) while tenant migration V4 (a column and an index built
//! concurrently) is applied: first by migrate-all (lock timeout 2 s with retries, the index
//! built outside a transaction), then, on the same tenants put back, naively (one transaction,
//! plain `CREATE INDEX`, `lock_timeout` 30 s). The workload's latency is reported before and
//! during each, with the queries that failed.
//!
//! Sizes: `BENCH_LIVE_TENANTS` (4), `BENCH_LIVE_ROWS` (200000 per tenant).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use e2e::{database_name, json};
use futures_util::future::try_join_all;
use tokio_postgres::Client;

use crate::{
    progress::step,
    settings::env_usize,
    table::{ms, Row},
};

/// What the workload was doing when a query started.
const BEFORE: u8 = 0;
const PRODUCT: u8 = 1;
const NAIVE: u8 = 2;
const IDLE: u8 = 3;

/// The lock timeout the product's migrations run with (`MIGRATE_LOCK_TIMEOUT_MS`, default).
const LOCK_TIMEOUT_MS: f64 = 2000.0;
/// How long the quiet phase before the migrations lasts.
const BEFORE_FOR: Duration = Duration::from_secs(10);
/// The application's long report: it holds activity_log (`ACCESS SHARE`, and a snapshot) this
/// long, every so often, and once as each migration starts (so that both meet one: the case
/// the lock timeout is for).
const REPORT_FOR: Duration = Duration::from_secs(4);
const REPORT_EVERY: Duration = Duration::from_secs(15);
/// How long after the reports start a migration starts.
const REPORT_HEAD_START: Duration = Duration::from_millis(300);
/// Application clients per tenant, and their pause between queries.
const CLIENTS: usize = 2;
const THINK: Duration = Duration::from_millis(10);

#[derive(Default)]
struct Samples {
    /// (phase, latency in ms) of each short query that succeeded.
    ok: Vec<(u8, f64)>,
    /// Failed short queries, per phase.
    failed: [usize; 4],
}

pub async fn measure() -> Result<Vec<Row>> {
    let tenants = env_usize("BENCH_LIVE_TENANTS", 4)?.max(1);
    let rows = env_usize("BENCH_LIVE_ROWS", 200_000)?.max(1);
    step(&format!(
        "live migration: {tenants} tenants with {rows} activity_log rows each, under load"
    ));
    let slugs: Vec<String> = (0..tenants).map(|i| format!("bench_live_{i}")).collect();
    for slug in &slugs {
        let r = e2e::post_tenant(&json!({"name": "Live", "slug": slug})).await;
        ensure!(r.status.as_u16() == 201, "create {slug}: {}", r.text);
    }
    try_join_all(slugs.iter().map(|slug| fill(slug, rows))).await?;
    for slug in &slugs {
        e2e::undo_v4(slug).await;
    }

    let phase = Arc::new(AtomicU8::new(BEFORE));
    let stop = Arc::new(AtomicBool::new(false));
    let report_now = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let mut workers = Vec::new();
    for slug in &slugs {
        let secret = e2e::read_secret(&format!("dbtools/tenants/{slug}")).await;
        for _ in 0..CLIENTS {
            let client = e2e::connect_as(&secret, None).await?;
            workers.push(tokio::spawn(short_queries(
                client,
                phase.clone(),
                stop.clone(),
                samples.clone(),
            )));
        }
        let client = e2e::connect_as(&secret, None).await?;
        workers.push(tokio::spawn(reports(
            client,
            stop.clone(),
            report_now.clone(),
        )));
    }

    tokio::time::sleep(BEFORE_FOR).await;
    report_now.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(REPORT_HEAD_START).await;
    phase.store(PRODUCT, Ordering::SeqCst);
    let started = Instant::now();
    let (status, report) = e2e::invoke_migrate_all(&json!({"slugs": slugs})).await;
    let product_took = started.elapsed();
    let migrated = report["counts"]["migrated"].as_u64().unwrap_or(0);
    let gave_up = report["errorMessage"]
        .as_str()
        .map_or(0, |m| m.matches("gave up waiting for a lock").count());
    ensure!(
        status.is_success() || gave_up > 0,
        "migrate-all failed otherwise than on a busy table: {report}"
    );

    phase.store(IDLE, Ordering::SeqCst);
    for slug in &slugs {
        e2e::undo_v4(slug).await;
    }
    // After the product's run, its reports have ended: start them again for this one.
    tokio::time::sleep(REPORT_FOR).await;
    report_now.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(REPORT_HEAD_START).await;
    phase.store(NAIVE, Ordering::SeqCst);
    let started = Instant::now();
    try_join_all(slugs.iter().map(|slug| naive(slug))).await?;
    let naive_took = started.elapsed();
    phase.store(IDLE, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await??;
    }

    let samples = samples.lock().unwrap();
    let mut out = Vec::new();
    let line = |p: u8| -> (String, f64, usize, usize) {
        let mut v: Vec<f64> = samples
            .ok
            .iter()
            .filter(|(ph, _)| *ph == p)
            .map(|(_, ms)| *ms)
            .collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        let max = v.last().copied().unwrap_or(0.0);
        (
            format!("{} ms ({}, {})", ms(at(0.5)), ms(at(0.99)), ms(max)),
            max,
            v.len(),
            samples.failed[p as usize],
        )
    };
    let (figure, _, n, failed) = line(BEFORE);
    out.push(Row::info(
        "live workload before, short queries (p50; p99, max)",
        figure,
        format!("{n} queries, {failed} failed; {tenants} tenants × {rows} rows"),
    ));
    let (figure, max, n, failed) = line(PRODUCT);
    out.push(Row::goal(
        "… during migrate-all of V4 (column + CREATE INDEX CONCURRENTLY, lock 2 s, retries)",
        figure,
        format!(
            "{n} queries, {failed} failed; run {} ms, {migrated} of {tenants} migrated{}",
            ms(product_took.as_secs_f64() * 1000.0),
            if gave_up > 0 {
                format!(", {gave_up} gave up (busy: the next run)")
            } else {
                String::new()
            }
        ),
        &format!("max < {} ms, 0 failed", ms(LOCK_TIMEOUT_MS + 100.0)),
        max < LOCK_TIMEOUT_MS + 100.0 && failed == 0,
    ));
    let (figure, _, n, failed) = line(NAIVE);
    out.push(Row::info(
        "… during the same migration applied naively (plain CREATE INDEX, lock 30 s)",
        figure,
        format!(
            "{n} queries, {failed} failed; {} ms",
            ms(naive_took.as_secs_f64() * 1000.0)
        ),
    ));
    Ok(out)
}

/// Gives a tenant `rows` rows of history, then the planner its statistics.
async fn fill(slug: &str, rows: usize) -> Result<()> {
    let rows = i64::try_from(rows)?;
    e2e::connect_tenant(slug)
        .await
        .execute(
            "INSERT INTO activity_log (action, entity_type, entity_id, details, created_at) \
             SELECT 'action_' || (g % 50), 'order', gen_random_uuid(), \
                    jsonb_build_object('n', g), now() - g * interval '1 second' \
             FROM generate_series(1, $1::bigint) g",
            &[&rows],
        )
        .await
        .with_context(|| format!("fill {slug}"))?;
    e2e::connect_tenant(slug)
        .await
        .batch_execute("ANALYZE activity_log")
        .await?;
    Ok(())
}

/// V4 as one would write it without the product's rules: one transaction, a plain index, a
/// long lock wait.
async fn naive(slug: &str) -> Result<()> {
    let admin = e2e::connect_on(
        &e2e::tenant_server(slug).await.context("its server")?,
        &database_name(slug),
    )
    .await;
    admin
        .batch_execute(
            "SET lock_timeout = '30s'; BEGIN; \
             ALTER TABLE activity_log ADD COLUMN actor_id UUID; \
             CREATE INDEX activity_log_actor_idx ON activity_log (actor_id, created_at DESC); \
             COMMIT",
        )
        .await
        .with_context(|| format!("the naive migration in {slug}"))
}

/// The application's short queries: a write, then the newest 20 rows, in turn.
async fn short_queries(
    client: Client,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Samples>>,
) -> Result<()> {
    let mut write = true;
    while !stop.load(Ordering::SeqCst) {
        let p = phase.load(Ordering::SeqCst);
        let started = Instant::now();
        let outcome = if write {
            client
                .execute(
                    "INSERT INTO activity_log (action, entity_type, entity_id) \
                     VALUES ('app.write', 'order', gen_random_uuid())",
                    &[],
                )
                .await
                .map(drop)
        } else {
            client
                .query(
                    "SELECT id, action FROM activity_log ORDER BY created_at DESC LIMIT 20",
                    &[],
                )
                .await
                .map(drop)
        };
        let took = started.elapsed().as_secs_f64() * 1000.0;
        {
            let mut s = samples.lock().unwrap();
            match outcome {
                Ok(()) => s.ok.push((p, took)),
                Err(_) => s.failed[p as usize] += 1,
            }
        }
        write = !write;
        tokio::time::sleep(THINK).await;
    }
    Ok(())
}

/// The application's long report: a transaction that reads the table and holds it, every
/// `REPORT_EVERY` and whenever `now` moves.
async fn reports(client: Client, stop: Arc<AtomicBool>, now: Arc<AtomicU64>) -> Result<()> {
    let mut seen = now.load(Ordering::SeqCst);
    while !stop.load(Ordering::SeqCst) {
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ; \
                 SELECT count(*) FROM activity_log WHERE action = 'action_7'; \
                 SELECT pg_sleep({}); COMMIT",
                REPORT_FOR.as_secs_f64()
            ))
            .await
            .context("the application's report")?;
        let mut waited = Duration::ZERO;
        while waited < REPORT_EVERY && !stop.load(Ordering::SeqCst) {
            if now.load(Ordering::SeqCst) != seen {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
        seen = now.load(Ordering::SeqCst);
    }
    Ok(())
}
