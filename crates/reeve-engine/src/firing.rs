//! Schedule firing: the leader turns due schedules into jobs.
//!
//! Each due schedule is fired through [`Store::fire`], one transaction that
//! inserts the firing's job (idempotency key `name@nominal`), records it in
//! the firing ledger and advances `next_fire_at` *conditioned on its old
//! value*: if another daemon got there first the call changes nothing
//! (`LostRace`), so a fire time produces at most one job however many
//! daemons race. A fire time more than [`MISFIRE_AFTER`] late counts as
//! missed (the daemon was down) and follows the schedule's misfire policy:
//! the skipped times become one ledger row, the ones that fire are fired
//! oldest first, each step again conditioned on the previous one.
//!
//! **Pressure** (SPEC §8): while any pressure signal is active, a fire time
//! that falls due is deferred by `pressure_delay` (one conditional
//! [`Store::defer_firing`], counted per fire time), but never past
//! `pressure_max_defer` after its nominal time: then it fires whatever the
//! pressure, so nothing starves. Missed fire times after downtime follow the
//! misfire policy and are not deferred.

use std::sync::Arc;
use std::time::Duration;

use reeve_core::Timestamp;
use reeve_core::job::Availability;
use reeve_core::time::duration_millis;
use reeve_schedule::{MisfirePolicy, ScheduleStatus, ValidSchedule, misfire_plan};
use reeve_store::{
    DeferParams, DeferResult, FireParams, FireResult, FiringOutcome, NextFire, ScheduleRecord,
    Store,
};

use crate::EngineConfig;

/// Lateness past which a due fire time counts as missed rather than late.
pub(crate) const MISFIRE_AFTER: Duration = Duration::from_secs(60);

/// Most schedules handled per pass.
const BATCH: u32 = 100;

/// Fires every due schedule; returns whether all went well.
pub(crate) async fn fire_due(store: &Arc<dyn Store>, config: &EngineConfig) -> bool {
    let due = match store.due_schedules(BATCH).await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "reading due schedules failed");
            return false;
        }
    };
    if due.is_empty() {
        return true;
    }
    let pressure = match store.list_pressure().await {
        Ok(p) => p.into_iter().map(|p| p.source).collect::<Vec<_>>(),
        Err(e) => {
            tracing::warn!(error = %e, "reading pressure failed");
            return false;
        }
    };
    let mut ok = true;
    for record in due {
        if !pressure.is_empty() {
            match defer(store, config, &record, &pressure).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(schedule = %record.name, error = %e, "deferring failed; will retry");
                    ok = false;
                    continue;
                }
            }
        }
        if let Err(e) = fire_one(store, &record).await {
            tracing::warn!(schedule = %record.name, error = %e, "firing failed; will retry");
            ok = false;
        }
    }
    ok
}

/// Defers `record`'s due fire time under pressure; false when it must fire
/// now (deferred as far as allowed, or missed rather than late).
async fn defer(
    store: &Arc<dyn Store>,
    config: &EngineConfig,
    record: &ScheduleRecord,
    sources: &[String],
) -> reeve_store::Result<bool> {
    let Some(nominal) = record.next_fire_at else {
        return Ok(false);
    };
    let now = store.now().await?;
    if nominal.millis_until(now) > duration_millis(MISFIRE_AFTER.max(config.pressure_max_defer)) {
        return Ok(false);
    }
    let result = store
        .defer_firing(DeferParams {
            schedule: record.name.clone(),
            expected_next: nominal,
            delay: config.pressure_delay,
            max_defer: config.pressure_max_defer,
            detail: format!("pressure: {}", sources.join(",")),
        })
        .await?;
    Ok(match result {
        DeferResult::Deferred { until, deferrals } => {
            tracing::info!(schedule = %record.name, nominal = %nominal, until = %until, deferrals, "deferred by pressure");
            true
        }
        DeferResult::LostRace => true,
        DeferResult::FireNow => false,
    })
}

async fn fire_one(store: &Arc<dyn Store>, record: &ScheduleRecord) -> reeve_store::Result<()> {
    let Some(nominal) = record.next_fire_at else {
        return Ok(());
    };
    let schedule = match record.spec.validate() {
        Ok(s) => s,
        Err(e) => {
            // A stored spec that no longer validates cannot fire; say why.
            let reason = format!("invalid schedule: {e}");
            tracing::error!(schedule = %record.name, %reason, "pausing schedule");
            store
                .set_schedule_status(
                    &record.name,
                    ScheduleStatus::Paused,
                    Some(reason),
                    NextFire::Keep,
                )
                .await?;
            return Ok(());
        }
    };
    let now = store.now().await?;
    let late = Duration::from_millis(nominal.millis_until(now).max(0) as u64);
    // A fire time that pressure deferred is late by its deferral, not missed.
    let late = if record.deferrals > 0 {
        Duration::ZERO
    } else {
        late
    };
    let steps = if late <= MISFIRE_AFTER {
        vec![Step {
            nominal,
            fire: true,
            skipped_until: None,
        }]
    } else {
        misfire_steps(&schedule, record, nominal, now)
    };
    let finally_next = if late <= MISFIRE_AFTER {
        schedule.rule.next_after(nominal, record.anchor)
    } else {
        schedule.rule.next_after(now, record.anchor)
    };
    let caught_up =
        late > MISFIRE_AFTER && matches!(schedule.misfire, MisfirePolicy::CatchUp { .. });
    let mut expected = nominal;
    for (i, step) in steps.iter().enumerate() {
        let next = steps.get(i + 1).map(|s| s.nominal).or(finally_next);
        let job = step.fire.then(|| {
            let mut job = schedule.job.new_job(&schedule.name, step.nominal);
            let jitter = schedule.rule.jitter_offset(&schedule.name, step.nominal);
            if !jitter.is_zero() {
                job.availability = Availability::At(Timestamp(
                    step.nominal.0.saturating_add(duration_millis(jitter)),
                ));
            }
            job
        });
        let result = store
            .fire(FireParams {
                schedule: schedule.name.clone(),
                expected_next: Some(expected),
                nominal: step.nominal,
                next: NextFire::Set(next),
                job,
                overlap: schedule.overlap,
                outcome: if step.fire && caught_up {
                    FiringOutcome::CaughtUp
                } else if step.fire {
                    FiringOutcome::Fired
                } else {
                    FiringOutcome::SkippedMisfire
                },
                skipped_until: step.skipped_until,
                require_capacity: false,
                audit: None,
                probe: false,
            })
            .await?;
        match result {
            FireResult::LostRace => return Ok(()),
            FireResult::Fired(job) => {
                tracing::info!(schedule = %schedule.name, nominal = %step.nominal, job = job.id, "fired");
            }
            FireResult::Skipped(outcome) => {
                tracing::info!(schedule = %schedule.name, nominal = %step.nominal, outcome = outcome.as_str(), "not fired");
            }
            FireResult::Coalesced { into } => {
                tracing::info!(schedule = %schedule.name, nominal = %step.nominal, into, "coalesced");
            }
            FireResult::CapacityFull(_) => return Ok(()),
        }
        match next {
            Some(n) => expected = n,
            None => return Ok(()),
        }
    }
    Ok(())
}

/// One ledger step of a firing.
struct Step {
    nominal: Timestamp,
    fire: bool,
    skipped_until: Option<Timestamp>,
}

/// The steps after downtime: the skipped range (one row), then the times
/// that fire under the misfire policy, oldest first.
fn misfire_steps(
    schedule: &ValidSchedule,
    record: &ScheduleRecord,
    first_missed: Timestamp,
    now: Timestamp,
) -> Vec<Step> {
    // The plan covers the nominal times after the last one handled; interval
    // rules are anchored there, so it must be a real nominal time.
    let last = record
        .last_nominal
        .filter(|l| *l < first_missed)
        .unwrap_or_else(|| {
            let before = schedule.rule.interval().map_or(1, duration_millis);
            Timestamp(first_missed.0.saturating_sub(before))
        });
    let plan = misfire_plan(&schedule.rule, last, now, schedule.misfire);
    let mut steps = Vec::new();
    if let Some((from, until)) = plan.skipped {
        steps.push(Step {
            nominal: from,
            fire: false,
            skipped_until: Some(until),
        });
    }
    steps.extend(plan.fire.into_iter().map(|nominal| Step {
        nominal,
        fire: true,
        skipped_until: None,
    }));
    if steps.is_empty() {
        steps.push(Step {
            nominal: first_missed,
            fire: false,
            skipped_until: Some(first_missed),
        });
    }
    steps
}
