//! A run's tenants: written when the run plans them (`pending`, with their wave and server),
//! each outcome as it finishes, and a run that could not be queued given up.

use tracing::warn;
use uuid::Uuid;

use super::state::COUNTS_SQL;
use crate::{
    fleet::outcome::TenantReport,
    pg::{Conn, DbError},
};

/// A tenant as a run plans it: its server, and its wave (`None`: decided at planning).
pub(crate) struct Planned<'a> {
    pub slug: &'a str,
    pub server: Option<&'a str>,
    pub wave: Option<i64>,
}

/// Records the run's tenants, `pending`, in one statement (a tenant reopened by `retry_run`
/// keeps its row, in its new wave), the run's brake and its canary wave's size.
///
/// A new run (`attempt` 0) has no rows yet, and its rows are plainly inserted: half the time
/// of the upsert a retry needs (`make bench`'s planning of 100,000 tenants spends most of its
/// time beyond the messages here).
pub(crate) async fn plan(
    sys: &Conn,
    run_id: Uuid,
    attempt: i64,
    tenants: &[Planned<'_>],
    max_failures: Option<i64>,
    canary: i64,
) -> Result<(), DbError> {
    sys.execute(
        "UPDATE runs SET max_failures = $2, canary = $3, updated_at = now() WHERE id = $1",
        &[&run_id, &max_failures, &canary],
    )
    .await?;
    let slugs: Vec<&str> = tenants.iter().map(|t| t.slug).collect();
    let servers: Vec<Option<&str>> = tenants.iter().map(|t| t.server).collect();
    let waves: Vec<Option<i64>> = tenants.iter().map(|t| t.wave).collect();
    let insert = "INSERT INTO run_tenants (run_id, slug, server, status, wave) \
        SELECT $1, slug, server, 'pending', wave \
        FROM unnest($2::text[], $3::text[], $4::bigint[]) AS t(slug, server, wave)";
    let sql = if attempt == 0 {
        insert.to_owned()
    } else {
        format!(
            "{insert} ON CONFLICT (run_id, slug) DO UPDATE SET server = excluded.server, \
             wave = excluded.wave WHERE run_tenants.status = 'pending'"
        )
    };
    sys.long()
        .execute(&sql, &[&run_id, &slugs, &servers, &waves])
        .await?;
    Ok(())
}

/// Closes a run that could not be handed to the queue: `failed`, with `why`, and its tenants
/// still pending `not_started` (a message that did go out finds the run closed and does
/// nothing). Best effort: a run left `running` stalls, and the next run closes it.
pub(crate) async fn abandon(sys: &Conn, run_id: Uuid, why: &str) {
    // One transaction: the run's end and its counts commit together (its
    // `migrationRunFinished` event reads both at the commit).
    let closed = async {
        let tx = sys.begin().await?;
        tx.long()
            .execute(
                "WITH r AS (UPDATE runs SET status = 'failed', error = $2, finished_at = now(), \
                   updated_at = now() WHERE id = $1 AND status = 'running' RETURNING id) \
                 UPDATE run_tenants SET status = 'not_started' \
                 WHERE run_id IN (SELECT id FROM r) AND status = 'pending'",
                &[&run_id, &why],
            )
            .await?;
        tx.execute(
            &format!("UPDATE runs r SET counts = {COUNTS_SQL} WHERE r.id = $1"),
            &[&run_id],
        )
        .await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = closed {
        warn!(%run_id, error = %e, "could not close the run in the run ledger");
    }
}

/// Hands the run to the queue: from here its workers record its tenants and close it. Its
/// first wave released is `wave` (0: the canary only).
pub(crate) async fn queue(sys: &Conn, run_id: Uuid, wave: i64) -> Result<(), DbError> {
    sys.execute(
        "UPDATE runs SET mode = 'queue', wave = $2, updated_at = now() WHERE id = $1",
        &[&run_id, &wave],
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
