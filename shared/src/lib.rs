//! The provisioning library every function uses: configuration, credentials, connections,
//! the tenant registry and lifecycle, migrations, and the HTTP contract (without an HTTP
//! library: the function crates adapt it to `lambda_http`).

pub(crate) mod access;
pub mod api;
mod aws;
mod body;
pub mod config;
pub(crate) mod credentials;
pub mod db;
pub mod domain;
pub mod fleet;
pub(crate) mod hardening;
pub mod invocation;
pub mod ledger;
pub mod lifecycle;
pub mod locks;
pub(crate) mod logins;
pub mod migrations;
pub(crate) mod ownership;
pub mod provision;
pub mod queue;
pub mod rotation;
pub mod secrets;
pub mod servers;
pub mod session;
pub(crate) mod template;
pub mod tenants;
pub(crate) mod transport;

pub use config::Config;
pub use db::Database;
pub use invocation::Invocation;
