//! TLS for real: a PostgreSQL server of its own with `ssl=on` and a certificate from a CA
//! generated here. `DB_SSLMODE=require` with that CA in `DB_CA_BUNDLE` connects (over TLS);
//! with another CA, or none, the certificate is refused. Needs the server binaries
//! (`DBTOOLS_PG_BIN`, exported by `make test`) and the `openssl` command.

use std::{collections::HashMap, path::Path, process::Command};

use e2e::{run_ok, ThrowawayCluster};
use shared::{config::Config, pg::DbError, Database};

/// A cluster with `ssl=on`, its certificate for localhost and 127.0.0.1 signed by the CA
/// `ca.pem`; another CA, `other.pem`, signs nothing.
struct TlsServer(ThrowawayCluster);

/// Makes the CAs and the server's certificate in `dir`; answers the server's TLS options.
fn certificates(dir: &Path) -> String {
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    for ca in ["ca", "other"] {
        run_ok(Command::new("openssl").args([
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
    run_ok(Command::new("openssl").args([
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
    run_ok(Command::new("openssl").args([
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
    run_ok(Command::new("chmod").args(["600", &d("server.key")]));
    format!(
        "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
        d("server.crt"),
        d("server.key")
    )
}

impl TlsServer {
    fn start() -> TlsServer {
        TlsServer(ThrowawayCluster::start_with("tls-secret", certificates))
    }

    fn database(&self, bundle: Option<&str>) -> Database {
        let mut vars: HashMap<&str, String> = HashMap::new();
        vars.insert(
            "DATABASE_URL",
            format!(
                "postgres://postgres:tls-secret@localhost:{}/postgres",
                self.0.port
            ),
        );
        vars.insert("DB_SSLMODE", "require".into());
        if let Some(b) = bundle {
            vars.insert("DB_CA_BUNDLE", self.0.path(b));
        }
        let config = Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
        Database::new(config, "test-tls").unwrap()
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
