//! The canary wave of a queued run, decided under the run's row lock: replacements for its
//! deferred tenants, and whether it is still open, failed, or released the rest.

use uuid::Uuid;

use crate::pg::{Conn, DbError};

/// Where the canary wave stands, decided under the run's row lock.
#[derive(Debug)]
pub(super) enum CanaryStep {
    /// Still open: tenants of it pending; these were moved into it now (to send).
    Open(Vec<String>),
    /// Over, with this many failures: the run halts.
    Failed(i64),
    /// Over and passed: the run moved to wave 1 here; the rest, to send.
    Released(Vec<String>),
    /// The run is past its canary wave (or closed, or of another attempt).
    Over,
}

/// The canary wave, under the run's row lock (every worker's step is one transaction, so two
/// workers finishing together see each other's outcomes and promotions):
/// 1. each deferred tenant of the wave without a replacement gets one, a pending tenant of the
///    rest moved into the wave (`promoted_for` it, `promoted_by` the caller's tenant, whose
///    worker sends its message), while the rest has any;
/// 2. a tenant of the wave still pending: open;
/// 3. else a failure in it halts the run, or the run moves to wave 1 and the rest goes out.
pub(super) async fn canary_step(
    sys: &Conn,
    run_id: Uuid,
    attempt: i64,
    me: &str,
) -> Result<CanaryStep, DbError> {
    let tx = sys.begin().await?;
    let step = async {
        let locked = tx
            .locking()
            .query_opt(
                "SELECT 1 FROM runs WHERE id = $1 AND attempt = $2 AND status = 'running' \
                   AND wave = 0 FOR UPDATE",
                &[&run_id, &attempt],
            )
            .await?;
        if locked.is_none() {
            return Ok(CanaryStep::Over);
        }
        let unreplaced: Vec<String> = tx
            .query(
                "SELECT d.slug FROM run_tenants d WHERE d.run_id = $1 AND d.wave = 0 \
                   AND d.status = 'deferred' AND NOT EXISTS (SELECT 1 FROM run_tenants r \
                     WHERE r.run_id = $1 AND r.promoted_for = d.slug) ORDER BY d.slug",
                &[&run_id],
            )
            .await?
            .iter()
            .map(|r| r.try_get("slug"))
            .collect::<Result<_, _>>()?;
        let mut promoted = Vec::new();
        if !unreplaced.is_empty() {
            let candidates: Vec<String> = tx
                .query(
                    "SELECT slug FROM run_tenants WHERE run_id = $1 AND wave = 1 \
                       AND status = 'pending' ORDER BY slug LIMIT $2",
                    &[&run_id, &(unreplaced.len() as i64)],
                )
                .await?
                .iter()
                .map(|r| r.try_get("slug"))
                .collect::<Result<_, _>>()?;
            for (replaced, slug) in unreplaced.iter().zip(candidates) {
                tx.execute(
                    "UPDATE run_tenants SET wave = 0, promoted_for = $3, promoted_by = $4 \
                     WHERE run_id = $1 AND slug = $2",
                    &[&run_id, &slug, replaced, &me],
                )
                .await?;
                promoted.push(slug);
            }
        }
        let row = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM run_tenants WHERE run_id = $1 AND wave = 0 \
                   AND status = 'pending') AS pending, \
                 (SELECT count(*) FROM run_tenants WHERE run_id = $1 AND wave = 0 \
                   AND status = 'failed') AS failed",
                &[&run_id],
            )
            .await?;
        if row.try_get::<_, bool>("pending")? {
            return Ok(CanaryStep::Open(promoted));
        }
        let failed: i64 = row.try_get("failed")?;
        if failed > 0 {
            return Ok(CanaryStep::Failed(failed));
        }
        tx.execute(
            "UPDATE runs SET wave = 1, updated_at = now() WHERE id = $1",
            &[&run_id],
        )
        .await?;
        let rest = tx
            .query(
                "SELECT slug FROM run_tenants WHERE run_id = $1 AND wave = 1 \
                   AND status = 'pending' ORDER BY slug",
                &[&run_id],
            )
            .await?
            .iter()
            .map(|r| r.try_get("slug"))
            .collect::<Result<_, _>>()?;
        Ok::<_, DbError>(CanaryStep::Released(rest))
    }
    .await;
    match step {
        Ok(step) => {
            tx.commit().await?;
            Ok(step)
        }
        Err(e) => {
            tx.rollback().await;
            Err(e)
        }
    }
}

/// The run's tenants still pending that the worker of `slug` moved into the canary wave.
pub(super) async fn promoted_by(
    sys: &Conn,
    run_id: Uuid,
    slug: &str,
) -> Result<Vec<String>, DbError> {
    let rows = sys
        .query(
            "SELECT slug FROM run_tenants WHERE run_id = $1 AND promoted_by = $2 \
               AND status = 'pending' AND wave = 0 ORDER BY slug",
            &[&run_id, &slug],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<Vec<String>, _>>()?)
}
