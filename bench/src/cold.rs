//! Cold starts and memory: each function's binary started as its own process against a
//! minimal Lambda Runtime API (e2e::runtime), timed from `exec` to its answer to one request
//! that needs everything a first request needs (configuration, the secret, a connection, a
//! query); its peak RSS read from /proc. Measured first, before any other measure (the goal),
//! and again after the fleet runs. Then the peak RSS of the instances `cargo lambda watch` ran
//! for the whole benchmark.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use e2e::{json, runtime};
use serde_json::Value;

use crate::table::{ms, Row, Stats};

const FUNCTIONS: [&str; 9] = [
    "create-tenant",
    "list-tenants",
    "delete-tenant",
    "migrate-all",
    "rotate-tenant-secret",
    "servers",
    "runs",
    "moves",
    "migrate-tenant",
];
const RSS_GOAL_MIB: f64 = 40.0;
const COLD_GOAL_MS: f64 = 50.0;

/// What the first request's answer must be.
enum Expect {
    /// An HTTP function's status.
    Status(u64),
    /// migrate-all's report.
    Report,
    /// A function error of this type.
    Error(&'static str),
    /// An SQS batch answer with no failure.
    Batch,
}

/// The first request each function gets, and what it must answer.
fn first_request(function: &str, slug: &str) -> (Value, &'static str, Expect) {
    match function {
        // An existing slug: the INSERT conflicts, nothing is created.
        "create-tenant" => (
            runtime::http_event(
                "POST",
                "/api/tenants",
                &json!({"name": "Cold start", "slug": slug}).to_string(),
                &[],
            ),
            "POST of a taken slug",
            Expect::Status(409),
        ),
        "list-tenants" => (
            runtime::http_event("GET", &format!("/api/tenants/{slug}"), "", &[]),
            "GET one tenant",
            Expect::Status(200),
        ),
        "delete-tenant" => (
            runtime::http_event("DELETE", "/api/tenants/bench_never_created", "", &[]),
            "DELETE of an unknown slug",
            Expect::Status(404),
        ),
        "servers" => (
            runtime::http_event("GET", "/api/servers", "", &[]),
            "GET every server",
            Expect::Status(200),
        ),
        "runs" => (
            runtime::http_event("GET", "/api/runs", "", &[]),
            "GET the newest runs",
            Expect::Status(200),
        ),
        "moves" => (
            runtime::http_event("GET", "/api/moves", "", &[]),
            "GET the newest moves",
            Expect::Status(200),
        ),
        // A message of a run the ledger does not have: read, found done with, deleted.
        "migrate-tenant" => (
            e2e::sqs_event(&[json!({"run_id": "6f1c0000-0000-4000-8000-000000000000",
                                    "slug": slug})]),
            "a message of an unknown run",
            Expect::Batch,
        ),
        "rotate-tenant-secret" => (
            json!({"Step": "testSecret", "SecretId": "dbtools/tenants/bench_never_created",
                   "ClientRequestToken": "cold-start"}),
            "a step for an unknown secret",
            Expect::Error("InvalidRequest"),
        ),
        _ => (
            json!({"dry_run": true, "slugs": [slug]}),
            "dry run over one tenant",
            Expect::Report,
        ),
    }
}

/// Peak resident set size of a live process, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// One function's cold starts.
pub struct Cold {
    function: &'static str,
    what: &'static str,
    times: Stats,
    rss: f64,
}

/// The cold starts measured first, before any other measure runs (the goal: p50 < 50 ms).
pub fn fresh_rows(cold: &[Cold]) -> Vec<Row> {
    cold.iter()
        .map(|c| {
            Row::goal(
                &format!("cold start: {}, {} (p50; max)", c.function, c.what),
                format!("{} ms ({})", ms(c.times.p50), ms(c.times.max)),
                format!("measured fresh; peak RSS {:.1} MiB", c.rss),
                &format!("< {} ms, < {RSS_GOAL_MIB:.0} MiB", ms(COLD_GOAL_MS)),
                c.times.p50 < COLD_GOAL_MS && c.rss < RSS_GOAL_MIB,
            )
        })
        .collect()
}

/// The same, measured again after the fleet runs (the queued run included), beside the fresh
/// figures: what a machine busy for twenty minutes (page cache, PostgreSQL's own state, the
/// emulators' memory) does to a start.
pub fn later_rows(later: &[Cold], fresh: &[Cold]) -> Vec<Row> {
    later
        .iter()
        .map(|c| {
            let before = fresh.iter().find(|f| f.function == c.function);
            Row::goal(
                &format!("  … {} again after the fleet runs (p50; max)", c.function),
                format!("{} ms ({})", ms(c.times.p50), ms(c.times.max)),
                before.map_or_else(String::new, |f| {
                    format!(
                        "{:.2}x fresh; peak RSS {:.1} MiB",
                        c.times.p50 / f.times.p50,
                        c.rss
                    )
                }),
                &format!("< {RSS_GOAL_MIB:.0} MiB"),
                c.rss < RSS_GOAL_MIB,
            )
        })
        .collect()
}

pub async fn measure(profile: &str, samples: usize, slug: &str) -> Result<Vec<Cold>> {
    let mut out = Vec::new();
    for function in FUNCTIONS {
        let (event, what, expect) = first_request(function, slug);
        let mut times = Vec::new();
        let mut rss: f64 = 0.0;
        for _ in 0..samples {
            let api = runtime::RuntimeApi::start(event.clone()).await;
            let started = Instant::now();
            let mut child = api.spawn_profile(profile, function, &[]);
            let answer = api
                .wait_response(Duration::from_secs(30))
                .await
                .with_context(|| format!("{function} did not answer within 30 s"))?;
            let took = started.elapsed().as_secs_f64() * 1000.0;
            let pid = child.id().context("the function exited")?;
            let peak = peak_rss_mib(pid).context("read VmHWM")?;
            child.kill().await?;
            match expect {
                Expect::Status(status) => ensure!(
                    answer["statusCode"] == status,
                    "{function}: expected {status}, got {answer}"
                ),
                Expect::Report => ensure!(answer.get("counts").is_some(), "{function}: {answer}"),
                Expect::Error(kind) => ensure!(
                    answer["errorType"] == kind,
                    "{function}: expected {kind}, got {answer}"
                ),
                Expect::Batch => ensure!(
                    answer["batchItemFailures"] == json!([]),
                    "{function}: expected no batch item failure, got {answer}"
                ),
            }
            times.push(took);
            rss = rss.max(peak);
        }
        out.push(Cold {
            function,
            what,
            times: Stats::of(times),
            rss,
        });
    }
    Ok(out)
}

/// Peak RSS of every instance `cargo lambda watch` started during the run, per function.
pub fn watch_instances(profile: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut found = false;
    for function in FUNCTIONS {
        let suffix = format!("/{profile}/{function}");
        let mut peaks = Vec::new();
        for entry in std::fs::read_dir("/proc")? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            if String::from_utf8_lossy(argv0).ends_with(&suffix) {
                if let Some(peak) = peak_rss_mib(pid) {
                    peaks.push(peak);
                }
            }
        }
        if peaks.is_empty() {
            continue;
        }
        found = true;
        let max = peaks.iter().copied().fold(0.0, f64::max);
        rows.push(Row::goal(
            &format!(
                "peak RSS: {function} under watch, whole run ({} instances)",
                peaks.len()
            ),
            format!("{max:.1} MiB"),
            String::new(),
            &format!("< {RSS_GOAL_MIB:.0} MiB"),
            max < RSS_GOAL_MIB,
        ));
    }
    if !found {
        bail!("no function instance of cargo lambda watch found under /proc");
    }
    Ok(rows)
}
