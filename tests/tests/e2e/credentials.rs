//! Tenant credentials and the lifecycle, as the application and the operator see them: the
//! secret read from the local Secrets Manager with the real SDK, the tenant's own login
//! connecting (or refused), and what exists in PostgreSQL and Secrets Manager afterwards.

use e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

async fn post(path: &str) -> Reply {
    request(Method::POST, path, None).await
}

/// The SQLSTATE of a failed statement or connection.
fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

#[tokio::test]
async fn the_application_connects_with_its_own_secret_and_nothing_more() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    // Both on primary, where the registry is too (the secondary's case: servers.rs).
    let slugs = create_tenants_on(&mut cleanup, "cred", 2, Some("primary")).await;
    let (a, b) = (&slugs[0], &slugs[1]);

    // The tenant body names its secret; the secret is in the RDS format, tagged.
    let tenant = get(&format!("/api/tenants/{a}")).await.body;
    let arn = tenant["credentials_secret_arn"].as_str().expect("an ARN");
    assert!(arn.starts_with("arn:aws:secretsmanager:"), "{arn}");
    assert!(
        arn.contains(&format!(":secret:{}", secret_name(a))),
        "{arn}"
    );
    let secret = read_secret(arn).await;
    let pg: tokio_postgres::Config = pg_url().parse().unwrap();
    assert_eq!(secret["engine"], "postgres");
    assert_eq!(secret["dbname"], database_name(a).as_str());
    assert_eq!(secret["username"], database_name(a).as_str());
    assert_eq!(secret["port"], pg.get_ports()[0]);
    assert_eq!(secret["host"], "127.0.0.1");
    let password = secret["password"].as_str().unwrap().to_owned();
    assert_eq!(password.len(), 43, "32 random bytes");
    let tags = secrets()
        .await
        .describe_secret()
        .secret_id(arn)
        .send()
        .await
        .unwrap()
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
        .collect::<Vec<_>>();
    assert!(tags.contains(&(
        "dbtools:tenant-id".into(),
        tenant["id"].as_str().unwrap().into()
    )));
    assert!(tags.contains(&("dbtools:tenant-slug".into(), a.clone())));

    // The application reads and writes its tables.
    let app = connect_as(&secret, None)
        .await
        .expect("the tenant's login connects");
    app.execute(
        "INSERT INTO settings (key, value) VALUES ('plan', '\"pro\"')",
        &[],
    )
    .await
    .expect("write settings");
    app.execute(
        "INSERT INTO activity_log (action, details) VALUES ('signup', '{\"by\": \"app\"}')",
        &[],
    )
    .await
    .expect("write activity_log");
    let plan: Value = app
        .query_one("SELECT value FROM settings WHERE key = 'plan'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(plan, "pro");
    let actions: i64 = app
        .query_one(
            "SELECT count(*) FROM activity_log WHERE action = 'signup'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(actions, 1);
    app.execute("UPDATE settings SET value = '\"team\"'", &[])
        .await
        .expect("update");
    app.execute("DELETE FROM activity_log", &[])
        .await
        .expect("delete");

    // ... and nothing else: no other tenant's database, not the registry, no DDL, no roles,
    // no databases, not the migration history.
    let other = connect_as(&secret, Some(&database_name(b)))
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&other),
        "42501",
        "another tenant's database: {other}"
    );
    let registry = connect_as(&secret, Some("dbtools")).await.unwrap_err();
    assert_eq!(sqlstate(&registry), "42501", "the registry: {registry}");
    for ddl in [
        "CREATE TABLE mine (v int)",
        "CREATE TEMP TABLE mine (v int)",
        "CREATE SCHEMA mine",
        "CREATE DATABASE mine",
        "CREATE ROLE mine",
        "DROP TABLE settings",
        "ALTER TABLE settings ADD COLUMN x int",
        "DELETE FROM refinery_schema_history",
    ] {
        let e = app.batch_execute(ddl).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{ddl}: {e}");
    }
    let history: i64 = connect_tenant(a)
        .await
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, all_versions().len() as i64);

    // The password never reached the server nor a log: PostgreSQL logged the role's DDL
    // (log_statement=ddl on the local cluster) with a SCRAM verifier in its place.
    let server_log = stack_log("pg/server.log");
    assert!(
        server_log.contains(&format!("CREATE ROLE \"{}\"", database_name(a))),
        "the DDL is logged, so the next assertion means something"
    );
    assert!(server_log.contains("PASSWORD 'SCRAM-SHA-256$4096:"));
    assert!(
        !server_log.contains(&password),
        "password in the server log"
    );
    assert!(
        !stack_log("watch.log").contains(&password),
        "password in a function log"
    );
    let body = get(&format!("/api/tenants/{a}")).await.text;
    assert!(!body.contains(&password));
}

#[tokio::test]
async fn delete_disables_the_login_and_restore_brings_it_back_at_the_latest_migration() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = create_tenants(&mut cleanup, "rest", 1).await.remove(0);
    let arn = get(&format!("/api/tenants/{slug}")).await.body["credentials_secret_arn"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = read_secret(&arn).await;
    let session = connect_as(&secret, None)
        .await
        .expect("connects while active");
    // Deleted tenants are skipped by migrate-all: restore must migrate.
    undo_to_v1(&slug).await;

    let deleted = delete(&format!("/api/tenants/{slug}")).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);
    assert_eq!(deleted.body["status"], "deleted");
    assert_eq!(
        deleted.body["credentials_secret_arn"],
        arn.as_str(),
        "the secret is kept"
    );
    // Its sessions were ended, and new ones are refused.
    assert!(
        session.query_one("SELECT 1", &[]).await.is_err(),
        "session ended"
    );
    let refused = connect_as(&secret, None).await.unwrap_err();
    assert_eq!(sqlstate(&refused), "28000", "{refused}");
    assert_eq!(role_can_login(&database_name(&slug)).await, Some(false));
    assert!(
        database_exists(&database_name(&slug)).await,
        "database kept"
    );
    assert_eq!(
        secret_deleting(&secret_name(&slug)).await,
        Some(false),
        "secret kept"
    );

    let restored = post(&format!("/api/tenants/{slug}/restore")).await;
    assert_eq!(restored.status, StatusCode::OK, "{}", restored.text);
    restored.assert_json_with_request_id();
    assert_eq!(restored.body["status"], "active");
    assert!(restored.body["deleted_at"].is_null());
    assert_eq!(restored.body["schema_version"], latest());
    assert_eq!(restored.body["credentials_secret_arn"], arn.as_str());
    assert_eq!(history_versions(&slug).await, all_versions());
    assert!(has_table(&slug, "activity_log").await);
    assert_eq!(registry_row(&slug).await, Some(("active".into(), latest())));
    // The application's secret works again, unchanged, and the grants are back.
    assert_eq!(
        read_secret(&arn).await,
        secret,
        "the password did not change"
    );
    let app = connect_as(&secret, None)
        .await
        .expect("connects after restore");
    app.execute("INSERT INTO activity_log (action) VALUES ('restored')", &[])
        .await
        .expect("writes after restore");

    // Only a deleted tenant can be restored.
    for (path, status) in [
        (format!("/api/tenants/{slug}/restore"), StatusCode::CONFLICT),
        (
            "/api/tenants/no_such_tenant/restore".to_owned(),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/tenants/NOT-A-SLUG/restore".to_owned(),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let r = post(&path).await;
        assert_eq!(r.status, status, "{path}: {}", r.text);
        r.assert_json_with_request_id();
        r.assert_no_internals();
    }
}

#[tokio::test]
async fn purge_removes_database_login_and_secret_and_keeps_the_slug() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = create_tenants(&mut cleanup, "purg", 1).await.remove(0);
    let db = database_name(&slug);

    // Only a deleted tenant can be purged.
    let r = post(&format!("/api/tenants/{slug}/purge")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(database_exists(&db).await);

    assert_eq!(
        delete(&format!("/api/tenants/{slug}")).await.status,
        StatusCode::OK
    );
    let purged = post(&format!("/api/tenants/{slug}/purge")).await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.text);
    assert_eq!(purged.body["status"], "purged");
    assert!(purged.body["credentials_secret_arn"].is_null());
    assert!(purged.body["deleted_at"].is_string());
    assert!(!database_exists(&db).await, "database dropped");
    assert_eq!(role_can_login(&db).await, None, "login dropped");
    assert_eq!(
        secret_deleting(&secret_name(&slug)).await,
        Some(true),
        "secret deleted, within its recovery window"
    );
    assert_eq!(
        registry_row(&slug).await.map(|r| r.0),
        Some("purged".into())
    );

    // The slug stays taken; a purge again answers the same; nothing brings it back.
    let again = post_tenant(&json!({"name": "Again", "slug": slug})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    let twice = post(&format!("/api/tenants/{slug}/purge")).await;
    assert_eq!(twice.status, StatusCode::OK, "{}", twice.text);
    assert_eq!(twice.body, purged.body);
    let restore = post(&format!("/api/tenants/{slug}/restore")).await;
    assert_eq!(restore.status, StatusCode::CONFLICT, "{}", restore.text);
    let listed = get("/api/tenants?status=purged&limit=500").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
}

#[tokio::test]
async fn migrate_all_purges_tenants_deleted_long_ago_and_finishes_interrupted_purges() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants(&mut cleanup, "aged", 3).await;
    for slug in &slugs {
        assert_eq!(
            delete(&format!("/api/tenants/{slug}")).await.status,
            StatusCode::OK
        );
    }
    let registry = registry().await;
    // Deleted 31 days ago (PURGE_AFTER_DAYS is 30): due.
    registry
        .execute(
            "UPDATE tenants SET deleted_at = now() - interval '31 days' WHERE slug = $1",
            &[&slugs[0]],
        )
        .await
        .unwrap();
    // A purge that died after its first step: finished whatever its age.
    registry
        .execute(
            "UPDATE tenants SET purge_requested_at = now() WHERE slug = $1",
            &[&slugs[1]],
        )
        .await
        .unwrap();
    // slugs[2]: deleted today, kept.

    // A dry run says what is due and changes nothing.
    let (status, report) = invoke_migrate_all(&json!({"dry_run": true, "slugs": slugs})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let due: Vec<(&str, &str)> = report["lifecycle"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["slug"].as_str().unwrap(), u["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        due,
        [
            (slugs[0].as_str(), "pending"),
            (slugs[1].as_str(), "pending")
        ],
        "{report}"
    );
    assert!(database_exists(&database_name(&slugs[0])).await);

    let (status, report) = invoke_migrate_all(&json!({"slugs": slugs})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    for slug in &slugs[..2] {
        assert!(
            report["lifecycle"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u["slug"] == slug.as_str()
                    && u["task"] == "purge"
                    && u["action"] == "purged"),
            "{report}"
        );
        assert_eq!(registry_row(slug).await.map(|r| r.0), Some("purged".into()));
        assert!(!database_exists(&database_name(slug)).await);
        assert_eq!(role_can_login(&database_name(slug)).await, None);
        assert_eq!(secret_deleting(&secret_name(slug)).await, Some(true));
    }
    assert_eq!(
        registry_row(&slugs[2]).await.map(|r| r.0),
        Some("deleted".into())
    );
    assert!(database_exists(&database_name(&slugs[2])).await);
}

#[tokio::test]
async fn a_tenant_of_an_older_release_gets_its_login_from_migrate_all() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = create_tenants(&mut cleanup, "legacy", 1).await.remove(0);
    // As a release before logins left it: no role, no secret, no names in the row.
    let db = database_name(&slug);
    admin_on(&tenant_server(&slug).await.unwrap())
        .await
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE \"{db}\" FROM \"{db}\"; DROP ROLE \"{db}\""
        ))
        .await
        .unwrap();
    secrets()
        .await
        .delete_secret()
        .secret_id(secret_name(&slug))
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    registry()
        .await
        .execute(
            "UPDATE tenants SET role_name = NULL, secret_name = NULL, \
             credentials_secret_arn = NULL WHERE slug = $1",
            &[&slug],
        )
        .await
        .unwrap();
    assert!(get(&format!("/api/tenants/{slug}")).await.body["credentials_secret_arn"].is_null());

    let (status, report) = invoke_migrate_all(&json!({"slugs": [slug]})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let made = &report["lifecycle"][0];
    assert_eq!(
        (
            made["slug"].as_str(),
            made["task"].as_str(),
            made["action"].as_str()
        ),
        (
            Some(slug.as_str()),
            Some("make_credentials"),
            Some("credentials_made")
        ),
        "{report}"
    );
    let arn = get(&format!("/api/tenants/{slug}")).await.body["credentials_secret_arn"]
        .as_str()
        .expect("an ARN now")
        .to_owned();
    let app = connect_as(&read_secret(&arn).await, None)
        .await
        .expect("its new login connects");
    app.execute("INSERT INTO settings (key, value) VALUES ('k', '1')", &[])
        .await
        .unwrap();
}

/// One step of the rotation function, as Secrets Manager invokes it.
async fn rotation_step(step: &str, arn: &str, token: &str) -> (StatusCode, Value) {
    invoke(
        "rotate-tenant-secret",
        &json!({"Step": step, "SecretId": arn, "ClientRequestToken": token}),
    )
    .await
}

#[tokio::test]
async fn a_full_rotation_gives_the_login_a_new_password_and_the_old_one_stops_working() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    // On the secondary server, whose admin is not a superuser (as on RDS).
    let slug = create_tenants_on(&mut cleanup, "rot", 1, Some("secondary"))
        .await
        .remove(0);
    let arn = get(&format!("/api/tenants/{slug}")).await.body["credentials_secret_arn"]
        .as_str()
        .unwrap()
        .to_owned();
    let old = read_secret(&arn).await;
    let token = uuid::Uuid::new_v4().to_string();

    // Each step twice, as Secrets Manager may repeat any of them.
    for step in ["createSecret", "setSecret", "testSecret", "finishSecret"] {
        for attempt in 0..2 {
            let (status, answer) = rotation_step(step, &arn, &token).await;
            assert_eq!(status, StatusCode::OK, "{step} #{attempt}: {answer}");
        }
    }
    let new = read_secret(&arn).await;
    assert_ne!(
        new["password"], old["password"],
        "a new password is current"
    );
    assert_eq!(new["username"], old["username"]);
    let stages = secrets()
        .await
        .describe_secret()
        .secret_id(&arn)
        .send()
        .await
        .unwrap()
        .version_ids_to_stages()
        .cloned()
        .unwrap_or_default();
    assert!(
        stages[&token].iter().any(|s| s == "AWSCURRENT"),
        "{stages:?}"
    );
    connect_as(&new, None)
        .await
        .expect("the new password opens the tenant's database");
    let refused = connect_as(&old, None).await.unwrap_err();
    assert_eq!(sqlstate(&refused), "28P01", "the old password: {refused}");
    assert!(!stack_log("pg2/server.log").contains(new["password"].as_str().unwrap()));

    // What is not a step, or not a tenant secret of this product, is refused.
    let (status, error) = rotation_step("deleteSecret", &arn, &token).await;
    assert!(!status.is_success(), "{error}");
    assert_eq!(error["errorType"], "InvalidRequest", "{error}");
    let (status, error) = rotation_step("createSecret", "dbtools/admin", &token).await;
    assert!(!status.is_success(), "{error}");
    assert_eq!(error["errorType"], "InvalidRequest", "{error}");
    assert!(
        !error.to_string().contains("postgres"),
        "no credentials in the answer: {error}"
    );
}

/// Sets the `dbtools:tenant-id` tag of a secret (what whoever may tag their own secret can do).
async fn retag(arn: &str, tenant_id: &str) {
    secrets()
        .await
        .tag_resource()
        .secret_id(arn)
        .tags(
            aws_sdk_secretsmanager::types::Tag::builder()
                .key("dbtools:tenant-id")
                .value(tenant_id)
                .build(),
        )
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn rotation_goes_by_the_registry_never_by_a_tag_a_tenant_can_edit() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants_on(&mut cleanup, "rtag", 2, Some("secondary")).await;
    let (attacker, victim) = (&slugs[0], &slugs[1]);
    let tenant = |slug: String| async move { get(&format!("/api/tenants/{slug}")).await.body };
    let (a, v) = (tenant(attacker.clone()).await, tenant(victim.clone()).await);
    let a_arn = a["credentials_secret_arn"].as_str().unwrap().to_owned();
    let v_secret = read_secret(v["credentials_secret_arn"].as_str().unwrap()).await;
    // The attacker tags its own secret with its neighbour's id, then has it rotated.
    retag(&a_arn, v["id"].as_str().unwrap()).await;
    let token = uuid::Uuid::new_v4().to_string();
    for step in ["createSecret", "setSecret", "testSecret", "finishSecret"] {
        let (status, answer) = rotation_step(step, &a_arn, &token).await;
        assert_eq!(status, StatusCode::OK, "{step}: {answer}");
    }
    // Its own login was re-keyed (the registry says whose secret that is); the neighbour's
    // password still opens the neighbour's database.
    let a_secret = read_secret(&a_arn).await;
    connect_as(&a_secret, None)
        .await
        .expect("the attacker's rotated secret opens its own database");
    connect_as(&v_secret, None)
        .await
        .expect("the neighbour's password is unchanged");

    // A secret the registry does not know (a copy, tagged with the neighbour's id) is refused.
    let copy = format!("dbtools/tenants/{attacker}-copy");
    put_secret(&copy, &v_secret).await;
    let copy_arn = secrets()
        .await
        .describe_secret()
        .secret_id(&copy)
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    retag(&copy_arn, v["id"].as_str().unwrap()).await;
    let (status, error) = rotation_step("setSecret", &copy_arn, &token).await;
    assert!(!status.is_success(), "{error}");
    assert_eq!(error["errorType"], "InvalidRequest", "{error}");
    connect_as(&v_secret, None)
        .await
        .expect("still the neighbour's password");
    secrets()
        .await
        .delete_secret()
        .secret_id(&copy)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_rotation_never_opens_the_login_of_a_tenant_deleted_meanwhile() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = create_tenants_on(&mut cleanup, "rdel", 1, Some("primary"))
        .await
        .remove(0);
    let arn = get(&format!("/api/tenants/{slug}")).await.body["credentials_secret_arn"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = uuid::Uuid::new_v4().to_string();
    let (status, answer) = rotation_step("createSecret", &arn, &token).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // Deleted between two steps of the rotation.
    let r = delete(&format!("/api/tenants/{slug}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let (status, error) = rotation_step("setSecret", &arn, &token).await;
    assert!(!status.is_success(), "{error}");
    assert_eq!(error["errorType"], "RotationFailed", "{error}");
    assert_eq!(
        role_can_login(&database_name(&slug)).await,
        Some(false),
        "the deleted tenant's login stays disabled"
    );
}
