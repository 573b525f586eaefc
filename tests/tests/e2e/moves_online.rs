//! Online moves (logical replication), as the operator and the application see them. Locally
//! they go `secondary` → `primary`: on PostgreSQL 15 only a superuser creates subscriptions,
//! and only `primary`'s admin is one (the other way answers 400, in `moves`).
//!
//! The million-row test runs alone (the Makefile's serial phase): its promise is a fence under
//! a second, which a machine busy with every other test could not keep honestly.

use std::time::Duration;

use e2e::*;
use reqwest::StatusCode;

use super::moves::{count, endpoint, post, wait_move, Application, Hostile, MILLION};

/// Replication slots and subscriptions of moves on either server, and publications of moves
/// in the tenant's database on `secondary`.
async fn replication_left(name: &str) -> Vec<String> {
    let mut found = Vec::new();
    for server in ["primary", "secondary"] {
        let rows = admin_on(server)
            .await
            .query(
                "SELECT 'slot ' || slot_name FROM pg_replication_slots \
                   WHERE slot_name LIKE 'dbtools\\_move\\_%' \
                 UNION ALL SELECT 'subscription ' || subname FROM pg_subscription \
                   WHERE subname LIKE 'dbtools\\_move\\_%'",
                &[],
            )
            .await
            .unwrap();
        found.extend(
            rows.iter()
                .map(|r| format!("{server}: {}", r.get::<_, String>(0))),
        );
    }
    if servers_with_database(name).await.contains(&"secondary") {
        let rows = connect_on("secondary", name)
            .await
            .query("SELECT 'publication ' || pubname FROM pg_publication", &[])
            .await
            .unwrap();
        found.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    found
}

/// Every table of a tenant database on `server`: its row count and a checksum of its rows'
/// text (not the product's own hash: an independent look). Of the application's writes to
/// `activity_log`, only those in `app`.
async fn table_sums(server: &str, name: &str, app: &[uuid::Uuid]) -> Vec<(String, i64, String)> {
    let c = connect_on(server, name).await;
    let tables = c
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let mut sums = Vec::new();
    for t in tables {
        let table: String = t.get(0);
        let sql = format!(
            "SELECT count(*), coalesce(sum(hashtextextended(t::text, 1)::numeric), 0)::text \
             FROM public.\"{table}\" t"
        );
        let row = if table == "activity_log" {
            c.query_one(
                &format!("{sql} WHERE action <> 'app' OR id = ANY($1)"),
                &[&app],
            )
            .await
        } else {
            c.query_one(&sql, &[]).await
        }
        .unwrap();
        sums.push((table, row.get(0), row.get(1)));
    }
    sums
}

async fn tenant_arn(slug: &str) -> String {
    get(&format!("/api/tenants/{slug}")).await.body["credentials_secret_arn"]
        .as_str()
        .expect("an ARN")
        .to_owned()
}

#[tokio::test]
async fn a_tenant_of_a_million_rows_moves_online_with_under_a_second_of_refused_writes() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = &create_tenants_on(&mut cleanup, "online", 1, Some("secondary")).await[0];
    let name = database_name(slug);
    let arn = tenant_arn(slug).await;
    let before = read_secret(&arn).await;
    connect_as(&before, None)
        .await
        .expect("the tenant's login")
        .batch_execute(
            "INSERT INTO activity_log (action, details) \
               SELECT 'seed', jsonb_build_object('n', n) FROM generate_series(1, 1000000) n; \
             INSERT INTO settings (key, value) VALUES ('plan', '\"gold\"')",
        )
        .await
        .expect("seed the tenant");

    let app = Application::start(&arn);
    let hostile = Hostile::start(&before, "primary", slug);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = post(
        &format!("/api/tenants/{slug}/move"),
        &json!({"to": "primary", "mode": "online"}),
    )
    .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.text);
    assert_eq!(started.body["mode"], "online", "{}", started.text);
    started.assert_no_internals();
    let id = started.body["id"].as_str().expect("a move id").to_owned();
    let done = wait_move(&id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, longest, failures) = app.stop().await;
    let early = hostile.stop().await;
    eprintln!(
        "online move: writes refused {longest:?} as the application saw it, {} ms as reported",
        done["writes_refused_ms"]
    );

    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["step"], "finish", "{done}");
    assert!(done["error"].is_null(), "{done}");
    let reported = done["writes_refused_ms"].as_u64().expect("a fence");
    assert!(reported < 1000, "the move refused writes for {reported} ms");
    // The application's own view: every write refused or failed, in a row, for under 1 s.
    assert!(failures > 0, "the fence refused some writes");
    assert!(
        longest < Duration::from_secs(1),
        "writes refused for {longest:?} (the move reports {reported} ms)"
    );
    assert!(
        early.is_empty(),
        "the login reached the target before the switch"
    );

    // The registry and the secret name the target, with the same password; the source is
    // fenced for good (its copy kept), the target open.
    assert_eq!(tenant_server(slug).await.as_deref(), Some("primary"));
    let after = read_secret(&arn).await;
    let (host, port) = endpoint("primary");
    assert_eq!(after["host"], json!(host));
    assert_eq!(after["port"], json!(port));
    assert_eq!(after["password"], before["password"]);
    assert_eq!(role_can_login_on("secondary", &name).await, Some(false));
    assert_eq!(role_can_login_on("primary", &name).await, Some(true));

    // Every row written before and during the move is on the target: both copies hold the
    // same rows, table by table, and every acknowledged write is among them.
    let target = connect_as(&after, None)
        .await
        .expect("the login on the target");
    assert_eq!(
        count(
            &target,
            "SELECT count(*) FROM activity_log WHERE action = 'seed'"
        )
        .await,
        MILLION
    );
    let on_target: i64 = target
        .query_one(
            "SELECT count(*) FROM activity_log WHERE id = ANY($1)",
            &[&acked],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_target, acked.len() as i64, "every acknowledged write");
    assert!(acked.len() > 20, "the application wrote during the move");
    // The application went on writing on the target after the switch: both sides are
    // compared on the rows the source holds (its own writes are the source's up to the fence).
    let on_source: Vec<uuid::Uuid> = connect_on("secondary", &name)
        .await
        .query("SELECT id FROM activity_log WHERE action = 'app'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let source_sums = table_sums("secondary", &name, &on_source).await;
    assert_eq!(table_sums("primary", &name, &on_source).await, source_sums);
    assert!(source_sums
        .iter()
        .any(|(t, n, _)| t == "activity_log" && *n > MILLION));

    // The replication is gone: no slot holds WAL on the source, no subscription on the
    // target, no publication; the source admin's password never reached the target's log.
    assert_eq!(replication_left(&name).await, Vec::<String>::new());
    let admin_password = read_secret("dbtools/servers/secondary").await["password"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !stack_log("pg/server.log").contains(&admin_password),
        "the subscription's password is in the target's log"
    );

    // A purge leaves nothing on either server.
    assert_eq!(
        delete(&format!("/api/tenants/{slug}")).await.status,
        StatusCode::OK
    );
    let purged = post(&format!("/api/tenants/{slug}/purge"), &json!({})).await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.text);
    assert!(servers_with_database(&name).await.is_empty());
    assert_eq!(role_can_login(&name).await, None);
}

/// Seeds `rows` rows through the tenant's own login.
async fn seed(secret: &serde_json::Value, rows: i64) {
    connect_as(secret, None)
        .await
        .expect("the tenant's login")
        .execute(
            "INSERT INTO activity_log (action) SELECT 'seed' FROM generate_series(1, $1::bigint)",
            &[&rows],
        )
        .await
        .expect("seed the tenant");
}

/// What the tenant has on each server: where its database and login are, whether its login
/// works where the registry says, the replication left.
async fn assert_serving_on_secondary_only(slug: &str, before: &serde_json::Value, rows: i64) {
    let name = database_name(slug);
    assert_eq!(tenant_server(slug).await.as_deref(), Some("secondary"));
    assert_eq!(
        &read_secret(&secret_name(slug)).await,
        before,
        "the secret is unchanged"
    );
    assert_eq!(servers_with_database(&name).await, vec!["secondary"]);
    assert_eq!(role_can_login_on("primary", &name).await, None);
    assert_eq!(replication_left(&name).await, Vec::<String>::new());
    let own = connect_as(before, None)
        .await
        .expect("the login serves on the source again");
    assert_eq!(
        count(
            &own,
            "SELECT count(*) FROM activity_log WHERE action = 'seed'"
        )
        .await,
        rows
    );
    own.execute("INSERT INTO activity_log (action) VALUES ('after')", &[])
        .await
        .expect("writes work");
}

#[tokio::test]
async fn an_online_move_cancelled_while_it_copies_leaves_no_replication_behind() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = &create_tenants_on(&mut cleanup, "onlinec", 1, Some("secondary")).await[0];
    let before = read_secret(&secret_name(slug)).await;
    seed(&before, 300_000).await;
    let started = post(
        &format!("/api/tenants/{slug}/move"),
        &json!({"to": "primary", "mode": "online"}),
    )
    .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.text);
    let id = started.body["id"].as_str().unwrap().to_owned();
    // While the subscription copies the tenant's rows, the tenant is not fenced.
    let syncing = eventually(Duration::from_secs(60), || async {
        let m = get(&format!("/api/moves/{id}")).await.body;
        assert_eq!(m["state"], "running", "the move ended before its copy: {m}");
        m["step"] == "sync"
    })
    .await;
    assert!(syncing, "the move reached its initial copy");
    connect_as(&before, None)
        .await
        .expect("the login serves while the copy runs");
    let cancel = post(&format!("/api/moves/{id}/cancel"), &json!({})).await;
    assert_eq!(cancel.status, StatusCode::ACCEPTED, "{}", cancel.text);
    let over = wait_move(&id).await;
    assert_eq!(over["state"], "cancelled", "{over}");
    assert!(over["fence_started_at"].is_null(), "never fenced: {over}");
    assert_serving_on_secondary_only(slug, &before, 300_000).await;
}

#[tokio::test]
async fn an_online_move_of_a_table_without_a_key_fails_and_changes_nothing() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = &create_tenants_on(&mut cleanup, "onlinek", 1, Some("secondary")).await[0];
    let before = read_secret(&secret_name(slug)).await;
    seed(&before, 10).await;
    // A table the subscription could not keep current: an update on the source would fail
    // once it is published.
    connect_on("secondary", &database_name(slug))
        .await
        .batch_execute("CREATE TABLE public.keyless (v int); INSERT INTO public.keyless VALUES (1)")
        .await
        .unwrap();
    let started = post(
        &format!("/api/tenants/{slug}/move"),
        &json!({"to": "primary", "mode": "online"}),
    )
    .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.text);
    let over = wait_move(started.body["id"].as_str().unwrap()).await;
    assert_eq!(over["state"], "failed", "{over}");
    let error = over["error"].as_str().unwrap();
    assert!(
        error.contains("primary key") && error.contains("keyless") && error.contains("copy"),
        "{error}"
    );
    assert_serving_on_secondary_only(slug, &before, 10).await;
}
