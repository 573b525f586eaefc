//! Creating a tenant, and converging after a create that died half-way.
//!
//! `CREATE DATABASE` cannot run in a transaction, and a Lambda can be killed at any
//! instruction, so provisioning is a sequence of steps, each of which checks what exists
//! before acting and can be repeated:
//!
//! 1. place the tenant ([`place`]): for the server the request names, or else each open
//!    server with room, most room first (see [`crate::servers`]), make sure its tenant template
//!    is ready, then insert the registry row as `provisioning` on that server, with a lease
//!    (`PROVISIONING_LEASE_SECONDS`), the OID its database will have there (the proof of
//!    ownership, see [`crate::pg::ownership`]) and the optional idempotency key, in a transaction
//!    that holds the server's row and counts its tenants (capacity is never exceeded), committed
//!    (a concurrent duplicate gets a conflict from the unique slug and never reaches step 3). A
//!    server that cannot be reached or cannot make its template passes the tenant to the next;
//!    none left is a `NoRoom`;
//! 2. take the tenant's advisory lock (create, delete, reconcile and migrate-all of one tenant
//!    never interleave; the lock dies with its connection);
//! 3. `CREATE DATABASE ... OID = n TEMPLATE` the tenant template on the tenant's server, which
//!    holds every tenant migration already (see [`crate::tenant::template`]). Every step from here on
//!    runs on the row's server, as that server's admin.
//!    If the name exists, the database is not ours: remove our row, answer a conflict, touch
//!    nothing;
//! 4. make the tenant's login (a role named like the database, proven by its comment) with
//!    `CONNECT` on the database (none for `PUBLIC`), in one transaction (see [`crate::tenant::access::login`]);
//! 5. make the tenant's secret (`{TENANT_SECRET_PREFIX}{slug}`, proven by its tag) with the
//!    login's password, and turn its rotation on when configured (see [`crate::tenant::access`]);
//! 6. mark `active` with its `schema_version`, migration fingerprint and secret ARN.
//!
//! The whole create works within its lease (and the invocation's deadline): past it, the work
//! is abandoned as if the process had died, so a live create is never taken for a dead one.
//!
//! A failure the process lives to see is compensated at once: drop the database (ours: its OID
//! is the row's), drop the login and delete the secret (ours: their mark and tag name the row;
//! the secret without a recovery window, it was never handed out), remove the row. The row is
//! removed only once nothing of ours is left. A process that dies leaves
//! the row `provisioning`; once its lease has expired and its lock is free (the holder is
//! gone), the next `POST` of the slug, a retry with the same key and every migrate-all run
//! reconcile it (`reconcile_row` in [`reconcile`]):
//!
//! | what exists when the lease has expired | decision |
//! |---|---|
//! | no database of that name | roll back: drop our login and delete our secret if they exist (a rollback that died), delete the row |
//! | a database of that name whose OID is not the row's (a squatter: the create met it, got `DUPLICATE_DATABASE` and died before removing its row) | *disown*: the database is left untouched (migrate-all reports it as an orphan); our login and secret, if any, removed; the row is deleted so the slug is not stuck |
//! | ours, marked invalid by an interrupted `DROP DATABASE` | roll back: drop it, our login and secret, delete the row |
//! | ours, valid, with or without our login and our secret (killed before, between or after steps 4 and 5) | roll forward: apply the pending migrations (none, for a copy of the template), make what is missing and re-key the login and the secret together (a new password: the old one may be in neither or only one of them), mark `active` |
//! | ours, valid, but a login or a secret of the tenant's name is not ours | *disown*: roll back what is ours, leave that one untouched, delete the row |
//! | ours, valid, but a migration fails | roll back: drop it, our login and secret, delete the row |
//! | PostgreSQL unreachable (the registry, or the row's server), or the lock still held | nothing now; the next attempt decides (migrate-all reports the row's server unreachable and goes on with the others) |
//!
//! Rolling forward is chosen whenever our database exists because the work is done or
//! resumable and the client may already rely on it (its request may have timed out at the
//! gateway while the function ran on); rolling back is chosen when there is nothing to keep.
//!
//! One file per part:
//!
//! | file | what it holds |
//! |---|---|
//! | `create.rs` | [`create_tenant`]: the steps above in order, within the lease; [`Created`] |
//! | `error.rs` | [`CreateTenantError`], what a create answers |
//! | `idempotency.rs` | [`IdempotencyKey`], the request's fingerprint, and replaying the first request with a key |
//! | `place.rs` | step 1: choosing the server, its template, and inserting the row with its lease |
//! | `steps.rs` | steps 2 to 6, finishing a dead provisioning, and rolling back |
//! | `reconcile.rs` | [`ReconcileAction`] and [`reconcile_slug`]: the decision table above |

mod create;
mod error;
mod idempotency;
mod place;
mod reconcile;
mod steps;

pub use create::{create_tenant, Created};
pub use error::CreateTenantError;
pub use idempotency::IdempotencyKey;
pub(crate) use reconcile::reconcile_slug_until;
pub use reconcile::{reconcile_slug, ReconcileAction};
