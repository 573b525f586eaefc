//! migrate-all and its queue worker (migrate-tenant) SIGKILLed mid-run: the ledger keeps what
//! was done, a new run, `retry_run` or the message's redelivery finishes the rest, and a
//! stale message changes nothing.

use super::*;

#[tokio::test]
async fn a_killed_migrate_all_is_rerun_cleanly() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    // One server: the run takes them in the registry's order, the last one last.
    let slugs = create_tenants_on(&mut cleanup, "fmig", 10, Some("primary")).await;
    for slug in &slugs {
        undo_to_v1(slug).await;
    }
    // Hold the last tenant's lock so that the run is caught mid-fleet, then kill it.
    let lock = hold_tenant_lock(&slugs[9]).await;
    let api = runtime::RuntimeApi::start(json!({"concurrency": 1, "slugs": slugs})).await;
    let mut child = api.spawn("migrate-all", &[]);
    // Caught once the first nine are migrated and recorded: a tenant's history is written
    // before its outcome reaches the ledger, so the history alone would kill the run between
    // the two for the ninth.
    let caught = eventually(Duration::from_secs(30), || async {
        let mut done = 0;
        for s in &slugs[..9] {
            if history_versions(s).await == all_versions() {
                done += 1;
            }
        }
        let runs = get("/api/runs?limit=1").await.body;
        let recorded = match runs["runs"][0]["id"].as_str() {
            Some(id) => get(&format!("/api/runs/{id}?status=migrated")).await.body["tenants"]
                .as_array()
                .map_or(0, Vec::len),
            None => 0,
        };
        done == 9 && recorded == 9
    })
    .await;
    assert!(caught, "the run migrated the first tenants");
    child.kill().await.expect("SIGKILL migrate-all");
    drop(lock);
    assert!(api.response.lock().await.is_none());
    // The ledger kept what the killed run did, tenant by tenant, as it happened.
    let killed = get("/api/runs?limit=1").await.body["runs"][0].clone();
    assert_eq!(killed["status"], "running", "{killed}");
    let id = killed["id"].as_str().unwrap().to_owned();
    let done = get(&format!("/api/runs/{id}?status=migrated")).await;
    assert_eq!(
        done.body["tenants"].as_array().unwrap().len(),
        9,
        "{}",
        done.text
    );
    let waiting = get(&format!("/api/runs/{id}?status=pending")).await;
    assert_eq!(
        waiting.body["tenants"][0]["slug"],
        slugs[9].as_str(),
        "{}",
        waiting.text
    );
    // Its fleet lock died with it: a new run proceeds and finishes the job.
    let (status, report) = invoke_migrate_all(&json!({"slugs": slugs})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed");
    assert_eq!(report["counts"]["migrated"], 1, "{report}");
    assert_invariants(&slugs).await;
    // ... and marked the killed run for what it was.
    let r = get(&format!("/api/runs/{id}")).await;
    assert_eq!(r.body["status"], "failed", "{}", r.text);
    assert!(
        r.body["error"].as_str().unwrap().contains("interrupted"),
        "{}",
        r.text
    );
    let last = r.body["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["slug"] == slugs[9].as_str())
        .unwrap()
        .clone();
    assert_eq!(last["status"], "not_started", "{last}");
}

/// A TCP endpoint that accepts connections and never answers (what a network black hole
/// looks like to a client), for as long as it lives.
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

#[tokio::test]
async fn a_migrate_all_killed_while_queueing_is_finished_by_retry_run() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants_on(&mut cleanup, "fq", 3, Some("primary")).await;
    for slug in &slugs {
        undo_v4(slug).await;
    }
    // SQS does not answer: the run is planned, then the process dies while sending.
    let (sqs_url, hole) = black_hole().await;
    let api =
        runtime::RuntimeApi::start(json!({"slugs": slugs, "inline": false, "canary": 0})).await;
    let mut child = api.spawn("migrate-all", &[("AWS_ENDPOINT_URL_SQS", &sqs_url)]);
    let planned = eventually(Duration::from_secs(30), || async {
        let run = get("/api/runs?limit=1").await.body["runs"][0].clone();
        run["mode"] == "queue" && run["status"] == "running"
    })
    .await;
    assert!(planned, "the run was handed to the queue");
    child.kill().await.expect("SIGKILL migrate-all");
    hole.abort();
    let run = get("/api/runs?limit=1").await.body["runs"][0].clone();
    let id = run["id"].as_str().unwrap().to_owned();
    // Nothing went out: its tenants wait, untouched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = get(&format!("/api/runs/{id}?status=pending")).await;
    assert_eq!(r.body["tenants"].as_array().unwrap().len(), 3, "{}", r.text);
    for slug in &slugs {
        assert_eq!(
            history_versions(slug).await.len(),
            3,
            "{slug} not migrated yet"
        );
    }
    // A plain run sees a queued run at work, and does not start a second one.
    let (status, answer) = invoke_migrate_all(&json!({})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "already_running", "{answer}");
    assert_eq!(answer["run_id"], id.as_str(), "{answer}");
    // retry_run queues its tenants again, in a new attempt. (Its messages go to a queue of
    // the test's own, so that the test delivers them: the rule below is about timing.)
    let own = OwnQueue::new().await;
    let api = runtime::RuntimeApi::start(json!({"retry_run": id, "inline": false})).await;
    let _planner = api.spawn("migrate-all", &[("MIGRATE_QUEUE_URL", &own.url)]);
    let answer = api
        .wait_response(Duration::from_secs(60))
        .await
        .expect("retried");
    assert_eq!(answer["status"], "queued", "{answer}");
    assert_eq!(answer["run_id"], id.as_str(), "{answer}");
    // A message of the first attempt (had it gone out, and come now) changes nothing.
    let stale: Vec<serde_json::Value> = slugs
        .iter()
        .map(|s| json!({"run_id": id, "slug": s, "attempt": 0}))
        .collect();
    let (status, answer) = invoke("migrate-tenant", &sqs_event(&stale)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    let r = get(&format!("/api/runs/{id}?status=pending")).await;
    assert_eq!(r.body["tenants"].as_array().unwrap().len(), 3, "{}", r.text);
    for slug in &slugs {
        assert_eq!(history_versions(slug).await.len(), 3, "{slug} untouched");
    }
    // The retry's own messages finish the run.
    let fresh = own.receive(slugs.len()).await;
    assert!(fresh.iter().all(|m| m["attempt"] == 1), "{fresh:?}");
    let (status, answer) = invoke("migrate-tenant", &sqs_event(&fresh)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let run = wait_run_end(&id, Duration::from_secs(120)).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["counts"]["migrated"], 3, "{run}");
    assert_invariants(&slugs).await;
}

#[tokio::test]
async fn a_worker_killed_mid_migration_is_finished_by_the_redelivery() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants_on(&mut cleanup, "fw", 1, Some("primary")).await;
    let slug = slugs[0].clone();
    undo_v4(&slug).await;
    // A queue of the test's own: the test hands the message to a worker it can kill.
    let own = OwnQueue::new().await;
    let queue = own.url.clone();
    let (id, mut bodies) = own.plan(std::slice::from_ref(&slug)).await;
    let body = bodies.remove(0);
    assert_eq!(body, json!({"run_id": id, "slug": slug, "attempt": 0}));
    let event = sqs_event(&[body]);

    // The tenant's table is locked: V4 waits (and retries) until the worker is killed.
    let tenant = connect_tenant(&slug).await;
    tenant
        .batch_execute("BEGIN; LOCK TABLE activity_log IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let worker_api = runtime::RuntimeApi::start(event.clone()).await;
    let mut worker = worker_api.spawn("migrate-tenant", &[("MIGRATE_QUEUE_URL", &queue)]);
    let waiting = eventually(Duration::from_secs(30), || async {
        lock_waiters("primary", "migrate-tenant", "").await > 0
    })
    .await;
    assert!(waiting, "the worker's migration waits on the table");
    worker.kill().await.expect("SIGKILL migrate-tenant");
    await_cancelled("primary", "migrate-tenant").await;
    tenant.batch_execute("ROLLBACK").await.unwrap();
    drop(tenant);
    let r = get(&format!("/api/runs/{id}")).await;
    assert_eq!(r.body["status"], "running", "{}", r.text);
    assert_eq!(r.body["tenants"][0]["status"], "pending", "{}", r.text);

    // SQS delivers the message again (here: straight to the worker under watch).
    let redelivered = eventually(Duration::from_secs(30), || {
        let event = event.clone();
        async move {
            let (status, answer) = invoke("migrate-tenant", &event).await;
            status == StatusCode::OK && answer["batchItemFailures"] == json!([])
        }
    })
    .await;
    assert!(redelivered, "the redelivery is done with");
    let run = wait_run_end(&id, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run_tenant(&run, &slug)["status"], "migrated", "{run}");
    assert_eq!(history_versions(&slug).await, all_versions());
    assert_invariants(&slugs).await;
}
