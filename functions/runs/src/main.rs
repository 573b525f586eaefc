//! The run ledger: `GET /api/runs` (newest first, paged) and `GET /api/runs/{id}` (a run, its
//! counts, and its tenants, filterable by status, paged). See `shared::ledger`.

use lambda_http::{http::Method, run, service_fn, Body, Error, Request, Response};
use shared::{api, Database};

async fn handler(db: &Database, req: Request) -> Result<Response<Body>, Error> {
    let started = std::time::Instant::now();
    let request_id = http_support::request_id(&req);
    let inv = http_support::invocation(&req);
    let pairs = http_support::query_pairs(&req);
    let params = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let outcome = match (req.method(), http_support::path_param(&req, "id", "/runs/")) {
        (&Method::GET, None) => api::list_runs(db, params, &inv).await,
        (&Method::GET, Some(id)) => api::get_run(db, &id, params, &inv).await,
        _ => api::route_not_found(),
    };
    http_support::log_request(&req, &request_id, outcome.status, started);
    Ok(http_support::respond(outcome, &request_id))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let db = http_support::init("runs")?;
    run(service_fn(|req| handler(&db, req))).await
}
