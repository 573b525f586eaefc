//! What a real run does last besides its tenants: the moves' upkeep, and the fleet's gauges,
//! emitted once per real run (see `metrics`): how many tenants each
//! server holds in each status, and how many servers the run could not reach. What the
//! dashboard's "tenants per server" and the alarm on unreachable servers read.

use crate::{
    database::Database,
    metrics::{self, Unit},
    pg::{Conn, DbError},
    tenant::moves,
};

/// What a real run does after its lifecycle work: the moves' upkeep (a lost message sent
/// again, old copies past their retention dropped), then the gauges. A failure of either is
/// logged and left for the next run (never a failed run).
pub(super) async fn after_lifecycle(db: &Database, sys: &Conn, unreachable: usize) {
    if let Err(e) = moves::upkeep(db, sys).await {
        tracing::warn!(error = %e, "the moves upkeep could not run; the next run tries again");
    }
    if let Err(e) = emit(sys, unreachable).await {
        tracing::warn!(error = %e, "could not read the fleet's gauges");
    }
}

/// Emits `Tenants` per server and status, and `ServersUnreachable`.
pub(super) async fn emit(sys: &Conn, unreachable: usize) -> Result<(), DbError> {
    let rows = sys
        .query(
            "SELECT coalesce(server, 'none') AS server, status, count(*) AS n \
             FROM tenants WHERE status <> 'purged' GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await?;
    for row in &rows {
        let (server, status, n): (String, String, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        metrics::emit(
            &[("Server", server.as_str()), ("Status", status.as_str())],
            &[("Tenants", n as f64, Unit::Count)],
        );
    }
    metrics::emit(
        &[],
        &[("ServersUnreachable", unreachable as f64, Unit::Count)],
    );
    Ok(())
}
