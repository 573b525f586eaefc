//! The floor provisioning is held against: what PostgreSQL itself needs to make a tenant
//! database, measured with a bare client (tokio-postgres, none of the product's code) over
//! connections that are already open: `CREATE DATABASE`, then the tenant migrations' DDL
//! as one batch, then the tenant's login (`CREATE ROLE` with a SCRAM verifier computed
//! beforehand, its group, `CONNECT` on the database) as one batch. Its samples are taken between the provisioning requests, so that both meet
//! the server in the same state (WAL segments recycled or new, checkpoints). Also
//! `STRATEGY FILE_COPY` against the default `WAL_LOG`, and a copy of the product's
//! pre-migrated tenant template.

use std::time::Instant;

use anyhow::{Context, Result};
use e2e::{connect, connect_on};

use crate::table::{ms, Row, Stats};

/// Samples of the floor on one server (default strategy, from `template1`): `CREATE
/// DATABASE`, connecting to the new database (not part of the floor), and the DDL.
pub struct Floor {
    server: &'static str,
    admin: tokio_postgres::Client,
    ddl: String,
    made: Vec<String>,
    create: Vec<f64>,
    connect: Vec<f64>,
    run: Vec<f64>,
    role: Vec<f64>,
    verifier: String,
}

/// Drops a sample's database and its login (of the same name).
pub async fn drop_sample(admin: &tokio_postgres::Client, name: &str) -> Result<()> {
    // Two statements: DROP DATABASE refuses to run in a transaction, which one batch of
    // several statements is.
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await?;
    admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {name}"))
        .await?;
    Ok(())
}

/// `CREATE DATABASE` strategies compared, and a copy of the product's tenant template.
pub struct Strategies {
    wal_log: Stats,
    file_copy: Stats,
    from_template: Option<(String, Stats)>,
}

/// The tenant migrations as one script, in version order.
fn tenant_ddl() -> Result<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations_tenant");
    let mut files: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("read {dir}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            let version = name.strip_prefix('V')?.split("__").next()?.parse().ok()?;
            Some((version, p))
        })
        .collect();
    files.sort();
    // refinery's history table, as refinery makes it in every tenant database (a migration
    // refers to it).
    let mut ddl = String::from(
        "CREATE TABLE refinery_schema_history (version int4 PRIMARY KEY, name varchar(255), \
         applied_on varchar(255), checksum varchar(255));\n",
    );
    for (_, path) in files {
        // One batch is one implicit transaction, which CREATE INDEX CONCURRENTLY refuses; on a
        // new, empty table a plain index is the same work (the product builds the template
        // with it once, outside any create).
        ddl.push_str(&std::fs::read_to_string(&path)?.replace("INDEX CONCURRENTLY", "INDEX"));
        ddl.push('\n');
    }
    Ok(ddl)
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

impl Floor {
    pub async fn new(server: &'static str) -> Result<Floor> {
        Ok(Floor {
            server,
            admin: connect_on(server, "postgres").await,
            ddl: tenant_ddl()?,
            made: Vec::new(),
            create: Vec::new(),
            connect: Vec::new(),
            run: Vec::new(),
            role: Vec::new(),
            verifier: postgres_protocol::password::scram_sha_256(b"a bench password, never used"),
        })
    }

    /// One sample: a database made as the floor makes it.
    pub async fn sample(&mut self) -> Result<()> {
        let name = format!("bench_floor_{}_{}", self.server, self.made.len());
        let started = Instant::now();
        self.admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        self.create.push(elapsed_ms(started));
        self.made.push(name.clone());
        let started = Instant::now();
        let tenant = connect_on(self.server, &name).await;
        self.connect.push(elapsed_ms(started));
        let started = Instant::now();
        tenant
            .batch_execute(&self.ddl)
            .await
            .context("tenant DDL")?;
        self.run.push(elapsed_ms(started));
        let started = Instant::now();
        self.admin
            .batch_execute(&format!(
                "CREATE ROLE {name} LOGIN CONNECTION LIMIT 20 PASSWORD '{}' \
                   IN ROLE dbtools_tenant_rw; \
                 REVOKE ALL ON DATABASE {name} FROM PUBLIC; \
                 GRANT CONNECT ON DATABASE {name} TO {name}",
                self.verifier
            ))
            .await
            .context("tenant login")?;
        self.role.push(elapsed_ms(started));
        Ok(())
    }

    pub fn server(&self) -> &'static str {
        self.server
    }

    /// `CREATE DATABASE` + DDL + login, per sample.
    pub fn totals(&self) -> Vec<f64> {
        self.create
            .iter()
            .zip(&self.run)
            .zip(&self.role)
            .map(|((c, d), r)| c + d + r)
            .collect()
    }

    /// p50 of `CREATE DATABASE` + DDL + login.
    pub fn p50(&self) -> f64 {
        Stats::of(self.totals()).p50
    }

    /// Drops the databases the samples made.
    pub async fn drop_all(&mut self) -> Result<()> {
        for name in self.made.drain(..) {
            drop_sample(&self.admin, &name).await?;
        }
        Ok(())
    }

    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        rows.push(Row::info(
            &format!(
                "floor on {}: CREATE DATABASE + tenant DDL + login, open connections (p50 of {})",
                self.server,
                self.create.len()
            ),
            format!("{} ms", ms(self.p50())),
            format!(
                "CREATE DATABASE {} + DDL {} + login {} ms",
                ms(Stats::of(self.create.clone()).p50),
                ms(Stats::of(self.run.clone()).p50),
                ms(Stats::of(self.role.clone()).p50)
            ),
        ));
        rows.push(Row::info(
            &format!("connect to a new database on {} (SCRAM, p50)", self.server),
            format!("{} ms", ms(Stats::of(self.connect.clone()).p50)),
            "not in the floor".into(),
        ));
        rows
    }
}

/// `CREATE DATABASE` with each strategy, interleaved so that whatever else the machine does
/// weighs on both alike; and from the tenant template, when one is ready.
pub async fn strategies(samples: usize) -> Result<Strategies> {
    let admin = connect("postgres").await;
    let template: Option<String> = admin
        .query_opt(
            "SELECT datname::text FROM pg_database \
             WHERE datname LIKE 'dbtools\\_template\\_%' AND NOT datallowconn LIMIT 1",
            &[],
        )
        .await?
        .map(|r| r.get(0));
    let (mut wal, mut file_copy, mut from_template, mut made) = (vec![], vec![], vec![], vec![]);
    for i in 0..samples {
        for (strategy, out) in [("WAL_LOG", &mut wal), ("FILE_COPY", &mut file_copy)] {
            let name = format!("bench_floor_{}_{i}", strategy.to_lowercase());
            let started = Instant::now();
            admin
                .batch_execute(&format!("CREATE DATABASE {name} STRATEGY {strategy}"))
                .await?;
            out.push(elapsed_ms(started));
            made.push(name);
        }
        if let Some(t) = &template {
            let name = format!("bench_floor_template_{i}");
            let started = Instant::now();
            admin
                .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE \"{t}\""))
                .await?;
            from_template.push(elapsed_ms(started));
            made.push(name);
        }
    }
    for name in made {
        admin
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await?;
    }
    Ok(Strategies {
        wal_log: Stats::of(wal),
        file_copy: Stats::of(file_copy),
        from_template: template.map(|t| (t, Stats::of(from_template))),
    })
}

impl Strategies {
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        rows.push(Row::info(
            "CREATE DATABASE … STRATEGY WAL_LOG (the default, p50)",
            format!("{} ms", ms(self.wal_log.p50)),
            String::new(),
        ));
        let ratio = self.file_copy.p50 / self.wal_log.p50;
        rows.push(Row::info(
            "CREATE DATABASE … STRATEGY FILE_COPY (p50)",
            format!("{} ms", ms(self.file_copy.p50)),
            format!(
                "{ratio:.2}x WAL_LOG: {}",
                if ratio < 1.0 { "faster" } else { "slower" }
            ),
        ));
        if let Some((name, stats)) = &self.from_template {
            rows.push(Row::info(
                &format!("CREATE DATABASE … TEMPLATE {name} (p50)"),
                format!("{} ms", ms(stats.p50)),
                format!("{:.2}x from template1", stats.p50 / self.wal_log.p50),
            ));
        }
        rows
    }
}
