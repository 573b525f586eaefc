//! What a run does on one tenant's own database: one read of its OID (the proof that it is the
//! database the registry made) and its history, then refinery when something is pending, and
//! what each failure means for the tenant (failed, or deferred: busy, out of time,
//! unreachable).

use std::time::Instant;

use tokio_postgres::{error::SqlState, SimpleQueryMessage};

use super::{
    outcome::{Deferral, Steps, TenantOutcome, TenantReport},
    plan::Attempt,
    sanitize::{sanitize_db, sanitize_refinery},
};
use crate::{
    migrate::{self, history::history_rows, HistoryCheck, HistoryRow, RunFailure, HISTORY_TABLE},
    pg::{Conn, DbError},
};

/// The database's OID and its history, in one round trip.
async fn read_tenant(conn: &Conn) -> Result<(Option<i64>, Vec<HistoryRow>), DbError> {
    const OID: &str = "SELECT oid::bigint FROM pg_database WHERE datname = current_database()";
    let oid_of = |messages: &[SimpleQueryMessage]| {
        messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse::<i64>().ok()),
            _ => None,
        })
    };
    let both = format!(
        "{OID}; SELECT version::bigint, name::text, checksum::text FROM {HISTORY_TABLE} \
         ORDER BY version"
    );
    match conn.simple_query(&both).await {
        Ok(messages) => {
            // The first statement's answer ends at its CommandComplete.
            let split = messages
                .iter()
                .position(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)))
                .map_or(messages.len(), |i| i + 1);
            let (first, rest) = messages.split_at(split);
            Ok((oid_of(first), history_rows(rest)))
        }
        // No history table: nothing applied.
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
            Ok((oid_of(&conn.simple_query(OID).await?), Vec::new()))
        }
        Err(e) => Err(e),
    }
}

/// Why a tenant's work did not end well: the sanitised reason, and whether it is to be
/// deferred (busy, out of time, unreachable: nothing is wrong with its migrations) rather than
/// failed.
pub(super) struct Failure {
    pub(super) message: String,
    pub(super) deferral: Option<Deferral>,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            message,
            deferral: None,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::from(message.to_owned())
    }
}

impl Failure {
    /// What an error of the database means for the tenant: unreachable, busy and out of time
    /// are deferrals; anything else a failure.
    pub(super) fn of(e: &DbError) -> Failure {
        let deferral = if e.is_unavailable() {
            Some(Deferral::Unreachable)
        } else if e.is_lock_timeout() {
            Some(Deferral::Busy)
        } else if e.is_timed_out() {
            Some(Deferral::OutOfTime)
        } else {
            None
        };
        Failure {
            message: sanitize_db(e),
            deferral,
        }
    }
}

/// The body of one tenant's migration. `Ok(true)` when the database ends at the released
/// migrations, `Ok(false)` when it does not (a dry run with pending migrations, or a database
/// a newer release migrated); `Err` is why it did not end well. The tenant's connection is
/// closed on the server before this returns (see `take_slot`).
pub(super) async fn migrate(
    at: &Attempt<'_>,
    until: Instant,
    report: &mut TenantReport,
) -> Result<bool, Failure> {
    let server = &at.server.handle;
    let tenant = at.tenant;
    let step = Instant::now();
    let connected = server.connect(&tenant.database_name).await;
    report.steps.connect = Steps::since(step);
    let mut conn = match connected {
        Ok(c) => c,
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
            return Err("tenant database does not exist".into())
        }
        Err(e) => return Err(Failure::of(&e)),
    };
    let step = Instant::now();
    let outcome = migrate_on(at, &mut conn, until, report).await;
    report.steps.migrate = Steps::since(step);
    let step = Instant::now();
    conn.close().await;
    report.steps.close = Steps::since(step);
    outcome
}

async fn migrate_on(
    at: &Attempt<'_>,
    conn: &mut Conn,
    until: Instant,
    report: &mut TenantReport,
) -> Result<bool, Failure> {
    let Attempt {
        db,
        tenant,
        plan,
        expected,
        ..
    } = *at;
    let dry_run = plan.dry_run;
    // One cheap read decides whether this is our database and whether refinery is needed.
    let (oid, history) = read_tenant(conn).await.map_err(|e| Failure::of(&e))?;
    if oid.is_none() || oid != tenant.database_oid {
        return Err(
            "the database of this name is not the one this registry made (its OID differs \
             from the registry's record); left untouched"
                .into(),
        );
    }
    report.verified = true;
    let from = history.iter().map(|h| h.version).max().unwrap_or(0);
    report.from_version = Some(from);
    report.to_version = Some(from);
    match expected.check(&history) {
        HistoryCheck::Diverged(reason) => return Err(reason.into()),
        // Newer migrations than this release's, which the registry knows of: a newer release's
        // run migrated it (a deploy in progress), not ours to judge. Unknown to the registry,
        // they were put there behind its back: reported as any other divergence.
        HistoryCheck::Ahead(newer)
            if newer.iter().max().copied().unwrap_or(i64::MAX) > tenant.schema_version =>
        {
            let shown: Vec<String> = newer.iter().map(|v| format!("V{v}")).collect();
            return Err(format!(
                "applied migration {} is not among the released migrations, and the registry \
                 knows of no release that made it (it records version {})",
                shown.join(", "),
                tenant.schema_version
            )
            .into());
        }
        HistoryCheck::Ahead(newer) => {
            report.status = TenantOutcome::Skipped;
            report.error = Some(format!(
                "migrated by a newer release (its migrations {newer:?} are not in this one); \
                 left as it is"
            ));
            return Ok(false);
        }
        HistoryCheck::Current => {
            report.status = TenantOutcome::UpToDate;
            return Ok(true);
        }
        HistoryCheck::Pending(pending) if dry_run => {
            report.status = TenantOutcome::Pending;
            report.pending = pending;
            return Ok(false);
        }
        HistoryCheck::Pending(_) => {}
    }
    let (applied, outcome) = migrate::run(
        conn,
        migrate::tenant_runner,
        &db.config().migrate_session,
        until,
    )
    .await
    .map_err(|e| Failure::of(&e))?;
    // Each migration commits on its own: the database is at the last one applied.
    report.applied = applied;
    let now_at = report.applied.iter().copied().fold(from, i64::max);
    report.to_version = Some(now_at);
    match outcome {
        Ok(()) => {
            report.status = if report.applied.is_empty() {
                TenantOutcome::UpToDate
            } else {
                TenantOutcome::Migrated
            };
            // refinery refuses divergent and missing versions: applied in full, the history
            // is the released one.
            Ok(now_at == expected.latest())
        }
        // A connection lost on the way (a failover) is no failed migration: deferred; nor is
        // a statement that ran past MIGRATE_STATEMENT_TIMEOUT_SECS (or was cancelled): out of
        // time.
        Err(RunFailure::Refinery(e)) => match migrate::failure::refinery_failure(&e, "") {
            lost if lost.is_unavailable() => Err(Failure::of(&lost)),
            _ if crate::migrate::failure::pg_error(&e).and_then(tokio_postgres::Error::code)
                == Some(&SqlState::QUERY_CANCELED) =>
            {
                Err(Failure {
                    message: format!(
                        "{} (the statement ran out of time: MIGRATE_STATEMENT_TIMEOUT_SECS); \
                         the next run goes on from there",
                        sanitize_refinery(&e)
                    ),
                    deferral: Some(Deferral::OutOfTime),
                })
            }
            _ => Err(sanitize_refinery(&e).into()),
        },
        Err(e) => Err(Failure::of(&migrate::run_failure(
            &e,
            "tenant migrations failed",
        ))),
    }
}
