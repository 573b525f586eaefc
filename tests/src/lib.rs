//! Harness for the end-to-end tests: the local stack's addresses (exported by
//! `scripts/stack.sh run`), an HTTP client for the real routes, and a direct PostgreSQL
//! connection to check what exists afterwards.
//!
//! Every helper is re-exported at the root, so that a test says `use e2e::*` (or
//! `e2e::get`) without knowing where it lives. Where it lives, lower layers first:
//! - `env`: the stack's URLs and servers (`SERVERS`), a tenant's database and secret names,
//!   the stack's log files;
//! - `http`: the real routes (`Reply`, `request*`, `post_tenant`, `get`, `delete`) and the
//!   Lambda Invoke API (`invoke`, `invoke_migrate_all`);
//! - `pg`: superuser connections (`connect*`, `admin*`, `registry`) and what they probe
//!   (`registry_row`, `database_exists`, `databases_like`, `role_can_login`, `connect_as`);
//! - `migrations`: the tenant migrations of this release (`all_versions`, `latest`), a
//!   tenant's history, and `undo_*` to leave a tenant behind;
//! - `locks`: the test locks (`test_lock`, `TEMPLATE_LOCK`, `FLEET_LOCK`), sessions held on a
//!   server (`Held`), and `block_on_own_thread` for a `Drop`;
//! - `aws`: Secrets Manager and SQS through the real SDK (`read_secret`, `put_secret`,
//!   `sqs_event`, `OwnQueue`);
//! - `events`: the lifecycle events on the local bus, through a rule and queue of the test's
//!   own (`EventTap`, `event_of`);
//! - `tenants`: tenants made through the API (`unique_slug`, `create_tenants*`) and removed
//!   afterwards (`Cleanup`, `purge_tenant`);
//! - `squatters`: databases of a tenant's name that the product did not make;
//! - `servers`: `/api/servers/{name}` and `Restore`;
//! - `runs`: migrate-all's runs and report (`wait_run_end`, `run_tenant`, `report_row`);
//! - `cli`: the real `dbtools` binary (`dbtools`, `CliRun`) and a terminal of a test's own
//!   (`Tmux`);
//! - `cluster`: clusters of a test's own (`ThrowawayCluster`, `RegisteredCluster`);
//! - `runtime`: a Lambda Runtime API of the test's own, to run (and kill) a function binary;
//! - `wait`: `eventually`, polling for what the stack does in the background.

mod aws;
mod cli;
mod cluster;
mod env;
mod events;
mod http;
mod locks;
mod migrations;
mod pg;
mod runs;
pub mod runtime;
mod servers;
mod squatters;
mod tenants;
mod wait;

pub use aws::*;
pub use cli::*;
pub use cluster::*;
pub use env::*;
pub use events::*;
pub use http::*;
pub use locks::*;
pub use migrations::*;
pub use pg::*;
pub use runs::*;
pub use serde_json::json;
pub use servers::*;
pub use squatters::*;
pub use tenants::*;
pub use wait::*;
