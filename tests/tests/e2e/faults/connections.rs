//! The functions' cached connections cut under them (their backends terminated): the next
//! request opens a new one without an error reaching the client, and logs in with the admin
//! password read again from Secrets Manager when it was rotated meanwhile.

use super::*;

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
