//! The shared crate against a real PostgreSQL (the local stack's), each test on a fresh,
//! uniquely named system database that is dropped afterwards, even when the test fails.
//! Credentials come through the real Secrets Manager client and the local endpoint.

use std::{collections::HashMap, time::Duration};

use shared::{
    config::Config,
    database::migrate_system,
    domain::{NewTenant, Slug, TenantName, TenantStatus},
    migrate,
    pg::{
        locks::{self, Lock},
        DbError,
    },
    tenant::{
        lifecycle::{self, LifecycleError},
        provision::{self, CreateTenantError, IdempotencyKey, ReconcileAction},
        registry::{self, ListQuery},
    },
    Database, Invocation,
};
use tokio_postgres::NoTls;

fn env_or_panic(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run through `make test`"))
}

async fn admin() -> tokio_postgres::Client {
    admin_to("postgres").await
}

/// A superuser connection to `dbname`, if it exists.
async fn try_admin_to(dbname: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut cfg: tokio_postgres::Config = env_or_panic("DBTOOLS_PG_URL").parse().unwrap();
    cfg.dbname(dbname);
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// A superuser connection to `dbname`.
async fn admin_to(dbname: &str) -> tokio_postgres::Client {
    let mut cfg: tokio_postgres::Config = env_or_panic("DBTOOLS_PG_URL").parse().unwrap();
    cfg.dbname(dbname);
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .expect("connect to the local PostgreSQL");
    tokio::spawn(conn);
    client
}

/// Creates the slug's database by hand: with `oid`, as a create killed right after
/// `CREATE DATABASE` leaves it; without, as anybody else would (a squatter). Returns its OID.
async fn create_database(slug: &Slug, oid: Option<i64>) -> i64 {
    let admin = admin().await;
    let with_oid = oid.map(|o| format!(" OID = {o}")).unwrap_or_default();
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {}{with_oid}",
            slug.database_name().quoted()
        ))
        .await
        .unwrap();
    admin
        .query_one(
            "SELECT oid::bigint FROM pg_database WHERE datname = $1",
            &[&slug.database_name().as_str()],
        )
        .await
        .unwrap()
        .get(0)
}

/// An OID as provisioning would choose it (the upper half of the space).
fn fresh_oid() -> i64 {
    (1 << 31) + (uuid::Uuid::new_v4().as_u128() % (1 << 30)) as i64
}

/// The system migrations of this release (the files in `migrations_system/`), in order.
fn system_versions() -> Vec<i64> {
    e2e::migration_versions("migrations_system")
}

/// The latest tenant migration, as the registry records it.
fn latest() -> i32 {
    migrate::latest_tenant_version() as i32
}

/// An invocation with time to spare.
fn inv() -> Invocation {
    Invocation::within(Duration::from_secs(60))
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
        let tenants = std::mem::take(&mut self.tenants);
        let system_db = self.system_db.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                // The tenant templates this registry built (each registry has its own), its
                // tenants, then the registry itself.
                let mut names = Vec::new();
                if let Ok(registry) = try_admin_to(&system_db).await {
                    if let Ok(rows) = registry
                        .query("SELECT name FROM tenant_templates", &[])
                        .await
                    {
                        names.extend(rows.iter().map(|r| r.get::<_, String>(0)));
                    }
                }
                names.extend(tenants);
                names.push(system_db);
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
        server: None,
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
    assert_eq!(migrate_system(&db).await.unwrap(), system_versions());
    assert!(database_exists(&fresh.system_db).await);
    // Idempotent.
    assert!(migrate_system(&db).await.unwrap().is_empty());
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
    migrate_system(&db).await.unwrap();
    let slug = fresh.slug("lib");

    let t = provision::create_tenant(&db, &new_tenant(&slug, "Library"), None, &inv())
        .await
        .unwrap()
        .tenant;
    assert_eq!(t.status, TenantStatus::Active);
    assert_eq!(t.schema_version, migrate::latest_tenant_version());
    assert!(database_exists(slug.database_name().as_str()).await);

    let again = provision::create_tenant(&db, &new_tenant(&slug, "Again"), None, &inv()).await;
    assert!(
        matches!(again, Err(CreateTenantError::Conflict(_))),
        "{again:?}"
    );

    let page = registry::list_tenants(&db, &ListQuery::default())
        .await
        .unwrap();
    assert_eq!(page.tenants, std::slice::from_ref(&t));
    assert_eq!(page.next_cursor, None);

    let deleted = lifecycle::delete_tenant(&db, &slug).await.unwrap();
    assert_eq!(deleted.status, TenantStatus::Deleted);
    assert!(deleted.deleted_at.is_some());
    let missing = lifecycle::delete_tenant(&db, &Slug::parse("nobody_here").unwrap()).await;
    assert!(matches!(missing, Err(LifecycleError::NotFound(_))));
}

#[tokio::test]
async fn the_cached_connection_is_reopened_when_found_closed() {
    let fresh = Fresh::new();
    let db = Database::new(fresh.config(&[]), "test-reopen").unwrap();
    migrate_system(&db).await.unwrap();
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
        let page = registry::list_tenants(&db, &ListQuery::default()).await;
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
    let err = registry::list_tenants(&db, &ListQuery::default())
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
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
    let err = registry::list_tenants(&db, &ListQuery::default())
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
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
    assert_eq!(migrate_system(&db).await.unwrap(), system_versions());
}

/// A provisioning row whose lease has expired, as a killed create leaves it: it recorded the
/// OID its database was to get. Returns that OID.
async fn dead_provisioning(db: &Database, slug: &Slug) -> i64 {
    let oid = fresh_oid();
    db.system()
        .await
        .unwrap()
        .execute(
            "INSERT INTO tenants (name, slug, database_name, database_oid, status, \
               lease_expires_at, server) \
             VALUES ('Dead', $1, $2, $3, 'provisioning', now() - interval '1 second', 'primary')",
            &[&slug.as_str(), &slug.database_name().as_str(), &oid],
        )
        .await
        .unwrap();
    oid
}

async fn row_status(db: &Database, slug: &Slug) -> Option<(String, i32)> {
    db.system()
        .await
        .unwrap()
        .query_opt(
            "SELECT status, schema_version FROM tenants WHERE slug = $1",
            &[&slug.as_str()],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

/// The OID of the slug's database, if it exists.
async fn create_database_oid(slug: &Slug) -> Option<i64> {
    admin()
        .await
        .query_opt(
            "SELECT oid::bigint FROM pg_database WHERE datname = $1",
            &[&slug.database_name().as_str()],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// What a byte-for-byte comparison of a small database needs: every relation with its kind,
/// every grant on the database, and the data of `precious`.
async fn database_fingerprint(slug: &Slug) -> (Vec<(String, String)>, Option<String>, Vec<i32>) {
    let name = slug.database_name();
    let tenant = admin_to(name.as_str()).await;
    let relations = tenant
        .query(
            "SELECT relname::text, relkind::text FROM pg_class \
             WHERE relnamespace = 'public'::regnamespace ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let acl: Option<String> = admin()
        .await
        .query_one(
            "SELECT datacl::text FROM pg_database WHERE datname = $1",
            &[&name.as_str()],
        )
        .await
        .unwrap()
        .get(0);
    let data = tenant
        .query("SELECT v FROM precious ORDER BY v", &[])
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    (relations, acl, data)
}

async fn reconcile(db: &Database, slug: &Slug) -> ReconcileAction {
    let sys = db.system().await.unwrap();
    provision::reconcile_slug(db, &sys, slug).await.unwrap()
}

#[tokio::test]
async fn reconcile_decision_table() {
    let mut fresh = Fresh::new();
    let db = Database::new(fresh.config(&[]), "test-reconcile").unwrap();
    migrate_system(&db).await.unwrap();
    let admin = admin().await;

    // No database: roll back.
    let none = fresh.slug("rc_none");
    dead_provisioning(&db, &none).await;
    assert_eq!(reconcile(&db, &none).await, ReconcileAction::RolledBack);
    assert_eq!(row_status(&db, &none).await, None);

    // Our empty database (killed right after CREATE DATABASE): roll forward to head.
    let half = fresh.slug("rc_half");
    let oid = dead_provisioning(&db, &half).await;
    create_database(&half, Some(oid)).await;
    assert_eq!(reconcile(&db, &half).await, ReconcileAction::RolledForward);
    assert_eq!(
        row_status(&db, &half).await,
        Some(("active".into(), latest()))
    );

    // A database of the name that this registry did not make (the create met a squatter, got
    // DUPLICATE_DATABASE, and died before removing its row): left exactly as it was, row gone.
    let squat = fresh.slug("rc_squat");
    dead_provisioning(&db, &squat).await;
    let squatter_oid = create_database(&squat, None).await;
    admin_to(squat.database_name().as_str())
        .await
        .batch_execute("CREATE TABLE precious (v int); INSERT INTO precious VALUES (42)")
        .await
        .unwrap();
    let before = database_fingerprint(&squat).await;
    assert_eq!(reconcile(&db, &squat).await, ReconcileAction::Disowned);
    assert_eq!(row_status(&db, &squat).await, None, "the slug is not stuck");
    assert_eq!(database_fingerprint(&squat).await, before, "untouched");
    assert_eq!(
        create_database_oid(&squat).await,
        Some(squatter_oid),
        "the same database, not dropped and made again"
    );

    // Our database whose migration fails: roll back, database dropped.
    let bad = fresh.slug("rc_bad");
    let oid = dead_provisioning(&db, &bad).await;
    create_database(&bad, Some(oid)).await;
    admin_to(bad.database_name().as_str())
        .await
        .batch_execute("CREATE VIEW activity_log AS SELECT 1 AS squatter")
        .await
        .unwrap();
    assert_eq!(reconcile(&db, &bad).await, ReconcileAction::RolledBack);
    assert_eq!(row_status(&db, &bad).await, None);
    assert!(!database_exists(bad.database_name().as_str()).await);

    // A database left invalid by an interrupted DROP DATABASE: drop it, roll back.
    let invalid = fresh.slug("rc_inval");
    let oid = dead_provisioning(&db, &invalid).await;
    create_database(&invalid, Some(oid)).await;
    admin
        .execute(
            "UPDATE pg_database SET datconnlimit = -2 WHERE datname = $1",
            &[&invalid.database_name().as_str()],
        )
        .await
        .unwrap();
    assert_eq!(reconcile(&db, &invalid).await, ReconcileAction::RolledBack);
    assert!(!database_exists(invalid.database_name().as_str()).await);
    assert_eq!(row_status(&db, &invalid).await, None);

    // Ours, valid, but what its migrations need is held by another session (the application
    // may already use the database): busy, never a rollback; the next attempt rolls forward.
    let busy = fresh.slug("rc_busy");
    let oid = dead_provisioning(&db, &busy).await;
    create_database(&busy, Some(oid)).await;
    let holder = admin_to(busy.database_name().as_str()).await;
    holder
        .batch_execute(
            "CREATE TABLE refinery_schema_history (version int4 PRIMARY KEY, \
               name varchar(255), applied_on varchar(255), checksum varchar(255))",
        )
        .await
        .unwrap();
    holder
        .batch_execute("BEGIN; LOCK TABLE refinery_schema_history IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let quick = Database::new(
        fresh.config(&[
            ("MIGRATE_LOCK_TIMEOUT_MS", "200"),
            ("MIGRATE_LOCK_RETRIES", "1"),
        ]),
        "test-reconcile-busy",
    )
    .unwrap();
    let sys = quick.system().await.unwrap();
    let e = provision::reconcile_slug(&quick, &sys, &busy)
        .await
        .expect_err("busy is not a decision");
    assert!(e.is_lock_timeout(), "{e}");
    assert!(e.to_string().contains("2 attempts"), "{e}");
    drop(sys);
    assert_eq!(
        row_status(&db, &busy).await,
        Some(("provisioning".into(), 0))
    );
    assert!(
        database_exists(busy.database_name().as_str()).await,
        "not dropped"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(reconcile(&db, &busy).await, ReconcileAction::RolledForward);
    assert_eq!(
        row_status(&db, &busy).await,
        Some(("active".into(), latest()))
    );

    // A lease that has not expired yet: a live create owns it.
    let live = fresh.slug("rc_live");
    db.system()
        .await
        .unwrap()
        .execute(
            "INSERT INTO tenants (name, slug, database_name, status, lease_expires_at, server) \
             VALUES ('Live', $1, $2, 'provisioning', now() + interval '1 hour', 'primary')",
            &[&live.as_str(), &live.database_name().as_str()],
        )
        .await
        .unwrap();
    assert_eq!(reconcile(&db, &live).await, ReconcileAction::Skipped);
    assert_eq!(
        row_status(&db, &live).await,
        Some(("provisioning".into(), 0))
    );

    // Expired, but the tenant lock is held by another session (its holder is alive).
    let held = fresh.slug("rc_held");
    dead_provisioning(&db, &held).await;
    let other = Database::new(fresh.config(&[]), "test-holder").unwrap();
    let other_sys = other.system().await.unwrap();
    let lock = locks::try_acquire(&other_sys, Lock::Tenant(held.to_string()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reconcile(&db, &held).await, ReconcileAction::Skipped);
    assert_eq!(
        row_status(&db, &held).await,
        Some(("provisioning".into(), 0))
    );
    lock.release().await;
    assert_eq!(reconcile(&db, &held).await, ReconcileAction::RolledBack);
}

#[tokio::test]
async fn a_post_after_a_dead_provisioning_converges() {
    let mut fresh = Fresh::new();
    let db = Database::new(fresh.config(&[]), "test-repost").unwrap();
    migrate_system(&db).await.unwrap();

    // Nothing was created: the slug is free again, and the new request provisions it.
    let slug = fresh.slug("rp_free");
    dead_provisioning(&db, &slug).await;
    let t = provision::create_tenant(&db, &new_tenant(&slug, "Second try"), None, &inv())
        .await
        .unwrap();
    assert_eq!(
        (t.tenant.name.as_str(), t.tenant.status),
        ("Second try", TenantStatus::Active)
    );

    // The database was created: the dead provisioning is finished; the slug is taken.
    let slug = fresh.slug("rp_done");
    let oid = dead_provisioning(&db, &slug).await;
    create_database(&slug, Some(oid)).await;
    let again = provision::create_tenant(&db, &new_tenant(&slug, "Second try"), None, &inv()).await;
    assert!(
        matches!(again, Err(CreateTenantError::Conflict(_))),
        "{again:?}"
    );
    assert_eq!(
        row_status(&db, &slug).await,
        Some(("active".into(), latest()))
    );
}

#[tokio::test]
async fn an_idempotency_key_replays_and_refuses_another_body() {
    let mut fresh = Fresh::new();
    let db = Database::new(fresh.config(&[]), "test-idem").unwrap();
    migrate_system(&db).await.unwrap();
    let slug = fresh.slug("idem");
    let key = IdempotencyKey::parse(b"order-7781").unwrap();
    let first = provision::create_tenant(&db, &new_tenant(&slug, "Idem"), Some(&key), &inv())
        .await
        .unwrap();
    assert!(!first.replayed);
    let second = provision::create_tenant(&db, &new_tenant(&slug, " Idem "), Some(&key), &inv())
        .await
        .unwrap();
    assert!(second.replayed);
    assert_eq!(second.tenant, first.tenant);
    let other =
        provision::create_tenant(&db, &new_tenant(&slug, "Other"), Some(&key), &inv()).await;
    assert!(
        matches!(other, Err(CreateTenantError::IdempotencyMismatch)),
        "{other:?}"
    );
}

fn sqlstate_free(e: &DbError) -> bool {
    e.code().is_none()
}

#[tokio::test]
async fn errors_are_classified_by_what_they_are() {
    let fresh = Fresh::new();
    let db = Database::new(fresh.config(&[]), "test-classify").unwrap();
    migrate_system(&db).await.unwrap();
    let sys = db.system().await.unwrap();
    // A query that finds no row, and a value that does not convert: the statement's fault,
    // not the server's (never a 503 and a retry).
    let none = sys
        .query_one("SELECT 1 WHERE false", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(none, DbError::Postgres(_)) && sqlstate_free(&none),
        "{none:?}"
    );
    let row = sys
        .query_one("SELECT 'text'::text AS t", &[])
        .await
        .unwrap();
    let conversion = row
        .try_get::<_, i32>("t")
        .map_err(DbError::from)
        .unwrap_err();
    assert!(!conversion.is_unavailable(), "{conversion:?}");
    // A statement's own error.
    let syntax = sys.execute("SELEC 1", &[]).await.unwrap_err();
    assert!(!syntax.is_unavailable(), "{syntax:?}");
    assert!(sys.is_usable(), "statement errors keep the connection");
    drop(sys);

    // The server ends our session: unavailable, and the connection is discarded.
    let sys = db.system().await.unwrap();
    let pid: i32 = sys
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    admin()
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let mut closed = None;
    for _ in 0..50 {
        match sys.query_one("SELECT 1", &[]).await {
            Err(e) => {
                closed = Some(e);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let closed = closed.expect("the terminated session fails");
    assert!(closed.is_unavailable(), "{closed:?}");
    assert!(!sys.is_usable());
    drop(sys);
    // The next operation opens a new connection by itself.
    assert!(db
        .system()
        .await
        .unwrap()
        .query_one("SELECT 1", &[])
        .await
        .is_ok());

    // A refused connection is unavailable too.
    let down = Database::new(fresh.config(&[("DB_PORT", "1")]), "test-refused").unwrap();
    let refused = down.connect("postgres").await.unwrap_err();
    assert!(refused.is_unavailable(), "{refused:?}");
}

#[tokio::test]
async fn a_lock_guard_dropped_unreleased_discards_its_connection_and_the_lock() {
    let fresh = Fresh::new();
    let db = Database::new(fresh.config(&[]), "test-guard").unwrap();
    migrate_system(&db).await.unwrap();
    let other = Database::new(fresh.config(&[]), "test-guard-other").unwrap();
    let lock = Lock::Tenant("guarded".into());

    // Released: the connection stays, and the lock is free.
    let sys = db.system().await.unwrap();
    let guard = locks::acquire(&sys, lock.clone(), Duration::from_secs(1))
        .await
        .unwrap()
        .expect("free");
    let other_sys = other.system().await.unwrap();
    assert!(
        locks::try_acquire(&other_sys, lock.clone())
            .await
            .unwrap()
            .is_none(),
        "held"
    );
    assert!(
        other_sys.is_usable(),
        "a lock not taken leaves the connection as it was"
    );
    guard.release().await;
    assert!(sys.is_usable());
    let taken = locks::try_acquire(&other_sys, lock.clone())
        .await
        .unwrap()
        .expect("free again");
    taken.release().await;

    // Dropped without release (a panic, a future dropped at its deadline): the connection is
    // discarded at once, and the server gives the lock to the next taker.
    let guard = locks::try_acquire(&sys, lock.clone())
        .await
        .unwrap()
        .expect("free");
    drop(guard);
    assert!(!sys.is_usable(), "discarded");
    let started = std::time::Instant::now();
    let taken = locks::acquire(&other_sys, lock.clone(), Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the lock died with its connection");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    taken.release().await;
    drop(sys);

    // A wait is bounded, and zero tries once.
    let held = locks::try_acquire(&other_sys, lock.clone())
        .await
        .unwrap()
        .expect("free");
    let sys = db.system().await.unwrap();
    let started = std::time::Instant::now();
    assert!(
        locks::acquire(&sys, lock.clone(), Duration::from_millis(300))
            .await
            .unwrap()
            .is_none()
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert!(locks::acquire(&sys, lock.clone(), Duration::ZERO)
        .await
        .unwrap()
        .is_none());
    held.release().await;
}

#[tokio::test]
async fn idempotency_keys_belong_to_their_caller_and_expire() {
    let mut fresh = Fresh::new();
    let db = Database::new(fresh.config(&[]), "test-idem-scope").unwrap();
    migrate_system(&db).await.unwrap();
    let key = IdempotencyKey::parse(b"signup-1").unwrap();
    let caller = |arn: &str| Invocation {
        caller: Some(arn.to_owned()),
        ..inv()
    };
    let alice = caller("arn:aws:iam::123456789012:user/alice");
    let bob = caller("arn:aws:sts::123456789012:assumed-role/app/bob");

    let a = fresh.slug("scope_a");
    let b = fresh.slug("scope_b");
    let first = provision::create_tenant(&db, &new_tenant(&a, "A"), Some(&key), &alice)
        .await
        .unwrap();
    // Another caller with the same key and another body: its own tenant, no 422.
    let other = provision::create_tenant(&db, &new_tenant(&b, "B"), Some(&key), &bob)
        .await
        .unwrap();
    assert!(!other.replayed);
    assert_ne!(other.tenant.id, first.tenant.id);
    // Each caller replays its own.
    let again = provision::create_tenant(&db, &new_tenant(&a, "A"), Some(&key), &alice)
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.tenant.id, first.tenant.id);
    let mismatch = provision::create_tenant(&db, &new_tenant(&b, "B"), Some(&key), &alice).await;
    assert!(
        matches!(mismatch, Err(CreateTenantError::IdempotencyMismatch)),
        "{mismatch:?}"
    );

    // Once expired, the key is forgotten: the first request sent again is a new request (the
    // slug is taken), and the caller may use the key for another tenant.
    db.system()
        .await
        .unwrap()
        .execute(
            "UPDATE tenants SET idempotency_expires_at = now() - interval '1 second' \
             WHERE slug = $1",
            &[&a.as_str()],
        )
        .await
        .unwrap();
    let late = provision::create_tenant(&db, &new_tenant(&a, "A"), Some(&key), &alice).await;
    assert!(
        matches!(late, Err(CreateTenantError::Conflict(_))),
        "{late:?}"
    );
    let c = fresh.slug("scope_c");
    let reused = provision::create_tenant(&db, &new_tenant(&c, "C"), Some(&key), &alice)
        .await
        .unwrap();
    assert!(!reused.replayed);
    assert_eq!(reused.tenant.slug, c.as_str());
}

#[tokio::test]
async fn a_new_deployment_makes_its_registry_on_first_use() {
    // No migrate-all has run: the first request makes the system database and migrates it.
    let fresh = Fresh::new();
    let db = Database::new(fresh.config(&[]), "test-first-use").unwrap();
    let page = registry::list_tenants(&db, &ListQuery::default())
        .await
        .expect("the registry is made on first use");
    assert!(page.tenants.is_empty());
    assert!(database_exists(&fresh.system_db).await);
    // Every system migration is applied (a later migrate-all has nothing left to do).
    assert!(migrate_system(&db).await.unwrap().is_empty());
}
