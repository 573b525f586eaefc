//! A move's worker (migrate-tenant) SIGKILLed at its steps: in the fence, in the copy (the
//! tenant's writes refused), in the switch's registry transaction, and, for an online move
//! (`secondary` → `primary`), while it sets up the replication. At each, the tenant's
//! login reaches no copy it should not, and the move's message, delivered again, finishes
//! the move with every row on the target. A move found at its last step (as a worker killed
//! after the switch leaves it) goes forward only.

use super::*;

/// A running move of `slug` to `to`, recorded as `POST /api/tenants/{slug}/move` would (no
/// message sent: the test hands it to a worker it can kill).
async fn record_move(slug: &str, to: &str, mode: &str) -> String {
    let row = registry()
        .await
        .query_one(
            "INSERT INTO moves (id, tenant_id, slug, from_server, to_server, mode, step, state, \
               database_name, source_oid, target_oid, lease_expires_at) \
             SELECT gen_random_uuid(), id, slug, server, $2, $3, 'prepare', \
               'running', database_name, database_oid, \
               2147483648 + (random() * 2147483000)::bigint, now() + interval '10 minutes' \
             FROM tenants WHERE slug = $1 RETURNING id::text",
            &[&slug, &to, &mode],
        )
        .await
        .expect("record a move");
    row.get(0)
}

/// Where the worker is caught: what the test holds, on which server, for the worker's
/// statement to wait on.
#[derive(Clone, Copy, Debug)]
enum Catch {
    /// The fence's `ALTER ROLE … NOLOGIN` on the source waits for the test's own alteration.
    Fence,
    /// The copy waits for a table of the source.
    Copy,
    /// The switch's transaction waits for the tenant's row in the registry.
    Switch,
    /// An online move's publication waits for a table of the source.
    Replicate,
}

impl Catch {
    /// (from, to, mode) of the move caught here.
    fn route(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Catch::Replicate => ("secondary", "primary", "online"),
            _ => ("primary", "secondary", "copy"),
        }
    }
}

async fn hold(catch: Catch, slug: &str) -> Held {
    let name = database_name(slug);
    match catch {
        Catch::Fence => {
            Held::on(
                "primary",
                "postgres",
                &format!("BEGIN; ALTER ROLE \"{name}\" CONNECTION LIMIT 7"),
            )
            .await
        }
        Catch::Copy => {
            Held::on(
                "primary",
                &name,
                "BEGIN; LOCK TABLE settings IN ACCESS EXCLUSIVE MODE",
            )
            .await
        }
        Catch::Switch => {
            Held::on(
                "primary",
                "dbtools",
                &format!("BEGIN; SELECT 1 FROM tenants WHERE slug = '{slug}' FOR NO KEY UPDATE"),
            )
            .await
        }
        Catch::Replicate => {
            Held::on(
                "secondary",
                &name,
                "BEGIN; LOCK TABLE settings IN ACCESS EXCLUSIVE MODE",
            )
            .await
        }
    }
}

async fn move_row(id: &str) -> serde_json::Value {
    get(&format!("/api/moves/{id}")).await.body
}

async fn killed_at(catch: Catch) {
    // Holds the fleet: the test runs migrate-all (over its one tenant).
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let (from, to, mode) = catch.route();
    let slug = create_tenants_on(&mut cleanup, "fmove", 1, Some(from)).await[0].clone();
    let arn = secret_name(&slug);
    let before = read_secret(&arn).await;
    connect_as(&before, None)
        .await
        .expect("the tenant's login")
        .batch_execute(
            "INSERT INTO activity_log (action) SELECT 'seed' FROM generate_series(1, 2000); \
             INSERT INTO settings (key, value) VALUES ('plan', '1')",
        )
        .await
        .expect("seed");
    let id = record_move(&slug, to, mode).await;
    let held = hold(catch, &slug).await;
    // Whatever the killed worker would send goes to a queue of the test's own.
    let own = OwnQueue::new().await;
    let event = sqs_event(&[json!({ "move_id": id })]);
    let api = runtime::RuntimeApi::start(event.clone()).await;
    let mut worker = api.spawn("migrate-tenant", &[("MIGRATE_QUEUE_URL", &own.url)]);
    let held_on = if matches!(catch, Catch::Replicate) {
        from
    } else {
        "primary"
    };
    let caught = eventually(Duration::from_secs(60), || async {
        lock_waiters(held_on, "migrate-tenant", "").await > 0
    })
    .await;
    assert!(
        caught,
        "{catch:?}: the worker waits where the test holds it"
    );
    worker.kill().await.expect("SIGKILL migrate-tenant");
    await_cancelled(held_on, "migrate-tenant").await;
    drop(held);

    // Killed: the move is running where it stopped; the registry still names the source.
    let stopped = move_row(&id).await;
    assert_eq!(stopped["state"], "running", "{catch:?}: {stopped}");
    let at = match catch {
        Catch::Fence => "fence",
        Catch::Copy => "copy",
        Catch::Switch => "switch",
        Catch::Replicate => "replicate",
    };
    assert_eq!(stopped["step"], at, "{catch:?}: {stopped}");
    assert_eq!(tenant_server(&slug).await.as_deref(), Some(from));
    assert_eq!(
        read_secret(&arn).await,
        before,
        "{catch:?}: the secret is unchanged"
    );
    // The tenant's login opens no copy on the target (none is open to it yet).
    let mut on_target = before.clone();
    let cfg: tokio_postgres::Config = pg_url_of(to).parse().unwrap();
    on_target["port"] = json!(cfg.get_ports()[0]);
    assert!(
        connect_as(&on_target, None).await.is_err(),
        "{catch:?}: the login reached the target before the switch"
    );
    if !matches!(catch, Catch::Fence | Catch::Replicate) {
        assert!(
            connect_as(&before, None).await.is_err(),
            "{catch:?}: the source is fenced"
        );
    }

    // A run meanwhile leaves the moving tenant alone (a schema changed under the move would
    // not reach the target): deferred, not failed; a later run migrates it where it lands.
    let (status, report) = invoke_migrate_all(&json!({"slugs": [slug], "verify": true})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let row = report_row(&report, &slug).expect("the tenant in the report");
    assert_eq!(row["status"], "deferred", "{catch:?}: {report}");

    // SQS delivers the message again (here: straight to the worker under watch).
    let (status, answer) = invoke("migrate-tenant", &event).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let done = eventually(Duration::from_secs(60), || async {
        move_row(&id).await["state"] != "running"
    })
    .await;
    let over = move_row(&id).await;
    assert!(done, "{catch:?}: the move ended: {over}");
    assert_eq!(over["state"], "done", "{catch:?}: {over}");
    assert_eq!(tenant_server(&slug).await.as_deref(), Some(to));
    let after = read_secret(&arn).await;
    assert_eq!(after["password"], before["password"]);
    assert_eq!(after["port"], on_target["port"], "{catch:?}: {after}");
    let client = connect_as(&after, None)
        .await
        .expect("the login on the target");
    let seeds: i64 = client
        .query_one(
            "SELECT count(*) FROM activity_log WHERE action = 'seed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(seeds, 2000, "{catch:?}: every row is on the target");
    assert_eq!(
        role_can_login_on(from, &database_name(&slug)).await,
        Some(false)
    );
    // No replication is left behind to hold the source's WAL.
    for server in ["primary", "secondary"] {
        let left: i64 = admin_on(server)
            .await
            .query_one(
                "SELECT (SELECT count(*) FROM pg_replication_slots \
                   WHERE slot_name LIKE 'dbtools\\_move\\_%') \
                 + (SELECT count(*) FROM pg_subscription WHERE subname LIKE 'dbtools\\_move\\_%')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "{catch:?}: replication left on {server}");
    }
    assert_invariants(std::slice::from_ref(&slug)).await;
}

#[tokio::test]
async fn a_move_killed_in_its_fence_is_finished_by_the_redelivery() {
    killed_at(Catch::Fence).await;
}

#[tokio::test]
async fn a_move_killed_in_its_copy_is_finished_by_the_redelivery() {
    killed_at(Catch::Copy).await;
}

#[tokio::test]
async fn a_move_killed_in_its_switch_is_finished_by_the_redelivery() {
    killed_at(Catch::Switch).await;
}

#[tokio::test]
async fn an_online_move_killed_while_it_sets_up_its_replication_is_finished_by_the_redelivery() {
    killed_at(Catch::Replicate).await;
}

#[tokio::test]
async fn a_move_found_after_its_switch_only_goes_forward() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = create_tenants_on(&mut cleanup, "fmoveb", 1, Some("primary")).await[0].clone();
    let arn = secret_name(&slug);
    let before = read_secret(&arn).await;
    let id = record_move(&slug, "secondary", "copy").await;
    let (status, answer) = invoke("migrate-tenant", &sqs_event(&[json!({ "move_id": id })])).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(
        eventually(Duration::from_secs(60), || async {
            move_row(&id).await["state"] == "done"
        })
        .await,
        "the move finished"
    );
    // Put back what a worker killed between the switch and its end leaves: the registry on
    // the target, the target's login still refusing sessions, the secret on the source.
    let name = database_name(&slug);
    admin_on("secondary")
        .await
        .batch_execute(&format!("ALTER ROLE \"{name}\" NOLOGIN"))
        .await
        .unwrap();
    put_secret(&arn, &before).await;
    registry()
        .await
        .execute(
            "UPDATE moves SET state = 'running', step = 'finish', finished_at = NULL, \
               fence_ended_at = NULL WHERE id::text = $1",
            &[&id],
        )
        .await
        .unwrap();
    // A cancel now is refused: the registry names the target.
    let cancel = request(Method::POST, &format!("/api/moves/{id}/cancel"), None).await;
    assert_eq!(cancel.status, StatusCode::CONFLICT, "{}", cancel.text);
    let (status, answer) = invoke("migrate-tenant", &sqs_event(&[json!({ "move_id": id })])).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let over = move_row(&id).await;
    assert_eq!(over["state"], "done", "{over}");
    assert_eq!(tenant_server(&slug).await.as_deref(), Some("secondary"));
    let after = read_secret(&arn).await;
    assert_ne!(
        after["port"], before["port"],
        "the secret names the target again"
    );
    connect_as(&after, None)
        .await
        .expect("the login opens the target");
    assert_invariants(std::slice::from_ref(&slug)).await;
}
