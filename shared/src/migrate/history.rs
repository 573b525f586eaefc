//! refinery's history table in a migrated database, and how a tenant's history compares with
//! the embedded migrations (current, pending, ahead, or diverged) with the fingerprint the
//! registry keeps for it.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use tokio_postgres::{error::SqlState, SimpleQueryMessage};

use super::embedded::{tenant_migrations, HISTORY_TABLE};
use crate::pg::{Conn, DbError};

/// The highest embedded tenant migration version.
pub fn latest_tenant_version() -> i64 {
    ExpectedHistory::tenant().latest()
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
}
