//! migrate-all: bring the system database and every active tenant database to the latest
//! migration, tenant by tenant, with bounded concurrency, and report what happened to each.
//!
//! Safety rules:
//! - one run per fleet (advisory lock; a second run ends at once with `already_running`);
//! - one tenant at a time per tenant (the tenant lock that create and delete also take);
//! - a failing tenant is rolled back to its last good version (refinery runs each migration
//!   in its own transaction), reported, and the run goes on;
//! - released migrations are immutable: a history that disagrees with the embedded files
//!   (changed checksum, or a version that no longer exists) fails that tenant, with the reason.
//!
//! What a run opens: the registry says, for every tenant, the version and the migration
//! fingerprint its database was last seen at (created from the template, or checked by a
//! run). A tenant recorded at this release's fingerprint is up to date without a connection;
//! every other tenant's database is opened, its history read in one query, and refinery runs
//! only when something is pending. `{"verify": true}` opens every tenant database, to catch
//! changes made behind the registry's back (a restored backup, a hand-edited history); the
//! SAM template schedules one such run a week. The registry is written once per run, in one
//! statement, for the tenants whose record changed.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use futures_util::{stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_postgres::{error::SqlState, Client};
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::{
    db::{error_chain, is_unavailable, Database, DbError},
    domain::Slug,
    locks::{self, Lock},
    migrations::{self, read_history, ExpectedHistory, HistoryCheck},
    provision::{self, ReconcileAction},
    template,
};

/// Default number of tenants migrated at once (one connection each, plus one to the
/// system database): sized for a small RDS instance (`db.t4g.micro` allows about 80).
pub const DEFAULT_CONCURRENCY: usize = 10;
pub const MAX_CONCURRENCY: usize = 64;

/// The invocation event. Unknown fields are ignored, so that an EventBridge event is
/// accepted as is.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MigrateAllRequest {
    #[serde(default)]
    pub dry_run: bool,
    /// Limit the run to these tenants.
    #[serde(default)]
    pub slugs: Option<Vec<String>>,
    /// Override `MIGRATE_CONCURRENCY` for this run.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Open every tenant database, even those the registry records as current.
    #[serde(default)]
    pub verify: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantOutcome {
    /// Pending migrations were applied.
    Migrated,
    /// Nothing was pending.
    UpToDate,
    /// Dry run: migrations are pending (listed in `pending`).
    Pending,
    /// Could not be migrated (see `error`); left at its last good version.
    Failed,
    /// Not migrated by design: named in `slugs` but not active, or unknown.
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantReport {
    pub slug: String,
    pub status: TenantOutcome,
    pub from_version: Option<i64>,
    pub to_version: Option<i64>,
    pub applied: Vec<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<i64>,
    pub error: Option<String>,
    /// True when this run read the tenant database's own history; false when the registry
    /// vouched for it (recorded at this release's migrations).
    pub verified: bool,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub migrated: usize,
    pub up_to_date: usize,
    pub pending: usize,
    pub failed: usize,
    pub skipped: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Completed,
    /// Another run holds the fleet lock; this one did nothing.
    AlreadyRunning,
}

#[derive(Debug, Clone, Serialize)]
pub struct SystemReport {
    pub applied: Vec<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<i64>,
}

/// The tenant template of this release (see `template`).
#[derive(Debug, Clone, Serialize)]
pub struct TemplateReport {
    pub name: String,
    pub version: i64,
    pub ready: bool,
    /// Built by this run.
    pub built: bool,
    /// Templates of other releases, dropped by this run.
    pub dropped: Vec<String>,
    /// Why it could not be built. The tenants are migrated all the same, and the invocation
    /// fails at the end: provisioning needs the template.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reconciled {
    pub slug: String,
    pub action: ReconcileAction,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrateAllReport {
    pub run_id: Uuid,
    pub status: RunStatus,
    pub dry_run: bool,
    pub latest_version: i64,
    pub concurrency: usize,
    pub system: Option<SystemReport>,
    pub template: Option<TemplateReport>,
    /// Provisionings past their lease, finished or undone before migrating (see
    /// `provision`); in a dry run, listed as `pending`.
    pub reconciled: Vec<Reconciled>,
    /// Databases with the tenant prefix that no registry row owns. Reported, never dropped.
    pub orphan_databases: Vec<String>,
    /// Tenant databases left invalid by an interrupted `DROP DATABASE`.
    pub invalid_databases: Vec<String>,
    pub counts: Counts,
    pub tenants: Vec<TenantReport>,
    pub duration_ms: u64,
}

impl MigrateAllReport {
    /// True when the invocation should fail: a tenant failed, or the template could not be
    /// built.
    pub fn failed(&self) -> bool {
        self.counts.failed > 0 || self.template_error().is_some()
    }

    fn template_error(&self) -> Option<&str> {
        self.template.as_ref().and_then(|t| t.error.as_deref())
    }

    /// The invocation error's message when it failed: the template's error if any, counts,
    /// then each failed tenant with its (sanitised) reason.
    pub fn failure_summary(&self) -> String {
        const NAMED: usize = 20;
        let c = &self.counts;
        let mut failed: Vec<String> = self
            .tenants
            .iter()
            .filter(|t| t.status == TenantOutcome::Failed)
            .take(NAMED)
            .map(|t| {
                format!(
                    "{} ({})",
                    t.slug,
                    t.error.as_deref().unwrap_or("unknown error")
                )
            })
            .collect();
        // The message stays short; the report in the log names every tenant.
        if c.failed > NAMED {
            failed.push(format!(
                "and {} more (see the report in the log)",
                c.failed - NAMED
            ));
        }
        let template = match self.template_error() {
            Some(e) => format!(
                "The tenant template could not be built ({e}); new tenants cannot be provisioned. "
            ),
            None => String::new(),
        };
        format!(
            "{template}{} of {} tenants failed to migrate; migrated {}, up to date {}, skipped {}; run {}. Failed: {}",
            c.failed,
            self.tenants.len(),
            c.migrated,
            c.up_to_date,
            c.skipped,
            self.run_id,
            failed.join("; ")
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateAllError {
    #[error("invalid event: {0}")]
    InvalidRequest(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("system database migration failed: {0}")]
    SystemMigration(String),
    #[error("migrate-all failed: {0}")]
    Unexpected(String),
}

impl From<DbError> for MigrateAllError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(m) => MigrateAllError::Unavailable(m),
            other => MigrateAllError::Unexpected(error_chain(&other)),
        }
    }
}

impl MigrateAllError {
    /// The `errorType` Lambda reports.
    pub fn error_type(&self) -> &'static str {
        match self {
            MigrateAllError::InvalidRequest(_) => "InvalidRequest",
            MigrateAllError::Unavailable(_) => "DatabaseUnavailable",
            MigrateAllError::SystemMigration(_) => "SystemMigrationFailed",
            MigrateAllError::Unexpected(_) => "Unexpected",
        }
    }
}

struct TenantRow {
    slug: String,
    database_name: String,
    /// As the registry recorded them when the run listed the tenants.
    schema_version: i64,
    schema_fingerprint: Option<String>,
}

/// What the registry should say of a tenant after this run.
struct Record {
    slug: String,
    version: i64,
    /// `None`: not known to be at the released migrations (failed, diverged, unreachable).
    fingerprint: Option<String>,
}

/// Runs migrate-all. `default_concurrency` comes from `MIGRATE_CONCURRENCY`.
pub async fn migrate_all(
    db: &Database,
    req: &MigrateAllRequest,
    default_concurrency: usize,
) -> Result<MigrateAllReport, MigrateAllError> {
    let started = Instant::now();
    let run_id = Uuid::new_v4();
    let concurrency = req.concurrency.unwrap_or(default_concurrency);
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        return Err(MigrateAllError::InvalidRequest(format!(
            "concurrency must be from 1 to {MAX_CONCURRENCY}, got {concurrency}"
        )));
    }
    let slugs = match &req.slugs {
        None => None,
        Some(list) => {
            let mut parsed = Vec::new();
            let mut bad = Vec::new();
            for s in list {
                match Slug::parse(s) {
                    Ok(slug) => parsed.push(slug.as_str().to_owned()),
                    Err(e) => {
                        bad.push(format!("{:?}: {e}", s.chars().take(64).collect::<String>()))
                    }
                }
            }
            if !bad.is_empty() {
                return Err(MigrateAllError::InvalidRequest(format!(
                    "invalid slugs: {}",
                    bad.join("; ")
                )));
            }
            Some(parsed)
        }
    };
    let latest_version = migrations::latest_tenant_version();
    let mut report = MigrateAllReport {
        run_id,
        status: RunStatus::Completed,
        dry_run: req.dry_run,
        latest_version,
        concurrency,
        system: None,
        template: None,
        reconciled: Vec::new(),
        orphan_databases: Vec::new(),
        invalid_databases: Vec::new(),
        counts: Counts::default(),
        tenants: Vec::new(),
        duration_ms: 0,
    };
    info!(%run_id, dry_run = req.dry_run, concurrency, latest_version, "migrate-all started");

    // The system database first. A dry run only reports what is pending.
    let system = if req.dry_run {
        system_pending(db).await?
    } else {
        let applied = migrations::migrate_system(db).await.map_err(|e| match e {
            DbError::Unavailable(m) => MigrateAllError::Unavailable(m),
            other => MigrateAllError::SystemMigration(error_chain(&other)),
        })?;
        SystemReport {
            applied,
            pending: Vec::new(),
        }
    };
    report.system = Some(system);

    let sys = db.system().await?;
    // One run per fleet. A dry run changes nothing and needs no lock.
    let fleet_lock = if req.dry_run {
        None
    } else {
        match locks::try_acquire(&sys, Lock::Fleet).await? {
            Some(lock) => Some(lock),
            None => {
                info!(%run_id, "another migrate-all run is in progress; this one stops here");
                report.status = RunStatus::AlreadyRunning;
                report.duration_ms = started.elapsed().as_millis() as u64;
                return Ok(report);
            }
        }
    };

    let result = async {
        report.template = Some(check_template(db, &sys, req.dry_run).await?);
        report.reconciled = reconcile_expired(db, &sys, req.dry_run).await?;
        (report.orphan_databases, report.invalid_databases) = find_orphans(&sys).await?;
        run_tenants(db, &sys, req, slugs.as_deref(), concurrency, &mut report).await
    }
    .await;
    if let Some(lock) = fleet_lock {
        locks::release(&sys, lock).await;
    }
    result?;
    report.duration_ms = started.elapsed().as_millis() as u64;
    info!(
        %run_id,
        migrated = report.counts.migrated,
        up_to_date = report.counts.up_to_date,
        pending = report.counts.pending,
        failed = report.counts.failed,
        skipped = report.counts.skipped,
        duration_ms = report.duration_ms,
        "migrate-all finished"
    );
    Ok(report)
}

/// Builds this release's tenant template if it is missing and drops those of other releases
/// (a dry run only looks).
async fn check_template(
    db: &Database,
    sys: &Client,
    dry_run: bool,
) -> Result<TemplateReport, MigrateAllError> {
    let expected = template::expected();
    if dry_run {
        let ready = template::is_ready(sys, &expected.name).await?;
        return Ok(TemplateReport {
            name: expected.name,
            version: expected.version,
            ready,
            built: false,
            dropped: Vec::new(),
            error: None,
        });
    }
    let t = match template::ensure(db, sys).await {
        Ok(t) => t,
        Err(DbError::Unavailable(m)) => return Err(MigrateAllError::Unavailable(m)),
        Err(e) => {
            error!(error = %error_chain(&e), "the tenant template could not be built");
            return Ok(TemplateReport {
                name: expected.name,
                version: expected.version,
                ready: false,
                built: false,
                dropped: Vec::new(),
                error: Some(sanitize_db(&e)),
            });
        }
    };
    let dropped = template::drop_stale(sys, &t.name).await?;
    Ok(TemplateReport {
        name: t.name,
        version: t.version,
        ready: true,
        built: t.built,
        dropped,
        error: None,
    })
}

/// Finishes or undoes every provisioning past its lease whose lock is free.
async fn reconcile_expired(
    db: &Database,
    sys: &Client,
    dry_run: bool,
) -> Result<Vec<Reconciled>, MigrateAllError> {
    let rows = sys
        .query(
            "SELECT slug FROM tenants WHERE status = 'provisioning' AND lease_expires_at < now() \
             ORDER BY created_at",
            &[],
        )
        .await
        .map_err(DbError::from)?;
    let mut out = Vec::new();
    for row in rows {
        let raw: String = row.try_get(0).map_err(DbError::from)?;
        let Ok(slug) = Slug::parse(&raw) else {
            continue;
        };
        let action = if dry_run {
            ReconcileAction::Pending
        } else {
            provision::reconcile_slug(db, sys, &slug).await?
        };
        out.push(Reconciled { slug: raw, action });
    }
    Ok(out)
}

/// Tenant-prefixed databases no row owns, and invalid ones (`datconnlimit = -2`).
async fn find_orphans(sys: &Client) -> Result<(Vec<String>, Vec<String>), MigrateAllError> {
    let rows = sys
        .query(
            "SELECT d.datname::text, d.datconnlimit = -2, \
                    NOT EXISTS (SELECT 1 FROM tenants t WHERE t.database_name = d.datname) \
             FROM pg_database d WHERE d.datname LIKE 'dbtools\\_tenant\\_%' ESCAPE '\\' \
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(DbError::from)?;
    let mut orphans = Vec::new();
    let mut invalid = Vec::new();
    for row in rows {
        let name: String = row.try_get(0).map_err(DbError::from)?;
        if row.try_get::<_, bool>(1).map_err(DbError::from)? {
            invalid.push(name.clone());
        }
        if row.try_get::<_, bool>(2).map_err(DbError::from)? {
            orphans.push(name);
        }
    }
    if !orphans.is_empty() || !invalid.is_empty() {
        warn!(
            ?orphans,
            ?invalid,
            "tenant databases without a registry row, or invalid"
        );
    }
    Ok((orphans, invalid))
}

async fn system_pending(db: &Database) -> Result<SystemReport, MigrateAllError> {
    let client = db.system().await?;
    let history = read_history(&client).await.map_err(DbError::from)?;
    let applied: Vec<i64> = history.iter().map(|h| h.version).collect();
    let pending = migrations::system_runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .filter(|v| !applied.contains(v))
        .collect();
    Ok(SystemReport {
        applied: Vec::new(),
        pending,
    })
}

async fn run_tenants(
    db: &Database,
    sys: &Client,
    req: &MigrateAllRequest,
    slugs: Option<&[String]>,
    concurrency: usize,
    report: &mut MigrateAllReport,
) -> Result<(), MigrateAllError> {
    const COLUMNS: &str = "slug, database_name, schema_version, schema_fingerprint";
    let rows = match slugs {
        None => {
            sys.query(
                &format!(
                    "SELECT {COLUMNS} FROM tenants WHERE status = 'active' ORDER BY created_at, id"
                ),
                &[],
            )
            .await
        }
        Some(slugs) => {
            sys.query(
                &format!(
                    "SELECT {COLUMNS} FROM tenants \
                     WHERE status = 'active' AND slug = ANY($1) ORDER BY created_at, id"
                ),
                &[&slugs],
            )
            .await
        }
    }
    .map_err(DbError::from)?;
    let tenants: Vec<TenantRow> = rows
        .iter()
        .map(|r| {
            Ok(TenantRow {
                slug: r.try_get(0)?,
                database_name: r.try_get(1)?,
                schema_version: i64::from(r.try_get::<_, i32>(2)?),
                schema_fingerprint: r.try_get(3)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(DbError::from)?;

    let expected = ExpectedHistory::tenant();
    let fingerprint = expected.fingerprint();
    let latest = expected.latest();
    // The registry vouches for tenants recorded at this release's migrations.
    let vouched = |t: &TenantRow| {
        !req.verify
            && t.schema_version == latest
            && t.schema_fingerprint.as_deref() == Some(fingerprint)
    };
    let mut results: Vec<TenantReport> = tenants
        .iter()
        .filter(|t| vouched(t))
        .map(|t| TenantReport {
            slug: t.slug.clone(),
            status: TenantOutcome::UpToDate,
            from_version: Some(latest),
            to_version: Some(latest),
            applied: Vec::new(),
            pending: Vec::new(),
            error: None,
            verified: false,
            duration_ms: 0,
        })
        .collect();
    let lock_wait = db.config().lock_timeout;
    let checked: Vec<(TenantReport, Option<Record>)> =
        stream::iter(tenants.iter().filter(|t| !vouched(t)))
            .map(|t| migrate_tenant(db, sys, t, req.dry_run, expected, lock_wait))
            .buffer_unordered(concurrency)
            .collect()
            .await;
    let mut records = Vec::new();
    for (result, record) in checked {
        results.push(result);
        records.extend(record);
    }
    if !req.dry_run {
        record_versions(sys, &tenants, records).await?;
    }

    // Named slugs that are not active tenants are reported, not silently dropped.
    if let Some(slugs) = slugs {
        for slug in slugs {
            if !tenants.iter().any(|t| &t.slug == slug) && !results.iter().any(|r| &r.slug == slug)
            {
                results.push(TenantReport {
                    slug: slug.clone(),
                    status: TenantOutcome::Skipped,
                    from_version: None,
                    to_version: None,
                    applied: Vec::new(),
                    pending: Vec::new(),
                    error: Some("not an active tenant".into()),
                    verified: false,
                    duration_ms: 0,
                });
            }
        }
    }
    // Report in registry order (oldest first), whatever order they finished in.
    let order: BTreeMap<&str, usize> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| (t.slug.as_str(), i))
        .collect();
    results.sort_by_key(|r| order.get(r.slug.as_str()).copied().unwrap_or(usize::MAX));
    for r in &results {
        match r.status {
            TenantOutcome::Migrated => report.counts.migrated += 1,
            TenantOutcome::UpToDate => report.counts.up_to_date += 1,
            TenantOutcome::Pending => report.counts.pending += 1,
            TenantOutcome::Failed => report.counts.failed += 1,
            TenantOutcome::Skipped => report.counts.skipped += 1,
        }
    }
    report.tenants = results;
    Ok(())
}

/// Takes the tenant lock without blocking the shared system connection: a try-lock, retried
/// until `wait` has passed.
async fn tenant_lock(
    sys: &Client,
    slug: &str,
    wait: Duration,
) -> Result<Option<locks::Held>, DbError> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(held) = locks::try_acquire(sys, Lock::Tenant(slug.to_owned())).await? {
            return Ok(Some(held));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn migrate_tenant(
    db: &Database,
    sys: &Client,
    tenant: &TenantRow,
    dry_run: bool,
    expected: &ExpectedHistory,
    lock_wait: Duration,
) -> (TenantReport, Option<Record>) {
    let started = Instant::now();
    let mut report = TenantReport {
        slug: tenant.slug.clone(),
        status: TenantOutcome::Failed,
        from_version: None,
        to_version: None,
        applied: Vec::new(),
        pending: Vec::new(),
        error: None,
        verified: false,
        duration_ms: 0,
    };
    let lock = if dry_run {
        None
    } else {
        match tenant_lock(sys, &tenant.slug, lock_wait).await {
            Ok(Some(lock)) => Some(lock),
            Ok(None) => {
                report.error = Some(
                    "tenant is locked by another operation (create or delete); retry later".into(),
                );
                return (finish(report, started), None);
            }
            Err(e) => {
                report.error = Some(sanitize_db(&e));
                return (finish(report, started), None);
            }
        }
    };
    let outcome = migrate_one(db, tenant, dry_run, expected, &mut report).await;
    if let Some(lock) = lock {
        locks::release(sys, lock).await;
    }
    // What the registry should say now: the version found, and the fingerprint only when the
    // history is known to match the released migrations.
    let (version, fingerprint) = match &outcome {
        Ok(current) => (
            report.to_version.unwrap_or(tenant.schema_version),
            current.then(|| expected.fingerprint().to_owned()),
        ),
        Err(message) => {
            report.status = TenantOutcome::Failed;
            report.error = Some(message.clone());
            (report.to_version.unwrap_or(tenant.schema_version), None)
        }
    };
    let record = Record {
        slug: tenant.slug.clone(),
        version,
        fingerprint,
    };
    (finish(report, started), Some(record))
}

fn finish(mut report: TenantReport, started: Instant) -> TenantReport {
    report.duration_ms = started.elapsed().as_millis() as u64;
    let r = &report;
    if r.status == TenantOutcome::Failed {
        warn!(
            tenant.slug = %r.slug, status = ?r.status, from_version = ?r.from_version,
            to_version = ?r.to_version, applied = ?r.applied, error = r.error.as_deref().unwrap_or(""),
            duration_ms = r.duration_ms, "tenant migration"
        );
    } else {
        info!(
            tenant.slug = %r.slug, status = ?r.status, from_version = ?r.from_version,
            to_version = ?r.to_version, applied = ?r.applied, pending = ?r.pending,
            duration_ms = r.duration_ms, "tenant migration"
        );
    }
    report
}

/// The body of one tenant's migration. `Ok(true)` when the database ends at the released
/// migrations, `Ok(false)` when it does not (dry run with pending migrations); `Err` is the
/// sanitised reason it failed.
async fn migrate_one(
    db: &Database,
    tenant: &TenantRow,
    dry_run: bool,
    expected: &ExpectedHistory,
    report: &mut TenantReport,
) -> Result<bool, String> {
    let mut client = match db.connect(&tenant.database_name).await {
        Ok(c) => c,
        Err(DbError::Postgres(e)) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
            return Err("tenant database does not exist".into())
        }
        Err(e) => return Err(sanitize_db(&e)),
    };
    report.verified = true;
    // One cheap read decides whether refinery is needed at all.
    let history = read_history(&client).await.map_err(|e| sanitize_pg(&e))?;
    let from = history.iter().map(|h| h.version).max().unwrap_or(0);
    report.from_version = Some(from);
    report.to_version = Some(from);
    match expected.check(&history) {
        HistoryCheck::Diverged(reason) => return Err(reason),
        HistoryCheck::Current => {
            report.status = TenantOutcome::UpToDate;
            return Ok(true);
        }
        HistoryCheck::Pending(pending) if dry_run => {
            report.status = TenantOutcome::Pending;
            report.pending = pending;
            return Ok(false);
        }
        HistoryCheck::Pending(_) => {}
    }
    let outcome = migrations::tenant_runner().run_async(&mut client).await;
    // Each migration commits on its own: the database is at the last one refinery applied.
    let applied = |r: &refinery::Report| -> Vec<i64> {
        r.applied_migrations()
            .iter()
            .map(|m| i64::from(m.version()))
            .collect()
    };
    report.applied = match &outcome {
        Ok(done) => applied(done),
        Err(e) => e.report().map(applied).unwrap_or_default(),
    };
    let now_at = report.applied.iter().copied().fold(from, i64::max);
    report.to_version = Some(now_at);
    match outcome {
        Ok(_) => {
            report.status = if report.applied.is_empty() {
                TenantOutcome::UpToDate
            } else {
                TenantOutcome::Migrated
            };
            // refinery refuses divergent and missing versions: applied in full, the history
            // is the released one.
            Ok(now_at == expected.latest())
        }
        Err(e) => Err(sanitize_refinery(&e)),
    }
}

/// Writes what changed to the registry, in one statement (one commit, whatever the number of
/// tenants). Only active tenants: one deleted meanwhile keeps its record.
async fn record_versions(
    sys: &Client,
    tenants: &[TenantRow],
    records: Vec<Record>,
) -> Result<(), MigrateAllError> {
    let known: BTreeMap<&str, &TenantRow> = tenants.iter().map(|t| (t.slug.as_str(), t)).collect();
    let changed: Vec<Record> = records
        .into_iter()
        .filter(|r| {
            known.get(r.slug.as_str()).is_some_and(|t| {
                t.schema_version != r.version || t.schema_fingerprint != r.fingerprint
            })
        })
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let slugs: Vec<&str> = changed.iter().map(|r| r.slug.as_str()).collect();
    let versions = changed
        .iter()
        .map(|r| i32::try_from(r.version))
        .collect::<Result<Vec<i32>, _>>()
        .map_err(|_| MigrateAllError::Unexpected("schema version out of range".into()))?;
    let fingerprints: Vec<Option<&str>> =
        changed.iter().map(|r| r.fingerprint.as_deref()).collect();
    sys.execute(
        "UPDATE tenants t SET schema_version = u.version, schema_fingerprint = u.fingerprint, \
           updated_at = now() \
         FROM unnest($1::text[], $2::int[], $3::text[]) AS u(slug, version, fingerprint) \
         WHERE t.slug = u.slug AND t.status = 'active'",
        &[&slugs, &versions, &fingerprints],
    )
    .await
    .map_err(|e| MigrateAllError::from(DbError::from(e)))?;
    Ok(())
}

/// A PostgreSQL error as a report may show it: SQLSTATE and the server's message (which
/// names objects, never hosts or credentials); connection problems as one fixed sentence.
fn sanitize_pg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None if is_unavailable(e) => "tenant database unreachable".into(),
        None => "database error".into(),
    }
}

fn sanitize_db(e: &DbError) -> String {
    match e {
        DbError::Unavailable(detail) => {
            error!(cause = %detail, "tenant database unavailable");
            "tenant database unreachable".into()
        }
        DbError::Postgres(pg) => sanitize_pg(pg),
        DbError::Other(_) => "unexpected error (see the function log)".into(),
    }
}

fn sanitize_refinery(e: &refinery::Error) -> String {
    use refinery::error::Kind;
    match e.kind() {
        Kind::Connection(msg, source) => {
            let pg = source.downcast_ref::<tokio_postgres::Error>();
            let detail = pg
                .map(sanitize_pg)
                .unwrap_or_else(|| "database error".into());
            // refinery's message names the migration ("error applying migration V3__x").
            let which = msg
                .split_whitespace()
                .find(|w| w.starts_with('V'))
                .unwrap_or("");
            if which.is_empty() {
                detail
            } else {
                format!("migration {which} failed: {detail}")
            }
        }
        Kind::DivergentVersion(applied, embedded) => {
            format!("applied migration {applied} differs from the released {embedded}")
        }
        Kind::MissingVersion(m) => {
            format!("applied migration {m} is not among the released migrations")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_accepts_an_eventbridge_event() {
        let event = serde_json::json!({"version": "0", "id": "x", "detail-type": "Scheduled Event",
            "source": "aws.scheduler", "detail": {}});
        let req: MigrateAllRequest = serde_json::from_value(event).unwrap();
        assert!(!req.dry_run && req.slugs.is_none() && req.concurrency.is_none());
    }
}
