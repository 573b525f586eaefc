//! Create latency: the fleet provisioned through `POST /api/tenants`, one tenant at a time,
//! held against the floor (what PostgreSQL itself needs to make a tenant database, see
//! `floor`), sampled on each server between the requests. Goal: p50 ≤ 1.25x the floor of
//! both servers; then each server's own figures against its own floor.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use e2e::json;
use reqwest::StatusCode;

use crate::{
    fleet::slug,
    floor,
    progress::step,
    table::{ms, Row, Stats},
};

/// Provisions `tenants` tenants with `floor_samples` floor samples between them; returns
/// each server's floor rows, the goal for both servers, and each server's own figures.
pub async fn measure(tenants: usize, floor_samples: usize) -> Result<Vec<Row>> {
    step(&format!(
        "provisioning {tenants} tenants through POST /api/tenants, one at a time, with \
         {floor_samples} floor samples (raw CREATE DATABASE + tenant DDL) between them"
    ));
    let mut rows = Vec::new();
    let mut floors = Vec::new();
    for server in e2e::SERVERS {
        floors.push(floor::Floor::new(server).await?);
    }
    let provision = provision_fleet(tenants, floor_samples, &mut floors).await?;
    let mut all_floor = Vec::new();
    for floor in &mut floors {
        floor.drop_all().await?;
        rows.extend(floor.rows());
        all_floor.extend(floor.totals());
    }
    let floor_p50 = Stats::of(all_floor).p50;
    let all = Stats::of(provision.iter().map(|(_, ms)| *ms).collect());
    let ratio = all.p50 / floor_p50;
    rows.push(Row::goal(
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
        rows.push(Row::info(
            &format!("POST /api/tenants placed on {} (p50; p90)", floor.server()),
            format!("{} ms ({})", ms(stats.p50), ms(stats.p90)),
            format!("{n} tenants, {:.2}x its floor", stats.p50 / floor.p50()),
        ));
    }
    Ok(rows)
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
