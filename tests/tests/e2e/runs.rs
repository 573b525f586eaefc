//! The run ledger: each migrate-all run and each tenant's outcome, through `GET /api/runs`.

use e2e::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The newest run in the ledger.
async fn newest_run() -> Value {
    let r = get("/api/runs?limit=1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["runs"][0].clone()
}

#[tokio::test]
async fn each_run_and_each_tenants_outcome_are_in_the_ledger() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let on_primary = create_tenants_on(&mut cleanup, "rl_p", 2, Some("primary")).await;
    let on_secondary = create_tenants_on(&mut cleanup, "rl_s", 1, Some("secondary")).await;
    let (behind, current, broken) = (
        on_primary[0].clone(),
        on_primary[1].clone(),
        on_secondary[0].clone(),
    );
    undo_to_v1(&behind).await;
    undo_to_v1(&broken).await;
    // V2 meets a view of its table's name: the tenant fails, at version 1.
    connect_tenant(&broken)
        .await
        .batch_execute("CREATE VIEW activity_log AS SELECT 1 AS squatter")
        .await
        .unwrap();
    let mut slugs = vec![behind.clone(), current.clone(), broken.clone()];
    slugs.sort();
    let before = newest_run().await;

    let (status, answer) = invoke_migrate_all(&json!({"slugs": slugs})).await;
    assert!(!status.is_success(), "{answer}");
    let run = newest_run().await;
    assert_ne!(run["id"], before["id"], "a new run is recorded");
    let id = run["id"].as_str().unwrap().to_owned();
    assert!(
        answer["errorMessage"].as_str().unwrap().contains(&id),
        "the answer names the run: {answer}"
    );
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"], "TenantMigrationsFailed", "{run}");
    assert_eq!(run["options"]["slugs"], json!(slugs), "{run}");
    assert_eq!(run["latest_version"], latest());
    assert!(run["finished_at"].is_string(), "{run}");
    assert_eq!(
        (
            &run["counts"]["migrated"],
            &run["counts"]["up_to_date"],
            &run["counts"]["failed"]
        ),
        (&json!(1), &json!(1), &json!(1)),
        "{run}"
    );

    // The run, its tenants by slug, each with its server and outcome.
    let r = get(&format!("/api/runs/{id}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.assert_json_with_request_id();
    assert_eq!(r.body["id"], id.as_str());
    let tenants = r.body["tenants"].as_array().unwrap();
    let listed: Vec<&str> = tenants
        .iter()
        .map(|t| t["slug"].as_str().unwrap())
        .collect();
    assert_eq!(listed, slugs.iter().map(String::as_str).collect::<Vec<_>>());
    let row = |slug: &str| tenants.iter().find(|t| t["slug"] == slug).unwrap().clone();
    let b = row(&behind);
    assert_eq!(
        (
            &b["status"],
            &b["server"],
            &b["from_version"],
            &b["to_version"]
        ),
        (
            &json!("migrated"),
            &json!("primary"),
            &json!(1),
            &json!(latest())
        ),
        "{b}"
    );
    assert_eq!(row(&current)["status"], "up_to_date");
    let f = row(&broken);
    assert_eq!(
        (&f["status"], &f["server"]),
        (&json!("failed"), &json!("secondary"))
    );
    assert!(f["error"].as_str().unwrap().contains("V2"), "{f}");
    assert!(f["finished_at"].is_string(), "{f}");
    r.assert_no_internals();

    // Filtered by status, and paged.
    let r = get(&format!("/api/runs/{id}?status=failed")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["tenants"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["tenants"][0]["slug"], broken.as_str());
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let path = match &cursor {
            None => format!("/api/runs/{id}?limit=1"),
            Some(c) => format!("/api/runs/{id}?limit=1&cursor={c}"),
        };
        let r = get(&path).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        paged.extend(
            r.body["tenants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["slug"].as_str().unwrap().to_owned()),
        );
        cursor = r.body["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(paged, slugs);

    // What a client can get wrong: a clear 400 or 404, never a 500.
    for (path, field) in [
        (format!("/api/runs/{id}?status=done"), "status"),
        (format!("/api/runs/{id}?limit=0"), "limit"),
        (format!("/api/runs/{id}?cursor=bm90LWEtY3Vyc29y"), "cursor"),
        (format!("/api/runs/{id}?verbose=1"), "verbose"),
        ("/api/runs?limit=501".to_owned(), "limit"),
        ("/api/runs?status=failed".to_owned(), "status"),
        ("/api/runs?cursor=x".to_owned(), "cursor"),
    ] {
        let r = get(&path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text);
        assert_eq!(r.detail_fields(), [field], "{path}");
    }
    for path in [
        format!("/api/runs/{}", uuid::Uuid::new_v4()),
        "/api/runs/not-a-run".to_owned(),
    ] {
        let r = get(&path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text);
    }

    // Fixed, the next run completes; the ledger lists it first, then the failed one.
    connect_tenant(&broken)
        .await
        .batch_execute("DROP VIEW activity_log")
        .await
        .unwrap();
    let (status, report) = invoke_migrate_all(&json!({"slugs": slugs})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let r = get("/api/runs?limit=1").await;
    let next = r.body["next_cursor"].as_str().unwrap().to_owned();
    assert_eq!(r.body["runs"][0]["id"], report["run_id"]);
    assert_eq!(r.body["runs"][0]["status"], "completed");
    let older = get(&format!("/api/runs?limit=1&cursor={next}")).await;
    assert_eq!(older.status, StatusCode::OK, "{}", older.text);
    assert_eq!(older.body["runs"][0]["id"], id.as_str());

    // A dry run changes nothing, the ledger included.
    let (status, report) = invoke_migrate_all(&json!({"slugs": slugs, "dry_run": true})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_ne!(newest_run().await["id"], report["run_id"]);
}
