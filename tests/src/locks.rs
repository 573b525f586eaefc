//! What tests hold while they run: the test-level advisory locks that keep tests which
//! change what all others see apart, sessions held open on a server, and the runtime of
//! their own that lets a `Drop` release them while the test's runtime is blocked.

use std::sync::OnceLock;

use tokio_postgres::Client;

use crate::pg::{admin, connect_on};

/// Advisory lock key shared by the tests (not the product's key space).
const TEST_LOCK_NS: i32 = 0x7465_7374; // "test"
/// Held shared by every test that provisions, exclusively by a test that changes what all
/// provisioning sees (the template database).
pub const TEMPLATE_LOCK: i32 = 1;
/// Held exclusively by tests that run migrate-all over the whole fleet, shared by tests that
/// put a tenant into a state a fleet-wide run would report.
pub const FLEET_LOCK: i32 = 2;

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
