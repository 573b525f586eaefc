//! The local stack as `scripts/stack.sh run` exports it: the API's and the servers' URLs,
//! the names the product gives a tenant's database and secret, and the stack's log files.

pub(crate) fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests through `make test` (scripts/stack.sh run)")
    })
}

pub fn api_url() -> String {
    var("DBTOOLS_API_URL")
}

pub fn pg_url() -> String {
    var("DBTOOLS_PG_URL")
}

/// The servers of the local stack: `primary` (the registry's cluster) and `secondary`.
pub const SERVERS: [&str; 2] = ["primary", "secondary"];

/// A superuser URL of a local server.
pub fn pg_url_of(server: &str) -> String {
    match server {
        "primary" => var("DBTOOLS_PG_URL"),
        "secondary" => var("DBTOOLS_PG2_URL"),
        other => panic!("the local stack has no server {other:?}"),
    }
}

pub fn database_name(slug: &str) -> String {
    format!("dbtools_tenant_{slug}")
}

/// A tenant's secret name (the local stack's prefix).
pub fn secret_name(slug: &str) -> String {
    format!("dbtools/tenants/{slug}")
}

/// The local stack's log file `name` (`watch.log`, `pg/server.log`), as text.
pub fn stack_log(name: &str) -> String {
    let path = format!("{}/{name}", var("DBTOOLS_LOCAL_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
