//! The functions' metrics (CloudWatch's embedded metric format, `shared::metrics`): the lines
//! a create, a read and a migrate-all write to the log (locally `.local/watch.log`) each parse,
//! declare the dimensions and metrics they carry, and carry no tenant's slug.

use std::collections::BTreeSet;

use e2e::*;
use reqwest::StatusCode;
use serde_json::Value;

/// Every EMF line of the stack's log, parsed (a line that starts like one and does not parse
/// fails the test).
fn emf_lines() -> Vec<(String, Value)> {
    stack_log("watch.log")
        .lines()
        .filter(|l| l.starts_with("{\"_aws\""))
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (l.to_owned(), v)
        })
        .collect()
}

/// What a CloudWatch EMF line must hold for CloudWatch to take it: its namespace, one
/// dimension set whose every key is a string member, and every metric a number member with
/// a unit.
fn assert_valid(text: &str, v: &Value) {
    let aws = &v["_aws"];
    assert!(
        aws["Timestamp"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000_000),
        "{text}"
    );
    let directive = &aws["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "dbtools", "{text}");
    let sets = directive["Dimensions"].as_array().expect("dimension sets");
    assert_eq!(sets.len(), 1, "{text}");
    for key in sets[0].as_array().unwrap() {
        let key = key.as_str().unwrap();
        assert!(
            v[key].as_str().is_some_and(|s| !s.is_empty()),
            "dimension {key}: {text}"
        );
    }
    let metrics = directive["Metrics"].as_array().expect("metrics");
    assert!(!metrics.is_empty(), "{text}");
    for m in metrics {
        let name = m["Name"].as_str().unwrap();
        assert!(v[name].is_number(), "metric {name}: {text}");
        assert!(
            ["Count", "Milliseconds"].contains(&m["Unit"].as_str().unwrap()),
            "{text}"
        );
    }
}

fn find<'a>(
    lines: &'a [(String, Value)],
    metric: &str,
    dims: &[(&str, &str)],
) -> Option<&'a Value> {
    lines.iter().map(|(_, v)| v).find(|v| {
        v[metric].is_number() && dims.iter().all(|(k, want)| v[*k].as_str() == Some(want))
    })
}

#[tokio::test]
async fn every_function_line_of_metrics_parses_names_its_dimensions_and_no_tenant() {
    // A run of its own: it holds the fleet (a run beside another answers `already_running`).
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = &create_tenants_on(&mut cleanup, "emf", 1, Some("primary")).await[0];
    assert_eq!(
        get(&format!("/api/tenants/{slug}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get("/api/tenants/emf_never_made_zz").await.status,
        StatusCode::NOT_FOUND
    );
    // A migration pending, so that the run opens the tenant (a current one the registry
    // vouches for is counted in the run's line only).
    undo_to_v1(slug).await;
    let (status, report) = invoke_migrate_all(&json!({"slugs": [slug]})).await;
    assert_eq!(status, StatusCode::OK, "{report}");

    let lines = emf_lines();
    for (text, v) in &lines {
        assert_valid(text, v);
        assert!(
            !text.contains(slug.as_str()),
            "a metric names a tenant: {text}"
        );
    }
    let names: BTreeSet<&str> = lines
        .iter()
        .flat_map(|(_, v)| {
            v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .unwrap()
        })
        .filter_map(|m| m["Name"].as_str())
        .collect();
    for expected in [
        "Requests",
        "RequestLatency",
        "TenantMigrations",
        "Runs",
        "Tenants",
        "ServersUnreachable",
    ] {
        assert!(names.contains(expected), "{expected} among {names:?}");
    }
    let created = find(
        &lines,
        "RequestLatency",
        &[
            ("Function", "create-tenant"),
            ("Route", "POST /api/tenants"),
            ("Outcome", "ok"),
        ],
    )
    .expect("a create's latency");
    assert!(
        created["RequestLatency"].as_f64().unwrap() > 0.0,
        "{created}"
    );
    assert!(
        find(
            &lines,
            "Requests",
            &[
                ("Route", "GET /api/tenants/{slug}"),
                ("Outcome", "client_error")
            ]
        )
        .is_some(),
        "a 404 is a client error"
    );
    assert!(find(&lines, "TenantMigrations", &[("Outcome", "migrated")]).is_some());
    assert!(
        lines
            .iter()
            .any(|(_, v)| v["RunTenantsMigrated"].as_f64() >= Some(1.0)),
        "a run's line counts its migrated tenants"
    );
    let held = find(
        &lines,
        "Tenants",
        &[("Server", "primary"), ("Status", "active")],
    )
    .expect("tenants per server");
    assert!(held["Tenants"].as_f64().unwrap() >= 1.0, "{held}");
}

/// The template's alarms on the `dbtools` namespace read metrics the functions write, with the
/// same dimension set (CloudWatch matches a metric by its name and every dimension).
#[tokio::test]
async fn the_templates_alarms_read_metrics_the_functions_write() {
    // A run of its own: it holds the fleet (a run beside another answers `already_running`).
    let mut cleanup = Cleanup::holding_fleet().await;
    let _template = test_lock(TEMPLATE_LOCK, false).await;
    let slug = &create_tenants_on(&mut cleanup, "emfalarm", 1, Some("primary")).await[0];
    let (status, report) = invoke_migrate_all(&json!({"slugs": [slug]})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let text = std::fs::read_to_string(format!(
        "{}/../infra/template.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("the template");
    let template: serde_norway::Value = serde_norway::from_str(&text).expect("YAML");
    let lines = emf_lines();
    // Metrics a log metric filter makes (from a log line, not an EMF line) are not ours here.
    let filtered: BTreeSet<String> = template["Resources"]
        .as_mapping()
        .unwrap()
        .values()
        .filter(|r| r["Type"].as_str() == Some("AWS::Logs::MetricFilter"))
        .flat_map(|r| {
            r["Properties"]["MetricTransformations"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|t| t["MetricName"].as_str().map(str::to_owned))
        .collect();
    let mut alarms = 0;
    for (name, resource) in template["Resources"].as_mapping().unwrap() {
        let p = &resource["Properties"];
        if resource["Type"].as_str() != Some("AWS::CloudWatch::Alarm")
            || p["Namespace"].as_str() != Some("dbtools")
        {
            continue;
        }
        let metric = p["MetricName"].as_str().unwrap();
        if filtered.contains(metric) {
            continue;
        }
        alarms += 1;
        let dims: BTreeSet<String> = p["Dimensions"]
            .as_sequence()
            .map(|d| {
                d.iter()
                    .map(|x| x["Name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let written = lines.iter().any(|(_, v)| {
            let directive = &v["_aws"]["CloudWatchMetrics"][0];
            let keys: BTreeSet<String> = directive["Dimensions"][0]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_owned())
                .collect();
            keys == dims && v[metric].is_number()
        });
        assert!(
            written,
            "{name:?}: no line writes {metric} with the dimensions {dims:?}"
        );
    }
    assert_eq!(alarms, 4, "the alarms on the functions' metrics");
}
