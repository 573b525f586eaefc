//! Fault tests with real processes: terminated backends, PostgreSQL stopped and started, the
//! admin password rotated. They disturb the whole stack, so they run alone
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
/// - every `active` row has a valid database at the latest version, recorded in the row;
/// - every tenant-prefixed database the tests made has a row (`slugs`), and no row of those
///   slugs is stuck in `provisioning` once reconciled;
/// - no slug owns two databases (one name per slug, stored).
async fn assert_invariants(slugs: &[String]) {
    let registry = registry().await;
    let rows = registry
        .query(
            "SELECT slug, database_name, schema_version FROM tenants WHERE status = 'active'",
            &[],
        )
        .await
        .unwrap();
    let admin = admin().await;
    for row in rows {
        let (slug, db, version): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
        let valid = admin
            .query_opt(
                "SELECT datconnlimit <> -2 FROM pg_database WHERE datname = $1",
                &[&db],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, bool>(0));
        assert_eq!(
            valid,
            Some(true),
            "active tenant {slug} has a valid database"
        );
        assert_eq!(
            version, 2,
            "active tenant {slug} records the latest version"
        );
        assert_eq!(
            history_versions(&slug).await,
            [1, 2],
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
        assert_eq!(
            db_exists,
            status.is_some(),
            "{slug}: database and row exist together"
        );
    }
}

#[tokio::test]
async fn terminated_backends_are_reopened_without_an_error_reaching_the_client() {
    let mut cleanup = Cleanup::new();
    let slugs = create_tenants(&mut cleanup, "fterm", 2).await;
    for _ in 0..8 {
        assert_eq!(get("/api/tenants?limit=1").await.status, StatusCode::OK);
    }
    let killed: i64 = admin()
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name IN ('create-tenant', 'list-tenants', 'delete-tenant', 'migrate-all')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
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
    stack(&["pg-stop"]);
    let result = std::panic::AssertUnwindSafe(async {
        for (method, path, body) in [
            (Method::GET, "/api/tenants".to_owned(), None),
            (Method::GET, format!("/api/tenants/{}", slugs[0]), None),
            (
                Method::POST,
                "/api/tenants".to_owned(),
                Some(
                    json!({"name": "Down", "slug": unique_slug("fdn")})
                        .to_string()
                        .into_bytes(),
                ),
            ),
            (Method::DELETE, format!("/api/tenants/{}", slugs[0]), None),
        ] {
            let started = Instant::now();
            let r = request(method.clone(), &path, body).await;
            let took = started.elapsed();
            assert_eq!(
                r.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{method} {path}: {}",
                r.text
            );
            assert!(
                took < Duration::from_secs(5),
                "{method} {path} took {took:?}"
            );
            r.assert_json_with_request_id();
            assert_eq!(r.error_code(), "SERVICE_UNAVAILABLE");
            r.assert_no_internals();
        }
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
    admin_rotated
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name IN ('create-tenant', 'list-tenants', 'delete-tenant', 'migrate-all')",
            &[],
        )
        .await
        .unwrap();
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
    admin_rotated
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name IN ('create-tenant', 'list-tenants', 'delete-tenant', 'migrate-all')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        get("/api/tenants?limit=1").await.status,
        StatusCode::OK,
        "and back again"
    );
    assert_invariants(&[slugs, vec![created_slug]].concat()).await;
}
