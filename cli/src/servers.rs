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
        /// Follow the moves it started until they end; exits 3 if one fails or is cancelled.
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
                Output::Json => output::print_json(&page),
                Output::Table => {
                    let rows = page["servers"]
                        .as_array()
                        .map(|ss| ss.iter().map(server_row).collect())
                        .unwrap_or_default();
                    println!(
                        "{}",
                        output::table(
                            &[
                                "name",
                                "state",
                                "host",
                                "port",
                                "tenants",
                                "room",
                                "max_tenants",
                                "migrate_concurrency"
                            ],
                            rows
                        )
                    );
                }
            }
        }
        ServersCmd::Get { name } => {
            let server = c.get(&path(&name), &[]).await?;
            print_server(ctx, &server);
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
            print_server(ctx, &server);
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
            print_server(ctx, &server);
        }
        ServersCmd::Remove { name } => {
            let url = c.url(&path(&name), &[])?;
            let server = c.call(reqwest::Method::DELETE, url, None, &[]).await?;
            print_server(ctx, &server);
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
            print_drain(ctx, &drain);
            if watch {
                let ids: Vec<String> = drain["started"]
                    .as_array()
                    .map(|s| {
                        s.iter()
                            .filter_map(|m| m["move_id"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let ended = follow::moves(ctx, &ids).await?;
                follow::print_moves(ctx, &ended);
                if drain["remaining"].as_i64().is_some_and(|n| n > 0) {
                    eprintln!(
                        "{} tenants were not started (no time or no room): run `dbtools servers \
                         drain {name}` again",
                        drain["remaining"]
                    );
                }
                follow::check_moves(&ended)?;
            }
        }
    }
    Ok(())
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

fn print_server(ctx: &Ctx, server: &Value) {
    match ctx.output {
        Output::Json => output::print_json(server),
        Output::Table => {
            let mut shown = server.clone();
            if server["tenants"].is_object() {
                shown["tenants"] = json!(output::counts(&server["tenants"]));
            }
            println!("{}", output::fields(&shown, SERVER_FIELDS));
        }
    }
}

fn print_drain(ctx: &Ctx, drain: &Value) {
    match ctx.output {
        // With --watch the moves follow as JSON too (one document each).
        Output::Json => output::print_json(drain),
        Output::Table => {
            println!(
                "{}",
                output::fields(
                    drain,
                    &[
                        "server",
                        "state",
                        "moving",
                        "remaining",
                        "not_movable",
                        "errors"
                    ]
                )
            );
            let rows: Vec<Vec<String>> = drain["started"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|m| output::cells(m, &["slug", "to", "move_id"]))
                        .collect()
                })
                .unwrap_or_default();
            if rows.is_empty() {
                println!("no move started");
            } else {
                println!("{}", output::table(&["slug", "to", "move_id"], rows));
            }
        }
    }
}
