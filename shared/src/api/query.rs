//! Query strings and paths: which parameters a list takes (`status`, `limit`, `cursor`, each
//! once, nothing else), the pages of the run ledger, and the slug or server name in a path,
//! which is refused as a 404 before any SQL when it cannot be valid.

use super::error::ApiError;
use crate::{
    domain::{FieldError, ServerName, Slug, TenantStatus},
    fleet::ledger,
    page::{Cursor, DEFAULT_LIMIT, MAX_LIMIT},
    servers::ServersError,
    tenant::registry::ListQuery,
};

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

/// A page size: 1 to [`MAX_LIMIT`].
fn parse_limit(value: &str, details: &mut Vec<FieldError>) -> Option<i64> {
    match value.parse::<i64>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Some(n),
        _ => {
            details.push(FieldError::new(
                "limit",
                format!("must be a whole number from 1 to {MAX_LIMIT}"),
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

/// Where a page starts.
pub(super) enum Page {
    Runs(Cursor),
    Tenants(String),
}

pub(super) struct PageQuery {
    pub(super) status: Option<String>,
    pub(super) limit: i64,
    pub(super) cursor: Option<Page>,
}

/// `limit`, `cursor` and, where `with_status`, a run tenant's `status`; nothing else.
pub(super) fn parse_page_query<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    with_status: bool,
    decode: impl Fn(&str) -> Option<Page>,
) -> Result<PageQuery, ApiError> {
    let mut q = PageQuery {
        status: None,
        limit: DEFAULT_LIMIT,
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

pub(super) fn no_query<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), ApiError> {
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

// ---- the path ----------------------------------------------------------------------------

/// A slug taken from the path. One that cannot be valid cannot exist: 404, no SQL.
pub(super) fn path_slug(raw: Option<&str>) -> Result<Slug, Option<Slug>> {
    raw.and_then(|s| Slug::parse(s).ok()).ok_or(None)
}

/// A server name taken from the path. One that cannot be valid cannot exist: 404, no SQL.
pub(super) fn path_server(raw: Option<&str>) -> Result<ServerName, ServersError> {
    raw.and_then(|s| ServerName::parse(s).ok())
        .ok_or(ServersError::NotFound(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::api::error::ErrorCode;

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
