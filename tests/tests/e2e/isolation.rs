//! Isolation as an attacker holding a tenant's login tries it: what it can open, what it can
//! leave behind, and what it can learn. (Polling for new databases while tenants are made,
//! and a create killed between its database and its login, are fault tests: they hold the
//! secondary's role catalog.)

use e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The SQLSTATE of a refused connection or statement.
fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

async fn secret_of(slug: &str) -> Value {
    let arn = get(&format!("/api/tenants/{slug}")).await.body["credentials_secret_arn"]
        .as_str()
        .expect("an ARN")
        .to_owned();
    read_secret(&arn).await
}

/// Large objects in a database of a server (as the superuser sees them), by owner.
async fn large_objects(server: &str, dbname: &str, owner: &str) -> i64 {
    connect_on(server, dbname)
        .await
        .query_one(
            "SELECT count(*) FROM pg_largeobject_metadata m JOIN pg_roles r \
             ON r.oid = m.lomowner WHERE r.rolname = $1",
            &[&owner],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_login_cannot_open_the_shared_databases_where_the_admin_may_close_them() {
    // The fleet's: the run must not find another at work.
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = create_tenants_on(&mut cleanup, "iso_pub", 1, Some("primary"))
        .await
        .remove(0);
    // The registry hardens primary (its admin is a superuser) on every run and at start-up.
    let (status, report) = invoke_migrate_all(&json!({"slugs": [slug]})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let primary = report["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "primary")
        .unwrap();
    assert_eq!(primary["open_to_every_login"], json!([]), "{report}");
    let secret = secret_of(&slug).await;
    for shared in ["postgres", "template1"] {
        let e = connect_as(&secret, Some(shared)).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{shared}: {e}");
    }
    // The secondary's admin does not own them (as on RDS): reported, not hidden.
    let secondary = report["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "secondary")
        .unwrap();
    assert_eq!(
        secondary["open_to_every_login"],
        json!(["postgres", "template1"]),
        "{report}"
    );
}

#[tokio::test]
async fn what_a_login_leaves_in_the_shared_databases_neither_blocks_its_purge_nor_reaches_a_new_tenant(
) {
    // Exclusive: the secondary's template is rebuilt.
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, true).await;
    // On the secondary, whose admin may not close `postgres` and `template1` (as on RDS).
    let slug = create_tenants_on(&mut cleanup, "iso_lo", 1, Some("secondary"))
        .await
        .remove(0);
    let role = database_name(&slug);
    let secret = secret_of(&slug).await;
    let all_objects = |shared: &'static str| async move {
        connect_on("secondary", shared)
            .await
            .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = [
        all_objects("postgres").await,
        all_objects("template1").await,
    ];
    // A large object needs no privilege: one in each database every login may open, and a
    // session left open there.
    let mut sessions = Vec::new();
    for shared in ["postgres", "template1"] {
        let c = connect_as(&secret, Some(shared))
            .await
            .expect("the secondary's shared databases are open to every login");
        c.query_one("SELECT lo_create(0)", &[])
            .await
            .expect("a large object");
        if shared == "postgres" {
            c.batch_execute("CREATE TEMP TABLE mine (v int)")
                .await
                .expect("a temporary table");
        }
        assert_eq!(large_objects("secondary", shared, &role).await, 1);
        sessions.push(c);
    }

    // The purge ends those sessions, drops what the login owns there, then the login.
    let r = delete(&format!("/api/tenants/{slug}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = request(Method::POST, &format!("/api/tenants/{slug}/purge"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "purged");
    assert_eq!(role_can_login(&role).await, None, "the login is gone");
    for (shared, before) in ["postgres", "template1"].into_iter().zip(before) {
        assert_eq!(
            all_objects(shared).await,
            before,
            "nothing of the login's is left in {shared}"
        );
    }
    drop(sessions);

    // What a login leaves in template1 never reaches a tenant: templates are built from
    // template0. A login plants one again; the template is built anew; a new tenant has none.
    let planter = create_tenants_on(&mut cleanup, "iso_lo2", 1, Some("secondary"))
        .await
        .remove(0);
    let c = connect_as(&secret_of(&planter).await, Some("template1"))
        .await
        .unwrap();
    c.query_one("SELECT lo_create(0)", &[]).await.unwrap();
    drop_secondary_template().await;
    let later = create_tenants_on(&mut cleanup, "iso_lo3", 1, Some("secondary"))
        .await
        .remove(0);
    let copied: i64 = connect_tenant(&later)
        .await
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        copied, 0,
        "nothing planted in template1 reached the new tenant"
    );
    // The planter's purge, its session still open, leaves nothing either.
    let r = delete(&format!("/api/tenants/{planter}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = request(Method::POST, &format!("/api/tenants/{planter}/purge"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    drop(c);
    assert_eq!(all_objects("template1").await, before[1]);
}

/// Drops the registry's template on the secondary (as the superuser), so that the next
/// create there builds it anew.
async fn drop_secondary_template() {
    let names: Vec<String> = registry()
        .await
        .query(
            "SELECT name FROM tenant_templates WHERE server = 'secondary'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let admin = admin_on("secondary").await;
    for name in names {
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn opaque_names_tell_a_login_no_other_customer() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("iso_opaque"));
    // A create with TENANT_NAMES=opaque (the real binary, its environment the stack's).
    let body = json!({"name": "Opaque", "slug": slug, "server": "primary"}).to_string();
    let api =
        runtime::RuntimeApi::start(runtime::http_event("POST", "/api/tenants", &body, &[])).await;
    let _child = api.spawn("create-tenant", &[("TENANT_NAMES", "opaque")]);
    let answer = api
        .wait_response(std::time::Duration::from_secs(60))
        .await
        .expect("an answer");
    assert_eq!(answer["statusCode"], 201, "{answer}");
    let tenant: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    let id = tenant["id"].as_str().unwrap().replace('-', "");
    let name = format!("dbtools_tenant_0{id}");
    assert_eq!(tenant["database_name"], name.as_str(), "{tenant}");
    assert!(!name.contains(&slug));
    // Its login is named so too, and opens it; the catalogs it can read name no slug.
    let secret = read_secret(tenant["credentials_secret_arn"].as_str().unwrap()).await;
    assert_eq!(secret["username"], name.as_str());
    assert_eq!(secret["dbname"], name.as_str());
    let app = connect_as(&secret, None).await.expect("its login connects");
    let visible: Vec<String> = app
        .query(
            "SELECT datname::text FROM pg_database UNION ALL SELECT rolname::text FROM pg_roles",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(visible.iter().all(|n| !n.contains(&slug)), "{visible:?}");
    // The lifecycle goes by the names the registry stored.
    let r = delete(&format!("/api/tenants/{slug}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = request(Method::POST, &format!("/api/tenants/{slug}/purge"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(!database_exists(&name).await);
    assert_eq!(role_can_login(&name).await, None);
}
