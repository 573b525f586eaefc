//! The `moves` table: a move's row, its steps and states, and how the API shows it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{
    metrics::{self, Unit},
    pg::{Conn, DbError},
};

/// How long a step may hold a move before migrate-all's upkeep takes its message as lost and
/// sends it again.
pub(crate) const LEASE_SECS: i64 = 120;

/// How a tenant moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveMode {
    /// Writes refused while every table is copied.
    Copy,
    /// Logical replication from the source; writes refused only at the cut-over.
    Online,
}

impl MoveMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveMode::Copy => "copy",
            MoveMode::Online => "online",
        }
    }

    pub fn parse(s: &str) -> Option<MoveMode> {
        [MoveMode::Copy, MoveMode::Online]
            .into_iter()
            .find(|mode| mode.as_str() == s)
    }
}

/// The steps of a move, in order; each mode takes some of them ([`Step::in_mode`]). Before
/// [`Step::Switch`] the source is the tenant's copy and a failure or a cancel undoes the move;
/// from it on the move only goes forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Checks the tenant and the target, brings the tenant to the latest migration.
    Prepare,
    /// The target database, closed to every login, from the target's template.
    TargetDb,
    /// The tenant's login on the target (its password from the secret), refusing logins.
    OpenTarget,
    /// Online: a publication on the source, a subscription on the target.
    Replicate,
    /// Online: the subscription's initial copy done and its lag small.
    Sync,
    /// The tenant's login refused and its sessions ended on the source: writes stop here.
    Fence,
    /// Online: the target applied the source's last write; the subscription ended.
    CatchUp,
    /// Copy: every table copied (`COPY … TO STDOUT` into `COPY … FROM STDIN`), one transaction.
    Copy,
    /// Sequence values from the source.
    Sequences,
    /// Row counts and checksums compared, table by table.
    Verify,
    /// One registry transaction names the target.
    Switch,
    /// The target's login opened, the secret's host and port: writes resume here.
    Finish,
}

impl Step {
    pub const ALL: [Step; 12] = [
        Step::Prepare,
        Step::TargetDb,
        Step::OpenTarget,
        Step::Replicate,
        Step::Sync,
        Step::Fence,
        Step::CatchUp,
        Step::Copy,
        Step::Sequences,
        Step::Verify,
        Step::Switch,
        Step::Finish,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Prepare => "prepare",
            Step::TargetDb => "target_db",
            Step::OpenTarget => "open_target",
            Step::Replicate => "replicate",
            Step::Sync => "sync",
            Step::Fence => "fence",
            Step::CatchUp => "catch_up",
            Step::Copy => "copy",
            Step::Sequences => "sequences",
            Step::Verify => "verify",
            Step::Switch => "switch",
            Step::Finish => "finish",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|step| step.as_str() == s)
    }

    /// True for the steps a move of this mode takes.
    pub fn in_mode(self, mode: MoveMode) -> bool {
        match self {
            Step::Replicate | Step::Sync | Step::CatchUp => mode == MoveMode::Online,
            Step::Copy => mode == MoveMode::Copy,
            _ => true,
        }
    }

    /// The step after this one in a move of `mode` (`None` after the last).
    pub fn next(self, mode: MoveMode) -> Option<Step> {
        Step::ALL
            .into_iter()
            .find(|step| *step > self && step.in_mode(mode))
    }

    /// True once the registry names the target: the move only goes forward.
    pub fn switched(self) -> bool {
        self >= Step::Finish
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveState {
    Running,
    Done,
    Cancelled,
    Failed,
}

impl MoveState {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveState::Running => "running",
            MoveState::Done => "done",
            MoveState::Cancelled => "cancelled",
            MoveState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<MoveState> {
        [
            MoveState::Running,
            MoveState::Done,
            MoveState::Cancelled,
            MoveState::Failed,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

/// A move as the API shows it (never a host, a password or SQL).
#[derive(Debug, Clone, Serialize)]
pub struct Move {
    pub id: Uuid,
    #[serde(skip)]
    pub tenant_id: Uuid,
    pub slug: String,
    pub from: String,
    pub to: String,
    pub mode: MoveMode,
    pub step: Step,
    pub state: MoveState,
    pub cancel_requested: bool,
    #[serde(skip)]
    pub database_name: String,
    #[serde(skip)]
    pub source_oid: i64,
    #[serde(skip)]
    pub target_oid: i64,
    /// When the tenant's writes were refused, and when they resumed (or the fence was undone).
    pub fence_started_at: Option<DateTime<Utc>>,
    pub fence_ended_at: Option<DateTime<Utc>>,
    /// How long writes were refused (so far, while the fence holds).
    pub writes_refused_ms: Option<i64>,
    pub tables_copied: Option<i64>,
    pub rows_copied: Option<i64>,
    pub bytes_copied: Option<i64>,
    pub error: Option<String>,
    /// Until then the source keeps its copy (its login disabled); then migrate-all drops it.
    pub source_drop_after: Option<DateTime<Utc>>,
    pub source_dropped_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

pub(crate) const MOVE_COLUMNS: &str = "id, tenant_id, slug, from_server, to_server, mode, step, \
     state, cancel_requested, database_name, source_oid, target_oid, fence_started_at, \
     fence_ended_at, (extract(epoch FROM coalesce(fence_ended_at, now()) - fence_started_at) \
     * 1000)::bigint AS writes_refused_ms, tables_copied, rows_copied, bytes_copied, error, \
     source_drop_after, source_dropped_at, created_at, updated_at, finished_at";

impl Move {
    pub(crate) fn from_row(row: &Row) -> Result<Move, DbError> {
        let step: String = row.try_get("step")?;
        let state: String = row.try_get("state")?;
        let mode: String = row.try_get("mode")?;
        Ok(Move {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            slug: row.try_get("slug")?,
            from: row.try_get("from_server")?,
            to: row.try_get("to_server")?,
            mode: MoveMode::parse(&mode)
                .ok_or_else(|| anyhow::anyhow!("registry holds an unknown move mode {mode:?}"))?,
            step: Step::parse(&step)
                .ok_or_else(|| anyhow::anyhow!("registry holds an unknown move step {step:?}"))?,
            state: MoveState::parse(&state)
                .ok_or_else(|| anyhow::anyhow!("registry holds an unknown move state {state:?}"))?,
            cancel_requested: row.try_get("cancel_requested")?,
            database_name: row.try_get("database_name")?,
            source_oid: row.try_get("source_oid")?,
            target_oid: row.try_get("target_oid")?,
            fence_started_at: row.try_get("fence_started_at")?,
            fence_ended_at: row.try_get("fence_ended_at")?,
            writes_refused_ms: row.try_get("writes_refused_ms")?,
            tables_copied: row.try_get("tables_copied")?,
            rows_copied: row.try_get("rows_copied")?,
            bytes_copied: row.try_get("bytes_copied")?,
            error: row.try_get("error")?,
            source_drop_after: row.try_get("source_drop_after")?,
            source_dropped_at: row.try_get("source_dropped_at")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            finished_at: row.try_get("finished_at")?,
        })
    }
}

/// One move, `None` when there is no such move.
pub(crate) async fn load(sys: &Conn, id: Uuid) -> Result<Option<Move>, DbError> {
    sys.query_opt(
        &format!("SELECT {MOVE_COLUMNS} FROM moves WHERE id = $1"),
        &[&id],
    )
    .await?
    .map(|row| Move::from_row(&row))
    .transpose()
}

/// Records that `from` is done and `to` is next (only if the move is still at `from` and
/// running: a duplicate message that got here second changes nothing), and a new lease.
pub(crate) async fn advance(sys: &Conn, id: Uuid, from: Step, to: Step) -> Result<bool, DbError> {
    let n = sys
        .execute(
            "UPDATE moves SET step = $3, updated_at = now(), \
               lease_expires_at = now() + make_interval(secs => $4) \
             WHERE id = $1 AND step = $2 AND state = 'running'",
            &[&id, &from.as_str(), &to.as_str(), &(LEASE_SECS as f64)],
        )
        .await?;
    Ok(n == 1)
}

/// Ends a move (`done`, `cancelled` or `failed`, with the reason), closing its fence.
pub(crate) async fn end(
    sys: &Conn,
    id: Uuid,
    state: MoveState,
    error: Option<&str>,
) -> Result<(), DbError> {
    let ended = sys
        .query_opt(
            "UPDATE moves SET state = $2, error = coalesce($3, error), updated_at = now(), \
           finished_at = now(), \
           fence_ended_at = CASE WHEN fence_started_at IS NULL THEN NULL \
                                 ELSE coalesce(fence_ended_at, now()) END \
         WHERE id = $1 AND state = 'running' \
         RETURNING (extract(epoch FROM fence_ended_at - fence_started_at) * 1000)::float8",
            &[&id, &state.as_str(), &error],
        )
        .await?;
    if let Some(row) = ended {
        let refused: Option<f64> = row.try_get(0)?;
        metrics::emit(
            &[("Outcome", state.as_str())],
            &[
                ("Moves", 1.0, Unit::Count),
                (
                    "MoveWritesRefused",
                    refused.unwrap_or(0.0),
                    Unit::Milliseconds,
                ),
            ],
        );
    }
    Ok(())
}

/// The newest moves first, at most `limit`.
pub(crate) async fn list(sys: &Conn, limit: i64) -> Result<Vec<Move>, DbError> {
    sys.query(
        &format!("SELECT {MOVE_COLUMNS} FROM moves ORDER BY created_at DESC, id DESC LIMIT $1"),
        &[&limit],
    )
    .await?
    .iter()
    .map(Move::from_row)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_go_in_order_and_switch_once() {
        let walk = |mode| {
            let mut step = Step::Prepare;
            let mut seen = vec![step];
            while let Some(next) = step.next(mode) {
                assert!(next > step);
                step = next;
                seen.push(step);
            }
            seen
        };
        let copy = walk(MoveMode::Copy);
        let online = walk(MoveMode::Online);
        assert!(copy.contains(&Step::Copy) && !copy.contains(&Step::Replicate));
        assert!(!online.contains(&Step::Copy));
        assert!(online.contains(&Step::Sync) && online.contains(&Step::CatchUp));
        for seen in [&copy, &online] {
            let fence = seen.iter().position(|s| *s == Step::Fence).unwrap();
            // The login on the target exists (refusing sessions) before the fence, so that
            // the fence holds only what must be done without writes.
            assert!(seen[..fence].contains(&Step::OpenTarget));
            assert_eq!(seen.last(), Some(&Step::Finish));
        }
        let mut both: Vec<Step> = copy.iter().chain(&online).copied().collect();
        both.sort();
        both.dedup();
        assert_eq!(both, Step::ALL);
        assert_eq!(MoveMode::parse("online"), Some(MoveMode::Online));
        assert_eq!(MoveMode::parse("fast"), None);
        for step in Step::ALL {
            assert_eq!(Step::parse(step.as_str()), Some(step));
            assert_eq!(step.switched(), step == Step::Finish);
        }
        assert_eq!(Step::parse("nope"), None);
    }
}
