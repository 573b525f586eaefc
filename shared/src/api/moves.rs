//! `/api/moves` and `POST /api/tenants/{slug}/move`: start a tenant's move, read moves,
//! cancel one before its switch. See `tenant::moves`.

use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    body::json_object,
    deadline::{respond, retry_once},
    error::{ApiError, ErrorCode},
    query::{parse_page_query, path_slug},
    response::ApiResponse,
};
use crate::{
    database::Database,
    domain::{FieldError, ServerName},
    invocation::Invocation,
    tenant::moves::{self, MoveError, MoveMode, MoveRequest},
};

/// `POST /api/tenants/{slug}/move` `{"to": "<server>", "mode": "copy"}`: 202 and the move.
pub async fn start_move(
    db: &Database,
    slug: Option<&str>,
    body: &[u8],
    _inv: &Invocation,
) -> ApiResponse {
    respond(async {
        let slug = path_slug(slug).map_err(MoveError::TenantNotFound)?;
        let req = parse_move_body(body)?;
        let mv = moves::start_move(db, &slug, &req).await?;
        Ok(ApiResponse::ok(202, mv))
    })
    .await
}

/// `GET /api/moves` (`limit` 1–500, default 100): the newest moves first.
pub async fn list_moves<'a>(
    db: &Database,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    inv: &Invocation,
) -> ApiResponse {
    respond(async {
        let q = parse_page_query(params, false, |_| None)?;
        let list = retry_once(
            db,
            inv,
            || moves::list_moves(db, q.limit),
            |e| matches!(e, MoveError::Db(e) if e.is_unavailable()),
        )
        .await?;
        Ok(ApiResponse::ok(200, json!({ "moves": list })))
    })
    .await
}

/// `GET /api/moves/{id}`.
pub async fn get_move(db: &Database, id: &str, inv: &Invocation) -> ApiResponse {
    respond(async {
        let id = move_id(id)?;
        let mv = retry_once(
            db,
            inv,
            || moves::get_move(db, id),
            |e| matches!(e, MoveError::Db(e) if e.is_unavailable()),
        )
        .await?;
        Ok(ApiResponse::ok(200, mv))
    })
    .await
}

/// `POST /api/moves/{id}/cancel`: 202; the move's next step undoes it.
pub async fn cancel_move(db: &Database, id: &str, _inv: &Invocation) -> ApiResponse {
    respond(async {
        let id = move_id(id)?;
        let mv = moves::cancel_move(db, id).await?;
        Ok(ApiResponse::ok(202, mv))
    })
    .await
}

/// `POST /api/servers/{name}/drain`: 202; the server is draining and its tenants' moves are
/// started (see `tenant::moves::drain`).
pub async fn drain_server(db: &Database, name: Option<&str>, inv: &Invocation) -> ApiResponse {
    respond(async {
        let name = name
            .and_then(|n| ServerName::parse(n).ok())
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "Server not found"))?;
        let drain = moves::drain_server(db, &name, inv.deadline).await?;
        Ok(ApiResponse::ok(202, drain))
    })
    .await
}

/// An id that cannot be a move's cannot exist: 404, no SQL.
fn move_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::from(MoveError::NotFound))
}

/// Reads a move body: `to` (a server's name) and an optional `mode`; nothing else.
pub(crate) fn parse_move_body(body: &[u8]) -> Result<MoveRequest, ApiError> {
    let mut map = json_object(body, "a JSON object with \"to\"")
        .map_err(|e| ApiError::validation(e.message, vec![e.detail]))?;
    let mut details = Vec::new();
    let to = match map.remove("to") {
        Some(Value::String(s)) => match ServerName::parse(&s) {
            Ok(name) => Some(name),
            Err(why) => {
                details.push(FieldError::new("to", why));
                None
            }
        },
        None | Some(Value::Null) => {
            details.push(FieldError::new("to", "is required"));
            None
        }
        Some(_) => {
            details.push(FieldError::new("to", "must be a string"));
            None
        }
    };
    let mode = match map.remove("mode") {
        None | Some(Value::Null) => Some(MoveMode::Copy),
        Some(Value::String(s)) if s == "copy" => Some(MoveMode::Copy),
        Some(Value::String(s)) if s == "online" => Some(MoveMode::Online),
        Some(_) => {
            details.push(FieldError::new("mode", "must be \"copy\" or \"online\""));
            None
        }
    };
    for key in map.keys() {
        details.push(FieldError::new(
            key.chars().take(64).collect::<String>(),
            "unknown field",
        ));
    }
    match (to, mode) {
        (Some(to), Some(mode)) if details.is_empty() => Ok(MoveRequest { to, mode }),
        _ => Err(ApiError::validation("Invalid move request", details)),
    }
}

impl From<MoveError> for ApiError {
    fn from(e: MoveError) -> Self {
        match e {
            MoveError::TenantNotFound(Some(slug)) => {
                ApiError::new(ErrorCode::NotFound, format!("Tenant '{slug}' not found"))
            }
            MoveError::TenantNotFound(None) => {
                ApiError::new(ErrorCode::NotFound, "Tenant not found")
            }
            MoveError::NotFound => ApiError::new(ErrorCode::NotFound, "Move not found"),
            MoveError::ServerNotFound(name) => {
                ApiError::new(ErrorCode::NotFound, format!("Server '{name}' not found"))
            }
            MoveError::Conflict(message) => ApiError::new(ErrorCode::Conflict, message),
            MoveError::BadTarget(message) => ApiError::validation(message, Vec::new()),
            MoveError::Unavailable(message) => {
                ApiError::new(ErrorCode::ServiceUnavailable, message)
            }
            MoveError::Db(e) => ApiError::failed(
                e,
                "The move could not be started; nothing was changed, it is safe to retry",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_body_names_its_target_and_nothing_unknown() {
        let ok = parse_move_body(br#"{"to": "secondary"}"#).unwrap();
        assert_eq!(ok.to.as_str(), "secondary");
        assert_eq!(ok.mode, MoveMode::Copy);
        let online = parse_move_body(br#"{"to": "b", "mode": "online"}"#).unwrap();
        assert_eq!(online.mode, MoveMode::Online);
        for (body, field) in [
            (&br#"{}"#[..], "to"),
            (br#"{"to": 3}"#, "to"),
            (br#"{"to": "Bad Name"}"#, "to"),
            (br#"{"to": "b", "mode": "fast"}"#, "mode"),
            (br#"{"to": "b", "extra": 1}"#, "extra"),
        ] {
            let e = parse_move_body(body).unwrap_err();
            assert_eq!(e.code, ErrorCode::ValidationError);
            assert!(e.details.iter().any(|d| d.field == field), "{e:?}");
        }
        assert!(parse_move_body(b"[1]").is_err());
        assert!(parse_move_body(b"").is_err());
    }
}
