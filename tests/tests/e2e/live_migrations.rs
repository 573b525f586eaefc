//! Migrations that meet a busy tenant: the lock-timeout ladder (short lock waits, many
//! retries, then deferred), and the migration built
//! concurrently outside a transaction (tenant migration V4: a column and
//! `CREATE INDEX CONCURRENTLY`).

use std::time::{Duration, Instant};

use e2e::*;
use serde_json::json;
use tokio_postgres::Client;

/// The index V4 builds concurrently.
const INDEX: &str = "activity_log_actor_idx";

/// `Some(valid)` when the tenant has V4's index.
async fn index_state(slug: &str) -> Option<bool> {
    connect_tenant(slug)
        .await
        .query_opt(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname = $1",
            &[&INDEX],
        )
        .await
        .expect("read pg_index")
        .map(|r| r.get(0))
}

async fn has_column(slug: &str) -> bool {
    connect_tenant(slug)
        .await
        .query_opt(
            "SELECT 1 FROM information_schema.columns \
             WHERE table_name = 'activity_log' AND column_name = 'actor_id'",
            &[],
        )
        .await
        .expect("read the columns")
        .is_some()
}

/// A transaction of the tenant's application, left open: it holds `ACCESS SHARE` on
/// activity_log (what a long report does), so a migration that needs the table exclusively
/// waits for it.
async fn hold_table(slug: &str) -> Client {
    let client = connect_tenant(slug).await;
    client
        .batch_execute("BEGIN; SELECT count(*) FROM activity_log")
        .await
        .expect("hold activity_log");
    client
}

#[tokio::test]
async fn a_busy_tenant_gives_up_after_its_retries_without_stalling_its_queries() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants(&mut cleanup, "lm_busy", 2).await;
    let (busy, calm) = (slugs[0].clone(), slugs[1].clone());
    for slug in &slugs {
        undo_v4(slug).await;
    }
    let holder = hold_table(&busy).await;

    // The application keeps writing while the run waits for the table: each write waits
    // behind the migration's lock request for at most one rung of the ladder (100 ms, then
    // 200 ms: make dev's defaults), then goes on.
    let app = connect_tenant(&busy).await;
    // No canary wave: the busy tenant is the oldest, and the point is that the other goes on.
    let event = json!({"slugs": [busy, calm], "canary": 0});
    let run = tokio::spawn(async move {
        let started = Instant::now();
        let outcome = invoke_migrate_all(&event).await;
        (outcome, started.elapsed())
    });
    let mut slowest = Duration::ZERO;
    let mut writes = 0;
    // Whether a session (the migration's lock request) was seen waiting for a lock, and how
    // often the database was looked at.
    let (mut queued, mut samples) = (0i64, 0);
    let server = tenant_server(&busy).await.expect("placed");
    let watcher = connect_on(&server, &database_name(&busy)).await;
    while !run.is_finished() {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        queued = queued.max(waiting);
        samples += 1;
        let t = Instant::now();
        app.execute(
            "INSERT INTO activity_log (action) VALUES ('app write')",
            &[],
        )
        .await
        .expect("an application write while the migration waits");
        slowest = slowest.max(t.elapsed());
        writes += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ((status, report), took) = run.await.unwrap();
    // A busy tenant is not a failed migration: deferred, and the run (and the invocation)
    // did not fail over it.
    assert!(status.is_success(), "{report}");
    assert_eq!(report["status"], "incomplete", "{report}");
    assert_eq!(report["counts"]["deferred"], 1, "{report}");
    assert_eq!(report["counts"]["failed"], 0, "{report}");
    let row = report_row(&report, &busy).unwrap();
    assert_eq!(row["status"], "deferred", "{report}");
    let message = row["error"].as_str().unwrap();
    // Many short attempts (the first and twenty retries), not a few long ones.
    assert!(
        message.contains("migration V4__activity_log_actor gave up waiting for a lock")
            && message.contains("21 attempts"),
        "{message}"
    );
    // 21 waits of at most 200 ms and jittered pauses of at most 750 ms: not a wait per
    // statement timeout.
    assert!(took < Duration::from_secs(30), "the run took {took:?}");
    assert!(
        writes > 10 && samples > 10,
        "{writes} writes, {samples} samples"
    );
    // The migration's lock request was seen waiting (the writes met it)...
    assert!(queued >= 1, "nothing ever waited for a lock");
    // ...and no write waited behind it for much longer than one rung (200 ms; the margin is
    // for a loaded machine, well under the fixed 2 s lock timeout this ladder replaced).
    assert!(
        slowest < Duration::from_millis(800),
        "an application write waited {slowest:?} behind the migration"
    );
    // The busy tenant is as it was; the other one migrated meanwhile.
    assert_eq!(history_versions(&busy).await, vec![1, 2, 3]);
    assert!(!has_column(&busy).await);
    assert_eq!(index_state(&busy).await, None);
    assert_eq!(history_versions(&calm).await, all_versions());
    assert_eq!(index_state(&calm).await, Some(true));

    // Once the application's transaction ends, the next run migrates it.
    holder.batch_execute("COMMIT").await.unwrap();
    let (status, report) = invoke_migrate_all(&json!({"slugs": [busy]})).await;
    assert!(status.is_success(), "{report}");
    assert_eq!(report_row(&report, &busy).unwrap()["status"], "migrated");
    assert_eq!(history_versions(&busy).await, all_versions());
    assert_eq!(index_state(&busy).await, Some(true));
    assert_eq!(registry_row(&busy).await, Some(("active".into(), latest())));
}

#[tokio::test]
async fn a_concurrent_index_applies_like_any_migration_and_an_interrupted_build_is_repaired() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    // On primary: the tenant lock lives in the registry's database on the same cluster, and
    // the concurrent build must not wait for it.
    let slug = create_tenants_on(&mut cleanup, "lm_cic", 1, Some("primary")).await[0].clone();
    // A new tenant has V4 from the template, its index valid, its history like any other.
    assert_eq!(history_versions(&slug).await, all_versions());
    assert_eq!(index_state(&slug).await, Some(true));
    let template_row = connect_tenant(&slug)
        .await
        .query_one(
            "SELECT name, checksum FROM refinery_schema_history WHERE version = 4",
            &[],
        )
        .await
        .unwrap();
    let (name, checksum): (String, String) = (template_row.get(0), template_row.get(1));
    assert_eq!(name, "activity_log_actor");

    // A snapshot older than the build, in the tenant's database (a long report in repeatable
    // read): the concurrent build waits for it, gives up at the lock timeout, every attempt,
    // and leaves its index INVALID, as a build cut short does.
    undo_v4(&slug).await;
    let reader = connect_tenant(&slug).await;
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM settings")
        .await
        .unwrap();
    let (status, report) = invoke_migrate_all(&json!({"slugs": [slug]})).await;
    assert!(status.is_success(), "{report}");
    let row = report_row(&report, &slug).unwrap();
    assert_eq!(row["status"], "deferred", "{report}");
    let message = row["error"].as_str().unwrap();
    assert!(message.contains("gave up waiting for a lock"), "{message}");
    assert_eq!(
        index_state(&slug).await,
        Some(false),
        "an invalid index is left"
    );
    assert!(
        has_column(&slug).await,
        "the column came first, in its own statement"
    );
    assert_eq!(history_versions(&slug).await, vec![1, 2, 3]);

    // The reader gone, the next run drops the invalid index and builds it again.
    reader.batch_execute("COMMIT").await.unwrap();
    let (status, report) = invoke_migrate_all(&json!({"slugs": [slug]})).await;
    assert!(status.is_success(), "{report}");
    let row = report_row(&report, &slug).unwrap();
    assert_eq!(row["status"], "migrated", "{report}");
    assert_eq!(row["applied"], json!([4]), "{report}");
    assert_eq!(index_state(&slug).await, Some(true));
    // Recorded as refinery records it: verify reads the history and finds it released.
    // applied_on as refinery writes it: RFC 3339, just now.
    let history = connect_tenant(&slug)
        .await
        .query_one(
            "SELECT name, checksum, \
                    applied_on::timestamptz BETWEEN now() - interval '5 minutes' AND now() \
             FROM refinery_schema_history WHERE version = 4",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(history.get::<_, String>(0), name);
    assert_eq!(history.get::<_, String>(1), checksum);
    assert!(
        history.get::<_, bool>(2),
        "applied_on is not a recent RFC 3339 time"
    );
    let (status, report) = invoke_migrate_all(&json!({"slugs": [slug], "verify": true})).await;
    assert!(status.is_success(), "{report}");
    assert_eq!(report_row(&report, &slug).unwrap()["status"], "up_to_date");
    assert_eq!(report_row(&report, &slug).unwrap()["verified"], true);
}
