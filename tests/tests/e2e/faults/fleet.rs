//! migrate-all under faults that are nobody's migration failing: a connection lost mid-run
//! (a failover), and a worker whose tenant runs past its time limit. Each tenant is deferred,
//! recorded once, and halts nothing.

use super::*;

/// The backend of `application` migrating the tenant `slug` while it waits on a lock.
async fn waiting_backend(application: &str, slug: &str) -> Option<i32> {
    admin()
        .await
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = $2 \
             AND wait_event_type = 'Lock'",
            &[&application, &database_name(slug)],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Waits (at most 20 s) for that backend.
async fn await_waiting_backend(application: &str, slug: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = waiting_backend(application, slug).await {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{application} waits on {slug}'s table"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Holds the tenant's `activity_log` exclusively (V4 waits for it) until dropped.
async fn hold_activity_log(slug: &str) -> Held {
    let server = tenant_server(slug).await.expect("its server");
    Held::on(
        &server,
        &database_name(slug),
        "BEGIN; LOCK TABLE activity_log IN ACCESS EXCLUSIVE MODE",
    )
    .await
}

#[tokio::test]
async fn a_connection_lost_mid_run_halts_nothing() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants_on(&mut cleanup, "ffo", 4, Some("primary")).await;
    for slug in &slugs {
        undo_v4(slug).await;
    }
    let lost = slugs[1].clone();
    let holder = hold_activity_log(&lost).await;
    // No failure tolerated, no canary: one failed tenant would halt the run.
    let event = json!({"slugs": slugs, "max_failures": 0, "canary": 0});
    let run = tokio::spawn(async move { invoke_migrate_all(&event).await });
    let pid = await_waiting_backend("migrate-all", &lost).await;
    // A failover, as the run sees it: its session is ended under it.
    admin()
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let (status, report) = run.await.unwrap();
    drop(holder);
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "incomplete", "{report}");
    assert_eq!(report["counts"]["failed"], 0, "{report}");
    assert_eq!(report["counts"]["migrated"], 3, "{report}");
    let row = report_row(&report, &lost).unwrap();
    assert_eq!(row["status"], "deferred", "{report}");
    assert!(
        row["error"].as_str().unwrap().contains("unreachable"),
        "{report}"
    );
    assert_eq!(history_versions(&lost).await, [1, 2, 3]);
    // The next run takes it.
    let (status, report) = invoke_migrate_all(&json!({"slugs": [lost]})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(history_versions(&lost).await, all_versions());
    assert_invariants(&slugs).await;
}

#[tokio::test]
async fn a_worker_past_its_time_limit_records_the_tenant_deferred_once() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants_on(&mut cleanup, "fpl", 1, Some("primary")).await;
    let slug = slugs[0].clone();
    undo_v4(&slug).await;
    // A queue of the test's own: the test hands the message to a worker of its own.
    let own = OwnQueue::new().await;
    let queue = own.url.clone();
    let (id, messages) = own.plan(std::slice::from_ref(&slug)).await;
    let event = sqs_event(&messages);

    // V4 waits for the held table; its backend is then frozen (a server that stopped
    // answering), so that only the worker's own time limit (6 s) can end the wait.
    let holder = hold_activity_log(&slug).await;
    let worker_api = runtime::RuntimeApi::start(event.clone()).await;
    let _worker = worker_api.spawn(
        "migrate-tenant",
        &[
            ("MIGRATE_QUEUE_URL", &queue),
            ("MIGRATE_TENANT_TIMEOUT_SECS", "6"),
            ("MIGRATE_LOCK_TIMEOUT_MS", "5000"),
            ("MIGRATE_LOCK_RETRIES", "0"),
        ],
    );
    let pid = await_waiting_backend("migrate-tenant", &slug)
        .await
        .to_string();
    run_ok(std::process::Command::new("kill").args(["-STOP", &pid]));
    let answer = worker_api.wait_response(Duration::from_secs(30)).await;
    run_ok(std::process::Command::new("kill").args(["-CONT", &pid]));
    drop(holder);
    // Done with: recorded, not given back to be retried (and dead-lettered) five times.
    let answer = answer.expect("the worker answered");
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    let run = wait_run_end(&id, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "incomplete", "{run}");
    let row = run_tenant(&run, &slug);
    assert_eq!(row["status"], "deferred", "{run}");
    assert!(
        row["error"].as_str().unwrap().contains("time limit"),
        "{run}"
    );
    // The same message again (SQS delivers at least once) records nothing more.
    let (status, again) = invoke("migrate-tenant", &event).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["batchItemFailures"], json!([]), "{again}");
    let after = get(&format!("/api/runs/{id}")).await.body;
    assert_eq!(run_tenant(&after, &slug), row, "{after}");
    assert_eq!(history_versions(&slug).await, [1, 2, 3]);
    // The next run takes it.
    let (status, report) = invoke_migrate_all(&json!({"slugs": [slug]})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_invariants(&slugs).await;
}
