//! create-tenant SIGKILLed at each step of a provisioning (before its database, before its
//! login, before its secret, at its last step): after the lease, the client's retry with the
//! same key rolls the dead provisioning back or forward and answers 201.

use super::*;

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
async fn a_create_killed_between_its_commit_and_its_event_has_the_event_sent_by_the_next_run() {
    // The run below must not find another at work.
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("fkill_ev"));
    let tap = EventTap::slugs(&[&slug]).await;
    // Events go out one sender at a time (the product's `Events` lock, 0x64627400/3): hold it,
    // and the create, its tenant committed `active`, waits for it to send. Kill it there.
    let senders = Held::on(
        "primary",
        "dbtools",
        "SELECT pg_advisory_lock(1684173824, 3)",
    )
    .await;
    let (api, mut child) = start_create(&slug, "primary", &format!("k-{slug}")).await;
    wait_for_row(&slug, "active").await;
    let waiting = eventually(Duration::from_secs(20), || async {
        create_tenant_lock_waiters("SELECT pg_advisory_xact_lock").await == 1
    })
    .await;
    assert!(waiting, "the create waits to send its event");
    child.kill().await.expect("SIGKILL create-tenant");
    assert!(
        eventually(Duration::from_secs(10), || async {
            create_tenant_lock_waiters("").await == 0
        })
        .await,
        "the dead client's wait was cancelled"
    );
    drop(senders);
    assert!(
        api.response.lock().await.is_none(),
        "the killed create never answered"
    );
    let pending = || async {
        registry()
            .await
            .query_one(
                "SELECT count(*) FROM events WHERE detail_type = 'provisionSuccess' \
                 AND detail ->> 'slug' = $1",
                &[&slug],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(
        pending().await,
        1,
        "the event was committed with the tenant"
    );
    assert!(
        tap.receive(1, Duration::from_secs(2)).await.is_empty(),
        "and not sent"
    );

    // The next migrate-all's upkeep sends it, once.
    let (status, report) = invoke_migrate_all(&json!({"slugs": [slug]})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let events = tap.exactly(1).await;
    let e = event_of(&events, "provisionSuccess");
    let tenant = get(&format!("/api/tenants/{slug}")).await.body;
    assert_eq!(e["detail"]["tenant_id"], tenant["id"], "{e}");
    assert_eq!(
        e["detail"]["credentials_secret_arn"],
        tenant["credentials_secret_arn"]
    );
    assert_eq!(pending().await, 0);
    assert_invariants(&[slug]).await;
}
