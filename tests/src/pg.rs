//! Direct PostgreSQL connections that check what exists: the superuser on each local server,
//! the registry, a tenant's database, a tenant's own login, and the catalog probes built on
//! them.

use std::time::Duration;

use serde_json::Value;
use tokio_postgres::{Client, NoTls};

use crate::env::{database_name, pg_url_of, SERVERS};

/// A connection as the PostgreSQL superuser, to `dbname` on `primary`.
pub async fn connect(dbname: &str) -> Client {
    connect_on("primary", dbname).await
}

/// A connection as the PostgreSQL superuser, to `dbname` on a local server.
pub async fn connect_on(server: &str, dbname: &str) -> Client {
    let mut cfg: tokio_postgres::Config = pg_url_of(server).parse().expect("a PostgreSQL URL");
    cfg.dbname(dbname);
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to the local PostgreSQL {server}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The superuser on `primary`'s maintenance database.
pub async fn admin() -> Client {
    connect("postgres").await
}

/// The superuser on a server's maintenance database.
pub async fn admin_on(server: &str) -> Client {
    connect_on(server, "postgres").await
}

/// The server the registry says holds the tenant (none without a row, or once purged off a
/// removed server).
pub async fn tenant_server(slug: &str) -> Option<String> {
    registry()
        .await
        .query_opt("SELECT server FROM tenants WHERE slug = $1", &[&slug])
        .await
        .expect("query the registry")
        .and_then(|r| r.get(0))
}

/// A superuser connection to the tenant's database, on the server the registry names.
pub async fn connect_tenant(slug: &str) -> Client {
    let server = tenant_server(slug)
        .await
        .unwrap_or_else(|| panic!("{slug}: the registry names no server"));
    connect_on(&server, &database_name(slug)).await
}

/// The local servers that hold a database of this name.
pub async fn servers_with_database(name: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    for server in SERVERS {
        let found = admin_on(server)
            .await
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .expect("query pg_database")
            .is_some();
        if found {
            out.push(server);
        }
    }
    out
}

pub async fn registry() -> Client {
    connect(&std::env::var("SYSTEM_DB_NAME").unwrap_or_else(|_| "dbtools".into())).await
}

/// True when a database of this name exists on any local server.
pub async fn database_exists(name: &str) -> bool {
    !servers_with_database(name).await.is_empty()
}

/// The registry row of a slug: (status, schema_version), if any.
pub async fn registry_row(slug: &str) -> Option<(String, i32)> {
    registry()
        .await
        .query_opt(
            "SELECT status, schema_version FROM tenants WHERE slug = $1",
            &[&slug],
        )
        .await
        .expect("query the registry")
        .map(|r| (r.get(0), r.get(1)))
}

/// Databases whose name contains `fragment`, on any local server.
pub async fn databases_like(fragment: &str) -> Vec<String> {
    let mut out = Vec::new();
    for server in SERVERS {
        out.extend(
            admin_on(server)
                .await
                .query(
                    "SELECT datname FROM pg_database WHERE strpos(datname, $1) > 0 ORDER BY 1",
                    &[&fragment],
                )
                .await
                .expect("query pg_database")
                .iter()
                .map(|r| r.get::<_, String>(0)),
        );
    }
    out.sort();
    out
}

/// Connects as a secret's user (the tenant's login), to `dbname` (its own by default).
pub async fn connect_as(
    secret: &Value,
    dbname: Option<&str>,
) -> Result<Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(secret["host"].as_str().unwrap())
        .port(secret["port"].as_u64().unwrap() as u16)
        .user(secret["username"].as_str().unwrap())
        .password(secret["password"].as_str().unwrap())
        .dbname(dbname.unwrap_or_else(|| secret["dbname"].as_str().unwrap()))
        .connect_timeout(Duration::from_secs(5));
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A role, on whichever local server has it: `None` when none has, else whether it may log
/// in.
pub async fn role_can_login(role: &str) -> Option<bool> {
    for server in SERVERS {
        let found = role_can_login_on(server, role).await;
        if found.is_some() {
            return found;
        }
    }
    None
}

/// A role on one local server: `None` when it has none, else whether it may log in.
pub async fn role_can_login_on(server: &str, role: &str) -> Option<bool> {
    admin_on(server)
        .await
        .query_opt(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .expect("query pg_roles")
        .map(|r| r.get(0))
}
