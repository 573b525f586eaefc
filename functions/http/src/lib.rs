//! What the HTTP functions share: start-up (tracing, configuration, the sandbox's database
//! handle) and the translation between `lambda_http` and `shared::api`.

use std::time::{Duration, SystemTime};

use lambda_http::{
    http::{header, HeaderValue, StatusCode},
    request::RequestContext,
    Body, Error, Request, RequestExt, Response,
};
use shared::{
    api::ApiResponse,
    invocation::{Invocation, HTTP_BUDGET},
    metrics, Config, Database,
};

pub use shared::api::MAX_BODY_BYTES;

/// Tracing (JSON when `AWS_LAMBDA_LOG_FORMAT=JSON`), configuration and the database handle.
/// Fails at start-up, naming what is missing, rather than on the first request.
pub fn init(function_name: &str) -> Result<Database, Error> {
    lambda_http::tracing::init_default_subscriber();
    let config =
        Config::from_env().inspect_err(|e| tracing::error!(error = %e, "bad configuration"))?;
    let db = Database::new(config, function_name)
        .inspect_err(|e| tracing::error!(error = %e, "bad configuration"))?;
    Ok(db)
}

/// The id of this invocation (the Lambda request id), returned in `x-request-id`.
pub fn request_id(req: &Request) -> String {
    req.lambda_context_ref()
        .map(|c| c.request_id.clone())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Kept from the Lambda deadline to send the answer.
const ANSWER_MARGIN: Duration = Duration::from_millis(500);

/// The invocation's deadline (the Lambda deadline less a margin to answer) and its caller:
/// the IAM principal API Gateway authorised (`requestContext.authorizer.iam.userArn` for an
/// HTTP API, `requestContext.identity.userArn` for a REST API); none locally.
pub fn invocation(req: &Request) -> Invocation {
    let deadline = req
        .lambda_context_ref()
        .map(|c| c.deadline())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let caller = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx
            .authorizer
            .as_ref()
            .and_then(|a| a.iam.as_ref())
            .and_then(|iam| iam.user_arn.clone()),
        Some(RequestContext::ApiGatewayV1(ctx)) => ctx.identity.user_arn.clone(),
        _ => None,
    };
    Invocation::new(deadline, ANSWER_MARGIN, HTTP_BUDGET, caller)
}

/// The raw body bytes, whatever the event encoded (text or base64).
pub fn body_bytes(req: &Request) -> &[u8] {
    req.body().as_ref()
}

/// The `{slug}` of `/api/tenants/{slug}` and `/api/tenants/{slug}/{action}`: the path
/// parameter, or the path's segment when the router gave none.
pub fn slug_param(req: &Request) -> Option<String> {
    if let Some(slug) = req.path_parameters_ref().and_then(|p| p.first("slug")) {
        return Some(slug.to_owned());
    }
    tenant_path(req).map(|(slug, _)| slug.to_owned())
}

/// The action of `/api/tenants/{slug}/{action}` (`restore`, `purge`), if any.
pub fn action(req: &Request) -> Option<String> {
    tenant_path(req).and_then(|(_, action)| action.map(str::to_owned))
}

fn tenant_path(req: &Request) -> Option<(&str, Option<&str>)> {
    let rest = req
        .uri()
        .path()
        .trim_end_matches('/')
        .split_once("/tenants/")?
        .1;
    match rest.split_once('/') {
        None => Some((rest, None)),
        Some((slug, action)) if !action.contains('/') => Some((slug, Some(action))),
        Some(_) => None,
    }
}

/// The `{name}` of `/api/servers/{name}`: see [`path_param`].
pub fn server_param(req: &Request) -> Option<String> {
    path_param(req, "name", "/servers/")
}

/// The path parameter `param`, or what follows `after` in the path when the router gave none.
/// An empty or nested segment is a name that cannot exist (a 404 later).
pub fn path_param(req: &Request, param: &str, after: &str) -> Option<String> {
    if let Some(value) = req.path_parameters_ref().and_then(|p| p.first(param)) {
        return Some(value.to_owned());
    }
    let rest = req.uri().path().trim_end_matches('/').split_once(after)?.1;
    Some(rest.to_owned())
}

/// Query parameters as (name, value) pairs, each name as many times as it was given.
pub fn query_pairs(req: &Request) -> Vec<(String, String)> {
    let params = req.query_string_parameters();
    let mut pairs = Vec::new();
    for (key, _) in params.iter() {
        if pairs.iter().any(|(k, _): &(String, String)| k == key) {
            continue;
        }
        for value in params.all(key).unwrap_or_default() {
            pairs.push((key.to_owned(), value.to_owned()));
        }
    }
    pairs
}

/// JSON response carrying the request id (header, and inside error bodies).
pub fn respond(api: ApiResponse, request_id: &str) -> Response<Body> {
    let mut body = api.body;
    if let Some(error) = body.get_mut("error").and_then(|e| e.as_object_mut()) {
        error.insert("request_id".into(), request_id.into());
    }
    let status = StatusCode::from_u16(api.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::new(Body::Text(body.to_string()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", v);
    }
    resp
}

/// Logs one line per request with what a reader needs to follow it, and its metrics
/// (`Requests`, `RequestLatency` by function, route and outcome: see `shared::metrics`).
pub fn log_request(req: &Request, request_id: &str, status: u16, started: std::time::Instant) {
    tracing::info!(
        request_id,
        method = %req.method(),
        path = %req.uri().path(),
        status,
        "request"
    );
    let function = req
        .lambda_context_ref()
        .map(|c| c.env_config.function_name.clone())
        .unwrap_or_default();
    let route = format!("{} {}", req.method(), metrics::route_of(req.uri().path()));
    metrics::emit(
        &[
            ("Function", function.as_str()),
            ("Route", route.as_str()),
            ("Outcome", metrics::http_outcome(status)),
        ],
        &[
            ("Requests", 1.0, metrics::Unit::Count),
            (
                "RequestLatency",
                started.elapsed().as_secs_f64() * 1000.0,
                metrics::Unit::Milliseconds,
            ),
        ],
    );
}
