//! Migrations: the embedded ones (refinery) for tenant databases and for the system database,
//! and how each meets a busy database.
//!
//! refinery records what it applied in `refinery_schema_history` inside each database and,
//! by default, refuses to run when that history diverges from (or misses) the embedded files:
//! released migrations are immutable, add a new file instead.

//!
//!
//! - **A lock-timeout ladder.** Each attempt runs with a short `lock_timeout`: the first
//!   rung `MIGRATE_LOCK_TIMEOUT_MS` (100 ms), doubling on each retry up to the ceiling
//!   `MIGRATE_LOCK_TIMEOUT_MAX_MS` (200 ms), and `statement_timeout` =
//!   `MIGRATE_STATEMENT_TIMEOUT_SECS`. A migration that waits longer for a lock gives up
//!   (rolled back: the application's queries that queued behind it go on), and the run is
//!   retried up to `MIGRATE_LOCK_RETRIES` (20) times after jittered pauses (the first rung,
//!   doubling, up to 500 ms, each scaled by a random 0.5–1.5), within the caller's deadline;
//!   then the tenant is deferred. So an application query never waits behind a migration's
//!   lock request for longer than one rung (GitLab's `with_lock_retries` works the same way).
//! - **Outside a transaction.** A migration whose leading comments include the directive
//!   `-- dbtools:no-transaction` runs statement by statement, each on its own (what
//!   `CREATE INDEX CONCURRENTLY` and a few others need), and then refinery's own history row
//!   is written exactly as refinery writes it, so refinery and `verify` see a normal history.
//!   Such a migration may stop half-way, so each of its statements must be safe to run again
//!   (`IF NOT EXISTS`; squawk checks it): the retry, or the next run, repeats it from the
//!   start. A concurrent index build that failed leaves an `INVALID` index of its name; before
//!   the migration runs again, such an index (of a name the migration builds concurrently,
//!   with the migration not in the history: an interrupted build of ours, tenant logins run
//!   no DDL) is dropped concurrently and built again.
//! - **No deadlock with the tenant lock.** `CREATE INDEX CONCURRENTLY` waits for every
//!   transaction of *its database* that holds an older snapshot. The tenant's advisory lock is
//!   a session lock on the registry's database, never in the tenant's, and this session holds
//!   no transaction open around a concurrent build, so the build never waits for its own lock
//!   holder (the deadlock Flyway documents for locks taken in the migrated database).

//!
//! | module | owns |
//! | --- | --- |
//! | this one | running one database's migrations within a deadline, and to the latest |
//! | [`embedded`] | the migrations compiled in (refinery), for tenant databases and the system database |
//! | [`runner`] | one database's run: refinery under the policy (lock waits, retries, the directive) |
//! | [`statements`] | reading a migration's SQL: its statements, the indexes it builds concurrently |
//! | [`history`] | refinery's history table, and how a tenant's compares with the embedded migrations |
//! | [`failure`] | how a run's failure counts: unavailable, busy, or the migration's own |

pub(crate) mod embedded;
pub(crate) mod failure;
pub(crate) mod history;
pub(crate) mod runner;
pub(crate) mod statements;

use std::time::{Duration, Instant};

use refinery::Runner;

pub(crate) use embedded::{system_migrations, system_runner, tenant_runner, HISTORY_TABLE};
pub(crate) use failure::{run_failure, RunFailure};
pub use history::latest_tenant_version;
pub(crate) use history::{read_history, ExpectedHistory, HistoryCheck, HistoryRow};
pub use runner::{runs_outside_transaction, NO_TRANSACTION};

use crate::{
    config::MigrationPolicy,
    pg::{Conn, DbError},
};

/// Applies every pending tenant migration (within `limit`, as the configuration's migration
/// policy says), then checks that the history is exactly the released one (what the
/// registry's fingerprint then vouches for).
pub(crate) async fn migrate_tenant_to_latest(
    conn: &mut Conn,
    policy: &MigrationPolicy,
    limit: Duration,
) -> Result<(), DbError> {
    let (_, outcome) = run(conn, tenant_runner, policy, Instant::now() + limit).await?;
    outcome.map_err(|e| run_failure(&e, "tenant migrations failed"))?;
    let history = read_history(conn).await?;
    match ExpectedHistory::tenant().check(&history) {
        HistoryCheck::Current => Ok(()),
        other => Err(DbError::Other(anyhow::anyhow!(
            "the history after migrating does not match the released migrations: {other:?}"
        ))),
    }
}

/// Runs refinery on `conn` until `until`, as [`runner`] says (short lock waits with retries,
/// migrations outside a transaction where declared). Returns the versions applied and how the
/// run ended. A run that misses its deadline is cancelled on the server: the open migration's
/// transaction is rolled back.
pub(crate) async fn run(
    conn: &mut Conn,
    runner: impl Fn() -> Runner,
    policy: &MigrationPolicy,
    until: Instant,
) -> Result<(Vec<i64>, Result<(), RunFailure>), DbError> {
    let limit = until.saturating_duration_since(Instant::now());
    conn.exclusive(until, async |client| {
        runner::run(client, runner, policy, until).await
    })
    .await?
    .ok_or_else(|| {
        DbError::TimedOut(format!(
            "the migrations did not finish within their time limit ({} s) and were \
             cancelled; the next run goes on from there",
            limit.as_secs()
        ))
    })
}
