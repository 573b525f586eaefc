//! Fault tests with real processes: terminated backends, PostgreSQL stopped and started,
//! PostgreSQL frozen (SIGSTOP) and thawed, the admin password rotated, functions SIGKILLed. They disturb the whole stack, so they run alone
//! (`make test-faults`; `make test` runs them after the other tests, one at a time). After
//! each, the invariants hold. (Killing a function process mid-invocation is not among them:
//! `cargo lambda watch` stops serving that function until restarted; see docs/reliability.md.)
//!
//! One file per fault family: `outages` (a server stopped or frozen), `connections` (the
//! functions' connections cut, the admin password rotated), `killed_create`,
//! `killed_lifecycle` and `killed_migrate` (a function SIGKILLed at a chosen step),
//! `deadlines`, `fleet`, `isolation` and `stack`. This module holds what they share: the
//! invariants every fault must leave intact (`assert_invariants`), and the ways a test stops
//! a function at a chosen step and waits for it there.

mod connections;
mod deadlines;
mod fleet;
mod isolation;
mod killed_create;
mod killed_lifecycle;
mod killed_migrate;
mod killed_move;
mod outages;
mod stack;

use std::time::{Duration, Instant};

use e2e::*;
use reqwest::{Method, StatusCode};

/// Runs `scripts/stack.sh ARGS` (stop/start PostgreSQL, rewrite the secret).
fn stack(args: &[&str]) {
    let script = format!("{}/../scripts/stack.sh", env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .status()
        .expect("run stack.sh");
    assert!(status.success(), "stack.sh {args:?} failed");
}

/// Repeats `f` until it returns true or `within` has passed.
/// The invariants every fault must leave intact:
/// - every `active` row has a valid database at the latest version, recorded in the row, and
///   that database is the one the registry made (its OID is the row's);
/// - every tenant-prefixed database the tests made has a row (`slugs`), and no row of those
///   slugs is stuck in `provisioning` once reconciled;
/// - no slug owns two databases (one name per slug, stored);
/// - no login or secret without a row that owns it: an active tenant has both, and its secret
///   opens its database; a deleted one keeps both, its login unable to log in; a purged one,
///   or one without a row, has neither (its secret at most scheduled for deletion).
async fn assert_invariants(slugs: &[String]) {
    let registry = registry().await;
    let rows = registry
        .query(
            "SELECT slug, database_name, schema_version, database_oid, server FROM tenants \
             WHERE status = 'active'",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let (slug, db, version, oid, server): (String, String, i32, Option<i64>, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        // The registry names the server that holds the database, and no other holds one but
        // where a move keeps the tenant's old copy (its login disabled there), or where a
        // running move may have made its new one (closed to the login until the switch).
        let on = |state: &'static str| {
            let registry = &registry;
            let slug = slug.clone();
            async move {
                let column = if state == "done" {
                    "from_server"
                } else {
                    "to_server"
                };
                registry
                    .query(
                        &format!(
                            "SELECT m.{column} FROM moves m JOIN tenants t ON t.id = m.tenant_id \
                             WHERE t.slug = $1 AND m.state = $2 \
                               AND (m.state = 'running' OR m.source_dropped_at IS NULL)"
                        ),
                        &[&slug, &state],
                    )
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<String>>()
            }
        };
        let (kept, making) = (on("done").await, on("running").await);
        let actual = servers_with_database(&db).await;
        let mut expected: Vec<String> = kept.clone();
        expected.push(server.clone());
        expected.extend(
            making
                .iter()
                .filter(|s| actual.contains(&s.as_str()))
                .cloned(),
        );
        expected.sort();
        expected.dedup();
        assert_eq!(
            actual, expected,
            "{slug}: its database is on its server only (and old copies moves keep)"
        );
        let valid = admin_on(&server)
            .await
            .query_opt(
                "SELECT datconnlimit <> -2 AND oid::bigint = $2 FROM pg_database WHERE datname = $1",
                &[&db, &oid],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, bool>(0));
        assert_eq!(
            valid,
            Some(true),
            "active tenant {slug} has a valid database, the one the registry made"
        );
        assert_eq!(
            version,
            latest(),
            "active tenant {slug} records the latest version"
        );
        assert_eq!(
            history_versions(&slug).await,
            all_versions(),
            "{slug} is at the latest version"
        );
    }
    for slug in slugs {
        let status = registry_row(slug).await.map(|r| r.0);
        let db_exists = database_exists(&database_name(slug)).await;
        assert_ne!(
            status.as_deref(),
            Some("provisioning"),
            "{slug} left provisioning"
        );
        let purged = status.as_deref() == Some("purged");
        assert_eq!(
            db_exists,
            status.is_some() && !purged,
            "{slug}: database and row exist together"
        );
        // On the server that holds the tenant (a moved tenant's old server keeps its login
        // disabled, with its old copy).
        let login = match tenant_server(slug).await {
            Some(server) => role_can_login_on(&server, &database_name(slug)).await,
            None => role_can_login(&database_name(slug)).await,
        };
        let secret = secret_deleting(&secret_name(slug)).await;
        match status.as_deref() {
            Some("active") => {
                assert_eq!(
                    login,
                    Some(true),
                    "{slug}: an active tenant's login logs in"
                );
                assert_eq!(
                    secret,
                    Some(false),
                    "{slug}: an active tenant has its secret"
                );
                let secret = read_secret(&secret_name(slug)).await;
                connect_as(&secret, None)
                    .await
                    .unwrap_or_else(|e| panic!("{slug}: its secret opens its database: {e}"));
            }
            Some("deleted") => {
                assert_eq!(
                    login,
                    Some(false),
                    "{slug}: a deleted tenant's login is disabled"
                );
                assert_eq!(
                    secret,
                    Some(false),
                    "{slug}: a deleted tenant keeps its secret"
                );
            }
            _ => {
                assert_eq!(login, None, "{slug}: no login without a tenant");
                assert_ne!(
                    secret,
                    Some(false),
                    "{slug}: no live secret without a tenant"
                );
            }
        }
    }
}

/// Holds the product's own advisory lock of a tenant (the lock create takes after inserting
/// its row), on a connection of its own.
async fn hold_tenant_lock(slug: &str) -> Held {
    // Slugs are [a-z0-9_]: safe in a literal.
    Held::on(
        "primary",
        "dbtools",
        &format!("SELECT pg_advisory_lock(1684173825, hashtext('{slug}'))"),
    )
    .await
}

async fn wait_for_row(slug: &str, status: &str) {
    assert!(
        eventually(Duration::from_secs(20), || async {
            registry_row(slug).await.map(|r| r.0).as_deref() == Some(status)
        })
        .await,
        "{slug} reached {status}"
    );
}

/// The lease of the creates these tests kill: short, so that the tests wait little, and
/// longer than the lock waits they stop the create in (the configuration requires it).
const SHORT_LEASE: Duration = Duration::from_secs(6);

/// Starts a real create-tenant process on a request for `slug` on `server` with `key`, its
/// lease short.
async fn start_create(
    slug: &str,
    server: &str,
    key: &str,
) -> (runtime::RuntimeApi, tokio::process::Child) {
    let body = json!({"name": "Killed", "slug": slug, "server": server}).to_string();
    let event = runtime::http_event("POST", "/api/tenants", &body, &[("idempotency-key", key)]);
    let api = runtime::RuntimeApi::start(event).await;
    let lease = SHORT_LEASE.as_secs().to_string();
    let child = api.spawn(
        "create-tenant",
        &[
            ("PROVISIONING_LEASE_SECONDS", lease.as_str()),
            ("DB_LOCK_TIMEOUT_SECS", "4"),
            ("DB_QUERY_TIMEOUT_SECS", "1"),
        ],
    );
    (api, child)
}

/// Holds a SHARE lock on a server's `pg_authid` until dropped: `CREATE ROLE`, `ALTER ROLE`
/// and `DROP ROLE` there wait for it; logins (which only read it) do not.
async fn hold_role_catalog(server: &str) -> Held {
    Held::on(
        server,
        "postgres",
        "BEGIN; LOCK TABLE pg_authid IN SHARE MODE",
    )
    .await
}

/// How many backends of `application` on a server wait on a lock in a statement starting
/// with `prefix`.
async fn lock_waiters(server: &str, application: &str, prefix: &str) -> i64 {
    admin_on(server)
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND wait_event_type = 'Lock' AND starts_with(query, $2)",
            &[&application, &prefix],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until the server has cancelled the statement of `application`'s killed process (it
/// notices the dead client within `client_connection_check_interval`): only then may the test
/// let go of what the statement waited for, or it would run to completion.
async fn await_cancelled(server: &str, application: &str) {
    assert!(
        eventually(Duration::from_secs(10), || async {
            lock_waiters(server, application, "").await == 0
        })
        .await,
        "the dead client's statement was cancelled"
    );
}
