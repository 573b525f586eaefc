//! Harness for the end-to-end tests: the local stack's addresses (exported by
//! `scripts/stack.sh run`), an HTTP client for the real routes, and a direct PostgreSQL
//! connection to check what exists afterwards.

use std::{sync::OnceLock, time::Duration};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

pub mod runtime;

pub use serde_json::json;

/// Advisory lock key shared by the tests (not the product's key space).
const TEST_LOCK_NS: i32 = 0x7465_7374; // "test"
/// Held shared by every test that provisions, exclusively by a test that changes what all
/// provisioning sees (the template database).
pub const TEMPLATE_LOCK: i32 = 1;
/// Held exclusively by tests that run migrate-all over the whole fleet, shared by tests that
/// put a tenant into a state a fleet-wide run would report.
pub const FLEET_LOCK: i32 = 2;

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests through `make test` (scripts/stack.sh run)")
    })
}

pub fn api_url() -> String {
    var("DBTOOLS_API_URL")
}

pub fn pg_url() -> String {
    var("DBTOOLS_PG_URL")
}

/// The servers of the local stack: `primary` (the registry's cluster) and `secondary`.
pub const SERVERS: [&str; 2] = ["primary", "secondary"];

/// A superuser URL of a local server.
pub fn pg_url_of(server: &str) -> String {
    match server {
        "primary" => var("DBTOOLS_PG_URL"),
        "secondary" => var("DBTOOLS_PG2_URL"),
        other => panic!("the local stack has no server {other:?}"),
    }
}

fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("http client")
    })
}

/// A response as a test looks at it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
    pub request_id: Option<String>,
    pub content_type: Option<String>,
}

impl Reply {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn detail_fields(&self) -> Vec<String> {
        self.body["error"]["details"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|x| x["field"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Error bodies never carry SQL, host names, stack traces or secrets.
    pub fn assert_no_internals(&self) {
        let lower = self.text.to_lowercase();
        for needle in [
            "select ",
            "insert ",
            "update ",
            "create database",
            "drop database",
            "sqlstate",
            "127.0.0.1",
            "localhost",
            "5433",
            "5435",
            "password",
            "postgres://",
            "panicked",
            "backtrace",
            "dbtools/admin",
            "dbtools/servers/",
            "refinery",
        ] {
            assert!(
                !lower.contains(needle),
                "response leaks {needle:?}: {}",
                self.text
            );
        }
    }

    pub fn assert_json_with_request_id(&self) {
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/json"),
            "{self:?}"
        );
        assert!(
            self.request_id.as_deref().is_some_and(|r| !r.is_empty()),
            "no request id: {self:?}"
        );
        if self.status.is_client_error() || self.status.is_server_error() {
            assert_eq!(
                self.body["error"]["request_id"].as_str(),
                self.request_id.as_deref(),
                "{self:?}"
            );
        }
    }
}

pub async fn request(method: Method, path: &str, body: Option<Vec<u8>>) -> Reply {
    request_as(method, path, body, "application/json").await
}

pub async fn request_as(
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    content_type: &str,
) -> Reply {
    request_with_headers(method, path, body, &[("content-type", content_type)]).await
}

pub async fn request_with_headers(
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> Reply {
    send(http(), method, path, body, headers).await
}

/// A request on a client of its own: for code that runs on another runtime than the test's
/// (a `Drop` through [`block_on_own_thread`]), where the shared client's pooled connections,
/// which belong to the test's runtime, would never be driven.
pub async fn request_on_own_client(method: Method, path: &str, body: Option<Vec<u8>>) -> Reply {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");
    send(&client, method, path, body, &[]).await
}

async fn send(
    client: &reqwest::Client,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = client.request(method, format!("{}{path}", api_url()));
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    let resp = req.send().await.expect("the local API answers");
    let status = resp.status();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        body,
        text,
        request_id,
        content_type,
    }
}

pub async fn post_tenant(body: &Value) -> Reply {
    request(
        Method::POST,
        "/api/tenants",
        Some(body.to_string().into_bytes()),
    )
    .await
}

/// `POST /api/tenants` with an `Idempotency-Key`.
pub async fn post_with_key(body: &Value, key: &str) -> Reply {
    request_with_headers(
        Method::POST,
        "/api/tenants",
        Some(body.to_string().into_bytes()),
        &[("idempotency-key", key)],
    )
    .await
}

pub async fn post_raw(body: &[u8]) -> Reply {
    request(Method::POST, "/api/tenants", Some(body.to_vec())).await
}

pub async fn get(path: &str) -> Reply {
    request(Method::GET, path, None).await
}

pub async fn delete(path: &str) -> Reply {
    request(Method::DELETE, path, None).await
}

/// A slug no other test (or earlier run) uses.
pub fn unique_slug(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

pub fn database_name(slug: &str) -> String {
    format!("dbtools_tenant_{slug}")
}

/// A connection as the PostgreSQL superuser, to `dbname` on `primary`.
pub async fn connect(dbname: &str) -> Client {
    connect_on("primary", dbname).await
}

/// A connection as the PostgreSQL superuser, to `dbname` on a local server.
pub async fn connect_on(server: &str, dbname: &str) -> Client {
    let mut cfg: tokio_postgres::Config = pg_url_of(server).parse().expect("a PostgreSQL URL");
    cfg.dbname(dbname);
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to the local PostgreSQL {server}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The superuser on `primary`'s maintenance database.
pub async fn admin() -> Client {
    connect("postgres").await
}

/// The superuser on a server's maintenance database.
pub async fn admin_on(server: &str) -> Client {
    connect_on(server, "postgres").await
}

/// The server the registry says holds the tenant (none without a row, or once purged off a
/// removed server).
pub async fn tenant_server(slug: &str) -> Option<String> {
    registry()
        .await
        .query_opt("SELECT server FROM tenants WHERE slug = $1", &[&slug])
        .await
        .expect("query the registry")
        .and_then(|r| r.get(0))
}

/// A superuser connection to the tenant's database, on the server the registry names.
pub async fn connect_tenant(slug: &str) -> Client {
    let server = tenant_server(slug)
        .await
        .unwrap_or_else(|| panic!("{slug}: the registry names no server"));
    connect_on(&server, &database_name(slug)).await
}

/// The local servers that hold a database of this name.
pub async fn servers_with_database(name: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    for server in SERVERS {
        let found = admin_on(server)
            .await
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .expect("query pg_database")
            .is_some();
        if found {
            out.push(server);
        }
    }
    out
}

pub async fn registry() -> Client {
    connect(&std::env::var("SYSTEM_DB_NAME").unwrap_or_else(|_| "dbtools".into())).await
}

/// True when a database of this name exists on any local server.
pub async fn database_exists(name: &str) -> bool {
    !servers_with_database(name).await.is_empty()
}

/// The registry row of a slug: (status, schema_version), if any.
pub async fn registry_row(slug: &str) -> Option<(String, i32)> {
    registry()
        .await
        .query_opt(
            "SELECT status, schema_version FROM tenants WHERE slug = $1",
            &[&slug],
        )
        .await
        .expect("query the registry")
        .map(|r| (r.get(0), r.get(1)))
}

/// Databases whose name contains `fragment`, on any local server.
pub async fn databases_like(fragment: &str) -> Vec<String> {
    let mut out = Vec::new();
    for server in SERVERS {
        out.extend(
            admin_on(server)
                .await
                .query(
                    "SELECT datname FROM pg_database WHERE strpos(datname, $1) > 0 ORDER BY 1",
                    &[&fragment],
                )
                .await
                .expect("query pg_database")
                .iter()
                .map(|r| r.get::<_, String>(0)),
        );
    }
    out.sort();
    out
}

/// The AWS SDK's configuration for a local endpoint (moto, or the bench's SQS sink): fixed
/// credentials and region, every call bounded.
pub async fn local_aws(endpoint: &str) -> aws_config::SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .operation_timeout(Duration::from_secs(10))
        .build();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "local", "local", None, None, "tests",
        ))
        .load()
        .await
}

/// The local Secrets Manager (moto), through the real AWS SDK (what an application would use).
/// A client per call: the tests run on several runtimes (cleanup has one of its own), and a
/// client's pooled connections belong to the runtime that made them.
pub async fn secrets() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&local_aws(&var("AWS_ENDPOINT_URL_SECRETS_MANAGER")).await)
}

/// The local SQS (moto), through the real AWS SDK; a client per call, as [`secrets`].
pub async fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&local_aws(&var("AWS_ENDPOINT_URL_SQS")).await)
}

/// The migrate queue of the local stack.
pub fn queue_url() -> String {
    var("MIGRATE_QUEUE_URL")
}

/// The SQS event Lambda's event source mapping hands `migrate-tenant` for these message
/// bodies (one record each).
pub fn sqs_event(bodies: &[Value]) -> Value {
    let records: Vec<Value> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            serde_json::json!({
                "messageId": format!("test-{i}-{}", uuid::Uuid::new_v4()),
                "receiptHandle": "test", "body": body.to_string(),
                "attributes": {"ApproximateReceiveCount": "2", "SentTimestamp": "0",
                    "SenderId": "test", "ApproximateFirstReceiveTimestamp": "0"},
                "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:dbtools-migrate",
                "awsRegion": "us-east-1"})
        })
        .collect();
    serde_json::json!({ "Records": records })
}

/// Waits (at most `within`) for a run of the ledger to end; the run as `GET /api/runs/{id}`
/// shows it, with up to 100 of its tenants.
pub async fn wait_run_end(id: &str, within: Duration) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let r = get(&format!("/api/runs/{id}?limit=100")).await;
        // A 503 is asked again: moto, busy with the queue, is also the Secrets Manager that a
        // new instance of the runs function reads first (within 4 s).
        if r.status == StatusCode::OK && r.body["status"] != "running" {
            return r.body;
        }
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            r.text
        );
        assert!(
            std::time::Instant::now() < deadline,
            "run {id} still running after {within:?}: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A tenant's row in a run (`GET /api/runs/{id}` body).
pub fn run_tenant<'a>(run: &'a Value, slug: &str) -> &'a Value {
    run["tenants"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["slug"] == slug))
        .unwrap_or_else(|| panic!("{slug} not in the run: {run}"))
}

/// A tenant's secret as the application reads it (`AWSCURRENT`), parsed. The stage is named
/// (as AWS defaults to it): moto answers an unnamed one with the version the secret was made
/// with, even after a rotation moved `AWSCURRENT`.
pub async fn read_secret(id: &str) -> Value {
    let out = secrets()
        .await
        .get_secret_value()
        .secret_id(id)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap_or_else(|e| panic!("read {id}: {e:?}"));
    serde_json::from_str(out.secret_string().expect("a secret string")).expect("JSON")
}

/// What Secrets Manager says of a secret name: `None` when there is none; `Some(true)` once
/// it is scheduled for deletion.
pub async fn secret_deleting(name: &str) -> Option<bool> {
    match secrets()
        .await
        .describe_secret()
        .secret_id(name)
        .send()
        .await
    {
        Ok(out) => Some(out.deleted_date().is_some()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            None
        }
        Err(e) => panic!("describe {name}: {e:?}"),
    }
}

/// Connects as a secret's user (the tenant's login), to `dbname` (its own by default).
pub async fn connect_as(
    secret: &Value,
    dbname: Option<&str>,
) -> Result<Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(secret["host"].as_str().unwrap())
        .port(secret["port"].as_u64().unwrap() as u16)
        .user(secret["username"].as_str().unwrap())
        .password(secret["password"].as_str().unwrap())
        .dbname(dbname.unwrap_or_else(|| secret["dbname"].as_str().unwrap()))
        .connect_timeout(Duration::from_secs(5));
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A role, on whichever local server has it: `None` when none has, else whether it may log
/// in.
pub async fn role_can_login(role: &str) -> Option<bool> {
    for server in SERVERS {
        let found = admin_on(server)
            .await
            .query_opt(
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await
            .expect("query pg_roles")
            .map(|r| r.get(0));
        if found.is_some() {
            return found;
        }
    }
    None
}

/// A tenant's secret name (the local stack's prefix).
pub fn secret_name(slug: &str) -> String {
    format!("dbtools/tenants/{slug}")
}

/// The local stack's log file `name` (`watch.log`, `pg/server.log`), as text.
pub fn stack_log(name: &str) -> String {
    let path = format!("{}/{name}", var("DBTOOLS_LOCAL_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Invokes a non-HTTP function through the local Lambda Invoke API.
pub async fn invoke(function: &str, event: &Value) -> (StatusCode, Value) {
    let resp = http()
        .post(format!(
            "{}/2015-03-31/functions/{function}/invocations",
            api_url()
        ))
        .body(event.to_string())
        .send()
        .await
        .expect("the local Lambda API answers");
    let status = resp.status();
    let text = resp.text().await.expect("a payload");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Makes a database of `name` by hand on every local server, with data in it, as somebody else
/// than the product would (a squatter): its OID is PostgreSQL's choice, not the registry's.
/// On every server, so that placement cannot sidestep it.
pub async fn plant_squatter(name: &str) {
    for server in SERVERS {
        admin_on(server)
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create the squatter");
        connect_on(server, name)
            .await
            .batch_execute("CREATE TABLE precious (v int); INSERT INTO precious VALUES (42)")
            .await
            .expect("fill the squatter");
    }
}

/// The squatters [`plant_squatter`] made are as they were: their data, and no migration ran
/// in them.
pub async fn assert_squatter_untouched(name: &str) {
    for server in SERVERS {
        assert_squatter_untouched_on(server, name).await;
    }
}

async fn assert_squatter_untouched_on(server: &str, name: &str) {
    let squatter = connect_on(server, name).await;
    let data: Vec<i32> = squatter
        .query("SELECT v FROM precious", &[])
        .await
        .expect("read the squatter")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(data, [42], "{name}: data untouched");
    let migrated: bool = squatter
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await
        .expect("look for a history")
        .get(0);
    assert!(
        !migrated,
        "{name}: no migration ran in a database we did not make"
    );
}

/// Drops a tenant's database and login (on every local server), its secret and its registry
/// row; used to clean up after a test.
pub async fn purge_tenant(slug: &str) {
    let db = database_name(slug);
    for server in SERVERS {
        let admin = admin_on(server).await;
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .await;
        // What the login may have left where every login may connect (isolation tests).
        for shared in ["postgres", "template1"] {
            let _ = connect_on(server, shared)
                .await
                .batch_execute(&format!("DROP OWNED BY \"{db}\""))
                .await;
        }
        let _ = admin
            .batch_execute(&format!("DROP ROLE IF EXISTS \"{db}\""))
            .await;
    }
    let _ = secrets()
        .await
        .delete_secret()
        .secret_id(secret_name(slug))
        .force_delete_without_recovery(true)
        .send()
        .await;
    let _ = registry()
        .await
        .execute("DELETE FROM tenants WHERE slug = $1", &[&slug])
        .await;
}

/// Removes the listed tenants when dropped, even when the test panicked.
///
/// Declare it before the test's locks: it is dropped after them, and takes the locks it
/// needs itself (the fleet lock, then the template lock, both shared).
///
/// A test that runs migrate-all over the whole fleet holds the fleet test lock through its
/// `Cleanup` ([`Cleanup::holding_fleet`]): its tenants are removed before the lock is
/// released, so the next whole-fleet run never meets a tenant this test broke. Other tests
/// take the lock shared while they remove theirs, so that no tenant vanishes under a run.
pub struct Cleanup {
    slugs: Vec<String>,
    fleet: Option<TestLock>,
}

impl Cleanup {
    pub fn new() -> Self {
        Cleanup {
            slugs: Vec::new(),
            fleet: None,
        }
    }

    /// Takes the fleet test lock exclusively, for the life of this value.
    pub async fn holding_fleet() -> Self {
        Cleanup {
            slugs: Vec::new(),
            fleet: Some(test_lock(FLEET_LOCK, true).await),
        }
    }

    pub fn add(&mut self, slug: &str) -> String {
        self.slugs.push(slug.to_owned());
        slug.to_owned()
    }
}

impl Default for Cleanup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let slugs = std::mem::take(&mut self.slugs);
        let fleet = self.fleet.take();
        if slugs.is_empty() {
            return;
        }
        block_on_own_thread(async move {
            let _fleet = match fleet {
                Some(lock) => lock,
                None => test_lock(FLEET_LOCK, false).await,
            };
            // Shared: no tenant vanishes under a test that holds the servers' counts still
            // (the exclusive holders declare their `Cleanup` first, so it runs after they
            // let go).
            let _template = test_lock(TEMPLATE_LOCK, false).await;
            for slug in &slugs {
                purge_tenant(slug).await;
            }
        });
    }
}

/// `PATCH /api/servers/{name}` with `body`.
pub async fn patch_server(name: &str, body: &Value) -> Reply {
    request(
        Method::PATCH,
        &format!("/api/servers/{name}"),
        Some(body.to_string().into_bytes()),
    )
    .await
}

/// `GET /api/servers/{name}`, which must answer 200.
pub async fn server(name: &str) -> Value {
    let r = get(&format!("/api/servers/{name}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

/// Puts the servers' state, capacity and budget back as they were, when dropped (even when
/// the test panicked). A test that changes a server holds the template test lock exclusively
/// meanwhile.
pub struct Restore(Vec<(String, Value)>);

impl Restore {
    pub async fn save(names: &[&str]) -> Restore {
        let mut saved = Vec::new();
        for name in names {
            saved.push(((*name).to_owned(), server(name).await));
        }
        Restore(saved)
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        let saved = std::mem::take(&mut self.0);
        block_on_own_thread(async move {
            for (name, was) in saved {
                let body = serde_json::json!({"state": was["state"],
                    "max_tenants": was["max_tenants"],
                    "migrate_concurrency": was["migrate_concurrency"]});
                let r = request_on_own_client(
                    Method::PATCH,
                    &format!("/api/servers/{name}"),
                    Some(body.to_string().into_bytes()),
                )
                .await;
                assert_eq!(r.status, StatusCode::OK, "restore {name}: {}", r.text);
            }
        });
    }
}

/// Runs `fut` to completion from synchronous code (a `Drop`, which runs outside async, possibly
/// while the test's own runtime is blocked): on a runtime of its own, on a thread of its own.
pub fn block_on_own_thread(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(fut);
    })
    .join();
}

/// A test-level advisory lock, held for as long as the value lives. Its connection lives on
/// a runtime of its own, so that dropping it releases the lock even while the test's own
/// runtime is blocked (e.g. in `Cleanup::drop`).
pub struct TestLock {
    _client: Client,
}

fn harness_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("harness runtime")
    })
}

/// A connection of a test that holds something on a server (a lock, a transaction) until
/// dropped. It lives on a runtime of its own, so that dropping it ends the session even while
/// the test's runtime is blocked (a `Cleanup` that would otherwise wait for what it holds).
pub struct Held {
    client: Option<Client>,
}

impl Held {
    /// Runs `sql` (`BEGIN; LOCK ...`, say) as the superuser on `dbname` of `server`, keeping the
    /// session.
    pub async fn on(server: &str, dbname: &str, sql: &str) -> Held {
        let (server, dbname, sql) = (server.to_owned(), dbname.to_owned(), sql.to_owned());
        let client = harness_runtime()
            .spawn(async move {
                let client = connect_on(&server, &dbname).await;
                client
                    .batch_execute(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                client
            })
            .await
            .expect("held");
        Held {
            client: Some(client),
        }
    }

    /// The held session, for more statements.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("held")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Dropped on the harness runtime, which drives its connection: the session ends now.
        if let Some(client) = self.client.take() {
            harness_runtime().spawn(async move { drop(client) });
        }
    }
}

/// Takes a test lock; waits at most 10 minutes (a stuck test, not a deadlock, is the only
/// way to wait that long).
pub async fn test_lock(key: i32, exclusive: bool) -> TestLock {
    let client = harness_runtime()
        .spawn(async move {
            let client = admin().await;
            client
                .batch_execute("SET lock_timeout = '600s'")
                .await
                .expect("set lock_timeout");
            let sql = if exclusive {
                "SELECT pg_advisory_lock($1, $2)"
            } else {
                "SELECT pg_advisory_lock_shared($1, $2)"
            };
            client
                .execute(sql, &[&TEST_LOCK_NS, &key])
                .await
                .expect("take a test lock");
            client
        })
        .await
        .expect("lock task");
    TestLock { _client: client }
}

/// Invokes migrate-all through the local Lambda Invoke API (what `cargo lambda invoke`
/// does). Returns the status and the JSON payload (the report, or `errorType`/`errorMessage`).
pub async fn invoke_migrate_all(event: &Value) -> (StatusCode, Value) {
    invoke("migrate-all", event).await
}

/// The report row of `slug`, if the report has one.
pub fn report_row<'a>(report: &'a Value, slug: &str) -> Option<&'a Value> {
    report["tenants"]
        .as_array()?
        .iter()
        .find(|t| t["slug"] == slug)
}

/// The tenant migrations of this release (the files in `migrations_tenant/`), in order.
pub fn all_versions() -> Vec<i32> {
    migration_versions("migrations_tenant")
}

/// The versions of the migration files in a folder of the repository, in order.
pub fn migration_versions<V: std::str::FromStr + Ord>(folder: &str) -> Vec<V> {
    let dir = format!("{}/../{folder}", env!("CARGO_MANIFEST_DIR"));
    let mut versions: Vec<V> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|f| {
            let name = f.ok()?.file_name().into_string().ok()?;
            name.strip_prefix('V')?.split("__").next()?.parse().ok()
        })
        .collect();
    versions.sort_unstable();
    versions
}

/// The latest tenant migration.
pub fn latest() -> i32 {
    *all_versions().last().expect("tenant migrations")
}

/// Undoes every migration after V1 by hand in a tenant database (what V3 granted, the table V2
/// made, their history rows); the registry says version 1, as a tenant left behind by a
/// release would be.
pub async fn undo_to_v1(slug: &str) {
    connect_tenant(slug)
        .await
        .batch_execute(
            "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM dbtools_tenant_rw; \
             REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM dbtools_tenant_rw; \
             ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM dbtools_tenant_rw; \
             ALTER DEFAULT PRIVILEGES IN SCHEMA public \
               REVOKE ALL ON SEQUENCES FROM dbtools_tenant_rw; \
             DROP TABLE activity_log; DELETE FROM refinery_schema_history WHERE version > 1",
        )
        .await
        .expect("undo the migrations after V1");
    registry()
        .await
        .execute(
            "UPDATE tenants SET schema_version = 1 WHERE slug = $1",
            &[&slug],
        )
        .await
        .expect("registry at V1");
}

/// Puts a tenant back before V4, as a release that adds it finds it: V4's column, its
/// concurrently built index and its history row gone, the registry at version 3.
pub async fn undo_v4(slug: &str) {
    connect_tenant(slug)
        .await
        .batch_execute(
            "DROP INDEX IF EXISTS activity_log_actor_idx; \
             ALTER TABLE activity_log DROP COLUMN IF EXISTS actor_id; \
             DELETE FROM refinery_schema_history WHERE version >= 4",
        )
        .await
        .unwrap_or_else(|e| panic!("undo V4 in {slug}: {e}"));
    registry()
        .await
        .execute(
            "UPDATE tenants SET schema_version = 3 WHERE slug = $1",
            &[&slug],
        )
        .await
        .expect("registry at V3");
}

/// Versions recorded in a tenant's history, in order, duplicates included.
pub async fn history_versions(slug: &str) -> Vec<i32> {
    connect_tenant(slug)
        .await
        .query(
            "SELECT version FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await
        .expect("read the history")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

pub async fn has_table(slug: &str, table: &str) -> bool {
    connect_tenant(slug)
        .await
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'public' AND tablename = $1)",
            &[&table],
        )
        .await
        .expect("query pg_tables")
        .get(0)
}

/// Creates tenants through the API (placed by the product) and registers them for cleanup.
pub async fn create_tenants(cleanup: &mut Cleanup, prefix: &str, n: usize) -> Vec<String> {
    create_tenants_on(cleanup, prefix, n, None).await
}

/// Creates tenants through the API on `server` (`None`: placed by the product) and registers
/// them for cleanup.
pub async fn create_tenants_on(
    cleanup: &mut Cleanup,
    prefix: &str,
    n: usize,
    server: Option<&str>,
) -> Vec<String> {
    let base = unique_slug(prefix);
    let mut slugs = Vec::new();
    for i in 0..n {
        let slug = cleanup.add(&format!("{base}_{i}"));
        let mut body = json!({"name": format!("Tenant {i}"), "slug": slug});
        if let Some(server) = server {
            body["server"] = json!(server);
        }
        let r = post_tenant(&body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        if let Some(server) = server {
            assert_eq!(r.body["server"], server, "{}", r.text);
        }
        slugs.push(slug);
    }
    slugs
}

/// Creates (or overwrites) a secret in the local Secrets Manager.
pub async fn put_secret(name: &str, value: &Value) {
    let client = secrets().await;
    let created = client
        .create_secret()
        .name(name)
        .secret_string(value.to_string())
        .send()
        .await;
    if let Err(e) = created {
        if !e
            .as_service_error()
            .is_some_and(|s| s.is_resource_exists_exception())
        {
            panic!("create {name}: {e:?}");
        }
        client
            .put_secret_value()
            .secret_id(name)
            .secret_string(value.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {name}: {e:?}"));
    }
}

/// A PostgreSQL cluster of a test's own (initdb, on a free port), stopped and deleted when
/// dropped. Its superuser is `postgres`.
pub struct ThrowawayCluster {
    dir: std::path::PathBuf,
    pub port: u16,
    password: String,
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// A server binary (`DBTOOLS_PG_BIN`), run as the postgres user when we are root (initdb
/// refuses root).
fn pg_command(bin: &str) -> std::process::Command {
    let path = format!("{}/{bin}", var("DBTOOLS_PG_BIN"));
    if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        std::process::Command::new(path)
    }
}

/// Runs a command, which must succeed.
pub fn run_ok(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl ThrowawayCluster {
    /// A plain cluster, the superuser's password `throwaway`.
    pub fn start() -> ThrowawayCluster {
        Self::start_with("throwaway", |_| String::new())
    }

    /// A cluster whose superuser has `password`; `prepare` gets its directory (before the
    /// server starts, and before its files are given to the postgres user) and answers the
    /// extra server options (`-c ...`), which may name files it put there.
    pub fn start_with(
        password: &str,
        prepare: impl FnOnce(&std::path::Path) -> String,
    ) -> ThrowawayCluster {
        let dir = std::env::temp_dir().join(format!(
            "dbtools-throwaway-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("a directory");
        let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let extra = prepare(&dir);
        std::fs::write(dir.join("pwfile"), format!("{password}\n")).expect("pwfile");
        if is_root() {
            run_ok(std::process::Command::new("chown").args(["-R", "postgres:", &d("")]));
        }
        run_ok(pg_command("initdb").args([
            "-D",
            &d("data"),
            "-U",
            "postgres",
            &format!("--pwfile={}", d("pwfile")),
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("its address")
            .port();
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} {extra}",
            d("")
        );
        run_ok(pg_command("pg_ctl").args([
            "-D",
            &d("data"),
            "-l",
            &d("log"),
            "-w",
            "-o",
            &opts,
            "start",
        ]));
        ThrowawayCluster {
            dir,
            port,
            password: password.to_owned(),
        }
    }

    /// A hot standby of this cluster (a base backup streaming from it), on a port of its
    /// own: read-only, `pg_is_in_recovery()`.
    pub fn standby(&self) -> ThrowawayCluster {
        let dir =
            std::env::temp_dir().join(format!("dbtools-standby-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
        if is_root() {
            run_ok(std::process::Command::new("chown").args(["-R", "postgres:", &d("")]));
        }
        run_ok(
            pg_command("pg_basebackup")
                .env("PGPASSWORD", &self.password)
                .args([
                    "-D",
                    &d("data"),
                    "-R",
                    "--checkpoint=fast",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ]),
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("its address")
            .port();
        let opts = format!("-p {port} -c listen_addresses=127.0.0.1 -k {}", d(""));
        run_ok(pg_command("pg_ctl").args([
            "-D",
            &d("data"),
            "-l",
            &d("log"),
            "-w",
            "-o",
            &opts,
            "start",
        ]));
        ThrowawayCluster {
            dir,
            port,
            password: self.password.clone(),
        }
    }

    /// A file in the cluster's directory.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    /// A superuser connection to `dbname`.
    pub async fn connect(&self, dbname: &str) -> Client {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .password(self.password.as_str())
            .dbname(dbname);
        let (client, conn) = cfg.connect(NoTls).await.expect("connect to the cluster");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        let data = self.path("data");
        let _ = pg_command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway cluster registered as a server of the stack (`{prefix}-{id}`, a secret of its
/// own under `dbtools/servers/`, room for `max_tenants`), removed from the stack when dropped,
/// then stopped and deleted. Declare it after a `Cleanup::holding_fleet()`: a whole-fleet run
/// must not meet a server that comes and goes.
pub struct RegisteredCluster {
    pub name: String,
    pub cluster: ThrowawayCluster,
}

impl RegisteredCluster {
    pub async fn start(prefix: &str, max_tenants: i64) -> RegisteredCluster {
        let cluster = ThrowawayCluster::start();
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let name = format!("{prefix}-{id}");
        let secret = format!("dbtools/servers/{name}");
        put_secret(
            &secret,
            &json!({"username": "postgres", "password": "throwaway"}),
        )
        .await;
        let r = request(
            Method::POST,
            "/api/servers",
            Some(
                json!({"name": name, "host": "127.0.0.1", "port": cluster.port,
                       "secret_arn": secret, "max_tenants": max_tenants,
                       "migrate_concurrency": 2})
                .to_string()
                .into_bytes(),
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "register {name}: {}", r.text);
        RegisteredCluster { name, cluster }
    }
}

impl Drop for RegisteredCluster {
    /// Removes the server; should a failed test have left tenants there, their rows go first
    /// (their databases go with the cluster), so that no later run meets a server that is gone.
    fn drop(&mut self) {
        let name = self.name.clone();
        block_on_own_thread(async move {
            let path = format!("/api/servers/{name}");
            let mut r = request_on_own_client(Method::DELETE, &path, None).await;
            if r.status == StatusCode::CONFLICT {
                let _ = registry()
                    .await
                    .execute("DELETE FROM tenants WHERE server = $1", &[&name])
                    .await;
                r = request_on_own_client(Method::DELETE, &path, None).await;
            }
            if r.status != StatusCode::OK && r.status != StatusCode::NOT_FOUND {
                eprintln!("could not remove the server {name}: {}", r.text);
            }
        });
    }
}

/// A queue of the test's own in the local SQS (the local trigger does not deliver it), so that
/// the test hands its messages to a worker of its own; deleted when dropped.
pub struct OwnQueue {
    pub url: String,
}

impl OwnQueue {
    pub async fn new() -> OwnQueue {
        let url = sqs()
            .await
            .create_queue()
            .queue_name(format!("dbtools-test-{}", uuid::Uuid::new_v4()))
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_owned();
        OwnQueue { url }
    }

    /// The bodies of `n` messages (waiting at most 20 s for them).
    pub async fn receive(&self, n: usize) -> Vec<Value> {
        let sqs = sqs().await;
        let mut bodies = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while bodies.len() < n && std::time::Instant::now() < deadline {
            let got = sqs
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            for m in got.messages() {
                bodies.push(serde_json::from_str(m.body().unwrap()).unwrap());
            }
        }
        assert_eq!(bodies.len(), n, "{bodies:?}");
        bodies
    }

    /// A queued run of `slugs`, planned by a migrate-all of its own that sends to this queue:
    /// the run's id and its messages.
    pub async fn plan(&self, slugs: &[String]) -> (String, Vec<Value>) {
        let api = runtime::RuntimeApi::start(json!({"slugs": slugs, "inline": false})).await;
        let _planner = api.spawn("migrate-all", &[("MIGRATE_QUEUE_URL", &self.url)]);
        let answer = api
            .wait_response(Duration::from_secs(60))
            .await
            .expect("planned");
        assert_eq!(answer["status"], "queued", "{answer}");
        let id = answer["run_id"].as_str().unwrap().to_owned();
        (id, self.receive(slugs.len()).await)
    }
}

impl Drop for OwnQueue {
    fn drop(&mut self) {
        let url = self.url.clone();
        block_on_own_thread(async move {
            let _ = sqs().await.delete_queue().queue_url(&url).send().await;
        });
    }
}
