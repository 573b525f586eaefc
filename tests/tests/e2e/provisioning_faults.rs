use e2e::*;
use reqwest::StatusCode;

/// Puts an object into `template1` of every server (what the tenant templates are built from)
/// that makes migration V2 fail, and drops the tenant templates so that the next create must
/// build one; removes the object when dropped.
struct TemplateFault;

impl TemplateFault {
    async fn install() -> TemplateFault {
        for server in SERVERS {
            connect_on(server, "template1")
                .await
                .batch_execute("CREATE VIEW activity_log AS SELECT 1 AS squatter")
                .await
                .expect("install the template fault");
        }
        drop_templates().await;
        TemplateFault
    }
}

/// Drops the tenant templates of the stack's registry, on every server.
async fn drop_templates() {
    for (server, name) in tenant_templates().await {
        admin_on(&server)
            .await
            .batch_execute(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
            .await
            .expect("drop the tenant template");
    }
}

/// The tenant templates of the stack's registry that exist, with their servers (other
/// registries on a cluster, such as the shared crate's tests', have templates of their own).
async fn tenant_templates() -> Vec<(String, String)> {
    let recorded: Vec<(String, String)> = registry()
        .await
        .query(
            "SELECT server, name FROM tenant_templates ORDER BY server, name",
            &[],
        )
        .await
        .expect("read tenant_templates")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut existing = Vec::new();
    for (server, name) in recorded {
        if servers_with_database(&name)
            .await
            .contains(&server.as_str())
        {
            existing.push((server, name));
        }
    }
    existing
}

impl Drop for TemplateFault {
    fn drop(&mut self) {
        block_on_own_thread(async {
            for server in SERVERS {
                connect_on(server, "template1")
                    .await
                    .batch_execute("DROP VIEW IF EXISTS activity_log")
                    .await
                    .expect("remove the template fault");
            }
        });
    }
}

#[tokio::test]
async fn a_failing_migration_leaves_nothing_behind_and_the_slug_can_be_retried() {
    // Exclusive: every other provisioning test would copy the fault too.
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, true).await;
    let slug = cleanup.add(&unique_slug("fault"));

    let fault = TemplateFault::install().await;
    let reply = post_tenant(&json!({"name": "Faulty", "slug": slug})).await;
    assert!(
        reply.status.is_server_error(),
        "{}: {}",
        reply.status,
        reply.text
    );
    reply.assert_json_with_request_id();
    assert_eq!(reply.error_code(), "INTERNAL_ERROR");
    reply.assert_no_internals();
    assert!(!reply.text.contains("activity_log"), "{}", reply.text);
    // Nothing left: no database, no row, no half-built template.
    assert!(databases_like(&slug).await.is_empty(), "database dropped");
    assert_eq!(registry_row(&slug).await, None, "row removed");
    assert_eq!(tenant_templates().await, Vec::<(String, String)>::new());
    drop(fault);

    // Once the fault is gone, the same slug provisions.
    let retry = post_tenant(&json!({"name": "Faulty", "slug": slug})).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(registry_row(&slug).await, Some(("active".into(), latest())));
    assert_eq!(history_versions(&slug).await, all_versions());
    assert!(has_table(&slug, "activity_log").await);
    // The template was rebuilt on the tenant's server, ready (closed to connections), and is
    // not a tenant.
    let templates = tenant_templates().await;
    assert_eq!(templates.len(), 1, "{templates:?}");
    assert_eq!(Some(&templates[0].0), tenant_server(&slug).await.as_ref());
    let allows: bool = admin_on(&templates[0].0)
        .await
        .query_one(
            "SELECT datallowconn FROM pg_database WHERE datname = $1",
            &[&templates[0].1],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!allows, "a ready template takes no connections");
}

#[tokio::test]
async fn a_template_being_built_elsewhere_is_a_503_and_a_replay_does_not_wait_for_it() {
    // Exclusive: the template is dropped, and its build held.
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, true).await;
    let done = cleanup.add(&unique_slug("tplbusy_done"));
    let key = format!("k-{done}");
    let body = json!({"name": "Done", "slug": done});
    let first = post_with_key(&body, &key).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);

    // Another process builds the templates (it holds the product's template lock of each
    // server: namespace "dbt\2", the key hashed from the server's name).
    drop_templates().await;
    let builder = registry().await;
    for server in SERVERS {
        builder
            .execute(
                "SELECT pg_advisory_lock(1684173826, hashtext($1))",
                &[&server],
            )
            .await
            .unwrap();
    }

    // A retry of a tenant that exists replays at once: it needs no template.
    let replay = post_with_key(&body, &key).await;
    assert_eq!(replay.status, StatusCode::CREATED, "{}", replay.text);
    assert_eq!(replay.body["id"], first.body["id"]);
    // A new tenant waits for the build (on each server in turn), then answers 503 (retry),
    // having made nothing.
    let new = cleanup.add(&unique_slug("tplbusy_new"));
    let r = post_tenant(&json!({"name": "New", "slug": new})).await;
    drop(builder);
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    r.assert_no_internals();
    assert_eq!(registry_row(&new).await, None);
    assert!(!database_exists(&database_name(&new)).await);

    // The build is free again: the retry builds the template and provisions.
    let retry = post_tenant(&json!({"name": "New", "slug": new})).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(tenant_templates().await.len(), 1);
}
