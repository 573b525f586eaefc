//! The bench's fleet of tenants: their names, and where the registry placed each.

use anyhow::Result;

/// Prefix of every tenant the bench creates (and removes before it starts).
pub const FLEET_PREFIX: &str = "bench_";

/// The slug of the fleet's `i`th tenant (`bench_000000`, ...).
pub fn slug(i: usize) -> String {
    format!("{FLEET_PREFIX}{i:06}")
}

/// The tenant the warm-up creates (and the cold starts ask for when they run alone).
pub fn warm_up_slug() -> String {
    format!("{FLEET_PREFIX}warmup")
}

/// Each bench tenant's server, as the registry records it, in slug order.
pub async fn placement() -> Result<Vec<(String, String)>> {
    Ok(e2e::registry()
        .await
        .query(
            "SELECT slug, server FROM tenants WHERE slug LIKE 'bench\\_0%' ORDER BY slug",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}
