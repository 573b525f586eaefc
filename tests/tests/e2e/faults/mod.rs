//! Fault tests with real processes: terminated backends, PostgreSQL stopped and started,
//! PostgreSQL frozen (SIGSTOP) and thawed, the admin password rotated, functions SIGKILLed. They disturb the whole stack, so they run alone
//! (`make test-faults`; `make test` runs them after the other tests, one at a time). After
//! each, the invariants hold. (Killing a function process mid-invocation is not among them:
//! `cargo lambda watch` stops serving that function until restarted; see docs/reliability.md.)

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

/// Terminates every backend of the functions on one server; returns how many there were.
async fn terminate_function_backends(admin: &tokio_postgres::Client) -> i64 {
    admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name IN ('create-tenant', 'list-tenants', 'delete-tenant', \
               'migrate-all', 'servers')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// How many create-tenant backends wait on a lock in a statement starting with `prefix`.
async fn create_tenant_lock_waiters(prefix: &str) -> i64 {
    admin()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'create-tenant' \
             AND wait_event_type = 'Lock' AND starts_with(query, $1)",
            &[&prefix],
        )
        .await
        .unwrap()
        .get(0)
}

/// Repeats `f` until it returns true or `within` has passed.
async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

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
        // The registry names the server that holds the database, and no other holds one.
        assert_eq!(
            servers_with_database(&db).await,
            [server.as_str()],
            "{slug}: its database is on its server only"
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
        let login = role_can_login(&database_name(slug)).await;
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

/// Makes sure every function has a warm instance holding a cached connection: under cargo
/// lambda watch, a function's first request starts its instances (`cargo run` each, one after
/// the other), which can take seconds that are the emulator's, not ours.
async fn warm_every_function(slug: &str) {
    for _ in 0..3 {
        get("/api/tenants?limit=1").await;
        get(&format!("/api/tenants/{slug}")).await;
        delete("/api/tenants/not_a_tenant").await;
        post_raw(b"{}").await;
    }
}

/// One request on every route (`slug` for the one-tenant routes), with how long each took.
async fn every_route(slug: &str) -> Vec<(String, Reply, Duration)> {
    let create = json!({"name": "Outage", "slug": unique_slug("fout")});
    let mut answers = Vec::new();
    for (method, path, body) in [
        (Method::GET, "/api/tenants".to_owned(), None),
        (Method::GET, format!("/api/tenants/{slug}"), None),
        (
            Method::POST,
            "/api/tenants".to_owned(),
            Some(create.to_string().into_bytes()),
        ),
        (Method::DELETE, format!("/api/tenants/{slug}"), None),
    ] {
        let started = Instant::now();
        let r = request(method.clone(), &path, body).await;
        answers.push((format!("{method} {path}"), r, started.elapsed()));
    }
    answers
}

/// Every answer a 503 `SERVICE_UNAVAILABLE` within 5 s, with nothing internal in it.
fn assert_quick_503s(answers: &[(String, Reply, Duration)]) {
    for (what, r, took) in answers {
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: {}",
            r.text
        );
        assert!(*took < Duration::from_secs(5), "{what} took {took:?}");
        r.assert_json_with_request_id();
        assert_eq!(r.error_code(), "SERVICE_UNAVAILABLE");
        r.assert_no_internals();
    }
}

#[tokio::test]
async fn terminated_backends_are_reopened_without_an_error_reaching_the_client() {
    let mut cleanup = Cleanup::new();
    let slugs = create_tenants(&mut cleanup, "fterm", 2).await;
    for _ in 0..8 {
        assert_eq!(get("/api/tenants?limit=1").await.status, StatusCode::OK);
    }
    let mut killed = 0;
    for server in SERVERS {
        killed += terminate_function_backends(&admin_on(server).await).await;
    }
    assert!(killed > 0, "functions held connections");
    for i in 0..16 {
        let r = get("/api/tenants?limit=1").await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "request {i} after the termination: {}",
            r.text
        );
    }
    let more = create_tenants(&mut cleanup, "fterm2", 1).await;
    assert_eq!(
        delete(&format!("/api/tenants/{}", slugs[0])).await.status,
        StatusCode::OK
    );
    let (status, report) = invoke_migrate_all(&json!({"slugs": [slugs[1]]})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_invariants(&[slugs, more].concat()).await;
}

#[tokio::test]
async fn postgres_down_is_a_quick_503_and_the_functions_recover() {
    let mut cleanup = Cleanup::new();
    let slugs = create_tenants(&mut cleanup, "fdown", 1).await;
    warm_every_function(&slugs[0]).await;
    stack(&["pg-stop"]);
    let result = std::panic::AssertUnwindSafe(async {
        assert_quick_503s(&every_route(&slugs[0]).await);
    });
    let outcome = futures_util::FutureExt::catch_unwind(result).await;
    stack(&["pg-start"]);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    // Back up: the same sandboxes answer again, by themselves.
    assert!(
        eventually(Duration::from_secs(10), || async {
            get("/api/tenants?limit=1").await.status == StatusCode::OK
        })
        .await,
        "the functions recover once PostgreSQL is back"
    );
    let more = create_tenants(&mut cleanup, "fdown2", 1).await;
    assert_invariants(&[slugs, more].concat()).await;
}

#[tokio::test]
async fn a_rotated_password_is_read_again_from_secrets_manager() {
    let mut cleanup = Cleanup::new();
    let slugs = create_tenants(&mut cleanup, "frot", 1).await;
    let rotated = format!(
        "rotated-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    // Rotate: PostgreSQL first, then the secret (as the RDS rotation does), then cut every
    // function's connection so that they must log in again.
    admin()
        .await
        .execute(&format!("ALTER USER postgres PASSWORD '{rotated}'"), &[])
        .await
        .unwrap();
    stack(&["put-secret", &rotated]);
    let admin_rotated = {
        let mut cfg: tokio_postgres::Config = pg_url().parse().unwrap();
        cfg.password(rotated.as_str());
        let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    };
    terminate_function_backends(&admin_rotated).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get("/api/tenants?limit=1").await.status.as_u16());
    }
    let created_slug = cleanup.add(&unique_slug("frot2"));
    let created = post_tenant(&json!({"name": "After rotation", "slug": created_slug})).await;
    // Restore before asserting, so that a failure leaves the stack usable.
    admin_rotated
        .execute("ALTER USER postgres PASSWORD 'postgres'", &[])
        .await
        .unwrap();
    stack(&["put-secret", "postgres"]);
    assert!(
        statuses.iter().all(|s| *s == 200),
        "after the rotation: {statuses:?}"
    );
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    terminate_function_backends(&admin_rotated).await;
    assert_eq!(
        get("/api/tenants?limit=1").await.status,
        StatusCode::OK,
        "and back again"
    );
    assert_invariants(&[slugs, vec![created_slug]].concat()).await;
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

#[tokio::test]
async fn a_create_killed_before_its_database_is_rolled_back_after_the_lease() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("fkill_a"));
    let key = format!("k-{slug}");
    // The create inserts its row, then waits for the tenant lock that we hold: kill it there.
    let lock = hold_tenant_lock(&slug).await;
    let (api, mut child) = start_create(&slug, "primary", &key).await;
    wait_for_row(&slug, "provisioning").await;
    child.kill().await.expect("SIGKILL create-tenant");
    drop(lock);
    assert!(
        api.response.lock().await.is_none(),
        "the killed create never answered"
    );
    assert!(!database_exists(&database_name(&slug)).await);
    assert_eq!(
        registry_row(&slug).await.map(|r| r.0),
        Some("provisioning".into())
    );

    // After the lease, the client's retry (same key) undoes the dead provisioning and
    // provisions afresh.
    tokio::time::sleep(SHORT_LEASE + Duration::from_secs(1)).await;
    let r = post_with_key(
        &json!({"name": "Killed", "slug": slug, "server": "primary"}),
        &key,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["status"], "active");
    assert_invariants(&[slug]).await;
}

#[tokio::test]
async fn a_create_killed_at_its_last_step_is_rolled_forward_after_the_lease() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("fkill_b"));
    let key = format!("k-{slug}");
    // Stop the create at its row, take the row FOR UPDATE, let it go: it creates and migrates
    // the database, then waits on our row lock to mark it active. Kill it there.
    let lock = hold_tenant_lock(&slug).await;
    let (api, mut child) = start_create(&slug, "primary", &key).await;
    wait_for_row(&slug, "provisioning").await;
    let holder = registry().await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .query_one("SELECT 1 FROM tenants WHERE slug = $1 FOR UPDATE", &[&slug])
        .await
        .unwrap();
    drop(lock);
    let waiting = eventually(Duration::from_secs(20), || async {
        create_tenant_lock_waiters("UPDATE tenants SET status = 'active'").await == 1
    })
    .await;
    assert!(waiting, "the create reached its last step");
    child.kill().await.expect("SIGKILL create-tenant");
    // The server notices the dead client (client_connection_check_interval) and cancels its
    // statement; only then do we let go of the row.
    assert!(
        eventually(Duration::from_secs(10), || async {
            create_tenant_lock_waiters("").await == 0
        })
        .await,
        "the dead client's statement was cancelled"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert!(
        api.response.lock().await.is_none(),
        "the killed create never answered"
    );
    assert!(
        database_exists(&database_name(&slug)).await,
        "its database was created"
    );
    assert_eq!(
        registry_row(&slug).await.map(|r| r.0),
        Some("provisioning".into())
    );

    // After the lease, the retry with the same key finishes the work and answers 201.
    tokio::time::sleep(SHORT_LEASE + Duration::from_secs(1)).await;
    let r = post_with_key(
        &json!({"name": "Killed", "slug": slug, "server": "primary"}),
        &key,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["status"], "active");
    assert_eq!(history_versions(&slug).await, all_versions());
    assert_invariants(&[slug]).await;
}

#[tokio::test]
async fn a_killed_migrate_all_is_rerun_cleanly() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    // One server: the run takes them in the registry's order, the last one last.
    let slugs = create_tenants_on(&mut cleanup, "fmig", 10, Some("primary")).await;
    for slug in &slugs {
        undo_to_v1(slug).await;
    }
    // Hold the last tenant's lock so that the run is caught mid-fleet, then kill it.
    let lock = hold_tenant_lock(&slugs[9]).await;
    let api = runtime::RuntimeApi::start(json!({"concurrency": 1, "slugs": slugs})).await;
    let mut child = api.spawn("migrate-all", &[]);
    let caught = eventually(Duration::from_secs(30), || async {
        let mut done = 0;
        for s in &slugs[..9] {
            if history_versions(s).await == all_versions() {
                done += 1;
            }
        }
        done == 9
    })
    .await;
    assert!(caught, "the run migrated the first tenants");
    child.kill().await.expect("SIGKILL migrate-all");
    drop(lock);
    assert!(api.response.lock().await.is_none());
    // The ledger kept what the killed run did, tenant by tenant, as it happened.
    let killed = get("/api/runs?limit=1").await.body["runs"][0].clone();
    assert_eq!(killed["status"], "running", "{killed}");
    let id = killed["id"].as_str().unwrap().to_owned();
    let done = get(&format!("/api/runs/{id}?status=migrated")).await;
    assert_eq!(
        done.body["tenants"].as_array().unwrap().len(),
        9,
        "{}",
        done.text
    );
    let waiting = get(&format!("/api/runs/{id}?status=pending")).await;
    assert_eq!(
        waiting.body["tenants"][0]["slug"],
        slugs[9].as_str(),
        "{}",
        waiting.text
    );
    // Its fleet lock died with it: a new run proceeds and finishes the job.
    let (status, report) = invoke_migrate_all(&json!({"slugs": slugs})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed");
    assert_eq!(report["counts"]["migrated"], 1, "{report}");
    assert_invariants(&slugs).await;
    // ... and marked the killed run for what it was.
    let r = get(&format!("/api/runs/{id}")).await;
    assert_eq!(r.body["status"], "failed", "{}", r.text);
    assert!(
        r.body["error"].as_str().unwrap().contains("interrupted"),
        "{}",
        r.text
    );
    let last = r.body["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["slug"] == slugs[9].as_str())
        .unwrap()
        .clone();
    assert_eq!(last["status"], "not_started", "{last}");
}

/// Freezes PostgreSQL (SIGSTOP of the postmaster and every backend) until dropped, even when
/// the test panics.
struct Frozen;

impl Frozen {
    fn now() -> Frozen {
        stack(&["pg-freeze"]);
        Frozen
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        stack(&["pg-thaw"]);
    }
}

#[tokio::test]
async fn a_frozen_server_is_a_quick_503_and_migrate_all_ends_with_a_report() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    // On the frozen server: all of them, in the registry's order.
    let slugs = create_tenants_on(&mut cleanup, "ffrz", 5, Some("primary")).await;
    for slug in &slugs {
        undo_to_v1(slug).await;
    }
    warm_every_function(&slugs[0]).await;
    // A run caught mid-fleet: it has migrated the first two tenants and waits for the third's
    // lock (held here) when the server freezes.
    let lock = hold_tenant_lock(&slugs[2]).await;
    let event = json!({"slugs": slugs, "concurrency": 1});
    let run = tokio::spawn(async move { invoke_migrate_all(&event).await });
    let caught = eventually(Duration::from_secs(30), || async {
        history_versions(&slugs[1]).await == all_versions()
    })
    .await;
    assert!(caught, "the run migrated the first tenants");

    let frozen = Frozen::now();
    let frozen_at = Instant::now();
    let answers = every_route(&slugs[0]).await;
    let (status, error) = run.await.expect("the run answered");
    let run_took = frozen_at.elapsed();
    drop(frozen);
    drop(lock);

    assert_quick_503s(&answers);
    // The run did not hang on the frozen server: it ended with its report, the tenants it
    // could not reach named as failed, the first two as migrated.
    assert!(
        run_took < Duration::from_secs(20),
        "the run took {run_took:?} after the freeze"
    );
    // Deferred, not failed (nothing is wrong with their migrations); the invocation fails all
    // the same: the registry went away, its outcomes may not be recorded.
    assert!(!status.is_success(), "{error}");
    assert_eq!(error["errorType"], "DatabaseUnavailable", "{error}");
    let message = error["errorMessage"].as_str().unwrap();
    assert!(message.contains("0 of 5 tenants failed"), "{message}");
    assert!(message.contains("migrated 2"), "{message}");
    assert!(message.contains("deferred 3"), "{message}");
    for leak in ["127.0.0.1", "password", "postgres://"] {
        assert!(!message.contains(leak), "{message}");
    }

    // Thawed: the same functions answer again by themselves, and the next run catches up.
    assert!(
        eventually(Duration::from_secs(15), || async {
            get("/api/tenants?limit=1").await.status == StatusCode::OK
                && get(&format!("/api/tenants/{}", slugs[0])).await.status == StatusCode::OK
        })
        .await,
        "the functions recover once PostgreSQL answers again"
    );
    let (status, report) = invoke_migrate_all(&json!({"slugs": slugs})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["counts"]["migrated"], 3, "{report}");
    let more = create_tenants(&mut cleanup, "ffrz2", 1).await;
    assert_invariants(&[slugs, more].concat()).await;
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

/// Starts a real delete-tenant process on `method path`.
async fn start_lifecycle(method: &str, path: &str) -> (runtime::RuntimeApi, tokio::process::Child) {
    let event = runtime::http_event(method, path, "", &[]);
    let api = runtime::RuntimeApi::start(event).await;
    let child = api.spawn("delete-tenant", &[]);
    (api, child)
}

#[tokio::test]
async fn a_create_killed_before_its_login_is_rolled_forward_with_one() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("fkill_role"));
    let key = format!("k-{slug}");
    // On the secondary server (administered without superuser), the create makes its
    // database, then waits to make its login: kill it there.
    let catalog = hold_role_catalog("secondary").await;
    let (api, mut child) = start_create(&slug, "secondary", &key).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            lock_waiters("secondary", "create-tenant", "CREATE ROLE").await == 1
        })
        .await,
        "the create reached its login"
    );
    child.kill().await.expect("SIGKILL create-tenant");
    await_cancelled("secondary", "create-tenant").await;
    drop(catalog);
    assert!(
        api.response.lock().await.is_none(),
        "the killed create never answered"
    );
    assert_eq!(
        servers_with_database(&database_name(&slug)).await,
        ["secondary"],
        "its database was made, on its server"
    );
    assert_eq!(
        role_can_login(&database_name(&slug)).await,
        None,
        "its login was not"
    );
    assert_eq!(secret_deleting(&secret_name(&slug)).await, None);

    // After the lease, the retry finishes the work: a login and a secret that work.
    tokio::time::sleep(SHORT_LEASE + Duration::from_secs(1)).await;
    let r = post_with_key(
        &json!({"name": "Killed", "slug": slug, "server": "secondary"}),
        &key,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(r.body["credentials_secret_arn"].is_string());
    assert_eq!(r.body["server"], "secondary");
    assert_invariants(&[slug]).await;
}

#[tokio::test]
async fn a_create_killed_before_its_secret_is_rolled_forward_with_one() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("fkill_sec"));
    let key = format!("k-{slug}");
    // Stopped at its row (it has read the admin secret by then), then let go with Secrets
    // Manager frozen: it makes its database and its login, and hangs making the secret.
    let lock = hold_tenant_lock(&slug).await;
    // On the secondary server: the roll forward re-keys the login there, as its admin (no
    // superuser, as on RDS) may.
    let (api, mut child) = start_create(&slug, "secondary", &key).await;
    wait_for_row(&slug, "provisioning").await;
    stack(&["sm-freeze"]);
    drop(lock);
    let reached = eventually(Duration::from_secs(10), || async {
        role_can_login(&database_name(&slug)).await.is_some()
    })
    .await;
    child.kill().await.expect("SIGKILL create-tenant");
    stack(&["sm-thaw"]);
    assert!(reached, "the create made its login");
    assert!(
        api.response.lock().await.is_none(),
        "the killed create never answered"
    );
    // Its CreateSecret was on the wire when it died: Secrets Manager may still carry it out
    // once it answers again (as AWS may). Either way the secret, if any, is ours by its tag,
    // and the roll forward re-keys the login and the secret together.

    tokio::time::sleep(SHORT_LEASE + Duration::from_secs(1)).await;
    let r = post_with_key(
        &json!({"name": "Killed", "slug": slug, "server": "secondary"}),
        &key,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["server"], "secondary");
    assert_invariants(&[slug]).await;
}

#[tokio::test]
async fn a_delete_killed_before_disabling_the_login_is_finished_by_migrate_all() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = create_tenants_on(&mut cleanup, "fkill_del", 1, Some("primary"))
        .await
        .remove(0);
    let catalog = hold_role_catalog("primary").await;
    let (api, mut child) = start_lifecycle("DELETE", &format!("/api/tenants/{slug}")).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            lock_waiters("primary", "delete-tenant", "ALTER ROLE").await == 1
        })
        .await,
        "the delete reached its login"
    );
    child.kill().await.expect("SIGKILL delete-tenant");
    await_cancelled("primary", "delete-tenant").await;
    drop(catalog);
    assert!(api.response.lock().await.is_none());
    // The status says deleted, the login still logs in: the next run disables it.
    assert_eq!(
        registry_row(&slug).await.map(|r| r.0),
        Some("deleted".into())
    );
    assert_eq!(role_can_login(&database_name(&slug)).await, Some(true));
    let (status, report) = invoke_migrate_all(&json!({"slugs": [slug]})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report["lifecycle"][0]["action"], "login_disabled",
        "{report}"
    );
    assert_invariants(&[slug]).await;
}

#[tokio::test]
async fn a_purge_killed_half_way_is_never_restored_and_is_finished() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = create_tenants_on(&mut cleanup, "fkill_pur", 1, Some("primary"))
        .await
        .remove(0);
    assert_eq!(
        delete(&format!("/api/tenants/{slug}")).await.status,
        StatusCode::OK
    );
    // The purge drops the database, then waits to drop the login: kill it there.
    let catalog = hold_role_catalog("primary").await;
    let (api, mut child) = start_lifecycle("POST", &format!("/api/tenants/{slug}/purge")).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            lock_waiters("primary", "delete-tenant", "ALTER ROLE").await == 1
        })
        .await,
        "the purge reached the login"
    );
    child.kill().await.expect("SIGKILL delete-tenant");
    await_cancelled("primary", "delete-tenant").await;
    drop(catalog);
    assert!(api.response.lock().await.is_none());
    assert!(
        !database_exists(&database_name(&slug)).await,
        "database dropped"
    );
    assert!(
        role_can_login(&database_name(&slug)).await.is_some(),
        "login still there"
    );
    // Half purged: it cannot come back.
    let restore = request(Method::POST, &format!("/api/tenants/{slug}/restore"), None).await;
    assert_eq!(restore.status, StatusCode::CONFLICT, "{}", restore.text);
    // The next run finishes it.
    let (status, report) = invoke_migrate_all(&json!({"slugs": [slug]})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["lifecycle"][0]["action"], "purged", "{report}");
    assert_eq!(
        registry_row(&slug).await.map(|r| r.0),
        Some("purged".into())
    );
    assert_invariants(&[slug]).await;
}

#[tokio::test]
async fn a_stopped_server_fails_only_its_own_tenants_and_the_next_run_catches_up() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let on_primary = create_tenants_on(&mut cleanup, "fsec_p", 2, Some("primary")).await;
    let on_secondary = create_tenants_on(&mut cleanup, "fsec_s", 2, Some("secondary")).await;
    let all = [on_primary.clone(), on_secondary.clone()].concat();
    for slug in &all {
        undo_to_v1(slug).await;
    }
    let created = vec![
        cleanup.add(&unique_slug("fsec_new")),
        cleanup.add(&unique_slug("fsec_new")),
    ];

    stack(&["pg2-stop"]);
    let result = std::panic::AssertUnwindSafe(async {
        // The registry answers: a tenant of the stopped server, and the servers.
        let one = get(&format!("/api/tenants/{}", on_secondary[0])).await;
        assert_eq!(one.status, StatusCode::OK, "{}", one.text);
        assert_eq!(one.body["server"], "secondary");
        let servers = get("/api/servers").await;
        assert_eq!(servers.status, StatusCode::OK, "{}", servers.text);
        // New tenants go to the server that answers.
        for slug in &created {
            let r = post_tenant(&json!({"name": "While down", "slug": slug})).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            assert_eq!(r.body["server"], "primary", "{}", r.text);
        }
        // Asked for by name, the stopped server is a 503 that makes nothing.
        let pinned = unique_slug("fsec_pin");
        let r =
            post_tenant(&json!({"name": "Pinned", "slug": pinned, "server": "secondary"})).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
        r.assert_no_internals();
        assert_eq!(registry_row(&pinned).await, None);
        // A delete of its tenant is a 503 too, and changes nothing.
        let d = delete(&format!("/api/tenants/{}", on_secondary[1])).await;
        assert_eq!(d.status, StatusCode::SERVICE_UNAVAILABLE, "{}", d.text);
        assert_eq!(
            registry_row(&on_secondary[1]).await,
            Some(("active".into(), 1))
        );

        // migrate-all migrates primary's tenants and defers the secondary's (a server down
        // halts nothing and fails no migration); the invocation names the server.
        let (status, error) = invoke_migrate_all(&json!({"slugs": all})).await;
        assert!(!status.is_success(), "{error}");
        assert_eq!(error["errorType"], "ServerUnreachable", "{error}");
        let message = error["errorMessage"].as_str().unwrap();
        assert!(message.contains("Servers unreachable"), "{message}");
        assert!(message.contains("0 of 4 tenants failed"), "{message}");
        assert!(message.contains("deferred 2"), "{message}");
        let id = message
            .split("; run ")
            .nth(1)
            .and_then(|rest| rest.get(..36))
            .expect("the message names its run");
        let run = get(&format!("/api/runs/{id}")).await.body;
        for slug in &on_secondary {
            let row = run_tenant(&run, slug);
            assert_eq!(row["status"], "deferred", "{run}");
            assert!(
                row["error"]
                    .as_str()
                    .unwrap()
                    .contains("server 'secondary' unreachable"),
                "{run}"
            );
        }
        for leak in ["127.0.0.1", "5435", "password", "dbtools_admin"] {
            assert!(!message.contains(leak), "{message}");
        }
        for slug in &on_primary {
            assert_eq!(registry_row(slug).await, Some(("active".into(), latest())));
            assert_eq!(history_versions(slug).await, all_versions());
        }
        for slug in &on_secondary {
            assert_eq!(registry_row(slug).await, Some(("active".into(), 1)));
        }
    });
    let outcome = futures_util::FutureExt::catch_unwind(result).await;
    stack(&["pg2-start"]);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }

    // Started again: the next run catches up, and the secondary takes tenants again.
    let (status, report) = invoke_migrate_all(&json!({"slugs": all})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["counts"]["migrated"], 2, "{report}");
    for slug in &on_secondary {
        assert_eq!(report_row(&report, slug).unwrap()["server"], "secondary");
        assert_eq!(history_versions(slug).await, all_versions());
    }
    let again = create_tenants_on(&mut cleanup, "fsec_back", 1, Some("secondary")).await;
    assert_invariants(&[all, created, again].concat()).await;
}

/// A TCP endpoint that accepts connections and never answers (what a network black hole
/// looks like to a client), for as long as it lives.
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

#[tokio::test]
async fn a_migrate_all_killed_while_queueing_is_finished_by_retry_run() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants_on(&mut cleanup, "fq", 3, Some("primary")).await;
    for slug in &slugs {
        undo_v4(slug).await;
    }
    // SQS does not answer: the run is planned, then the process dies while sending.
    let (sqs_url, hole) = black_hole().await;
    let api =
        runtime::RuntimeApi::start(json!({"slugs": slugs, "inline": false, "canary": 0})).await;
    let mut child = api.spawn("migrate-all", &[("AWS_ENDPOINT_URL_SQS", &sqs_url)]);
    let planned = eventually(Duration::from_secs(30), || async {
        let run = get("/api/runs?limit=1").await.body["runs"][0].clone();
        run["mode"] == "queue" && run["status"] == "running"
    })
    .await;
    assert!(planned, "the run was handed to the queue");
    child.kill().await.expect("SIGKILL migrate-all");
    hole.abort();
    let run = get("/api/runs?limit=1").await.body["runs"][0].clone();
    let id = run["id"].as_str().unwrap().to_owned();
    // Nothing went out: its tenants wait, untouched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = get(&format!("/api/runs/{id}?status=pending")).await;
    assert_eq!(r.body["tenants"].as_array().unwrap().len(), 3, "{}", r.text);
    for slug in &slugs {
        assert_eq!(
            history_versions(slug).await.len(),
            3,
            "{slug} not migrated yet"
        );
    }
    // A plain run sees a queued run at work, and does not start a second one.
    let (status, answer) = invoke_migrate_all(&json!({})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "already_running", "{answer}");
    assert_eq!(answer["run_id"], id.as_str(), "{answer}");
    // retry_run queues its tenants again, in a new attempt. (Its messages go to a queue of
    // the test's own, so that the test delivers them: the rule below is about timing.)
    let own = OwnQueue::new().await;
    let api = runtime::RuntimeApi::start(json!({"retry_run": id, "inline": false})).await;
    let _planner = api.spawn("migrate-all", &[("MIGRATE_QUEUE_URL", &own.url)]);
    let answer = api
        .wait_response(Duration::from_secs(60))
        .await
        .expect("retried");
    assert_eq!(answer["status"], "queued", "{answer}");
    assert_eq!(answer["run_id"], id.as_str(), "{answer}");
    // A message of the first attempt (had it gone out, and come now) changes nothing.
    let stale: Vec<serde_json::Value> = slugs
        .iter()
        .map(|s| json!({"run_id": id, "slug": s, "attempt": 0}))
        .collect();
    let (status, answer) = invoke("migrate-tenant", &sqs_event(&stale)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    let r = get(&format!("/api/runs/{id}?status=pending")).await;
    assert_eq!(r.body["tenants"].as_array().unwrap().len(), 3, "{}", r.text);
    for slug in &slugs {
        assert_eq!(history_versions(slug).await.len(), 3, "{slug} untouched");
    }
    // The retry's own messages finish the run.
    let fresh = own.receive(slugs.len()).await;
    assert!(fresh.iter().all(|m| m["attempt"] == 1), "{fresh:?}");
    let (status, answer) = invoke("migrate-tenant", &sqs_event(&fresh)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let run = wait_run_end(&id, Duration::from_secs(120)).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["counts"]["migrated"], 3, "{run}");
    assert_invariants(&slugs).await;
}

#[tokio::test]
async fn a_worker_killed_mid_migration_is_finished_by_the_redelivery() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants_on(&mut cleanup, "fw", 1, Some("primary")).await;
    let slug = slugs[0].clone();
    undo_v4(&slug).await;
    // A queue of the test's own: the test hands the message to a worker it can kill.
    let own = OwnQueue::new().await;
    let queue = own.url.clone();
    let (id, mut bodies) = own.plan(std::slice::from_ref(&slug)).await;
    let body = bodies.remove(0);
    assert_eq!(body, json!({"run_id": id, "slug": slug, "attempt": 0}));
    let event = sqs_event(&[body]);

    // The tenant's table is locked: V4 waits (and retries) until the worker is killed.
    let tenant = connect_tenant(&slug).await;
    tenant
        .batch_execute("BEGIN; LOCK TABLE activity_log IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let worker_api = runtime::RuntimeApi::start(event.clone()).await;
    let mut worker = worker_api.spawn("migrate-tenant", &[("MIGRATE_QUEUE_URL", &queue)]);
    let waiting = eventually(Duration::from_secs(30), || async {
        lock_waiters("primary", "migrate-tenant", "").await > 0
    })
    .await;
    assert!(waiting, "the worker's migration waits on the table");
    worker.kill().await.expect("SIGKILL migrate-tenant");
    await_cancelled("primary", "migrate-tenant").await;
    tenant.batch_execute("ROLLBACK").await.unwrap();
    drop(tenant);
    let r = get(&format!("/api/runs/{id}")).await;
    assert_eq!(r.body["status"], "running", "{}", r.text);
    assert_eq!(r.body["tenants"][0]["status"], "pending", "{}", r.text);

    // SQS delivers the message again (here: straight to the worker under watch).
    let redelivered = eventually(Duration::from_secs(30), || {
        let event = event.clone();
        async move {
            let (status, answer) = invoke("migrate-tenant", &event).await;
            status == StatusCode::OK && answer["batchItemFailures"] == json!([])
        }
    })
    .await;
    assert!(redelivered, "the redelivery is done with");
    let run = wait_run_end(&id, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run_tenant(&run, &slug)["status"], "migrated", "{run}");
    assert_eq!(history_versions(&slug).await, all_versions());
    assert_invariants(&slugs).await;
}

mod deadlines;
mod fleet;
mod isolation;
mod stack;
