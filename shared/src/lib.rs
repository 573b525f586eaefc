//! The provisioning library every function uses: configuration, credentials, connections,
//! the tenant registry and lifecycle, migrations, and the HTTP contract (without an HTTP
//! library: the function crates adapt it to `lambda_http`).

// The documentation is for whoever changes this crate (`cargo doc --document-private-items`):
// a module's table of contents links its private children, which a reader of the public API
// alone would not follow.
#![allow(rustdoc::private_intra_doc_links)]

pub mod api;
pub mod aws;
pub mod config;
pub mod database;
pub mod domain;
pub mod events;
pub mod fleet;
pub mod invocation;
pub mod metrics;
pub mod migrate;
pub mod page;
pub mod pg;
pub mod servers;
pub mod tenant;

pub use config::Config;
pub use database::Database;
pub use invocation::Invocation;
