//! Before the first measure: what an earlier run left removed (its tenant databases on every
//! server, its registry rows, a run it left at work), and every function warmed up.

use anyhow::{ensure, Context, Result};
use e2e::json;
use futures_util::{stream, StreamExt, TryStreamExt};
use reqwest::StatusCode;

use crate::fleet::{warm_up_slug, FLEET_PREFIX};

/// Drops the bench's tenant databases (on every server) and registry rows left by an earlier
/// run.
pub async fn cleanup() -> Result<()> {
    for server in e2e::SERVERS {
        let admin = e2e::admin_on(server).await;
        let names: Vec<String> = admin
            .query(
                "SELECT datname FROM pg_database \
                 WHERE datname LIKE 'dbtools\\_tenant\\_bench\\_%' \
                    OR datname LIKE 'bench\\_floor\\_%'",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        drop_databases(server, names).await?;
    }
    // The registry may not exist yet (a fresh stack creates it on its first migrate-all).
    let registry = e2e::registry().await;
    let _ = registry
        .execute(
            "DELETE FROM tenants WHERE slug LIKE 'bench\\_%' OR slug LIKE 'benchlist\\_%' \
             OR slug LIKE 'benchplan\\_%'",
            &[],
        )
        .await;
    // A queued run an interrupted bench left at work would make every run `already_running`.
    let _ = registry
        .execute("DELETE FROM runs WHERE status = 'running'", &[])
        .await;
    Ok(())
}

async fn drop_databases(server: &str, names: Vec<String>) -> Result<()> {
    stream::iter(names)
        .map(|name| async move {
            e2e::admin_on(server)
                .await
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await
                .with_context(|| format!("drop {name}"))
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

pub async fn warm_up() -> Result<()> {
    let (status, report) = e2e::invoke_migrate_all(&json!({})).await;
    ensure!(status.is_success(), "migrate-all failed: {report}");
    let warm = warm_up_slug();
    let r = e2e::post_tenant(&json!({"name": "Warm-up", "slug": warm})).await;
    ensure!(
        r.status == StatusCode::CREATED || r.status == StatusCode::CONFLICT,
        "warm-up POST: {}",
        r.text
    );
    for _ in 0..3 {
        let r = e2e::get(&format!("/api/tenants/{warm}")).await;
        ensure!(r.status == StatusCode::OK, "warm-up GET: {}", r.text);
        let r = e2e::get("/api/tenants?limit=1").await;
        ensure!(r.status == StatusCode::OK, "warm-up list: {}", r.text);
        let r = e2e::delete(&format!("/api/tenants/{FLEET_PREFIX}missing")).await;
        ensure!(
            r.status == StatusCode::NOT_FOUND,
            "warm-up DELETE: {}",
            r.text
        );
    }
    Ok(())
}
