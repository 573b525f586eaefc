//! Where every login of a server may go besides its own database: the databases every
//! PostgreSQL cluster starts with. `PUBLIC` (so every tenant's login) may connect to `postgres`
//! and `template1` and make temporary tables there, and there a login can make a large object
//! with no privilege at all: something of its own outside its database, which would block its
//! purge, and in `template1` be copied into every database made from it.
//!
//! The admin takes `PUBLIC`'s `CONNECT` and `TEMPORARY` away on both where it may (it owns them,
//! or is a superuser), when a server is registered and at every migrate-all run (so `primary`
//! and servers registered before this release are hardened too). Where it may not (RDS's
//! `template1` belongs to `rdsadmin`; a server administered by a role that does not own
//! `postgres`), the run reports the databases that stay open to every login, and the product
//! copes: templates are built from `template0` (see [`crate::tenant::template`]), and dropping a login
//! drops what it owns in every database first (see [`crate::tenant::access::login`]).
//!
//! Other roles of the operator's that connect to `postgres` through `PUBLIC`'s privilege (a
//! monitoring user, another registry's admin on a shared cluster) need `GRANT CONNECT ON
//! DATABASE postgres TO ...` once hardened; or set `HARDEN_SHARED_DATABASES=false` to have the
//! databases reported only.

use tracing::{info, warn};

use crate::{
    domain::quote_ident,
    pg::{Conn, DbError},
};

/// The databases of every cluster that every login may open until hardened.
pub(crate) const SHARED_DATABASES: [&str; 2] = ["postgres", "template1"];

/// Takes `PUBLIC`'s `CONNECT` and `TEMPORARY` away on [`SHARED_DATABASES`] where the admin may
/// (only looks, without `revoke`). Returns those that every login may still open.
pub(crate) async fn harden(admin: &Conn, revoke: bool) -> Result<Vec<String>, DbError> {
    let rows = admin
        .query(
            "SELECT d.datname::text AS name, \
               has_database_privilege('public', d.oid, 'CONNECT') \
                 OR has_database_privilege('public', d.oid, 'TEMPORARY') AS open, \
               d.datallowconn AS allows, \
               (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
                 OR pg_has_role(current_user, d.datdba, 'USAGE') AS may \
             FROM pg_database d WHERE d.datname = ANY($1) ORDER BY 1",
            &[&&SHARED_DATABASES[..]],
        )
        .await?;
    let mut still_open = Vec::new();
    for row in rows {
        let name: String = row.try_get("name")?;
        let open: bool = row.try_get("open")?;
        let allows: bool = row.try_get("allows")?;
        if !open || !allows {
            continue;
        }
        if !revoke || !row.try_get::<_, bool>("may")? {
            still_open.push(name);
            continue;
        }
        admin
            .locking()
            .batch_execute(&format!(
                "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC",
                quote_ident(&name)
            ))
            .await?;
        info!(database = %name, "every login may no longer connect to this database");
    }
    if !still_open.is_empty() {
        warn!(databases = ?still_open, "every login may still connect to these databases (the admin does not own them, or HARDEN_SHARED_DATABASES is false); what a tenant leaves there is dropped with its login");
    }
    Ok(still_open)
}
