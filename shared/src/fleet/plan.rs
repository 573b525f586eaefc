//! What a run works with: its settings (deadlines, concurrency, the rollout, the ledger run and
//! attempt), and its tenants as the registry lists them.

use std::time::{Duration, Instant};

use super::{
    prepare::FleetServer,
    request::{MaxFailures, MigrateAllRequest},
};
use crate::{
    config::Config,
    database::Database,
    invocation::Invocation,
    migrate::ExpectedHistory,
    pg::{Conn, DbError},
};

/// The longest reserve kept at the end of an invocation to answer (and the share of the time
/// left, for short invocations): no tenant works into it.
const RESERVE: Duration = Duration::from_secs(10);
const RESERVE_SHARE: u32 = 10; // a tenth

/// How the run treats each tenant.
pub(super) struct Plan {
    /// The run's id in the run ledger, where each outcome is written (real runs).
    pub ledger: Option<uuid::Uuid>,
    pub dry_run: bool,
    pub verify: bool,
    pub concurrency: usize,
    /// The longest wait for a tenant's lock.
    pub lock_wait: Duration,
    /// The longest one tenant may take (`MIGRATE_TENANT_TIMEOUT_SECS`).
    pub tenant_timeout: Duration,
    /// No tenant is started after this, and none works past it: the time left after it is
    /// for answering.
    pub stop_at: Instant,
    /// The invocation's own deadline: recording a tenant's outcome never waits past it.
    pub answer_by: Instant,
    /// A tenant is started only with at least this much time before `stop_at`.
    pub min_time: Duration,
    /// A worker of the queue: a tenant whose server has no free slot, or whose lock is taken,
    /// is given back (`Attempted::GiveBack`) to be sent again later, instead of waited for.
    pub give_back_when_busy: bool,
    /// A worker of the queue whose message has tries left: a tenant whose server cannot be
    /// reached is given back rather than recorded deferred.
    pub give_back_unreachable: bool,
    /// The rollout (inline runs and planning only).
    pub waves: Waves,
    /// The run's attempt (0, then one more per `retry_run`): what its messages carry.
    pub attempt: i64,
}

impl Plan {
    /// Real work within the invocation's deadline, with the configured limits: it starts no
    /// tenant in the last tenth of the time left (at most the last 10 s), which is for
    /// answering. No ledger, one tenant at a time, waits for what is busy, no waves.
    pub fn within(config: &Config, inv: &Invocation) -> Plan {
        let reserve = RESERVE.min(inv.time_left() / RESERVE_SHARE);
        Plan {
            ledger: None,
            dry_run: false,
            verify: false,
            concurrency: 1,
            lock_wait: config.lock_timeout,
            tenant_timeout: config.migrate_tenant_timeout,
            stop_at: inv.deadline.checked_sub(reserve).unwrap_or(inv.deadline),
            answer_by: inv.deadline,
            min_time: config.connect_timeout.min(Duration::from_secs(1)),
            give_back_when_busy: false,
            give_back_unreachable: false,
            waves: Default::default(),
            attempt: 0,
        }
    }

    /// How long a tenant started at `started` may take: its timeout, cut at the run's stop.
    pub(super) fn tenant_limit(&self, started: Instant) -> Duration {
        self.stop_at
            .saturating_duration_since(started)
            .min(self.tenant_timeout)
    }
}

/// How a run rolls out over the tenants it opens (see `rollout`).
#[derive(Default)]
pub(super) struct Waves {
    /// The canary wave's size: `canary`, else 1% of the tenants to open, at least 1; 0: none.
    pub canary: Option<usize>,
    /// The brake, as asked: a count, or a share of the tenants to open.
    pub max_failures: Option<MaxFailures>,
    /// Fan the tenants out over this queue (`None`: inline)...
    pub queue: Option<String>,
    /// ... when the run has more tenants to open than this.
    pub inline_max: usize,
}

impl Waves {
    /// The rollout a request asks for.
    pub fn of(req: &MigrateAllRequest, config: &Config) -> Waves {
        Waves {
            // A retry takes its tenants at once: its run had its canary. A verify run looks
            // for every tenant that drifted: one found first must not hide the others.
            canary: if req.retry_run.is_some() || (req.verify && req.canary.is_none()) {
                Some(0)
            } else {
                req.canary
            },
            max_failures: req.max_failures.clone(),
            queue: match (req.dry_run, req.inline) {
                (true, _) | (_, Some(true)) => None,
                _ => config.migrate_queue_url.clone(),
            },
            inline_max: match req.inline {
                Some(false) => 0,
                _ => config.migrate_inline_max_tenants,
            },
        }
    }
}

/// A tenant of the run, as the registry recorded it when the run listed the tenants.
pub(super) struct TenantRow {
    pub(super) slug: String,
    pub(super) server: Option<String>,
    pub(super) database_name: String,
    /// The proof of ownership (see `pg::ownership`): the run touches a database only if its OID
    /// is this one.
    pub(super) database_oid: Option<i64>,
    pub(super) schema_version: i64,
    pub(super) schema_fingerprint: Option<String>,
}

/// The active tenants of the run: all of them, or those named in `slugs`.
pub(super) async fn list(sys: &Conn, slugs: Option<&[String]>) -> Result<Vec<TenantRow>, DbError> {
    const COLUMNS: &str =
        "slug, server, database_name, database_oid, schema_version, schema_fingerprint";
    let rows = match slugs {
        None => {
            sys.query(
                &format!(
                    "SELECT {COLUMNS} FROM tenants WHERE status = 'active' ORDER BY created_at, id"
                ),
                &[],
            )
            .await?
        }
        Some(slugs) => {
            sys.query(
                &format!(
                    "SELECT {COLUMNS} FROM tenants \
                     WHERE status = 'active' AND slug = ANY($1) ORDER BY created_at, id"
                ),
                &[&slugs],
            )
            .await?
        }
    };
    rows.iter()
        .map(|r| {
            Ok(TenantRow {
                slug: r.try_get("slug")?,
                server: r.try_get("server")?,
                database_name: r.try_get("database_name")?,
                database_oid: r.try_get("database_oid")?,
                schema_version: i64::from(r.try_get::<_, i32>("schema_version")?),
                schema_fingerprint: r.try_get("schema_fingerprint")?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(DbError::from)
}

/// One tenant's attempt in a run: what each of its steps reads.
#[derive(Clone, Copy)]
pub(super) struct Attempt<'a> {
    pub db: &'a Database,
    /// The registry's connection, which holds the run's locks.
    pub sys: &'a Conn,
    pub server: &'a FleetServer,
    pub tenant: &'a TenantRow,
    pub plan: &'a Plan,
    /// The released migrations, as a history records them.
    pub expected: &'a ExpectedHistory,
}
