//! Following moves (`tenants move --watch`, `servers drain --watch`): a spinner per move
//! with its step, until every one has ended (`done`, `cancelled` or `failed`).

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use crate::{
    error::{patiently, CliError},
    output::{self, Output},
    Ctx,
};

const POLL: Duration = Duration::from_secs(1);

/// Polls `GET /api/moves/{id}` for each move until all have ended, or one has made no
/// progress (its `updated_at`) for `stall_after`, when it is left as it was (still
/// `running`: `check_moves` reports it); their last state.
pub async fn moves(
    ctx: &Ctx,
    ids: &[String],
    stall_after: Duration,
) -> Result<Vec<Value>, CliError> {
    let target = match ctx.output {
        Output::Table => ProgressDrawTarget::stderr(),
        Output::Json => ProgressDrawTarget::hidden(),
    };
    let multi = MultiProgress::with_draw_target(target);
    let style = ProgressStyle::with_template("{spinner} {prefix:<24} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bars: Vec<ProgressBar> = ids
        .iter()
        .map(|_| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
        .collect();
    let mut last: Vec<Value> = vec![Value::Null; ids.len()];
    // Each move's last progress (its `updated_at`), and when it was seen.
    let mut progress: Vec<(String, Instant)> = vec![(String::new(), Instant::now()); ids.len()];
    let mut stalled = vec![false; ids.len()];
    loop {
        let mut running = 0;
        for (i, id) in ids.iter().enumerate() {
            if is_over(&last[i]) || stalled[i] {
                continue;
            }
            let segments = [("", "api"), ("", "moves"), ("move", id.as_str())];
            let mv = patiently(10, POLL, || ctx.client.get(&segments, &[])).await?;
            bars[i].set_prefix(mv["slug"].as_str().unwrap_or(id).to_owned());
            let updated_at = output::cell(&mv["updated_at"]);
            if updated_at != progress[i].0 {
                progress[i] = (updated_at, Instant::now());
            }
            if is_over(&mv) {
                bars[i].set_message(describe(&mv));
                bars[i].finish();
            } else if progress[i].1.elapsed() >= stall_after {
                stalled[i] = true;
                bars[i].set_message(format!(
                    "{}: no progress for {} s",
                    describe(&mv),
                    stall_after.as_secs()
                ));
                bars[i].abandon();
            } else {
                bars[i].set_message(describe(&mv));
                running += 1;
            }
            last[i] = mv;
        }
        if running == 0 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(last)
}

fn is_over(mv: &Value) -> bool {
    matches!(mv["state"].as_str(), Some("done" | "cancelled" | "failed"))
}

fn describe(mv: &Value) -> String {
    let mut s = format!(
        "{} -> {} ({}) step {}: {}",
        output::cell(&mv["from"]),
        output::cell(&mv["to"]),
        output::cell(&mv["mode"]),
        output::cell(&mv["step"]),
        output::cell(&mv["state"]),
    );
    if let Some(ms) = mv["writes_refused_ms"].as_i64() {
        s.push_str(&format!(", writes refused {ms} ms"));
    }
    if let Some(e) = mv["error"].as_str() {
        s.push_str(&format!(", error: {e}"));
    }
    s
}

/// One move, as the API answered it.
pub fn print_move(ctx: &Ctx, mv: &Value) -> Result<(), CliError> {
    match ctx.output {
        Output::Json => output::print_json(mv),
        Output::Table => output::print(&output::fields(
            mv,
            &[
                "id",
                "slug",
                "from",
                "to",
                "mode",
                "step",
                "state",
                "writes_refused_ms",
                "rows_copied",
                "cancel_requested",
                "error",
                "created_at",
                "updated_at",
                "finished_at",
            ],
        )),
    }
}

/// Several moves: a table, or `{"moves": [...]}`.
pub fn print_moves(ctx: &Ctx, moves: &[Value]) -> Result<(), CliError> {
    match ctx.output {
        Output::Json => output::print_json(&json!({ "moves": moves })),
        Output::Table => {
            const COLUMNS: [&str; 8] = [
                "id",
                "slug",
                "from",
                "to",
                "state",
                "step",
                "writes_refused_ms",
                "error",
            ];
            let rows = moves.iter().map(|m| output::cells(m, &COLUMNS)).collect();
            output::print(&output::table(&COLUMNS, rows))
        }
    }
}

/// Fails (exit 3) if a move did not end `done`.
pub fn check_moves(moves: &[Value]) -> Result<(), CliError> {
    let bad: Vec<String> = moves
        .iter()
        .filter(|m| m["state"] != "done")
        .map(|m| match m["state"].as_str() {
            Some("running") => format!(
                "{} still running with no progress since {} (see `dbtools moves show {}`)",
                output::cell(&m["slug"]),
                output::cell(&m["updated_at"]),
                output::cell(&m["id"])
            ),
            _ => format!("{} {}", output::cell(&m["slug"]), output::cell(&m["state"])),
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(CliError::Unsuccessful(format!(
            "moves that did not finish: {}",
            bad.join(", ")
        )))
    }
}
