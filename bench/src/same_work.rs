//! The provisioning floor that does the same work as a create, with a bare client over
//! connections (and an SDK client) opened beforehand, none of the product's code: a copy of
//! the product's tenant template made closed (`CREATE DATABASE … TEMPLATE … ALLOW_CONNECTIONS
//! false`, as a create makes it), the tenant's login in one transaction as a create makes it
//! (a new password's SCRAM verifier computed on the spot, `CREATE ROLE`, its mark, the group,
//! `PUBLIC` revoked, the database opened, `CONNECT`), its secret written to the same Secrets
//! Manager (the same JSON, description and tags), and the registry rows (a row inserted
//! `provisioning`, then marked `active`, in a table of the registry's database shaped like
//! the product's), then its `provisionSuccess` event put on the same bus (one `PutEvents`, the
//! same detail). What a `POST` adds on top: the HTTP and the emulator's invoke, the
//! placement, the tenant lock, the ownership proof and its reads.
//!
//! Sampled between the provisioning requests, as `floor`.

use std::time::Instant;

use anyhow::{Context, Result};
use e2e::connect_on;
use tokio_postgres::Client;

use crate::table::{ms, Row, Stats};

/// Registry table of the floor's rows (dropped at the end).
const TABLE: &str = "bench_same_work_tenants";

pub struct SameWork {
    server: &'static str,
    admin: Client,
    registry: Client,
    secrets: aws_sdk_secretsmanager::Client,
    template: String,
    made: Vec<String>,
    /// Per sample: database, login, secret, registry, event (ms).
    steps: Vec<[f64; 5]>,
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

impl SameWork {
    pub async fn new(server: &'static str) -> Result<SameWork> {
        let admin = connect_on(server, "postgres").await;
        let template: String = admin
            .query_opt(
                "SELECT datname::text FROM pg_database \
                 WHERE datname LIKE 'dbtools\\_template\\_%' AND NOT datallowconn \
                 ORDER BY datname DESC LIMIT 1",
                &[],
            )
            .await?
            .map(|r| r.get(0))
            .with_context(|| format!("no tenant template on {server} yet"))?;
        let registry = e2e::registry().await;
        registry
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {TABLE} (id uuid PRIMARY KEY, slug text UNIQUE, \
                   name text, database_name text, server text, status text, \
                   schema_version int, credentials_secret_arn text, \
                   created_at timestamptz DEFAULT now(), updated_at timestamptz DEFAULT now())"
            ))
            .await?;
        Ok(SameWork {
            server,
            admin,
            registry,
            secrets: e2e::secrets().await,
            template,
            made: Vec::new(),
            steps: Vec::new(),
        })
    }

    /// One sample: a tenant made as a create makes it.
    pub async fn sample(&mut self) -> Result<()> {
        let name = format!("bench_same_{}_{}", self.server, self.made.len());
        let id = uuid::Uuid::new_v4();
        let started = Instant::now();
        self.admin
            .batch_execute(&format!(
                "CREATE DATABASE {name} TEMPLATE \"{}\" ALLOW_CONNECTIONS false",
                self.template
            ))
            .await
            .context("the copy of the template")?;
        let database = elapsed_ms(started);
        self.made.push(name.clone());

        let started = Instant::now();
        let mut password = [0u8; 32];
        for (i, b) in uuid::Uuid::new_v4()
            .as_bytes()
            .iter()
            .chain(uuid::Uuid::new_v4().as_bytes())
            .enumerate()
        {
            password[i] = *b;
        }
        let password = hex(&password);
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        self.admin
            .batch_execute(&format!(
                "BEGIN; \
                 CREATE ROLE {name} NOSUPERUSER NOBYPASSRLS NOREPLICATION LOGIN NOCREATEDB \
                   NOCREATEROLE INHERIT CONNECTION LIMIT 20 PASSWORD '{verifier}'; \
                 COMMENT ON ROLE {name} IS 'bench floor {id}'; \
                 GRANT dbtools_tenant_rw TO {name}; \
                 REVOKE ALL ON DATABASE {name} FROM PUBLIC; \
                 ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true; \
                 GRANT CONNECT ON DATABASE {name} TO {name}; COMMIT"
            ))
            .await
            .context("the login")?;
        let login = elapsed_ms(started);

        let started = Instant::now();
        let value = serde_json::json!({
            "engine": "postgres", "host": "127.0.0.1", "port": 5432, "dbname": name,
            "username": name, "password": password,
        });
        let tag = |k: &str, v: &str| {
            aws_sdk_secretsmanager::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
        };
        let arn = self
            .secrets
            .create_secret()
            .name(format!("bench/same-work/{name}"))
            .description(format!(
                "dbtools: credentials of tenant {name} (its own PostgreSQL login)"
            ))
            .secret_string(value.to_string())
            .tags(tag("dbtools:tenant-id", &id.to_string()))
            .tags(tag("dbtools:tenant-slug", &name))
            .send()
            .await
            .context("the secret")?
            .arn()
            .unwrap_or_default()
            .to_owned();
        let secret = elapsed_ms(started);

        let started = Instant::now();
        self.registry
            .execute(
                &format!(
                    "INSERT INTO {TABLE} (id, slug, name, database_name, server, status) \
                     VALUES ($1, $2, $2, $2, $3, 'provisioning')"
                ),
                &[&id, &name, &self.server],
            )
            .await?;
        self.registry
            .query_one(
                &format!(
                    "UPDATE {TABLE} SET status = 'active', schema_version = 4, \
                       credentials_secret_arn = $2, updated_at = now() \
                     WHERE id = $1 RETURNING *"
                ),
                &[&id, &arn],
            )
            .await?;
        let registry = elapsed_ms(started);

        let started = Instant::now();
        e2e::put_event(
            "provisionSuccess",
            &serde_json::json!({
                "tenant_id": id, "slug": name, "name": name, "status": "active",
                "server": self.server, "database_name": name, "credentials_secret_arn": arn,
                "schema_version": 4, "event_id": uuid::Uuid::new_v4(),
                "occurred_at": "2026-12-06T10:00:01.120000+00:00",
            }),
        )
        .await;
        let event = elapsed_ms(started);
        self.steps.push([database, login, secret, registry, event]);
        Ok(())
    }

    /// Every step's sum, per sample.
    pub fn totals(&self) -> Vec<f64> {
        self.steps.iter().map(|s| s.iter().sum()).collect()
    }

    pub fn p50(&self) -> f64 {
        Stats::of(self.totals()).p50
    }

    /// The p50 of each step: database, login, secret, registry, event.
    pub fn step_p50s(&self) -> [f64; 5] {
        let at = |i: usize| Stats::of(self.steps.iter().map(|s| s[i]).collect()).p50;
        [at(0), at(1), at(2), at(3), at(4)]
    }

    /// Drops what the samples made: databases, logins, secrets, rows.
    pub async fn drop_all(&mut self) -> Result<()> {
        for name in self.made.drain(..) {
            crate::floor::drop_sample(&self.admin, &name).await?;
            self.secrets
                .delete_secret()
                .secret_id(format!("bench/same-work/{name}"))
                .force_delete_without_recovery(true)
                .send()
                .await
                .context("delete a floor secret")?;
        }
        self.registry
            .batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}"))
            .await?;
        Ok(())
    }

    pub fn row(&self) -> Row {
        let [database, login, secret, registry, event] = self.step_p50s();
        Row::info(
            &format!(
                "same-work floor on {}: template copy + login + secret + registry rows + event (p50 of {})",
                self.server,
                self.steps.len()
            ),
            format!("{} ms", ms(self.p50())),
            format!(
                "database {} + login {} + secret {} + registry {} + event {} ms",
                ms(database),
                ms(login),
                ms(secret),
                ms(registry),
                ms(event)
            ),
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
