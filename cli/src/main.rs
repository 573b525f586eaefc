//! `dbtools`: the operator's CLI for the tenant-provisioning control plane. It calls the HTTP
//! API (signed with SigV4 when the API is not this machine's) and invokes migrate-all through
//! the Lambda Invoke API. See docs/cli.md.
//!
//! Layout: this file holds the top of the command tree and the dispatch; `tenants`, `servers`,
//! `moves` and `runs` each own their subcommands; `client` (HTTP) and `sign` (SigV4) talk to AWS;
//! `output` prints tables or JSON; `ledger` reads and shows runs, `watch` follows them and
//! `follow` follows moves; `secret` reads a tenant's secret.

mod client;
mod error;
mod follow;
mod ledger;
mod moves;
mod output;
mod runs;
mod secret;
mod servers;
mod sign;
mod tenants;
mod watch;

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

use crate::{
    client::{Client, Settings},
    error::CliError,
    output::Output,
};

/// dbtools: create, list, delete, restore and purge tenant databases, manage the PostgreSQL
/// servers they live on, move tenants, and run and follow migrate-all.
///
/// Talks to the HTTP API at --api (default: the local `make dev` stack). A URL that is not
/// this machine's is signed with SigV4 from the standard AWS credential chain (environment,
/// profile, SSO, role), as the AWS CLI does.
#[derive(Debug, Parser)]
#[command(name = "dbtools", version, propagate_version = true)]
struct Cli {
    /// The HTTP API's base URL: the local stack, or the deployed API Gateway URL
    /// (`https://{id}.execute-api.{region}.amazonaws.com`).
    #[arg(
        long,
        global = true,
        env = "DBTOOLS_API",
        default_value = "http://127.0.0.1:9000"
    )]
    api: String,

    /// How to print results: tables, or the API's JSON.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,

    /// Seconds to wait for each API call's answer (and each Secrets Manager call's).
    #[arg(long, global = true, env = "DBTOOLS_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,

    /// The AWS region to sign for (default: the called host's, else the API host's, else the
    /// AWS configuration's). Secrets Manager is always asked in the secret's own region.
    #[arg(long, global = true)]
    region: Option<String>,

    /// The migrate-all function's name or ARN, for `runs start` and `runs retry` (deployed:
    /// the stack's `MigrateAllFunctionName` output).
    #[arg(
        long,
        global = true,
        env = "DBTOOLS_MIGRATE_FUNCTION",
        default_value = "migrate-all"
    )]
    function: String,

    /// The Lambda Invoke API's endpoint (default: the API's own address when it is local,
    /// else `https://lambda.{region}.amazonaws.com`).
    #[arg(long, global = true, env = "DBTOOLS_LAMBDA_ENDPOINT")]
    lambda_endpoint: Option<String>,

    /// Seconds to wait for a migrate-all invocation (an inline run takes up to 15 minutes).
    #[arg(long, global = true, default_value_t = 960,
          value_parser = clap::value_parser!(u64).range(1..))]
    invoke_timeout: u64,

    /// A watch (`runs watch`, any `--watch`) gives up, exit 3, on a run or move whose
    /// `updated_at` has not changed for this many seconds (the product's RUN_STALL_SECS).
    #[arg(long, global = true, env = "DBTOOLS_STALL_AFTER", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(1..))]
    stall_after: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tenants: create, list, get, delete, restore, purge, credentials, move.
    #[command(subcommand)]
    Tenants(tenants::TenantsCmd),
    /// PostgreSQL servers: list, get, add, set, remove, drain.
    #[command(subcommand)]
    Servers(servers::ServersCmd),
    /// Moves of tenants between servers: list, show, cancel.
    #[command(subcommand)]
    Moves(moves::MovesCmd),
    /// migrate-all runs: start, list, show, watch, retry.
    #[command(subcommand)]
    Runs(runs::RunsCmd),
}

/// What every command gets: the client, the output format, and how long a watch waits for
/// progress.
pub struct Ctx {
    pub client: Client,
    pub output: Output,
    pub stall_after: Duration,
}

async fn dispatch(cli: Cli) -> Result<(), CliError> {
    let client = Client::new(Settings {
        api: cli.api,
        lambda_endpoint: cli.lambda_endpoint,
        function: cli.function,
        region: cli.region,
        timeout: Duration::from_secs(cli.timeout),
        invoke_timeout: Duration::from_secs(cli.invoke_timeout),
    })?;
    let ctx = Ctx {
        client,
        output: cli.output,
        stall_after: Duration::from_secs(cli.stall_after),
    };
    match cli.command {
        Command::Tenants(cmd) => tenants::run(&ctx, cmd).await,
        Command::Servers(cmd) => servers::run(&ctx, cmd).await,
        Command::Moves(cmd) => moves::run(&ctx, cmd).await,
        Command::Runs(cmd) => runs::run(&ctx, cmd).await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): what it wanted was written.
        Err(CliError::StdoutClosed) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_parse_anywhere_and_bad_values_are_usage_errors() {
        let cli = Cli::try_parse_from([
            "dbtools",
            "runs",
            "start",
            "--slugs",
            "a_one,b_two",
            "--canary",
            "2",
            "--max-failures",
            "10%",
            "--output",
            "json",
            "--stall-after",
            "60",
        ])
        .unwrap();
        assert_eq!(cli.output, Output::Json);
        assert_eq!((cli.stall_after, cli.timeout), (60, 30));
        let usage = |args: &[&str]| {
            let e = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
        };
        usage(&["dbtools", "tenants", "move", "acme"]);
        usage(&["dbtools", "runs", "start", "--inline", "--queue"]);
        usage(&["dbtools", "--timeout", "0", "tenants", "list"]);
        usage(&["dbtools", "--stall-after", "0", "runs", "watch", "x"]);
        usage(&["dbtools", "moves", "show"]);
    }
}
