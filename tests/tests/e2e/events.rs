//! The lifecycle events (`shared::events`): each outcome puts exactly its documented event on
//! the bus, read back through a rule and a queue of the test's own (`EventTap`).

use std::time::Duration;

use e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// What every event carries: our source, the detail's id to de-duplicate by, and never a
/// password nor a host.
fn assert_envelope(event: &Value) {
    assert_eq!(event["source"], "dbtools", "{event}");
    let id = event["detail"]["event_id"].as_str().unwrap_or_default();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{event}");
    assert!(event["detail"]["occurred_at"].is_string(), "{event}");
    let text = event.to_string();
    for secret in ["password", "127.0.0.1", "host"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

/// The detail's tenant fields are the tenant's as the API shows it.
fn assert_tenant(event: &Value, tenant: &Value, status: &str) {
    let d = &event["detail"];
    assert_eq!(d["tenant_id"], tenant["id"], "{event}");
    assert_eq!(d["slug"], tenant["slug"], "{event}");
    assert_eq!(d["name"], tenant["name"], "{event}");
    assert_eq!(d["server"], tenant["server"], "{event}");
    assert_eq!(d["database_name"], tenant["database_name"], "{event}");
    assert_eq!(d["status"], status, "{event}");
}

#[tokio::test]
async fn each_step_of_a_tenants_life_puts_its_one_event_on_the_bus() {
    let mut cleanup = Cleanup::new();
    let slug = cleanup.add(&unique_slug("ev_life"));
    let tap = EventTap::slugs(&[&slug]).await;

    let created = post_tenant(&json!({"name": "Events", "slug": slug, "server": "primary"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let events = tap.exactly(1).await;
    let e = event_of(&events, "provisionSuccess");
    assert_envelope(e);
    assert_tenant(e, &created.body, "active");
    assert_eq!(
        e["detail"]["credentials_secret_arn"],
        created.body["credentials_secret_arn"]
    );
    assert!(e["detail"]["credentials_secret_arn"].is_string(), "{e}");
    assert_eq!(e["detail"]["schema_version"], latest());

    let path = format!("/api/tenants/{slug}");
    assert_eq!(delete(&path).await.status, StatusCode::OK);
    let events = tap.exactly(1).await;
    let e = event_of(&events, "deactivateSuccess");
    assert_envelope(e);
    assert_tenant(e, &created.body, "deleted");

    let r = request(Method::POST, &format!("{path}/restore"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let events = tap.exactly(1).await;
    assert_tenant(
        event_of(&events, "activateSuccess"),
        &created.body,
        "active",
    );

    // A purge is of a deleted tenant: two outcomes, two events, in that order.
    assert_eq!(delete(&path).await.status, StatusCode::OK);
    let r = request(Method::POST, &format!("{path}/purge"), None).await;
    assert!(r.status.is_success(), "{}", r.text);
    let events = tap.exactly(2).await;
    assert_eq!(events[0]["detail-type"], "deactivateSuccess", "{events:#?}");
    let e = event_of(&events, "deprovisionSuccess");
    assert_envelope(e);
    assert_tenant(e, &created.body, "purged");
    // The secret the purge deleted.
    assert_eq!(
        e["detail"]["credentials_secret_arn"],
        created.body["credentials_secret_arn"]
    );
    assert!(
        events[0]["detail"]["occurred_at"].as_str() < e["detail"]["occurred_at"].as_str(),
        "{events:#?}"
    );
    // Each event went once: the outbox is empty of this tenant's.
    let left: i64 = registry()
        .await
        .query_one(
            "SELECT count(*) FROM events WHERE detail ->> 'slug' = $1",
            &[&slug],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_create_that_fails_puts_provision_failure_and_a_refused_one_puts_nothing() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let failed = cleanup.add(&unique_slug("ev_fail"));
    let invalid = "Not A Slug";
    let tap = EventTap::slugs(&[&failed, invalid]).await;
    // A database of the tenant's name that we did not make: the create gives up and undoes
    // its row.
    let squatter = database_name(&failed);
    plant_squatter(&squatter).await;
    let r = post_tenant(&json!({"name": "Squatted", "slug": failed})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    // A request refused before anything was written tells nothing.
    let r = post_tenant(&json!({"name": "Bad", "slug": invalid})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);

    let events = tap.exactly(1).await;
    let e = event_of(&events, "provisionFailure");
    assert_envelope(e);
    let d = &e["detail"];
    assert_eq!(d["slug"], failed.as_str());
    assert_eq!(d["status"], "provisioning");
    assert!(d["credentials_secret_arn"].is_null(), "{e}");
    assert!(uuid::Uuid::parse_str(d["tenant_id"].as_str().unwrap()).is_ok());
    assert!(registry_row(&failed).await.is_none());
    assert_squatter_untouched(&squatter).await;
    for server in SERVERS {
        admin_on(server)
            .await
            .batch_execute(&format!("DROP DATABASE \"{squatter}\""))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_move_puts_tenant_moved_with_both_servers_and_the_move() {
    let mut cleanup = Cleanup::new();
    let slug = create_tenants_on(&mut cleanup, "ev_move", 1, Some("primary"))
        .await
        .remove(0);
    let tap = EventTap::slugs(&[&slug]).await;
    let r = request(
        Method::POST,
        &format!("/api/tenants/{slug}/move"),
        Some(json!({"to": "secondary"}).to_string().into_bytes()),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let move_id = r.body["id"].as_str().unwrap().to_owned();

    // The create's own event may still be on its way: keep the move's.
    let moved = tap.of_type("tenantMoved", Duration::from_secs(120)).await;
    assert_eq!(moved.len(), 1, "{moved:#?}");
    let e = &moved[0];
    assert_envelope(e);
    let d = &e["detail"];
    assert_eq!(
        (&d["from_server"], &d["to_server"], &d["server"]),
        (&json!("primary"), &json!("secondary"), &json!("secondary")),
        "{e}"
    );
    assert_eq!(d["move_id"], move_id.as_str());
    assert_eq!(d["mode"], "copy");
    // By the time the event is out, the move is done, and whoever re-reads the secret on it
    // reaches the new server, where the login is open.
    let done = super::moves::wait_move(&move_id).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(d["writes_refused_ms"], done["writes_refused_ms"], "{e}");
    let secret = read_secret(&secret_name(&slug)).await;
    let (host, port) = super::moves::endpoint("secondary");
    assert_eq!(
        (secret["host"].as_str(), secret["port"].as_u64()),
        (Some(host.as_str()), Some(port))
    );
    assert!(
        connect_as(&secret, None).await.is_ok(),
        "the login opens its database there"
    );
}

#[tokio::test]
async fn a_run_that_ends_puts_migration_run_finished_with_its_counts() {
    // The fleet's: the run must not find another at work.
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants(&mut cleanup, "ev_run", 2).await;
    undo_v4(&slugs[0]).await;
    // A run's id is known once it has ended: listen to every run's end, keep ours.
    let tap =
        EventTap::pattern(json!({"source": ["dbtools"], "detail-type": ["migrationRunFinished"]}))
            .await;
    let (status, report) = invoke_migrate_all(&json!({"slugs": slugs})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let run_id = report["run_id"].as_str().unwrap();
    let ours = tap.matching("run_id", run_id).await;
    assert_eq!(ours.len(), 1, "one event for run {run_id}: {ours:#?}");
    let e = &ours[0];
    assert_envelope(e);
    let run = get(&format!("/api/runs/{run_id}")).await.body;
    let d = &e["detail"];
    assert_eq!(d["status"], "completed", "{e}");
    assert_eq!(d["status"], run["status"], "{e}");
    assert_eq!(d["counts"], run["counts"], "{e}");
    assert_eq!(d["counts"]["migrated"], 1, "{e}");
    assert_eq!(d["latest_version"], latest());
    assert_eq!(
        d["finished_at"].is_string(),
        run["finished_at"].is_string(),
        "{e}"
    );

    // A dry run writes no ledger, and tells nothing.
    let (status, dry) = invoke_migrate_all(&json!({"slugs": slugs, "dry_run": true})).await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    let dry_id = dry["run_id"].as_str().unwrap();
    assert!(tap
        .receive(10, Duration::from_secs(2))
        .await
        .iter()
        .all(|e| e["detail"]["run_id"] != dry_id));
}
