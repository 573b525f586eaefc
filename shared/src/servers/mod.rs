//! The PostgreSQL servers tenant databases live on: the registry's record of them (the
//! `servers` table and its HTTP API), and placement.
//!
//! - `primary` is the server that holds the registry, always there: its host, port and admin
//!   secret are the functions' own (`DB_SECRET_ID`, `DB_HOST`, `DB_PORT`). Every other server
//!   is registered with its host, port and the ARN (or name) of its admin secret, after a real
//!   check: the product connects with that secret and verifies what it needs there (PostgreSQL
//!   15 or later, `CREATEDB`, `CREATEROLE`, membership of `pg_signal_backend`).
//! - A server is `open` (takes new tenants) or `draining` (keeps its tenants, takes no new
//!   one), has a capacity (`max_tenants`: tenants not purged) and a connection budget for
//!   fleet work (`migrate_concurrency`).
//! - **Placement**: a new tenant goes where the request says, or else to the open server with
//!   the most room (that answers: one that cannot be reached is passed over). Capacity is
//!   never exceeded, even under concurrent creates: the tenant's row is inserted in a
//!   transaction that holds the server's row (`FOR UPDATE`) and counts its tenants after
//!   taking it.
//! - A server is deleted only when it holds no tenant (purged ones keep no database); `primary`
//!   never.
//!
//! | module | owns |
//! | --- | --- |
//! | `state` | [`ServerState`]: `open` or `draining` |
//! | `view` | [`ServerView`]: a server as the API shows it, its tenants counted; list and get |
//! | `error` | [`ServersError`], the errors of every operation here |
//! | `register` | [`NewServer`], registered after a real check of its secret and server |
//! | `update` | [`ServerPatch`], a change of state, capacity or budget |
//! | `remove` | removing a server that holds no tenant, then its templates |
//! | `placement` | where a new tenant goes, and the claim on a server's room |
//! | `hardening` | `PUBLIC`'s access to the databases every cluster starts with, taken away |

mod error;
pub(crate) mod hardening;
mod placement;
mod register;
mod remove;
mod state;
mod update;
mod view;

pub use crate::database::PRIMARY;
pub use crate::domain::ServerName;
pub use error::ServersError;
pub use placement::NoRoom;
pub(crate) use placement::{candidates, claim, Claim};
pub use register::{register_server, NewServer};
pub use remove::remove_server;
pub use state::ServerState;
pub use update::{update_server, ServerPatch};
pub use view::{get_server, list_servers, ServerView, TenantCounts};
