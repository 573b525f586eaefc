//! An online move's replication: a publication of the tenant's tables on the source, a
//! subscription in the target database that copies them and then applies every write the
//! application goes on making, and, once the tenant is fenced, the wait until the target has
//! applied the source's last write. The subscription, its slot and the publication are named
//! after the move (`dbtools_move_<id>`), so that each step and the undo find them again and
//! touch no other.
//!
//! What the servers must allow is in `replication` (its `unable`): a move they cannot make
//! online answers 400, and `copy` works everywhere. Locally: `secondary` → `primary`.
//!
//! The subscription's connection string holds the source admin's password: it is sent with
//! the statement logging of that session turned off, kept in `pg_subscription` (which only
//! superusers read) and gone with the subscription at the cut-over.

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use tokio_postgres::error::SqlState;
use tracing::{info, warn};

use super::{
    context::{fail, Ctx, StepError},
    copy,
    replication::{
        drop_slot, end_senders, lag, name, subscription_exists, unpublish, without_identity,
    },
};
use crate::{config::SslMode, domain::quote_ident, pg::DbError, tenant::access::login};

/// How long one delivery waits for the initial copy before it sends its message again.
const SYNC_WAIT: Duration = Duration::from_secs(60);
/// How far behind the source the subscription may be for the fence to begin.
const SYNC_LAG_BYTES: i64 = 8 << 20;
/// How long one delivery waits for the target to apply the fenced source's last write.
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);
/// Errors of the subscription's workers (each retried by PostgreSQL) that fail the move.
const MAX_ERRORS: i64 = 5;

/// The publication of the tenant's tables and the subscription in the target database, the
/// target's tables emptied first (the initial copy brings every row, the migration history
/// too). A step that died halfway is redone: what it made is found by its name.
pub(crate) async fn replicate(ctx: &Ctx<'_>) -> Result<(), StepError> {
    let (name, db) = (name(ctx.mv), &ctx.mv.database_name);
    let source = ctx.source.connect(db).await?;
    let target = ctx.target.connect(db).await?;
    if subscription_exists(&target, &name).await? {
        return Ok(());
    }
    let lacking = without_identity(&source).await?;
    if !lacking.is_empty() {
        return fail(format!(
            "an online move needs a primary key on every table; {} has none: use \"copy\"",
            lacking.join(", ")
        ));
    }
    // An earlier run of this step may have emptied the target's history already: then the
    // tables' columns, compared next, are the check.
    let on_target = copy::schema_version(&target).await?;
    if on_target != 0 && copy::schema_version(&source).await? != on_target {
        return fail("the tenant's schema changed during the move; start the move again");
    }
    let tables = copy::tables(&target).await?;
    if copy::tables(&source).await? != tables {
        return fail("the tenant's tables differ from its migrations' on the target");
    }
    let list = tables
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let ident = quote_ident(&name);
    let published = source
        .query_opt(
            "SELECT pg_get_userbyid(pubowner) = current_user AS ours FROM pg_publication \
             WHERE pubname = $1",
            &[&name],
        )
        .await?;
    match published {
        Some(row) if row.try_get::<_, bool>("ours").map_err(DbError::from)? => {}
        Some(_) => {
            return fail("a publication of the move's name exists that the move did not make")
        }
        None => {
            source
                .long()
                .batch_execute(&format!("CREATE PUBLICATION {ident} FOR TABLE {list}"))
                .await?
        }
    }
    target
        .long()
        .batch_execute(&format!("TRUNCATE {list}"))
        .await?;
    // A slot a subscription made before it died uncommitted would stand in the way.
    drop_slot(&source, &name).await?;
    let tls = ctx.db.config().ssl_mode == SslMode::Require;
    let conninfo = ctx.source.conninfo(db, tls).await?;
    // The statement holds the source admin's password: kept out of every log and view of
    // the target (statement, error and duration logging, pg_stat_activity and
    // pg_stat_statements), or not sent at all.
    if let Err(e) = target.batch_execute(QUIET).await {
        warn!(move_id = %ctx.mv.id, error = %e, "could not turn the target's statement logging off");
        return fail(
            "the target's admin may not turn statement logging off, which the subscription's \
             password needs; use \"copy\"",
        );
    }
    copy::time_left(&target, ctx.until).await?;
    let literal = format!("'{}'", conninfo.expose_secret().replace('\'', "''"));
    target
        .long()
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION {ident} CONNECTION {literal} PUBLICATION {ident} \
             WITH (slot_name = {ident}, synchronous_commit = 'on')"
        ))
        .await
        .map_err(cut_is_retry)?;
    info!(move_id = %ctx.mv.id, tables = tables.len(), "the target subscribes to the tenant's tables");
    source.close().await;
    target.close().await;
    Ok(())
}

/// The session settings under which the subscription's statement is sent.
const QUIET: &str = "SET standard_conforming_strings = on; SET log_statement = 'none'; \
     SET log_min_error_statement = panic; SET log_min_duration_statement = -1; \
     SET track_activities = off; SET pg_stat_statements.track_utility = off";

/// A statement cut at the delivery's end (or by another's lock) is tried again later.
fn cut_is_retry(e: DbError) -> StepError {
    if e.code() == Some(&SqlState::QUERY_CANCELED) {
        StepError::Retry(DbError::TimedOut(
            "a replication statement ran out of this delivery's time".into(),
        ))
    } else {
        e.into()
    }
}

/// Waits (a while, then again with a later message) until the subscription copied every
/// table and follows the source closely.
pub(crate) async fn sync(ctx: &Ctx<'_>) -> Result<(), StepError> {
    let name = name(ctx.mv);
    let (source, target) = ctx.tenant_dbs().await?;
    let until = (Instant::now() + SYNC_WAIT).min(
        ctx.until
            .checked_sub(Duration::from_secs(5))
            .unwrap_or(ctx.until),
    );
    let mut first = None;
    loop {
        let Some(row) = target
            .query_opt(
                "SELECT (SELECT count(*) FROM pg_subscription_rel r WHERE r.srsubid = s.oid) AS tables, \
                   (SELECT count(*) FROM pg_subscription_rel r \
                    WHERE r.srsubid = s.oid AND r.srsubstate = 'r') AS ready, \
                   (SELECT coalesce(sum(pg_total_relation_size(r.srrelid)), 0)::bigint \
                    FROM pg_subscription_rel r WHERE r.srsubid = s.oid) AS bytes, \
                   coalesce((SELECT apply_error_count + sync_error_count \
                             FROM pg_stat_subscription_stats st WHERE st.subid = s.oid), 0) AS errors \
                 FROM pg_subscription s WHERE s.subname = $1",
                &[&name],
            )
            .await?
        else {
            return fail("the move's subscription on the target is gone");
        };
        let (tables, ready, bytes, errors): (i64, i64, i64, i64) = (
            row.try_get("tables").map_err(DbError::from)?,
            row.try_get("ready").map_err(DbError::from)?,
            row.try_get("bytes").map_err(DbError::from)?,
            row.try_get("errors").map_err(DbError::from)?,
        );
        let progress = (ready, bytes);
        let first = *first.get_or_insert(progress);
        if errors > MAX_ERRORS {
            warn!(move_id = %ctx.mv.id, errors, "the subscription keeps failing on the target");
            return fail(
                "the replication to the target keeps failing (the target's server log has the \
                 cause); use \"copy\"",
            );
        }
        if tables > 0 && ready == tables {
            if let Some(behind) = lag(&source, &name).await? {
                if behind <= SYNC_LAG_BYTES {
                    info!(move_id = %ctx.mv.id, tables, behind, "the target follows the source");
                    // Outside the fence: the copied rows' hint bits set (the verify in the
                    // fence reads every row: twice as fast so) and the planner's statistics,
                    // which replication does not carry, gathered for the application.
                    copy::time_left(&target, ctx.until).await?;
                    if let Err(e) = target.long().batch_execute("VACUUM (ANALYZE)").await {
                        warn!(move_id = %ctx.mv.id, error = %e, "could not vacuum the target; the check will be slower");
                    }
                    ctx.keep(source, target).await;
                    return Ok(());
                }
            }
        }
        let cancelled = ctx
            .sys
            .query_one(
                "SELECT cancel_requested FROM moves WHERE id = $1",
                &[&ctx.mv.id],
            )
            .await?;
        if cancelled.try_get::<_, bool>(0).map_err(DbError::from)? {
            return Err(StepError::Retry(DbError::Unavailable(
                "the move was cancelled while its copy ran".into(),
            )));
        }
        if Instant::now() >= until {
            // Still copying, and further than a minute ago: progress, not a stuck move (the
            // patience counts from here). A copy that stands still (a table locked, a lag
            // that never closes) is undone after the patience.
            if progress.0 > first.0 || progress.1 > first.1 {
                ctx.sys
                    .execute(
                        "UPDATE moves SET updated_at = now() WHERE id = $1",
                        &[&ctx.mv.id],
                    )
                    .await?;
            }
            return Err(StepError::Retry(DbError::TimedOut(format!(
                "the initial copy goes on ({ready} of {tables} tables)"
            ))));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// With the tenant fenced: waits until the target applied every write the source holds, then
/// ends the subscription (its slot goes with it) and the publication.
pub(crate) async fn catch_up(ctx: &Ctx<'_>) -> Result<(), StepError> {
    let name = name(ctx.mv);
    let (source, target) = ctx.tenant_dbs().await?;
    if subscription_exists(&target, &name).await? {
        // No session of the login may write after the position read below: the fence ended
        // them; one that slipped in as it did is ended here, or the step waits.
        {
            let admin = ctx.source.admin().await?;
            login::end_sessions(&admin, &ctx.access.role).await?;
            if login::sessions(&admin, &ctx.access.role).await? > 0 {
                return Err(StepError::Retry(DbError::Unavailable(
                    "a session of the tenant's login is still ending on the source".into(),
                )));
            }
        }
        // Where the last write was inserted (a commit acknowledged without waiting for its
        // flush is there, not yet at the write position).
        let lsn: String = source
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await?
            .try_get(0)
            .map_err(DbError::from)?;
        let until = (Instant::now() + CATCH_UP_WAIT).min(ctx.until);
        loop {
            let applied: bool = source
                .query_one(
                    "SELECT coalesce((SELECT confirmed_flush_lsn >= $1::text::pg_lsn \
                       FROM pg_replication_slots WHERE slot_name = $2), false)",
                    &[&lsn, &name],
                )
                .await?
                .try_get(0)
                .map_err(DbError::from)?;
            if applied {
                break;
            }
            if Instant::now() >= until {
                return Err(StepError::Retry(DbError::TimedOut(
                    "the target has not applied the source's last writes yet".into(),
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        target
            .long()
            .batch_execute(&format!("DROP SUBSCRIPTION {}", quote_ident(&name)))
            .await?;
    }
    unpublish(&source, &name).await?;
    ctx.keep(source, target).await;
    Ok(())
}

/// Undoes the replication of a move before its switch: the subscription (its slots dropped
/// with it; the source away, the undo waits for it), the publication and any slot left.
pub(crate) async fn undo(ctx: &Ctx<'_>) -> Result<(), StepError> {
    let (name, db) = (name(ctx.mv), &ctx.mv.database_name);
    match ctx.target.connect(db).await {
        Ok(target) => {
            if subscription_exists(&target, &name).await? {
                // Stopped, its senders on the source ended (a table the tenant's login keeps
                // locked would hold one in its initial copy), then dropped with its slots, or
                // not at all: detached, it would leave them holding the source's WAL. A
                // source away makes the undo wait for it.
                let ident = quote_ident(&name);
                target
                    .batch_execute(&format!("ALTER SUBSCRIPTION {ident} DISABLE"))
                    .await?;
                let source = ctx.source.connect(db).await?;
                end_senders(&source).await?;
                source.close().await;
                target
                    .long()
                    .batch_execute(&format!("DROP SUBSCRIPTION {ident}"))
                    .await?;
            }
            target.close().await;
        }
        // No database yet, or one never opened: no subscription in it.
        Err(DbError::Postgres(e))
            if matches!(
                e.code(),
                Some(&SqlState::INVALID_CATALOG_NAME)
                    | Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
            ) => {}
        Err(e) => return Err(e.into()),
    }
    let source = ctx.source.connect(db).await?;
    unpublish(&source, &name).await?;
    source.close().await;
    Ok(())
}
