//! How one database's pending migrations run, whoever asks (migrate-all, the template build,
//! a create's roll-forward, a restore): refinery decides what is pending and records the
//! history; this module decides how each migration meets a busy database.
//!
//! - **Short lock waits, retried.** The session runs with `lock_timeout` =
//!   `MIGRATE_LOCK_TIMEOUT_MS` (2 s) and `statement_timeout` =
//!   `MIGRATE_STATEMENT_TIMEOUT_SECS`. A migration that waits longer for a lock gives up
//!   (rolled back: the application's queries that queued behind it go on), and the run is
//!   retried up to `MIGRATE_LOCK_RETRIES` (3) times after growing pauses (half the lock
//!   timeout, then twice that each time), within the caller's deadline. So an application
//!   query never waits behind a migration for longer than the lock timeout.
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

use std::time::{Duration, Instant};

use refinery::Migration;
use refinery_core::traits::r#async::{AsyncMigrate, AsyncQuery, AsyncTransaction};
use tokio_postgres::{error::SqlState, Client};
use tracing::{info, warn};

use crate::domain::quote_ident;

/// The directive, in a migration's leading comments, that makes it run outside a transaction.
pub const NO_TRANSACTION: &str = "-- dbtools:no-transaction";

/// What a migration session is allowed: the server-side timeouts and the retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
    pub lock_retries: u32,
}

impl Policy {
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

/// True when refinery failed because a statement gave up waiting for a lock (SQLSTATE 55P03:
/// `lock_timeout`, or a concurrent index build's wait for older transactions).
pub(crate) fn is_lock_timeout(e: &refinery::Error) -> bool {
    pg_error(e)
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|c| *c == SqlState::LOCK_NOT_AVAILABLE)
}

/// The PostgreSQL error behind a refinery error, however deep refinery wrapped it (its reads
/// of the history wrap their own errors twice).
pub(crate) fn pg_error(e: &refinery::Error) -> Option<&tokio_postgres::Error> {
    match e.kind() {
        refinery::error::Kind::Connection(_, source) => source
            .downcast_ref::<tokio_postgres::Error>()
            .or_else(|| source.downcast_ref::<refinery::Error>().and_then(pg_error)),
        _ => None,
    }
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

/// The names of the indexes a migration builds with `CREATE [UNIQUE] INDEX CONCURRENTLY
/// [IF NOT EXISTS] name`, as PostgreSQL stores them (unquoted names folded to lower case).
pub(crate) fn concurrent_index_names(sql: &str) -> Vec<String> {
    let mut names = Vec::new();
    for statement in split_statements(sql) {
        let mut words = Words(without_leading_comments(&statement));
        let mut next = || words.next();
        let matches = |w: Option<String>, kw: &str| w.is_some_and(|w| w.eq_ignore_ascii_case(kw));
        if !matches(next(), "create") {
            continue;
        }
        let mut word = next();
        if matches(word.clone(), "unique") {
            word = next();
        }
        if !matches(word, "index") || !matches(next(), "concurrently") {
            continue;
        }
        let mut word = next();
        if matches(word.clone(), "if") {
            // IF NOT EXISTS
            next();
            next();
            word = next();
        }
        if let Some(name) = word.filter(|w| !w.eq_ignore_ascii_case("on")) {
            names.push(name);
        }
    }
    names
}

/// A statement without the comments before it.
fn without_leading_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if s.starts_with("--") {
            s = &s[line_comment_end(s, 0)..];
        } else if s.starts_with("/*") {
            s = &s[block_comment_end(s.as_bytes(), 0)..];
        } else {
            return s;
        }
    }
}

/// Words of a statement: identifiers (quoted ones unquoted, others folded to lower case).
struct Words<'a>(&'a str);

impl Iterator for Words<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let s = self.0.trim_start();
        if let Some(rest) = s.strip_prefix('"') {
            let mut name = String::new();
            let mut chars = rest.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if chars.peek().is_some_and(|(_, c)| *c == '"') {
                        chars.next();
                        name.push('"');
                        continue;
                    }
                    self.0 = &rest[i + 1..];
                    return Some(name);
                }
                name.push(c);
            }
            self.0 = "";
            return Some(name);
        }
        let end = s
            .find(|c: char| c.is_whitespace() || c == '(' || c == '"')
            .unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        self.0 = &s[end..];
        Some(s[..end].to_ascii_lowercase())
    }
}

/// Splits a migration into its statements, each run on its own. Knows PostgreSQL's quoting:
/// `'…'`, `"…"`, `$tag$…$tag$` and both kinds of comments (kept with the statement they
/// precede); drops what holds only comments.
pub(crate) fn split_statements(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut code = false; // the current piece holds something besides comments
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = line_comment_end(sql, i);
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = block_comment_end(bytes, i);
                continue;
            }
            quote @ (b'\'' | b'"') => {
                code = true;
                // E'…': backslash escapes (`E'it\'s'`).
                let escapes = quote == b'\''
                    && i >= 1
                    && matches!(bytes[i - 1], b'E' | b'e')
                    && (i < 2 || !is_ident_byte(bytes[i - 2]));
                i += 1;
                while i < bytes.len() {
                    if escapes && bytes[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if bytes[i] == quote {
                        if bytes.get(i + 1) == Some(&quote) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                continue;
            }
            // `$` inside an identifier (`a$b`) or a parameter (`$1`) opens no quote.
            b'$' if i == 0 || !is_ident_byte(bytes[i - 1]) => {
                code = true;
                let tag_end = sql[i + 1..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map(|n| i + 1 + n);
                let opens = |e: usize| {
                    bytes[e] == b'$' && !sql[i + 1..e].starts_with(|c: char| c.is_ascii_digit())
                };
                if let Some(end) = tag_end.filter(|&e| opens(e)) {
                    let tag = &sql[i..=end];
                    let body = end + 1;
                    i = sql[body..]
                        .find(tag)
                        .map_or(bytes.len(), |n| body + n + tag.len());
                    continue;
                }
                i += 1;
                continue;
            }
            b';' => {
                if code {
                    statements.push(sql[start..i].trim().to_owned());
                }
                code = false;
                start = i + 1;
            }
            c if !c.is_ascii_whitespace() => code = true,
            _ => {}
        }
        i += 1;
    }
    if code {
        statements.push(sql[start..].trim().to_owned());
    }
    statements
}

/// Where the `--` comment starting at `start` ends: after its line's newline, or at the end.
fn line_comment_end(sql: &str, start: usize) -> usize {
    sql[start..].find('\n').map_or(sql.len(), |n| start + n + 1)
}

/// Where the `/* */` comment starting at `start` ends (comments nest in PostgreSQL): after
/// its outermost `*/`, or at the end.
fn block_comment_end(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if bytes[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

/// A byte that may continue an identifier (ASCII letters, digits, `_`, `$`; any byte of a
/// non-ASCII character).
fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Runs `runner` on `client` under `policy`, retrying a lock timeout after a pause, until
/// `until`. Returns every migration applied (over all attempts) and the last attempt's
/// outcome.
pub(crate) async fn run(
    client: &mut Client,
    runner: impl Fn() -> refinery::Runner,
    policy: &Policy,
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

/// Why a migration run ended without applying everything.
#[derive(Debug)]
pub(crate) enum RunFailure {
    /// The session could not be set up.
    Database(tokio_postgres::Error),
    /// A migration kept waiting for a lock past the lock timeout, every attempt.
    LockTimeout {
        attempts: u32,
        last: refinery::Error,
    },
    /// Anything else refinery reported (a failing migration, a diverged history, a lost
    /// connection).
    Refinery(refinery::Error),
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
    fn statements_are_split_where_postgresql_would() {
        let sql = "-- a comment; not a statement\n\
                   ALTER TABLE t ADD COLUMN IF NOT EXISTS a text DEFAULT 'x;y';\n\
                   /* block; /* nested; */ still */\n\
                   CREATE INDEX CONCURRENTLY IF NOT EXISTS \"i;1\" ON t (a);\n\
                   DO $body$ BEGIN PERFORM 1; END $body$;\n\
                   SELECT $$a;b$$, 'it''s; fine'\n";
        assert_eq!(
            split_statements(sql),
            vec![
                // Comments stay with the statement they precede (PostgreSQL skips them).
                "-- a comment; not a statement\nALTER TABLE t ADD COLUMN IF NOT EXISTS a text DEFAULT 'x;y'",
                "/* block; /* nested; */ still */\nCREATE INDEX CONCURRENTLY IF NOT EXISTS \"i;1\" ON t (a)",
                "DO $body$ BEGIN PERFORM 1; END $body$",
                "SELECT $$a;b$$, 'it''s; fine'",
            ]
        );
        assert!(split_statements("-- only\n/* comments */;\n ; ").is_empty());
        // Backslash escapes in E'' strings; `$` in identifiers and parameters; tags of any
        // letters.
        assert_eq!(
            split_statements(
                "SELECT E'it\\'s; x', e'\\\\'; SELECT a$b$c FROM t$1; \
                 DO $é$ BEGIN PERFORM 1; END $é$; SELECT 'plain\\'; SELECT $1"
            ),
            vec![
                "SELECT E'it\\'s; x', e'\\\\'",
                "SELECT a$b$c FROM t$1",
                "DO $é$ BEGIN PERFORM 1; END $é$",
                "SELECT 'plain\\'",
                "SELECT $1",
            ]
        );
    }

    #[test]
    fn concurrent_index_names_are_read_as_postgresql_stores_them() {
        let sql = "ALTER TABLE t ADD COLUMN IF NOT EXISTS a uuid;\n\
                   -- the index, café; /* not closed here\n\
                   /* a /* nested é */ comment */ CREATE INDEX CONCURRENTLY IF NOT EXISTS Activity_Idx ON t (a);\n\
                   create unique index concurrently \"Quoted\"\"Name\" on t (b);\n\
                   CREATE INDEX CONCURRENTLY ON t (c);\n\
                   CREATE INDEX plain_idx ON t (d);";
        assert_eq!(
            concurrent_index_names(sql),
            vec!["activity_idx".to_string(), "Quoted\"Name".to_string()]
        );
    }

    #[test]
    fn pauses_grow_from_half_the_lock_timeout() {
        let p = Policy {
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
