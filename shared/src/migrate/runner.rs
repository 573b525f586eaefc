//! One database's pending migrations, run by refinery under the configuration's policy: a
//! session with a short lock timeout, lock waits retried after growing pauses, and the
//! migrations that carry the directive run statement by statement outside a transaction.

use std::time::{Duration, Instant};

use refinery::Migration;
use refinery_core::traits::r#async::{AsyncMigrate, AsyncQuery, AsyncTransaction};
use tokio_postgres::Client;
use tracing::{info, warn};

use super::{
    failure::{is_lock_timeout, RunFailure},
    statements::{concurrent_index_names, split_statements},
};
use crate::{config::MigrationPolicy, domain::quote_ident};

/// The directive, in a migration's leading comments, that makes it run outside a transaction.
pub const NO_TRANSACTION: &str = "-- dbtools:no-transaction";

impl MigrationPolicy {
    /// The session settings of a migration run.
    pub(crate) fn settings(&self) -> String {
        format!(
            "SET lock_timeout = {}; SET statement_timeout = {}",
            self.lock_timeout.as_millis(),
            self.statement_timeout.as_millis()
        )
    }

    /// The pause before retry `attempt` (1-based): half the lock timeout, doubling.
    pub(crate) fn pause(&self, attempt: u32) -> Duration {
        (self.lock_timeout / 2).saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
    }
}

/// True when the migration's leading comments carry [`NO_TRANSACTION`].
pub fn runs_outside_transaction(sql: &str) -> bool {
    sql.lines()
        .map(str::trim)
        .take_while(|l| l.is_empty() || l.starts_with("--"))
        .any(|l| l == NO_TRANSACTION)
}

/// A migration connection as refinery sees it: transactional migrations go to refinery's own
/// implementation; those with the directive run here.
pub(crate) struct Session<'a>(pub &'a mut Client);

impl AsyncTransaction for Session<'_> {
    type Error = tokio_postgres::Error;

    async fn execute<'a, T: Iterator<Item = &'a str> + Send + 'a>(
        &'a mut self,
        queries: T,
    ) -> Result<usize, Self::Error> {
        let queries: Vec<&str> = queries.collect();
        match queries.split_first() {
            // refinery hands over the migration's SQL, then its history row.
            Some((sql, rest)) if runs_outside_transaction(sql) => {
                repair_interrupted_builds(self.0, sql).await?;
                for statement in split_statements(sql) {
                    self.0.batch_execute(&statement).await?;
                }
                for query in rest {
                    self.0.batch_execute(query).await?;
                }
                Ok(queries.len())
            }
            _ => AsyncTransaction::execute(self.0, queries.into_iter()).await,
        }
    }
}

impl AsyncQuery<Vec<Migration>> for Session<'_> {
    async fn query(&mut self, query: &str) -> Result<Vec<Migration>, Self::Error> {
        AsyncQuery::query(self.0, query).await
    }
}

impl AsyncMigrate for Session<'_> {}

/// Drops the `INVALID` indexes left by an interrupted concurrent build of one of the
/// migration's indexes, so that `CREATE INDEX CONCURRENTLY IF NOT EXISTS` builds them again
/// instead of keeping a useless one.
async fn repair_interrupted_builds(
    client: &Client,
    sql: &str,
) -> Result<(), tokio_postgres::Error> {
    for name in concurrent_index_names(sql) {
        let invalid = client
            .query_opt(
                "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                 WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace \
                   AND NOT i.indisvalid",
                &[&name],
            )
            .await?
            .is_some();
        if invalid {
            info!(index = %name, "dropping an index an interrupted concurrent build left invalid");
            client
                .batch_execute(&format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {}",
                    quote_ident(&name)
                ))
                .await?;
        }
    }
    Ok(())
}

/// Runs `runner` on `client` under `policy`, retrying a lock timeout after a pause, until
/// `until`. Returns every migration applied (over all attempts) and the last attempt's
/// outcome.
pub(crate) async fn run(
    client: &mut Client,
    runner: impl Fn() -> refinery::Runner,
    policy: &MigrationPolicy,
    until: Instant,
) -> (Vec<i64>, Result<(), RunFailure>) {
    let mut applied = Vec::new();
    let versions = |r: &refinery::Report| -> Vec<i64> {
        r.applied_migrations()
            .iter()
            .map(|m| i64::from(m.version()))
            .collect()
    };
    if let Err(e) = client.batch_execute(&policy.settings()).await {
        return (applied, Err(RunFailure::Database(e)));
    }
    let mut attempt = 0;
    loop {
        let outcome = runner().run_async(&mut Session(client)).await;
        match outcome {
            Ok(report) => {
                applied.extend(versions(&report));
                return (applied, Ok(()));
            }
            Err(e) => {
                applied.extend(e.report().map(versions).unwrap_or_default());
                if !is_lock_timeout(&e) {
                    return (applied, Err(RunFailure::Refinery(e)));
                }
                attempt += 1;
                let pause = policy.pause(attempt);
                let room = until.saturating_duration_since(Instant::now());
                if attempt > policy.lock_retries || room < pause + policy.lock_timeout {
                    return (
                        applied,
                        Err(RunFailure::LockTimeout {
                            attempts: attempt,
                            last: e,
                        }),
                    );
                }
                warn!(
                    attempt,
                    pause_ms = pause.as_millis() as u64,
                    "a migration gave up waiting for a lock; retrying after a pause"
                );
                tokio::time::sleep(pause).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directive_is_read_from_the_leading_comments_only() {
        assert!(runs_outside_transaction(
            "-- Why.\n-- dbtools:no-transaction\n\nCREATE INDEX CONCURRENTLY x ON t (a);"
        ));
        assert!(runs_outside_transaction(
            "\n  -- dbtools:no-transaction  \nSELECT 1;"
        ));
        assert!(!runs_outside_transaction(
            "SELECT 1;\n-- dbtools:no-transaction\n"
        ));
        assert!(!runs_outside_transaction(
            "-- dbtools:no-transactions\nSELECT 1;"
        ));
        assert!(!runs_outside_transaction("CREATE TABLE t (a int);"));
    }

    #[test]
    fn pauses_grow_from_half_the_lock_timeout() {
        let p = MigrationPolicy {
            lock_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(300),
            lock_retries: 3,
        };
        let pauses: Vec<_> = (1..=3).map(|a| p.pause(a).as_millis()).collect();
        assert_eq!(pauses, vec![1000, 2000, 4000]);
        assert_eq!(
            p.settings(),
            "SET lock_timeout = 2000; SET statement_timeout = 300000"
        );
    }
}
