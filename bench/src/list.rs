//! List latency: `GET /api/tenants?limit=100` over a registry of many rows (registered
//! directly, without databases), the first page against its goal (p50 under 10 ms) and a page
//! from the middle, reached by the cursor, against the first.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use reqwest::StatusCode;
use serde_json::Value;

use crate::{
    progress::step,
    table::{ms, Row, Stats},
};

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

/// Registers `list_tenants` rows in all, then times `list_samples` requests of each page;
/// returns its rows. Removes the rows it registered.
pub async fn measure(list_tenants: usize, list_samples: usize) -> Result<Vec<Row>> {
    step(&format!(
        "list: {list_tenants} registry rows, {list_samples} requests per page"
    ));
    let mut rows = Vec::new();
    let registry = e2e::registry().await;
    let existing: i64 = registry
        .query_one("SELECT count(*) FROM tenants", &[])
        .await?
        .get(0);
    let add = list_tenants.saturating_sub(existing as usize);
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
    for _ in 0..list_samples {
        let (took, body) = timed_get("/api/tenants?limit=100").await?;
        ensure!(
            body["tenants"].as_array().map_or(0, Vec::len) == 100,
            "{body}"
        );
        first.push(took);
    }
    let first = Stats::of(first);
    rows.push(Row::goal(
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
    for _ in 0..list_samples {
        let (took, body) = timed_get(&format!("/api/tenants?limit=100&cursor={cursor}")).await?;
        ensure!(
            body["tenants"].as_array().map_or(0, Vec::len) == 100,
            "{body}"
        );
        middle.push(took);
    }
    let middle = Stats::of(middle);
    rows.push(Row::info(
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
        rows.push(Row::info(
            "list requests cargo lambda watch failed by itself (retried once)",
            retried.to_string(),
            "the emulator's bare 500, no function invoked".into(),
        ));
    }
    // They have no databases: a migrate-all after the bench would report them failed.
    registry
        .execute("DELETE FROM tenants WHERE slug LIKE 'benchlist\\_%'", &[])
        .await?;
    Ok(rows)
}
