//! `DELETE /api/tenants/{slug}`: soft-delete a tenant (its database is kept).

use lambda_http::{http::Method, run, service_fn, Body, Error, Request, Response};
use shared::{api, Database};

async fn handler(db: &Database, req: Request) -> Result<Response<Body>, Error> {
    let request_id = http_support::request_id(&req);
    let outcome = match *req.method() {
        Method::DELETE => {
            let inv = http_support::invocation(&req);
            api::delete(db, http_support::slug_param(&req).as_deref(), &inv).await
        }
        _ => api::route_not_found(),
    };
    http_support::log_request(&req, &request_id, outcome.status);
    Ok(http_support::respond(outcome, &request_id))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let db = http_support::init("delete-tenant")?;
    run(service_fn(|req| handler(&db, req))).await
}
