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
