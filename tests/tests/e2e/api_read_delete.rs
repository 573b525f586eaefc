use e2e::*;
use reqwest::StatusCode;

#[tokio::test]
async fn delete_is_soft_and_repeatable() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("del"));
    let created = post_tenant(&json!({"name": "To Delete", "slug": slug})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);

    let first = delete(&format!("/api/tenants/{slug}")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    first.assert_json_with_request_id();
    assert_eq!(first.body["status"], "deleted");
    assert_eq!(first.body["id"], created.body["id"]);
    assert!(
        first.body["deleted_at"]
            .as_str()
            .is_some_and(|d| d.ends_with('Z')),
        "{}",
        first.text
    );

    // Soft: the database and its data are kept.
    assert!(database_exists(&database_name(&slug)).await);
    assert_eq!(
        registry_row(&slug).await,
        Some(("deleted".into(), latest()))
    );

    // Again: the same answer, deleted_at unchanged.
    let second = delete(&format!("/api/tenants/{slug}")).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    assert_eq!(second.body, first.body);

    // GET shows it deleted, and the status filter finds it.
    let one = get(&format!("/api/tenants/{slug}")).await;
    assert_eq!(one.body, first.body);
}

#[tokio::test]
async fn unknown_slugs_are_404() {
    for path in [
        "/api/tenants/no_such_tenant_here",
        "/api/tenants/NOT-A-SLUG",
        "/api/tenants/x",
    ] {
        let g = get(path).await;
        assert_eq!(g.status, StatusCode::NOT_FOUND, "GET {path}: {}", g.text);
        g.assert_json_with_request_id();
        assert_eq!(g.error_code(), "NOT_FOUND");
        let d = delete(path).await;
        assert_eq!(d.status, StatusCode::NOT_FOUND, "DELETE {path}: {}", d.text);
        assert_eq!(d.error_code(), "NOT_FOUND");
        d.assert_no_internals();
    }
}

#[tokio::test]
async fn list_pages_oldest_first_and_filters_by_status() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let prefix = unique_slug("pg");
    let mut slugs = Vec::new();
    for i in 0..3 {
        let slug = cleanup.add(&format!("{prefix}_{i}"));
        let r = post_tenant(&json!({"name": format!("Page {i}"), "slug": slug})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        slugs.push(slug);
    }
    assert_eq!(
        delete(&format!("/api/tenants/{}", slugs[1])).await.status,
        StatusCode::OK
    );

    // Walk every page of size 2 and keep ours: oldest first, each exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/api/tenants?limit=2".to_owned(),
            Some(c) => format!("/api/tenants?limit=2&cursor={c}"),
        };
        let page = get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let tenants = page.body["tenants"].as_array().unwrap();
        assert!(tenants.len() <= 2);
        for t in tenants {
            let s = t["slug"].as_str().unwrap().to_owned();
            if s.starts_with(&prefix) {
                seen.push((s, t["status"].as_str().unwrap().to_owned()));
            }
        }
        pages += 1;
        cursor = page.body["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            assert!(page.body["next_cursor"].is_null());
            break;
        }
        assert!(pages < 10_000, "pagination terminates");
    }
    assert_eq!(
        seen,
        [
            (slugs[0].clone(), "active".to_owned()),
            (slugs[1].clone(), "deleted".to_owned()),
            (slugs[2].clone(), "active".to_owned()),
        ]
    );

    // The status filter.
    let deleted = get("/api/tenants?status=deleted&limit=500").await;
    assert_eq!(deleted.status, StatusCode::OK);
    let all_deleted = deleted.body["tenants"].as_array().unwrap();
    assert!(all_deleted.iter().all(|t| t["status"] == "deleted"));
}

#[tokio::test]
async fn bad_list_queries_are_400() {
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=abc", "limit"),
        ("status=archived", "status"),
        ("cursor=bm90LWEtY3Vyc29y", "cursor"),
        // Well formed, but forged: a date PostgreSQL cannot hold, and one before any tenant.
        (
            "cursor=djE6LTIxMDg2NjgwMzIwMDAwMDAwMTowMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDA",
            "cursor",
        ),
        (
            "cursor=djE6LTE6MDAwMDAwMDAtMDAwMC0wMDAwLTAwMDAtMDAwMDAwMDAwMDAw",
            "cursor",
        ),
        ("order=desc", "order"),
    ] {
        let r = get(&format!("/api/tenants?{query}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.text);
        r.assert_json_with_request_id();
        assert_eq!(r.error_code(), "VALIDATION_ERROR");
        assert_eq!(r.detail_fields(), [field], "{query}");
        r.assert_no_internals();
    }
}

#[tokio::test]
async fn a_delete_that_cannot_get_its_row_in_time_is_a_409_and_changes_nothing() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = create_tenants(&mut cleanup, "busy", 1).await.remove(0);
    // Somebody holds the tenant's row: the delete's UPDATE waits for it until the lock
    // timeout (5 s on the local stack), and answers "busy".
    let holder = registry().await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .query_one("SELECT 1 FROM tenants WHERE slug = $1 FOR UPDATE", &[&slug])
        .await
        .unwrap();
    let r = delete(&format!("/api/tenants/{slug}")).await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.error_code(), "CONFLICT");
    r.assert_no_internals();
    assert_eq!(registry_row(&slug).await, Some(("active".into(), latest())));
    assert_eq!(role_can_login(&database_name(&slug)).await, Some(true));
}

#[tokio::test]
async fn a_refused_admin_secret_is_the_operators_500_not_a_server_down() {
    // A sandbox of its own whose admin secret Secrets Manager refuses to give (scheduled for
    // deletion; as an access denied or a KMS key it may not use would be).
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let secret = format!("dbtools/refused-{id}");
    put_secret(
        &secret,
        &json!({"username": "postgres", "password": "postgres"}),
    )
    .await;
    secrets()
        .await
        .delete_secret()
        .secret_id(&secret)
        .recovery_window_in_days(7)
        .send()
        .await
        .unwrap();
    let api = runtime::RuntimeApi::start(runtime::http_event("GET", "/api/tenants", "", &[])).await;
    let _child = api.spawn("list-tenants", &[("DB_SECRET_ID", secret.as_str())]);
    let answer = api
        .wait_response(std::time::Duration::from_secs(30))
        .await
        .expect("an answer");
    // Not a 503 (retry: the server is away) that would also mark `primary` down in the
    // sandbox: the operator's to fix, with the cause in the log only.
    assert_eq!(answer["statusCode"], 500, "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "INTERNAL_ERROR", "{body}");
    assert!(!answer.to_string().contains(&secret), "{answer}");
}
