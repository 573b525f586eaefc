//! `/api/runs`: the ledger of fleet runs, and one run with a page of its tenants.

use uuid::Uuid;

use super::{
    deadline::{respond, retry_once},
    error::{ApiError, ErrorCode},
    query::{parse_page_query, Page},
    response::ApiResponse,
};
use crate::{
    database::Database,
    fleet::ledger,
    invocation::Invocation,
    page::{self, Cursor},
    pg::DbError,
};

/// `GET /api/runs`: the run ledger, newest first (`limit` 1–500, default 100; `cursor`).
pub async fn list_runs<'a>(
    db: &Database,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    inv: &Invocation,
) -> ApiResponse {
    respond(async {
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
    })
    .await
}

/// `GET /api/runs/{id}`: one run and a page of its tenants (`status`, `limit`, `cursor`).
pub async fn get_run<'a>(
    db: &Database,
    id: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    inv: &Invocation,
) -> ApiResponse {
    respond(async {
        // An id that cannot be a run's cannot exist: 404, no SQL.
        let not_found = || ApiError::new(ErrorCode::NotFound, "Run not found");
        let id = Uuid::parse_str(id).map_err(|_| not_found())?;
        let q = parse_page_query(params, true, |raw| {
            page::decode_slug(raw).map(Page::Tenants)
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
    })
    .await
}
