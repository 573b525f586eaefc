//! `runs watch`: a run followed live from the ledger (`GET /api/runs/{id}`, every tenant
//! page), drawn with indicatif: a line for the run, then a bar for the whole run, one per wave
//! and one per server, each `done/total`, its rate and time left, and its tenants by outcome
//! (`migrated`, `deferred`, `failed`, `pending`, and any other outcome that occurs). Without a
//! terminal a line is printed each time the counts change.

use std::{collections::BTreeMap, io::IsTerminal, time::Duration};

use chrono::{DateTime, Utc};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use crate::{
    client::Client,
    error::{patiently, CliError},
    output::{self, Output},
    Ctx,
};

/// The run and its tenants: one page of `limit`, or every page with `all`.
pub async fn fetch_run(
    client: &Client,
    id: &str,
    status: Option<&str>,
    limit: u32,
    all: bool,
) -> Result<(Value, Vec<Value>), CliError> {
    let mut tenants = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(s) = status {
            query.push(("status", s.to_owned()));
        }
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let mut run = client
            .get(&[("", "api"), ("", "runs"), ("run", id)], &query)
            .await?;
        if let Some(Value::Array(page)) = run.get_mut("tenants").map(Value::take) {
            tenants.extend(page);
        }
        match run["next_cursor"].as_str() {
            Some(next) if all => cursor = Some(next.to_owned()),
            _ => {
                if let Some(map) = run.as_object_mut() {
                    map.remove("tenants");
                }
                return Ok((run, tenants));
            }
        }
    }
}

/// The run's own fields, as a two-column table.
pub fn run_fields(run: &Value) -> String {
    let mut shown = run.clone();
    shown["counts"] = json!(output::counts(&run["counts"]));
    output::fields(
        &shown,
        &[
            "id",
            "status",
            "mode",
            "wave",
            "canary",
            "max_failures",
            "latest_version",
            "counts",
            "error",
            "started_at",
            "updated_at",
            "finished_at",
        ],
    )
}

/// Tenants of a run or a report.
pub fn tenant_table(tenants: &[Value]) -> String {
    let rows = tenants
        .iter()
        .map(|t| {
            let mut row = output::cells(t, &["slug", "server", "status", "wave"]);
            row.push(format!(
                "{} -> {}",
                output::cell(&t["from_version"]),
                output::cell(&t["to_version"])
            ));
            row.push(output::cell(&t["pending"]));
            row.push(output::cell(&t["error"]));
            row
        })
        .collect();
    output::table(
        &[
            "slug", "server", "status", "wave", "version", "pending", "error",
        ],
        rows,
    )
}

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

/// Seconds the run has been at work: from `started_at` to `finished_at`, or to now.
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

/// `0.8/s eta 5s`: the group's tenants with an outcome per second since the run started, and
/// the time its pending tenants take at that rate.
fn pace(t: &Tally, elapsed: Option<f64>) -> String {
    let done = (t.total() - t.get("pending")) as f64;
    let pending = t.get("pending") as f64;
    let Some(secs) = elapsed else {
        return format!("{:>7} eta {:<4}", "-", "-");
    };
    let rate = done / secs;
    let eta = if pending == 0.0 {
        "0s".to_owned()
    } else if rate <= 0.0 {
        "?".to_owned()
    } else {
        human(pending / rate)
    };
    format!("{:>7} eta {eta:<4}", format!("{rate:.1}/s"))
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

/// Follows run `id` until it is no longer `running`; prints its summary; fails (exit 3) if
/// it ended `failed` or `halted`.
pub async fn watch(ctx: &Ctx, id: &str, every: Duration) -> Result<(), CliError> {
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
    let mut last_line = String::new();
    let (run, tenants) = loop {
        let (run, tenants) =
            patiently(10, every, || fetch_run(&ctx.client, id, None, 500, true)).await?;
        let status = run["status"].as_str().unwrap_or("unknown").to_owned();
        let elapsed = run_elapsed(&run);
        header.set_message(format!(
            "run {id}: {status} ({} mode, wave {}, {} since it started)",
            output::cell(&run["mode"]),
            output::cell(&run["wave"]),
            elapsed.map(human).unwrap_or_else(|| "-".into())
        ));
        for (name, t) in tally(&tenants) {
            let bar = bars.entry(name.clone()).or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(t.total()));
                bar.set_style(style.clone());
                bar.set_prefix(name.clone());
                bar
            });
            bar.set_length(t.total());
            bar.set_position(t.total() - t.get("pending"));
            bar.set_message(format!("{}  {}", pace(&t, elapsed), t.describe()));
            if name == "total" && !live && ctx.output == Output::Table {
                let line = format!("run {id} {status}: {}", t.describe());
                if line != last_line {
                    eprintln!("{line}");
                    last_line = line;
                }
            }
        }
        if status != "running" {
            break (run, tenants);
        }
        tokio::time::sleep(every).await;
    };
    for bar in bars.values() {
        bar.abandon();
    }
    header.abandon();
    let status = run["status"].as_str().unwrap_or("unknown").to_owned();
    match ctx.output {
        Output::Json => {
            let mut shown = run;
            shown["tenants"] = json!(tenants);
            output::print_json(&shown);
        }
        Output::Table => {
            println!("{}", run_fields(&run));
            let notable: Vec<Value> = tenants
                .into_iter()
                .filter(|t| !matches!(t["status"].as_str(), Some("migrated" | "up_to_date")))
                .collect();
            if !notable.is_empty() {
                println!("{}", tenant_table(&notable));
            }
        }
    }
    if matches!(status.as_str(), "failed" | "halted") {
        return Err(CliError::Unsuccessful(format!("run {id} ended {status}")));
    }
    Ok(())
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
        // Three with an outcome in 6 s: 0.5/s, the last one in 2 s.
        assert_eq!(pace(total, Some(6.0)), "  0.5/s eta 2s  ");
        assert_eq!(pace(total, None).trim(), "- eta -");
        let run =
            json!({"started_at": "2026-12-06T10:00:00Z", "finished_at": "2026-12-06T10:01:30Z"});
        assert_eq!(run_elapsed(&run), Some(90.0));
        assert_eq!(
            (human(42.0), human(420.0), human(7200.0)),
            ("42s".into(), "7m".into(), "2h".into())
        );
    }
}
