//! Tenant logins: one PostgreSQL role per tenant, named like its database.
//!
//! - LOGIN, NOSUPERUSER, NOCREATEDB, NOCREATEROLE, NOBYPASSRLS, NOREPLICATION, a connection
//!   limit (`TENANT_CONNECTION_LIMIT`), member of the NOLOGIN group role
//!   [`GROUP_ROLE`], which every tenant database grants read and write on its tables (tenant
//!   migration V3; no DDL: `public` takes no `CREATE` from them, PostgreSQL 15's default).
//! - **`CONNECT` is the boundary between tenants**, and it holds at every instant: a tenant
//!   database is made closed (`ALLOW_CONNECTIONS false`, see [`crate::pg::ownership::create_sql`])
//!   and opened in the very transaction that revokes `PUBLIC`'s privileges on it and grants
//!   `CONNECT` to its own login ([`Login::create`]). No other login can ever open it, so no
//!   session of another tenant can be in it, and the group's table grants reach only the
//!   tenant's own login. The group stays (rather than grants to each login) because the
//!   tables come ready-granted in the template copy: a create needs no connection to the new
//!   database, and the tenants made by earlier releases need no conversion.
//! - What every login can reach besides its own database: the maintenance databases where the
//!   server's admin could not revoke `PUBLIC`'s `CONNECT` (see [`crate::servers::hardening`]). What a
//!   login makes there (a large object needs no privilege) would block `DROP ROLE`; dropping a
//!   login therefore drops what it owns in every database first ([`drop_if_ours`]).
//! - Its password: 32 random bytes (a CSPRNG), set as a SCRAM-SHA-256 verifier computed here,
//!   so the password itself never reaches the server (nor its statement logs); it is only ever
//!   in the tenant's secret.
//! - Proof of ownership: the role's comment names the tenant row, written in the same
//!   transaction as `CREATE ROLE`. A role of a tenant's name without it is never altered nor
//!   dropped. The group role carries a comment of its own, checked the same way.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::error::SqlState;
use tracing::info;
use uuid::Uuid;

use crate::{
    database::Admin,
    domain::quote_ident,
    pg::{ownership, Conn, DbError},
};

/// The NOLOGIN role every tenant login is a member of (tenant migration V3 grants it the
/// tables). Made by the product on each server, before any tenant migration runs.
pub(crate) const GROUP_ROLE: &str = "dbtools_tenant_rw";
const GROUP_MARK: &str = "dbtools: the group role of the tenant logins";

/// The comment that proves a login was made for a tenant row.
fn mark(tenant_id: Uuid) -> String {
    format!("dbtools: the login of tenant {tenant_id}")
}

/// A fresh password: 32 bytes from the thread's CSPRNG (ChaCha, seeded by the OS), as 43
/// base64url characters.
pub(crate) fn new_password() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    SecretString::from(URL_SAFE_NO_PAD.encode(bytes))
}

/// The SQL literal of the password's SCRAM-SHA-256 verifier (random salt, 4096 rounds).
/// PostgreSQL stores a verifier as given and never sees the password.
fn verifier_literal(password: &SecretString) -> String {
    let verifier = postgres_protocol::password::scram_sha_256(password.expose_secret().as_bytes());
    // The verifier holds only base64 characters, `$`, `:` and digits; quoted all the same.
    format!("'{}'", verifier.replace('\'', "''"))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// What a role name holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoleState {
    Absent,
    Ours { can_login: bool },
    NotOurs,
}

async fn state_with_mark(conn: &Conn, role: &str, expected: &str) -> Result<RoleState, DbError> {
    let row = conn
        .query_opt(
            "SELECT rolcanlogin, shobj_description(oid, 'pg_authid') AS mark \
             FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await?;
    let Some(row) = row else {
        return Ok(RoleState::Absent);
    };
    let found: Option<String> = row.try_get("mark")?;
    Ok(if found.as_deref() == Some(expected) {
        RoleState::Ours {
            can_login: row.try_get("rolcanlogin")?,
        }
    } else {
        RoleState::NotOurs
    })
}

/// Whose the role of that name is.
pub(crate) async fn state(conn: &Conn, role: &str, tenant_id: Uuid) -> Result<RoleState, DbError> {
    state_with_mark(conn, role, &mark(tenant_id)).await
}

/// Makes the group role on this server if it is not there. A role of its name that the
/// product did not make stops everything that needs it, with a message that says so.
pub(crate) async fn ensure_group(conn: &Conn) -> Result<(), DbError> {
    for _ in 0..2 {
        match state_with_mark(conn, GROUP_ROLE, GROUP_MARK).await? {
            RoleState::Ours { .. } => return Ok(()),
            RoleState::NotOurs => {
                return Err(DbError::Other(anyhow::anyhow!(
                    "a role named {GROUP_ROLE} exists that this product did not make; tenant \
                     logins need it: rename or drop it"
                )))
            }
            RoleState::Absent => {
                let made = conn
                    .locking()
                    .batch_execute(&format!(
                        "CREATE ROLE {g} NOLOGIN NOINHERIT; COMMENT ON ROLE {g} IS {m}",
                        g = quote_ident(GROUP_ROLE),
                        m = literal(GROUP_MARK)
                    ))
                    .await;
                match made {
                    Ok(()) => {
                        info!(
                            role = GROUP_ROLE,
                            "made the group role of the tenant logins"
                        );
                        return Ok(());
                    }
                    // Made by a concurrent caller: look again.
                    Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Err(DbError::Other(anyhow::anyhow!(
        "the group role {GROUP_ROLE} could not be made"
    )))
}

/// A tenant's login and its database.
pub(crate) struct Login<'a> {
    pub role: &'a str,
    pub database: &'a str,
    pub tenant_id: Uuid,
    pub connection_limit: i32,
}

impl Login<'_> {
    /// The login's attributes as `CREATE ROLE` sets them.
    fn settings(&self, can_login: bool, password: &SecretString) -> String {
        format!(
            "NOSUPERUSER NOBYPASSRLS NOREPLICATION {}",
            self.alterable(can_login, password)
        )
    }

    /// The attributes `ALTER ROLE` may set again. Not `SUPERUSER`, `REPLICATION` nor
    /// `BYPASSRLS`, not even to turn them off: PostgreSQL lets only a superuser name them in
    /// `ALTER ROLE`, and a server's admin is rarely one (RDS's is not). The login was made
    /// without them, and the product never grants them.
    fn alterable(&self, can_login: bool, password: &SecretString) -> String {
        format!(
            "{login} NOCREATEDB NOCREATEROLE INHERIT CONNECTION LIMIT {limit} PASSWORD {verifier}",
            login = if can_login { "LOGIN" } else { "NOLOGIN" },
            limit = self.connection_limit,
            verifier = verifier_literal(password),
        )
    }

    /// Membership of the group, then the database opened to its login alone (`PUBLIC`'s
    /// privileges revoked, `CONNECT` granted, connections allowed): the caller's transaction
    /// makes all of it true at once.
    fn grants(&self) -> String {
        let (r, d) = (quote_ident(self.role), quote_ident(self.database));
        format!(
            "GRANT {g} TO {r}; {open}; GRANT CONNECT ON DATABASE {d} TO {r}",
            g = quote_ident(GROUP_ROLE),
            open = ownership::open_sql(self.database),
        )
    }

    /// Makes the login with `password`, marks it, makes it a member of the group, gives it
    /// `CONNECT` on its database and opens that database: one transaction (one round trip).
    /// `Ok(false)` when a role of that name exists already (the caller looks at [`state`]).
    /// With `can_login` false the login exists but refuses sessions (a move's target, until
    /// the registry names it).
    pub(crate) async fn create(
        &self,
        conn: &Conn,
        password: &SecretString,
        can_login: bool,
    ) -> Result<bool, DbError> {
        let r = quote_ident(self.role);
        let sql = format!(
            "CREATE ROLE {r} {settings}; COMMENT ON ROLE {r} IS {mark}; {grants}",
            settings = self.settings(can_login, password),
            mark = literal(&mark(self.tenant_id)),
            grants = self.grants(),
        );
        match conn.locking().batch_execute(&sql).await {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets a login's attributes, membership and grants again, its password left as it is.
    pub(crate) async fn refresh(&self, conn: &Conn, can_login: bool) -> Result<(), DbError> {
        conn.locking()
            .batch_execute(&format!(
                "ALTER ROLE {r} WITH {login} CONNECTION LIMIT {limit}; {grants}",
                r = quote_ident(self.role),
                login = if can_login { "LOGIN" } else { "NOLOGIN" },
                limit = self.connection_limit,
                grants = self.grants(),
            ))
            .await
    }

    /// Sets a login of ours to `password`, and its attributes, membership and grants again
    /// (whatever an interrupted step left): one transaction.
    pub(crate) async fn rekey(
        &self,
        conn: &Conn,
        password: &SecretString,
        can_login: bool,
    ) -> Result<(), DbError> {
        conn.locking()
            .batch_execute(&format!(
                "ALTER ROLE {r} WITH {settings}; {grants}",
                r = quote_ident(self.role),
                settings = self.alterable(can_login, password),
                grants = self.grants(),
            ))
            .await
    }
}

/// Allows or refuses new sessions of a login of ours.
pub(crate) async fn set_login(conn: &Conn, role: &str, can_login: bool) -> Result<(), DbError> {
    conn.locking()
        .batch_execute(&format!(
            "ALTER ROLE {} {}",
            quote_ident(role),
            if can_login { "LOGIN" } else { "NOLOGIN" }
        ))
        .await
}

/// Ends every session of a login (on this server) and waits, at most [`SESSION_EXIT_WAIT`],
/// until they are gone (an exiting backend still holds its temporary objects, and a move's
/// fence reads the WAL position after this). Polls every 5 ms: `pg_terminate_backend`'s own
/// wait sleeps 100 ms at a time, which a move's fence would feel. Returns how many there were.
pub(crate) async fn end_sessions(conn: &Conn, role: &str) -> Result<i64, DbError> {
    let sql = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1";
    let ended: i64 = conn.query_one(sql, &[&role]).await?.try_get(0)?;
    let until = std::time::Instant::now() + SESSION_EXIT_WAIT;
    while ended > 0 && std::time::Instant::now() < until && sessions(conn, role).await? > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Ok(ended)
}

/// How many sessions a login has on this server.
pub(crate) async fn sessions(conn: &Conn, role: &str) -> Result<i64, DbError> {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE usename = $1";
    Ok(conn.query_one(sql, &[&role]).await?.try_get(0)?)
}

/// How long [`end_sessions`] waits for the backends to exit.
const SESSION_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Drops a login of ours (ending its sessions first), and whatever it owns or was granted in
/// any database of the server: what a login made where every login may connect (a large
/// object in `postgres`, say) must not keep its purge from finishing. `Ok(false)` when there
/// is no such role or it is not ours (left untouched).
pub(crate) async fn drop_if_ours(
    admin: &Admin<'_>,
    role: &str,
    tenant_id: Uuid,
) -> Result<bool, DbError> {
    match state(admin, role, tenant_id).await? {
        RoleState::Ours { .. } => {
            set_login(admin, role, false).await?;
            end_sessions(admin, role).await?;
            let drop_role = format!("DROP ROLE IF EXISTS {}", quote_ident(role));
            match admin.locking().batch_execute(&drop_role).await {
                Err(e) if e.code() == Some(&SqlState::DEPENDENT_OBJECTS_STILL_EXIST) => {
                    drop_owned_everywhere(admin, role).await?;
                    admin.locking().batch_execute(&drop_role).await?;
                }
                other => other?,
            }
            info!(role = %role, "dropped a tenant login this registry made");
            Ok(true)
        }
        RoleState::Absent | RoleState::NotOurs => Ok(false),
    }
}

/// `DROP OWNED BY role` in each database where the role owns something or holds a privilege
/// (`pg_shdepend`, the shared catalog that records both). The admin takes the role's
/// privileges first where it lacks them (PostgreSQL requires them; a `CREATEROLE` admin may
/// grant itself a role it made).
async fn drop_owned_everywhere(admin: &Admin<'_>, role: &str) -> Result<(), DbError> {
    let rows = admin
        .query(
            "SELECT DISTINCT d.datname::text AS name, d.datallowconn, \
               d.datname = current_database() AS here \
             FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid \
             WHERE s.refclassid = 'pg_authid'::regclass \
               AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1)",
            &[&role],
        )
        .await?;
    let r = quote_ident(role);
    let has: bool = admin
        .query_one(
            "SELECT pg_has_role(current_user, $1, 'USAGE') AS has",
            &[&role],
        )
        .await?
        .try_get("has")?;
    if !has {
        admin
            .locking()
            .batch_execute(&format!("GRANT {r} TO CURRENT_USER"))
            .await?;
    }
    for row in rows {
        let name: String = row.try_get("name")?;
        let here: bool = row.try_get("here")?;
        let drop_owned = format!("DROP OWNED BY {r}");
        if here {
            admin.long().batch_execute(&drop_owned).await?;
            continue;
        }
        if !row.try_get::<_, bool>("datallowconn")? {
            return Err(DbError::Other(anyhow::anyhow!(
                "login {role} owns objects in database {name}, which allows no connection: \
                 they cannot be dropped"
            )));
        }
        let there = admin.server().connect(&name).await?;
        let dropped = there.long().batch_execute(&drop_owned).await;
        there.close().await;
        dropped?;
        info!(role = %role, database = %name, "dropped what a tenant login owned outside its database");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_random_and_never_repeat() {
        let a = new_password();
        let b = new_password();
        assert_eq!(a.expose_secret().len(), 43, "32 bytes in base64url");
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(a
            .expose_secret()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn the_server_gets_a_verifier_not_the_password() {
        let p = new_password();
        let v = verifier_literal(&p);
        assert!(v.starts_with("'SCRAM-SHA-256$4096:"), "{v}");
        assert!(!v.contains(p.expose_secret()));
        let login = Login {
            role: "dbtools_tenant_acme",
            database: "dbtools_tenant_acme",
            tenant_id: Uuid::nil(),
            connection_limit: 20,
        };
        let settings = login.settings(true, &p);
        assert!(settings
            .starts_with("NOSUPERUSER NOBYPASSRLS NOREPLICATION LOGIN NOCREATEDB NOCREATEROLE"));
        assert!(settings.contains("CONNECTION LIMIT 20"));
        assert!(!settings.contains(p.expose_secret()));
        // What a non-superuser admin (RDS's) may not name in ALTER ROLE is left out there.
        let altered = login.alterable(false, &p);
        for only_superuser in ["SUPERUSER", "REPLICATION", "BYPASSRLS"] {
            assert!(!altered.contains(only_superuser), "{altered}");
        }
        assert!(altered.starts_with("NOLOGIN NOCREATEDB NOCREATEROLE"));
    }
}
