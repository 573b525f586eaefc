//! migrate-all fanned out over SQS: moto's queue, the local trigger standing in for Lambda's
//! event source mapping, the real `migrate-tenant` binary under `cargo lambda watch`. Each
//! test follows its run in the ledger (`GET /api/runs/{id}`) and checks the tenants'
//! databases themselves.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use e2e::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Long enough for a run of a few tenants with tenants given back (a few seconds each time).
const RUN_WITHIN: Duration = Duration::from_secs(120);

/// Sets a server's `migrate_concurrency` for the test; `Restore` puts it back.
async fn set_budget(server: &str, budget: i64) -> Restore {
    let restore = Restore::save(&[server]).await;
    let r = patch_server(server, &json!({"migrate_concurrency": budget})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    restore
}

/// Starts a queued run; its answer.
async fn queue_run(event: Value) -> Value {
    let (status, answer) = invoke_migrate_all(&event).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "queued", "{answer}");
    assert_eq!(answer["mode"], "queue", "{answer}");
    answer
}

/// Breaks a tenant at V1 for V2: a view squats on the table V2 creates.
async fn break_at_v1(slug: &str) {
    undo_to_v1(slug).await;
    connect_tenant(slug)
        .await
        .batch_execute("CREATE VIEW activity_log AS SELECT 1 AS squatter")
        .await
        .unwrap();
}

async fn repair(slug: &str) {
    connect_tenant(slug)
        .await
        .batch_execute("DROP VIEW activity_log")
        .await
        .unwrap();
}

fn statuses(run: &Value, status: &str) -> Vec<String> {
    let mut v: Vec<String> = run["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == status)
        .map(|t| t["slug"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_queued_run_over_both_servers_completes_and_the_ledger_has_each_outcome() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let mut slugs = create_tenants_on(&mut cleanup, "q_p", 3, Some("primary")).await;
    slugs.extend(create_tenants_on(&mut cleanup, "q_s", 3, Some("secondary")).await);
    for slug in &slugs {
        undo_v4(slug).await;
    }
    // The default canary: 1% of six tenants, at least one.
    let answer = queue_run(json!({"slugs": slugs, "inline": false})).await;
    assert_eq!(answer["canary"], 1, "{answer}");
    assert_eq!(answer["counts"]["queued"], 6, "{answer}");
    let id = answer["run_id"].as_str().unwrap().to_owned();

    let run = wait_run_end(&id, RUN_WITHIN).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["mode"], "queue", "{run}");
    assert_eq!(run["counts"]["migrated"], 6, "{run}");
    assert_eq!(run["counts"]["pending"], 0, "{run}");
    assert!(run["finished_at"].is_string(), "{run}");
    let canary: Vec<&Value> = run["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["wave"] == 0)
        .collect();
    assert_eq!(canary.len(), 1, "one canary tenant: {run}");
    for slug in &slugs {
        let t = run_tenant(&run, slug);
        assert_eq!(t["status"], "migrated", "{t}");
        assert_eq!(
            (&t["from_version"], &t["to_version"]),
            (&json!(3), &json!(4)),
            "{t}"
        );
        assert_eq!(
            t["server"],
            tenant_server(slug).await.unwrap().as_str(),
            "{t}"
        );
        assert_eq!(history_versions(slug).await, all_versions(), "{slug}");
        assert_eq!(registry_row(slug).await, Some(("active".into(), latest())));
    }
}

#[tokio::test]
async fn every_message_delivered_twice_changes_nothing() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let mut slugs = create_tenants_on(&mut cleanup, "qd_p", 2, Some("primary")).await;
    slugs.extend(create_tenants_on(&mut cleanup, "qd_s", 2, Some("secondary")).await);
    for slug in &slugs {
        undo_v4(slug).await;
    }
    let answer = queue_run(json!({"slugs": slugs, "inline": false, "canary": 0})).await;
    let id = answer["run_id"].as_str().unwrap().to_owned();
    let bodies: Vec<Value> = slugs
        .iter()
        .map(|s| json!({"run_id": id, "slug": s}))
        .collect();
    // A second copy of every message, while the first ones are at work.
    let sqs = sqs().await;
    for body in &bodies {
        sqs.send_message()
            .queue_url(queue_url())
            .message_body(body.to_string())
            .send()
            .await
            .expect("send a duplicate");
    }
    let run = wait_run_end(&id, RUN_WITHIN).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(
        run["counts"]["migrated"], 4,
        "each tenant recorded once, migrated: {run}"
    );
    // And a third, delivered straight to the worker once the run is over.
    let (status, answer) = invoke("migrate-tenant", &sqs_event(&bodies)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    // Wait for the queue's copies to be consumed too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = get(&format!("/api/runs/{id}?limit=100")).await.body;
    for slug in &slugs {
        // The first outcome stays: not overwritten by a later `up_to_date`.
        assert_eq!(run_tenant(&after, slug), run_tenant(&run, slug), "{slug}");
        assert_eq!(
            history_versions(slug).await,
            all_versions(),
            "applied once: {slug}"
        );
    }
    assert_eq!(after["counts"], run["counts"]);
    assert_eq!(after["finished_at"], run["finished_at"]);
}

/// The product's backends open now on the server in this test's tenants' databases (by
/// prefix): what a server's budget bounds, each one counted (a backend still exiting too).
async fn busy_tenants(admin: &tokio_postgres::Client, prefix: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE $1 \
             AND application_name IN ('migrate-all', 'migrate-tenant')",
            &[&format!("{}\\_%", database_name(prefix))],
        )
        .await
        .expect("sample pg_stat_activity")
        .get(0)
}

#[tokio::test]
async fn workers_never_migrate_more_tenants_on_a_server_than_its_budget() {
    let mut cleanup = Cleanup::holding_fleet().await;
    // Exclusive: this test changes a server's budget.
    let _template = test_lock(TEMPLATE_LOCK, true).await;
    let slugs = create_tenants_on(&mut cleanup, "qb", 8, Some("secondary")).await;
    for slug in &slugs {
        undo_v4(slug).await;
        // Enough rows that each index build takes a moment.
        connect_tenant(slug)
            .await
            .batch_execute(
                "INSERT INTO activity_log (action, entity_type) \
                 SELECT 'seed', 'bench' FROM generate_series(1, 60000)",
            )
            .await
            .unwrap();
    }
    let _budget = set_budget("secondary", 2).await;
    // Sampled from the server itself while the queue (6 workers at once) delivers.
    let sampler = Sampler::start("qb").await;
    let answer = queue_run(json!({"slugs": slugs, "inline": false, "canary": 0})).await;
    let id = answer["run_id"].as_str().unwrap().to_owned();
    let run = wait_run_end(&id, RUN_WITHIN).await;
    let (max, slots, samples) = sampler.stop().await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["counts"]["migrated"], 8, "{run}");
    assert!(
        max <= 2,
        "{max} backends at once on a server with a budget of 2 ({samples} samples)"
    );
    assert!(max >= 1, "the sampler saw the work ({samples} samples)");
    assert!(slots <= 2, "{slots} slot locks at once, budget 2");
    for slug in &slugs {
        assert_eq!(history_versions(slug).await, all_versions(), "{slug}");
    }

    // Inline, the run's tenants share one registry session, where advisory locks are
    // re-entrant: each tenant at work still holds a slot of its own (two at once here).
    for slug in &slugs {
        undo_v4(slug).await;
    }
    let sampler = Sampler::start("qb").await;
    let (status, report) =
        invoke_migrate_all(&json!({"slugs": slugs, "inline": true, "canary": 0})).await;
    let (tenants, slots, _) = sampler.stop().await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["counts"]["migrated"], 8, "{report}");
    assert!(
        tenants <= 2,
        "{tenants} backends at once inline, budget 2 (a slot is free only once its tenant's \
         backend is gone)"
    );
    assert_eq!(
        slots, 2,
        "two slots held at once, each by a tenant of its own"
    );
}

/// The most tenants (of this test, by prefix) with a backend open on `secondary`, and slot
/// locks held in the registry, sampled every 5 ms until stopped; and how many samples.
struct Sampler {
    done: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(i64, i64, u32)>,
}

impl Sampler {
    async fn start(prefix: &'static str) -> Sampler {
        let (server, registry) = (admin_on("secondary").await, registry().await);
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let task = tokio::spawn(async move {
            let (mut tenants, mut slots, mut samples) = (0, 0, 0);
            while !stop.load(Ordering::Relaxed) {
                tenants = tenants.max(busy_tenants(&server, prefix).await);
                slots = slots.max(slot_locks(&registry).await);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (tenants, slots, samples)
        });
        Sampler { done, task }
    }

    async fn stop(self) -> (i64, i64, u32) {
        self.done.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Slot locks (`Lock::Slot`, see `shared/src/pg/locks.rs`) held now in the registry.
async fn slot_locks(registry: &tokio_postgres::Client) -> i64 {
    registry
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid::bigint = $1 \
             AND granted",
            &[&0x6462_7403_i64],
        )
        .await
        .expect("sample pg_locks")
        .get(0)
}

#[tokio::test]
async fn a_failing_canary_stops_the_run_before_the_other_tenants() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    // One server: the canary is the oldest tenant, broken.
    let slugs = create_tenants_on(&mut cleanup, "qc", 4, Some("primary")).await;
    break_at_v1(&slugs[0]).await;
    for slug in &slugs[1..] {
        undo_to_v1(slug).await;
    }
    let answer = queue_run(json!({"slugs": slugs, "inline": false, "canary": 1})).await;
    let id = answer["run_id"].as_str().unwrap().to_owned();
    let run = wait_run_end(&id, RUN_WITHIN).await;
    assert_eq!(run["status"], "halted", "{run}");
    assert!(run["error"].as_str().unwrap().contains("canary"), "{run}");
    assert_eq!(statuses(&run, "failed"), vec![slugs[0].clone()], "{run}");
    let mut rest = slugs[1..].to_vec();
    rest.sort();
    assert_eq!(statuses(&run, "halted"), rest, "{run}");
    assert_eq!(run["counts"]["halted"], 3, "{run}");
    // Not attempted: still at V1.
    for slug in &slugs {
        assert_eq!(history_versions(slug).await, [1], "{slug}");
    }

    // Inline, the same rule.
    let (status, answer) =
        invoke_migrate_all(&json!({"slugs": slugs, "inline": true, "canary": 1})).await;
    assert!(!status.is_success(), "{answer}");
    assert_eq!(answer["errorType"], "RunHalted", "{answer}");
    for slug in &slugs[1..] {
        assert_eq!(history_versions(slug).await, [1], "{slug}");
    }
}

#[tokio::test]
async fn the_brake_halts_a_run_and_retry_run_finishes_it_once_fixed() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, true).await;
    let slugs = create_tenants_on(&mut cleanup, "qh", 6, Some("secondary")).await;
    let broken = &slugs[..3];
    for slug in broken {
        break_at_v1(slug).await;
    }
    for slug in &slugs[3..] {
        undo_to_v1(slug).await;
    }
    // One tenant at a time: the brake is pulled at the second failure, before the rest.
    let budget = set_budget("secondary", 1).await;
    let ends =
        EventTap::pattern(json!({"source": ["dbtools"], "detail-type": ["migrationRunFinished"]}))
            .await;
    let answer =
        queue_run(json!({"slugs": slugs, "inline": false, "canary": 0, "max_failures": 1})).await;
    assert_eq!(answer["max_failures"], 1, "{answer}");
    let id = answer["run_id"].as_str().unwrap().to_owned();
    let run = wait_run_end(&id, RUN_WITHIN).await;
    assert_eq!(run["status"], "halted", "{run}");
    // Its end went on the bus once, with the counts the ledger shows (halted included).
    let told = ends.matching("run_id", &id).await;
    assert_eq!(told.len(), 1, "{told:#?}");
    let d = &told[0]["detail"];
    assert_eq!(
        (&d["status"], &d["attempt"]),
        (&json!("halted"), &json!(0)),
        "{d}"
    );
    assert_eq!(d["counts"], run["counts"], "{d}");
    assert!(
        run["error"].as_str().unwrap().contains("max_failures"),
        "{run}"
    );
    assert_eq!(run["counts"]["failed"], 2, "{run}");
    let halted = statuses(&run, "halted");
    assert!(!halted.is_empty(), "{run}");
    for slug in &halted {
        assert_eq!(history_versions(slug).await, [1], "not attempted: {slug}");
    }
    drop(budget);

    // Fixed, retried: the same run, its failed and halted tenants queued again.
    for slug in broken {
        repair(slug).await;
    }
    let answer = queue_run(json!({"retry_run": id, "inline": false})).await;
    assert_eq!(answer["run_id"], id.as_str(), "{answer}");
    let run = wait_run_end(&id, RUN_WITHIN).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["counts"]["migrated"], 6, "{run}");
    // The retry's end is told too: the same run, the next attempt.
    let told = ends.matching("run_id", &id).await;
    assert_eq!(told.len(), 1, "{told:#?}");
    let d = &told[0]["detail"];
    assert_eq!(
        (&d["status"], &d["attempt"]),
        (&json!("completed"), &json!(1)),
        "{d}"
    );
    assert_eq!(d["counts"], run["counts"], "{d}");
    assert_eq!(run["counts"]["failed"], 0, "{run}");
    for slug in &slugs {
        assert_eq!(history_versions(slug).await, all_versions(), "{slug}");
    }
    // A completed run has nothing left to retry: refused, and left as it was.
    let (status, answer) = invoke_migrate_all(&json!({"retry_run": id})).await;
    assert!(!status.is_success(), "{answer}");
    assert_eq!(answer["errorType"], "InvalidRequest", "{answer}");
    assert!(
        answer["errorMessage"]
            .as_str()
            .unwrap()
            .contains("completed"),
        "{answer}"
    );
    assert_eq!(get(&format!("/api/runs/{id}?limit=100")).await.body, run);
}

#[tokio::test]
async fn bad_rollout_options_are_refused_and_change_nothing() {
    let _fleet = Cleanup::holding_fleet().await;
    for (event, needle) in [
        (json!({"max_failures": "ten"}), "max_failures"),
        (json!({"max_failures": "120%"}), "max_failures"),
        (json!({"max_failures": -1}), "invalid"),
        (json!({"canary": -1}), "invalid"),
        (json!({"retry_run": "not-a-uuid"}), "invalid"),
        (
            json!({"retry_run": uuid::Uuid::new_v4(), "slugs": ["acme"]}),
            "retry_run",
        ),
        (json!({"dry_run": true, "inline": false}), "dry run"),
    ] {
        let before = get("/api/runs?limit=1").await.body["runs"][0]["id"].clone();
        let (status, answer) = invoke_migrate_all(&event).await;
        assert!(!status.is_success(), "{event}: {answer}");
        assert_eq!(answer["errorType"], "InvalidRequest", "{event}: {answer}");
        assert!(
            answer["errorMessage"].as_str().unwrap().contains(needle),
            "{event}: {answer}"
        );
        let after = get("/api/runs?limit=1").await.body["runs"][0]["id"].clone();
        assert_eq!(before, after, "no run recorded for {event}");
    }
    // A run that does not exist.
    let (status, answer) = invoke_migrate_all(&json!({"retry_run": uuid::Uuid::new_v4()})).await;
    assert!(!status.is_success(), "{answer}");
    assert_eq!(answer["errorType"], "InvalidRequest", "{answer}");
}

#[tokio::test]
async fn a_busy_canary_is_replaced_and_the_queued_run_goes_on() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    // One server: the canary is the oldest tenant, whose table the application holds.
    let slugs = create_tenants_on(&mut cleanup, "qbc", 4, Some("primary")).await;
    for slug in &slugs {
        undo_v4(slug).await;
    }
    let holder = connect_tenant(&slugs[0]).await;
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM activity_log")
        .await
        .unwrap();
    let answer =
        queue_run(json!({"slugs": slugs, "inline": false, "canary": 1, "max_failures": 0})).await;
    let id = answer["run_id"].as_str().unwrap().to_owned();
    let run = wait_run_end(&id, RUN_WITHIN).await;
    drop(holder);
    assert_eq!(run["status"], "incomplete", "{run}");
    assert_eq!(statuses(&run, "deferred"), vec![slugs[0].clone()], "{run}");
    let mut rest = slugs[1..].to_vec();
    rest.sort();
    assert_eq!(statuses(&run, "migrated"), rest, "{run}");
    // The deferred canary's place was taken: two tenants ran in the canary wave.
    let canary: Vec<&Value> = run["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["wave"] == 0)
        .collect();
    assert_eq!(canary.len(), 2, "{run}");
    for slug in &slugs[1..] {
        assert_eq!(history_versions(slug).await, all_versions(), "{slug}");
    }
}

#[tokio::test]
async fn a_worker_the_registry_fails_leaves_its_message_to_come_back() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = create_tenants_on(&mut cleanup, "qerr", 1, Some("primary"))
        .await
        .remove(0);
    undo_v4(&slug).await;
    // A queued run of one tenant, whose message the test hands to a worker of its own.
    let own = OwnQueue::new().await;
    let queue = own.url.clone();
    let (id, messages) = own.plan(std::slice::from_ref(&slug)).await;

    // The worker's registry role may not take advisory locks (a statement's own error, not a
    // connection's): it can take no slot of the tenant's server.
    let role = format!("worker_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let registry_admin = registry().await;
    registry_admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'worker'; \
             GRANT CONNECT ON DATABASE dbtools TO {role}; \
             GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}; \
             REVOKE EXECUTE ON FUNCTION pg_try_advisory_lock(integer, integer) FROM PUBLIC"
        ))
        .await
        .unwrap();
    let pg: tokio_postgres::Config = pg_url().parse().unwrap();
    let url = format!(
        "postgres://{role}:worker@127.0.0.1:{}/postgres",
        pg.get_ports()[0]
    );
    let worker_api = runtime::RuntimeApi::start(sqs_event(&messages)).await;
    let _worker = worker_api.spawn(
        "migrate-tenant",
        &[
            ("MIGRATE_QUEUE_URL", queue.as_str()),
            ("DB_SECRET_ID", ""),
            ("DATABASE_URL", url.as_str()),
        ],
    );
    let answer = worker_api.wait_response(Duration::from_secs(60)).await;
    registry_admin
        .batch_execute(&format!(
            "GRANT EXECUTE ON FUNCTION pg_try_advisory_lock(integer, integer) TO PUBLIC; \
             REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}; \
             REVOKE CONNECT ON DATABASE dbtools FROM {role}; DROP ROLE {role}"
        ))
        .await
        .unwrap();
    // Not "done" with the tenant still pending (its message deleted, its run stalled): the
    // message is a batch item failure, and comes back.
    let answer = answer.expect("the worker answered");
    assert_eq!(
        answer["batchItemFailures"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    let run = get(&format!("/api/runs/{id}")).await.body;
    assert_eq!(run_tenant(&run, &slug)["status"], "pending", "{run}");
    assert_eq!(history_versions(&slug).await, [1, 2, 3]);
    // Redelivered to a worker the registry serves, it is finished.
    let retried = invoke_migrate_all(&json!({"retry_run": id, "inline": true})).await;
    assert_eq!(retried.0, StatusCode::OK, "{}", retried.1);
    assert_eq!(history_versions(&slug).await, all_versions());
}
