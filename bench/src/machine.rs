//! What the figures were measured on: the CPU, its cores and memory, PostgreSQL's version and
//! the settings that weigh on the figures, and the functions' build profile. Printed above
//! the table and written with it.

use anyhow::Result;

/// What the figures were measured on.
pub async fn describe() -> Result<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let admin = e2e::admin().await;
    let version: String = admin
        .query_one("SELECT current_setting('server_version')", &[])
        .await?
        .get(0);
    let settings: Vec<(String, String)> = admin
        .query(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name IN \
             ('fsync', 'synchronous_commit', 'shared_buffers', 'password_encryption') ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let settings: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(format!(
        "Machine: {cpu}, {cores} cores, {mem_gib:.0} GiB; PostgreSQL {version} on localhost ({}); \
         functions: {} builds under cargo lambda watch",
        settings.join(", "),
        std::env::var("DBTOOLS_BUILD_PROFILE").unwrap_or_else(|_| "unknown".into())
    ))
}
