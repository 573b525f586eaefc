//! `dbtools moves ...`: `/api/moves`: the moves, newest first, one move, and its cancel.

use clap::Subcommand;
use serde_json::json;

use crate::{client::id_arg, error::CliError, follow, Ctx};

#[derive(Debug, Subcommand)]
pub enum MovesCmd {
    /// The moves, newest first (`GET /api/moves`).
    List {
        /// Moves to show (1-500).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One move: its step, state and figures (`GET /api/moves/{id}`).
    Show { id: String },
    /// Ask a running move to stop before its switch; its next step undoes it (`cancelled`).
    /// A move past its switch, or over, is refused (409, exit 1).
    Cancel {
        id: String,
        /// Follow the move until it ends (exits 3 unless it ends `done`, which a cancel
        /// that came too late for a step may still give).
        #[arg(long)]
        watch: bool,
    },
}

pub async fn run(ctx: &Ctx, cmd: MovesCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        MovesCmd::List { limit } => {
            let page = c
                .get(
                    &[("", "api"), ("", "moves")],
                    &[("limit", limit.to_string())],
                )
                .await?;
            let moves = page["moves"].as_array().cloned().unwrap_or_default();
            follow::print_moves(ctx, &moves)
        }
        MovesCmd::Show { id } => {
            let id = id_arg("move id", &id)?;
            let mv = c.get(&[("", "api"), ("", "moves"), ("", id)], &[]).await?;
            follow::print_move(ctx, &mv)
        }
        MovesCmd::Cancel { id, watch } => {
            let id = id_arg("move id", &id)?;
            let mv = c
                .post(
                    &[("", "api"), ("", "moves"), ("", id), ("", "cancel")],
                    &json!({}),
                )
                .await?;
            if !watch {
                return follow::print_move(ctx, &mv);
            }
            let ended = follow::moves(ctx, &[id.to_owned()], ctx.stall_after).await?;
            for mv in &ended {
                follow::print_move(ctx, mv)?;
            }
            follow::check_moves(&ended)
        }
    }
}
