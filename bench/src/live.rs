//! The live-migration benchmark: tenants with a large `activity_log` under an application
//! workload (short reads and writes through each tenant's own login, and now and then a long
//! report that holds the table) while tenant migration V4 (a column and an index built
//! concurrently) is applied three ways, on the same tenants put back between them:
//! 1. by migrate-all as deployed (the lock-timeout ladder: 100 ms doubling to 200 ms, 20
//!    retries with jittered pauses, the index built outside a transaction);
//! 2. by the same migrate-all binary with a fixed 2 s lock timeout and 3 retries (the
//!    product's rule before the ladder), started on its own against the same stack;
//! 3. naively (one transaction, plain `CREATE INDEX`, `lock_timeout` 30 s).
//!
//! For each: the workload's latency (p50; p99, max), failures and throughput, and from
//! `pg_stat_activity` sampled every 10 ms, how many lock waits (attempts) each tenant's
//! migration made and how long after the start its last one ended (when it got its lock).
//!
//! Sizes: `BENCH_LIVE_TENANTS` (4), `BENCH_LIVE_ROWS` (200000 per tenant).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use e2e::{database_name, json, runtime::RuntimeApi};
use futures_util::future::try_join_all;
use serde_json::Value;
use tokio_postgres::Client;

use crate::{
    lock_watch::{LockWaits, LockWatch},
    progress::step,
    settings::env_usize,
    table::{ms, Row},
};

/// What the workload was doing when a query started.
const BEFORE: u8 = 0;
const LADDER: u8 = 1;
const FIXED: u8 = 2;
const NAIVE: u8 = 3;
const IDLE: u8 = 4;

/// The live-migration goals: the application's slowest and 99th-percentile short query while
/// migrate-all applies V4.
const GOAL_MAX_MS: f64 = 250.0;
const GOAL_P99_MS: f64 = 50.0;
/// The rule the ladder replaced, for the side-by-side row.
const FIXED_POLICY: [(&str, &str); 3] = [
    ("MIGRATE_LOCK_TIMEOUT_MS", "2000"),
    ("MIGRATE_LOCK_TIMEOUT_MAX_MS", "2000"),
    ("MIGRATE_LOCK_RETRIES", "3"),
];
/// How long the quiet phase before the migrations lasts.
const BEFORE_FOR: Duration = Duration::from_secs(10);
/// The application's long report: it holds activity_log (`ACCESS SHARE`, and a snapshot) this
/// long, every so often, and once as each migration starts (so that each meets one: the case
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
    failed: [usize; 5],
}

/// One way of applying V4, measured.
struct Applied {
    took: Duration,
    migrated: u64,
    gave_up: usize,
    locks: LockWaits,
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
    let mut spans = [Duration::ZERO; 5];
    let started = Instant::now();
    tokio::time::sleep(BEFORE_FOR).await;
    spans[BEFORE as usize] = started.elapsed();

    // Each way starts as a report begins, so that each meets one; between them, the tenants
    // are put back and the reports of the previous way have ended.
    let mut applied = BTreeMap::new();
    for way in [LADDER, FIXED, NAIVE] {
        if way != LADDER {
            for slug in &slugs {
                e2e::undo_v4(slug).await;
            }
            tokio::time::sleep(REPORT_FOR).await;
        }
        report_now.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(REPORT_HEAD_START).await;
        phase.store(way, Ordering::SeqCst);
        let watch = LockWatch::start(&slugs).await?;
        let started = Instant::now();
        let (migrated, gave_up) = match way {
            LADDER => {
                let (status, report) = e2e::invoke_migrate_all(&json!({"slugs": slugs})).await;
                outcome(status.is_success(), &report)?
            }
            FIXED => {
                let api = RuntimeApi::start(json!({"slugs": slugs})).await;
                let _instance = api.spawn_profile("release", "migrate-all", &FIXED_POLICY);
                let report = api
                    .wait_response(Duration::from_secs(300))
                    .await
                    .context("migrate-all with a fixed lock timeout did not answer")?;
                outcome(report.get("errorType").is_none(), &report)?
            }
            _ => {
                try_join_all(slugs.iter().map(|slug| naive(slug))).await?;
                (slugs.len() as u64, 0)
            }
        };
        let took = started.elapsed();
        phase.store(IDLE, Ordering::SeqCst);
        spans[way as usize] = took;
        let locks = watch.stop().await?;
        applied.insert(
            way,
            Applied {
                took,
                migrated,
                gave_up,
                locks,
            },
        );
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await??;
    }

    let samples = samples.lock().unwrap();
    let line = |p: u8| -> Latency {
        let mut v: Vec<f64> = samples
            .ok
            .iter()
            .filter(|(ph, _)| *ph == p)
            .map(|(_, ms)| *ms)
            .collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Latency {
            p50: at(0.5),
            p99: at(0.99),
            max: v.last().copied().unwrap_or(0.0),
            n: v.len(),
            failed: samples.failed[p as usize],
            per_s: v.len() as f64 / spans[p as usize].as_secs_f64().max(0.001),
        }
    };
    let mut out = Vec::new();
    let before = line(BEFORE);
    out.push(Row::info(
        "live workload before, short queries (p50; p99, max)",
        before.figure(),
        format!("{}; {tenants} tenants × {rows} rows", before.counts()),
    ));
    let ladder = line(LADDER);
    let a = &applied[&LADDER];
    out.push(Row::goal(
        "… during migrate-all of V4 (column + CREATE INDEX CONCURRENTLY, lock ladder 100→200 ms)",
        ladder.figure(),
        format!("{}; {}", ladder.counts(), a.summary(tenants)),
        &format!(
            "max < {} ms, p99 < {} ms, 0 failed",
            ms(GOAL_MAX_MS),
            ms(GOAL_P99_MS)
        ),
        ladder.max < GOAL_MAX_MS && ladder.p99 < GOAL_P99_MS && ladder.failed == 0,
    ));
    out.push(Row::info(
        "  … its lock waits per tenant (how many; the last ended after)",
        a.locks.figure(),
        "lock waits of migrate-all's sessions, sampled every 10 ms".into(),
    ));
    let fixed = line(FIXED);
    let f = &applied[&FIXED];
    out.push(Row::info(
        "… the same run with a fixed 2 s lock timeout, 3 retries (before the ladder)",
        fixed.figure(),
        format!("{}; {}", fixed.counts(), f.summary(tenants)),
    ));
    out.push(Row::info(
        "  … its lock waits per tenant (how many; the last ended after)",
        f.locks.figure(),
        "lock waits of migrate-all's sessions, sampled every 10 ms".into(),
    ));
    let naive = line(NAIVE);
    out.push(Row::info(
        "… the same migration applied naively (plain CREATE INDEX, lock 30 s)",
        naive.figure(),
        format!(
            "{}; {} ms",
            naive.counts(),
            ms(applied[&NAIVE].took.as_secs_f64() * 1000.0)
        ),
    ));
    Ok(out)
}

/// What a migrate-all answer says: tenants migrated, and those that gave up on a busy table.
/// Anything else than a busy table failing the run fails the bench.
fn outcome(succeeded: bool, report: &Value) -> Result<(u64, usize)> {
    let migrated = report["counts"]["migrated"].as_u64().unwrap_or(0);
    let deferred = report["counts"]["deferred"].as_u64().unwrap_or(0) as usize;
    let gave_up = report["errorMessage"].as_str().map_or(deferred, |m| {
        m.matches("gave up waiting for a lock").count()
    });
    ensure!(
        succeeded || gave_up > 0,
        "migrate-all failed otherwise than on a busy table: {report}"
    );
    Ok((migrated, gave_up))
}

impl Applied {
    fn summary(&self, tenants: usize) -> String {
        format!(
            "run {} ms, {} of {tenants} migrated{}",
            ms(self.took.as_secs_f64() * 1000.0),
            self.migrated,
            if self.gave_up > 0 {
                format!(", {} deferred (busy: the next run)", self.gave_up)
            } else {
                String::new()
            }
        )
    }
}

struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
    n: usize,
    failed: usize,
    per_s: f64,
}

impl Latency {
    fn figure(&self) -> String {
        format!("{} ms ({}, {})", ms(self.p50), ms(self.p99), ms(self.max))
    }

    fn counts(&self) -> String {
        format!(
            "{} queries ({:.0}/s), {} failed",
            self.n, self.per_s, self.failed
        )
    }
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
