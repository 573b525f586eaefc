//! Tenants a test makes through the API, and their removal afterwards (`Cleanup`), even
//! when the test panicked.

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    aws::secrets,
    env::{database_name, secret_name, SERVERS},
    http::post_tenant,
    locks::{block_on_own_thread, test_lock, TestLock, FLEET_LOCK, TEMPLATE_LOCK},
    pg::{admin_on, connect_on, registry},
};

/// A slug no other test (or earlier run) uses.
pub fn unique_slug(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
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
