//! The run ledger: every migrate-all run (its options, the migrations it brings tenants to,
//! its status and counts) and each tenant's outcome in it, written as the work happens, so
//! that a run cut short or killed keeps what it did, and read through `GET /api/runs`.
//!
//! - A run's row is written when it takes the fleet lock (`running`), its tenants' rows when
//!   they are listed (`pending`), each tenant's outcome as it finishes, and the run's status
//!   and counts at the end: `completed` (nothing failed), `failed` (a tenant, the template, a
//!   reconcile or lifecycle task failed), `incomplete` (the invocation's deadline came first;
//!   the tenants not started are `not_started`).
//! - A run killed outright stays `running`; the next run, which holds the fleet lock and so
//!   knows no other run is alive, marks it `failed` ("interrupted"), and its tenants still
//!   `pending` `not_started`.
//! - Dry runs change nothing, the ledger included: they are not recorded.
//! - A ledger write that fails is logged and the run goes on (the tenants' own records in
//!   `tenants` stay the truth of where each database is).

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tracing::warn;
use uuid::Uuid;

use crate::{
    db::{Conn, Database, DbError},
    fleet::{Counts, TenantReport},
    tenants::Cursor,
};

/// The statuses of a tenant in a run.
pub const TENANT_STATUSES: [&str; 6] = [
    "pending",
    "migrated",
    "up_to_date",
    "failed",
    "skipped",
    "not_started",
];

/// Opens a run: forgets the runs older than `keep_days`, closes the runs a killed invocation
/// left `running` (the caller holds the fleet lock), then records this one.
pub(crate) async fn open(
    sys: &Conn,
    run_id: Uuid,
    options: &Value,
    fingerprint: &str,
    latest_version: i64,
    keep_days: i32,
) -> Result<(), DbError> {
    // Forgetting is best effort: a prune that fails or runs long is retried by the next run.
    if let Err(e) = sys
        .long()
        .execute(
            "DELETE FROM runs WHERE started_at < now() - make_interval(days => $1)",
            &[&keep_days],
        )
        .await
    {
        warn!(error = %e, "could not forget old runs; the next run tries again");
    }
    sys.long()
        .batch_execute(
            "UPDATE run_tenants SET status = 'not_started' \
         WHERE status = 'pending' AND run_id IN (SELECT id FROM runs WHERE status = 'running'); \
         UPDATE runs SET status = 'failed', finished_at = now(), \
           error = 'interrupted: the invocation ended before the run did' \
         WHERE status = 'running'",
        )
        .await?;
    sys.execute(
        "INSERT INTO runs (id, status, options, fingerprint, latest_version) \
         VALUES ($1, 'running', $2, $3, $4)",
        &[&run_id, options, &fingerprint, &latest_version],
    )
    .await?;
    Ok(())
}

/// Records the run's tenants, `pending`, in one statement.
pub(crate) async fn plan(
    sys: &Conn,
    run_id: Uuid,
    tenants: &[(String, Option<String>)],
) -> Result<(), DbError> {
    let slugs: Vec<&str> = tenants.iter().map(|(s, _)| s.as_str()).collect();
    let servers: Vec<Option<&str>> = tenants.iter().map(|(_, s)| s.as_deref()).collect();
    sys.long()
        .execute(
            "INSERT INTO run_tenants (run_id, slug, server, status) \
         SELECT $1, slug, server, 'pending' FROM unnest($2::text[], $3::text[]) AS t(slug, server) \
         ON CONFLICT DO NOTHING",
            &[&run_id, &slugs, &servers],
        )
        .await?;
    Ok(())
}

/// Records one tenant's outcome as soon as it is known. False (logged, not fatal) when it
/// could not be written.
pub(crate) async fn record(sys: &Conn, run_id: Uuid, t: &TenantReport) -> bool {
    record_all(sys, run_id, std::slice::from_ref(t)).await
}

/// Records the outcomes of tenants, in one statement (a tenant the run did not plan, such as
/// a named slug that is not active, gets its row here). False (logged, not fatal) when they
/// could not be written.
pub(crate) async fn record_all(sys: &Conn, run_id: Uuid, tenants: &[TenantReport]) -> bool {
    if tenants.is_empty() {
        return true;
    }
    let slugs: Vec<&str> = tenants.iter().map(|t| t.slug.as_str()).collect();
    let servers: Vec<Option<&str>> = tenants.iter().map(|t| t.server.as_deref()).collect();
    let statuses: Vec<&str> = tenants.iter().map(|t| t.status.as_str()).collect();
    let from: Vec<Option<i64>> = tenants.iter().map(|t| t.from_version).collect();
    let to: Vec<Option<i64>> = tenants.iter().map(|t| t.to_version).collect();
    let errors: Vec<Option<&str>> = tenants.iter().map(|t| t.error.as_deref()).collect();
    let durations: Vec<i64> = tenants
        .iter()
        .map(|t| i64::try_from(t.duration_ms).unwrap_or(i64::MAX))
        .collect();
    if let Err(e) = sys
        .long()
        .execute(
            "INSERT INTO run_tenants (run_id, slug, server, status, from_version, to_version, \
               error, duration_ms, finished_at) \
             SELECT $1, t.* , now() FROM unnest($2::text[], $3::text[], $4::text[], \
               $5::bigint[], $6::bigint[], $7::text[], $8::bigint[]) AS t \
             ON CONFLICT (run_id, slug) DO UPDATE SET server = excluded.server, \
               status = excluded.status, from_version = excluded.from_version, \
               to_version = excluded.to_version, error = excluded.error, \
               duration_ms = excluded.duration_ms, finished_at = excluded.finished_at",
            &[
                &run_id, &slugs, &servers, &statuses, &from, &to, &errors, &durations,
            ],
        )
        .await
    {
        warn!(%run_id, tenants = tenants.len(), error = %e, "could not record outcomes in the run ledger");
        return false;
    }
    true
}

/// Closes the run with its status and counts.
pub(crate) async fn close(
    sys: &Conn,
    run_id: Uuid,
    status: &str,
    counts: &Counts,
    error: Option<&str>,
) {
    let counts = serde_json::to_value(counts).unwrap_or(Value::Null);
    if let Err(e) = sys
        .execute(
            "UPDATE runs SET status = $2, counts = $3, error = $4, finished_at = now() \
             WHERE id = $1",
            &[&run_id, &status, &counts, &error],
        )
        .await
    {
        warn!(%run_id, error = %e, "could not close the run in the run ledger");
    }
}

// ---------------------------------------------------------------------------------------------
// Reading it
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: Uuid,
    pub status: String,
    pub options: Value,
    pub fingerprint: String,
    pub latest_version: i64,
    /// Per status; while `running`, counted from its tenants' rows.
    pub counts: Value,
    pub error: Option<String>,
    #[serde(serialize_with = "crate::domain::rfc3339")]
    pub started_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::rfc3339_opt")]
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunTenant {
    pub slug: String,
    pub server: Option<String>,
    pub status: String,
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

/// A position in a run's tenants (by slug): base64url of `t1:{slug}`.
pub fn encode_slug_cursor(slug: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("t1:{slug}"))
}

pub fn decode_slug_cursor(raw: &str) -> Option<String> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
    let slug = text.strip_prefix("t1:")?;
    crate::domain::Slug::parse(slug).ok().map(|s| s.to_string())
}

const RUN_COLUMNS: &str = "r.id, r.status, r.options, r.fingerprint, r.latest_version, \
    CASE WHEN r.status = 'running' THEN \
      (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM \
         (SELECT status, count(*) AS n FROM run_tenants WHERE run_id = r.id GROUP BY status) c) \
    ELSE r.counts END AS counts, \
    r.error, r.started_at, r.finished_at";

fn run_from_row(row: &tokio_postgres::Row) -> Result<Run, tokio_postgres::Error> {
    Ok(Run {
        id: row.try_get("id")?,
        status: row.try_get("status")?,
        options: row.try_get("options")?,
        fingerprint: row.try_get("fingerprint")?,
        latest_version: row.try_get("latest_version")?,
        counts: row.try_get("counts")?,
        error: row.try_get("error")?,
        started_at: row.try_get("started_at")?,
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
                    "SELECT {RUN_COLUMNS} FROM runs r ORDER BY r.started_at DESC, r.id DESC LIMIT $1"
                ),
                &[&fetch],
            )
            .await?
        }
        Some(c) => {
            sys.query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs r WHERE (r.started_at, r.id) < ($1, $2) \
                     ORDER BY r.started_at DESC, r.id DESC LIMIT $3"
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
            &format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = $1"),
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
            "SELECT slug, server, status, from_version, to_version, error, duration_ms, \
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
        tenants.last().map(|t| encode_slug_cursor(&t.slug))
    } else {
        None
    };
    Ok(Some(RunDetail {
        run,
        tenants,
        next_cursor,
    }))
}
