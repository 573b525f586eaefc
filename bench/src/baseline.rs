//! The sequential baseline migrate-all is held against: what operators would write without
//! it, a connection and one query per tenant, one tenant after another.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use e2e::database_name;

use crate::{
    progress::step,
    table::{ms, Row},
};

/// Runs the baseline over the `tenants` tenants `placed` lists; returns its time (for
/// migrate-all's comparisons) and its row.
pub async fn measure(placed: &[(String, String)], tenants: usize) -> Result<(Duration, Vec<Row>)> {
    step("sequential baseline: a connection and one query per tenant, one after another");
    let baseline = sequential_baseline(placed).await?;
    let baseline_per = baseline.as_secs_f64() * 1000.0 / tenants as f64;
    let row = Row::info(
        &format!("baseline: {tenants} tenants, connect + 1 query each, sequential"),
        format!("{} ms", ms(baseline.as_secs_f64() * 1000.0)),
        format!("{baseline_per:.2} ms per tenant"),
    );
    Ok((baseline, vec![row]))
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
