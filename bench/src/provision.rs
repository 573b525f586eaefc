//! Create latency: the fleet provisioned through `POST /api/tenants`, one tenant at a time,
//! held against the same-work floor (a bare client doing what a create does: see
//! `same_work`; goal: p50 ≤ 1.1x), beside PostgreSQL's own floor (see `floor`), both sampled
//! on each server between the requests; then each server's own figures, and where a create's
//! milliseconds go, step by step, from the create's own log line.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use e2e::json;
use reqwest::StatusCode;

use crate::{
    fleet::slug,
    floor,
    progress::step,
    same_work::SameWork,
    table::{ms, named_ms, Row, Stats},
};

/// Provisions `tenants` tenants with `floor_samples` samples of each floor between them;
/// returns the floors' rows, the goal for both servers, each server's own figures and the
/// breakdown of a create.
pub async fn measure(tenants: usize, floor_samples: usize) -> Result<Vec<Row>> {
    step(&format!(
        "provisioning {tenants} tenants through POST /api/tenants, one at a time, with \
         {floor_samples} samples of each floor between them"
    ));
    let mut rows = Vec::new();
    let mut floors = Vec::new();
    let mut same = Vec::new();
    for server in e2e::SERVERS {
        floors.push(floor::Floor::new(server).await?);
        same.push(SameWork::new(server).await?);
    }
    let provision = provision_fleet(tenants, floor_samples, &mut floors, &mut same).await?;
    let mut all_floor = Vec::new();
    for floor in &mut floors {
        floor.drop_all().await?;
        rows.extend(floor.rows());
        all_floor.extend(floor.totals());
    }
    let mut all_same = Vec::new();
    for s in &mut same {
        s.drop_all().await?;
        rows.push(s.row());
        all_same.extend(s.totals());
    }
    let floor_p50 = Stats::of(all_floor).p50;
    let same_p50 = Stats::of(all_same).p50;
    let all = Stats::of(provision.iter().map(|(_, ms)| *ms).collect());
    let ratio = all.p50 / same_p50;
    rows.push(Row::goal(
        "POST /api/tenants, both servers (p50; p90, max)",
        format!("{} ms ({}, {})", ms(all.p50), ms(all.p90), ms(all.max)),
        format!(
            "{ratio:.2}x the same-work floor of both; {:.2}x PostgreSQL's floor",
            all.p50 / floor_p50
        ),
        "≤ 1.1x the same-work floor",
        ratio <= 1.1,
    ));
    for (floor, s) in floors.iter().zip(&same) {
        let mine: Vec<f64> = provision
            .iter()
            .filter(|(server, _)| server == floor.server())
            .map(|(_, ms)| *ms)
            .collect();
        let n = mine.len();
        let stats = Stats::of(mine);
        rows.push(Row::info(
            &format!("POST /api/tenants placed on {} (p50; p90)", floor.server()),
            format!("{} ms ({})", ms(stats.p50), ms(stats.p90)),
            format!(
                "{n} tenants, {:.2}x its same-work floor, {:.2}x PostgreSQL's",
                stats.p50 / s.p50(),
                stats.p50 / floor.p50()
            ),
        ));
    }
    rows.push(breakdown(all.p50)?);
    Ok(rows)
}

/// The steps a create logs ("tenant provisioned"), in order.
const STEPS: [&str; 6] = ["place", "lock", "database", "login", "secret", "activate"];

/// Where a `POST`'s milliseconds go: the p50 of each step the creates of the fleet logged,
/// and what is outside them (the HTTP, the emulator's invoke, the function's reads around the
/// steps), against the `POST`'s p50.
fn breakdown(post_p50: f64) -> Result<Row> {
    let log = e2e::stack_log("watch.log");
    let mut steps: Vec<Vec<f64>> = vec![Vec::new(); STEPS.len()];
    let mut total = Vec::new();
    for line in log
        .lines()
        .filter(|l| l.contains("tenant provisioned") && l.contains("tenant.slug=bench_0"))
    {
        let field = |name: &str| -> Option<f64> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}_ms=")))
                .and_then(|v| v.parse().ok())
        };
        let (Some(elapsed), Some(values)) = (
            field("elapsed"),
            STEPS.iter().map(|s| field(s)).collect::<Option<Vec<f64>>>(),
        ) else {
            continue;
        };
        total.push(elapsed);
        for (i, v) in values.into_iter().enumerate() {
            steps[i].push(v);
        }
    }
    ensure!(!total.is_empty(), "no create logged its steps in watch.log");
    let p50s: Vec<f64> = steps.into_iter().map(|s| Stats::of(s).p50).collect();
    let inside = Stats::of(total.clone()).p50;
    Ok(Row::info(
        "  … where a POST's time goes (p50 of each step, from the create's log line)",
        format!("{} ms in the steps", ms(inside)),
        format!(
            "{}; outside them (HTTP, invoke, reads) {} ms of the POST's {}",
            named_ms(&STEPS, &p50s),
            ms((post_p50 - inside).max(0.0)),
            ms(post_p50)
        ),
    ))
}

/// Creates the fleet; returns each POST's server and duration (ms).
async fn provision_fleet(
    n: usize,
    floor_samples: usize,
    floors: &mut [floor::Floor],
    same: &mut [SameWork],
) -> Result<Vec<(String, f64)>> {
    let mut samples = Vec::with_capacity(n);
    let every = (n / floor_samples).max(1);
    for i in 0..n {
        if i % every == 0 && i / every < floor_samples {
            for floor in floors.iter_mut() {
                floor.sample().await?;
            }
            for s in same.iter_mut() {
                s.sample().await?;
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
