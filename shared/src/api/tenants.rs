//! `/api/tenants`: create (and the parsing of its body), list, get, and the lifecycle
//! operations (delete, restore, purge).

use serde_json::Value;

use super::{
    body::{self, json_type, MAX_BODY_BYTES},
    deadline::{respond, retry_once, within_deadline},
    error::ApiError,
    query::{parse_list_query, path_slug},
    response::ApiResponse,
};
use crate::{
    database::Database,
    domain::{FieldError, NewTenant, ServerName, Slug, Tenant, TenantName},
    invocation::Invocation,
    tenant::{
        lifecycle::{self, LifecycleError},
        provision::{self, CreateTenantError, IdempotencyKey},
        registry::{self, GetTenantError},
    },
};

/// `POST /api/tenants`, with the optional `Idempotency-Key` header. Answers 201 for a new
/// tenant and for the replay of an earlier request with the same key and body from the same
/// caller.
pub async fn create(
    db: &Database,
    body: &[u8],
    idempotency_key: Option<&[u8]>,
    inv: &Invocation,
) -> ApiResponse {
    respond(async {
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
    })
    .await
}

/// `GET /api/tenants`.
pub async fn list<'a>(
    db: &Database,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    inv: &Invocation,
) -> ApiResponse {
    respond(async {
        let q = parse_list_query(params)?;
        let page = retry_once(
            db,
            inv,
            || registry::list_tenants(db, &q),
            |e| e.is_unavailable() || e.is_timed_out(),
        )
        .await?;
        Ok(ApiResponse::ok(200, page))
    })
    .await
}

/// `GET /api/tenants/{slug}`.
pub async fn get(db: &Database, slug: Option<&str>, inv: &Invocation) -> ApiResponse {
    respond(async {
        let slug = path_slug(slug).map_err(GetTenantError::NotFound)?;
        let tenant = retry_once(
            db,
            inv,
            || registry::get_tenant(db, &slug),
            |e| matches!(e, GetTenantError::Db(e) if e.is_unavailable() || e.is_timed_out()),
        )
        .await?;
        Ok(ApiResponse::ok(200, tenant))
    })
    .await
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
    respond(async {
        let slug = path_slug(slug).map_err(LifecycleError::NotFound)?;
        let tenant = retry_once(
            db,
            inv,
            || op(db, &slug),
            |e| matches!(e, LifecycleError::Db(e) if e.is_unavailable() || e.is_timed_out()),
        )
        .await?;
        Ok(ApiResponse::ok(200, tenant))
    })
    .await
}

// ---- the create body ----------------------------------------------------------------------

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
}
