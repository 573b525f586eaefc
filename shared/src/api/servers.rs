//! `/api/servers`: the database servers tenants are placed on (list, get, register, update,
//! remove).

use serde_json::json;

use super::{
    body::MAX_BODY_BYTES,
    deadline::{respond, retry_once, within_deadline},
    error::ApiError,
    query::{no_query, path_server},
    response::ApiResponse,
    server_body::{parse_new_server, parse_patch},
};
use crate::{
    database::Database,
    invocation::Invocation,
    servers::{self, ServersError},
};

/// `GET /api/servers`: every server with its tenant counts, capacity and state, `primary`
/// first.
pub async fn list_servers<'a>(
    db: &Database,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    inv: &Invocation,
) -> ApiResponse {
    respond(async {
        no_query(params)?;
        let list = retry_once(
            db,
            inv,
            || servers::list_servers(db),
            |e| matches!(e, ServersError::Db(e) if e.is_transient()),
        )
        .await?;
        Ok(ApiResponse::ok(200, json!({ "servers": list })))
    })
    .await
}

/// `GET /api/servers/{name}`.
pub async fn get_server(db: &Database, name: Option<&str>, inv: &Invocation) -> ApiResponse {
    respond(async {
        let name = path_server(name)?;
        let server = retry_once(
            db,
            inv,
            || servers::get_server(db, &name),
            |e| matches!(e, ServersError::Db(e) if e.is_transient()),
        )
        .await?;
        Ok(ApiResponse::ok(200, server))
    })
    .await
}

/// `POST /api/servers`: registers a server after checking it for real. 201 and the server.
pub async fn register_server(db: &Database, body: &[u8], inv: &Invocation) -> ApiResponse {
    respond(async {
        if body.len() > MAX_BODY_BYTES {
            return Err(ApiError::payload_too_large());
        }
        let new = parse_new_server(body)?;
        let server = within_deadline(db, inv, servers::register_server(db, &new)).await?;
        Ok(ApiResponse::ok(201, server))
    })
    .await
}

/// `PATCH /api/servers/{name}`: state, capacity, budget.
pub async fn update_server(
    db: &Database,
    name: Option<&str>,
    body: &[u8],
    inv: &Invocation,
) -> ApiResponse {
    respond(async {
        if body.len() > MAX_BODY_BYTES {
            return Err(ApiError::payload_too_large());
        }
        let name = path_server(name)?;
        let patch = parse_patch(body)?;
        let server = retry_once(
            db,
            inv,
            || servers::update_server(db, &name, &patch),
            |e| matches!(e, ServersError::Db(e) if e.is_transient()),
        )
        .await?;
        Ok(ApiResponse::ok(200, server))
    })
    .await
}

/// `DELETE /api/servers/{name}`: 200 and the server as it was; 409 while it holds tenants.
pub async fn remove_server(db: &Database, name: Option<&str>, inv: &Invocation) -> ApiResponse {
    respond(async {
        let name = path_server(name)?;
        let server = within_deadline(db, inv, servers::remove_server(db, &name)).await?;
        Ok(ApiResponse::ok(200, server))
    })
    .await
}
