//! The steps of a move (an online move's replication in `online`), each repeatable (a step that died is run again whole) and
//! run under the tenant's lock, and the undo of a move that fails or is cancelled before its
//! switch. The decision table is in the module documentation (`tenant::moves`).

use std::time::Instant;

use tracing::{info, warn};

use super::{
    context::{fail, Ctx, StepError},
    copy, online,
    record::{MoveMode, Step},
    replication,
};
use crate::{
    domain::TenantStatus,
    pg::{
        ownership::{self, DropOutcome},
        DbError,
    },
    tenant::{
        access::{self, login},
        template,
    },
};

/// Runs one step; `Ok` when it is done (the caller records the next).
pub(crate) async fn run(ctx: &Ctx<'_>, step: Step) -> Result<(), StepError> {
    match step {
        Step::Prepare => prepare(ctx).await,
        Step::TargetDb => target_db(ctx).await,
        Step::OpenTarget => open_target(ctx).await,
        Step::Replicate => online::replicate(ctx).await,
        Step::Sync => online::sync(ctx).await,
        Step::Fence => fence(ctx).await,
        Step::CatchUp => online::catch_up(ctx).await,
        Step::Copy => copy(ctx).await,
        Step::Sequences => sequences(ctx).await,
        Step::Verify => verify(ctx).await,
        Step::Switch => switch(ctx).await,
        Step::Finish => finish(ctx).await,
    }
}

/// The tenant still active where the move found it; the target still open; the tenant at the
/// latest migration (so that the target's template is its schema); the way clear on the
/// target (a copy an earlier move left there, retained, is dropped: it is ours by its OID).
async fn prepare(ctx: &Ctx<'_>) -> Result<(), StepError> {
    let mv = ctx.mv;
    if ctx.status != TenantStatus::Active || ctx.server.as_deref() != Some(mv.from.as_str()) {
        return fail("the tenant is no longer active on the server the move started from");
    }
    let open = ctx
        .sys
        .query_opt(
            "SELECT 1 FROM servers WHERE name = $1 AND state = 'open'",
            &[&mv.to],
        )
        .await?;
    if open.is_none() {
        return fail(format!(
            "server '{}' is no longer open to new tenants",
            mv.to
        ));
    }
    if mv.mode == MoveMode::Online {
        if let Some(why) = replication::unable(&ctx.source, &ctx.target).await? {
            return fail(why);
        }
    }
    {
        let admin = ctx.source.admin().await?;
        template::migrate_to_latest(ctx.db, &admin, &mv.database_name).await?;
    }
    let admin = ctx.target.admin().await?;
    template::ensure(ctx.db, ctx.sys, &admin, ctx.until).await?;
    let Some(found) = ownership::find(&admin, &mv.database_name).await? else {
        return Ok(());
    };
    if found.is(Some(mv.target_oid)) {
        return Ok(());
    }
    let retained = ctx
        .sys
        .query_opt(
            "SELECT id FROM moves WHERE tenant_id = $1 AND from_server = $2 \
               AND database_name = $3 AND source_oid = $4 AND state = 'done' \
               AND source_dropped_at IS NULL",
            &[&mv.tenant_id, &mv.to, &mv.database_name, &found.oid],
        )
        .await?;
    let Some(retained) = retained else {
        return fail(
            "a database of this tenant's name exists on the target that this registry did not make",
        );
    };
    let earlier: uuid::Uuid = retained.try_get("id").map_err(DbError::from)?;
    ownership::drop_if_ours(&admin, &mv.database_name, Some(found.oid)).await?;
    ctx.sys
        .execute(
            "UPDATE moves SET source_dropped_at = now(), updated_at = now() WHERE id = $1",
            &[&earlier],
        )
        .await?;
    info!(move_id = %mv.id, earlier = %earlier, "dropped the copy an earlier move kept on the target");
    Ok(())
}

/// The target database, from the target's template, with the OID the move recorded before it
/// existed; opened to no login (only its owner, the admin, connects).
async fn target_db(ctx: &Ctx<'_>) -> Result<(), StepError> {
    let mv = ctx.mv;
    let admin = ctx.target.admin().await?;
    match ownership::find(&admin, &mv.database_name).await? {
        Some(found) if found.is(Some(mv.target_oid)) && !found.invalid => {}
        Some(found) if found.is(Some(mv.target_oid)) => {
            ownership::drop_if_ours(&admin, &mv.database_name, Some(mv.target_oid)).await?;
            return Err(StepError::Retry(DbError::Unavailable(
                "a half-dropped target database was dropped; made again next".into(),
            )));
        }
        Some(_) => {
            return fail(
                "a database of this tenant's name exists on the target that this registry did \
                 not make",
            )
        }
        None => {
            let template = template::ensure(ctx.db, ctx.sys, &admin, ctx.until).await?;
            admin
                .long()
                .batch_execute(&ownership::create_sql(
                    &mv.database_name,
                    mv.target_oid,
                    &template.name,
                ))
                .await?;
        }
    }
    // `PUBLIC`'s privileges revoked and connections allowed, in one transaction: nobody but
    // the admin (and superusers) may connect until the tenant's login gets `CONNECT`.
    ownership::open(&admin, &mv.database_name).await?;
    drop(admin);
    // A new database's first session builds its catalog cache file (a tenth of a second):
    // here, not in the fence.
    ctx.target.connect(&mv.database_name).await?.close().await;
    Ok(())
}

/// Writes stop: the login refused on the source and its sessions ended.
async fn fence(ctx: &Ctx<'_>) -> Result<(), StepError> {
    ctx.sys
        .execute(
            "UPDATE moves SET fence_started_at = coalesce(fence_started_at, now()) WHERE id = $1",
            &[&ctx.mv.id],
        )
        .await?;
    let admin = ctx.source.admin().await?;
    match login::state(&admin, &ctx.access.role, ctx.access.tenant_id).await? {
        login::RoleState::Ours { .. } => {
            login::set_login(&admin, &ctx.access.role, false).await?;
            login::end_sessions(&admin, &ctx.access.role).await?;
            if login::sessions(&admin, &ctx.access.role).await? > 0 {
                return Err(StepError::Retry(DbError::Unavailable(
                    "a session of the tenant's login is still ending on the source".into(),
                )));
            }
            Ok(())
        }
        _ => fail("the tenant's login on the source is missing or not ours"),
    }
}

/// Every table, in one target transaction (see `copy`). Fails the move when the two sides'
/// schemas differ (a run migrated the source meanwhile).
async fn copy(ctx: &Ctx<'_>) -> Result<(), StepError> {
    let (mut source, mut target) = ctx.tenant_dbs().await?;
    if copy::schema_version(&source).await? != copy::schema_version(&target).await? {
        return fail("the tenant's schema changed during the move; start the move again");
    }
    let tables = copy::tables(&target).await?;
    if copy::tables(&source).await? != tables {
        return fail("the tenant's tables differ from its migrations' on the target");
    }
    let started = Instant::now();
    let copied = copy::copy_tables(&mut source, &mut target, &tables, ctx.until).await?;
    let Some(copied) = copied else {
        source.close().await;
        target.close().await;
        return Err(StepError::Retry(DbError::TimedOut(
            "the copy did not finish in this invocation's time".into(),
        )));
    };
    ctx.keep(source, target).await;
    info!(move_id = %ctx.mv.id, tables = copied.tables, rows = copied.rows, bytes = copied.bytes,
        copy_ms = crate::invocation::millis(started.elapsed()), "tenant tables copied");
    ctx.sys
        .execute(
            "UPDATE moves SET tables_copied = $2, rows_copied = $3, bytes_copied = $4 WHERE id = $1",
            &[&ctx.mv.id, &copied.tables, &copied.rows, &copied.bytes],
        )
        .await?;
    Ok(())
}

async fn sequences(ctx: &Ctx<'_>) -> Result<(), StepError> {
    let (source, target) = ctx.tenant_dbs().await?;
    copy::copy_sequences(&source, &target).await?;
    ctx.keep(source, target).await;
    Ok(())
}

/// Row counts and checksums, table by table: a difference fails (and undoes) the move.
async fn verify(ctx: &Ctx<'_>) -> Result<(), StepError> {
    let (source, target) = ctx.tenant_dbs().await?;
    // The same tables and history on both sides: a table made on the source meanwhile would
    // otherwise go unchecked (and, online, uncopied: replication carries no DDL).
    let tables = copy::tables(&target).await?;
    if copy::tables(&source).await? != tables
        || copy::schema_version(&source).await? != copy::schema_version(&target).await?
    {
        return fail("the tenant's schema changed during the move; start the move again");
    }
    for table in &tables {
        let [theirs, ours] = copy::checksums(&source, &target, table).await?;
        if theirs != ours {
            warn!(move_id = %ctx.mv.id, table = %table.name, source_rows = theirs.0,
                target_rows = ours.0, "the copy differs from the source");
            return fail(format!(
                "the copy of table {} differs from the source ({} rows against {})",
                table.name, ours.0, theirs.0
            ));
        }
    }
    ctx.keep(source, target).await;
    Ok(())
}

/// The tenant's login on the target, with the password its secret holds, refusing sessions.
async fn open_target(ctx: &Ctx<'_>) -> Result<(), StepError> {
    let Some(arn) = &ctx.secret_arn else {
        return fail("the tenant has no secret to take its password from");
    };
    let current = access::current(ctx.db, arn).await?;
    let admin = ctx.target.admin().await?;
    access::place_closed(ctx.db, &admin, &ctx.access, &current.password).await?;
    Ok(())
}

/// One registry transaction: the tenant's row names the target (and its database's OID), the
/// move is at `finish` and its source kept until the retention ends.
async fn switch(ctx: &Ctx<'_>) -> Result<(), StepError> {
    let mv = ctx.mv;
    // A move started by a release that made the login after `verify` reaches here without it.
    let exists = {
        let admin = ctx.target.admin().await?;
        login::state(&admin, &ctx.access.role, ctx.access.tenant_id).await?
    };
    if !matches!(exists, login::RoleState::Ours { .. }) {
        open_target(ctx).await?;
    }
    let days = ctx.db.config().tenants.move_retention_days;
    let tx = ctx.sys.begin().await?;
    let switched = tx
        .execute(
            "UPDATE tenants SET server = $2, database_oid = $3, updated_at = now() \
             WHERE id = $1 AND server = $4 AND status = 'active'",
            &[&mv.tenant_id, &mv.to, &mv.target_oid, &mv.from],
        )
        .await?;
    if switched != 1 {
        tx.rollback().await;
        return fail("the tenant is no longer active on the server the move started from");
    }
    tx.execute(
        "UPDATE moves SET step = 'finish', updated_at = now(), \
           source_drop_after = now() + make_interval(days => $2::int) \
         WHERE id = $1 AND step = 'switch' AND state = 'running'",
        &[&mv.id, &days],
    )
    .await?;
    tx.commit().await?;
    info!(move_id = %mv.id, to = %mv.to, "the registry names the tenant's new server");
    Ok(())
}

/// Forward only: the target's login opened, the secret's host and port.
async fn finish(ctx: &Ctx<'_>) -> Result<(), StepError> {
    let admin = ctx.target.admin().await?;
    match login::state(&admin, &ctx.access.role, ctx.access.tenant_id).await? {
        login::RoleState::Ours { .. } => login::set_login(&admin, &ctx.access.role, true).await?,
        _ => return fail("the tenant's login on the target is missing or not ours"),
    }
    if let Some(arn) = &ctx.secret_arn {
        access::point_secret(ctx.db, &admin, &ctx.access, arn).await?;
    }
    Ok(())
}

/// Undoes a move before its switch: an online move's replication ended, the target's database
/// and login dropped (ours by the recorded OID and the tenant's mark), the source's login
/// opened again.
pub(crate) async fn undo(ctx: &Ctx<'_>) -> Result<(), StepError> {
    let mv = ctx.mv;
    if mv.mode == MoveMode::Online && mv.step > Step::OpenTarget {
        online::undo(ctx).await?;
    }
    {
        let admin = ctx.target.admin().await?;
        // The database first: the login's `CONNECT` on it would keep the login from going.
        if ownership::drop_if_ours(&admin, &mv.database_name, Some(mv.target_oid)).await?
            == DropOutcome::NotOurs
        {
            warn!(move_id = %mv.id, "a database of the tenant's name on the target is not the move's; left alone");
        }
        login::drop_if_ours(&admin, &ctx.access.role, ctx.access.tenant_id).await?;
    }
    if mv.step > Step::Fence || mv.fence_started_at.is_some() {
        let admin = ctx.source.admin().await?;
        if ctx.status == TenantStatus::Active
            && matches!(
                login::state(&admin, &ctx.access.role, ctx.access.tenant_id).await?,
                login::RoleState::Ours { can_login: false }
            )
        {
            login::set_login(&admin, &ctx.access.role, true).await?;
        }
    }
    Ok(())
}
