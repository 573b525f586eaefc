//! `dbtools tenants ...`: `/api/tenants` and a tenant's move, and its credentials from its
//! Secrets Manager secret.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::{
    error::CliError,
    follow, ledger,
    output::{self, Output},
    secret, Ctx,
};

#[derive(Debug, Subcommand)]
pub enum TenantsCmd {
    /// Create a tenant: its database, login and secret, at the latest migration.
    Create {
        /// Lowercase letter first, then lowercase letters, digits or `_` (3 to 48).
        slug: String,
        /// The display name (default: the slug).
        #[arg(long)]
        name: Option<String>,
        /// The server to place it on (default: the open server with the most room).
        #[arg(long)]
        server: Option<String>,
        /// Makes a retried create answer as the first one did (`Idempotency-Key`).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// List tenants, oldest first.
    List(ListArgs),
    /// Show one tenant, whatever its status.
    Get { slug: String },
    /// Soft-delete a tenant: its login refuses sessions; database and secret are kept.
    Delete { slug: String },
    /// Bring a deleted tenant back: active, at the latest migration.
    Restore { slug: String },
    /// Remove a deleted tenant for good: database, login and secret (the slug stays taken).
    Purge { slug: String },
    /// Print the tenant's connection string, read from its Secrets Manager secret.
    ///
    /// The password is masked unless --show-password. Locally the secret is read from the
    /// stack's Secrets Manager (AWS_ENDPOINT_URL_SECRETS_MANAGER, default
    /// http://127.0.0.1:5000 when --api is local).
    Credentials {
        slug: String,
        /// Print the password itself.
        #[arg(long)]
        show_password: bool,
    },
    /// Move a tenant to another server (202: the move runs in the background; `dbtools moves`
    /// follows and cancels it).
    Move {
        slug: String,
        /// The server to move it to.
        #[arg(long)]
        to: String,
        /// `copy` (writes refused while every table is copied) or `online` (logical
        /// replication; writes refused only for the final catch-up).
        #[arg(long, value_enum, default_value_t = MoveMode::Copy)]
        mode: MoveMode,
        /// Follow the move until it ends; exits 3 if it fails, is cancelled or stalls.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MoveMode {
    Copy,
    Online,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tenants with this status.
    #[arg(long, value_parser = ["provisioning", "active", "deleted", "purged"])]
    status: Option<String>,
    /// Tenants per page (1-500).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// The `next_cursor` of the previous page.
    #[arg(long, conflicts_with = "all")]
    cursor: Option<String>,
    /// Follow `next_cursor` to the last page.
    #[arg(long)]
    all: bool,
}

const TENANT_FIELDS: &[&str] = &[
    "slug",
    "name",
    "status",
    "server",
    "schema_version",
    "database_name",
    "credentials_secret_arn",
    "id",
    "created_at",
    "deleted_at",
    "move_id",
];

pub async fn run(ctx: &Ctx, cmd: TenantsCmd) -> Result<(), CliError> {
    let c = &ctx.client;
    match cmd {
        TenantsCmd::Create {
            slug,
            name,
            server,
            idempotency_key,
        } => {
            let mut body = json!({"name": name.unwrap_or_else(|| slug.clone()), "slug": slug});
            if let Some(server) = server {
                body["server"] = json!(server);
            }
            let url = c.url(&[("", "api"), ("", "tenants")], &[])?;
            if let Some(k) = &idempotency_key {
                // What a header can carry (the API's rule: 1-255 visible ASCII characters).
                if k.is_empty() || k.len() > 255 || !k.chars().all(|c| c.is_ascii_graphic()) {
                    return Err(CliError::Usage(
                        "--idempotency-key: 1 to 255 visible ASCII characters".into(),
                    ));
                }
            }
            let extra: Vec<(&str, String)> = idempotency_key
                .map(|k| vec![("idempotency-key", k)])
                .unwrap_or_default();
            let tenant = c
                .call(reqwest::Method::POST, url, Some(&body), &extra)
                .await?;
            print_tenant(ctx, &tenant)?;
        }
        TenantsCmd::List(args) => list(ctx, args).await?,
        TenantsCmd::Get { slug } => {
            let tenant = c.get(&path(&slug), &[]).await?;
            print_tenant(ctx, &tenant)?;
        }
        TenantsCmd::Delete { slug } => {
            let url = c.url(&path(&slug), &[])?;
            let tenant = c.call(reqwest::Method::DELETE, url, None, &[]).await?;
            print_tenant(ctx, &tenant)?;
        }
        TenantsCmd::Restore { slug } => {
            let tenant = c.post(&action(&slug, "restore"), &json!({})).await?;
            print_tenant(ctx, &tenant)?;
        }
        TenantsCmd::Purge { slug } => {
            let tenant = c.post(&action(&slug, "purge"), &json!({})).await?;
            print_tenant(ctx, &tenant)?;
        }
        TenantsCmd::Credentials {
            slug,
            show_password,
        } => {
            let tenant = c.get(&path(&slug), &[]).await?;
            let creds = secret::tenant_credentials(c, &tenant, show_password).await?;
            match ctx.output {
                Output::Json => output::print_json(&creds)?,
                Output::Table => output::print(&output::fields(
                    &creds,
                    &[
                        "slug",
                        "connection_string",
                        "host",
                        "port",
                        "dbname",
                        "username",
                        "password",
                        "secret_arn",
                    ],
                ))?,
            }
        }
        TenantsCmd::Move {
            slug,
            to,
            mode,
            watch,
        } => {
            let mode = match mode {
                MoveMode::Copy => "copy",
                MoveMode::Online => "online",
            };
            let mv = c
                .post(&action(&slug, "move"), &json!({"to": to, "mode": mode}))
                .await?;
            if watch {
                let id = mv["id"].as_str().unwrap_or_default().to_owned();
                let ended = follow::moves(ctx, &[id], ctx.stall_after).await?;
                for mv in &ended {
                    follow::print_move(ctx, mv)?;
                }
                follow::check_moves(&ended)?;
            } else {
                follow::print_move(ctx, &mv)?;
            }
        }
    }
    Ok(())
}

fn path(slug: &str) -> [(&str, &str); 3] {
    [("", "api"), ("", "tenants"), ("tenant", slug)]
}

fn action<'a>(slug: &'a str, what: &'a str) -> [(&'a str, &'a str); 4] {
    [("", "api"), ("", "tenants"), ("tenant", slug), ("", what)]
}

fn print_tenant(ctx: &Ctx, tenant: &Value) -> Result<(), CliError> {
    match ctx.output {
        Output::Json => output::print_json(tenant),
        Output::Table => output::print(&output::fields(tenant, TENANT_FIELDS)),
    }
}

async fn list(ctx: &Ctx, args: ListArgs) -> Result<(), CliError> {
    let mut tenants = Vec::new();
    let mut cursor = args.cursor;
    let mut seen = std::collections::HashSet::new();
    let next = loop {
        let mut query = vec![("limit", args.limit.to_string())];
        if let Some(s) = &args.status {
            query.push(("status", s.clone()));
        }
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let page = ctx
            .client
            .get(&[("", "api"), ("", "tenants")], &query)
            .await?;
        tenants.extend(page["tenants"].as_array().cloned().unwrap_or_default());
        let next = page["next_cursor"].as_str().map(str::to_owned);
        match next {
            Some(n) if args.all => {
                // A cursor seen before would page forever.
                if !seen.insert(n.clone()) {
                    return Err(ledger::repeated_cursor(&n));
                }
                cursor = Some(n);
            }
            other => break other,
        }
    };
    match ctx.output {
        Output::Json => output::print_json(&json!({"tenants": tenants, "next_cursor": next}))?,
        Output::Table => {
            let rows = tenants
                .iter()
                .map(|t| {
                    output::cells(
                        t,
                        &[
                            "slug",
                            "name",
                            "status",
                            "server",
                            "schema_version",
                            "created_at",
                        ],
                    )
                })
                .collect();
            output::print(&output::table(
                &["slug", "name", "status", "server", "version", "created_at"],
                rows,
            ))?;
            if let Some(n) = next {
                output::print(&format!("more: --cursor {n} (or --all)"))?;
            }
        }
    }
    Ok(())
}
