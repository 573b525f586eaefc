//! Proof of ownership: what lets the product touch a database it finds by name.
//!
//! A database is made with an OID chosen beforehand (`CREATE DATABASE ... OID = n`, PostgreSQL
//! 15 and later; any role with `CREATEDB` may choose an OID from 16384 up), and that OID is
//! committed in the registry *before* the database exists. A database is therefore ours exactly
//! when its name and its OID are what the registry recorded: there is no window in which a
//! database of ours exists without its proof. A database that fails the test (a squatter made
//! by hand, one dropped and made again) is never adopted, altered nor dropped: it is reported.
//!
//! The OID is random in the upper half of the OID space; PostgreSQL's own counter hands out
//! OIDs from 16384 up, one object at a time, so a collision needs both a clash of names and of
//! 2^31 numbers. A collision with an existing database's OID fails the `CREATE` (SQLSTATE
//! 22023) and the operation is undone like any other failure.

use tracing::info;

use super::{Conn, DbError};
use crate::domain::quote_ident;

/// OIDs this product chooses: the upper half of the 32-bit space.
const FIRST_OID: i64 = 1 << 31;
const LAST_OID: i64 = (1 << 32) - 2;

/// A fresh OID for a database this product is about to make.
pub(crate) fn new_oid() -> i64 {
    rand::random_range(FIRST_OID..=LAST_OID)
}

/// `CREATE DATABASE name OID = oid TEMPLATE template ALLOW_CONNECTIONS false`.
///
/// A new database is closed: `CREATE DATABASE` does not copy the template's ACL, so it starts
/// with `PUBLIC` allowed to connect, and any login of the server could enter it and stay
/// (a later `REVOKE` ends no session). Closed, nobody can (not even a superuser) until the
/// transaction that revokes `PUBLIC`'s privileges also opens it ([`open_sql`]).
pub(crate) fn create_sql(name: &str, oid: i64, template: &str) -> String {
    format!(
        "CREATE DATABASE {} OID = {oid} TEMPLATE {} ALLOW_CONNECTIONS false",
        quote_ident(name),
        quote_ident(template)
    )
}

/// Statements that take `PUBLIC`'s privileges on a database of ours away, then open it: run in
/// one transaction, the database is never open to `PUBLIC`. Only its owner (the admin that
/// made it) and superusers may connect afterwards, and whoever is granted `CONNECT` in the
/// same transaction (a tenant's login). Safe to repeat.
pub(crate) fn open_sql(name: &str) -> String {
    let d = quote_ident(name);
    format!(
        "REVOKE ALL ON DATABASE {d} FROM PUBLIC; ALTER DATABASE {d} WITH ALLOW_CONNECTIONS true"
    )
}

/// Opens a database of ours that [`create_sql`] made (see [`open_sql`]).
pub(crate) async fn open(conn: &Conn, name: &str) -> Result<(), DbError> {
    conn.locking()
        .batch_execute(&format!("BEGIN; {}; COMMIT", open_sql(name)))
        .await
}

/// A database of a given name, as `pg_database` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub oid: i64,
    /// Left invalid by an interrupted `DROP DATABASE` (`datconnlimit = -2`).
    pub invalid: bool,
    pub allows_connections: bool,
}

impl Found {
    /// True when this is the database whose OID the registry recorded.
    pub fn is(&self, recorded: Option<i64>) -> bool {
        recorded == Some(self.oid)
    }
}

pub(crate) async fn find(conn: &Conn, name: &str) -> Result<Option<Found>, DbError> {
    let row = conn
        .query_opt(
            "SELECT oid::bigint AS oid, datconnlimit = -2 AS invalid, datallowconn \
             FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Found {
        oid: row.try_get("oid")?,
        invalid: row.try_get("invalid")?,
        allows_connections: row.try_get("datallowconn")?,
    }))
}

/// What [`drop_if_ours`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropOutcome {
    /// Ours, and dropped.
    Dropped,
    /// No database of that name.
    Absent,
    /// A database of that name that is not ours: left untouched.
    NotOurs,
}

/// Drops the database `name` if it is the one with the recorded OID (`WITH (FORCE)`: our
/// own sessions in it, if any, are ended). Between the check and the drop nobody but an
/// administrator could swap the database; the check is what a product can do.
pub(crate) async fn drop_if_ours(
    conn: &Conn,
    name: &str,
    recorded: Option<i64>,
) -> Result<DropOutcome, DbError> {
    match find(conn, name).await? {
        None => Ok(DropOutcome::Absent),
        Some(found) if !found.is(recorded) => Ok(DropOutcome::NotOurs),
        Some(_) => {
            conn.long()
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(name)
                ))
                .await?;
            info!(database = %name, "dropped a database this registry made");
            Ok(DropOutcome::Dropped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_oids_are_in_the_upper_half_and_fit_an_oid() {
        for _ in 0..1000 {
            let oid = new_oid();
            assert!((FIRST_OID..=LAST_OID).contains(&oid), "{oid}");
            assert!(u32::try_from(oid).is_ok());
        }
    }

    #[test]
    fn only_the_recorded_oid_is_ours() {
        let found = Found {
            oid: 3_000_000_001,
            invalid: false,
            allows_connections: true,
        };
        assert!(found.is(Some(3_000_000_001)));
        assert!(!found.is(Some(3_000_000_002)));
        assert!(!found.is(None), "no proof recorded: not ours");
        assert_eq!(
            create_sql("dbtools_tenant_a\"b", 7, "t"),
            "CREATE DATABASE \"dbtools_tenant_a\"\"b\" OID = 7 TEMPLATE \"t\" \
             ALLOW_CONNECTIONS false"
        );
        assert_eq!(
            open_sql("d"),
            "REVOKE ALL ON DATABASE \"d\" FROM PUBLIC; ALTER DATABASE \"d\" WITH ALLOW_CONNECTIONS true"
        );
    }
}
