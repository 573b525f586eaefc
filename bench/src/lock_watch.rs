//! The lock waits of migrate-all's sessions in some tenants' databases, sampled from
//! `pg_stat_activity` every 10 ms on each server while a migration runs (the live-migration
//! benchmark's "how many lock waits, and when the last one ended").

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use e2e::database_name;

use crate::table::ms;

/// How often the lock waits are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// The lock waits of migrate-all's sessions in the tenants' databases, sampled from
/// `pg_stat_activity` on each server until stopped.
pub struct LockWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<BTreeMap<String, Waits>>>,
}

#[derive(Default, Clone, Copy)]
struct Waits {
    /// Separate waits seen (each attempt that queued for a lock is one).
    attempts: u32,
    /// When the last one ended, after the start.
    last_end: Duration,
    waiting: bool,
}

pub struct LockWaits(BTreeMap<String, Waits>);

impl LockWatch {
    pub async fn start(slugs: &[String]) -> Result<LockWatch> {
        let mut servers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for slug in slugs {
            let server = e2e::tenant_server(slug).await.context("its server")?;
            servers.entry(server).or_default().push(database_name(slug));
        }
        let mut clients = Vec::new();
        for (server, names) in servers {
            clients.push((e2e::connect_on(&server, "postgres").await, names));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut seen: BTreeMap<String, Waits> = BTreeMap::new();
            while !flag.load(Ordering::SeqCst) {
                for (client, names) in &clients {
                    let rows = client
                        .query(
                            "SELECT DISTINCT datname::text FROM pg_stat_activity \
                             WHERE application_name = 'migrate-all' \
                               AND wait_event_type = 'Lock' AND datname::text = ANY($1)",
                            &[names],
                        )
                        .await?;
                    let now: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                    for name in names {
                        let w = seen.entry(name.clone()).or_default();
                        let waiting = now.contains(name);
                        if waiting && !w.waiting {
                            w.attempts += 1;
                        }
                        if w.waiting && !waiting {
                            w.last_end = started.elapsed();
                        }
                        w.waiting = waiting;
                    }
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            Ok(seen)
        });
        Ok(LockWatch { stop, task })
    }

    pub async fn stop(self) -> Result<LockWaits> {
        self.stop.store(true, Ordering::SeqCst);
        Ok(LockWaits(self.task.await??))
    }
}

impl LockWaits {
    pub fn figure(&self) -> String {
        let mut attempts: Vec<u32> = self.0.values().map(|w| w.attempts).collect();
        attempts.sort_unstable();
        let got = self
            .0
            .values()
            .map(|w| w.last_end.as_secs_f64() * 1000.0)
            .fold(0.0, f64::max);
        match (attempts.first(), attempts.last()) {
            (Some(lo), Some(hi)) => format!("{lo}–{hi} waits; {} ms", ms(got)),
            _ => "no tenant".into(),
        }
    }
}
