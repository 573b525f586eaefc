//! The fleet's servers: `GET /api/servers`, `POST /api/servers`, and `GET`, `PATCH`,
//! `DELETE /api/servers/{name}`, `POST /api/servers/{name}/drain`. See `shared::servers`
//! (the drain: `shared::tenant::moves::drain`).

use lambda_http::{http::Method, run, service_fn, Body, Error, Request, Response};
use shared::{api, Database};

async fn handler(db: &Database, req: Request) -> Result<Response<Body>, Error> {
    let started = std::time::Instant::now();
    let request_id = http_support::request_id(&req);
    let inv = http_support::invocation(&req);
    let body = http_support::body_bytes(&req);
    let outcome = match (req.method(), http_support::server_param(&req)) {
        (&Method::POST, Some(name)) if drain_route(&req) => {
            let name = name.trim_end_matches("/drain");
            api::drain_server(db, Some(name), &inv).await
        }
        (&Method::GET, None) => {
            let pairs = http_support::query_pairs(&req);
            api::list_servers(
                db,
                pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                &inv,
            )
            .await
        }
        (&Method::POST, None) => api::register_server(db, body, &inv).await,
        (&Method::GET, Some(name)) => api::get_server(db, Some(&name), &inv).await,
        (&Method::PATCH, Some(name)) => api::update_server(db, Some(&name), body, &inv).await,
        (&Method::DELETE, Some(name)) => api::remove_server(db, Some(&name), &inv).await,
        _ => api::route_not_found(),
    };
    http_support::log_request(&req, &request_id, outcome.status, started);
    Ok(http_support::respond(outcome, &request_id))
}

/// `POST /api/servers/{name}/drain` (the router gives the name alone; without the router, the
/// name is followed by `/drain`, trimmed above).
fn drain_route(req: &Request) -> bool {
    req.uri().path().trim_end_matches('/').ends_with("/drain")
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let db = http_support::init("servers")?;
    run(service_fn(|req| handler(&db, req))).await
}
