//! A tenant's move to another server (issue 20), by copy or online (logical replication).
//!
//! A move is a row of `moves` ([`record`]), started by `POST /api/tenants/{slug}/move`
//! ([`start`]) and advanced by messages on the migrate queue, which `migrate-tenant` hands to
//! [`drive`]: each delivery takes the tenant's lock and a slot of both servers'
//! `migrate_concurrency` budgets, then runs the steps ([`steps`]; the table copy and the
//! checksums in [`copy`]; an online move's replication in [`online`], its SQL in
//! [`replication`]) while its invocation has time, recording each as it ends, and sends the
//! message again to go on or to wait. No scheduler of ours: SQS delivers, migrate-all's upkeep
//! sends the message again for a move whose lease passed (a lost message, a killed worker).
//!
//! **The invariant.** At every instant at most one copy of the tenant's database is open to
//! its login: the source until the fence, none between the fence and the switch (writes are
//! refused, never lost), the target from the switch on. The registry names the open copy and
//! the secret follows it (its host and port, the password unchanged). The target database is
//! made closed, then opened to the admin alone; the tenant's login there is made refusing
//! sessions, and opened only after the registry names the target. An online move's
//! replication runs as the admins, named after the move (`dbtools_move_<id>`).
//!
//! | step | does | killed here leaves | what finishes it |
//! |---|---|---|---|
//! | `prepare` | tenant active on `from`, target open (online: both servers able to replicate); the tenant migrated to the latest; a copy an earlier move kept on the target (ours by OID) dropped | nothing new | redone |
//! | `target_db` | the database from the target's template, the move's OID (committed before), `PUBLIC` revoked | a closed database with the move's OID | redone; an undo drops it by its OID |
//! | `open_target` | the login on the target, its password from the secret, `NOLOGIN` | a login refusing sessions | redone (re-keyed); an undo drops it after the database |
//! | `replicate` (online) | a primary key everywhere; a publication on the source, the target emptied, a subscription there | some of them | redone (found by name); an undo drops them |
//! | `sync` (online) | the initial copy done, the target close behind, `VACUUM (ANALYZE)` there | nothing new | redone |
//! | `fence` | `fence_started_at`; the login `NOLOGIN` on the source, its sessions ended (none left) | login refused on the source | redone; an undo opens it again |
//! | `catch_up` (online) | the target applied the source's last write; the subscription (its slots) and the publication dropped | maybe no replication | redone |
//! | `copy` (copy) | schemas compared; every table copied in one target transaction | target rolled back | redone (the copy starts with `TRUNCATE`) |
//! | `sequences` | `setval` on the target from the source | nothing new | redone |
//! | `verify` | the same tables and history; row count and checksum per table on both sides; a difference fails the move | nothing new | redone |
//! | `switch` | (the target's login, if a move of an earlier release lacks it;) one registry transaction: the tenant's server and OID, the move at `finish`, `source_drop_after` | switched or not, atomically | redone, or `finish` |
//! | `finish` | the target's login `LOGIN`, the secret's host and port, the move `done` | registry on the target, login or secret maybe not yet | redone, forward only |
//!
//! A step that fails for good before `switch`, or a cancel, undoes the move (`steps::undo`:
//! the replication ended, the target's database and login dropped, the source's login opened
//! again) and ends it `failed` or `cancelled`, the tenant serving where it was. A step that
//! must wait (a server away, a lock, the initial copy) is tried again a few seconds later;
//! after 15 minutes without progress before the switch, the move is undone. After the switch
//! a move only goes forward.
//!
//! While a move runs, delete, restore, purge and rotation of the tenant answer 409 (or fail,
//! for a rotation Secrets Manager retries), and migrate-all defers it (a schema changed under
//! an online move would not replicate); a later run migrates it where it landed.

pub(crate) mod context;
pub(crate) mod copy;
pub mod drain;
pub mod drive;
pub(crate) mod online;
pub mod record;
pub(crate) mod replication;
pub mod start;
pub(crate) mod steps;
pub mod upkeep;

pub use drain::{drain_server, Drain};
pub use drive::{advance_move, Delivered};
pub use record::{Move, MoveMode, MoveState, Step};
pub use start::{cancel_move, get_move, list_moves, start_move, MoveError, MoveRequest};
pub use upkeep::{upkeep, MoveUpkeep};
