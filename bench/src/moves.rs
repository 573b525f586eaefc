//! Tenant moves: how long a move refuses the tenant's writes (its fence, as the move reports
//! it) against the tenant's size, in each mode, beside a `pg_dump | pg_restore` of the same
//! database between the same two servers (the downtime a user takes without the product), and
//! the copy's throughput beside that baseline's (the database's size on disk over each one's
//! time). Copy moves go `primary` → `secondary`, online moves `secondary` → `primary` (only
//! `primary`'s admin may subscribe). Sizes: `BENCH_MOVE_ROWS` (`10000,100000,1000000` rows of
//! `activity_log`).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use e2e::{database_name, json};
use serde_json::Value;

use crate::{
    progress::step,
    table::{ms, Row},
};

/// The sizes measured.
pub fn sizes() -> Result<Vec<usize>> {
    let raw = std::env::var("BENCH_MOVE_ROWS").unwrap_or_else(|_| "10000,100000,1000000".into());
    raw.split(',')
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("BENCH_MOVE_ROWS: {s:?} is not a number"))
        })
        .collect()
}

/// One size in one mode: the move's fence and whole time, the baseline's time, and the
/// database's size.
struct Measured {
    rows: usize,
    mode: &'static str,
    fence_ms: f64,
    total_ms: f64,
    dump_ms: f64,
    mib: f64,
}

pub async fn measure(sizes: &[usize]) -> Result<Vec<Row>> {
    let mut measured = Vec::new();
    for &rows in sizes {
        for mode in ["copy", "online"] {
            step(&format!(
                "a tenant of {rows} rows moved ({mode}), and dumped and restored"
            ));
            measured.push(one(rows, mode).await?);
        }
    }
    let mut out = Vec::new();
    for m in &measured {
        if m.mode == "online" {
            out.push(Row::goal(
                &format!("move online, {} rows: writes refused", m.rows),
                ms(m.fence_ms),
                format!(
                    "pg_dump | pg_restore {} ({:.2}x)",
                    ms(m.dump_ms),
                    m.fence_ms / m.dump_ms
                ),
                "< pg_dump | pg_restore",
                m.fence_ms < m.dump_ms,
            ));
            out.push(Row::info(
                &format!("move online, {} rows: the whole move", m.rows),
                format!("{} (writes go on but for the fence)", ms(m.total_ms)),
                format!("pg_dump | pg_restore {}", ms(m.dump_ms)),
            ));
            continue;
        }
        out.push(Row::goal(
            &format!("move by copy, {} rows: writes refused", m.rows),
            ms(m.fence_ms),
            format!(
                "pg_dump | pg_restore {} ({:.2}x)",
                ms(m.dump_ms),
                m.fence_ms / m.dump_ms
            ),
            "< pg_dump | pg_restore",
            m.fence_ms < m.dump_ms,
        ));
        out.push(Row::info(
            &format!("move by copy, {} rows: throughput", m.rows),
            format!(
                "{:.1} MB/s ({:.1} MiB)",
                m.mib * 1.048_576 / (m.fence_ms / 1000.0),
                m.mib
            ),
            format!(
                "pg_dump | pg_restore {:.1} MB/s",
                m.mib * 1.048_576 / (m.dump_ms / 1000.0)
            ),
        ));
    }
    Ok(out)
}

async fn one(rows: usize, mode: &'static str) -> Result<Measured> {
    let slug = format!("bench_move_{mode}_{rows}");
    let name = database_name(&slug);
    let (from, to) = match mode {
        "online" => ("secondary", "primary"),
        _ => ("primary", "secondary"),
    };
    let made = e2e::post_tenant(&json!({"name": "Move bench", "slug": slug, "server": from})).await;
    ensure!(made.status.as_u16() == 201, "create {slug}: {}", made.text);
    let source = e2e::connect_on(from, &name).await;
    source
        .batch_execute(&format!(
            "INSERT INTO activity_log (action, entity_type, entity_id, details) \
             SELECT 'seed', 'order', gen_random_uuid(), \
               jsonb_build_object('n', n, 'note', repeat('x', 80)) \
             FROM generate_series(1, {rows}) n; \
             INSERT INTO settings (key, value) VALUES ('plan', '\"gold\"'); ANALYZE"
        ))
        .await
        .context("seed the tenant")?;
    let bytes: i64 = source
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0);
    drop(source);
    let dump_ms = dump_and_restore(&name, from, to).await?;

    let started = e2e::request(
        reqwest::Method::POST,
        &format!("/api/tenants/{slug}/move"),
        Some(json!({"to": to, "mode": mode}).to_string().into_bytes()),
    )
    .await;
    ensure!(
        started.status.as_u16() == 202,
        "move {slug}: {}",
        started.text
    );
    let id = started.body["id"].as_str().context("a move id")?.to_owned();
    let began = Instant::now();
    let done = wait(&id).await?;
    let total_ms = began.elapsed().as_secs_f64() * 1000.0;
    ensure!(done["state"] == "done", "the move of {slug} ended {done}");
    let fence_ms = done["writes_refused_ms"]
        .as_f64()
        .context("writes_refused_ms")?;
    // Removed through the API: the purge drops the copy the move kept on the source too.
    e2e::delete(&format!("/api/tenants/{slug}")).await;
    e2e::request(
        reqwest::Method::POST,
        &format!("/api/tenants/{slug}/purge"),
        None,
    )
    .await;
    Ok(Measured {
        rows,
        mode,
        fence_ms,
        total_ms,
        dump_ms,
        mib: bytes as f64 / 1_048_576.0,
    })
}

async fn wait(id: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let r = e2e::get(&format!("/api/moves/{id}")).await;
        if r.body["state"] != "running" {
            return Ok(r.body);
        }
        if Instant::now() > deadline {
            bail!("the move {id} did not end within 15 minutes: {}", r.text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `pg_dump -Fc` of the tenant's database on `from` piped into `pg_restore` of a new
/// database on `to`, as a user would move it by hand; its time in ms. The copy is dropped
/// afterwards.
async fn dump_and_restore(name: &str, from: &str, to: &str) -> Result<f64> {
    let target = format!(
        "bench_floor_dump_{}",
        &name[name.len().saturating_sub(20)..]
    );
    let target = target.replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_");
    let admin = e2e::admin_on(to).await;
    for sql in [
        format!("DROP DATABASE IF EXISTS \"{target}\""),
        format!("CREATE DATABASE \"{target}\""),
    ] {
        admin.batch_execute(&sql).await?;
    }
    let bin =
        std::env::var("DBTOOLS_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let (from, to) = (e2e::pg_url_of(from), e2e::pg_url_of(to));
    let to_db = replace_dbname(&to, &target);
    let from_db = replace_dbname(&from, name);
    let script = format!(
        "set -o pipefail; '{bin}/pg_dump' -Fc --no-owner --no-acl -d '{from_db}' \
         | '{bin}/pg_restore' --no-owner --no-acl -d '{to_db}'"
    );
    let started = Instant::now();
    let status = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .status()
        .await
        .context("run pg_dump | pg_restore")?;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    ensure!(status.success(), "pg_dump | pg_restore failed: {status}");
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{target}\" WITH (FORCE)"
        ))
        .await?;
    Ok(took)
}

/// The URL with its database replaced.
fn replace_dbname(url: &str, dbname: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, rest)) => {
            let query = rest
                .split_once('?')
                .map(|(_, q)| format!("?{q}"))
                .unwrap_or_default();
            format!("{base}/{dbname}{query}")
        }
        None => url.to_owned(),
    }
}
