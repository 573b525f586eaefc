//! The shared crate against a real PostgreSQL (the local stack's), each test on a fresh,
//! uniquely named system database that is dropped afterwards, even when the test fails.
//! Credentials come through the real Secrets Manager client and the local endpoint.

use std::collections::HashMap;

use shared::{
    config::Config,
    db::DbError,
    domain::{NewTenant, Slug, TenantName, TenantStatus},
    migrations,
    provision::{self, CreateTenantError},
    tenants::{self, DeleteTenantError, ListQuery},
    Database,
};
use tokio_postgres::NoTls;

fn env_or_panic(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run through `make test`"))
}

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&env_or_panic("DBTOOLS_PG_URL"), NoTls)
        .await
        .expect("connect to the local PostgreSQL");
    tokio::spawn(conn);
    client
}

/// A fresh system database (and the tenants created in it), dropped on drop.
struct Fresh {
    system_db: String,
    tenants: Vec<String>,
}

impl Fresh {
    fn new() -> Fresh {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Fresh {
            system_db: format!("dbtools_test_{}", &id[..12]),
            tenants: Vec::new(),
        }
    }

    fn config(&self, extra: &[(&str, &str)]) -> Config {
        let mut vars: HashMap<String, String> = std::env::vars().collect();
        vars.insert("SYSTEM_DB_NAME".into(), self.system_db.clone());
        for (k, v) in extra {
            vars.insert((*k).into(), (*v).into());
        }
        Config::from_lookup(|k| vars.get(k).cloned()).expect("configuration")
    }

    fn slug(&mut self, prefix: &str) -> Slug {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let slug = Slug::parse(&format!("{prefix}_{}", &id[..12])).unwrap();
        self.tenants.push(slug.database_name().to_string());
        slug
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        let mut names = std::mem::take(&mut self.tenants);
        names.push(self.system_db.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let admin = admin().await;
                for name in names {
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

fn new_tenant(slug: &Slug, name: &str) -> NewTenant {
    NewTenant {
        name: TenantName::parse(name).unwrap(),
        slug: slug.clone(),
    }
}

async fn database_exists(name: &str) -> bool {
    admin()
        .await
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn system_migrations_create_the_registry_once() {
    let fresh = Fresh::new();
    let db = Database::new(fresh.config(&[]), "test").unwrap();
    assert_eq!(migrations::migrate_system(&db).await.unwrap(), [1, 2]);
    assert!(database_exists(&fresh.system_db).await);
    // Idempotent.
    assert!(migrations::migrate_system(&db).await.unwrap().is_empty());
    // The registry's constraints hold even against direct SQL.
    let sys = db.system().await.unwrap();
    let bad_status = sys
        .execute(
            "INSERT INTO tenants (name, slug, database_name, status) VALUES ('x', 'abc', 'dbtools_tenant_abc', 'gone')",
            &[],
        )
        .await;
    assert!(bad_status.is_err());
    let bad_name = sys
        .execute(
            "INSERT INTO tenants (name, slug, database_name) VALUES ('x', 'abc', 'dbtools_tenant_xyz')",
            &[],
        )
        .await;
    assert!(
        bad_name.is_err(),
        "database_name must be derived from the slug"
    );
}

#[tokio::test]
async fn lifecycle_through_the_library() {
    let mut fresh = Fresh::new();
    let db = Database::new(fresh.config(&[]), "test").unwrap();
    migrations::migrate_system(&db).await.unwrap();
    let slug = fresh.slug("lib");

    let t = provision::create_tenant(&db, &new_tenant(&slug, "Library"), None)
        .await
        .unwrap()
        .tenant;
    assert_eq!(t.status, TenantStatus::Active);
    assert_eq!(t.schema_version, migrations::latest_tenant_version());
    assert!(database_exists(slug.database_name().as_str()).await);

    let again = provision::create_tenant(&db, &new_tenant(&slug, "Again"), None).await;
    assert!(
        matches!(again, Err(CreateTenantError::Conflict(_))),
        "{again:?}"
    );

    let page = tenants::list_tenants(&db, &ListQuery::default())
        .await
        .unwrap();
    assert_eq!(page.tenants, std::slice::from_ref(&t));
    assert_eq!(page.next_cursor, None);

    let deleted = tenants::delete_tenant(&db, &slug).await.unwrap();
    assert_eq!(deleted.status, TenantStatus::Deleted);
    assert!(deleted.deleted_at.is_some());
    let missing = tenants::delete_tenant(&db, &Slug::parse("nobody_here").unwrap()).await;
    assert!(matches!(missing, Err(DeleteTenantError::NotFound(_))));
}

#[tokio::test]
async fn the_cached_connection_is_reopened_when_found_closed() {
    let fresh = Fresh::new();
    let db = Database::new(fresh.config(&[]), "test-reopen").unwrap();
    migrations::migrate_system(&db).await.unwrap();
    let pid: i32 = db
        .system()
        .await
        .unwrap()
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    admin()
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    // Give the connection task a moment to notice the closed socket.
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let page = tenants::list_tenants(&db, &ListQuery::default()).await;
        if page.is_ok() {
            let pid2: i32 = db
                .system()
                .await
                .unwrap()
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0);
            assert_ne!(pid, pid2, "a new connection");
            return;
        }
    }
    panic!("the connection was never reopened");
}

#[tokio::test]
async fn sslmode_require_never_falls_back_to_plaintext() {
    // The local server has no TLS: `require` must refuse, not quietly connect in clear.
    let fresh = Fresh::new();
    let db = Database::new(fresh.config(&[("DB_SSLMODE", "require")]), "test-tls").unwrap();
    let started = std::time::Instant::now();
    let err = db.connect("postgres").await.unwrap_err();
    assert!(matches!(err, DbError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn unreachable_postgres_is_unavailable_within_seconds() {
    let fresh = Fresh::new();
    // A port nothing listens on (the secret still supplies the credentials).
    let db = Database::new(fresh.config(&[("DB_PORT", "1")]), "test-down").unwrap();
    let started = std::time::Instant::now();
    let err = tenants::list_tenants(&db, &ListQuery::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, tenants::ListTenantsError::Unavailable(_)),
        "{err:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn unreachable_secrets_manager_is_unavailable_within_seconds() {
    // The SDK reads its endpoint from the process environment. nextest runs every test in a
    // process of its own, so this changes nothing for the other tests.
    std::env::set_var("AWS_ENDPOINT_URL_SECRETS_MANAGER", "http://127.0.0.1:1");
    let fresh = Fresh::new();
    let db = Database::new(fresh.config(&[]), "test-sm-down").unwrap();
    let started = std::time::Instant::now();
    let err = tenants::list_tenants(&db, &ListQuery::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, tenants::ListTenantsError::Unavailable(_)),
        "{err:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn database_url_replaces_the_secret() {
    let fresh = Fresh::new();
    let db = Database::new(
        fresh.config(&[
            ("DB_SECRET_ID", ""),
            ("DATABASE_URL", &env_or_panic("DBTOOLS_PG_URL")),
        ]),
        "test-url",
    )
    .unwrap();
    assert_eq!(migrations::migrate_system(&db).await.unwrap(), [1, 2]);
}
