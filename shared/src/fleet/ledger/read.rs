//! Reading the ledger, for `GET /api/runs` and `GET /api/runs/{id}`: runs newest first, one
//! run with a page of its tenants.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::state::COUNTS_SQL;
use crate::{
    database::Database,
    page::{self, Cursor},
    pg::DbError,
};

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: Uuid,
    pub status: String,
    /// `inline` (in the migrate-all invocation) or `queue` (fanned out over SQS).
    pub mode: String,
    /// The last wave released: 0 while the canary wave runs, then 1.
    pub wave: i64,
    /// The canary wave's size (tenants really attempted: a deferred one is replaced).
    pub canary: i64,
    /// The brake: the run halts once more tenants than this have failed (`null`: never).
    pub max_failures: Option<i64>,
    pub options: Value,
    pub fingerprint: String,
    pub latest_version: i64,
    /// Per status; while `running`, counted from its tenants' rows.
    pub counts: Value,
    pub error: Option<String>,
    #[serde(serialize_with = "crate::domain::rfc3339")]
    pub started_at: DateTime<Utc>,
    /// The last progress.
    #[serde(serialize_with = "crate::domain::rfc3339")]
    pub updated_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::rfc3339_opt")]
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunTenant {
    pub slug: String,
    pub server: Option<String>,
    pub status: String,
    /// 0: the canary wave; 1: the rest; `null`: decided when the run was planned.
    pub wave: Option<i64>,
    pub from_version: Option<i64>,
    pub to_version: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: Option<i64>,
    #[serde(serialize_with = "crate::domain::rfc3339_opt")]
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunPage {
    pub runs: Vec<Run>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: Run,
    pub tenants: Vec<RunTenant>,
    pub next_cursor: Option<String>,
}

fn run_columns() -> String {
    format!(
        "r.id, r.status, r.mode, r.wave, r.canary, r.max_failures, r.options, r.fingerprint, \
         r.latest_version, CASE WHEN r.status = 'running' THEN {COUNTS_SQL} ELSE r.counts END \
         AS counts, r.error, r.started_at, r.updated_at, r.finished_at"
    )
}

fn run_from_row(row: &tokio_postgres::Row) -> Result<Run, tokio_postgres::Error> {
    Ok(Run {
        id: row.try_get("id")?,
        status: row.try_get("status")?,
        mode: row.try_get("mode")?,
        wave: row.try_get("wave")?,
        canary: row.try_get("canary")?,
        max_failures: row.try_get("max_failures")?,
        options: row.try_get("options")?,
        fingerprint: row.try_get("fingerprint")?,
        latest_version: row.try_get("latest_version")?,
        counts: row.try_get("counts")?,
        error: row.try_get("error")?,
        started_at: row.try_get("started_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// The runs, newest first.
pub async fn list_runs(
    db: &Database,
    limit: i64,
    cursor: Option<&Cursor>,
) -> Result<RunPage, DbError> {
    let sys = db.system().await?;
    let fetch = limit + 1;
    let rows = match cursor {
        None => {
            sys.query(
                &format!(
                    "SELECT {} FROM runs r ORDER BY r.started_at DESC, r.id DESC LIMIT $1",
                    run_columns()
                ),
                &[&fetch],
            )
            .await?
        }
        Some(c) => {
            sys.query(
                &format!(
                    "SELECT {} FROM runs r WHERE (r.started_at, r.id) < ($1, $2) \
                     ORDER BY r.started_at DESC, r.id DESC LIMIT $3",
                    run_columns()
                ),
                &[&c.created_at, &c.id, &fetch],
            )
            .await?
        }
    };
    let mut runs = rows
        .iter()
        .map(run_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if runs.len() as i64 > limit {
        runs.truncate(limit as usize);
        runs.last().map(|r| {
            Cursor {
                created_at: r.started_at,
                id: r.id,
            }
            .encode()
        })
    } else {
        None
    };
    Ok(RunPage { runs, next_cursor })
}

/// One run and a page of its tenants (by slug), optionally of one status. `None`: no such run.
pub async fn get_run(
    db: &Database,
    id: Uuid,
    status: Option<&str>,
    limit: i64,
    after: Option<&str>,
) -> Result<Option<RunDetail>, DbError> {
    let sys = db.system().await?;
    let Some(row) = sys
        .query_opt(
            &format!("SELECT {} FROM runs r WHERE r.id = $1", run_columns()),
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let run = run_from_row(&row)?;
    let fetch = limit + 1;
    let rows = sys
        .query(
            "SELECT slug, server, status, wave, from_version, to_version, error, duration_ms, \
                    finished_at \
             FROM run_tenants WHERE run_id = $1 AND ($2::text IS NULL OR status = $2) \
               AND ($3::text IS NULL OR slug > $3) \
             ORDER BY slug LIMIT $4",
            &[&id, &status, &after, &fetch],
        )
        .await?;
    let mut tenants = rows
        .iter()
        .map(|r| {
            Ok(RunTenant {
                slug: r.try_get("slug")?,
                server: r.try_get("server")?,
                status: r.try_get("status")?,
                wave: r.try_get("wave")?,
                from_version: r.try_get("from_version")?,
                to_version: r.try_get("to_version")?,
                error: r.try_get("error")?,
                duration_ms: r.try_get("duration_ms")?,
                finished_at: r.try_get("finished_at")?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    let next_cursor = if tenants.len() as i64 > limit {
        tenants.truncate(limit as usize);
        tenants.last().map(|t| page::encode_slug(&t.slug))
    } else {
        None
    };
    Ok(Some(RunDetail {
        run,
        tenants,
        next_cursor,
    }))
}
