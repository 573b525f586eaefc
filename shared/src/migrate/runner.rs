//! One database's pending migrations, run by refinery under the configuration's policy: a
//! lock-timeout ladder (each attempt's `lock_timeout` short, growing from the first rung to a
//! ceiling well under a second, so that no application query queues behind a migration's lock
//! request for longer than one rung), many attempts with jittered pauses inside the tenant's
//! time, and the migrations that carry the directive run statement by statement outside a
//! transaction.

use std::time::{Duration, Instant};

use refinery::Migration;
use refinery_core::traits::r#async::{AsyncMigrate, AsyncQuery, AsyncTransaction};
use tokio_postgres::Client;
use tracing::info;

use super::{
    failure::{is_lock_timeout, RunFailure},
    statements::{concurrent_index_names, split_statements},
};
use crate::{config::MigrationPolicy, domain::quote_ident};

/// The directive, in a migration's leading comments, that makes it run outside a transaction.
pub const NO_TRANSACTION: &str = "-- dbtools:no-transaction";

/// The longest nominal pause between two attempts: long enough for a report or a batch job
/// holding the table to make progress, short enough that many attempts fit a tenant's time.
const PAUSE_CAP: Duration = Duration::from_millis(500);

impl MigrationPolicy {
    /// The `lock_timeout` of attempt `attempt` (1-based): the first rung, doubling, up to the
    /// ceiling.
    pub(crate) fn rung(&self, attempt: u32) -> Duration {
        self.lock_timeout
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.lock_timeout_max.max(self.lock_timeout))
    }

    /// The session settings of attempt `attempt`.
    pub(crate) fn settings(&self, attempt: u32) -> String {
        format!(
            "SET lock_timeout = {}; SET statement_timeout = {}",
            self.rung(attempt).as_millis(),
            self.statement_timeout.as_millis()
        )
    }

    /// The pause after failed attempt `attempt` (1-based): nominally the first rung, doubling,
    /// up to [`PAUSE_CAP`] (or the ceiling, when that is longer), scaled by `jitter` in
    /// `0.5..1.5` so that tenants busy for the same reason do not retry in step.
    pub(crate) fn pause(&self, attempt: u32, jitter: f64) -> Duration {
        let nominal = self
            .lock_timeout
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(PAUSE_CAP.max(self.lock_timeout_max));
        nominal.mul_f64(jitter.clamp(0.5, 1.5))
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
    let mut attempt = 0;
    loop {
        if let Err(e) = client.batch_execute(&policy.settings(attempt + 1)).await {
            return (applied, Err(RunFailure::Database(e)));
        }
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
                let pause = policy.pause(attempt, rand::random_range(0.5..1.5));
                let room = until.saturating_duration_since(Instant::now());
                if attempt > policy.lock_retries || room < pause + policy.rung(attempt + 1) {
                    return (
                        applied,
                        Err(RunFailure::LockTimeout {
                            attempts: attempt,
                            last: e,
                        }),
                    );
                }
                info!(
                    attempt,
                    lock_timeout_ms = policy.rung(attempt).as_millis() as u64,
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

    fn ladder() -> MigrationPolicy {
        MigrationPolicy {
            lock_timeout: Duration::from_millis(100),
            lock_timeout_max: Duration::from_millis(200),
            statement_timeout: Duration::from_secs(300),
            lock_retries: 20,
        }
    }

    #[test]
    fn rungs_climb_from_the_first_to_the_ceiling_and_stay() {
        let p = ladder();
        let rungs: Vec<_> = (1..=5).map(|a| p.rung(a).as_millis()).collect();
        assert_eq!(rungs, vec![100, 200, 200, 200, 200]);
        assert_eq!(p.rung(u32::MAX), Duration::from_millis(200));
        assert_eq!(
            p.settings(1),
            "SET lock_timeout = 100; SET statement_timeout = 300000"
        );
        assert_eq!(
            p.settings(2),
            "SET lock_timeout = 200; SET statement_timeout = 300000"
        );
        // A fixed lock timeout: first rung and ceiling equal.
        let fixed = MigrationPolicy {
            lock_timeout: Duration::from_secs(2),
            lock_timeout_max: Duration::from_secs(2),
            ..p
        };
        assert!((1..=10).all(|a| fixed.rung(a) == Duration::from_secs(2)));
    }

    #[test]
    fn pauses_grow_to_a_cap_and_are_jittered_within_half_either_way() {
        let p = ladder();
        let nominal: Vec<_> = (1..=6).map(|a| p.pause(a, 1.0).as_millis()).collect();
        assert_eq!(nominal, vec![100, 200, 400, 500, 500, 500]);
        assert_eq!(p.pause(4, 0.5), Duration::from_millis(250));
        assert_eq!(p.pause(4, 1.5), Duration::from_millis(750));
        // Out-of-range jitter is clamped.
        assert_eq!(p.pause(4, 9.0), Duration::from_millis(750));
        assert_eq!(p.pause(4, 0.0), Duration::from_millis(250));
        // A ceiling above the cap lets pauses reach it.
        let slow = MigrationPolicy {
            lock_timeout: Duration::from_secs(2),
            lock_timeout_max: Duration::from_secs(2),
            ..p
        };
        assert_eq!(slow.pause(3, 1.0), Duration::from_secs(2));
    }
}
