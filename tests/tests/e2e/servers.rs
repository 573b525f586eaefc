//! Many servers: the local stack's `primary` (the registry's cluster) and `secondary` (a
//! second cluster, administered without superuser as on RDS), and a throwaway third one.
//! Placement, capacity, draining, the tenant's secret naming its own server, and the
//! servers API with its real checks.

use std::time::Duration;

use e2e::*;
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::Value;

async fn post_server(body: &Value) -> Reply {
    request(
        Method::POST,
        "/api/servers",
        Some(body.to_string().into_bytes()),
    )
    .await
}

/// Sets a server's capacity to what it holds plus `room`.
async fn leave_room(name: &str, room: i64) {
    let total = server(name).await["tenants"]["total"].as_i64().unwrap();
    let r = patch_server(name, &json!({"max_tenants": total + room, "state": "open"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["room"], room, "{}", r.text);
}

#[tokio::test]
async fn tenants_go_where_the_most_room_is_and_a_full_fleet_is_a_503() {
    let mut cleanup = Cleanup::new();
    // Exclusive: the capacities are the test's own while it runs.
    let _template = test_lock(TEMPLATE_LOCK, true).await;
    let _restore = Restore::save(&["primary", "secondary"]).await;
    leave_room("primary", 2).await;
    leave_room("secondary", 2).await;

    // Room 2 and 2: primary (a tie goes by name), then secondary (2 against 1), and again.
    let mut placed = Vec::new();
    for i in 0..4 {
        let slug = cleanup.add(&unique_slug("spread"));
        let r = post_tenant(&json!({"name": format!("Spread {i}"), "slug": slug})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let on = r.body["server"].as_str().unwrap().to_owned();
        // The registry names the server that holds the database, and no other holds one.
        assert_eq!(tenant_server(&slug).await.as_deref(), Some(on.as_str()));
        assert_eq!(
            servers_with_database(&database_name(&slug)).await,
            [on.as_str()]
        );
        assert_eq!(history_versions(&slug).await, all_versions());
        placed.push(on);
    }
    assert_eq!(placed, ["primary", "secondary", "primary", "secondary"]);

    // Full: a 503 NO_CAPACITY that makes nothing.
    let slug = cleanup.add(&unique_slug("spread_full"));
    let r = post_tenant(&json!({"name": "No room", "slug": slug})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    r.assert_json_with_request_id();
    assert_eq!(r.error_code(), "NO_CAPACITY");
    r.assert_no_internals();
    assert_eq!(registry_row(&slug).await, None);
    assert!(!database_exists(&database_name(&slug)).await);
    let all = get("/api/servers").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text);
    let names: Vec<&str> = all.body["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(&names[..2], ["primary", "secondary"], "primary first");
    for s in all.body["servers"].as_array().unwrap().iter().take(2) {
        assert_eq!(s["room"], 0, "{s}");
        assert_eq!(s["tenants"]["total"], s["max_tenants"], "{s}");
    }
}

#[tokio::test]
async fn an_explicit_server_is_honoured_and_the_tenants_secret_connects_there() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants_on(&mut cleanup, "onsec", 2, Some("secondary")).await;
    let (a, b) = (&slugs[0], &slugs[1]);
    let tenant = get(&format!("/api/tenants/{a}")).await.body;
    assert_eq!(tenant["server"], "secondary");
    assert_eq!(tenant_server(a).await.as_deref(), Some("secondary"));
    assert_eq!(
        servers_with_database(&database_name(a)).await,
        ["secondary"]
    );

    // Its secret names the secondary's host and port; its login is on that server only.
    let secret = read_secret(tenant["credentials_secret_arn"].as_str().unwrap()).await;
    let pg2: tokio_postgres::Config = pg_url_of("secondary").parse().unwrap();
    assert_eq!(secret["port"], pg2.get_ports()[0]);
    assert_eq!(secret["host"], "127.0.0.1");
    let app = connect_as(&secret, None)
        .await
        .expect("the secret opens the tenant's database on its server");
    app.execute(
        "INSERT INTO activity_log (action) VALUES ('on secondary')",
        &[],
    )
    .await
    .expect("writes");
    let role_on_primary = admin()
        .await
        .query_opt(
            "SELECT 1 FROM pg_roles WHERE rolname = $1",
            &[&database_name(a)],
        )
        .await
        .unwrap();
    assert!(role_on_primary.is_none(), "no login on the other server");
    // The neighbour's database on the same server is closed to it.
    let other = connect_as(&secret, Some(&database_name(b)))
        .await
        .unwrap_err();
    assert_eq!(
        other.code().map(|c| c.code()),
        Some("42501"),
        "another tenant's database: {other}"
    );

    // What is not a server is a 400 that names the field, and makes nothing.
    for (server, message) in [
        (json!("nowhere"), "no server named 'nowhere' is registered"),
        (json!("Not A Name"), "must start with a lowercase letter"),
        (json!(5), "must be a string"),
    ] {
        let slug = unique_slug("badsrv");
        let r = post_tenant(&json!({"name": "Bad", "slug": slug, "server": server})).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{server}: {}", r.text);
        assert_eq!(r.detail_fields(), ["server"], "{}", r.text);
        assert!(r.text.contains(message), "{server}: {}", r.text);
        assert_eq!(registry_row(&slug).await, None);
    }
}

#[tokio::test]
async fn a_draining_server_keeps_its_tenants_and_takes_no_new_one() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, true).await;
    let _restore = Restore::save(&["primary", "secondary"]).await;
    let kept = create_tenants_on(&mut cleanup, "drain", 1, Some("secondary"))
        .await
        .remove(0);
    // The secondary has the most room, and drains.
    leave_room("primary", 5).await;
    leave_room("secondary", 50).await;
    let r = patch_server("secondary", &json!({"state": "draining"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["state"], "draining");

    let asked = unique_slug("drain_ask");
    let r = post_tenant(&json!({"name": "Asked", "slug": asked, "server": "secondary"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.text.contains("draining"), "{}", r.text);
    assert_eq!(registry_row(&asked).await, None);
    assert!(!database_exists(&database_name(&asked)).await);
    let placed = create_tenants(&mut cleanup, "drain_auto", 2).await;
    for slug in &placed {
        assert_eq!(tenant_server(slug).await.as_deref(), Some("primary"));
    }
    // Its tenants stay, and work.
    let kept_body = get(&format!("/api/tenants/{kept}")).await.body;
    let secret = read_secret(kept_body["credentials_secret_arn"].as_str().unwrap()).await;
    connect_as(&secret, None)
        .await
        .expect("a draining server's tenant connects");

    // Open again: it takes tenants again.
    let r = patch_server("secondary", &json!({"state": "open"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    create_tenants_on(&mut cleanup, "drain_back", 1, Some("secondary")).await;
}

#[tokio::test]
async fn capacity_holds_under_concurrent_creates_at_the_boundary() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, true).await;
    let _restore = Restore::save(&["secondary"]).await;
    let before = server("secondary").await["tenants"]["total"]
        .as_i64()
        .unwrap();
    leave_room("secondary", 3).await;

    let slugs: Vec<String> = (0..8).map(|_| cleanup.add(&unique_slug("cap"))).collect();
    let bodies: Vec<Value> = slugs
        .iter()
        .map(|slug| json!({"name": "Capacity", "slug": slug, "server": "secondary"}))
        .collect();
    let replies = join_all(bodies.iter().map(post_tenant)).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    let won: Vec<&String> = slugs
        .iter()
        .zip(&replies)
        .filter(|(_, r)| r.status == StatusCode::CREATED)
        .map(|(s, _)| s)
        .collect();
    assert_eq!(won.len(), 3, "exactly the room left: {statuses:?}");
    for (slug, r) in slugs.iter().zip(&replies) {
        if r.status == StatusCode::CREATED {
            assert_eq!(r.body["server"], "secondary");
            assert_eq!(
                servers_with_database(&database_name(slug)).await,
                ["secondary"]
            );
        } else {
            assert_eq!(
                (r.status, r.error_code()),
                (StatusCode::SERVICE_UNAVAILABLE, "NO_CAPACITY"),
                "{}",
                r.text
            );
            assert_eq!(registry_row(slug).await, None);
            assert!(!database_exists(&database_name(slug)).await);
        }
    }
    let after = server("secondary").await;
    assert_eq!(after["tenants"]["total"], before + 3);
    assert_eq!(after["room"], 0);
}

#[tokio::test]
async fn registering_a_server_checks_it_for_real_and_removing_one_needs_it_empty() {
    // Exclusive fleet: no run prepares the third server while it comes and goes; the
    // template lock shared: no test changes the capacities meanwhile (the third server has
    // the least room, so placement never picks it unasked).
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let pg2_port = pg_url_of("secondary")
        .parse::<tokio_postgres::Config>()
        .unwrap()
        .get_ports()[0];
    let pg_port = pg_url()
        .parse::<tokio_postgres::Config>()
        .unwrap()
        .get_ports()[0];
    let body = |name: &str, port: u16, secret: &str| {
        json!({"name": name, "host": "127.0.0.1", "port": port, "secret_arn": secret,
               "max_tenants": 1, "migrate_concurrency": 2})
    };

    // Bodies: every problem named, nothing checked further.
    let r = post_server(&json!({"name": "Bad", "port": 0, "extra": true})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(
        r.detail_fields(),
        [
            "name",
            "host",
            "port",
            "secret_arn",
            "max_tenants",
            "migrate_concurrency",
            "extra"
        ]
    );
    // `primary` is always there.
    let r = post_server(&body("primary", pg_port, "dbtools/admin")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);

    // The secret must exist, open the server, and its role hold what the product needs.
    let name = format!("third-{id}");
    let r = post_server(&body(
        &name,
        pg2_port,
        &format!("dbtools/servers/none-{id}"),
    ))
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.detail_fields(), ["secret_arn"]);
    let weak = format!("weak_{id}");
    admin_on("secondary")
        .await
        .batch_execute(&format!("CREATE ROLE {weak} LOGIN PASSWORD 'weak-pass'"))
        .await
        .unwrap();
    let weak_secret = format!("dbtools/servers/weak-{id}");
    put_secret(
        &weak_secret,
        &json!({"username": weak, "password": "weak-pass"}),
    )
    .await;
    let r = post_server(&body(&name, pg2_port, &weak_secret)).await;
    admin_on("secondary")
        .await
        .batch_execute(&format!("DROP ROLE {weak}"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let message = r.body["error"]["message"].as_str().unwrap();
    for missing in ["CREATEDB", "CREATEROLE", "pg_signal_backend"] {
        assert!(message.contains(missing), "{message}");
    }
    r.assert_no_internals();
    let wrong = format!("dbtools/servers/wrong-{id}");
    put_secret(
        &wrong,
        &json!({"username": "dbtools_admin", "password": "not-it"}),
    )
    .await;
    let r = post_server(&body(&name, pg2_port, &wrong)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.text.contains("authentication failed"), "{}", r.text);
    r.assert_no_internals();
    // Nothing listens there: a 503 that names no host.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = post_server(&body(&name, closed, &wrong)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    r.assert_no_internals();
    // A cluster registered already, under any name and with a secret of its own, is refused.
    let again = format!("dbtools/servers/again-{id}");
    put_secret(
        &again,
        &json!({"username": "postgres", "password": "postgres"}),
    )
    .await;
    let r = post_server(&body(&name, pg_port, &again)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.text.contains("'primary'"), "{}", r.text);
    let again2 = format!("dbtools/servers/again2-{id}");
    put_secret(
        &again2,
        &json!({"username": "dbtools_admin", "password": "secondary-admin"}),
    )
    .await;
    let r = post_server(&body(&name, pg2_port, &again2)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.text.contains("'secondary'"), "{}", r.text);
    assert_eq!(
        get(&format!("/api/servers/{name}")).await.status,
        StatusCode::NOT_FOUND
    );

    // A real third server: registered, changed, filled, refused removal, emptied, removed.
    let third = ThrowawayCluster::start();
    let secret = format!("dbtools/servers/third-{id}");
    put_secret(
        &secret,
        &json!({"username": "postgres", "password": "throwaway"}),
    )
    .await;
    let r = post_server(&body(&name, third.port, &secret)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.assert_json_with_request_id();
    assert_eq!(
        (
            r.body["state"].as_str(),
            r.body["max_tenants"].as_i64(),
            r.body["room"].as_i64()
        ),
        (Some("open"), Some(1), Some(1))
    );
    assert_eq!(r.body["port"], third.port);
    assert_eq!(r.body["secret_arn"], secret.as_str());
    let again = post_server(&body(&name, third.port, &secret)).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    let r = patch_server(&name, &json!({"migrate_concurrency": 3})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["migrate_concurrency"], 3);
    for bad in [
        json!({}),
        json!({"state": "closed"}),
        json!({"max_tenants": -1}),
    ] {
        let r = patch_server(&name, &bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
    }
    assert_eq!(
        patch_server("no-such-server", &json!({"state": "open"}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    let slug = cleanup.add(&unique_slug("third"));
    let r = post_tenant(&json!({"name": "Third", "slug": slug, "server": name})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let on_third = third
        .connect("postgres")
        .await
        .query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'dbtools\\_%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>();
    assert_eq!(
        on_third.len(),
        2,
        "its template and the tenant: {on_third:?}"
    );
    assert!(on_third.contains(&database_name(&slug)), "{on_third:?}");
    let full =
        post_tenant(&json!({"name": "Full", "slug": unique_slug("third"), "server": name})).await;
    assert_eq!(full.error_code(), "NO_CAPACITY", "{}", full.text);

    let r = request(Method::DELETE, &format!("/api/servers/{name}"), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(
        delete(&format!("/api/tenants/{slug}")).await.status,
        StatusCode::OK
    );
    let r = request(Method::DELETE, &format!("/api/servers/{name}"), None).await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "a deleted tenant keeps its database: {}",
        r.text
    );
    let purged = request(Method::POST, &format!("/api/tenants/{slug}/purge"), None).await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.text);
    let r = request(Method::DELETE, &format!("/api/servers/{name}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["name"], name.as_str());
    assert_eq!(
        get(&format!("/api/servers/{name}")).await.status,
        StatusCode::NOT_FOUND
    );
    // Its template went with it; the purged tenant's row stays, on no server.
    let left: i64 = third
        .connect("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'dbtools\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert_eq!(
        registry_row(&slug).await.map(|r| r.0),
        Some("purged".into())
    );
    assert_eq!(tenant_server(&slug).await, None);
    // `primary` is never removed; unknown names are 404s; no query parameters on the list.
    let r = request(Method::DELETE, "/api/servers/primary", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    for path in ["/api/servers/no-such-server", "/api/servers/NOT%20A%20NAME"] {
        let r = get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text);
        r.assert_json_with_request_id();
    }
    let r = get("/api/servers?state=open").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
}

/// A server that is no PostgreSQL of ours: it answers a client's startup message with a
/// request for the password, in cleartext (`code` 3) or as MD5 (5), and keeps whatever the
/// client sends after that. Answers its port, and the bytes it was sent after its request.
async fn password_sniffer(code: u32) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut got = Vec::new();
        // The product may connect more than once (a retry): every connection is heard.
        while let Ok(Ok((mut socket, _))) =
            tokio::time::timeout(Duration::from_secs(10), listener.accept()).await
        {
            let mut len = [0u8; 4];
            if socket.read_exact(&mut len).await.is_err() {
                continue;
            }
            let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            if socket.read_exact(&mut startup).await.is_err() {
                continue;
            }
            let mut request = vec![b'R'];
            let body: Vec<u8> = match code {
                5 => [5u32.to_be_bytes().to_vec(), b"salt".to_vec()].concat(),
                c => c.to_be_bytes().to_vec(),
            };
            request.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            request.extend_from_slice(&body);
            if socket.write_all(&request).await.is_err() {
                continue;
            }
            let mut after = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut after)).await;
            got.extend(after);
        }
        got
    });
    (port, task)
}

#[tokio::test]
async fn servers_refuse_secrets_that_are_not_theirs_and_servers_that_would_take_a_password() {
    let _cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let name = format!("refused-{id}");
    let pg2_port = pg_url_of("secondary")
        .parse::<tokio_postgres::Config>()
        .unwrap()
        .get_ports()[0];
    let body = |port: u16, secret: &str| {
        json!({"name": name, "host": "127.0.0.1", "port": port, "secret_arn": secret,
               "max_tenants": 1, "migrate_concurrency": 1})
    };
    let refused = |r: &Reply, field: &str, needle: &str| {
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        assert_eq!(r.detail_fields(), [field], "{}", r.text);
        assert!(r.text.contains(needle), "{}", r.text);
        r.assert_no_internals();
    };
    // The registry's own admin secret, by name or by ARN: outside the prefix, never read.
    refused(
        &post_server(&body(pg2_port, "dbtools/admin")).await,
        "secret_arn",
        "prefix",
    );
    let admin_arn = secrets()
        .await
        .describe_secret()
        .secret_id("dbtools/admin")
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    refused(
        &post_server(&body(pg2_port, &admin_arn)).await,
        "secret_arn",
        "prefix",
    );
    // Another registered server's secret, by name or by ARN, wherever it is sent.
    refused(
        &post_server(&body(pg2_port, "dbtools/servers/secondary")).await,
        "secret_arn",
        "of server 'secondary'",
    );
    let secondary_arn = secrets()
        .await
        .describe_secret()
        .secret_id("dbtools/servers/secondary")
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    refused(
        &post_server(&body(pg2_port, &secondary_arn)).await,
        "secret_arn",
        "of server 'secondary'",
    );

    // A secret of its own, under the prefix, holding a real password: a host that asks for it
    // in cleartext or as MD5 gets nothing.
    let own = format!("dbtools/servers/sniffed-{id}");
    put_secret(
        &own,
        &json!({"username": "dbtools_admin", "password": "secondary-admin"}),
    )
    .await;
    for code in [3u32, 5] {
        let (port, heard) = password_sniffer(code).await;
        let r = post_server(&body(port, &own)).await;
        refused(&r, "host", "SCRAM-SHA-256");
        let heard = heard.await.unwrap();
        assert!(
            !heard.contains(&b'p') && !String::from_utf8_lossy(&heard).contains("secondary-admin"),
            "the host received a password message: {heard:?}"
        );
    }

    // A standby (read-only) is no server to place tenants on.
    let primary = ThrowawayCluster::start();
    let standby = primary.standby();
    let standby_secret = format!("dbtools/servers/standby-{id}");
    put_secret(
        &standby_secret,
        &json!({"username": "postgres", "password": "throwaway"}),
    )
    .await;
    refused(
        &post_server(&body(standby.port, &standby_secret)).await,
        "host",
        "standby",
    );
    assert_eq!(
        get(&format!("/api/servers/{name}")).await.status,
        StatusCode::NOT_FOUND,
        "nothing was registered"
    );
}

#[tokio::test]
async fn removing_a_server_that_a_placement_fills_meanwhile_changes_nothing() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let server = RegisteredCluster::start("rmrace", 5).await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    // Its template made by a create, the tenant purged: the server is empty.
    let slug = create_tenants_on(&mut cleanup, "rmrace", 1, Some(&server.name))
        .await
        .remove(0);
    assert_eq!(
        delete(&format!("/api/tenants/{slug}")).await.status,
        StatusCode::OK
    );
    let r = request(Method::POST, &format!("/api/tenants/{slug}/purge"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let templates = || async {
        server
            .cluster
            .connect("postgres")
            .await
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname LIKE 'dbtools\\_template\\_%'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(templates().await, 1);

    // A placement in progress there, as a create holds it: the server's row, and a tenant not
    // committed yet.
    let placing = registry().await;
    let racer = unique_slug("rmrace_p");
    placing.batch_execute("BEGIN").await.unwrap();
    placing
        .execute(
            "SELECT 1 FROM servers WHERE name = $1 FOR UPDATE",
            &[&server.name],
        )
        .await
        .unwrap();
    placing
        .execute(
            "INSERT INTO tenants (name, slug, database_name, status, server, lease_expires_at) \
             VALUES ('Racer', $1, 'dbtools_tenant_' || $1, 'provisioning', $2, \
               now() + interval '1 hour')",
            &[&racer, &server.name],
        )
        .await
        .unwrap();
    let path = format!("/api/servers/{}", server.name);
    let removal = tokio::spawn(async move { delete(&path).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    placing.batch_execute("COMMIT").await.unwrap();
    let r = removal.await.unwrap();
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(templates().await, 1, "the refused removal dropped nothing");
    assert!(
        server_exists(&server.name).await,
        "the server is still registered"
    );
    registry()
        .await
        .execute("DELETE FROM tenants WHERE slug = $1", &[&racer])
        .await
        .unwrap();
}

async fn server_exists(name: &str) -> bool {
    get(&format!("/api/servers/{name}")).await.status == StatusCode::OK
}
