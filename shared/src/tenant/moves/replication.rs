//! The replication objects of an online move, in SQL: their name, what a pair of servers must
//! allow, the tables a subscription could not keep current, the subscription's slot and
//! lag, and their removal. The steps that use them are in `online`.
//!
//! PostgreSQL 15 lets only a superuser create a subscription (RDS: `rds_superuser`), and the
//! subscription connects to the source as the source's admin, which must be allowed to
//! replicate (`REPLICATION`; RDS: `rds_replication`) on a server with `wal_level=logical`
//! (RDS: `rds.logical_replication`). [`unable`] says what is missing.

use super::record::Move;
use crate::{
    database::Server,
    domain::quote_ident,
    pg::{Conn, DbError},
};

/// The subscription, its replication slot and the publication of a move.
pub(crate) fn name(mv: &Move) -> String {
    format!("dbtools_move_{}", mv.id.simple())
}

/// Why these servers cannot move a tenant online, as a sentence for the client; `None` when
/// they can.
pub(crate) async fn unable(source: &Server, target: &Server) -> Result<Option<String>, DbError> {
    let row = source
        .admin()
        .await?
        .query_one(
            "SELECT current_setting('wal_level') = 'logical' AS logical, \
               coalesce((SELECT rolreplication OR rolsuper FROM pg_roles \
                         WHERE rolname = current_user), false) \
               OR EXISTS (SELECT 1 FROM pg_roles r \
                          WHERE r.rolname IN ('rds_replication', 'rds_superuser') \
                            AND pg_has_role(current_user, r.oid, 'MEMBER')) AS replicates",
            &[],
        )
        .await?;
    let (from, to) = (source.name(), target.name());
    if !row.try_get::<_, bool>("logical")? {
        return Ok(Some(format!(
            "server '{from}' does not run with wal_level=logical (RDS: rds.logical_replication); \
             use \"copy\""
        )));
    }
    if !row.try_get::<_, bool>("replicates")? {
        return Ok(Some(format!(
            "the admin of server '{from}' may not replicate (REPLICATION; RDS: \
             rds_replication); use \"copy\""
        )));
    }
    let row = target
        .admin()
        .await?
        .query_one(
            "SELECT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false) \
               OR EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = 'rds_superuser' \
                            AND pg_has_role(current_user, r.oid, 'MEMBER')) AS subscribes",
            &[],
        )
        .await?;
    if !row.try_get::<_, bool>("subscribes")? {
        return Ok(Some(format!(
            "the admin of server '{to}' may not create subscriptions (PostgreSQL 15: a \
             superuser; RDS: rds_superuser); use \"copy\""
        )));
    }
    Ok(None)
}

/// The tables a subscription could not keep current: without a primary key or another
/// replica identity, an update or a delete on the source would fail once published.
pub(crate) async fn without_identity(source: &Conn) -> Result<Vec<String>, DbError> {
    let rows = source
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_%' \
               AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
                    (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) \
             ORDER BY 1",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| r.try_get("name").map_err(DbError::from))
        .collect()
}

pub(crate) async fn subscription_exists(target: &Conn, name: &str) -> Result<bool, DbError> {
    Ok(target
        .query_opt("SELECT 1 FROM pg_subscription WHERE subname = $1", &[&name])
        .await?
        .is_some())
}

/// Drops the move's replication slot on the source. A slot still streaming (its subscription
/// just detached, its sender not gone yet) is a reason to come back.
pub(crate) async fn drop_slot(source: &Conn, name: &str) -> Result<(), DbError> {
    let active = source
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?;
    match active {
        None => Ok(()),
        Some(row) if row.try_get::<_, bool>("active")? => Err(DbError::Unavailable(
            "the move's replication slot is still in use".into(),
        )),
        Some(_) => {
            source
                .query(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND NOT active",
                    &[&name],
                )
                .await?;
            Ok(())
        }
    }
}

/// Bytes the subscription's slot is behind the source's WAL; `None` without the slot.
pub(crate) async fn lag(source: &Conn, name: &str) -> Result<Option<i64>, DbError> {
    let row = source
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?;
    Ok(match row {
        Some(row) => row.try_get("lag")?,
        None => None,
    })
}

/// Ends the senders streaming from the replication slots of the tenant's database (only this
/// product replicates there), for a stopped subscription to drop its slots without waiting.
pub(crate) async fn end_senders(source: &Conn) -> Result<(), DbError> {
    source
        .query(
            "SELECT pg_terminate_backend(active_pid, 1000) FROM pg_replication_slots \
             WHERE database = current_database() AND active_pid IS NOT NULL",
            &[],
        )
        .await?;
    Ok(())
}

/// The publication (ours: made by this admin) and the slot, on the source.
pub(crate) async fn unpublish(source: &Conn, name: &str) -> Result<(), DbError> {
    let ours = source
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1 \
               AND pg_get_userbyid(pubowner) = current_user",
            &[&name],
        )
        .await?;
    if ours.is_some() {
        source
            .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(name)))
            .await?;
    }
    drop_slot(source, name).await?;
    // The initial copy's own slots (`pg_<subscription>_sync_<table>_<system>`), should a
    // subscription have gone without them: in the tenant's database only this product
    // replicates (its login may not).
    source
        .query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE database = current_database() AND slot_type = 'logical' AND NOT active \
               AND slot_name LIKE 'pg\\_%\\_sync\\_%'",
            &[],
        )
        .await?;
    Ok(())
}
