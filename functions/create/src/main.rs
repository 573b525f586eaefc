//! `POST /api/tenants`: create a tenant (registry row, database, migrations), answer 201.

use lambda_http::{http::Method, run, service_fn, Body, Error, Request, Response};
use shared::{api, events, Database};

async fn handler(db: &Database, req: Request) -> Result<Response<Body>, Error> {
    let started = std::time::Instant::now();
    let request_id = http_support::request_id(&req);
    let outcome = match *req.method() {
        Method::POST => {
            let key = req.headers().get("idempotency-key").map(|v| v.as_bytes());
            let inv = http_support::invocation(&req);
            let outcome = api::create(db, http_support::body_bytes(&req), key, &inv).await;
            // provisionSuccess or provisionFailure, committed with the outcome.
            if events::worth_sending(outcome.status) {
                events::send_after(db, &inv).await;
            }
            outcome
        }
        _ => api::route_not_found(),
    };
    http_support::log_request(&req, &request_id, outcome.status, started);
    Ok(http_support::respond(outcome, &request_id))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let db = http_support::init("create-tenant")?;
    run(service_fn(|req| handler(&db, req))).await
}
