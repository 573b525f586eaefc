//! PostgreSQL clusters of a test's own: a throwaway cluster (and its hot standby), and one
//! registered as a server of the stack for the life of the test.

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio_postgres::{Client, NoTls};

use crate::{
    aws::put_secret,
    env::var,
    http::{request, request_on_own_client},
    locks::block_on_own_thread,
    pg::registry,
};

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
