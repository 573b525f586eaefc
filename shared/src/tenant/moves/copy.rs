//! What a copy-mode move does inside the tenant's database: the tables it copies (in the order
//! their foreign keys need), the copy itself (`COPY … TO STDOUT` streamed into
//! `COPY … FROM STDIN`, binary, in one target transaction that empties the tables first, so a
//! repeated copy replaces a partial one), the sequences, and the proof that both sides hold
//! the same rows.
//!
//! The target's plain indexes (those no constraint needs) are dropped before the rows go in
//! and built after, in the same transaction, as `pg_restore` builds them after its data.
//!
//! Both connections are the servers' admins', opened to the tenant's database (the admin owns
//! every object there; the tenant's login owns nothing). The tables are read from the
//! target's catalog, which the target's template made from the same migrations: a table only
//! one side has fails the move before anything is copied.

use std::{collections::BTreeMap, time::Instant};

use futures_util::{pin_mut, SinkExt, TryStreamExt};
use tokio_postgres::Client;

use crate::{
    domain::quote_ident,
    pg::{Conn, DbError},
};

/// A table of the tenant's database: its qualified name and the columns a copy carries (no
/// generated column: `COPY FROM` refuses them), with their types (a domain's base type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    pub name: String,
    pub columns: Vec<String>,
    pub types: Vec<String>,
}

impl Table {
    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The ordinary tables of a tenant database (not the catalogs), parents before the tables
/// whose foreign keys point at them.
pub(crate) async fn tables(conn: &Conn) -> Result<Vec<Table>, DbError> {
    let rows = conn
        .query(
            "SELECT c.oid::bigint AS oid, \
               quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name, \
               array(SELECT a.attname::text FROM pg_attribute a \
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                       AND a.attgenerated = '' ORDER BY a.attnum) AS columns, \
               array(SELECT coalesce(b.typname, ty.typname)::text FROM pg_attribute a \
                     JOIN pg_type ty ON ty.oid = a.atttypid \
                     LEFT JOIN pg_type b ON ty.typtype = 'd' AND b.oid = ty.typbasetype \
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                       AND a.attgenerated = '' ORDER BY a.attnum) AS types, \
               array(SELECT f.confrelid::bigint FROM pg_constraint f \
                     WHERE f.conrelid = c.oid AND f.contype = 'f' AND f.confrelid <> c.oid) AS parents \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
             ORDER BY name",
            &[],
        )
        .await?;
    let mut found = BTreeMap::new();
    for row in &rows {
        let oid: i64 = row.try_get("oid")?;
        let table = Table {
            name: row.try_get("name")?,
            columns: row.try_get("columns")?,
            types: row.try_get("types")?,
        };
        let parents: Vec<i64> = row.try_get("parents")?;
        found.insert(oid, (table, parents));
    }
    Ok(in_dependency_order(found))
}

/// Kahn's order over the foreign keys; a cycle (possible only with deferrable keys) keeps the
/// rest in name order.
fn in_dependency_order(mut left: BTreeMap<i64, (Table, Vec<i64>)>) -> Vec<Table> {
    let mut ordered = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let ready: Vec<i64> = left
            .iter()
            .filter(|(_, (_, parents))| parents.iter().all(|p| !left.contains_key(p)))
            .map(|(oid, _)| *oid)
            .collect();
        let take = if ready.is_empty() {
            left.keys().copied().take(1).collect()
        } else {
            ready
        };
        for oid in take {
            if let Some((table, _)) = left.remove(&oid) {
                ordered.push(table);
            }
        }
    }
    ordered
}

/// What a copy moved.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Copied {
    pub tables: i64,
    pub rows: i64,
    pub bytes: i64,
}

/// Empties the target's tables and copies every table from the source, in one target
/// transaction, by `until`: all or nothing. `None` when the time ran out (cancelled on both
/// servers; the target's transaction rolled back).
pub(crate) async fn copy_tables(
    source: &mut Conn,
    target: &mut Conn,
    tables: &[Table],
    until: Instant,
) -> Result<Option<Copied>, DbError> {
    // The sessions' statement timeout is the query-sized default: a copy may take the whole
    // time left (the client cancels it at `until` all the same).
    for conn in [&*source, &*target] {
        time_left(conn, until).await?;
    }
    let copied = source
        .exclusive(until, async |src: &mut Client| {
            target
                .exclusive(until, async |dst: &mut Client| {
                    copy_all(src, dst, tables).await
                })
                .await
        })
        .await?;
    match copied {
        Some(Ok(Some(done))) => Ok(Some(done?)),
        Some(Ok(None)) | None => Ok(None),
        Some(Err(e)) => Err(e),
    }
}

/// The indexes of the tenant's tables that no constraint needs (`CREATE INDEX` statements):
/// a copy drops them first and builds them after the rows are in, as `pg_restore` does, which
/// is faster than maintaining each for every row.
const PLAIN_INDEXES: &str =
    "SELECT quote_ident(n.nspname) || '.' || quote_ident(ic.relname) AS name, \
       pg_get_indexdef(i.indexrelid) AS def \
     FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
       JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND n.nspname NOT LIKE 'pg\\_toast%' \
       AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) \
     ORDER BY 1";

async fn copy_all(src: &Client, dst: &mut Client, tables: &[Table]) -> Result<Copied, DbError> {
    let tx = dst.transaction().await?;
    if !tables.is_empty() {
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        tx.batch_execute(&format!("TRUNCATE {}", names.join(", ")))
            .await?;
    }
    // Built again below, in this transaction: a copy that fails leaves them as they were.
    let mut indexes = Vec::new();
    for row in tx.query(PLAIN_INDEXES, &[]).await? {
        let (name, def): (String, String) = (row.try_get("name")?, row.try_get("def")?);
        tx.batch_execute(&format!("DROP INDEX {name}")).await?;
        indexes.push(def);
    }
    // The source reads one snapshot for every table, as `pg_dump` does.
    src.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let mut copied = Copied::default();
    for table in tables {
        let cols = table.column_list();
        let out = src
            .copy_out(&format!(
                "COPY {} ({cols}) TO STDOUT (FORMAT binary)",
                table.name
            ))
            .await?;
        // FREEZE (the tables were emptied in this transaction): the rows go in frozen, their
        // hint bits set, so the check that reads every row in the fence does not set them.
        let sink = tx
            .copy_in(&format!(
                "COPY {} ({cols}) FROM STDIN (FORMAT binary, FREEZE)",
                table.name
            ))
            .await?;
        pin_mut!(out);
        pin_mut!(sink);
        while let Some(chunk) = out.try_next().await? {
            copied.bytes += i64::try_from(chunk.len()).unwrap_or(i64::MAX);
            // Buffered, not flushed per row (the server sends a message per row): the sink
            // writes out as its buffer fills, and `finish` flushes the rest.
            sink.feed(chunk).await?;
        }
        copied.rows += i64::try_from(sink.as_mut().finish().await?).unwrap_or(i64::MAX);
        copied.tables += 1;
    }
    src.batch_execute("COMMIT").await?;
    for def in &indexes {
        tx.batch_execute(def).await?;
    }
    tx.commit().await?;
    Ok(copied)
}

/// Sets the session's statement timeout to the time left until `until`.
pub(crate) async fn time_left(conn: &Conn, until: Instant) -> Result<(), DbError> {
    let left = until.saturating_duration_since(Instant::now()).as_millis();
    conn.batch_execute(&format!("SET statement_timeout = {}", left.max(1)))
        .await
}

/// Each sequence's `last_value` and `is_called` on the source, set on the target.
pub(crate) async fn copy_sequences(source: &Conn, target: &Conn) -> Result<usize, DbError> {
    let names = source
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             ORDER BY 1",
            &[],
        )
        .await?;
    for row in &names {
        let name: String = row.try_get("name")?;
        let value = source
            .query_one(&format!("SELECT last_value, is_called FROM {name}"), &[])
            .await?;
        let (last, called): (i64, bool) = (value.try_get(0)?, value.try_get(1)?);
        target
            .query_one(
                "SELECT setval($1::regclass, $2, $3)",
                &[&name, &last, &called],
            )
            .await?;
    }
    Ok(names.len())
}

/// A table's row count and checksum on both sides: the sum of its rows' 64-bit hashes, as
/// an exact numeric. Equal on both sides when both hold the same rows, whatever their
/// physical order, without sorting them (the copy's own correctness is what it checks: the
/// tenant's login, fenced, changes nothing meanwhile). Both sides run at once.
pub(crate) async fn checksums(
    source: &Conn,
    target: &Conn,
    table: &Table,
) -> Result<[(i64, String); 2], DbError> {
    let (theirs, ours) = tokio::try_join!(checksum(source, table), checksum(target, table))?;
    Ok([theirs, ours])
}

async fn checksum(conn: &Conn, table: &Table) -> Result<(i64, String), DbError> {
    let row = conn
        .long()
        .query_one(
            &format!(
                "SELECT count(*) AS n, coalesce(sum({}), 0)::text AS sum FROM {}",
                row_hash(table),
                table.name
            ),
            &[],
        )
        .await?;
    Ok((row.try_get("n")?, row.try_get("sum")?))
}

/// A row's hash: its columns' hashes, each by its type's own hash function (or of its text,
/// for a type this list lacks), seeded with the column's position so that values swapped
/// between columns change it, combined by `#` (xor). Twice as fast as `hash_record_extended`,
/// which builds a record of every row first; a move's fence waits for it.
fn row_hash(table: &Table) -> String {
    let hashes: Vec<String> = table
        .columns
        .iter()
        .zip(&table.types)
        .enumerate()
        .map(|(i, (column, ty))| {
            let c = quote_ident(column);
            let seed = i + 1;
            let hashed = match ty.as_str() {
                "uuid" => format!("uuid_hash_extended({c}, {seed})"),
                "text" | "varchar" => format!("hashtextextended({c}, {seed})"),
                "int2" => format!("hashint2extended({c}, {seed})"),
                "int4" => format!("hashint4extended({c}, {seed})"),
                "int8" => format!("hashint8extended({c}, {seed})"),
                "jsonb" => format!("jsonb_hash_extended({c}, {seed})"),
                "timestamp" => format!("timestamp_hash_extended({c}, {seed})"),
                "numeric" => format!("hash_numeric_extended({c}, {seed})"),
                _ => format!("hashtextextended({c}::text, {seed})"),
            };
            format!("coalesce({hashed}, {seed})")
        })
        .collect();
    if hashes.is_empty() {
        "0::bigint".into()
    } else {
        hashes.join(" # ")
    }
}

/// The highest migration a tenant database records (refinery's history), 0 with none.
pub(crate) async fn schema_version(conn: &Conn) -> Result<i64, DbError> {
    let row = conn
        .query_one(
            "SELECT coalesce((SELECT max(version)::bigint FROM refinery_schema_history), 0) AS v",
            &[],
        )
        .await?;
    Ok(row.try_get("v")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> Table {
        Table {
            name: name.into(),
            columns: vec!["id".into()],
            types: vec!["uuid".into()],
        }
    }

    #[test]
    fn a_row_hash_seeds_each_column_by_its_place_and_hashes_by_its_type() {
        let t = Table {
            name: "t".into(),
            columns: vec!["id".into(), "Note".into(), "at".into()],
            types: vec!["uuid".into(), "varchar".into(), "timestamptz".into()],
        };
        assert_eq!(
            row_hash(&t),
            "coalesce(uuid_hash_extended(\"id\", 1), 1) # \
             coalesce(hashtextextended(\"Note\", 2), 2) # \
             coalesce(hashtextextended(\"at\"::text, 3), 3)"
        );
        let empty = Table {
            name: "e".into(),
            columns: vec![],
            types: vec![],
        };
        assert_eq!(row_hash(&empty), "0::bigint");
    }

    #[test]
    fn parents_come_before_the_tables_that_point_at_them() {
        let mut m = BTreeMap::new();
        m.insert(1, (table("child"), vec![3]));
        m.insert(2, (table("alone"), vec![]));
        m.insert(3, (table("parent"), vec![4]));
        m.insert(4, (table("grandparent"), vec![]));
        let names: Vec<String> = in_dependency_order(m).into_iter().map(|t| t.name).collect();
        let at = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert!(at("grandparent") < at("parent") && at("parent") < at("child"));
        assert_eq!(names.len(), 4);
    }

    #[test]
    fn a_cycle_still_orders_every_table() {
        let mut m = BTreeMap::new();
        m.insert(1, (table("a"), vec![2]));
        m.insert(2, (table("b"), vec![1]));
        assert_eq!(in_dependency_order(m).len(), 2);
    }
}
