//! The configuration's rules, variable by variable.

use std::collections::HashMap;

use super::*;

fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|k| map.get(k).cloned())
}

#[test]
fn names_the_missing_credentials_variable() {
    let err = config(&[]).unwrap_err();
    assert_eq!(err, ConfigError::Missing("DB_SECRET_ID (or DATABASE_URL)"));
    assert!(err.to_string().contains("DB_SECRET_ID"));
}

#[test]
fn secret_with_defaults() {
    let c = config(&[("DB_SECRET_ID", "dbtools/admin")]).unwrap();
    assert!(matches!(c.credentials, CredentialSource::Secret(ref s) if s == "dbtools/admin"));
    assert_eq!(c.system_db, "dbtools");
    assert_eq!(
        c.ssl_mode,
        SslMode::Require,
        "TLS unless explicitly disabled"
    );
    assert_eq!(c.overrides, ConnOverrides::default());
    assert_eq!(c.connect_timeout, Duration::from_secs(3));
}

#[test]
fn overrides_and_ssl() {
    let c = config(&[
        ("DB_SECRET_ID", "x"),
        ("DB_HOST", "db.internal"),
        ("DB_PORT", "6432"),
        ("DB_NAME", "postgres"),
        ("DB_SSLMODE", "disable"),
        ("SYSTEM_DB_NAME", "registry"),
    ])
    .unwrap();
    assert_eq!(c.overrides.host.as_deref(), Some("db.internal"));
    assert_eq!(c.overrides.port, Some(6432));
    assert_eq!(c.ssl_mode, SslMode::Disable);
    assert_eq!(c.system_db, "registry");
}

#[test]
fn rejects_bad_values_naming_the_variable() {
    let e = config(&[("DB_SECRET_ID", "x"), ("DB_SSLMODE", "prefer")]).unwrap_err();
    assert!(e.to_string().contains("DB_SSLMODE"), "{e}");
    let e = config(&[("DB_SECRET_ID", "x"), ("DB_PORT", "99999")]).unwrap_err();
    assert!(e.to_string().contains("DB_PORT"), "{e}");
    let e = config(&[("DB_SECRET_ID", "x"), ("DB_CONNECT_TIMEOUT_SECS", "soon")]).unwrap_err();
    assert!(e.to_string().contains("DB_CONNECT_TIMEOUT_SECS"), "{e}");
}

#[test]
fn database_url_replaces_the_secret() {
    let c = config(&[("DATABASE_URL", "postgres://u:p@h/d")]).unwrap();
    assert!(matches!(c.credentials, CredentialSource::Url(_)));
}

#[test]
fn contradictions_are_refused_with_the_variable_and_the_reason() {
    let e = config(&[("DB_SECRET_ID", "x"), ("DB_LOCK_TIMEOUT_SECS", "0")]).unwrap_err();
    assert!(
        e.to_string().contains("DB_LOCK_TIMEOUT_SECS") && e.to_string().contains("forever"),
        "{e}"
    );
    let e = config(&[
        ("DB_SECRET_ID", "x"),
        ("DB_LOCK_TIMEOUT_SECS", "20"),
        ("DB_STATEMENT_TIMEOUT_SECS", "20"),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("DB_STATEMENT_TIMEOUT_SECS"), "{e}");
    // No statement timeout at all would be a wait without a deadline.
    let e = config(&[("DB_SECRET_ID", "x"), ("DB_STATEMENT_TIMEOUT_SECS", "0")]).unwrap_err();
    assert!(e.to_string().contains("DB_STATEMENT_TIMEOUT_SECS"), "{e}");
    let e = config(&[("DB_SECRET_ID", "x"), ("PROVISIONING_LEASE_SECONDS", "12")]).unwrap_err();
    assert!(e.to_string().contains("PROVISIONING_LEASE_SECONDS"), "{e}");
    let e = config(&[("DB_SECRET_ID", "x"), ("MIGRATE_CONCURRENCY", "65")]).unwrap_err();
    assert!(e.to_string().contains("MIGRATE_CONCURRENCY"), "{e}");
    let e = config(&[("DB_SECRET_ID", "x"), ("IDEMPOTENCY_KEY_TTL_HOURS", "0")]).unwrap_err();
    assert!(e.to_string().contains("IDEMPOTENCY_KEY_TTL_HOURS"), "{e}");
    for (var, value) in [
        ("MIGRATE_LOCK_TIMEOUT_MS", "0"),
        ("MIGRATE_LOCK_RETRIES", "101"),
        ("MIGRATE_LOCK_TIMEOUT_MAX_MS", "9"),
        ("MIGRATE_STATEMENT_TIMEOUT_SECS", "0"),
        // Longer than a tenant's whole time.
        ("MIGRATE_STATEMENT_TIMEOUT_SECS", "301"),
        // One long tenant would make a run look stalled.
        ("RUN_STALL_SECS", "300"),
        ("MIGRATE_INLINE_MAX_TENANTS", "100001"),
    ] {
        let e = config(&[("DB_SECRET_ID", "x"), (var, value)]).unwrap_err();
        assert!(e.to_string().contains(var), "{var}={value}: {e}");
    }
    // Not above the ladder's ceiling (which follows an only first rung set above it).
    let e = config(&[
        ("DB_SECRET_ID", "x"),
        ("MIGRATE_LOCK_TIMEOUT_MS", "5000"),
        ("MIGRATE_STATEMENT_TIMEOUT_SECS", "5"),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("MIGRATE_LOCK_TIMEOUT_MAX_MS"), "{e}");
}

#[test]
fn a_first_rung_alone_above_the_default_ceiling_is_a_fixed_lock_timeout() {
    let c = config(&[("DB_SECRET_ID", "x"), ("MIGRATE_LOCK_TIMEOUT_MS", "2000")]).unwrap();
    assert_eq!(c.migrate_session.lock_timeout, Duration::from_millis(2000));
    assert_eq!(
        c.migrate_session.lock_timeout_max,
        Duration::from_millis(2000)
    );
    let c = config(&[
        ("DB_SECRET_ID", "x"),
        ("MIGRATE_LOCK_TIMEOUT_MS", "500"),
        ("MIGRATE_LOCK_TIMEOUT_MAX_MS", "300"),
    ])
    .unwrap();
    assert_eq!(
        c.migrate_session.lock_timeout_max,
        Duration::from_millis(500)
    );
    let c = config(&[
        ("DB_SECRET_ID", "x"),
        ("MIGRATE_LOCK_TIMEOUT_MS", "50"),
        ("MIGRATE_LOCK_TIMEOUT_MAX_MS", "400"),
    ])
    .unwrap();
    assert_eq!(c.migrate_session.lock_timeout, Duration::from_millis(50));
    assert_eq!(
        c.migrate_session.lock_timeout_max,
        Duration::from_millis(400)
    );
}

#[test]
fn long_statements_get_the_statement_timeout_plus_a_query_timeout() {
    let c = config(&[("DB_SECRET_ID", "x")]).unwrap();
    assert_eq!(c.long_statement_timeout(), Duration::from_secs(23));
    assert_eq!(c.idempotency_key_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(c.migrate_concurrency, 10);
    assert_eq!(
        c.migrate_session,
        MigrationPolicy {
            lock_timeout: Duration::from_millis(100),
            lock_timeout_max: Duration::from_millis(200),
            statement_timeout: Duration::from_secs(300),
            lock_retries: 20,
        }
    );
}

#[test]
fn tenant_settings_have_defaults_and_rules() {
    let c = config(&[("DB_SECRET_ID", "x")]).unwrap();
    assert_eq!(
        c.tenants,
        TenantSettings {
            connection_limit: 20,
            secret_prefix: "dbtools/tenants/".into(),
            secret_kms_key_id: None,
            secret_recovery_days: 7,
            purge_after_days: 30,
            move_retention_days: 7,
            rotation: None,
            names: TenantNames::Slug,
        }
    );
    assert_eq!(c.server_secret_prefix, "dbtools/servers/");
    let opaque = config(&[("DB_SECRET_ID", "x"), ("TENANT_NAMES", "opaque")]).unwrap();
    assert_eq!(opaque.tenants.names, TenantNames::Opaque);
    let e = config(&[("DB_SECRET_ID", "x"), ("TENANT_NAMES", "uuid")]).unwrap_err();
    assert!(e.to_string().contains("TENANT_NAMES"), "{e}");
    let e = config(&[("DB_SECRET_ID", "x"), ("SERVER_SECRET_PREFIX", "a b")]).unwrap_err();
    assert!(e.to_string().contains("SERVER_SECRET_PREFIX"), "{e}");
    let e = config(&[("DB_SECRET_ID", "x"), ("TENANT_ROTATION_DAYS", "30")]).unwrap_err();
    assert_eq!(e, ConfigError::Missing("TENANT_ROTATION_FUNCTION_ARN"));
    let c = config(&[
        ("DB_SECRET_ID", "x"),
        ("TENANT_ROTATION_DAYS", "30"),
        (
            "TENANT_ROTATION_FUNCTION_ARN",
            "arn:aws:lambda:eu-west-1:1:function:r",
        ),
        ("PURGE_AFTER_DAYS", "0"),
    ])
    .unwrap();
    assert_eq!(c.tenants.rotation.map(|r| r.days), Some(30));
    assert_eq!(c.tenants.purge_after_days, 0, "0 means never");
    for (var, value) in [
        ("TENANT_SECRET_RECOVERY_DAYS", "3"),
        ("TENANT_CONNECTION_LIMIT", "0"),
        ("TENANT_SECRET_PREFIX", "bad prefix/"),
    ] {
        let e = config(&[("DB_SECRET_ID", "x"), (var, value)]).unwrap_err();
        assert!(e.to_string().contains(var), "{e}");
    }
}

#[test]
fn events_go_on_the_named_bus_with_our_source_or_nowhere() {
    let secret = ("DB_SECRET_ID", "x");
    assert_eq!(config(&[secret]).unwrap().events, None);
    assert_eq!(
        config(&[secret, ("EVENT_BUS_NAME", "")]).unwrap().events,
        None
    );
    let c = config(&[secret, ("EVENT_BUS_NAME", "saas")]).unwrap();
    assert_eq!(
        c.events,
        Some(EventBus {
            bus: "saas".into(),
            source: "dbtools".into()
        })
    );
    let c = config(&[
        secret,
        ("EVENT_BUS_NAME", "saas"),
        ("EVENT_SOURCE", "app-plane"),
    ])
    .unwrap();
    assert_eq!(c.events.map(|e| e.source).as_deref(), Some("app-plane"));
}
