//! The ways out of `active` and back: `DELETE /api/tenants/{slug}` (soft delete: the login
//! disabled, database and secret kept), `POST /api/tenants/{slug}/restore` and
//! `POST /api/tenants/{slug}/purge`. See `shared::lifecycle`.

use lambda_http::{http::Method, run, service_fn, Body, Error, Request, Response};
use shared::{api, events, Database};

async fn handler(db: &Database, req: Request) -> Result<Response<Body>, Error> {
    let started = std::time::Instant::now();
    let request_id = http_support::request_id(&req);
    let inv = http_support::invocation(&req);
    let slug = http_support::slug_param(&req);
    let outcome = match (req.method(), http_support::action(&req).as_deref()) {
        (&Method::DELETE, None) => api::delete(db, slug.as_deref(), &inv).await,
        (&Method::POST, Some("restore")) => api::restore(db, slug.as_deref(), &inv).await,
        (&Method::POST, Some("purge")) => api::purge(db, slug.as_deref(), &inv).await,
        _ => api::route_not_found(),
    };
    // deactivateSuccess, activateSuccess or deprovisionSuccess, committed with the outcome.
    if events::worth_sending(outcome.status) {
        events::send_after(db, &inv).await;
    }
    http_support::log_request(&req, &request_id, outcome.status, started);
    Ok(http_support::respond(outcome, &request_id))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let db = http_support::init("delete-tenant")?;
    run(service_fn(|req| handler(&db, req))).await
}
