//! Tenant moves (copy mode; online mode in `moves_online`), as the operator and the application see them: `POST
//! /api/tenants/{slug}/move` and `GET /api/moves/{id}`, an application writing through its own
//! secret all along (re-reading the secret when refused), a hostile login polling the target,
//! and afterwards what exists on both servers and in Secrets Manager.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub(super) async fn post(path: &str, body: &Value) -> Reply {
    request(Method::POST, path, Some(body.to_string().into_bytes())).await
}

/// Waits until the move is over; its last body.
pub(super) async fn wait_move(id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let r = get(&format!("/api/moves/{id}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if r.body["state"] != "running" {
            return r.body;
        }
        assert!(Instant::now() < deadline, "the move ended: {}", r.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (host, port) of a local server, as a tenant's secret names it.
pub(super) fn endpoint(server: &str) -> (String, u64) {
    let cfg: tokio_postgres::Config = pg_url_of(server).parse().unwrap();
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("{other:?}"),
    };
    (host, u64::from(cfg.get_ports()[0]))
}

/// An application writing a row every 50 ms through the tenant's own secret, reading the
/// secret again whenever a connection or a write fails: the ids it was told were written,
/// and the longest stretch during which its writes failed.
pub(super) struct Application {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<uuid::Uuid>, Duration, usize)>,
}

impl Application {
    pub(super) fn start(arn: &str) -> Application {
        let stop = Arc::new(AtomicBool::new(false));
        let (arn, halt) = (arn.to_owned(), stop.clone());
        let task = tokio::spawn(async move {
            let mut acked = Vec::new();
            let (mut longest, mut failures) = (Duration::ZERO, 0);
            let mut failing_since: Option<Instant> = None;
            let mut client: Option<tokio_postgres::Client> = None;
            while !halt.load(Ordering::Relaxed) {
                if client.is_none() {
                    let secret = read_secret(&arn).await;
                    client = connect_as(&secret, None).await.ok();
                }
                let id = uuid::Uuid::new_v4();
                let wrote = match &client {
                    Some(c) => tokio::time::timeout(
                        Duration::from_secs(2),
                        c.execute(
                            "INSERT INTO activity_log (id, action) VALUES ($1, 'app')",
                            &[&id],
                        ),
                    )
                    .await
                    .is_ok_and(|r| r.is_ok()),
                    None => false,
                };
                if wrote {
                    acked.push(id);
                    if let Some(since) = failing_since.take() {
                        longest = longest.max(since.elapsed());
                    }
                } else {
                    failures += 1;
                    client = None;
                    failing_since.get_or_insert_with(Instant::now);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Some(since) = failing_since {
                longest = longest.max(since.elapsed());
            }
            (acked, longest, failures)
        });
        Application { stop, task }
    }

    pub(super) async fn stop(self) -> (Vec<uuid::Uuid>, Duration, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the application's task")
    }
}

/// The tenant's own password polling `server` all along: the instants it got in while the
/// registry did not name that server yet.
pub(super) struct Hostile {
    stop: Arc<AtomicBool>,
    early: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Hostile {
    pub(super) fn start(secret: &Value, server: &'static str, slug: &str) -> Hostile {
        let stop = Arc::new(AtomicBool::new(false));
        let early = Arc::new(Mutex::new(Vec::new()));
        let (host, port) = endpoint(server);
        let mut secret = secret.clone();
        secret["host"] = json!(host);
        secret["port"] = json!(port);
        let task = {
            let (stop, early, slug) = (stop.clone(), early.clone(), slug.to_owned());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if connect_as(&secret, None).await.is_ok()
                        && tenant_server(&slug).await.as_deref() != Some(server)
                    {
                        early.lock().unwrap().push(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        Hostile { stop, early, task }
    }

    pub(super) async fn stop(self) -> Vec<Instant> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the hostile poller");
        let early = self.early.lock().unwrap().clone();
        early
    }
}

/// The size the issue asks a move to be shown at.
pub(super) const MILLION: i64 = 1_000_000;

pub(super) async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test]
async fn a_tenant_of_a_million_rows_moves_by_copy_with_every_write_and_its_secret_following() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants_on(&mut cleanup, "move", 2, Some("primary")).await;
    let (slug, neighbour) = (&slugs[0], &slugs[1]);
    let arn = get(&format!("/api/tenants/{slug}")).await.body["credentials_secret_arn"]
        .as_str()
        .expect("an ARN")
        .to_owned();
    let before = read_secret(&arn).await;
    let own = connect_as(&before, None).await.expect("the tenant's login");
    own.batch_execute(
        "INSERT INTO activity_log (action, details) \
           SELECT 'seed', jsonb_build_object('n', n) FROM generate_series(1, 1000000) n; \
         INSERT INTO settings (key, value) VALUES ('plan', '\"gold\"')",
    )
    .await
    .expect("seed the tenant");
    drop(own);

    let app = Application::start(&arn);
    // A hostile login: the tenant's own password, polling the target server all along. It
    // may get in only once the registry names the target.
    let hostile = Hostile::start(&before, "secondary", slug);
    let (host2, port2) = endpoint("secondary");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = post(
        &format!("/api/tenants/{slug}/move"),
        &json!({"to": "secondary"}),
    )
    .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.text);
    assert_eq!(started.body["state"], "running", "{}", started.text);
    assert_eq!(started.body["from"], "primary");
    assert_eq!(started.body["to"], "secondary");
    assert_eq!(started.body["mode"], "copy");
    started.assert_no_internals();
    let id = started.body["id"].as_str().expect("a move id").to_owned();
    let done = wait_move(&id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, longest, failures) = app.stop().await;
    let early = hostile.stop().await;

    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["step"], "finish", "{done}");
    assert!(done["error"].is_null(), "{done}");
    assert!(
        done["fence_started_at"].is_string() && done["fence_ended_at"].is_string(),
        "{done}"
    );
    assert!(done["rows_copied"].as_i64().unwrap() > MILLION, "{done}");
    assert!(done["tables_copied"].as_i64().unwrap() >= 2, "{done}");
    assert!(done["source_drop_after"].is_string(), "{done}");
    let listed = get("/api/moves?limit=500").await;
    assert!(
        listed.body["moves"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id.as_str()),
        "{}",
        listed.text
    );

    // The registry, the API and the secret name the target; the password is unchanged.
    assert_eq!(tenant_server(slug).await.as_deref(), Some("secondary"));
    let tenant = get(&format!("/api/tenants/{slug}")).await.body;
    assert_eq!(tenant["server"], "secondary", "{tenant}");
    assert_eq!(tenant["status"], "active", "{tenant}");
    let after = read_secret(&arn).await;
    assert_eq!(
        (
            after["host"].as_str().unwrap().to_owned(),
            after["port"].as_u64().unwrap()
        ),
        (host2, port2)
    );
    assert_eq!(after["password"], before["password"]);
    assert_eq!(after["username"], before["username"]);

    // Every write the application was told had succeeded is on the target, and nothing else
    // was lost: the seed, the setting, the writes.
    let target = connect_as(&after, None)
        .await
        .expect("the tenant's login on the target");
    assert_eq!(
        count(
            &target,
            "SELECT count(*) FROM activity_log WHERE action = 'seed'"
        )
        .await,
        MILLION
    );
    assert_eq!(
        count(&target, "SELECT count(*) FROM settings WHERE key = 'plan'").await,
        1
    );
    let on_target: i64 = target
        .query_one(
            "SELECT count(*) FROM activity_log WHERE id = ANY($1)",
            &[&acked],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        on_target,
        acked.len() as i64,
        "every acknowledged write is on the target"
    );
    assert!(!acked.is_empty());
    // The application's writes stopped only between the fence and the switch, and the move
    // reports that stretch: the application saw no longer one (give or take its own 50 ms
    // pace and a reconnection).
    assert!(failures > 0, "the fence refused some writes");
    let reported = Duration::from_millis(done["writes_refused_ms"].as_u64().expect("a fence"));
    assert!(
        longest <= reported + Duration::from_millis(1500),
        "writes refused for {longest:?}, the move reports {reported:?}"
    );
    assert!(
        early.is_empty(),
        "the login reached the target before the switch"
    );

    // The source keeps its copy, the login disabled there; the neighbour cannot open the
    // moved database.
    let name = database_name(slug);
    assert_eq!(
        servers_with_database(&name).await,
        vec!["primary", "secondary"]
    );
    let login_on = |server: &'static str| {
        let name = name.clone();
        async move {
            admin_on(server)
                .await
                .query_one(
                    "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
                    &[&name],
                )
                .await
                .expect("the login exists")
                .get::<_, bool>(0)
        }
    };
    assert!(!login_on("primary").await, "the source's login is disabled");
    assert!(login_on("secondary").await);
    let source = connect_on("primary", &name).await;
    // The copy rebuilt the indexes it dropped to load faster: the same ones on both sides.
    let indexes = "SELECT string_agg(indexdef, '; ' ORDER BY indexname) FROM pg_indexes \
                   WHERE schemaname = 'public'";
    let on_source: String = source.query_one(indexes, &[]).await.unwrap().get(0);
    let on_target: String = connect_on("secondary", &name)
        .await
        .query_one(indexes, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_target, on_source);
    assert!(on_source.contains("activity_log_actor_idx"), "{on_source}");
    let theirs = count(&source, "SELECT count(*) FROM activity_log").await;
    let ours = count(&target, "SELECT count(*) FROM activity_log").await;
    assert!(ours >= theirs, "{ours} against {theirs}");
    let other_arn = get(&format!("/api/tenants/{neighbour}")).await.body["credentials_secret_arn"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut other = read_secret(&other_arn).await;
    other["host"] = json!(after["host"]);
    other["port"] = json!(after["port"]);
    assert!(
        connect_as(&other, Some(&name)).await.is_err(),
        "a neighbour opened the moved database"
    );

    // The tenant moves back, over the copy the first move kept (dropped: it is ours by its
    // OID).
    let back = post(
        &format!("/api/tenants/{slug}/move"),
        &json!({"to": "primary", "mode": "copy"}),
    )
    .await;
    assert_eq!(back.status, StatusCode::ACCEPTED, "{}", back.text);
    let back = wait_move(back.body["id"].as_str().unwrap()).await;
    assert_eq!(back["state"], "done", "{back}");
    assert_eq!(tenant_server(slug).await.as_deref(), Some("primary"));
    let home = read_secret(&arn).await;
    let home_client = connect_as(&home, None)
        .await
        .expect("the login on primary again");
    assert_eq!(
        count(&home_client, "SELECT count(*) FROM activity_log").await,
        ours
    );
    assert!(
        !login_on("secondary").await,
        "the second source's login is disabled"
    );
    let first = get(&format!("/api/moves/{id}")).await.body;
    assert!(first["source_dropped_at"].is_string(), "{first}");

    // A purge leaves nothing of the tenant on any server: the copy the last move kept goes
    // with the rest.
    assert_eq!(
        delete(&format!("/api/tenants/{slug}")).await.status,
        StatusCode::OK
    );
    let purged = post(&format!("/api/tenants/{slug}/purge"), &json!({})).await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.text);
    assert!(servers_with_database(&name).await.is_empty());
    assert_eq!(
        role_can_login(&name).await,
        None,
        "no login left on any server"
    );
    let second = get(&format!("/api/moves/{}", back["id"].as_str().unwrap()))
        .await
        .body;
    assert!(second["source_dropped_at"].is_string(), "{second}");
}

#[tokio::test]
async fn a_move_is_refused_for_what_cannot_move_and_changes_nothing() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants_on(&mut cleanup, "nomove", 2, Some("primary")).await;
    let (slug, deleted) = (&slugs[0], &slugs[1]);
    let path = format!("/api/tenants/{slug}/move");
    let cases: Vec<(String, Value, StatusCode, &str)> = vec![
        (
            "/api/tenants/nosuch_tenant_zz/move".into(),
            json!({"to": "secondary"}),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        ),
        (
            path.clone(),
            json!({"to": "primary"}),
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        ),
        (
            path.clone(),
            json!({"to": "nowhere"}),
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        ),
        (
            path.clone(),
            json!({"to": "Not A Name"}),
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        ),
        (
            path.clone(),
            json!({}),
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        ),
        (
            path.clone(),
            json!({"to": "secondary", "fast": true}),
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        ),
        // Locally only `primary`'s admin may create subscriptions: online moves go the
        // other way (moves_online.rs).
        (
            path.clone(),
            json!({"to": "secondary", "mode": "online"}),
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        ),
        (
            path.clone(),
            json!({"to": "secondary", "mode": 1}),
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        ),
    ];
    assert_eq!(
        delete(&format!("/api/tenants/{deleted}")).await.status,
        StatusCode::OK
    );
    let mut cases = cases;
    cases.push((
        format!("/api/tenants/{deleted}/move"),
        json!({"to": "secondary"}),
        StatusCode::CONFLICT,
        "CONFLICT",
    ));
    for (path, body, status, code) in cases {
        let r = post(&path, &body).await;
        assert_eq!(r.status, status, "{path} {body}: {}", r.text);
        assert_eq!(r.error_code(), code, "{path} {body}: {}", r.text);
        r.assert_no_internals();
    }
    let raw = request(Method::POST, &path, Some(b"not json".to_vec())).await;
    assert_eq!(raw.status, StatusCode::BAD_REQUEST, "{}", raw.text);
    for bad in ["not-a-uuid", "00000000-0000-0000-0000-000000000000"] {
        assert_eq!(
            get(&format!("/api/moves/{bad}")).await.status,
            StatusCode::NOT_FOUND
        );
        let c = post(&format!("/api/moves/{bad}/cancel"), &json!({})).await;
        assert_eq!(c.status, StatusCode::NOT_FOUND, "{}", c.text);
    }
    assert_eq!(
        get("/api/moves?limit=0").await.status,
        StatusCode::BAD_REQUEST
    );
    // Nothing moved, nothing was recorded.
    assert_eq!(tenant_server(slug).await.as_deref(), Some("primary"));
    assert_eq!(
        servers_with_database(&database_name(slug)).await,
        vec!["primary"]
    );
    let moves = registry()
        .await
        .query_one("SELECT count(*) FROM moves WHERE slug = ANY($1)", &[&slugs])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(moves, 0);
}

#[tokio::test]
async fn a_move_cancelled_before_its_switch_leaves_the_tenant_serving_where_it_was() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = &create_tenants_on(&mut cleanup, "cancelmove", 1, Some("primary")).await[0];
    let arn = get(&format!("/api/tenants/{slug}")).await.body["credentials_secret_arn"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = read_secret(&arn).await;
    // A table the copy cannot read: the move stops at its copy (fenced), and waits.
    let name = database_name(slug);
    let held = Held::on(
        "primary",
        &name,
        "BEGIN; LOCK TABLE settings IN ACCESS EXCLUSIVE MODE",
    )
    .await;
    let started = post(
        &format!("/api/tenants/{slug}/move"),
        &json!({"to": "secondary"}),
    )
    .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.text);
    let id = started.body["id"].as_str().unwrap().to_owned();
    let at_copy = eventually(Duration::from_secs(60), || async {
        get(&format!("/api/moves/{id}")).await.body["step"] == "copy"
    })
    .await;
    assert!(at_copy, "the move reached its copy");
    let shown = get(&format!("/api/tenants/{slug}")).await.body;
    assert_eq!(shown["move_id"], id.as_str(), "{shown}");
    assert_eq!(shown["server"], "primary", "{shown}");
    // Fenced: the login is refused on the source, and a second move or a delete is refused.
    assert!(
        connect_as(&secret, None).await.is_err(),
        "writes are refused during the copy"
    );
    let again = post(
        &format!("/api/tenants/{slug}/move"),
        &json!({"to": "secondary"}),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    let del = delete(&format!("/api/tenants/{slug}")).await;
    assert_eq!(del.status, StatusCode::CONFLICT, "{}", del.text);

    let cancel = post(&format!("/api/moves/{id}/cancel"), &json!({})).await;
    assert_eq!(cancel.status, StatusCode::ACCEPTED, "{}", cancel.text);
    assert_eq!(cancel.body["cancel_requested"], true, "{}", cancel.text);
    drop(held);
    let over = wait_move(&id).await;
    assert_eq!(over["state"], "cancelled", "{over}");
    assert!(get(&format!("/api/tenants/{slug}")).await.body["move_id"].is_null());
    assert!(over["fence_ended_at"].is_string(), "{over}");
    // Serving where it was: the registry, the secret, the login; nothing left on the target.
    assert_eq!(tenant_server(slug).await.as_deref(), Some("primary"));
    let after = read_secret(&arn).await;
    assert_eq!(after, secret);
    let client = connect_as(&after, None)
        .await
        .expect("the login works again");
    client
        .execute(
            "INSERT INTO settings (key, value) VALUES ('after', '1')",
            &[],
        )
        .await
        .expect("writes work again");
    assert_eq!(servers_with_database(&name).await, vec!["primary"]);
    let on_target = admin_on("secondary")
        .await
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .unwrap();
    assert!(on_target.is_none(), "no login left on the target");
    let again = post(&format!("/api/moves/{id}/cancel"), &json!({})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
}

#[tokio::test]
async fn a_drain_empties_a_server_within_its_budget_and_then_it_can_be_removed() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    // Its budget: two tenants at work at once (RegisteredCluster's migrate_concurrency).
    let server = RegisteredCluster::start("drain", 25).await;
    let slugs = create_tenants_on(&mut cleanup, "drain", 20, Some(&server.name)).await;
    for slug in &slugs[..3] {
        let secret = read_secret(&secret_name(slug)).await;
        connect_as(&secret, None)
            .await
            .expect("the tenant's login")
            .batch_execute(
                "INSERT INTO activity_log (action) SELECT 'seed' FROM generate_series(1, 300)",
            )
            .await
            .expect("seed");
    }
    // Samples how many of the server's tenant databases the product works in at once.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, probe) = (stop.clone(), server.cluster.connect("postgres").await);
        tokio::spawn(async move {
            let mut most = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = probe
                    .query_one(
                        "SELECT count(DISTINCT datname) FROM pg_stat_activity \
                         WHERE application_name = 'migrate-tenant' \
                           AND datname LIKE 'dbtools\\_tenant\\_%'",
                        &[],
                    )
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                most = most.max(n);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            most
        })
    };

    let path = format!("/api/servers/{}/drain", server.name);
    let mut started = Vec::new();
    for _ in 0..5 {
        let r = post(&path, &json!({})).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        assert_eq!(r.body["state"], "draining", "{}", r.text);
        assert_eq!(r.body["errors"], json!([]), "{}", r.text);
        started.extend(r.body["started"].as_array().unwrap().iter().cloned());
        if r.body["remaining"] == 0 {
            break;
        }
    }
    assert_eq!(started.len(), 20, "{started:?}");
    assert_eq!(server_state(&server.name).await, "draining");
    let emptied = eventually(Duration::from_secs(240), || async {
        let n: i64 = registry()
            .await
            .query_one(
                "SELECT count(*) FROM moves WHERE slug = ANY($1) AND state = 'running'",
                &[&slugs],
            )
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let most = sampler.await.unwrap();
    assert!(emptied, "every move ended");
    for m in &started {
        let id = m["move_id"].as_str().unwrap();
        let mv = get(&format!("/api/moves/{id}")).await.body;
        assert_eq!(mv["state"], "done", "{mv}");
    }
    assert!(most <= 2, "at most the server's budget at once: {most}");
    assert!(most >= 1, "the sampler saw the moves at work");
    for slug in &slugs {
        let now = tenant_server(slug).await.expect("a server");
        assert!(SERVERS.contains(&now.as_str()), "{slug} is on {now}");
        let secret = read_secret(&secret_name(slug)).await;
        let client = connect_as(&secret, None)
            .await
            .unwrap_or_else(|e| panic!("{slug}: its secret opens its new database: {e}"));
        if slugs[..3].contains(slug) {
            assert_eq!(
                count(&client, "SELECT count(*) FROM activity_log").await,
                300
            );
        }
    }
    let removed = request(
        Method::DELETE,
        &format!("/api/servers/{}", server.name),
        None,
    )
    .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.text);
}

async fn server_state(name: &str) -> String {
    get(&format!("/api/servers/{name}")).await.body["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
