//! Metrics in CloudWatch's embedded metric format (EMF): each is one JSON line on stdout,
//! which CloudWatch Logs turns into metrics as it ingests the function's log (no API call, no
//! wait, nothing to fail). Locally the lines land in `.local/watch.log` beside the log.
//!
//! A line names its namespace (`dbtools`, as the template's alarms do), its dimensions (one
//! set: every dimension key given, each a top-level member) and its metrics with their units.
//! Dimension values are few by design (a function, an operation, an outcome, a server, a
//! status): never a slug, an id or a path, which would make a metric per tenant.
//!
//! | metric | unit | dimensions | emitted by |
//! |---|---|---|---|
//! | `Requests`, `RequestLatency` | Count, Milliseconds | `Function`, `Route`, `Outcome` (`ok`, `client_error`, `unavailable`, `server_error`) | every HTTP function, per request |
//! | `TenantMigrations`, `TenantMigrationDuration` | Count, Milliseconds | `Outcome` (a tenant's outcome: `migrated`, `deferred`, ...) | migrate-all and migrate-tenant, per tenant opened (not those the registry vouches for) |
//! | `Runs`, `RunDuration`, `RunTenants{Migrated,UpToDate,Failed,Deferred,NotStarted}` | Count, Milliseconds | `Status` (`completed`, `halted`, `queued`, ...) | migrate-all, per run; `Runs` alone from the worker that closes a queued run |
//! | `Tenants` | Count | `Server`, `Status` | migrate-all, per server and status, each run |
//! | `ServersUnreachable` | Count | — | migrate-all, each run |
//! | `QueueLag` | Milliseconds | `Kind` (`tenant`, `move`) | migrate-tenant, per message |
//! | `Rotations` | Count | `Step`, `Outcome` (`ok`, `failed`) | rotate-tenant-secret, per step |
//! | `Moves`, `MoveWritesRefused` | Count, Milliseconds | `Outcome` (`done`, `cancelled`, `failed`) | migrate-tenant, per move it ends |
//! | `EventsSent`, `EventsUndelivered` | Count | — | the functions that send lifecycle events, when they sent some or left some pending (`EventsUndelivered` 1) |

/// A metric's unit, as CloudWatch spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// The namespace of every metric (the SAM template's alarms and dashboard name it too).
pub const NAMESPACE: &str = "dbtools";

/// The EMF line for `metrics` under `dimensions` at `timestamp_ms`.
pub fn line(
    timestamp_ms: i64,
    dimensions: &[(&str, &str)],
    metrics: &[(&str, f64, Unit)],
) -> String {
    let mut doc = serde_json::Map::new();
    let keys: Vec<&str> = dimensions.iter().map(|(k, _)| *k).collect();
    let defs: Vec<serde_json::Value> = metrics
        .iter()
        .map(|(name, _, unit)| serde_json::json!({"Name": name, "Unit": unit.as_str()}))
        .collect();
    doc.insert(
        "_aws".into(),
        serde_json::json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [keys],
                "Metrics": defs,
            }],
        }),
    );
    for (key, value) in dimensions {
        doc.insert((*key).into(), serde_json::Value::from(*value));
    }
    for (name, value, _) in metrics {
        let value = if value.is_finite() { *value } else { 0.0 };
        doc.insert((*name).into(), serde_json::Value::from(value));
    }
    serde_json::Value::Object(doc).to_string()
}

/// Writes one EMF line to stdout (the function's log).
pub fn emit(dimensions: &[(&str, &str)], metrics: &[(&str, f64, Unit)]) {
    let now = chrono::Utc::now().timestamp_millis();
    println!("{}", line(now, dimensions, metrics));
}

/// The outcome of an HTTP answer, by its status: the `Outcome` of `Requests`.
pub fn http_outcome(status: u16) -> &'static str {
    match status {
        503 => "unavailable",
        500..=599 => "server_error",
        400..=499 => "client_error",
        _ => "ok",
    }
}

/// The route pattern of a request path (what the router matched), never the path itself:
/// `/api/tenants/acme/purge` is `/api/tenants/{slug}/purge`. A path of no route is `other`.
pub fn route_of(path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match parts.as_slice() {
        ["", "api", "tenants"] => "/api/tenants",
        ["", "api", "tenants", _] => "/api/tenants/{slug}",
        ["", "api", "tenants", _, "restore"] => "/api/tenants/{slug}/restore",
        ["", "api", "tenants", _, "purge"] => "/api/tenants/{slug}/purge",
        ["", "api", "tenants", _, "move"] => "/api/tenants/{slug}/move",
        ["", "api", "servers"] => "/api/servers",
        ["", "api", "servers", _] => "/api/servers/{name}",
        ["", "api", "servers", _, "drain"] => "/api/servers/{name}/drain",
        ["", "api", "runs"] => "/api/runs",
        ["", "api", "runs", _] => "/api/runs/{id}",
        ["", "api", "moves"] => "/api/moves",
        ["", "api", "moves", _] => "/api/moves/{id}",
        ["", "api", "moves", _, "cancel"] => "/api/moves/{id}/cancel",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_declares_its_dimensions_and_metrics_and_carries_their_values() {
        let text = line(
            1_700_000_000_000,
            &[("Function", "create-tenant"), ("Outcome", "ok")],
            &[
                ("Requests", 1.0, Unit::Count),
                ("RequestLatency", 63.5, Unit::Milliseconds),
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let meta = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(v["_aws"]["Timestamp"], 1_700_000_000_000i64);
        assert_eq!(meta["Namespace"], "dbtools");
        assert_eq!(
            meta["Dimensions"],
            serde_json::json!([["Function", "Outcome"]])
        );
        assert_eq!(
            meta["Metrics"][1],
            serde_json::json!({"Name": "RequestLatency", "Unit": "Milliseconds"})
        );
        assert_eq!(v["Function"], "create-tenant");
        assert_eq!(v["RequestLatency"], 63.5);
        assert!(!text.contains('\n'));
        let nan = line(0, &[], &[("X", f64::NAN, Unit::Count)]);
        assert!(serde_json::from_str::<serde_json::Value>(&nan).unwrap()["X"] == 0.0);
    }

    #[test]
    fn routes_never_carry_a_slug_or_an_id() {
        assert_eq!(route_of("/api/tenants/acme"), "/api/tenants/{slug}");
        assert_eq!(
            route_of("/api/tenants/acme/purge/"),
            "/api/tenants/{slug}/purge"
        );
        assert_eq!(route_of("/api/moves/0b7e/cancel"), "/api/moves/{id}/cancel");
        assert_eq!(
            route_of("/api/servers/eu-2/drain"),
            "/api/servers/{name}/drain"
        );
        assert_eq!(route_of("/api/tenants/a/b/c"), "other");
        assert_eq!(http_outcome(201), "ok");
        assert_eq!(http_outcome(409), "client_error");
        assert_eq!(http_outcome(503), "unavailable");
        assert_eq!(http_outcome(500), "server_error");
    }
}
