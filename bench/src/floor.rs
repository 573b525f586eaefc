//! The floor provisioning is held against: what PostgreSQL itself needs to make a tenant
//! database, measured with a bare client (tokio-postgres, none of the product's code) over
//! connections that are already open: `CREATE DATABASE`, then the tenant migrations' DDL
//! as one batch. Also `STRATEGY FILE_COPY` against the default `WAL_LOG`, and a copy of the
//! product's pre-migrated tenant template when one exists.

use std::time::Instant;

use anyhow::{Context, Result};
use e2e::connect;

use crate::table::{ms, Row, Stats, Table};

pub struct Floor {
    /// `CREATE DATABASE` (default strategy) + DDL, per sample.
    pub floor: Stats,
    create_wal: Stats,
    create_file_copy: Stats,
    create_from_template: Option<(String, Stats)>,
    connect: Stats,
    ddl: Stats,
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
    let mut ddl = String::new();
    for (_, path) in files {
        ddl.push_str(&std::fs::read_to_string(&path)?);
        ddl.push('\n');
    }
    Ok(ddl)
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

pub async fn measure(samples: usize) -> Result<Floor> {
    let ddl = tenant_ddl()?;
    let admin = connect("postgres").await;
    let template: Option<String> = admin
        .query_opt(
            "SELECT datname::text FROM pg_database \
             WHERE datname LIKE 'dbtools\\_template\\_%' AND NOT datallowconn LIMIT 1",
            &[],
        )
        .await?
        .map(|r| r.get(0));
    let (mut floor, mut wal, mut file_copy, mut from_template, mut conn, mut run) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut made = Vec::new();
    // Interleaved, so that whatever else the machine does weighs on every variant alike.
    for i in 0..samples {
        let name = format!("bench_floor_w{i}");
        let started = Instant::now();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let create = elapsed_ms(started);
        made.push(name.clone());

        let started = Instant::now();
        let tenant = connect(&name).await;
        conn.push(elapsed_ms(started));
        let started = Instant::now();
        tenant.batch_execute(&ddl).await.context("tenant DDL")?;
        let d = elapsed_ms(started);
        drop(tenant);
        wal.push(create);
        run.push(d);
        floor.push(create + d);

        let name = format!("bench_floor_f{i}");
        let started = Instant::now();
        admin
            .batch_execute(&format!("CREATE DATABASE {name} STRATEGY FILE_COPY"))
            .await?;
        file_copy.push(elapsed_ms(started));
        made.push(name);

        if let Some(t) = &template {
            let name = format!("bench_floor_t{i}");
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
    Ok(Floor {
        floor: Stats::of(floor),
        create_wal: Stats::of(wal),
        create_file_copy: Stats::of(file_copy),
        create_from_template: template.map(|t| (t, Stats::of(from_template))),
        connect: Stats::of(conn),
        ddl: Stats::of(run),
    })
}

impl Floor {
    pub fn rows(&self, table: &mut Table) {
        table.push(Row::info(
            "floor: CREATE DATABASE + tenant DDL, open connections (p50)",
            format!("{} ms", ms(self.floor.p50)),
            format!(
                "CREATE DATABASE {} ms + DDL {} ms",
                ms(self.create_wal.p50),
                ms(self.ddl.p50)
            ),
        ));
        let ratio = self.create_file_copy.p50 / self.create_wal.p50;
        table.push(Row::info(
            "CREATE DATABASE … STRATEGY FILE_COPY (p50)",
            format!("{} ms", ms(self.create_file_copy.p50)),
            format!(
                "{ratio:.2}x WAL_LOG (the default): {}",
                if ratio < 1.0 { "faster" } else { "slower" }
            ),
        ));
        if let Some((name, stats)) = &self.create_from_template {
            table.push(Row::info(
                &format!("CREATE DATABASE … TEMPLATE {name} (p50)"),
                format!("{} ms", ms(stats.p50)),
                format!("{:.2}x from template1", stats.p50 / self.create_wal.p50),
            ));
        }
        table.push(Row::info(
            "connect to a new database (SCRAM, p50)",
            format!("{} ms", ms(self.connect.p50)),
            "not in the floor".into(),
        ));
    }
}
