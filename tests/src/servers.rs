//! The stack's servers through the API (`/api/servers/{name}`), and putting them back as
//! they were after a test changed them (`Restore`).

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::{
    http::{get, request, request_on_own_client, Reply},
    locks::block_on_own_thread,
};

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
