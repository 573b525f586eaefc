use e2e::*;
use reqwest::StatusCode;

#[tokio::test]
async fn create_answers_201_with_a_ready_database() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("acme"));

    let reply = post_tenant(&json!({"name": "  Acme Corp ", "slug": slug})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.assert_json_with_request_id();
    let t = &reply.body;
    assert_eq!(t["name"], "Acme Corp", "name is stored trimmed");
    assert_eq!(t["slug"], slug.as_str());
    assert_eq!(t["status"], "active");
    assert_eq!(t["database_name"], database_name(&slug).as_str());
    assert_eq!(t["schema_version"], latest());
    assert!(t["deleted_at"].is_null());
    assert!(
        uuid::Uuid::parse_str(t["id"].as_str().unwrap()).is_ok(),
        "{t}"
    );
    let created = t["created_at"].as_str().unwrap();
    assert!(
        created.ends_with('Z') && created.len() == 20,
        "RFC 3339 UTC: {created}"
    );
    let keys: Vec<&String> = t.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "id",
            "name",
            "slug",
            "status",
            "database_name",
            "schema_version",
            "credentials_secret_arn",
            "server",
            "created_at",
            "deleted_at",
            "move_id"
        ]
    );

    // The database exists on the server the body names, and only there, with the contract's
    // tables, indexes and migration history.
    let server = t["server"].as_str().expect("a server");
    assert_eq!(tenant_server(&slug).await.as_deref(), Some(server));
    assert_eq!(servers_with_database(&database_name(&slug)).await, [server]);
    let tenant = connect_on(server, &database_name(&slug)).await;
    let columns: Vec<(String, String, String, String)> = tenant
        .query(
            "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text \
             FROM information_schema.columns WHERE table_schema = 'public' \
             AND table_name IN ('settings', 'activity_log') ORDER BY table_name, ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let expected = [
        ("activity_log", "id", "uuid", "NO"),
        ("activity_log", "action", "character varying", "NO"),
        ("activity_log", "entity_type", "character varying", "YES"),
        ("activity_log", "entity_id", "uuid", "YES"),
        ("activity_log", "details", "jsonb", "YES"),
        (
            "activity_log",
            "created_at",
            "timestamp without time zone",
            "YES",
        ),
        ("activity_log", "actor_id", "uuid", "YES"),
        ("settings", "key", "character varying", "NO"),
        ("settings", "value", "jsonb", "NO"),
        (
            "settings",
            "updated_at",
            "timestamp without time zone",
            "YES",
        ),
    ];
    let got: Vec<(&str, &str, &str, &str)> = columns
        .iter()
        .map(|(a, b, c, d)| (a.as_str(), b.as_str(), c.as_str(), d.as_str()))
        .collect();
    assert_eq!(got, expected);

    let indexes: Vec<String> = tenant
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = 'activity_log' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for ix in [
        "activity_log_action_idx",
        "activity_log_actor_idx",
        "activity_log_created_at_idx",
        "activity_log_entity_idx",
    ] {
        assert!(indexes.iter().any(|i| i == ix), "missing {ix}: {indexes:?}");
    }
    let history: Vec<(i32, String)> = tenant
        .query(
            "SELECT version, name FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        history,
        [
            (1, "create_settings".to_owned()),
            (2, "create_activity_log".to_owned()),
            (3, "grant_tenant_logins".to_owned()),
            (4, "activity_log_actor".to_owned())
        ]
    );

    // The tables work: the defaults fill in.
    tenant
        .execute(
            "INSERT INTO activity_log (action) VALUES ('tenant.created')",
            &[],
        )
        .await
        .unwrap();
    tenant
        .execute(
            "INSERT INTO settings (key, value) VALUES ('plan', '\"pro\"')",
            &[],
        )
        .await
        .unwrap();

    // PUBLIC may not connect to a tenant database.
    let public_connect: bool = admin_on(server)
        .await
        .query_one(
            "SELECT has_database_privilege('public', $1, 'CONNECT')",
            &[&database_name(&slug)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!public_connect, "CONNECT is revoked from PUBLIC");

    // The registry agrees, and GET shows the same tenant.
    assert_eq!(registry_row(&slug).await, Some(("active".into(), latest())));
    let one = get(&format!("/api/tenants/{slug}")).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text);
    one.assert_json_with_request_id();
    assert_eq!(one.body, reply.body);
    let all = get("/api/tenants?limit=500&status=active").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text);
    let listed = all.body["tenants"].as_array().unwrap();
    // Other tests create tenants too: find ours (paging if needed).
    let mut found = listed.iter().any(|x| x["slug"] == slug.as_str());
    let mut cursor = all.body["next_cursor"].as_str().map(str::to_owned);
    while !found {
        let Some(c) = cursor else { break };
        let page = get(&format!("/api/tenants?limit=500&status=active&cursor={c}")).await;
        found = page.body["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["slug"] == slug.as_str());
        cursor = page.body["next_cursor"].as_str().map(str::to_owned);
    }
    assert!(found, "the new tenant is listed as active");
}

#[tokio::test]
async fn a_48_character_slug_gets_a_63_byte_database_name() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let base = unique_slug("l");
    let slug = cleanup.add(&format!("{base}{}", "x".repeat(48 - base.len())));
    assert_eq!(slug.len(), 48);
    let reply = post_tenant(&json!({"name": "Long", "slug": slug})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let db = database_name(&slug);
    assert_eq!(db.len(), 63);
    assert!(
        database_exists(&db).await,
        "exactly the 63-byte name exists"
    );
    assert_eq!(reply.body["database_name"], db.as_str());
}

#[tokio::test]
async fn a_taken_slug_is_a_conflict() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("dup"));
    let first = post_tenant(&json!({"name": "First", "slug": slug})).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);

    let again = post_tenant(&json!({"name": "Second", "slug": slug})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    again.assert_json_with_request_id();
    assert_eq!(again.error_code(), "CONFLICT");
    assert_eq!(
        again.body["error"]["message"],
        format!("Tenant with slug '{slug}' already exists").as_str()
    );
    again.assert_no_internals();
    // The first tenant is untouched.
    let one = get(&format!("/api/tenants/{slug}")).await;
    assert_eq!(one.body["name"], "First");
    assert_eq!(one.body["id"], first.body["id"]);
}

#[tokio::test]
async fn the_slug_of_a_deleted_tenant_stays_taken() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("gone"));
    assert_eq!(
        post_tenant(&json!({"name": "Gone", "slug": slug}))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        delete(&format!("/api/tenants/{slug}")).await.status,
        StatusCode::OK
    );
    let again = post_tenant(&json!({"name": "Again", "slug": slug})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    assert_eq!(
        registry_row(&slug).await,
        Some(("deleted".into(), latest()))
    );
}

#[tokio::test]
async fn a_database_outside_the_registry_is_never_adopted_or_dropped() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("squat"));
    let db = database_name(&slug);
    plant_squatter(&db).await;

    let reply = post_tenant(&json!({"name": "Squat", "slug": slug})).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text);
    assert_eq!(reply.error_code(), "CONFLICT");
    reply.assert_no_internals();

    assert_squatter_untouched(&db).await;
    assert_eq!(registry_row(&slug).await, None);
}
