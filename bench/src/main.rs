//! `make bench`: every performance goal of docs/performance.md, measured in one run against
//! the stack's two PostgreSQL servers (`primary`, `secondary`), through the real functions
//! (release builds under `cargo lambda watch`, real HTTP), and printed as a table of figures,
//! ratios and goals, overall and per server.
//!
//! It runs inside the bench's own stack (`scripts/stack.sh run` with `STACK_DIR=.local/bench`,
//! see the Makefile), whose variables tell it where the API and PostgreSQL are. Sizes:
//! `BENCH_TENANTS` (1000: the fleet, created through the API, which migrate-all runs over),
//! `BENCH_LIST_TENANTS` (10000: registry rows for the list benchmark), `BENCH_FLOOR_SAMPLES`
//! (50), `BENCH_LIST_SAMPLES` (200), `BENCH_COLD_SAMPLES` (15), and the live-migration
//! benchmark's `BENCH_LIVE_TENANTS` (4) and `BENCH_LIVE_ROWS` (200000), and
//! `BENCH_PLAN_ROWS` (100000: the registry rows a queued run is planned over), and
//! `BENCH_MOVE_ROWS` (`10000,100000,1000000`: the sizes of the tenants moved).
//!
//! Set-up: `settings`, `machine`, `prepare`, `fleet`. The measures, in the table's order:
//! `cold` (fresh, before anything else), `floor` (CREATE DATABASE strategies), `provision`,
//! `baseline`, `migrate_all` (with `pending_floor`), `live`, `list`, `cold` again, `fanout`
//! (planning). `table` holds the rows; `progress` says where the run is.

mod baseline;
mod cold;
mod fanout;
mod fleet;
mod floor;
mod list;
mod live;
mod lock_watch;
mod machine;
mod migrate_all;
mod moves;
mod pending_floor;
mod prepare;
mod progress;
mod provision;
mod same_work;
mod settings;
mod table;

use std::path::PathBuf;

use anyhow::{Context, Result};
use progress::step;
use settings::Settings;
use table::Table;

#[tokio::main]
async fn main() -> Result<()> {
    let s = Settings::from_env()?;
    let machine = machine::describe().await?;
    println!("{machine}");
    let mut table = Table::default();

    // For working on one part: BENCH_ONLY=live, plan, cold, move or create measures only that
    // part.
    let only = std::env::var("BENCH_ONLY").ok();
    if let Some(part @ ("live" | "plan" | "cold" | "move" | "create")) = only.as_deref() {
        prepare::cleanup().await?;
        prepare::warm_up().await?;
        table.extend(match part {
            "live" => live::measure().await?,
            "plan" => fanout::planning(s.plan_rows, &s.profile).await?,
            "move" => moves::measure(&moves::sizes()?).await?,
            "create" => provision::measure(s.tenants, s.floor_samples).await?,
            _ => cold::fresh_rows(
                &cold::measure(&s.profile, s.cold_samples, &fleet::warm_up_slug()).await?,
            ),
        });
        println!("{}", table.render());
        return Ok(());
    }
    step("removing what an earlier run left");
    prepare::cleanup().await?;
    step("warming up the functions (the first request of each starts its instances)");
    prepare::warm_up().await?;

    step("cold starts, first: each function's release binary, started for one request");
    let fresh = cold::measure(&s.profile, s.cold_samples, &fleet::warm_up_slug()).await?;
    table.extend(cold::fresh_rows(&fresh));

    step(&format!(
        "CREATE DATABASE strategies, {} samples each",
        s.floor_samples
    ));
    table.extend(floor::strategies(s.floor_samples).await?.rows());
    table.extend(provision::measure(s.tenants, s.floor_samples).await?);
    let placed = fleet::placement().await?;
    let (baseline, rows) = baseline::measure(&placed, s.tenants).await?;
    table.extend(rows);
    table.extend(migrate_all::measure(s.tenants, &placed, baseline).await?);
    table.extend(live::measure().await?);
    table.extend(list::measure(s.list_tenants, s.list_samples).await?);
    step("cold starts again, after the fleet runs");
    let later = cold::measure(&s.profile, s.cold_samples, &fleet::warm_up_slug()).await?;
    table.extend(cold::later_rows(&later, &fresh));
    table.extend(cold::watch_instances(&s.profile)?);
    step(&format!(
        "planning a queued run over {} registry rows",
        s.plan_rows
    ));
    table.extend(fanout::planning(s.plan_rows, &s.profile).await?);
    table.extend(moves::measure(&moves::sizes()?).await?);

    println!();
    println!("{machine}");
    let rendered = table.render();
    println!("{rendered}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report.md");
    std::fs::write(&out, format!("{machine}\n\n{rendered}\n"))
        .with_context(|| format!("write {}", out.display()))?;
    println!("(also written to target/bench-report.md)");
    if table.missed() > 0 {
        println!("{} goal(s) missed", table.missed());
    }
    Ok(())
}
