//! PostgreSQL, without a word of the product: connections and their deadlines, the classes of
//! errors, transactions, advisory locks, and the proof that a database is ours.
//!
//! Every wait has a deadline, enforced by the client whatever the server does (a server that
//! stops answering still accepts TCP and acknowledges packets, so only the client can tell):
//! - a whole connection (TCP, TLS, authentication) within `DB_CONNECT_TIMEOUT_SECS`;
//! - each registry statement and lock poll within `DB_QUERY_TIMEOUT_SECS`;
//! - each long statement (DDL, a migration) within the server's statement timeout plus
//!   `DB_QUERY_TIMEOUT_SECS`;
//! - TCP: keepalives after 10 s idle, every 5 s, 3 probes, and `tcp_user_timeout` 15 s, so
//!   that a network black hole ends even a long statement's wait.
//!
//! A connection that missed a deadline, or failed at the connection level, is *discarded*:
//! its socket is closed at once (so the server ends the session and releases its advisory
//! locks as soon as it notices) and its owner opens a new one on next use. So is one dropped
//! while a call is still in flight (a future abandoned at a deadline): tokio-postgres would
//! otherwise keep its socket open until the server answers. Work that misses its limit on a
//! connection that cancels is also cancelled on the server (a cancel request).
//!
//! | module | owns |
//! | --- | --- |
//! | [`connect`] | opening a connection: parameters, TLS, the session's server-side timeouts |
//! | [`transport`] | the socket under it: keepalives, refusing cleartext passwords, closing |
//! | [`conn`] | [`Conn`]: a connection whose calls have deadlines, and what abandoning one does |
//! | [`timed`] | the calls, with the query timeout or a deadline of the caller's |
//! | [`tx`] | [`Tx`]: a transaction that cannot be left open |
//! | [`error`] | [`DbError`] and its classes |
//! | [`locks`] | advisory locks held by a guard |
//! | [`ownership`] | databases made with an OID chosen beforehand, and only those touched |

pub(crate) mod conn;
pub(crate) mod connect;
pub(crate) mod error;
pub mod locks;
pub(crate) mod ownership;
pub(crate) mod timed;
pub(crate) mod transport;
pub(crate) mod tx;

pub use conn::Conn;
pub use connect::ConnectParams;
pub(crate) use connect::Connector;
pub use error::DbError;
pub(crate) use error::{error_chain, is_unavailable};
pub use timed::Timed;
pub use tx::Tx;
