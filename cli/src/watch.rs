//! `runs watch`: a run followed live from the ledger (`GET /api/runs/{id}`, every tenant
//! page), drawn with indicatif: a line for the run, then a bar for the whole run, one per wave
//! and one per server, each `done/total`, its rate and time left, and its tenants by outcome
//! (`migrated`, `deferred`, `failed`, `pending`, and any other outcome that occurs). Without a
//! terminal a line is printed each time the counts change.

use std::{
    collections::BTreeMap,
    io::IsTerminal,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use crate::{
    error::{patiently, CliError},
    ledger::{fetch_run, run_fields, tenant_table},
    output::{self, Output},
    Ctx,
};

/// A group of the run's tenants (the whole run, a wave, a server) and its outcomes.
#[derive(Default)]
struct Tally(BTreeMap<String, u64>);

impl Tally {
    fn add(&mut self, status: &str) {
        *self.0.entry(status.to_owned()).or_default() += 1;
    }
    fn get(&self, status: &str) -> u64 {
        self.0.get(status).copied().unwrap_or(0)
    }
    fn total(&self) -> u64 {
        self.0.values().sum()
    }
    /// `migrated 3  deferred 0  failed 0  pending 1`, then any other outcome that occurs.
    fn describe(&self) -> String {
        let main = ["migrated", "deferred", "failed", "pending"];
        let mut parts: Vec<String> = main
            .iter()
            .map(|s| format!("{s} {}", self.get(s)))
            .collect();
        for (s, n) in &self.0 {
            if !main.contains(&s.as_str()) && *n > 0 {
                parts.push(format!("{s} {n}"));
            }
        }
        parts.join("  ")
    }
}

/// Seconds the run has been at work: from `started_at` to `finished_at`, or to now (shown on
/// the header; not the rate, which a retry's new work would skew).
fn run_elapsed(run: &Value) -> Option<f64> {
    let at = |k: &str| {
        run[k]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let end = at("finished_at").unwrap_or_else(Utc::now);
    let secs = (end - at("started_at")?).num_milliseconds() as f64 / 1000.0;
    Some(secs.max(0.001))
}

/// `0.8/s eta 5s`: the group's tenants that got an outcome per second since the watch first
/// saw the group (`seen`: seconds ago, and how many had an outcome then), and the time its
/// pending tenants take at that rate. Before any change is seen the rate is `-` (and the
/// time left `?`).
fn pace(t: &Tally, (secs, then): (f64, u64)) -> String {
    let done = t.total() - t.get("pending");
    let pending = t.get("pending") as f64;
    let rate = (secs > 0.0 && done > then).then(|| (done - then) as f64 / secs);
    let eta = match rate {
        _ if pending == 0.0 => "0s".to_owned(),
        Some(r) => human(pending / r),
        None => "?".to_owned(),
    };
    let rate = rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}/s"));
    format!("{rate:>7} eta {eta:<4}")
}

/// `42s`, `7m`, `3h`.
fn human(secs: f64) -> String {
    let secs = secs.round() as u64;
    match secs {
        0..=99 => format!("{secs}s"),
        100..=5999 => format!("{}m", secs.div_ceil(60)),
        _ => format!("{}h", secs.div_ceil(3600)),
    }
}

/// The groups drawn: the whole run, each wave, each server (in that order).
fn tally(tenants: &[Value]) -> Vec<(String, Tally)> {
    let mut total = Tally::default();
    let mut waves: BTreeMap<String, Tally> = BTreeMap::new();
    let mut servers: BTreeMap<String, Tally> = BTreeMap::new();
    for t in tenants {
        let status = t["status"].as_str().unwrap_or("unknown");
        total.add(status);
        let wave = match t["wave"].as_i64() {
            Some(0) => "wave 0 (canary)".to_owned(),
            Some(n) => format!("wave {n}"),
            None => "unplanned".to_owned(),
        };
        waves.entry(wave).or_default().add(status);
        let server = format!("server {}", t["server"].as_str().unwrap_or("-"));
        servers.entry(server).or_default().add(status);
    }
    let mut groups = vec![("total".to_owned(), total)];
    groups.extend(waves);
    groups.extend(servers);
    groups
}

/// Follows run `id` until it is no longer `running`, or has made no progress for
/// `stall_after`; prints its summary; fails (exit 3) if it ended `failed`, `halted` or
/// `skipped`, or stalled.
pub async fn watch(
    ctx: &Ctx,
    id: &str,
    every: Duration,
    stall_after: Duration,
) -> Result<(), CliError> {
    let live = ctx.output == Output::Table && std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if live {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let header = multi.add(ProgressBar::new_spinner());
    header.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    header.enable_steady_tick(Duration::from_millis(120));
    let style = ProgressStyle::with_template("{prefix:<18} [{bar:16}] {pos:>4}/{len:<4} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    // When the watch first saw each group, and how many of its tenants had an outcome then.
    let mut first_seen: BTreeMap<String, (Instant, u64)> = BTreeMap::new();
    let mut last_line = String::new();
    // The last progress seen (the run's `updated_at` and its counts), and when.
    let mut progress = (String::new(), Instant::now());
    let mut draw = |run: &Value, tenants: &[Value]| {
        let status = run["status"].as_str().unwrap_or("unknown");
        header.set_message(format!(
            "run {id}: {status} ({} mode, wave {}, {} since it started)",
            output::cell(&run["mode"]),
            output::cell(&run["wave"]),
            run_elapsed(run).map(human).unwrap_or_else(|| "-".into())
        ));
        let mut total_described = String::new();
        for (name, t) in tally(tenants) {
            let done = t.total() - t.get("pending");
            let (at, then) = *first_seen
                .entry(name.clone())
                .or_insert((Instant::now(), done));
            let bar = bars.entry(name.clone()).or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(t.total()));
                bar.set_style(style.clone());
                bar.set_prefix(name.clone());
                bar
            });
            bar.set_length(t.total());
            bar.set_position(done);
            let seen = (at.elapsed().as_secs_f64(), then);
            bar.set_message(format!("{}  {}", pace(&t, seen), t.describe()));
            if name == "total" {
                total_described = t.describe();
            }
        }
        if !live && ctx.output == Output::Table {
            let line = format!("run {id} {status}: {total_described}");
            if line != last_line {
                eprintln!("{line}");
                last_line = line;
            }
        }
        total_described
    };
    let fetch = || patiently(10, every, || fetch_run(&ctx.client, id, None, 500, true));
    let mut stalled = None;
    let (run, tenants) = loop {
        let (run, tenants) = fetch().await?;
        let described = draw(&run, &tenants);
        if run["status"] != "running" {
            // The pages were read one after the other, the status from the last one: read
            // them all again, now that the run is over, for the final bars and summary.
            let (run, tenants) = fetch().await?;
            draw(&run, &tenants);
            break (run, tenants);
        }
        let mark = format!("{} {described}", output::cell(&run["updated_at"]));
        if mark != progress.0 {
            progress = (mark, Instant::now());
        } else if progress.1.elapsed() >= stall_after {
            stalled = Some(output::cell(&run["updated_at"]));
            break (run, tenants);
        }
        tokio::time::sleep(every).await;
    };
    for bar in bars.values() {
        bar.abandon();
    }
    header.abandon();
    let status = run["status"].as_str().unwrap_or("unknown").to_owned();
    let run_error = run["error"].clone();
    print_summary(ctx, run, tenants)?;
    if let Some(updated_at) = stalled {
        return Err(CliError::Unsuccessful(format!(
            "run {id} is still running but has made no progress for {} s (last at \
             {updated_at}): its invocation may have ended without closing it. The next \
             `dbtools runs start` closes it (failed) once it is stalled (RUN_STALL_SECS); \
             then `dbtools runs retry {id}`",
            stall_after.as_secs()
        )));
    }
    match status.as_str() {
        "failed" | "halted" => Err(CliError::Unsuccessful(format!("run {id} ended {status}"))),
        // Another run was at work: this one did nothing.
        "skipped" => Err(CliError::Unsuccessful(format!(
            "run {id} was skipped: {}",
            output::cell(&run_error)
        ))),
        _ => Ok(()),
    }
}

/// The run as it ended: the run with every tenant (JSON), or its fields and the tenants that
/// were not migrated or up to date (table).
fn print_summary(ctx: &Ctx, run: Value, tenants: Vec<Value>) -> Result<(), CliError> {
    match ctx.output {
        Output::Json => {
            let mut shown = run;
            shown["tenants"] = json!(tenants);
            output::print_json(&shown)
        }
        Output::Table => {
            output::print(&run_fields(&run))?;
            let notable: Vec<Value> = tenants
                .into_iter()
                .filter(|t| !matches!(t["status"].as_str(), Some("migrated" | "up_to_date")))
                .collect();
            if !notable.is_empty() {
                output::print(&tenant_table(&notable))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_tallied_per_run_wave_and_server() {
        let tenants = vec![
            json!({"slug": "a", "server": "primary", "status": "migrated", "wave": 0}),
            json!({"slug": "b", "server": "primary", "status": "pending", "wave": 1}),
            json!({"slug": "c", "server": "secondary", "status": "failed", "wave": 1}),
            json!({"slug": "d", "server": "secondary", "status": "up_to_date", "wave": 1}),
        ];
        let groups = tally(&tenants);
        let names: Vec<&str> = groups.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "total",
                "wave 0 (canary)",
                "wave 1",
                "server primary",
                "server secondary"
            ]
        );
        let total = &groups[0].1;
        assert_eq!((total.total(), total.get("pending")), (4, 1));
        assert_eq!(
            total.describe(),
            "migrated 1  deferred 0  failed 1  pending 1  up_to_date 1"
        );
        // Three got an outcome in the 6 s watched: 0.5/s, the last one in 2 s.
        assert_eq!(pace(total, (6.0, 0)), "  0.5/s eta 2s  ");
        // One of them had it before the watch began: 2 in 4 s.
        assert_eq!(pace(total, (4.0, 1)), "  0.5/s eta 2s  ");
        // No change seen yet: no rate, no time left.
        assert_eq!(pace(total, (6.0, 3)).trim(), "- eta ?");
        assert_eq!(pace(total, (0.0, 0)).trim(), "- eta ?");
        let run =
            json!({"started_at": "2026-12-06T10:00:00Z", "finished_at": "2026-12-06T10:01:30Z"});
        assert_eq!(run_elapsed(&run), Some(90.0));
        assert_eq!(
            (human(42.0), human(420.0), human(7200.0)),
            ("42s".into(), "7m".into(), "2h".into())
        );
    }
}
