//! The provisioning library every function uses: configuration, credentials, connections,
//! the tenant registry and lifecycle, migrations, and the HTTP contract (without an HTTP
//! library: the function crates adapt it to `lambda_http`).

pub mod api;
pub mod aws;
pub mod config;
pub mod database;
pub mod domain;
pub mod fleet;
pub mod invocation;
pub mod migrate;
pub mod page;
pub mod pg;
pub mod servers;
pub mod tenant;

pub use config::Config;
pub use database::Database;
pub use invocation::Invocation;
