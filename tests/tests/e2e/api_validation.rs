use e2e::*;
use reqwest::StatusCode;

/// Asserts a 400 naming `fields`, and that nothing was created for `slug`.
async fn assert_rejected(body: &[u8], fields: &[&str], slug: Option<&str>) -> Reply {
    let r = post_raw(body).await;
    let shown = String::from_utf8_lossy(body);
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{shown}: {}", r.text);
    r.assert_json_with_request_id();
    assert_eq!(r.error_code(), "VALIDATION_ERROR", "{shown}");
    assert_eq!(r.detail_fields(), fields, "{shown}: {}", r.text);
    assert!(r.body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    r.assert_no_internals();
    if let Some(slug) = slug {
        assert!(
            !database_exists(&database_name(slug)).await,
            "no database for {slug}"
        );
        assert_eq!(registry_row(slug).await, None, "no registry row for {slug}");
    }
    r
}

#[tokio::test]
async fn every_slug_rule_is_a_400_that_names_the_rule() {
    let long = format!("a{}", "b".repeat(48));
    for (slug, rule) in [
        ("ab", "between 3 and 48"),
        (long.as_str(), "between 3 and 48"),
        ("", "between 3 and 48"),
        ("1abc", "start with a lowercase letter"),
        ("_abc", "start with a lowercase letter"),
        ("Abc", "start with a lowercase letter"),
        ("abC", "only lowercase letters"),
        ("ab-c", "only lowercase letters"),
        ("ab c", "only lowercase letters"),
        ("ab\"; DROP DATABASE dbtools; --", "only lowercase letters"),
        ("abé", "only lowercase letters"),
    ] {
        let body = json!({"name": "Valid Name", "slug": slug}).to_string();
        let r = assert_rejected(body.as_bytes(), &["slug"], None).await;
        assert_eq!(r.body["error"]["message"], "Invalid slug format");
        let message = r.body["error"]["details"][0]["message"].as_str().unwrap();
        assert!(message.contains(rule), "{slug:?}: {message}");
    }
    // The injection attempt changed nothing.
    assert!(database_exists("dbtools").await);
}

#[tokio::test]
async fn names_are_validated() {
    let slug = unique_slug("nm");
    for name in [
        json!(""),
        json!("   "),
        json!("x".repeat(201)),
        json!("bad\nname"),
        json!("nul\u{0}"),
    ] {
        let body = json!({"name": name, "slug": slug}).to_string();
        assert_rejected(body.as_bytes(), &["name"], Some(&slug)).await;
    }
}

#[tokio::test]
async fn missing_null_and_wrongly_typed_fields_are_named() {
    let slug = unique_slug("ty");
    let cases: Vec<(serde_json::Value, Vec<&str>)> = vec![
        (json!({"slug": slug}), vec!["name"]),
        (json!({"name": "A"}), vec!["slug"]),
        (json!({}), vec!["name", "slug"]),
        (json!({"name": null, "slug": slug}), vec!["name"]),
        (json!({"name": "A", "slug": null}), vec!["slug"]),
        (json!({"name": 42, "slug": slug}), vec!["name"]),
        (json!({"name": "A", "slug": ["acme"]}), vec!["slug"]),
        (
            json!({"name": {"x": 1}, "slug": true}),
            vec!["name", "slug"],
        ),
        (
            json!({"name": "A", "slug": slug, "plan": "pro"}),
            vec!["plan"],
        ),
        (
            json!({"name": "A", "slug": slug, "id": "x", "status": "active"}),
            vec!["id", "status"],
        ),
    ];
    for (body, fields) in cases {
        assert_rejected(body.to_string().as_bytes(), &fields, Some(&slug)).await;
    }
}

#[tokio::test]
async fn bodies_that_are_not_a_json_object_are_400() {
    let slug = unique_slug("js");
    let valid_inside = format!("{{\"name\": \"A\", \"slug\": \"{slug}\"");
    for body in [
        valid_inside.as_bytes().to_vec(), // truncated JSON
        b"not json".to_vec(),
        b"".to_vec(), // empty body
        b"   ".to_vec(),
        b"[]".to_vec(),
        b"\"acme\"".to_vec(),
        b"null".to_vec(),
    ] {
        assert_rejected(&body, &["body"], Some(&slug)).await;
    }
    // Invalid UTF-8 bytes in an otherwise valid body. Sent as binary: `cargo lambda watch`
    // itself answers 500, before any function runs, to a non-UTF-8 body labelled with a
    // textual content type (see the README); the function handles both encodings.
    let mut one = format!("{{\"name\": \"A\", \"slug\": \"{slug}\"}}").into_bytes();
    one[11] = 0xff;
    let mut two = format!("{{\"name\": \"Ab\", \"slug\": \"{slug}\"}}").into_bytes();
    two.splice(12..12, [0xc3, 0x28]);
    for bytes in [one, two] {
        let r = request_as(
            reqwest::Method::POST,
            "/api/tenants",
            Some(bytes),
            "application/octet-stream",
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        r.assert_json_with_request_id();
        assert_eq!(r.detail_fields(), ["body"]);
        assert_eq!(
            r.body["error"]["message"],
            "Request body is not valid UTF-8"
        );
        assert!(!database_exists(&database_name(&slug)).await);
    }
}

#[tokio::test]
async fn a_body_over_64_kib_is_413() {
    let slug = unique_slug("big");
    let body = json!({"name": "x".repeat(70 * 1024), "slug": slug}).to_string();
    let r = post_raw(body.as_bytes()).await;
    assert_eq!(
        r.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        &r.text[..r.text.len().min(300)]
    );
    r.assert_json_with_request_id();
    assert_eq!(r.error_code(), "PAYLOAD_TOO_LARGE");
    assert!(!database_exists(&database_name(&slug)).await);
    assert_eq!(registry_row(&slug).await, None);

    // Just under the limit is judged on its content (a too-long name), not its size.
    let pad = 64 * 1024 - 200;
    let body = json!({"name": "x".repeat(pad), "slug": slug}).to_string();
    assert!(body.len() <= 64 * 1024);
    assert_rejected(body.as_bytes(), &["name"], Some(&slug)).await;
}
