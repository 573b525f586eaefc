//! migrate-all through the real binary (the local Lambda Invoke API). Every test here holds
//! the fleet test lock exclusively: two runs at once are a test of their own.
//! The lock lives in their `Cleanup`, which removes their tenants before releasing it.

use e2e::*;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;

fn counts(report: &Value) -> (u64, u64, u64, u64) {
    let c = &report["counts"];
    (
        c["migrated"].as_u64().unwrap(),
        c["up_to_date"].as_u64().unwrap(),
        c["failed"].as_u64().unwrap(),
        c["skipped"].as_u64().unwrap(),
    )
}

/// The report rows whose status is `status`.
fn slugs_with(report: &Value, status: &str) -> Vec<String> {
    report["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == status)
        .map(|t| t["slug"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_current_fleet_migrates_nothing_and_a_second_run_neither() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants(&mut cleanup, "cur", 2).await;

    for run in 0..2 {
        let (status, report) = invoke_migrate_all(&json!({})).await;
        assert_eq!(status, StatusCode::OK, "run {run}: {report}");
        assert_eq!(report["status"], "completed");
        assert_eq!(report["dry_run"], false);
        assert_eq!(report["latest_version"], latest());
        assert!(report["run_id"]
            .as_str()
            .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()));
        assert_eq!(
            report["system"]["applied"],
            json!([]),
            "system database already current"
        );
        // The tenant template of this release is in place, and nothing else was dropped.
        let template = &report["template"];
        assert_eq!(template["ready"], true, "{report}");
        assert!(template["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("dbtools_template_") && n.len() == 42));
        assert_eq!(template["version"], latest());
        assert!(template["error"].is_null());
        assert!(database_exists(template["name"].as_str().unwrap()).await);
        let (migrated, _, failed, _) = counts(&report);
        assert_eq!((migrated, failed), (0, 0), "run {run}: {report}");
        for slug in &slugs {
            let row = report_row(&report, slug).unwrap_or_else(|| panic!("{slug} reported"));
            assert_eq!(row["status"], "up_to_date");
            assert_eq!(
                (row["from_version"].as_i64(), row["to_version"].as_i64()),
                (Some(i64::from(latest())), Some(i64::from(latest())))
            );
            assert_eq!(row["applied"], json!([]));
            assert!(row["error"].is_null());
            assert!(row["duration_ms"].is_u64());
            assert_eq!(history_versions(slug).await, all_versions());
        }
    }
}

#[tokio::test]
async fn lagging_tenants_are_named_by_a_dry_run_then_brought_to_head() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants(&mut cleanup, "lag", 3).await;
    let lagging = &slugs[..2];
    for slug in lagging {
        undo_to_v1(slug).await;
    }

    // Dry run: exactly the lagging tenants, with their pending versions; nothing changes.
    let (status, report) = invoke_migrate_all(&json!({"dry_run": true})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["dry_run"], true);
    let mut pending = slugs_with(&report, "pending");
    pending.sort();
    assert_eq!(pending, lagging, "{report}");
    for slug in lagging {
        assert_eq!(
            report_row(&report, slug).unwrap()["pending"],
            json!(all_versions()[1..])
        );
        assert_eq!(report_row(&report, slug).unwrap()["from_version"], 1);
    }
    assert_eq!(
        report_row(&report, &slugs[2]).unwrap()["status"],
        "up_to_date"
    );
    for slug in lagging {
        assert!(
            !has_table(slug, "activity_log").await,
            "dry run changed nothing"
        );
        assert_eq!(history_versions(slug).await, [1]);
        assert_eq!(registry_row(slug).await, Some(("active".into(), 1)));
    }

    // The real run.
    let (status, report) = invoke_migrate_all(&json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let mut migrated = slugs_with(&report, "migrated");
    migrated.sort();
    assert_eq!(migrated, lagging, "{report}");
    for slug in lagging {
        let row = report_row(&report, slug).unwrap();
        assert_eq!(
            (row["from_version"].as_i64(), row["to_version"].as_i64()),
            (Some(1), Some(i64::from(latest())))
        );
        assert_eq!(row["applied"], json!(all_versions()[1..]));
        assert!(has_table(slug, "activity_log").await);
        assert_eq!(history_versions(slug).await, all_versions());
        assert_eq!(
            registry_row(slug).await,
            Some(("active".into(), latest())),
            "schema_version follows"
        );
    }
}

#[tokio::test]
async fn a_failing_tenant_does_not_stop_the_others_and_is_migrated_once_fixed() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants(&mut cleanup, "flt", 3).await;
    for slug in &slugs {
        undo_to_v1(slug).await;
    }
    let faulty = &slugs[1];
    // A view squatting on the table name V2 creates.
    connect_tenant(faulty)
        .await
        .batch_execute("CREATE VIEW activity_log AS SELECT 1 AS squatter")
        .await
        .unwrap();

    let (status, error) = invoke_migrate_all(&json!({})).await;
    assert!(!status.is_success(), "the run signals failure: {error}");
    assert_eq!(error["errorType"], "TenantMigrationsFailed", "{error}");
    let message = error["errorMessage"].as_str().unwrap();
    assert!(message.starts_with("1 of "), "{message}");
    assert!(
        message.contains(&format!(
            "{faulty} (migration V2__create_activity_log failed:"
        )),
        "{message}"
    );
    assert!(
        message.contains("activity_log"),
        "the reason names the object: {message}"
    );
    for leak in ["127.0.0.1", "password", "postgres://"] {
        assert!(!message.contains(leak), "{message}");
    }
    for slug in [&slugs[0], &slugs[2]] {
        assert!(!message.contains(slug.as_str()), "{message}");
        assert!(
            has_table(slug, "activity_log").await,
            "{slug} migrated despite the failure"
        );
        assert_eq!(registry_row(slug).await, Some(("active".into(), latest())));
    }
    // Left at its last good version.
    assert_eq!(history_versions(faulty).await, [1]);
    assert_eq!(registry_row(faulty).await, Some(("active".into(), 1)));

    // Fault removed: the next run migrates it, and only it.
    connect_tenant(faulty)
        .await
        .batch_execute("DROP VIEW activity_log")
        .await
        .unwrap();
    let (status, report) = invoke_migrate_all(&json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        slugs_with(&report, "migrated"),
        std::slice::from_ref(faulty),
        "{report}"
    );
    assert!(has_table(faulty, "activity_log").await);
    assert_eq!(history_versions(faulty).await, all_versions());
    assert_eq!(
        registry_row(faulty).await,
        Some(("active".into(), latest()))
    );
}

#[tokio::test]
async fn an_edited_released_migration_is_reported_not_skipped() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants(&mut cleanup, "div", 2).await;
    connect_tenant(&slugs[0])
        .await
        .batch_execute("UPDATE refinery_schema_history SET checksum = '12345' WHERE version = 1")
        .await
        .unwrap();
    connect_tenant(&slugs[1])
        .await
        .batch_execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
             VALUES (99, 'from_elsewhere', '2026-01-01T00:00:00Z', '1')",
        )
        .await
        .unwrap();
    // The registry still vouches for both (see the next test): `verify` reads each history.
    let (status, error) = invoke_migrate_all(&json!({"slugs": slugs, "verify": true})).await;
    assert!(!status.is_success(), "{error}");
    let message = error["errorMessage"].as_str().unwrap();
    assert!(message.starts_with("2 of 2 "), "{message}");
    assert!(
        message.contains(&format!(
            "{} (applied migration V1__create_settings differs",
            slugs[0]
        )),
        "{message}"
    );
    assert!(
        message.contains(&format!("{} (applied migration V99", slugs[1])),
        "{message}"
    );
}

#[tokio::test]
async fn the_registry_vouches_for_current_tenants_and_verify_reads_every_database() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants(&mut cleanup, "vch", 2).await;
    let event = json!({"slugs": slugs});
    let verified =
        |report: &Value, slug: &str| report_row(report, slug).unwrap()["verified"].clone();

    // Created from the template: the registry records them at this release's migrations, so a
    // run reports them current without opening their databases.
    let (status, report) = invoke_migrate_all(&event).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    for slug in &slugs {
        assert_eq!(report_row(&report, slug).unwrap()["status"], "up_to_date");
        assert_eq!(verified(&report, slug), false, "{report}");
    }

    // Behind the registry's back, one history is damaged. A verify run opens every database,
    // finds it, and says which.
    let damaged = &slugs[0];
    connect_tenant(damaged)
        .await
        .batch_execute("UPDATE refinery_schema_history SET name = 'renamed' WHERE version = 2")
        .await
        .unwrap();
    let (status, error) = invoke_migrate_all(&json!({"slugs": slugs, "verify": true})).await;
    assert!(!status.is_success(), "{error}");
    let message = error["errorMessage"].as_str().unwrap();
    assert!(message.starts_with("1 of 2 "), "{message}");
    assert!(message.contains(damaged.as_str()), "{message}");
    assert!(!message.contains(slugs[1].as_str()), "{message}");

    // From then on the registry no longer vouches for it: every run opens it and reports it,
    // and still vouches for the other.
    let (status, error) = invoke_migrate_all(&event).await;
    assert!(!status.is_success(), "{error}");
    assert!(
        error["errorMessage"]
            .as_str()
            .unwrap()
            .contains(damaged.as_str()),
        "{error}"
    );

    // Repaired, it is verified once and vouched for again.
    connect_tenant(damaged)
        .await
        .batch_execute(
            "UPDATE refinery_schema_history SET name = 'create_activity_log' WHERE version = 2",
        )
        .await
        .unwrap();
    let (status, report) = invoke_migrate_all(&event).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(verified(&report, damaged), true, "{report}");
    assert_eq!(verified(&report, &slugs[1]), false, "{report}");
    let (status, report) = invoke_migrate_all(&event).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(verified(&report, damaged), false, "{report}");
    assert_eq!(counts(&report), (0, 2, 0, 0), "{report}");
}

#[tokio::test]
async fn deleted_tenants_are_not_touched() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants(&mut cleanup, "ded", 1).await;
    let slug = &slugs[0];
    undo_to_v1(slug).await;
    assert_eq!(
        delete(&format!("/api/tenants/{slug}")).await.status,
        StatusCode::OK
    );

    let (status, report) = invoke_migrate_all(&json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(
        report_row(&report, slug).is_none(),
        "a deleted tenant is not in the run"
    );
    assert!(!has_table(slug, "activity_log").await);
    assert_eq!(history_versions(slug).await, [1]);

    // Named explicitly, it is reported as skipped, still untouched.
    let (status, report) = invoke_migrate_all(&json!({"slugs": [slug]})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report_row(&report, slug).unwrap()["status"], "skipped");
    assert_eq!(counts(&report), (0, 0, 0, 1));
    assert_eq!(history_versions(slug).await, [1]);
}

#[tokio::test]
async fn two_runs_at_once_never_apply_a_migration_twice() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants(&mut cleanup, "two", 4).await;
    for slug in &slugs {
        undo_to_v1(slug).await;
    }
    let event = json!({});
    let runs = join_all((0..2).map(|_| invoke_migrate_all(&event))).await;
    let mut applied_by_runs = 0;
    for (status, report) in &runs {
        assert_eq!(*status, StatusCode::OK, "{report}");
        match report["status"].as_str() {
            Some("already_running") => assert!(report["tenants"].as_array().unwrap().is_empty()),
            Some("completed") => {
                assert_eq!(report["counts"]["failed"], 0, "{report}");
                applied_by_runs += slugs
                    .iter()
                    .filter(|s| report_row(report, s).is_some_and(|r| r["status"] == "migrated"))
                    .count();
            }
            other => panic!("unexpected status {other:?}: {report}"),
        }
    }
    assert_eq!(
        applied_by_runs,
        slugs.len(),
        "each lagging tenant migrated by exactly one run"
    );
    for slug in &slugs {
        assert_eq!(
            history_versions(slug).await,
            all_versions(),
            "{slug}: no migration recorded twice"
        );
        assert_eq!(registry_row(slug).await, Some(("active".into(), latest())));
    }
}

#[tokio::test]
async fn a_tenant_created_during_a_run_ends_at_head() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants(&mut cleanup, "dur", 6).await;
    for slug in &slugs {
        undo_to_v1(slug).await;
    }
    let newcomer = cleanup.add(&unique_slug("newcomer"));
    let body = json!({"name": "Newcomer", "slug": newcomer});
    let event = json!({"concurrency": 1});
    let (run, created) = tokio::join!(invoke_migrate_all(&event), post_tenant(&body));
    assert_eq!(run.0, StatusCode::OK, "{}", run.1);
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(
        registry_row(&newcomer).await,
        Some(("active".into(), latest()))
    );
    assert_eq!(history_versions(&newcomer).await, all_versions());
    for slug in &slugs {
        assert_eq!(history_versions(slug).await, all_versions());
    }
}

#[tokio::test]
async fn bad_events_are_refused_with_a_clear_error() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants(&mut cleanup, "bad", 1).await;
    undo_to_v1(&slugs[0]).await;
    for (event, needle) in [
        (json!({"slugs": ["Not A Slug"]}), "invalid slugs"),
        (
            json!({"concurrency": 0}),
            "concurrency must be from 1 to 64",
        ),
        (
            json!({"concurrency": 1000}),
            "concurrency must be from 1 to 64",
        ),
        (json!({"dry_run": "yes"}), "invalid event"),
        // A typo must never run a real migration of the fleet.
        (json!({"dryRun": true}), "unknown field `dryRun`"),
        (
            json!({"slugs": slugs, "verbose": true}),
            "unknown field `verbose`",
        ),
    ] {
        let (status, error) = invoke_migrate_all(&event).await;
        assert!(!status.is_success(), "{event}: {error}");
        assert_eq!(error["errorType"], "InvalidRequest", "{event}: {error}");
        assert!(
            error["errorMessage"].as_str().unwrap().contains(needle),
            "{event}: {error}"
        );
    }
    // Nothing changed: the lagging tenant is still behind.
    assert_eq!(history_versions(&slugs[0]).await, [1]);
    assert_eq!(registry_row(&slugs[0]).await, Some(("active".into(), 1)));
    // An EventBridge Scheduler event is recognised, and runs as `{}`.
    let (status, report) = invoke_migrate_all(&json!({
        "version": "0", "id": "e1", "detail-type": "Scheduled Event", "source": "aws.scheduler",
        "time": "2026-11-22T03:00:00Z", "region": "us-east-1", "resources": [], "detail": {}
    }))
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed");
    assert_eq!(
        report_row(&report, &slugs[0]).unwrap()["status"],
        "migrated"
    );
}

/// Makes PostgreSQL refuse every login to one database (a `reject` line first in pg_hba.conf)
/// until dropped.
struct LoginRefused {
    hba: String,
    line: String,
}

impl LoginRefused {
    async fn to(database: &str) -> LoginRefused {
        let admin = admin().await;
        let hba: String = admin.query_one("SHOW hba_file", &[]).await.unwrap().get(0);
        let line = format!("host {database} all all reject # test");
        let before = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(&hba, format!("{line}\n{before}")).expect("write pg_hba.conf");
        admin.execute("SELECT pg_reload_conf()", &[]).await.unwrap();
        LoginRefused { hba, line }
    }
}

impl Drop for LoginRefused {
    fn drop(&mut self) {
        let text = std::fs::read_to_string(&self.hba).unwrap_or_default();
        let kept: Vec<&str> = text.lines().filter(|l| *l != self.line).collect();
        let _ = std::fs::write(&self.hba, kept.join("\n") + "\n");
        block_on_own_thread(async {
            admin()
                .await
                .execute("SELECT pg_reload_conf()", &[])
                .await
                .expect("reload pg_hba.conf");
        });
    }
}

/// A provisioning row past its lease, as a killed create leaves it, with the OID it chose.
async fn dead_provisioning(slug: &str) -> i64 {
    let oid = (1i64 << 31) + (uuid::Uuid::new_v4().as_u128() % (1 << 30)) as i64;
    registry()
        .await
        .execute(
            "INSERT INTO tenants (name, slug, database_name, database_oid, status, \
               lease_expires_at, server) \
             VALUES ('Dead', $1, $2, $3, 'provisioning', now() - interval '1 minute', 'primary')",
            &[&slug, &database_name(slug), &oid],
        )
        .await
        .unwrap();
    oid
}

async fn create_database_with(name: &str, oid: Option<i64>) {
    let with_oid = oid.map(|o| format!(" OID = {o}")).unwrap_or_default();
    admin()
        .await
        .batch_execute(&format!("CREATE DATABASE \"{name}\"{with_oid}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_dead_provisioning_that_cannot_be_reconciled_does_not_stop_the_run() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slugs = create_tenants(&mut cleanup, "rcf", 2).await;
    for slug in &slugs {
        undo_to_v1(slug).await;
    }
    // A create killed after CREATE DATABASE, whose database now refuses our login.
    let stuck = cleanup.add(&unique_slug("rcf_dead"));
    let oid = dead_provisioning(&stuck).await;
    create_database_with(&database_name(&stuck), Some(oid)).await;
    let refused = LoginRefused::to(&database_name(&stuck)).await;

    let (status, error) = invoke_migrate_all(&json!({"slugs": slugs})).await;
    drop(refused);
    assert!(!status.is_success(), "{error}");
    assert_eq!(error["errorType"], "ReconcileFailed", "{error}");
    let message = error["errorMessage"].as_str().unwrap();
    assert!(message.contains(&format!("{stuck} (")), "{message}");
    assert!(message.contains("0 of 2 tenants failed"), "{message}");
    for slug in &slugs {
        assert_eq!(
            history_versions(slug).await,
            all_versions(),
            "{slug} migrated all the same"
        );
        assert_eq!(registry_row(slug).await, Some(("active".into(), latest())));
    }
    // Left for the next run, which finishes it once the database takes logins again.
    assert_eq!(registry_row(&stuck).await, Some(("provisioning".into(), 0)));
    let (status, report) = invoke_migrate_all(&json!({"slugs": slugs})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let done = report["reconciled"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["slug"] == stuck.as_str() && r["action"] == "rolled_forward");
    assert!(done, "{report}");
    assert_eq!(
        registry_row(&stuck).await,
        Some(("active".into(), latest()))
    );
}

#[tokio::test]
async fn a_run_near_its_deadline_stops_starting_tenants_and_keeps_what_it_did() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    // One server: the run's order there is the registry's.
    let slugs = create_tenants_on(&mut cleanup, "dl", 5, Some("primary")).await;
    for slug in &slugs {
        undo_to_v1(slug).await;
    }
    // The third tenant's lock is held: the run waits for it until its deadline is near.
    let lock = registry().await;
    lock.execute(
        "SELECT pg_advisory_lock(1684173825, hashtext($1))",
        &[&slugs[2]],
    )
    .await
    .unwrap();
    let api = runtime::RuntimeApi::start_with_deadline(
        json!({"slugs": slugs, "concurrency": 1}),
        std::time::Duration::from_secs(6),
    )
    .await;
    let _child = api.spawn("migrate-all", &[]);
    let answer = api
        .wait_response(std::time::Duration::from_secs(30))
        .await
        .expect("the run answered before its deadline");
    drop(lock);
    // Not a timeout: an answer with the counts and what happened. The locked tenant was
    // deferred (busy: not a failed migration), the last two not started.
    assert_eq!(answer["errorType"], "RunIncomplete", "{answer}");
    let message = answer["errorMessage"].as_str().unwrap();
    assert!(message.contains("2 tenants were not started"), "{message}");
    assert!(message.contains("deferred 1"), "{message}");
    let run_id = message
        .split("; run ")
        .nth(1)
        .and_then(|rest| rest.get(..36))
        .expect("the message names its run");
    let run = get(&format!("/api/runs/{run_id}")).await.body;
    let locked = run_tenant(&run, &slugs[2]);
    assert_eq!(locked["status"], "deferred", "{run}");
    assert!(
        locked["error"]
            .as_str()
            .unwrap()
            .contains("locked by another operation"),
        "{run}"
    );
    // What it finished is in the registry, what it did not start is untouched.
    for slug in &slugs[..2] {
        assert_eq!(
            registry_row(slug).await,
            Some(("active".into(), latest())),
            "{slug}"
        );
        assert_eq!(history_versions(slug).await, all_versions());
    }
    for slug in &slugs[2..] {
        assert_eq!(
            registry_row(slug).await,
            Some(("active".into(), 1)),
            "{slug}"
        );
        assert_eq!(history_versions(slug).await, [1]);
    }
    // The next run takes the rest.
    let (status, report) = invoke_migrate_all(&json!({"slugs": slugs})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["counts"]["migrated"], 3, "{report}");
}

#[tokio::test]
async fn a_run_reconciles_dead_provisionings_and_reports_orphans() {
    let mut cleanup = Cleanup::holding_fleet().await;
    // A create killed before CREATE DATABASE, one killed after it, one that met a squatter of
    // its name and died before removing its row, and a database that no registry row owns.
    let gone = cleanup.add(&unique_slug("dead_gone"));
    let half = cleanup.add(&unique_slug("dead_half"));
    let squat = cleanup.add(&unique_slug("dead_squat"));
    let orphan = cleanup.add(&unique_slug("orphan"));
    dead_provisioning(&gone).await;
    let oid = dead_provisioning(&half).await;
    create_database_with(&database_name(&half), Some(oid)).await;
    dead_provisioning(&squat).await;
    plant_squatter(&database_name(&squat)).await;
    create_database_with(&database_name(&orphan), None).await;

    // A dry run lists them and changes nothing.
    let (status, report) = invoke_migrate_all(&json!({"dry_run": true})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let pending: Vec<&Value> = report["reconciled"].as_array().unwrap().iter().collect();
    for slug in [&gone, &half, &squat] {
        assert!(
            pending
                .iter()
                .any(|r| r["slug"] == slug.as_str() && r["action"] == "pending"),
            "{report}"
        );
    }
    assert_eq!(registry_row(&gone).await, Some(("provisioning".into(), 0)));

    let (status, report) = invoke_migrate_all(&json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let actions: Vec<(String, String)> = report["reconciled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["slug"].as_str().unwrap().to_owned(),
                r["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        actions.contains(&(gone.clone(), "rolled_back".into())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&(half.clone(), "rolled_forward".into())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&(squat.clone(), "disowned".into())),
        "{actions:?}"
    );
    assert_eq!(registry_row(&gone).await, None);
    assert_eq!(registry_row(&half).await, Some(("active".into(), latest())));
    assert_eq!(history_versions(&half).await, all_versions());
    assert_eq!(registry_row(&squat).await, None, "the slug is not stuck");
    // The orphans are reported, and left alone.
    let orphans = report["orphan_databases"].as_array().unwrap();
    for db in [database_name(&orphan), database_name(&squat)] {
        assert!(orphans.iter().any(|d| d == db.as_str()), "{db}: {report}");
        assert!(database_exists(&db).await);
    }
    assert!(!orphans.iter().any(|d| d == database_name(&half).as_str()));
    assert_squatter_untouched(&database_name(&squat)).await;
}

#[tokio::test]
async fn a_run_whose_oldest_tenant_is_busy_migrates_every_other_tenant_and_defers_that_one() {
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    // One server: the canary is the oldest tenant, and its table is held by the application.
    let slugs = create_tenants_on(&mut cleanup, "busyc", 4, Some("primary")).await;
    for slug in &slugs {
        undo_v4(slug).await;
    }
    let holder = connect_tenant(&slugs[0]).await;
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM activity_log")
        .await
        .unwrap();
    // A canary of one and no failure tolerated: before deferrals, this halted the fleet.
    let (status, report) =
        invoke_migrate_all(&json!({"slugs": slugs, "canary": 1, "max_failures": 0})).await;
    drop(holder);
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "incomplete", "{report}");
    assert_eq!(report["canary"], 1, "{report}");
    assert_eq!(
        slugs_with(&report, "deferred"),
        [slugs[0].clone()],
        "{report}"
    );
    assert_eq!(slugs_with(&report, "migrated").len(), 3, "{report}");
    assert_eq!(report["counts"]["halted"], 0, "{report}");
    let busy = report_row(&report, &slugs[0]).unwrap();
    assert!(
        busy["error"]
            .as_str()
            .unwrap()
            .contains("gave up waiting for a lock"),
        "{report}"
    );
    // In the ledger too, and the next run (or retry_run) takes it.
    let run = get(&format!("/api/runs/{}", report["run_id"].as_str().unwrap()))
        .await
        .body;
    assert_eq!(run["status"], "incomplete", "{run}");
    assert_eq!(run_tenant(&run, &slugs[0])["status"], "deferred", "{run}");
    assert_eq!(run["counts"]["deferred"], 1, "{run}");
    for slug in &slugs[1..] {
        assert_eq!(history_versions(slug).await, all_versions(), "{slug}");
    }
    let (status, retry) = invoke_migrate_all(&json!({"retry_run": report["run_id"]})).await;
    assert_eq!(status, StatusCode::OK, "{retry}");
    assert_eq!(history_versions(&slugs[0]).await, all_versions());
    let run = get(&format!("/api/runs/{}", report["run_id"].as_str().unwrap()))
        .await
        .body;
    assert_eq!(run["status"], "completed", "{run}");
}

/// Holds the product's fleet lock (one migrate-all at a time), as a run at work does.
async fn hold_fleet_lock() -> tokio_postgres::Client {
    let c = registry().await;
    c.execute("SELECT pg_advisory_lock(1684173824, 1)", &[])
        .await
        .unwrap();
    c
}

#[tokio::test]
async fn a_run_that_finds_another_at_work_says_so_and_a_skipped_verify_fails() {
    let _cleanup = Cleanup::holding_fleet().await;
    let lock = hold_fleet_lock().await;
    let (status, report) = invoke_migrate_all(&json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "already_running", "{report}");
    let skipped = report["run_id"].as_str().unwrap().to_owned();
    // The weekly verify must not vanish unseen: the invocation fails.
    let (status, verify) = invoke_migrate_all(&json!({"verify": true})).await;
    drop(lock);
    assert!(!status.is_success(), "{verify}");
    assert_eq!(verify["errorType"], "RunSkipped", "{verify}");
    assert!(
        verify["errorMessage"]
            .as_str()
            .unwrap()
            .contains("verify run was skipped"),
        "{verify}"
    );
    // Both are in the run ledger, skipped, with why.
    let runs = get("/api/runs?limit=5").await.body;
    let listed: Vec<&Value> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "skipped")
        .collect();
    assert!(listed.len() >= 2, "{runs}");
    let first = listed.iter().find(|r| r["id"] == skipped.as_str()).unwrap();
    assert!(
        first["error"]
            .as_str()
            .unwrap()
            .contains("was still at work"),
        "{runs}"
    );
    assert!(
        listed.iter().any(|r| r["options"]["verify"] == true),
        "{runs}"
    );
}

#[tokio::test]
async fn a_dry_run_applies_no_system_migration_and_makes_no_registry() {
    // A migrate-all of its own, its registry one that does not exist yet.
    let registry_name = format!(
        "dbtools_dry_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let api = runtime::RuntimeApi::start(json!({"dry_run": true})).await;
    let _child = api.spawn("migrate-all", &[("SYSTEM_DB_NAME", &registry_name)]);
    let answer = api
        .wait_response(std::time::Duration::from_secs(60))
        .await
        .expect("an answer");
    assert_eq!(answer["dry_run"], true, "{answer}");
    let pending: Vec<i64> = answer["system"]["pending"]
        .as_array()
        .expect("the system migrations it would apply")
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(pending, migration_versions::<i64>("migrations_system"));
    assert!(
        answer["error"].as_str().unwrap().contains("dry run"),
        "{answer}"
    );
    assert!(
        !database_exists(&registry_name).await,
        "a dry run made no registry"
    );
}

#[tokio::test]
async fn a_run_keeps_the_templates_of_a_newer_release() {
    let _cleanup = Cleanup::holding_fleet().await;
    // Exclusive: templates come and go.
    let _template = test_lock(TEMPLATE_LOCK, true).await;
    // A newer release's template on primary (a deploy in progress: its creates copy it while
    // this release's nightly run goes on), and an older one's.
    let oid_newer: i64 = 3_900_000_000 + (uuid::Uuid::new_v4().as_u128() % 100_000_000) as i64;
    let oid_older = oid_newer + 1;
    let admin = admin_on("primary").await;
    let registry = registry().await;
    // The registry's part of this release's template names.
    let current: String = registry
        .query_one(
            "SELECT name FROM tenant_templates WHERE ready_at IS NOT NULL LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let suffix = current.rsplit('_').next().unwrap().to_owned();
    let newer = format!("dbtools_template_{:016x}_{suffix}", oid_newer);
    let older = format!("dbtools_template_{:016x}_{suffix}", oid_older);
    for (name, oid, version) in [(&newer, oid_newer, latest() + 1), (&older, oid_older, 1)] {
        admin
            .batch_execute(&format!(
                "CREATE DATABASE \"{name}\" OID = {oid} ALLOW_CONNECTIONS false"
            ))
            .await
            .unwrap();
        registry
            .execute(
                "INSERT INTO tenant_templates (server, name, database_oid, version, ready_at) \
                 VALUES ('primary', $1, $2, $3, now())",
                &[name, &oid, &version],
            )
            .await
            .unwrap();
    }
    let (status, report) = invoke_migrate_all(&json!({"slugs": []})).await;
    let recorded = |name: String| {
        let registry = &registry;
        async move {
            registry
                .query_opt("SELECT 1 FROM tenant_templates WHERE name = $1", &[&name])
                .await
                .unwrap()
                .is_some()
        }
    };
    let (newer_kept, newer_recorded) =
        (database_exists(&newer).await, recorded(newer.clone()).await);
    let (older_kept, older_recorded) =
        (database_exists(&older).await, recorded(older.clone()).await);
    // Cleaned up before asserting: a newer template must not outlive the test.
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{newer}\""))
        .await;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{older}\""))
        .await;
    let _ = registry
        .execute(
            "DELETE FROM tenant_templates WHERE name = ANY($1)",
            &[&vec![newer.clone(), older.clone()]],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(
        newer_kept && newer_recorded,
        "the newer release's template stays: {report}"
    );
    assert!(
        !older_kept && !older_recorded,
        "the older one goes: {report}"
    );
}
