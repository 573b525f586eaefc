//! An inline run's tenants: the canary wave (each deferred canary replaced by the next tenant),
//! then the rest, each server's tenants side by side at most its budget at once and the
//! fleet's concurrency over all, and the brake.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{future::join_all, stream, StreamExt};
use tokio::sync::Semaphore;

use super::{
    ledger,
    one_tenant::{migrate_tenant, Attempted},
    outcome::{Deferral, TenantOutcome, TenantReport},
    plan::{Attempt, Plan, TenantRow},
    prepare::FleetServer,
    report::{MigrateAllReport, RunStatus},
};
use crate::{database::Database, migrate::ExpectedHistory, pg::Conn};

/// The brake of an inline run: failures so far, and how many it tolerates. Only `failed`
/// tenants count: a deferred one (busy, out of time, unreachable) never pulls it.
struct Brake {
    failures: AtomicUsize,
    max: Option<usize>,
}

impl Brake {
    fn pulled(&self) -> bool {
        self.max
            .is_some_and(|max| self.failures.load(Ordering::Relaxed) > max)
    }
}

fn halted(t: &TenantRow, why: &str) -> TenantReport {
    TenantReport {
        server: t.server.clone(),
        error: Some(why.into()),
        ..TenantReport::new(&t.slug, TenantOutcome::Halted)
    }
}

/// What an inline run's waves share: the fleet's concurrency and the brake.
pub(super) struct Wave<'a> {
    db: &'a Database,
    sys: &'a Conn,
    servers: &'a [FleetServer],
    plan: &'a Plan,
    expected: &'a ExpectedHistory,
    fleet: Semaphore,
    brake: Brake,
}

impl<'a> Wave<'a> {
    pub(super) fn new(
        db: &'a Database,
        sys: &'a Conn,
        servers: &'a [FleetServer],
        plan: &'a Plan,
        expected: &'a ExpectedHistory,
        max_failures: Option<usize>,
    ) -> Wave<'a> {
        Wave {
            db,
            sys,
            servers,
            plan,
            expected,
            fleet: Semaphore::new(plan.concurrency),
            brake: Brake {
                failures: AtomicUsize::new(0),
                max: max_failures,
            },
        }
    }

    /// An inline run's tenants: the canary wave (when `canary`), then the rest unless a
    /// canary failed, with the brake. Says in the report why the run halted, if it did.
    pub(super) async fn all(
        &self,
        work: &[&TenantRow],
        canary: Option<usize>,
        report: &mut MigrateAllReport,
    ) -> Vec<(TenantReport, bool)> {
        let max_failures = self.brake.max;
        let (mut done, rest) = if let Some(canary) = canary {
            self.canary(work, canary).await
        } else {
            (Vec::new(), work)
        };
        let canary_failed = done.iter().any(|(r, _)| r.status == TenantOutcome::Failed);
        if canary_failed {
            let why = format!(
                "halted: the canary wave failed ({} of {} tenants); the rest were not attempted",
                done.iter()
                    .filter(|(r, _)| r.status == TenantOutcome::Failed)
                    .count(),
                canary.unwrap_or_default()
            );
            for t in rest {
                done.push((halted(t, "not attempted: the canary wave failed"), false));
            }
            report.error = Some(why);
        } else {
            done.extend(self.migrate(rest).await);
        }
        let brake = &self.brake;
        // Past the brake, even at the last tenant: halted, as a queued run would be.
        if report.error.is_none() && brake.pulled() {
            report.error = Some(format!(
                "halted: {} tenants failed, more than max_failures ({})",
                brake.failures.load(Ordering::Relaxed),
                max_failures.unwrap_or_default()
            ));
        }
        if report.error.is_some() {
            report.status = RunStatus::Halted;
        }
        done
    }

    /// The canary wave: the first `size` tenants, and for each one deferred (busy, out of
    /// time, unreachable: it says nothing about the migrations) the next tenant in its place,
    /// until `size` tenants were really attempted or none is left. Returns their outcomes and
    /// the tenants left for the rest.
    async fn canary<'t>(
        &self,
        work: &'t [&'t TenantRow],
        size: usize,
    ) -> (Vec<(TenantReport, bool)>, &'t [&'t TenantRow]) {
        let mut done = Vec::new();
        let mut next = 0;
        let mut wanted = size;
        while wanted > 0 && next < work.len() {
            let batch = &work[next..(next + wanted).min(work.len())];
            next += batch.len();
            let results = self.migrate(batch).await;
            let attempted = results
                .iter()
                .filter(|(r, _)| !matches!(r.status, TenantOutcome::Deferred))
                .count();
            let out_of_time = results
                .iter()
                .any(|(r, _)| r.status == TenantOutcome::NotStarted);
            done.extend(results);
            if out_of_time {
                break;
            }
            wanted -= attempted.min(wanted);
        }
        (done, &work[next..])
    }

    /// Tenants inline: each server's side by side with the others', at most its budget at
    /// once and `plan.concurrency` over the fleet; each outcome recorded as it comes, and
    /// whether that worked. No tenant starts once the brake is pulled.
    async fn migrate(&self, wave: &[&TenantRow]) -> Vec<(TenantReport, bool)> {
        let (db, sys, plan, expected) = (self.db, self.sys, self.plan, self.expected);
        let (fleet, brake) = (&self.fleet, &self.brake);
        let per_server = self
            .servers
            .iter()
            .filter(|s| s.down.is_none())
            .map(|server| {
                let mine: Vec<&TenantRow> = wave
                    .iter()
                    .copied()
                    .filter(|t| t.server.as_deref() == Some(server.name.as_str()))
                    .collect();
                async move {
                    stream::iter(mine)
                        .map(|t| async move {
                            // Closed never: the semaphore lives as long as the run.
                            let _permit = fleet.acquire().await.ok();
                            if brake.pulled() {
                                let why = "not attempted: the run was halted (max_failures)";
                                return (halted(t, why), false);
                            }
                            let report = match migrate_tenant(&Attempt {
                                db,
                                sys,
                                server,
                                tenant: t,
                                plan,
                                expected,
                            })
                            .await
                            {
                                Attempted::Done(r) => r,
                                // Inline runs wait for what is busy and read no ledger first:
                                // none of these happens to them.
                                Attempted::GiveBack { .. }
                                | Attempted::NotPending
                                | Attempted::Unrecorded => TenantReport {
                                    server: t.server.clone(),
                                    ..TenantReport::deferred(&t.slug, Deferral::Busy, "busy")
                                },
                            };
                            if report.status == TenantOutcome::Failed {
                                brake.failures.fetch_add(1, Ordering::Relaxed);
                            }
                            // Each outcome as soon as it is known: a run cut short keeps it.
                            let recorded = match plan.ledger {
                                Some(run) => ledger::record(sys, run, &report).await,
                                None => true,
                            };
                            (report, recorded)
                        })
                        .buffer_unordered(server.budget)
                        .collect::<Vec<(TenantReport, bool)>>()
                        .await
                }
            });
        join_all(per_server).await.into_iter().flatten().collect()
    }
}
