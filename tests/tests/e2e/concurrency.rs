use e2e::*;
use futures_util::future::join_all;
use reqwest::StatusCode;

#[tokio::test]
async fn concurrent_posts_of_one_slug_give_one_201_and_409s() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = cleanup.add(&unique_slug("race"));
    let replies = join_all((0..8).map(|i| {
        let body = json!({"name": format!("Racer {i}"), "slug": slug});
        async move { post_tenant(&body).await }
    }))
    .await;
    let created: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    let conflicts = replies
        .iter()
        .filter(|r| r.status == StatusCode::CONFLICT)
        .count();
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(created.len(), 1, "{statuses:?}");
    assert_eq!(conflicts, 7, "{statuses:?}");
    // The winner's database is intact and fully migrated.
    assert_eq!(databases_like(&slug).await, [database_name(&slug)]);
    assert_eq!(registry_row(&slug).await, Some(("active".into(), latest())));
    let one = get(&format!("/api/tenants/{slug}")).await;
    assert_eq!(one.body["id"], created[0].body["id"]);
    let tables: i64 = connect_tenant(&slug)
        .await
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('settings', 'activity_log')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 2);
}

#[tokio::test]
async fn concurrent_posts_of_distinct_slugs_all_succeed() {
    let mut cleanup = Cleanup::new();
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let prefix = unique_slug("many");
    let slugs: Vec<String> = (0..8)
        .map(|i| cleanup.add(&format!("{prefix}_{i}")))
        .collect();
    let replies = join_all(slugs.iter().map(|slug| {
        let body = json!({"name": slug.to_uppercase(), "slug": slug});
        async move { post_tenant(&body).await }
    }))
    .await;
    for (slug, r) in slugs.iter().zip(&replies) {
        assert_eq!(r.status, StatusCode::CREATED, "{slug}: {}", r.text);
        assert_eq!(registry_row(slug).await, Some(("active".into(), latest())));
    }
    assert_eq!(databases_like(&prefix).await.len(), 8);
}
