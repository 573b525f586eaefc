//! Runs of migrate-all as the ledger (`GET /api/runs/{id}`) and the report show them.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::http::get;

/// Waits (at most `within`) for a run of the ledger to end; the run as `GET /api/runs/{id}`
/// shows it, with up to 100 of its tenants.
pub async fn wait_run_end(id: &str, within: Duration) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let r = get(&format!("/api/runs/{id}?limit=100")).await;
        // A 503 is asked again: moto, busy with the queue, is also the Secrets Manager that a
        // new instance of the runs function reads first (within 4 s).
        if r.status == StatusCode::OK && r.body["status"] != "running" {
            return r.body;
        }
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            r.text
        );
        assert!(
            std::time::Instant::now() < deadline,
            "run {id} still running after {within:?}: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A tenant's row in a run (`GET /api/runs/{id}` body).
pub fn run_tenant<'a>(run: &'a Value, slug: &str) -> &'a Value {
    run["tenants"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["slug"] == slug))
        .unwrap_or_else(|| panic!("{slug} not in the run: {run}"))
}

/// The report row of `slug`, if the report has one.
pub fn report_row<'a>(report: &'a Value, slug: &str) -> Option<&'a Value> {
    report["tenants"]
        .as_array()?
        .iter()
        .find(|t| t["slug"] == slug)
}
