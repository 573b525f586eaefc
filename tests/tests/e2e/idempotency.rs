use e2e::*;
use futures_util::future::join_all;
use reqwest::StatusCode;

#[tokio::test]
async fn the_same_key_and_body_replay_the_first_answer() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("idem"));
    let key = format!("signup-{}", uuid::Uuid::new_v4());
    let body = json!({"name": "Idem Corp", "slug": slug});

    let first = post_with_key(&body, &key).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let again = post_with_key(&json!({"slug": slug, "name": " Idem Corp "}), &key).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.body, first.body, "same tenant, same id");

    // Without the key, the same body is a plain conflict.
    assert_eq!(post_tenant(&body).await.status, StatusCode::CONFLICT);

    // Another body with the same key is refused, and changes nothing.
    let other = post_with_key(&json!({"name": "Other", "slug": slug}), &key).await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.text
    );
    other.assert_json_with_request_id();
    assert_eq!(other.error_code(), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(
        get(&format!("/api/tenants/{slug}")).await.body["name"],
        "Idem Corp"
    );
}

#[tokio::test]
async fn concurrent_retries_with_one_key_create_one_tenant() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("idemrace"));
    let key = format!("retry-{}", uuid::Uuid::new_v4());
    let body = json!({"name": "Race", "slug": slug});
    let replies = join_all((0..6).map(|_| post_with_key(&body, &key))).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert!(
        replies.iter().all(|r| r.status == StatusCode::CREATED),
        "{statuses:?}"
    );
    assert!(
        replies
            .iter()
            .all(|r| r.body["id"] == replies[0].body["id"]),
        "one tenant"
    );
    assert_eq!(databases_like(&slug).await, [database_name(&slug)]);
}

#[tokio::test]
async fn a_malformed_key_is_400_and_creates_nothing() {
    let slug = unique_slug("idembad");
    let long = "k".repeat(256);
    for key in ["has space", long.as_str()] {
        let r = post_with_key(&json!({"name": "Bad key", "slug": slug}), key).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        assert_eq!(r.detail_fields(), ["Idempotency-Key"]);
        assert!(!database_exists(&database_name(&slug)).await);
    }
}

/// `POST /api/tenants` through the real create-tenant binary, as API Gateway sends it for a
/// request signed by `caller`: (status, body).
async fn post_as(caller: &str, body: &serde_json::Value, key: &str) -> (u64, serde_json::Value) {
    let event = runtime::http_event_from(
        Some(caller),
        "POST",
        "/api/tenants",
        &body.to_string(),
        &[("idempotency-key", key)],
    );
    let api = runtime::RuntimeApi::start(event).await;
    let _function = api.spawn("create-tenant", &[]);
    let answer = api
        .wait_response(std::time::Duration::from_secs(30))
        .await
        .expect("create-tenant answered");
    let status = answer["statusCode"].as_u64().unwrap_or(0);
    let body = answer["body"]
        .as_str()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn two_callers_may_use_the_same_key_without_colliding() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let key = format!("signup-{}", uuid::Uuid::new_v4());
    let alice = "arn:aws:iam::123456789012:user/alice";
    let bob = "arn:aws:sts::123456789012:assumed-role/signup-app/bob";
    let a = cleanup.add(&unique_slug("idem_alice"));
    let b = cleanup.add(&unique_slug("idem_bob"));
    let body_a = json!({"name": "Alice Corp", "slug": a});
    let body_b = json!({"name": "Bob Corp", "slug": b});

    let (status, first) = post_as(alice, &body_a, &key).await;
    assert_eq!(status, 201, "{first}");
    // Bob's key is his own: another body is a new tenant, not a 422 and not Alice's tenant.
    let (status, other) = post_as(bob, &body_b, &key).await;
    assert_eq!(status, 201, "{other}");
    assert_eq!(other["slug"], b.as_str());
    assert_ne!(other["id"], first["id"]);
    // Each caller's retry replays its own answer.
    let (status, again) = post_as(alice, &body_a, &key).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again, first);
    let (status, mismatch) = post_as(alice, &body_b, &key).await;
    assert_eq!(status, 422, "{mismatch}");
    assert_eq!(mismatch["error"]["code"], "IDEMPOTENCY_KEY_REUSED");
    // And the local API (no principal) is a caller of its own.
    let local = post_with_key(&body_a, &key).await;
    assert_eq!(local.status, StatusCode::CONFLICT, "{}", local.text);
    for slug in [&a, &b] {
        assert_eq!(registry_row(slug).await, Some(("active".into(), latest())));
        assert_eq!(databases_like(slug).await, [database_name(slug)]);
    }
}

#[tokio::test]
async fn a_key_outside_ascii_is_400_through_the_real_binary() {
    // API Gateway hands such a header to the function; cargo lambda watch answers its own 500
    // before any function runs, so this goes through the real binary directly.
    let slug = unique_slug("idemutf");
    let body = json!({"name": "Key", "slug": slug});
    for key in ["ключ", "caf\u{e9}", "tab\there"] {
        let (status, answer) = post_as("arn:aws:iam::123456789012:user/alice", &body, key).await;
        assert_eq!(status, 400, "{key:?}: {answer}");
        assert_eq!(
            answer["error"]["details"][0]["field"], "Idempotency-Key",
            "{answer}"
        );
    }
    assert!(!database_exists(&database_name(&slug)).await);
    assert_eq!(registry_row(&slug).await, None);
}
