//! delete-tenant SIGKILLed half way through a delete or a purge: the next migrate-all
//! finishes the work, and a half-purged tenant cannot be restored.

use super::*;

/// Starts a real delete-tenant process on `method path`.
async fn start_lifecycle(method: &str, path: &str) -> (runtime::RuntimeApi, tokio::process::Child) {
    let event = runtime::http_event(method, path, "", &[]);
    let api = runtime::RuntimeApi::start(event).await;
    let child = api.spawn("delete-tenant", &[]);
    (api, child)
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
