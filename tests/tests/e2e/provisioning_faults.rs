use e2e::*;
use reqwest::StatusCode;

/// Makes tenant migration V2 fail in every database made from the cluster's `template0`
/// (what tenant templates are built from): an event trigger there refuses `activity_log`.
/// Only a superuser can touch `template0`; the cluster is the test's own.
async fn poison_template0(cluster: &ThrowawayCluster) {
    cluster
        .connect("postgres")
        .await
        .batch_execute("ALTER DATABASE template0 ALLOW_CONNECTIONS true")
        .await
        .unwrap();
    cluster
        .connect("template0")
        .await
        .batch_execute(
            "CREATE FUNCTION refuse_activity_log() RETURNS event_trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() \
               WHERE object_identity = 'public.activity_log') \
             THEN RAISE EXCEPTION 'no activity_log here'; END IF; END $$; \
             CREATE EVENT TRIGGER refuse_activity_log ON ddl_command_end \
               EXECUTE FUNCTION refuse_activity_log()",
        )
        .await
        .unwrap();
}

/// Takes the fault away again.
async fn cure_template0(cluster: &ThrowawayCluster) {
    cluster
        .connect("template0")
        .await
        .batch_execute(
            "DROP EVENT TRIGGER refuse_activity_log; DROP FUNCTION refuse_activity_log()",
        )
        .await
        .unwrap();
    cluster
        .connect("postgres")
        .await
        .batch_execute("ALTER DATABASE template0 ALLOW_CONNECTIONS false")
        .await
        .unwrap();
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

#[tokio::test]
async fn a_failing_migration_leaves_nothing_behind_and_the_slug_can_be_retried() {
    // A server of the test's own, whose template0 makes a migration fail; the fleet lock
    // exclusive: no whole-fleet run prepares it while it comes and goes.
    let mut cleanup = Cleanup::holding_fleet().await;
    let server = RegisteredCluster::start("faulty", 5).await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("fault"));
    poison_template0(&server.cluster).await;
    let body = json!({"name": "Faulty", "slug": slug, "server": server.name});
    let reply = post_tenant(&body).await;
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
    let on_server = |sql: &'static str| {
        let cluster = &server.cluster;
        async move {
            cluster
                .connect("postgres")
                .await
                .query_one(sql, &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(
        on_server("SELECT count(*) FROM pg_database WHERE datname LIKE 'dbtools\\_%'").await,
        0,
        "no database, and no template, on the server"
    );
    assert_eq!(registry_row(&slug).await, None, "row removed");
    let recorded = |name: String| async move {
        registry()
            .await
            .query(
                "SELECT name FROM tenant_templates WHERE server = $1 AND ready_at IS NOT NULL",
                &[&name],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<String>>()
    };
    assert_eq!(
        recorded(server.name.clone()).await,
        Vec::<String>::new(),
        "no template ready there"
    );
    cure_template0(&server.cluster).await;

    // Once the fault is gone, the same slug provisions.
    let retry = post_tenant(&body).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(registry_row(&slug).await, Some(("active".into(), latest())));
    let history: Vec<i32> = server
        .cluster
        .connect(&database_name(&slug))
        .await
        .query(
            "SELECT version FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(history, all_versions());
    // The template was built on the tenant's server, ready (closed to connections).
    let templates = recorded(server.name.clone()).await;
    assert_eq!(templates.len(), 1, "{templates:?}");
    let allows: bool = server
        .cluster
        .connect("postgres")
        .await
        .query_one(
            "SELECT datallowconn FROM pg_database WHERE datname = $1",
            &[&templates[0]],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!allows, "a ready template takes no connections");
    purge_tenant(&slug).await;
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
