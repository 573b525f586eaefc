//! Work abandoned at a deadline stops on the server too, and migrate-all's steps before the
//! tenants (reconcile, lifecycle, templates) end with the invocation's time.

use super::*;

/// Holds `pg_database` of a server in EXCLUSIVE mode until dropped: `CREATE DATABASE` and
/// `DROP DATABASE` there wait for it; connections (which only read it) do not.
async fn hold_database_catalog(server: &str) -> Held {
    Held::on(
        server,
        "postgres",
        "BEGIN; LOCK TABLE pg_database IN EXCLUSIVE MODE",
    )
    .await
}

/// Whether the report (of a migrate-all) names `name` among its orphan databases.
fn orphan(report: &serde_json::Value, name: &str) -> bool {
    report["orphan_databases"]
        .as_array()
        .is_some_and(|o| o.iter().any(|d| d == name))
}

#[tokio::test]
async fn a_create_abandoned_at_its_deadline_leaves_no_ddl_behind_to_commit_later() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("fdl_create"));
    let key = format!("k-{slug}");
    // A create whose lease (12 s) ends its work at 11 s; it waits for the tenant's lock (held
    // here) until 8 s, then its CREATE DATABASE waits for the catalog (held here too), whose
    // lock timeout (10 s) would let it wait on long past the create's deadline.
    let lock = hold_tenant_lock(&slug).await;
    let catalog = hold_database_catalog("secondary").await;
    let body = json!({"name": "Abandoned", "slug": slug, "server": "secondary"}).to_string();
    let event = runtime::http_event("POST", "/api/tenants", &body, &[("idempotency-key", &key)]);
    let api = runtime::RuntimeApi::start(event).await;
    let _child = api.spawn(
        "create-tenant",
        &[
            ("PROVISIONING_LEASE_SECONDS", "12"),
            ("DB_LOCK_TIMEOUT_SECS", "10"),
            ("DB_QUERY_TIMEOUT_SECS", "1"),
        ],
    );
    wait_for_row(&slug, "provisioning").await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    drop(lock);
    assert!(
        eventually(Duration::from_secs(5), || async {
            lock_waiters("secondary", "create-tenant", "CREATE DATABASE").await == 1
        })
        .await,
        "the create waits at its CREATE DATABASE"
    );
    let answer = api
        .wait_response(Duration::from_secs(15))
        .await
        .expect("the create answered at its deadline");
    assert_eq!(answer["statusCode"], 503, "{answer}");
    // Its statement is gone from the server, not waiting on for the catalog.
    assert!(
        eventually(Duration::from_secs(3), || async {
            lock_waiters("secondary", "create-tenant", "CREATE DATABASE").await == 0
        })
        .await,
        "the abandoned CREATE DATABASE was cancelled on the server"
    );
    // Past the lease, a run reconciles the row (no database: rolled back) while the catalog
    // is still held; then the catalog is let go. Nothing commits behind the registry's back.
    // Waited for, not assumed from a sleep: a busy machine stretches every step above.
    assert!(
        eventually(Duration::from_secs(20), || async {
            registry()
                .await
                .query_one(
                    "SELECT coalesce(lease_expires_at < now(), false) FROM tenants WHERE slug = $1",
                    &[&slug.as_str()],
                )
                .await
                .is_ok_and(|r| r.get::<_, bool>(0))
        })
        .await,
        "the create's lease ended"
    );
    let (status, report) = invoke_migrate_all(&json!({"slugs": []})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(
        report["reconciled"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["slug"] == slug.as_str() && r["action"] == "rolled_back"),
        "{report}"
    );
    drop(catalog);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !database_exists(&database_name(&slug)).await,
        "no database appeared after the row was rolled back"
    );
    let r = post_with_key(
        &json!({"name": "Abandoned", "slug": slug, "server": "secondary"}),
        &key,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "the slug is free: {}",
        r.text
    );
    let (_, report) = invoke_migrate_all(&json!({"slugs": [slug]})).await;
    assert!(!orphan(&report, &database_name(&slug)), "{report}");
    assert_invariants(&[slug]).await;
}

#[tokio::test]
async fn lifecycle_work_ends_with_the_invocations_time() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    // Three deleted tenants due for their purge, whose DROP DATABASE would wait (for the
    // catalog held here) for the run's lock timeout, 20 s each.
    let slugs = create_tenants_on(&mut cleanup, "fdl_purge", 3, Some("secondary")).await;
    for slug in &slugs {
        let r = delete(&format!("/api/tenants/{slug}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    registry()
        .await
        .execute(
            "UPDATE tenants SET deleted_at = now() - interval '400 days' WHERE slug = ANY($1)",
            &[&slugs],
        )
        .await
        .unwrap();
    let catalog = hold_database_catalog("secondary").await;
    let api =
        runtime::RuntimeApi::start_with_deadline(json!({"slugs": slugs}), Duration::from_secs(8))
            .await;
    let started = Instant::now();
    let _child = api.spawn(
        "migrate-all",
        &[
            ("DB_LOCK_TIMEOUT_SECS", "20"),
            ("DB_STATEMENT_TIMEOUT_SECS", "30"),
            ("PROVISIONING_LEASE_SECONDS", "35"),
        ],
    );
    let answer = api.wait_response(Duration::from_secs(40)).await;
    let took = started.elapsed();
    drop(catalog);
    let answer = answer.expect("an answer");
    assert!(
        took < Duration::from_secs(9),
        "answered within its 8 s, not after a 20 s wait ({took:?}): {answer}"
    );
    // Each purge is left for the next run (skipped, out of time), none half done.
    let lifecycle = answer["lifecycle"].as_array().expect("a report").clone();
    assert_eq!(lifecycle.len(), 3, "{answer}");
    for u in &lifecycle {
        assert_eq!(u["action"], "skipped", "{answer}");
    }
    // The next run (the catalog free) purges them.
    let (status, report) = invoke_migrate_all(&json!({"slugs": slugs})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    for slug in &slugs {
        assert_eq!(registry_row(slug).await.map(|r| r.0), Some("purged".into()));
        assert!(!database_exists(&database_name(slug)).await);
    }
}
