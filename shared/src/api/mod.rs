//! The HTTP contract without an HTTP library: request parsing (bodies, query strings, path
//! slugs) and the one place where operation errors become status codes and error bodies.
//!
//! Error bodies never carry SQL, host names, stack traces or secrets: the cause chain of a
//! 5xx goes to the log, the client gets a fixed sentence.

pub(crate) mod body;

use std::{
    future::Future,
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::{json, Map, Value};
use tracing::error;

use crate::{
    api::body::json_type,
    database::Database,
    domain::{NewTenant, ServerName, Slug, Tenant, TenantName, TenantStatus},
    fleet::ledger,
    invocation::Invocation,
    pg::DbError,
    servers::{self, NoRoom, ServersError},
    tenant::{
        lifecycle::{self, LifecycleError},
        provision::{self, CreateTenantError, IdempotencyKey},
        registry::{
            self, Cursor, FieldError, GetTenantError, ListQuery, ListTenantsError,
            LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT,
        },
    },
};
use uuid::Uuid;

/// Largest request body accepted (bytes); larger is 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum ErrorCode {
    ValidationError,
    NotFound,
    Conflict,
    PayloadTooLarge,
    /// 422: an `Idempotency-Key` reused with a different body.
    IdempotencyKeyReused,
    ServiceUnavailable,
    /// 503: no open server has room for a new tenant (or not the requested one).
    NoCapacity,
    InternalError,
}

impl ErrorCode {
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::ValidationError => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::IdempotencyKeyReused => 422,
            ErrorCode::ServiceUnavailable | ErrorCode::NoCapacity => 503,
            ErrorCode::InternalError => 500,
        }
    }
}

/// An error as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Vec<FieldError>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn validation(message: impl Into<String>, details: Vec<FieldError>) -> Self {
        ApiError {
            code: ErrorCode::ValidationError,
            message: message.into(),
            details,
        }
    }

    fn unavailable(log_detail: &str) -> Self {
        error!(cause = %log_detail, "dependency unavailable");
        ApiError::new(
            ErrorCode::ServiceUnavailable,
            "The tenant database service is temporarily unavailable; retry later",
        )
    }

    fn internal(cause: &anyhow::Error, message: &str) -> Self {
        error!(cause = %format!("{cause:#}"), "request failed");
        ApiError::new(ErrorCode::InternalError, message)
    }

    pub fn payload_too_large() -> Self {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("Request body exceeds {MAX_BODY_BYTES} bytes"),
        )
    }

    pub fn into_response(self) -> ApiResponse {
        let mut error = Map::new();
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        if !self.details.is_empty() {
            error.insert("details".into(), json!(self.details));
        }
        ApiResponse {
            status: self.code.status(),
            body: json!({ "error": error }),
        }
    }
}

/// Status and JSON body; the function crates turn it into an HTTP response.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Value,
}

impl ApiResponse {
    fn ok(status: u16, body: impl Serialize) -> ApiResponse {
        match serde_json::to_value(body) {
            Ok(body) => ApiResponse { status, body },
            Err(e) => ApiError::internal(&e.into(), "Unexpected error").into_response(),
        }
    }
}

impl From<Result<ApiResponse, ApiError>> for ApiResponse {
    fn from(r: Result<ApiResponse, ApiError>) -> Self {
        r.unwrap_or_else(ApiError::into_response)
    }
}

// ---- the one mapping from operation errors to the contract ---------------------------------

impl From<CreateTenantError> for ApiError {
    fn from(e: CreateTenantError) -> Self {
        match e {
            CreateTenantError::Validation { message, details } => {
                ApiError::validation(message, details)
            }
            CreateTenantError::Conflict(slug) | CreateTenantError::ExistsOutside(slug, _) => {
                ApiError::new(
                    ErrorCode::Conflict,
                    format!("Tenant with slug '{slug}' already exists"),
                )
            }
            CreateTenantError::IdempotencyMismatch => ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "Idempotency-Key was already used with a different request body",
            ),
            CreateTenantError::Busy(slug) => ApiError::new(
                ErrorCode::Conflict,
                format!("Tenant '{slug}' is being changed by another operation; retry later"),
            ),
            CreateTenantError::NoRoom(no_room) => no_room.into(),
            CreateTenantError::Unavailable(m) => ApiError::unavailable(&m),
            CreateTenantError::Unexpected(cause) => ApiError::internal(
                &cause,
                "Provisioning failed; it is safe to retry (what was made is undone now or by the \
                 next attempt)",
            ),
        }
    }
}

impl From<NoRoom> for ApiError {
    fn from(e: NoRoom) -> Self {
        match e {
            NoRoom::Unknown(name) => ApiError::validation(
                "Unknown server",
                vec![FieldError::new(
                    "server",
                    format!("no server named '{name}' is registered"),
                )],
            ),
            NoRoom::Draining(name) => ApiError::new(
                ErrorCode::Conflict,
                format!("Server '{name}' is draining and takes no new tenants"),
            ),
            NoRoom::Full(Some(name)) => ApiError::new(
                ErrorCode::NoCapacity,
                format!("Server '{name}' holds its max_tenants; it takes no new tenant"),
            ),
            NoRoom::Full(None) => ApiError::new(
                ErrorCode::NoCapacity,
                "No open server has room for a new tenant",
            ),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) | DbError::TimedOut(m) => ApiError::unavailable(&m),
            e if e.is_lock_timeout() => ApiError::unavailable(&e.to_string()),
            other => ApiError::internal(&anyhow::Error::new(other), "Unexpected error"),
        }
    }
}

impl From<ServersError> for ApiError {
    fn from(e: ServersError) -> Self {
        match e {
            ServersError::Validation { message, details } => ApiError::validation(message, details),
            ServersError::NotFound(Some(name)) => {
                ApiError::new(ErrorCode::NotFound, format!("Server '{name}' not found"))
            }
            ServersError::NotFound(None) => ApiError::new(ErrorCode::NotFound, "Server not found"),
            ServersError::Conflict(message) => ApiError::new(ErrorCode::Conflict, message),
            ServersError::Refused { field, message } => ApiError::validation(
                message,
                vec![FieldError::new(
                    field,
                    "the server or its secret cannot be used",
                )],
            ),
            ServersError::Unreachable(m) => {
                error!(cause = %m, "the server to register cannot be reached");
                ApiError::new(
                    ErrorCode::ServiceUnavailable,
                    "The server could not be reached with the given host, port and secret; \
                     check them (and the network path), then retry",
                )
            }
            ServersError::Unavailable(m) => ApiError::unavailable(&m),
            ServersError::Unexpected(cause) => ApiError::internal(&cause, "Unexpected error"),
        }
    }
}

impl From<GetTenantError> for ApiError {
    fn from(e: GetTenantError) -> Self {
        match e {
            GetTenantError::NotFound(slug) => not_found(slug.as_ref()),
            GetTenantError::Unavailable(m) => ApiError::unavailable(&m),
            GetTenantError::Unexpected(cause) => ApiError::internal(&cause, "Unexpected error"),
        }
    }
}

impl From<ListTenantsError> for ApiError {
    fn from(e: ListTenantsError) -> Self {
        match e {
            ListTenantsError::Unavailable(m) => ApiError::unavailable(&m),
            ListTenantsError::Unexpected(cause) => ApiError::internal(&cause, "Unexpected error"),
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::NotFound(slug) => not_found(slug.as_ref()),
            LifecycleError::Conflict(_, message) => ApiError::new(ErrorCode::Conflict, message),
            LifecycleError::Busy(slug) => ApiError::new(
                ErrorCode::Conflict,
                format!("Tenant '{slug}' is being changed by another operation; retry later"),
            ),
            LifecycleError::Unavailable(m) => ApiError::unavailable(&m),
            LifecycleError::Unexpected(cause) => ApiError::internal(
                &cause,
                "The operation failed; it is safe to retry (each step is repeatable)",
            ),
        }
    }
}

fn not_found(slug: Option<&Slug>) -> ApiError {
    match slug {
        Some(slug) => ApiError::new(ErrorCode::NotFound, format!("Tenant '{slug}' not found")),
        None => ApiError::new(ErrorCode::NotFound, "Tenant not found"),
    }
}

// ---- request parsing ----------------------------------------------------------------------

/// Parses a create body: a JSON object with exactly `name` and `slug`, both strings.
/// Every problem is reported with its field; nothing reaches SQL unless all is well.
/// The size limit (413) is [`create`]'s, checked before parsing.
pub fn parse_create_body(body: &[u8]) -> Result<NewTenant, CreateTenantError> {
    let invalid = |message: &str, details: Vec<FieldError>| CreateTenantError::Validation {
        message: message.to_owned(),
        details,
    };
    let mut fields = body::json_object(body, "a JSON object with `name` and `slug`")
        .map_err(|e| invalid(e.message, vec![e.detail]))?;

    let mut details = Vec::new();
    let mut text_field = |name: &str| match fields.remove(name) {
        None => {
            details.push(FieldError::new(name, "is required"));
            None
        }
        Some(Value::Null) => {
            details.push(FieldError::new(name, "must not be null"));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            details.push(FieldError::new(
                name,
                format!("must be a string, got {}", json_type(&other)),
            ));
            None
        }
    };
    let name = text_field("name");
    let slug = text_field("slug");
    // Optional: absent or null lets placement choose.
    let server = match fields.remove("server") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            details.push(FieldError::new(
                "server",
                format!("must be a string, got {}", json_type(&other)),
            ));
            None
        }
    };
    let mut unknown: Vec<String> = fields.keys().cloned().collect();
    unknown.sort();
    for field in unknown {
        let shown: String = field.chars().take(64).collect();
        details.push(FieldError::new(shown, "unknown field"));
    }

    let name = name.and_then(|n| {
        TenantName::parse(&n)
            .map_err(|e| details.push(FieldError::new("name", e.to_string())))
            .ok()
    });
    let slug = slug.and_then(|s| {
        Slug::parse(&s)
            .map_err(|e| details.push(FieldError::new("slug", e.to_string())))
            .ok()
    });
    let server = match server.map(|s| ServerName::parse(&s)) {
        None => None,
        Some(Ok(server)) => Some(server),
        Some(Err(e)) => {
            details.push(FieldError::new("server", e));
            None
        }
    };
    match (name, slug) {
        (Some(name), Some(slug)) if details.is_empty() => Ok(NewTenant { name, slug, server }),
        _ => {
            let message = match details.as_slice() {
                [only] if only.field == "slug" => "Invalid slug format",
                [only] if only.field == "name" => "Invalid name",
                _ => "Invalid request body",
            };
            Err(invalid(message, details))
        }
    }
}

/// Parses `status`, `limit` and `cursor`; any other parameter is refused (a typo such as
/// `?staus=active` would otherwise silently list everything).
pub(crate) fn parse_list_query<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery::default();
    query_fields(params, |key, value, details| {
        match key {
            "status" => match TenantStatus::parse(value) {
                Some(s) => q.status = Some(s),
                None => details.push(FieldError::new(
                    "status",
                    "must be one of provisioning, active, deleted, purged",
                )),
            },
            "limit" => q.limit = parse_limit(value, details).unwrap_or(q.limit),
            "cursor" => q.cursor = parse_cursor(value, Cursor::decode, details),
            _ => return false,
        }
        true
    })?;
    Ok(q)
}

/// Walks a query string's parameters: each may come once, and `field` takes those it knows
/// (returning false for any other); every problem is collected, then reported at once.
fn query_fields<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    mut field: impl FnMut(&str, &str, &mut Vec<FieldError>) -> bool,
) -> Result<(), ApiError> {
    let mut details = Vec::new();
    let mut seen = Vec::new();
    for (key, value) in params {
        if seen.contains(&key) {
            details.push(FieldError::new(clip(key), "given more than once"));
            continue;
        }
        seen.push(key);
        if !field(key, value, &mut details) {
            details.push(FieldError::new(clip(key), "unknown query parameter"));
        }
    }
    if details.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation("Invalid query parameters", details))
    }
}

/// A page size: 1 to `LIST_MAX_LIMIT`.
fn parse_limit(value: &str, details: &mut Vec<FieldError>) -> Option<i64> {
    match value.parse::<i64>() {
        Ok(n) if (1..=LIST_MAX_LIMIT).contains(&n) => Some(n),
        _ => {
            details.push(FieldError::new(
                "limit",
                format!("must be a whole number from 1 to {LIST_MAX_LIMIT}"),
            ));
            None
        }
    }
}

/// A cursor this API issued (`decode` knows its kind).
fn parse_cursor<T>(
    value: &str,
    decode: impl Fn(&str) -> Option<T>,
    details: &mut Vec<FieldError>,
) -> Option<T> {
    let cursor = decode(value);
    if cursor.is_none() {
        details.push(FieldError::new(
            "cursor",
            "is not a cursor returned by this API (use next_cursor as given)",
        ));
    }
    cursor
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A slug taken from the path. One that cannot be valid cannot exist: 404, no SQL.
fn path_slug(raw: Option<&str>) -> Result<Slug, Option<Slug>> {
    raw.and_then(|s| Slug::parse(s).ok()).ok_or(None)
}

// ---- the operations, as the handlers call them --------------------------------------------

/// `POST /api/tenants`, with the optional `Idempotency-Key` header. Answers 201 for a new
/// tenant and for the replay of an earlier request with the same key and body from the same
/// caller.
pub async fn create(
    db: &Database,
    body: &[u8],
    idempotency_key: Option<&[u8]>,
    inv: &Invocation,
) -> ApiResponse {
    let result: Result<ApiResponse, ApiError> = async {
        if body.len() > MAX_BODY_BYTES {
            return Err(ApiError::payload_too_large());
        }
        let key = idempotency_key
            .map(IdempotencyKey::parse)
            .transpose()
            .map_err(|m| {
                ApiError::validation(
                    "Invalid Idempotency-Key header",
                    vec![FieldError::new("Idempotency-Key", m)],
                )
            })?;
        let new = parse_create_body(body)?;
        let created = within_deadline(
            db,
            inv,
            provision::create_tenant(db, &new, key.as_ref(), inv),
        )
        .await?;
        Ok(ApiResponse::ok(201, created.tenant))
    }
    .await;
    result.into()
}

/// `GET /api/tenants`.
pub async fn list<'a>(
    db: &Database,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    inv: &Invocation,
) -> ApiResponse {
    let result: Result<ApiResponse, ApiError> = async {
        let q = parse_list_query(params)?;
        let page = retry_once(
            db,
            inv,
            || registry::list_tenants(db, &q),
            |e| matches!(e, ListTenantsError::Unavailable(_)),
        )
        .await?;
        Ok(ApiResponse::ok(200, page))
    }
    .await;
    result.into()
}

/// `GET /api/tenants/{slug}`.
pub async fn get(db: &Database, slug: Option<&str>, inv: &Invocation) -> ApiResponse {
    let result: Result<ApiResponse, ApiError> = async {
        let slug = path_slug(slug).map_err(GetTenantError::NotFound)?;
        let tenant = retry_once(
            db,
            inv,
            || registry::get_tenant(db, &slug),
            |e| matches!(e, GetTenantError::Unavailable(_)),
        )
        .await?;
        Ok(ApiResponse::ok(200, tenant))
    }
    .await;
    result.into()
}

/// `DELETE /api/tenants/{slug}`: soft delete (the login disabled, the database and the
/// secret kept).
pub async fn delete(db: &Database, slug: Option<&str>, inv: &Invocation) -> ApiResponse {
    lifecycle_call(db, slug, inv, lifecycle::delete_tenant).await
}

/// `POST /api/tenants/{slug}/restore`.
pub async fn restore(db: &Database, slug: Option<&str>, inv: &Invocation) -> ApiResponse {
    lifecycle_call(db, slug, inv, lifecycle::restore_tenant).await
}

/// `POST /api/tenants/{slug}/purge`.
pub async fn purge(db: &Database, slug: Option<&str>, inv: &Invocation) -> ApiResponse {
    lifecycle_call(db, slug, inv, lifecycle::purge_tenant).await
}

/// One of the lifecycle operations on the path's tenant. Each is repeatable (a step that ran
/// already is a no-op), so each is retried like a read.
async fn lifecycle_call<F>(
    db: &Database,
    slug: Option<&str>,
    inv: &Invocation,
    op: F,
) -> ApiResponse
where
    F: AsyncFn(&Database, &Slug) -> Result<Tenant, LifecycleError>,
{
    let result: Result<ApiResponse, ApiError> = async {
        let slug = path_slug(slug).map_err(LifecycleError::NotFound)?;
        let tenant = retry_once(
            db,
            inv,
            || op(db, &slug),
            |e| matches!(e, LifecycleError::Unavailable(_)),
        )
        .await?;
        Ok(ApiResponse::ok(200, tenant))
    }
    .await;
    result.into()
}

/// A failure faster than this found the cached connection already dead (a frozen sandbox, a
/// terminated backend, a failover): worth one more try on a new connection. A slower one is
/// a server that did not answer in time, and is answered at once.
const FAST_FAILURE: Duration = Duration::from_secs(1);

/// Runs an operation within the invocation's deadline. Past it, the operation is abandoned
/// (its locks go with its connection, see `locks`) and the client gets a 503.
async fn within_deadline<T, E>(
    db: &Database,
    inv: &Invocation,
    op: impl Future<Output = Result<T, E>>,
) -> Result<T, ApiError>
where
    ApiError: From<E>,
{
    match tokio::time::timeout_at(inv.deadline.into(), op).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(_) => {
            db.reset_system().await;
            Err(ApiError::unavailable(
                "the operation did not finish before the invocation's deadline",
            ))
        }
    }
}

/// Runs an idempotent operation within the deadline; if it failed fast because the cached
/// connection was dead, runs it once more on a new connection.
async fn retry_once<T, E, F, Fut>(
    db: &Database,
    inv: &Invocation,
    op: F,
    unavailable: impl Fn(&E) -> bool,
) -> Result<T, ApiError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    ApiError: From<E>,
{
    let attempt = async {
        let started = Instant::now();
        match op().await {
            Err(e) if unavailable(&e) && started.elapsed() < FAST_FAILURE => {
                db.reset_system().await;
                op().await
            }
            other => other,
        }
    };
    within_deadline(db, inv, attempt).await
}

// ---- servers ----------------------------------------------------------------------------------

/// A server name taken from the path. One that cannot be valid cannot exist: 404, no SQL.
fn path_server(raw: Option<&str>) -> Result<ServerName, ServersError> {
    raw.and_then(|s| ServerName::parse(s).ok())
        .ok_or(ServersError::NotFound(None))
}

fn no_query<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<(), ApiError> {
    let details: Vec<FieldError> = params
        .into_iter()
        .map(|(key, _)| FieldError::new(clip(key), "unknown query parameter"))
        .collect();
    if details.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation("Invalid query parameters", details))
    }
}

/// `GET /api/servers`: every server with its tenant counts, capacity and state, `primary`
/// first.
pub async fn list_servers<'a>(
    db: &Database,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    inv: &Invocation,
) -> ApiResponse {
    let result: Result<ApiResponse, ApiError> = async {
        no_query(params)?;
        let list = retry_once(
            db,
            inv,
            || servers::list_servers(db),
            |e| matches!(e, ServersError::Unavailable(_)),
        )
        .await?;
        Ok(ApiResponse::ok(200, json!({ "servers": list })))
    }
    .await;
    result.into()
}

/// `GET /api/servers/{name}`.
pub async fn get_server(db: &Database, name: Option<&str>, inv: &Invocation) -> ApiResponse {
    let result: Result<ApiResponse, ApiError> = async {
        let name = path_server(name)?;
        let server = retry_once(
            db,
            inv,
            || servers::get_server(db, &name),
            |e| matches!(e, ServersError::Unavailable(_)),
        )
        .await?;
        Ok(ApiResponse::ok(200, server))
    }
    .await;
    result.into()
}

/// `POST /api/servers`: registers a server after checking it for real. 201 and the server.
pub async fn register_server(db: &Database, body: &[u8], inv: &Invocation) -> ApiResponse {
    let result: Result<ApiResponse, ApiError> = async {
        if body.len() > MAX_BODY_BYTES {
            return Err(ApiError::payload_too_large());
        }
        let new = servers::parse_new_server(body)?;
        let server = within_deadline(db, inv, servers::register_server(db, &new)).await?;
        Ok(ApiResponse::ok(201, server))
    }
    .await;
    result.into()
}

/// `PATCH /api/servers/{name}`: state, capacity, budget.
pub async fn update_server(
    db: &Database,
    name: Option<&str>,
    body: &[u8],
    inv: &Invocation,
) -> ApiResponse {
    let result: Result<ApiResponse, ApiError> = async {
        if body.len() > MAX_BODY_BYTES {
            return Err(ApiError::payload_too_large());
        }
        let name = path_server(name)?;
        let patch = servers::parse_patch(body)?;
        let server = retry_once(
            db,
            inv,
            || servers::update_server(db, &name, &patch),
            |e| matches!(e, ServersError::Unavailable(_)),
        )
        .await?;
        Ok(ApiResponse::ok(200, server))
    }
    .await;
    result.into()
}

/// `DELETE /api/servers/{name}`: 200 and the server as it was; 409 while it holds tenants.
pub async fn remove_server(db: &Database, name: Option<&str>, inv: &Invocation) -> ApiResponse {
    let result: Result<ApiResponse, ApiError> = async {
        let name = path_server(name)?;
        let server = within_deadline(db, inv, servers::remove_server(db, &name)).await?;
        Ok(ApiResponse::ok(200, server))
    }
    .await;
    result.into()
}

/// Bodies for requests that reach a function on a method or path it does not serve.
pub fn route_not_found() -> ApiResponse {
    ApiError::new(ErrorCode::NotFound, "No such route").into_response()
}

// ---- runs -------------------------------------------------------------------------------------

/// `GET /api/runs`: the run ledger, newest first (`limit` 1–500, default 100; `cursor`).
pub async fn list_runs<'a>(
    db: &Database,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    inv: &Invocation,
) -> ApiResponse {
    let result: Result<ApiResponse, ApiError> = async {
        let q = parse_page_query(params, false, |raw| Cursor::decode(raw).map(Page::Runs))?;
        let cursor = match &q.cursor {
            Some(Page::Runs(c)) => Some(c),
            _ => None,
        };
        let page = retry_once(
            db,
            inv,
            || ledger::list_runs(db, q.limit, cursor),
            DbError::is_unavailable,
        )
        .await?;
        Ok(ApiResponse::ok(200, page))
    }
    .await;
    result.into()
}

/// `GET /api/runs/{id}`: one run and a page of its tenants (`status`, `limit`, `cursor`).
pub async fn get_run<'a>(
    db: &Database,
    id: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    inv: &Invocation,
) -> ApiResponse {
    let result: Result<ApiResponse, ApiError> = async {
        // An id that cannot be a run's cannot exist: 404, no SQL.
        let not_found = || ApiError::new(ErrorCode::NotFound, "Run not found");
        let id = Uuid::parse_str(id).map_err(|_| not_found())?;
        let q = parse_page_query(params, true, |raw| {
            ledger::decode_slug_cursor(raw).map(Page::Tenants)
        })?;
        let after = match &q.cursor {
            Some(Page::Tenants(slug)) => Some(slug.as_str()),
            _ => None,
        };
        let run = retry_once(
            db,
            inv,
            || ledger::get_run(db, id, q.status.as_deref(), q.limit, after),
            DbError::is_unavailable,
        )
        .await?
        .ok_or_else(not_found)?;
        Ok(ApiResponse::ok(200, run))
    }
    .await;
    result.into()
}

/// Where a page starts.
enum Page {
    Runs(Cursor),
    Tenants(String),
}

struct PageQuery {
    status: Option<String>,
    limit: i64,
    cursor: Option<Page>,
}

/// `limit`, `cursor` and, where `with_status`, a run tenant's `status`; nothing else.
fn parse_page_query<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    with_status: bool,
    decode: impl Fn(&str) -> Option<Page>,
) -> Result<PageQuery, ApiError> {
    let mut q = PageQuery {
        status: None,
        limit: LIST_DEFAULT_LIMIT,
        cursor: None,
    };
    query_fields(params, |key, value, details| {
        match key {
            "status" if with_status => {
                if ledger::TENANT_STATUSES.contains(&value) {
                    q.status = Some(value.to_owned());
                } else {
                    details.push(FieldError::new(
                        "status",
                        format!("must be one of {}", ledger::TENANT_STATUSES.join(", ")),
                    ));
                }
            }
            "limit" => q.limit = parse_limit(value, details).unwrap_or(q.limit),
            "cursor" => q.cursor = parse_cursor(value, &decode, details),
            _ => return false,
        }
        true
    })?;
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(e: CreateTenantError) -> Vec<(String, String)> {
        match e {
            CreateTenantError::Validation { details, .. } => {
                details.into_iter().map(|d| (d.field, d.message)).collect()
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn fields(body: &str) -> Vec<String> {
        details(parse_create_body(body.as_bytes()).unwrap_err())
            .into_iter()
            .map(|d| d.0)
            .collect()
    }

    #[test]
    fn valid_body_parses() {
        let t = parse_create_body(br#"{"name": " Acme Corp ", "slug": "acme"}"#).unwrap();
        assert_eq!((t.name.as_str(), t.slug.as_str()), ("Acme Corp", "acme"));
    }

    #[test]
    fn each_problem_names_its_field() {
        assert_eq!(fields(r#"{"name": "A"}"#), ["slug"]);
        assert_eq!(fields(r#"{"slug": "acme"}"#), ["name"]);
        assert_eq!(fields(r#"{"name": null, "slug": 5}"#), ["name", "slug"]);
        assert_eq!(
            fields(r#"{"name": "A", "slug": "acme", "zz": 1, "admin": true}"#),
            ["admin", "zz"]
        );
        assert_eq!(fields(r#"{"name": "A", "slug": "Acme"}"#), ["slug"]);
        assert_eq!(fields(r#"{"name": "", "slug": "acme"}"#), ["name"]);
        assert_eq!(fields(r#"[]"#), ["body"]);
        assert_eq!(fields(r#"{"name": "#), ["body"]);
        assert_eq!(fields(""), ["body"]);
        assert_eq!(
            details(parse_create_body(b"{\"name\": \"\xff\"}").unwrap_err())[0].0,
            "body"
        );
    }

    #[test]
    fn slug_message_says_which_rule_failed() {
        let d = details(parse_create_body(br#"{"name": "A", "slug": "ab"}"#).unwrap_err());
        assert!(d[0].1.contains("between 3 and 48"), "{d:?}");
        let d = details(parse_create_body(br#"{"name": "A", "slug": "1ab"}"#).unwrap_err());
        assert!(d[0].1.contains("start with a lowercase letter"), "{d:?}");
    }

    #[test]
    fn error_codes_map_to_statuses() {
        assert_eq!(ErrorCode::ValidationError.status(), 400);
        assert_eq!(ErrorCode::NotFound.status(), 404);
        assert_eq!(ErrorCode::Conflict.status(), 409);
        assert_eq!(ErrorCode::PayloadTooLarge.status(), 413);
        assert_eq!(ErrorCode::ServiceUnavailable.status(), 503);
        assert_eq!(ErrorCode::InternalError.status(), 500);
        let r = ApiError::new(ErrorCode::Conflict, "x").into_response();
        assert_eq!(
            r.body,
            json!({"error": {"code": "CONFLICT", "message": "x"}})
        );
    }

    #[test]
    fn unavailable_and_internal_errors_hide_their_cause() {
        let r = ApiError::from(CreateTenantError::Unavailable(
            "connect to db.internal:5432 refused".into(),
        ))
        .into_response();
        assert_eq!(r.status, 503);
        assert!(!r.body.to_string().contains("db.internal"));
        let r = ApiError::from(CreateTenantError::Unexpected(anyhow::anyhow!(
            "syntax error at SELECT"
        )))
        .into_response();
        assert_eq!(r.status, 500);
        assert!(!r.body.to_string().contains("SELECT"));
    }

    #[test]
    fn list_query_rules() {
        assert_eq!(parse_list_query([]).unwrap(), ListQuery::default());
        let q = parse_list_query([("status", "active"), ("limit", "500")]).unwrap();
        assert_eq!((q.status, q.limit), (Some(TenantStatus::Active), 500));
        for bad in [
            vec![("limit", "0")],
            vec![("limit", "501")],
            vec![("limit", "ten")],
            vec![("status", "gone")],
            vec![("cursor", "nope")],
            vec![("sort", "name")],
            vec![("limit", "5"), ("limit", "6")],
        ] {
            let e = parse_list_query(bad.clone()).unwrap_err();
            assert_eq!(e.code, ErrorCode::ValidationError, "{bad:?}");
            assert_eq!(e.details.len(), 1, "{bad:?}");
        }
    }
}
