//! `GET /api/tenants` (a page of tenants) and `GET /api/tenants/{slug}` (one tenant).

use lambda_http::{http::Method, run, service_fn, Body, Error, Request, Response};
use shared::{api, Database};

async fn handler(db: &Database, req: Request) -> Result<Response<Body>, Error> {
    let started = std::time::Instant::now();
    let request_id = http_support::request_id(&req);
    let inv = http_support::invocation(&req);
    let outcome = match (req.method(), http_support::slug_param(&req)) {
        (&Method::GET, Some(slug)) => api::get(db, Some(&slug), &inv).await,
        (&Method::GET, None) => {
            let pairs = http_support::query_pairs(&req);
            api::list(
                db,
                pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                &inv,
            )
            .await
        }
        _ => api::route_not_found(),
    };
    http_support::log_request(&req, &request_id, outcome.status, started);
    Ok(http_support::respond(outcome, &request_id))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let db = http_support::init("list-tenants")?;
    run(service_fn(|req| handler(&db, req))).await
}
