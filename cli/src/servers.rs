//! `dbtools servers ...`: `/api/servers`, and a drain followed to its end.

use clap::{Subcommand, ValueEnum};
use serde_json::{json, Map, Value};

use crate::{
    error::CliError,
    follow,
    output::{self, Output},
    Ctx,
};

#[derive(Debug, Subcommand)]
pub enum ServersCmd {
    /// List the servers (`primary` first) with their tenants and room.
    List,
    /// Show one server.
    Get { name: String },
    /// Register a PostgreSQL server; the API checks it for real (connects, version,
    /// privileges) before recording it.
    Add {
        /// Lowercase letter first, then lowercase letters, digits, `_` or `-` (at most 63).
        name: String,
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 5432)]
        port: u16,
        /// Its admin secret, under the deployment's SERVER_SECRET_PREFIX
        /// (`dbtools/servers/...`).
        #[arg(long)]
        secret_arn: String,
        /// Tenants it may hold (0-1,000,000).
        #[arg(long)]
        max_tenants: u32,
        /// Tenant connections a migrate-all run opens there at once (1-64).
        #[arg(long)]
        migrate_concurrency: u32,
    },
    /// Change a server's state, capacity or migration budget.
    Set {
        name: String,
        /// `open` takes new tenants; `draining` keeps its tenants and takes no new ones.
        #[arg(long, value_enum)]
        state: Option<ServerState>,
        #[arg(long)]
        max_tenants: Option<u32>,
        #[arg(long)]
        migrate_concurrency: Option<u32>,
    },
    /// Remove a server that holds no tenant but purged ones (never `primary`).
    Remove { name: String },
    /// Mark a server draining and move each of its active tenants away.
    Drain {
        name: String,
        /// Follow the moves it started, and those already running from it, until they end;
        /// exits 3 if one fails, is cancelled or stalls, or if the drain left tenants
        /// (`remaining`, `errors`).
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ServerState {
    Open,
    Draining,
}

const SERVER_FIELDS: &[&str] = &[
    "name",
    "host",
    "port",
    "state",
    "max_tenants",
    "migrate_concurrency",
    "tenants",
    "room",
    "secret_arn",
    "created_at",
];

pub async fn run(ctx: &Ctx, cmd: ServersCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        ServersCmd::List => {
            let page = c.get(&[("", "api"), ("", "servers")], &[]).await?;
            match ctx.output {
                Output::Json => output::print_json(&page)?,
                Output::Table => {
                    let rows = page["servers"]
                        .as_array()
                        .map(|ss| ss.iter().map(server_row).collect())
                        .unwrap_or_default();
                    output::print(&output::table(
                        &[
                            "name",
                            "state",
                            "host",
                            "port",
                            "tenants",
                            "room",
                            "max_tenants",
                            "migrate_concurrency",
                        ],
                        rows,
                    ))?;
                }
            }
        }
        ServersCmd::Get { name } => {
            let server = c.get(&path(&name), &[]).await?;
            print_server(ctx, &server)?;
        }
        ServersCmd::Add {
            name,
            host,
            port,
            secret_arn,
            max_tenants,
            migrate_concurrency,
        } => {
            let body = json!({"name": name, "host": host, "port": port, "secret_arn": secret_arn,
                              "max_tenants": max_tenants,
                              "migrate_concurrency": migrate_concurrency});
            let server = c.post(&[("", "api"), ("", "servers")], &body).await?;
            print_server(ctx, &server)?;
        }
        ServersCmd::Set {
            name,
            state,
            max_tenants,
            migrate_concurrency,
        } => {
            let mut body = Map::new();
            if let Some(s) = state {
                let s = match s {
                    ServerState::Open => "open",
                    ServerState::Draining => "draining",
                };
                body.insert("state".into(), json!(s));
            }
            if let Some(n) = max_tenants {
                body.insert("max_tenants".into(), json!(n));
            }
            if let Some(n) = migrate_concurrency {
                body.insert("migrate_concurrency".into(), json!(n));
            }
            if body.is_empty() {
                return Err(CliError::Usage(
                    "nothing to change: give --state, --max-tenants or --migrate-concurrency"
                        .into(),
                ));
            }
            let url = c.url(&path(&name), &[])?;
            let server = c
                .call(reqwest::Method::PATCH, url, Some(&Value::Object(body)), &[])
                .await?;
            print_server(ctx, &server)?;
        }
        ServersCmd::Remove { name } => {
            let url = c.url(&path(&name), &[])?;
            let server = c.call(reqwest::Method::DELETE, url, None, &[]).await?;
            print_server(ctx, &server)?;
        }
        ServersCmd::Drain { name, watch } => {
            let drain = c
                .post(
                    &[
                        ("", "api"),
                        ("", "servers"),
                        ("server", &name),
                        ("", "drain"),
                    ],
                    &json!({}),
                )
                .await?;
            print_drain(ctx, &drain)?;
            if watch {
                let mut ids: Vec<String> = drain["started"]
                    .as_array()
                    .map(|s| {
                        s.iter()
                            .filter_map(|m| m["move_id"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                // The moves an earlier drain (or an operator) started from it, still at work.
                for id in running_moves_from(ctx, &name).await? {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                let ended = follow::moves(ctx, &ids, ctx.stall_after).await?;
                follow::print_moves(ctx, &ended)?;
                follow::check_moves(&ended)?;
                drain_left(&name, &drain)?;
            }
        }
    }
    Ok(())
}

/// The ids of the moves from `server` still `running` (`GET /api/moves`: the 500 newest).
async fn running_moves_from(ctx: &Ctx, server: &str) -> Result<Vec<String>, CliError> {
    let page = ctx
        .client
        .get(&[("", "api"), ("", "moves")], &[("limit", "500".into())])
        .await?;
    Ok(page["moves"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["from"] == server && m["state"] == "running")
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Fails (exit 3) when the drain left tenants on the server: `remaining` ones (no time or no
/// room) or `errors`.
fn drain_left(name: &str, drain: &Value) -> Result<(), CliError> {
    let remaining = drain["remaining"].as_i64().unwrap_or(0);
    let errors: Vec<String> = drain["errors"]
        .as_array()
        .map(|es| es.iter().map(output::cell).collect())
        .unwrap_or_default();
    if remaining == 0 && errors.is_empty() {
        return Ok(());
    }
    let mut why = format!("{remaining} tenants were not started");
    if !errors.is_empty() {
        why.push_str(&format!(" ({})", errors.join("; ")));
    }
    Err(CliError::Unsuccessful(format!(
        "the drain of {name} is not over: {why}; run `dbtools servers drain {name} --watch` \
         again"
    )))
}

fn path(name: &str) -> [(&str, &str); 3] {
    [("", "api"), ("", "servers"), ("server", name)]
}

fn server_row(s: &Value) -> Vec<String> {
    let mut row = output::cells(s, &["name", "state", "host", "port"]);
    row.push(output::cell(&s["tenants"]["total"]));
    row.extend(output::cells(
        s,
        &["room", "max_tenants", "migrate_concurrency"],
    ));
    row
}

fn print_server(ctx: &Ctx, server: &Value) -> Result<(), CliError> {
    match ctx.output {
        Output::Json => output::print_json(server),
        Output::Table => {
            let mut shown = server.clone();
            if server["tenants"].is_object() {
                shown["tenants"] = json!(output::counts(&server["tenants"]));
            }
            output::print(&output::fields(&shown, SERVER_FIELDS))
        }
    }
}

fn print_drain(ctx: &Ctx, drain: &Value) -> Result<(), CliError> {
    match ctx.output {
        // With --watch the moves follow as JSON too (one document each).
        Output::Json => output::print_json(drain),
        Output::Table => {
            output::print(&output::fields(
                drain,
                &[
                    "server",
                    "state",
                    "moving",
                    "remaining",
                    "not_movable",
                    "errors",
                ],
            ))?;
            let rows: Vec<Vec<String>> = drain["started"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|m| output::cells(m, &["slug", "to", "move_id"]))
                        .collect()
                })
                .unwrap_or_default();
            if rows.is_empty() {
                output::print("no move started")
            } else {
                output::print(&output::table(&["slug", "to", "move_id"], rows))
            }
        }
    }
}
