//! A PostgreSQL server that does not answer: stopped, or frozen (SIGSTOP) mid-run. What needs
//! it is a quick 503 (every route, when it is the registry's server), migrate-all ends with its
//! report and defers the tenants it could not reach, and once the server is back the same
//! functions answer and the next run catches up.

use super::*;

/// Makes sure every function has a warm instance holding a cached connection: under cargo
/// lambda watch, a function's first request starts its instances (`cargo run` each, one after
/// the other), which can take seconds that are the emulator's, not ours.
async fn warm_every_function(slug: &str) {
    for _ in 0..3 {
        get("/api/tenants?limit=1").await;
        get(&format!("/api/tenants/{slug}")).await;
        delete("/api/tenants/not_a_tenant").await;
        post_raw(b"{}").await;
    }
}

/// One request on every route (`slug` for the one-tenant routes), with how long each took.
async fn every_route(slug: &str) -> Vec<(String, Reply, Duration)> {
    let create = json!({"name": "Outage", "slug": unique_slug("fout")});
    let mut answers = Vec::new();
    for (method, path, body) in [
        (Method::GET, "/api/tenants".to_owned(), None),
        (Method::GET, format!("/api/tenants/{slug}"), None),
        (
            Method::POST,
            "/api/tenants".to_owned(),
            Some(create.to_string().into_bytes()),
        ),
        (Method::DELETE, format!("/api/tenants/{slug}"), None),
    ] {
        let started = Instant::now();
        let r = request(method.clone(), &path, body).await;
        answers.push((format!("{method} {path}"), r, started.elapsed()));
    }
    answers
}

/// Every answer a 503 `SERVICE_UNAVAILABLE` within 5 s, with nothing internal in it.
fn assert_quick_503s(answers: &[(String, Reply, Duration)]) {
    for (what, r, took) in answers {
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: {}",
            r.text
        );
        assert!(*took < Duration::from_secs(5), "{what} took {took:?}");
        r.assert_json_with_request_id();
        assert_eq!(r.error_code(), "SERVICE_UNAVAILABLE");
        r.assert_no_internals();
    }
}

#[tokio::test]
async fn postgres_down_is_a_quick_503_and_the_functions_recover() {
    let mut cleanup = Cleanup::new();
    let slugs = create_tenants(&mut cleanup, "fdown", 1).await;
    warm_every_function(&slugs[0]).await;
    stack(&["pg-stop"]);
    let result = std::panic::AssertUnwindSafe(async {
        assert_quick_503s(&every_route(&slugs[0]).await);
    });
    let outcome = futures_util::FutureExt::catch_unwind(result).await;
    stack(&["pg-start"]);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    // Back up: the same sandboxes answer again, by themselves.
    assert!(
        eventually(Duration::from_secs(10), || async {
            get("/api/tenants?limit=1").await.status == StatusCode::OK
        })
        .await,
        "the functions recover once PostgreSQL is back"
    );
    let more = create_tenants(&mut cleanup, "fdown2", 1).await;
    assert_invariants(&[slugs, more].concat()).await;
}

/// Freezes PostgreSQL (SIGSTOP of the postmaster and every backend) until dropped, even when
/// the test panics.
struct Frozen;

impl Frozen {
    fn now() -> Frozen {
        stack(&["pg-freeze"]);
        Frozen
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        stack(&["pg-thaw"]);
    }
}

#[tokio::test]
async fn a_frozen_server_is_a_quick_503_and_migrate_all_ends_with_a_report() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    // On the frozen server: all of them, in the registry's order.
    let slugs = create_tenants_on(&mut cleanup, "ffrz", 5, Some("primary")).await;
    for slug in &slugs {
        undo_to_v1(slug).await;
    }
    warm_every_function(&slugs[0]).await;
    // A run caught mid-fleet: it has migrated the first two tenants and waits for the third's
    // lock (held here) when the server freezes.
    let lock = hold_tenant_lock(&slugs[2]).await;
    let event = json!({"slugs": slugs, "concurrency": 1});
    let run = tokio::spawn(async move { invoke_migrate_all(&event).await });
    let caught = eventually(Duration::from_secs(30), || async {
        history_versions(&slugs[1]).await == all_versions()
    })
    .await;
    assert!(caught, "the run migrated the first tenants");

    let frozen = Frozen::now();
    let frozen_at = Instant::now();
    let answers = every_route(&slugs[0]).await;
    let (status, error) = run.await.expect("the run answered");
    let run_took = frozen_at.elapsed();
    drop(frozen);
    drop(lock);

    assert_quick_503s(&answers);
    // The run did not hang on the frozen server: it ended with its report, the tenants it
    // could not reach named as failed, the first two as migrated.
    assert!(
        run_took < Duration::from_secs(20),
        "the run took {run_took:?} after the freeze"
    );
    // Deferred, not failed (nothing is wrong with their migrations); the invocation fails all
    // the same: the registry went away, its outcomes may not be recorded.
    assert!(!status.is_success(), "{error}");
    assert_eq!(error["errorType"], "DatabaseUnavailable", "{error}");
    let message = error["errorMessage"].as_str().unwrap();
    assert!(message.contains("0 of 5 tenants failed"), "{message}");
    assert!(message.contains("migrated 2"), "{message}");
    assert!(message.contains("deferred 3"), "{message}");
    for leak in ["127.0.0.1", "password", "postgres://"] {
        assert!(!message.contains(leak), "{message}");
    }

    // Thawed: the same functions answer again by themselves, and the next run catches up.
    assert!(
        eventually(Duration::from_secs(15), || async {
            get("/api/tenants?limit=1").await.status == StatusCode::OK
                && get(&format!("/api/tenants/{}", slugs[0])).await.status == StatusCode::OK
        })
        .await,
        "the functions recover once PostgreSQL answers again"
    );
    let (status, report) = invoke_migrate_all(&json!({"slugs": slugs})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["counts"]["migrated"], 3, "{report}");
    let more = create_tenants(&mut cleanup, "ffrz2", 1).await;
    assert_invariants(&[slugs, more].concat()).await;
}

#[tokio::test]
async fn a_stopped_server_fails_only_its_own_tenants_and_the_next_run_catches_up() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let on_primary = create_tenants_on(&mut cleanup, "fsec_p", 2, Some("primary")).await;
    let on_secondary = create_tenants_on(&mut cleanup, "fsec_s", 2, Some("secondary")).await;
    let all = [on_primary.clone(), on_secondary.clone()].concat();
    for slug in &all {
        undo_to_v1(slug).await;
    }
    let created = vec![
        cleanup.add(&unique_slug("fsec_new")),
        cleanup.add(&unique_slug("fsec_new")),
    ];

    stack(&["pg2-stop"]);
    let result = std::panic::AssertUnwindSafe(async {
        // The registry answers: a tenant of the stopped server, and the servers.
        let one = get(&format!("/api/tenants/{}", on_secondary[0])).await;
        assert_eq!(one.status, StatusCode::OK, "{}", one.text);
        assert_eq!(one.body["server"], "secondary");
        let servers = get("/api/servers").await;
        assert_eq!(servers.status, StatusCode::OK, "{}", servers.text);
        // New tenants go to the server that answers.
        for slug in &created {
            let r = post_tenant(&json!({"name": "While down", "slug": slug})).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            assert_eq!(r.body["server"], "primary", "{}", r.text);
        }
        // Asked for by name, the stopped server is a 503 that makes nothing.
        let pinned = unique_slug("fsec_pin");
        let r =
            post_tenant(&json!({"name": "Pinned", "slug": pinned, "server": "secondary"})).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
        r.assert_no_internals();
        assert_eq!(registry_row(&pinned).await, None);
        // A delete of its tenant is a 503 too, and changes nothing.
        let d = delete(&format!("/api/tenants/{}", on_secondary[1])).await;
        assert_eq!(d.status, StatusCode::SERVICE_UNAVAILABLE, "{}", d.text);
        assert_eq!(
            registry_row(&on_secondary[1]).await,
            Some(("active".into(), 1))
        );

        // migrate-all migrates primary's tenants and defers the secondary's (a server down
        // halts nothing and fails no migration); the invocation names the server.
        let (status, error) = invoke_migrate_all(&json!({"slugs": all})).await;
        assert!(!status.is_success(), "{error}");
        assert_eq!(error["errorType"], "ServerUnreachable", "{error}");
        let message = error["errorMessage"].as_str().unwrap();
        assert!(message.contains("Servers unreachable"), "{message}");
        assert!(message.contains("0 of 4 tenants failed"), "{message}");
        assert!(message.contains("deferred 2"), "{message}");
        let id = message
            .split("; run ")
            .nth(1)
            .and_then(|rest| rest.get(..36))
            .expect("the message names its run");
        let run = get(&format!("/api/runs/{id}")).await.body;
        for slug in &on_secondary {
            let row = run_tenant(&run, slug);
            assert_eq!(row["status"], "deferred", "{run}");
            assert!(
                row["error"]
                    .as_str()
                    .unwrap()
                    .contains("server 'secondary' unreachable"),
                "{run}"
            );
        }
        for leak in ["127.0.0.1", "5435", "password", "dbtools_admin"] {
            assert!(!message.contains(leak), "{message}");
        }
        for slug in &on_primary {
            assert_eq!(registry_row(slug).await, Some(("active".into(), latest())));
            assert_eq!(history_versions(slug).await, all_versions());
        }
        for slug in &on_secondary {
            assert_eq!(registry_row(slug).await, Some(("active".into(), 1)));
        }
    });
    let outcome = futures_util::FutureExt::catch_unwind(result).await;
    stack(&["pg2-start"]);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }

    // Started again: the next run catches up, and the secondary takes tenants again.
    let (status, report) = invoke_migrate_all(&json!({"slugs": all})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["counts"]["migrated"], 2, "{report}");
    for slug in &on_secondary {
        assert_eq!(report_row(&report, slug).unwrap()["server"], "secondary");
        assert_eq!(history_versions(slug).await, all_versions());
    }
    let again = create_tenants_on(&mut cleanup, "fsec_back", 1, Some("secondary")).await;
    assert_invariants(&[all, created, again].concat()).await;
}
