//! `make dev` itself: a second local stack of the test's own (its own clusters and ports),
//! started, given a tenant whose migrations cannot apply, stopped, and started again: it
//! comes up and serves whatever state its tenants are in, and SIGTERM stops all of it.

use std::process::Stdio;

use super::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `scripts/stack.sh dev` of its own, in `dir`, on its own ports.
struct DevStack {
    dir: std::path::PathBuf,
    ports: [u16; 4],
}

impl DevStack {
    fn new() -> DevStack {
        let dir = std::env::temp_dir().join(format!(
            "dbtools-devstack-{}",
            uuid::Uuid::new_v4().simple()
        ));
        DevStack {
            dir,
            ports: [free_port(), free_port(), free_port(), free_port()],
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let script = format!("{}/../scripts/stack.sh", env!("CARGO_MANIFEST_DIR"));
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg(script)
            .args(args)
            .env("STACK_DIR", &self.dir)
            .env("PG_PORT", self.ports[0].to_string())
            .env("PG2_PORT", self.ports[1].to_string())
            .env("SM_PORT", self.ports[2].to_string())
            .env("LAMBDA_PORT", self.ports[3].to_string())
            // Nothing of the test's own stack leaks into this one.
            .env_remove("AWS_ENDPOINT_URL_SECRETS_MANAGER")
            .env_remove("AWS_ENDPOINT_URL_SQS")
            .env_remove("MIGRATE_QUEUE_URL");
        cmd
    }

    /// Starts `make dev`'s script; answers once it says it is ready (or panics with its log).
    async fn start(&self) -> (tokio::process::Child, String) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = self.dir.join("dev.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = self
            .command(&["dev"])
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .process_group(0)
            .spawn()
            .expect("start the stack");
        let ready = eventually(Duration::from_secs(240), || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("Ctrl-C stops everything")
        })
        .await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(ready, "the stack came up:\n{text}");
        (child, text)
    }

    fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[3])
    }

    /// SIGTERM, as an operator's Ctrl-C or a supervisor would; then everything it started is
    /// gone: its ports are free.
    async fn stop(&self, mut child: tokio::process::Child) {
        let pid = child.id().expect("running") as i32;
        run_ok(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]));
        let exited = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
        assert!(exited.is_ok(), "the stack stopped on SIGTERM");
        for port in self.ports {
            assert!(
                eventually(Duration::from_secs(10), || async {
                    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                })
                .await,
                "port {port} is free again"
            );
        }
    }
}

impl Drop for DevStack {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(format!(
                "{}/../scripts/stack.sh",
                env!("CARGO_MANIFEST_DIR")
            ))
            .arg("wipe")
            .env("STACK_DIR", &self.dir)
            .env("PG_PORT", self.ports[0].to_string())
            .env("PG2_PORT", self.ports[1].to_string())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn make_dev_comes_up_and_serves_whatever_state_its_tenants_are_in() {
    let stack = DevStack::new();
    let (child, _) = stack.start().await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/tenants", stack.api()))
        .json(&json!({"name": "Broken", "slug": "broken"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    // Its history edited behind the registry's back, and the registry's record forgotten: the
    // next run opens it and refuses it (a released migration that differs).
    let pg = format!(
        "postgres://postgres:postgres@127.0.0.1:{}/dbtools_tenant_broken",
        stack.ports[0]
    );
    let (c, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute("UPDATE refinery_schema_history SET checksum = '1' WHERE version = 1")
        .await
        .unwrap();
    let registry = format!(
        "postgres://postgres:postgres@127.0.0.1:{}/dbtools",
        stack.ports[0]
    );
    let (r, conn) = tokio_postgres::connect(&registry, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    r.batch_execute("UPDATE tenants SET schema_fingerprint = NULL WHERE slug = 'broken'")
        .await
        .unwrap();
    drop((c, r));
    stack.stop(child).await;

    // Started again: the start-up run fails on that tenant, says so, and the stack serves.
    let (child, log) = stack.start().await;
    assert!(
        log.contains("migrate-all did not bring everything up to date"),
        "{log}"
    );
    assert!(log.contains("make reset"), "{log}");
    let r = http
        .get(format!("{}/api/tenants/broken", stack.api()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    stack.stop(child).await;
}
