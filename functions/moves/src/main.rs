//! Tenant moves: `POST /api/tenants/{slug}/move` (202 and the move), `GET /api/moves`,
//! `GET /api/moves/{id}` and `POST /api/moves/{id}/cancel`. The steps themselves run in
//! `migrate-tenant`, driven by the queue. See `shared::tenant::moves`.

use lambda_http::{http::Method, run, service_fn, Body, Error, Request, Response};
use shared::{api, Database};

async fn handler(db: &Database, req: Request) -> Result<Response<Body>, Error> {
    let started = std::time::Instant::now();
    let request_id = http_support::request_id(&req);
    let inv = http_support::invocation(&req);
    let pairs = http_support::query_pairs(&req);
    let params = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let id = || {
        http_support::path_param(&req, "id", "/moves/")
            .map(|id| id.trim_end_matches("/cancel").to_owned())
    };
    let outcome = match *req.method() {
        Method::POST if path.ends_with("/move") && path.contains("/tenants/") => {
            let slug = http_support::slug_param(&req);
            let body = http_support::body_bytes(&req);
            api::start_move(db, slug.as_deref(), body, &inv).await
        }
        Method::POST if path.ends_with("/cancel") => match id() {
            Some(id) => api::cancel_move(db, &id, &inv).await,
            None => api::route_not_found(),
        },
        Method::GET if path.ends_with("/moves") => api::list_moves(db, params, &inv).await,
        Method::GET => match id() {
            Some(id) => api::get_move(db, &id, &inv).await,
            None => api::route_not_found(),
        },
        _ => api::route_not_found(),
    };
    http_support::log_request(&req, &request_id, outcome.status, started);
    Ok(http_support::respond(outcome, &request_id))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let db = http_support::init("moves")?;
    run(service_fn(|req| handler(&db, req))).await
}
