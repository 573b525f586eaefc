//! `dbtools runs ...`: start migrate-all (through the Lambda Invoke API), read the run
//! ledger (`/api/runs`), follow a run, and retry one.
//!
//! `runs retry <id>` is migrate-all's own `{"retry_run": id}`: the run's `failed`,
//! `deferred`, `halted`, `not_started` and still `pending` tenants go `pending` again and are
//! migrated in the same run (docs/operations.md, Retry). There is no HTTP route for it: like
//! `runs start`, it invokes the function.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::{
    client::id_arg,
    error::CliError,
    ledger,
    output::{self, Output},
    watch, Ctx,
};

#[derive(Debug, Subcommand)]
pub enum RunsCmd {
    /// Start migrate-all: every active tenant (or --slugs) to the latest migration.
    ///
    /// Invokes the migrate-all function (--function) and prints its report. A large run (or
    /// --queue) is fanned out over SQS and answers at once with its run id: add --watch to
    /// follow it.
    Start(StartArgs),
    /// The run ledger, newest first.
    List {
        /// Runs per page (1-500).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One run and its tenants' outcomes.
    Show {
        id: String,
        /// Only tenants with this outcome (`failed`, `deferred`, `pending`, ...).
        #[arg(long)]
        status: Option<String>,
        /// Tenants per page (1-500).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Every tenant of the run (follows `next_cursor`).
        #[arg(long)]
        all: bool,
    },
    /// Follow a run live: a bar per wave and per server (migrated / deferred / failed /
    /// pending, rate, time left). Exits 3 if the run ends failed, halted or skipped, or
    /// makes no progress for --stall-after seconds.
    Watch {
        id: String,
        /// Seconds between two looks at the ledger.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Retry a run: its failed, deferred, halted and not started tenants, in the same run
    /// (migrate-all's `retry_run`).
    Retry {
        id: String,
        #[command(flatten)]
        run: RunOptions,
    },
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Change nothing: list each tenant's pending migrations (always inline, no ledger row).
    #[arg(long)]
    dry_run: bool,
    /// Only these tenants (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    slugs: Vec<String>,
    /// The canary wave's size (0: none; default 1% of the tenants to open, at least 1).
    #[arg(long)]
    canary: Option<u32>,
    /// Open every tenant database, even those the registry records as current.
    #[arg(long)]
    verify: bool,
    #[command(flatten)]
    run: RunOptions,
}

/// What `start` and `retry` share.
#[derive(Debug, Args)]
pub struct RunOptions {
    /// The brake: halt once more tenants than this have failed: a count (3) or a share of
    /// the tenants to open (10%).
    #[arg(long)]
    max_failures: Option<String>,
    /// Tenants migrated at once over the fleet (default: the function's MIGRATE_CONCURRENCY).
    #[arg(long)]
    concurrency: Option<u32>,
    /// Keep the run in the invocation (no queue), whatever its size.
    #[arg(long, conflicts_with = "queue")]
    inline: bool,
    /// Send the tenants to the migrate queue, even for a small run.
    #[arg(long)]
    queue: bool,
    /// Follow a queued run until it ends (as `runs watch`).
    #[arg(long)]
    watch: bool,
}

impl RunOptions {
    fn apply(&self, event: &mut Value) -> Result<(), CliError> {
        if let Some(m) = &self.max_failures {
            event["max_failures"] = max_failures(m)?;
        }
        if let Some(n) = self.concurrency {
            event["concurrency"] = json!(n);
        }
        if self.inline {
            event["inline"] = json!(true);
        } else if self.queue {
            event["inline"] = json!(false);
        }
        Ok(())
    }
}

/// `3` or `10%`, as the event takes them.
fn max_failures(raw: &str) -> Result<Value, CliError> {
    let raw = raw.trim();
    if let Ok(n) = raw.parse::<u32>() {
        return Ok(json!(n));
    }
    match raw.strip_suffix('%').map(|p| p.trim().parse::<f64>()) {
        Some(Ok(p)) if (0.0..=100.0).contains(&p) => Ok(json!(raw)),
        _ => Err(CliError::Usage(format!(
            "--max-failures {raw:?}: a count (3) or a percentage (10%)"
        ))),
    }
}

/// migrate-all's event for `runs start`.
fn start_event(a: &StartArgs) -> Result<Value, CliError> {
    let mut event = json!({});
    if a.dry_run {
        event["dry_run"] = json!(true);
    }
    if !a.slugs.is_empty() {
        event["slugs"] = json!(a.slugs);
    }
    if let Some(n) = a.canary {
        event["canary"] = json!(n);
    }
    if a.verify {
        event["verify"] = json!(true);
    }
    a.run.apply(&mut event)?;
    Ok(event)
}

pub async fn run(ctx: &Ctx, cmd: RunsCmd) -> Result<(), CliError> {
    match cmd {
        RunsCmd::Start(args) => {
            let event = start_event(&args)?;
            invoke_and_report(ctx, &event, args.run.watch).await
        }
        RunsCmd::Retry { id, run } => {
            id_arg("run id", &id)?;
            let mut event = json!({ "retry_run": id });
            run.apply(&mut event)?;
            invoke_and_report(ctx, &event, run.watch).await
        }
        RunsCmd::List { limit, cursor } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(c) = cursor {
                query.push(("cursor", c));
            }
            let page = ctx.client.get(&[("", "api"), ("", "runs")], &query).await?;
            match ctx.output {
                Output::Json => output::print_json(&page)?,
                Output::Table => {
                    let rows = page["runs"]
                        .as_array()
                        .map(|rs| {
                            rs.iter()
                                .map(|r| {
                                    let mut row = output::cells(
                                        r,
                                        &["id", "status", "mode", "started_at", "finished_at"],
                                    );
                                    row.push(output::counts(&r["counts"]));
                                    row
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    output::print(&output::table(
                        &[
                            "id",
                            "status",
                            "mode",
                            "started_at",
                            "finished_at",
                            "counts",
                        ],
                        rows,
                    ))?;
                    if let Some(n) = page["next_cursor"].as_str() {
                        output::print(&format!("more: --cursor {n}"))?;
                    }
                }
            }
            Ok(())
        }
        RunsCmd::Show {
            id,
            status,
            limit,
            all,
        } => {
            id_arg("run id", &id)?;
            let (run, tenants) =
                ledger::fetch_run(&ctx.client, &id, status.as_deref(), limit, all).await?;
            match ctx.output {
                Output::Json => {
                    let mut shown = run;
                    shown["tenants"] = json!(tenants);
                    output::print_json(&shown)?;
                }
                Output::Table => {
                    output::print(&ledger::run_fields(&run))?;
                    output::print(&ledger::tenant_table(&tenants))?;
                    if let Some(n) = run["next_cursor"].as_str() {
                        output::print(&format!("more tenants: --all (next cursor {n})"))?;
                    }
                }
            }
            Ok(())
        }
        RunsCmd::Watch { id, interval } => {
            id_arg("run id", &id)?;
            // A NaN or infinite interval (which f64 parsing accepts) would panic below.
            let secs = if interval.is_finite() {
                interval.clamp(0.2, 60.0)
            } else {
                1.0
            };
            let every = Duration::from_secs_f64(secs);
            watch::watch(ctx, &id, every, ctx.stall_after).await
        }
    }
}

/// Invokes migrate-all with `event`, prints its report, and follows a queued run if asked.
async fn invoke_and_report(ctx: &Ctx, event: &Value, follow: bool) -> Result<(), CliError> {
    let report = ctx.client.invoke(event).await?;
    let status = report["status"].as_str().unwrap_or("");
    let run_id = report["run_id"].as_str().map(str::to_owned);
    match ctx.output {
        Output::Json => output::print_json(&report)?,
        Output::Table => print_report(&report)?,
    }
    if status == "already_running" {
        return Err(CliError::Unsuccessful(format!(
            "another run is at work: {}",
            output::cell(&report["error"])
        )));
    }
    // A run that failed or halted in the invocation is its error (exit 3), not a report.
    match (follow, run_id) {
        (true, Some(id)) if matches!(status, "queued" | "running") => {
            watch::watch(ctx, &id, Duration::from_secs(1), ctx.stall_after).await
        }
        _ => Ok(()),
    }
}

fn print_report(report: &Value) -> Result<(), CliError> {
    let mut shown = report.clone();
    shown["counts"] = json!(output::counts(&report["counts"]));
    output::print(&output::fields(
        &shown,
        &[
            "run_id",
            "status",
            "mode",
            "dry_run",
            "latest_version",
            "canary",
            "max_failures",
            "concurrency",
            "counts",
            "tenants_omitted",
            "error",
            "duration_ms",
        ],
    ))?;
    match report["tenants"].as_array() {
        Some(tenants) if !tenants.is_empty() => output::print(&ledger::tenant_table(tenants)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        start: StartArgs,
    }

    #[test]
    fn start_flags_become_the_event_migrate_all_reads() {
        let t = T::try_parse_from([
            "t",
            "--slugs",
            "acme,beta",
            "--slugs",
            "gamma",
            "--canary",
            "0",
            "--max-failures",
            "10%",
            "--verify",
            "--queue",
            "--concurrency",
            "4",
        ])
        .unwrap();
        assert_eq!(
            start_event(&t.start).unwrap(),
            json!({"slugs": ["acme", "beta", "gamma"], "canary": 0, "verify": true,
                   "max_failures": "10%", "concurrency": 4, "inline": false})
        );
        let t = T::try_parse_from(["t", "--dry-run", "--max-failures", "3"]).unwrap();
        assert_eq!(
            start_event(&t.start).unwrap(),
            json!({"dry_run": true, "max_failures": 3})
        );
        let t = T::try_parse_from(["t", "--max-failures", "ten"]).unwrap();
        assert!(start_event(&t.start).is_err());
        assert!(max_failures("101%").is_err());
        assert_eq!(
            T::try_parse_from(["t"])
                .map(|t| start_event(&t.start).unwrap())
                .unwrap(),
            json!({})
        );
    }
}
