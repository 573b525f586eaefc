//! The floor of "one pending migration over the fleet": what a bare tokio-postgres client does
//! for the same result, with nothing of the product around it (no plan, no tenant lock, no
//! registry or ledger writes, no report). For each tenant, at the same per-server concurrency
//! as migrate-all's budgets: connect to its database (as the server's superuser, over TCP),
//! run V4's statements one by one (as the product runs a migration outside a transaction),
//! insert V4's history row as refinery writes it, close.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use e2e::database_name;
use futures_util::{stream, StreamExt, TryStreamExt};

/// V4's statements, as the product splits them (its comment lines dropped).
fn statements() -> Vec<String> {
    let sql = include_str!("../../migrations_tenant/V4__activity_log_actor.sql");
    let code: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// V4's history row as the product wrote it in a tenant: (name, applied_on, checksum).
pub async fn history_row(slug: &str) -> Result<(String, String, String)> {
    let row = e2e::connect_tenant(slug)
        .await
        .query_one(
            "SELECT name, applied_on, checksum FROM refinery_schema_history WHERE version = 4",
            &[],
        )
        .await
        .with_context(|| format!("V4's history row in {slug}"))?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// Where one tenant's time went in the floor (ms): the connection, V4's statements and its
/// history row, the close (until the connection's task ended: the backend may still be
/// exiting, which the product waits for).
pub struct Steps {
    pub connect: f64,
    pub work: f64,
    pub close: f64,
}

/// Applies V4 to every tenant of `placed` ((slug, server)) at `budgets` tenants at once per
/// server, all servers at once; returns how long it took, and each tenant's steps.
pub async fn measure(
    placed: &[(String, String)],
    budgets: &[(String, i64)],
    history: &(String, String, String),
) -> Result<(Duration, Vec<Steps>)> {
    let statements = statements();
    let started = Instant::now();
    let per_server = budgets.iter().map(|(server, budget)| {
        let mine: Vec<&String> = placed
            .iter()
            .filter(|(_, s)| s == server)
            .map(|(slug, _)| slug)
            .collect();
        let statements = &statements;
        async move {
            stream::iter(mine)
                .map(|slug| migrate_one(server, slug, statements, history))
                .buffer_unordered((*budget).max(1) as usize)
                .try_collect::<Vec<Steps>>()
                .await
        }
    });
    let steps = futures_util::future::try_join_all(per_server).await?;
    Ok((started.elapsed(), steps.into_iter().flatten().collect()))
}

fn since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

async fn migrate_one(
    server: &str,
    slug: &str,
    statements: &[String],
    (name, applied_on, checksum): &(String, String, String),
) -> Result<Steps> {
    let mut cfg: tokio_postgres::Config = e2e::pg_url_of(server).parse()?;
    cfg.dbname(database_name(slug));
    let step = Instant::now();
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(conn);
    let connect = since(step);
    let step = Instant::now();
    for statement in statements {
        client
            .batch_execute(statement)
            .await
            .with_context(|| format!("V4 in {slug}"))?;
    }
    client
        .execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
             VALUES (4, $1, $2, $3)",
            &[name, applied_on, checksum],
        )
        .await
        .with_context(|| format!("V4's history row in {slug}"))?;
    let work = since(step);
    let step = Instant::now();
    drop(client);
    let _ = conn.await;
    Ok(Steps {
        connect,
        work,
        close: since(step),
    })
}
