//! TLS for real: a PostgreSQL server of its own with `ssl=on` and a certificate from a CA
//! generated here. `DB_SSLMODE=require` with that CA in `DB_CA_BUNDLE` connects (over TLS);
//! with another CA, or none, the certificate is refused. Needs the server binaries
//! (`DBTOOLS_PG_BIN`, exported by `make test`) and the `openssl` command.

use std::{collections::HashMap, path::PathBuf, process::Command};

use shared::{config::Config, db::DbError, Database};

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Runs a server binary as the postgres user when we are root (initdb refuses root).
fn as_pg(bin: &str) -> Command {
    let pg_bin = std::env::var("DBTOOLS_PG_BIN").expect("DBTOOLS_PG_BIN: run through `make test`");
    let path = format!("{pg_bin}/{bin}");
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

struct TlsServer {
    dir: PathBuf,
    port: u16,
}

impl TlsServer {
    fn start() -> TlsServer {
        let dir =
            std::env::temp_dir().join(format!("dbtools-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
        // A CA, a server certificate for localhost / 127.0.0.1 signed by it, and another CA.
        for ca in ["ca", "other"] {
            run(Command::new("openssl").args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=dbtools test {ca}"),
                "-keyout",
                &d(&format!("{ca}.key")),
                "-out",
                &d(&format!("{ca}.pem")),
            ]));
        }
        run(Command::new("openssl").args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &d("server.key"),
            "-out",
            &d("server.csr"),
        ]));
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        run(Command::new("openssl").args([
            "x509",
            "-req",
            "-in",
            &d("server.csr"),
            "-CA",
            &d("ca.pem"),
            "-CAkey",
            &d("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &d("ext.cnf"),
            "-out",
            &d("server.crt"),
        ]));
        std::fs::write(dir.join("pwfile"), "tls-secret\n").unwrap();
        if is_root() {
            run(Command::new("chown").args(["-R", "postgres:", &d("")]));
        }
        run(Command::new("chmod").args(["600", &d("server.key")]));
        run(as_pg("initdb").args([
            "-D",
            &d("data"),
            "-U",
            "postgres",
            &format!("--pwfile={}", d("pwfile")),
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
        ]));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            d(""),
            d("server.crt"),
            d("server.key")
        );
        run(as_pg("pg_ctl").args([
            "-D",
            &d("data"),
            "-l",
            &d("log"),
            "-w",
            "-o",
            &opts,
            "start",
        ]));
        TlsServer { dir, port }
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).to_string_lossy().into_owned()
    }

    fn database(&self, bundle: Option<&str>) -> Database {
        let mut vars: HashMap<&str, String> = HashMap::new();
        vars.insert(
            "DATABASE_URL",
            format!(
                "postgres://postgres:tls-secret@localhost:{}/postgres",
                self.port
            ),
        );
        vars.insert("DB_SSLMODE", "require".into());
        if let Some(b) = bundle {
            vars.insert("DB_CA_BUNDLE", self.path(b));
        }
        let config = Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
        Database::new(config, "test-tls").unwrap()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = as_pg("pg_ctl")
            .args(["-D", &self.path("data"), "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn require_verifies_the_certificate_against_the_bundle() {
    let server = TlsServer::start();

    // Trusted: connects, and the session is encrypted.
    let db = server.database(Some("ca.pem"));
    let client = db
        .connect("postgres")
        .await
        .expect("TLS connection with the CA in the bundle");
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the session uses TLS");

    // Another CA, or only the system roots: refused, as "unavailable" (a 503 for clients).
    for bundle in [Some("other.pem"), None] {
        let err = server
            .database(bundle)
            .connect("postgres")
            .await
            .unwrap_err();
        assert!(
            matches!(err, DbError::Unavailable(_)),
            "{bundle:?}: {err:?}"
        );
        assert!(
            format!("{err:?}").to_lowercase().contains("certificate"),
            "{bundle:?}: the refusal is about the certificate: {err:?}"
        );
    }
}
