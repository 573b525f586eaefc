//! The embedded migrations (refinery) for tenant databases and for the system database.
//!
//! refinery records what it applied in `refinery_schema_history` inside each database and,
//! by default, refuses to run when that history diverges from (or misses) the embedded files:
//! released migrations are immutable, add a new file instead.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use refinery::{Migration, Runner};
use sha2::{Digest, Sha256};
use tokio_postgres::{error::SqlState, SimpleQueryMessage};
use tracing::info;

use crate::{
    db::{Conn, Database, DbError},
    domain::quote_ident,
    locks,
    session::RunFailure,
};

mod tenant {
    refinery::embed_migrations!("../migrations_tenant");
    pub fn runner() -> refinery::Runner {
        migrations::runner()
    }
}

mod system {
    refinery::embed_migrations!("../migrations_system");
    pub fn runner() -> refinery::Runner {
        migrations::runner()
    }
}

/// refinery's history table, in every migrated database.
pub(crate) const HISTORY_TABLE: &str = "refinery_schema_history";

/// A runner for tenant databases: one transaction per migration, divergence and
/// missing-version checks on.
pub(crate) fn tenant_runner() -> Runner {
    tenant::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true)
}

pub(crate) fn system_runner() -> Runner {
    system::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true)
}

/// The embedded tenant migrations, in version order.
pub(crate) fn tenant_migrations() -> Vec<Migration> {
    let mut all = tenant::runner().get_migrations().to_vec();
    all.sort_by_key(|m| m.version());
    all
}

/// The highest embedded tenant migration version.
pub fn latest_tenant_version() -> i64 {
    ExpectedHistory::tenant().latest()
}

/// Applies every pending tenant migration (within `limit`, as the configuration's migration
/// policy says), then checks that the history is exactly the released one (what the
/// registry's fingerprint then vouches for).
pub(crate) async fn migrate_tenant_to_latest(
    db: &Database,
    conn: &mut Conn,
    limit: Duration,
) -> Result<(), DbError> {
    let policy = db.config().migrate_session;
    let (_, outcome) = conn
        .migrate(tenant_runner, &policy, Instant::now() + limit)
        .await?;
    outcome.map_err(|e| run_failure(&e, "tenant migrations failed"))?;
    let history = read_history(conn).await?;
    match ExpectedHistory::tenant().check(&history) {
        HistoryCheck::Current => Ok(()),
        other => Err(DbError::Other(anyhow::anyhow!(
            "the history after migrating does not match the released migrations: {other:?}"
        ))),
    }
}

/// Applies the system migrations this release brings if the registry lacks any: one query
/// when it is current. Runs once per sandbox, on the registry's first use (see
/// `Database::system`), so that a new release's functions never meet an older registry, nor
/// a new deployment a missing one (`conn`: `None`).
pub(crate) async fn bring_registry_current(
    db: &Database,
    conn: Option<&Conn>,
) -> Result<(), DbError> {
    if let Some(conn) = conn {
        let applied: Vec<i64> = read_history(conn)
            .await?
            .iter()
            .map(|h| h.version)
            .collect();
        let missing = system_runner()
            .get_migrations()
            .iter()
            .any(|m| !applied.contains(&i64::from(m.version())));
        if !missing {
            return Ok(());
        }
    }
    let applied = migrate_system(db).await.map_err(|e| match e {
        // The registry is busy (its tables held by other sessions): retry the request.
        DbError::LockTimeout(m) | DbError::TimedOut(m) => DbError::Unavailable(m),
        other => other,
    })?;
    info!(
        ?applied,
        "brought the registry to this release's system migrations"
    );
    Ok(())
}

/// A refinery failure as what it is: a connection lost on the way is *unavailable* (the
/// migrations did not fail: retry later, never undo anything over it); anything else is the
/// migrations' own failure.
pub(crate) fn refinery_failure(e: &refinery::Error, what: &str) -> DbError {
    let pg = crate::session::pg_error(e);
    if let Some(pg) = pg {
        if crate::db::is_unavailable(pg) {
            return DbError::Unavailable(format!("{what}: {}", crate::db::error_chain(pg)));
        }
    }
    // refinery says only "db error": the server's own message (it names objects, never hosts).
    match pg.and_then(tokio_postgres::Error::as_db_error) {
        Some(d) => DbError::Other(anyhow::anyhow!(
            "{what}: {e}: {} ({})",
            d.message(),
            d.code().code()
        )),
        None => DbError::Other(anyhow::anyhow!("{what}: {e}")),
    }
}

/// How a migration run ended, as a [`DbError`]: a lock that stayed taken is
/// [`DbError::LockTimeout`] (busy: try later), a lost connection unavailable, anything else
/// the migrations' own failure.
pub(crate) fn run_failure(e: &RunFailure, what: &str) -> DbError {
    match e {
        RunFailure::Database(pg) => {
            if crate::db::is_unavailable(pg) {
                DbError::Unavailable(crate::db::error_chain(pg))
            } else {
                DbError::Other(anyhow::anyhow!("{what}: {pg}"))
            }
        }
        RunFailure::LockTimeout { attempts, last } => {
            DbError::LockTimeout(lock_timeout_message(*attempts, last))
        }
        RunFailure::Refinery(e) => refinery_failure(e, what),
    }
}

/// What a migration that kept waiting for a lock says: which one, and how many attempts.
pub(crate) fn lock_timeout_message(attempts: u32, last: &refinery::Error) -> String {
    let which = match last.kind() {
        refinery::error::Kind::Connection(msg, _) => msg
            .split_whitespace()
            .find(|w| w.starts_with('V'))
            .map(|v| format!("migration {v}"))
            .unwrap_or_else(|| "a migration".into()),
        _ => "a migration".into(),
    };
    format!(
        "{which} gave up waiting for a lock on the tenant's tables ({attempts} attempt{}, each \
         within the lock timeout); the next run tries again",
        if attempts == 1 { "" } else { "s" }
    )
}

/// Creates the system database when it does not exist, then brings it to the latest system
/// migration under a lock, so that concurrent callers never run refinery side by side. The
/// lock is held on the maintenance database's connection (every caller takes it there), so
/// that refinery has the system database's connection to itself.
pub async fn migrate_system(db: &Database) -> Result<Vec<i64>, DbError> {
    let config = db.config();
    let system_db = config.system_db.as_str();
    let admin = db.connect(&db.maintenance_db().await?).await?;
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&system_db],
        )
        .await?
        .is_some();
    if !exists {
        match admin
            .long()
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(system_db)))
            .await
        {
            Ok(()) => info!(database = %system_db, "created the system database"),
            // Somebody else created it in the meantime (a creation racing ours fails on the
            // catalog's unique index instead).
            Err(e)
                if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                    || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(e),
        }
    }
    let Some(lock) =
        locks::acquire(&admin, locks::Lock::SystemMigrations, config.lock_timeout).await?
    else {
        return Err(DbError::Other(anyhow::anyhow!(
            "another process has been migrating the system database for {}s",
            config.lock_timeout.as_secs()
        )));
    };
    let result = async {
        let mut client = db.connect(system_db).await?;
        client
            .migrate(
                system_runner,
                &config.migrate_session,
                Instant::now() + config.migrate_tenant_timeout,
            )
            .await
    }
    .await;
    lock.release().await;
    let (applied, outcome) = result?;
    outcome.map_err(|e| run_failure(&e, "system migrations failed"))?;
    if !applied.is_empty() {
        info!(?applied, "system database migrated");
    }
    Ok(applied)
}

/// One row of refinery's history table, read as text so that a damaged row is reported
/// rather than trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HistoryRow {
    pub version: i64,
    pub name: String,
    pub checksum: String,
}

/// The history, in version order, in one round trip (the simple query protocol: no statement
/// to prepare first). A database without the history table has applied nothing.
pub(crate) async fn read_history(conn: &Conn) -> Result<Vec<HistoryRow>, DbError> {
    let messages = match conn
        .simple_query(&format!(
            "SELECT version::bigint, name::text, checksum::text FROM {HISTORY_TABLE} ORDER BY version"
        ))
        .await
    {
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => return Ok(Vec::new()),
        other => other?,
    };
    Ok(history_rows(&messages))
}

/// The rows of a history query's answer.
pub(crate) fn history_rows(messages: &[SimpleQueryMessage]) -> Vec<HistoryRow> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(HistoryRow {
                // A version that is not a number cannot match a released one: -1 reports it.
                version: r.get(0).and_then(|v| v.parse().ok()).unwrap_or(-1),
                name: r.get(1).unwrap_or_default().to_owned(),
                checksum: r.get(2).unwrap_or_default().to_owned(),
            }),
            _ => None,
        })
        .collect()
}

/// The embedded tenant migrations as a history would record them, and their fingerprint.
pub(crate) struct ExpectedHistory {
    rows: Vec<HistoryRow>,
    fingerprint: String,
}

/// How a tenant's history compares with the embedded migrations.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HistoryCheck {
    Current,
    Pending(Vec<i64>),
    Diverged(String),
    /// Every released migration applied as released, and these newer ones besides: a newer
    /// release's (a deploy in progress, its run and an older one's side by side).
    Ahead(Vec<i64>),
}

impl ExpectedHistory {
    /// The embedded tenant migrations, built once per process.
    pub fn tenant() -> &'static ExpectedHistory {
        static TENANT: OnceLock<ExpectedHistory> = OnceLock::new();
        TENANT.get_or_init(|| {
            ExpectedHistory::from_rows(
                tenant_migrations()
                    .iter()
                    .map(|m| HistoryRow {
                        version: i64::from(m.version()),
                        name: m.name().to_owned(),
                        checksum: m.checksum().to_string(),
                    })
                    .collect(),
            )
        })
    }

    fn from_rows(rows: Vec<HistoryRow>) -> Self {
        let mut hasher = Sha256::new();
        for r in &rows {
            hasher.update(format!("{}\t{}\t{}\n", r.version, r.name, r.checksum).as_bytes());
        }
        let fingerprint = hasher.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ExpectedHistory { rows, fingerprint }
    }

    /// The newest version.
    pub fn latest(&self) -> i64 {
        self.rows.iter().map(|r| r.version).max().unwrap_or(0)
    }

    /// Names this exact set of migrations (versions, names, checksums): 16 hex digits of a
    /// SHA-256. A database whose history checks [`HistoryCheck::Current`] has it; the
    /// registry records it, and the tenant template is named after it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn check(&self, applied: &[HistoryRow]) -> HistoryCheck {
        let latest = self.latest();
        let newer: Vec<i64> = applied
            .iter()
            .map(|r| r.version)
            .filter(|v| *v > latest)
            .collect();
        for row in applied {
            match self.rows.iter().find(|e| e.version == row.version) {
                None if row.version > latest => {}
                None => {
                    return HistoryCheck::Diverged(format!(
                        "applied migration V{} ({}) is not among the released migrations",
                        row.version, row.name
                    ))
                }
                Some(e) if e.name != row.name || e.checksum != row.checksum => {
                    return HistoryCheck::Diverged(format!(
                        "applied migration V{}__{} differs from the released V{}__{} (a released migration was edited)",
                        row.version, row.name, e.version, e.name
                    ))
                }
                Some(_) => {}
            }
        }
        let pending: Vec<i64> = self
            .rows
            .iter()
            .map(|e| e.version)
            .filter(|v| !applied.iter().any(|a| a.version == *v))
            .collect();
        if !newer.is_empty() {
            return if pending.is_empty() {
                HistoryCheck::Ahead(newer)
            } else {
                HistoryCheck::Diverged(format!(
                    "migrations {newer:?} are applied, newer than this release's, but not \
                     {pending:?}"
                ))
            };
        }
        if pending.is_empty() {
            HistoryCheck::Current
        } else {
            HistoryCheck::Pending(pending)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: i64, name: &str, checksum: &str) -> HistoryRow {
        HistoryRow {
            version: v,
            name: name.into(),
            checksum: checksum.into(),
        }
    }

    #[test]
    fn history_check_rules() {
        let expected = ExpectedHistory::from_rows(vec![
            row(1, "a", "11"),
            row(2, "b", "22"),
            row(3, "c", "33"),
        ]);
        assert_eq!(expected.check(&[]), HistoryCheck::Pending(vec![1, 2, 3]));
        assert_eq!(
            expected.check(&[row(1, "a", "11"), row(2, "b", "22")]),
            HistoryCheck::Pending(vec![3])
        );
        assert_eq!(
            expected.check(&[row(1, "a", "11"), row(2, "b", "22"), row(3, "c", "33")]),
            HistoryCheck::Current
        );
        assert!(
            matches!(expected.check(&[row(1, "a", "99")]), HistoryCheck::Diverged(m) if m.contains("edited"))
        );
        assert!(matches!(
            expected.check(&[row(1, "x", "11")]),
            HistoryCheck::Diverged(_)
        ));
        // A newer release's migrations on top of every released one: ahead, not diverged.
        let all = [row(1, "a", "11"), row(2, "b", "22"), row(3, "c", "33")];
        assert_eq!(
            expected.check(&[&all[..], &[row(4, "d", "44"), row(5, "e", "55")]].concat()),
            HistoryCheck::Ahead(vec![4, 5])
        );
        assert!(
            matches!(expected.check(&[row(7, "z", "77")]), HistoryCheck::Diverged(m) if m.contains("[7]")),
            "newer ones without every released one"
        );
        assert!(matches!(
            expected.check(&[row(1, "a", "11"), row(9, "z", "99"), row(3, "c", "33")]),
            HistoryCheck::Diverged(_)
        ));
    }

    #[test]
    fn the_fingerprint_names_the_exact_migrations() {
        let base = ExpectedHistory::from_rows(vec![row(1, "a", "11"), row(2, "b", "22")]);
        let fp = base.fingerprint();
        assert_eq!(fp.len(), 16);
        assert!(fp
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(fp, base.fingerprint(), "stable");
        let edited = ExpectedHistory::from_rows(vec![row(1, "a", "11"), row(2, "b", "23")]);
        let added = ExpectedHistory::from_rows(vec![
            row(1, "a", "11"),
            row(2, "b", "22"),
            row(3, "c", "33"),
        ]);
        assert_ne!(fp, edited.fingerprint());
        assert_ne!(fp, added.fingerprint());
    }

    #[test]
    fn tenant_migrations_are_embedded_in_order() {
        let names: Vec<(i64, String)> = tenant_migrations()
            .iter()
            .map(|m| (i64::from(m.version()), m.name().to_owned()))
            .collect();
        assert!(names.len() >= 2, "{names:?}");
        assert_eq!(names[0], (1, "create_settings".to_owned()));
        assert_eq!(names[1], (2, "create_activity_log".to_owned()));
        assert_eq!(latest_tenant_version(), names.last().unwrap().0);
    }

    #[test]
    fn a_connection_lost_during_migrations_is_unavailable_not_a_failed_migration() {
        use refinery::error::WrapMigrationError;
        let lost: refinery::Error = Err::<(), _>(tokio_postgres::Error::__private_api_timeout())
            .migration_err("error applying migration V3__x", None)
            .unwrap_err();
        assert!(refinery_failure(&lost, "tenant migrations failed").is_unavailable());
        let failed: refinery::Error = Err::<(), _>(std::io::Error::other("syntax error"))
            .migration_err("error applying migration V3__x", None)
            .unwrap_err();
        assert!(!refinery_failure(&failed, "tenant migrations failed").is_unavailable());
    }
}
