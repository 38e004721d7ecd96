//! Supervision (SPEC §10): progress, apart from liveness — the
//! backend-neutral half of [`Store::supervise`](crate::Store::supervise).
//!
//! Liveness is the reaper's (a run whose lease passed ends). *Progress* is
//! what a live run shows for its time: a turn count that went up, a progress
//! note that differs from the last one, or a checkpoint save. Each of them
//! sets the job's `progress_at` (the claim sets it too) and clears a stall.
//!
//! **Rules** (one place, both backends):
//! - A running run whose lease is live and whose `progress_at` is at least
//!   `stall_after` old is *stalled*: `stalled_at` is set, the run's inbox
//!   gets one message from [`SUPERVISOR`] ([`stall_mail`]) and the job one
//!   `stalled` event — all in one transaction, conditioned on `stalled_at`
//!   still being unset, so concurrent passes stall a run once.
//! - A stalled run that stays without progress for `escalate_after` after
//!   `stalled_at` is *escalated*: `escalated_at`, an `escalated` event and,
//!   when a webhook subscribes, an outbox row (`escalation`), in one
//!   transaction conditioned on `escalated_at` being unset.
//! - Progress clears both, so the run can stall again later. A run whose
//!   lease passed is the reaper's, never stalled. Nothing is killed for
//!   being slow.

use std::time::Duration;

use reeve_core::time::format_duration;
use reeve_core::{Actor, EventKind, Job, Timestamp};

use crate::fleet::NewMail;
use crate::transition::PendingEvent;

/// The sender of the supervisor's mail.
pub const SUPERVISOR: &str = "supervisor";

/// Default `stall_after` and `escalate_after` (SPEC §10).
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_ESCALATE_AFTER: Duration = Duration::from_secs(30 * 60);

/// The thresholds of one supervision pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuperviseParams {
    /// No progress for this long stalls a run.
    pub stall_after: Duration,
    /// A stall that lasts this long more is escalated.
    pub escalate_after: Duration,
    /// Most runs stalled, and most escalated, by one pass.
    pub limit: u32,
}

impl SuperviseParams {
    /// Refuses a zero threshold (it would stall every run at once), naming
    /// the field.
    pub fn validate(&self) -> Result<(), reeve_core::InputError> {
        if self.stall_after.is_zero() {
            return Err(reeve_core::InputError::new(
                "stall_after",
                "must be greater than zero",
            ));
        }
        if self.escalate_after.is_zero() {
            return Err(reeve_core::InputError::new(
                "escalate_after",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

impl Default for SuperviseParams {
    fn default() -> Self {
        SuperviseParams {
            stall_after: DEFAULT_STALL_AFTER,
            escalate_after: DEFAULT_ESCALATE_AFTER,
            limit: 500,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Supervised {
    /// The runs this pass stalled, as they are after it.
    pub stalled: Vec<Job>,
    /// The runs this pass escalated, as they are after it.
    pub escalated: Vec<Job>,
    /// Time until the next live run would stall or escalate if nothing
    /// changes (`Some(ZERO)` when more are due now), `None` when no live run
    /// is on its way to either.
    pub next_in: Option<Duration>,
}

/// How long a run has gone without progress at `now`.
pub fn silent_for(job: &Job, now: i64) -> Duration {
    let since = job.progress_at.or(job.claimed_at).map_or(now, |t| t.0);
    Duration::from_millis(now.saturating_sub(since).max(0) as u64)
}

/// A duration as the mail and the events say it (`30m`, `1h5m`), to the
/// second.
fn spoken(d: Duration) -> String {
    format_duration(Duration::from_secs(d.as_secs()))
}

/// The supervisor's message to a run that just stalled.
pub fn stall_mail(job: &Job, now: i64) -> NewMail {
    let silent = spoken(silent_for(job, now));
    NewMail {
        job_id: job.id,
        sender: SUPERVISOR.into(),
        subject: format!("no progress for {silent}"),
        body: format!(
            "Run {attempt} of job {id} (epoch {epoch}) has reported no progress for {silent}: \
             no turn, no new progress note, no checkpoint. If it is still working, report \
             progress; if it is stuck, stop and fail so it can be retried. Without progress \
             it will be escalated to an operator.",
            attempt = job.attempt,
            id = job.id,
            epoch = job.epoch,
        ),
    }
}

/// The `stalled` event of a run just stalled at `now`.
pub fn stalled_event(job: &Job, now: i64) -> PendingEvent {
    PendingEvent::for_job(job, EventKind::Stalled, Actor::Engine).detail(Some(format!(
        "no progress for {}",
        spoken(silent_for(job, now))
    )))
}

/// The `escalated` event of a run just escalated at `now`.
pub fn escalated_event(job: &Job, now: i64) -> PendingEvent {
    PendingEvent::for_job(job, EventKind::Escalated, Actor::Engine).detail(Some(format!(
        "no progress for {}",
        spoken(silent_for(job, now))
    )))
}

/// [`Supervised::next_in`] from the earliest `progress_at` of the live
/// runs not stalled and the earliest `stalled_at` of the live runs not
/// escalated.
pub fn next_in(
    p: &SuperviseParams,
    earliest_progress: Option<i64>,
    earliest_stall: Option<i64>,
    now: i64,
) -> Option<Duration> {
    let ms = reeve_core::time::duration_millis;
    [
        earliest_progress.map(|t| t.saturating_add(ms(p.stall_after))),
        earliest_stall.map(|t| t.saturating_add(ms(p.escalate_after))),
    ]
    .into_iter()
    .flatten()
    .min()
    .map(|at| Duration::from_millis(at.saturating_sub(now).max(0) as u64))
}

/// The instant before which `progress_at` must lie for a run to stall, and
/// `stalled_at` for it to escalate, at `now`.
pub fn cutoffs(p: &SuperviseParams, now: i64) -> (Timestamp, Timestamp) {
    let ms = reeve_core::time::duration_millis;
    (
        Timestamp(now.saturating_sub(ms(p.stall_after))),
        Timestamp(now.saturating_sub(ms(p.escalate_after))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_step_is_the_earliest_of_stall_and_escalation() {
        let p = SuperviseParams {
            stall_after: Duration::from_secs(60),
            escalate_after: Duration::from_secs(120),
            limit: 10,
        };
        assert_eq!(next_in(&p, None, None, 1_000), None);
        assert_eq!(
            next_in(&p, Some(0), None, 1_000),
            Some(Duration::from_secs(59))
        );
        assert_eq!(
            next_in(&p, Some(50_000), Some(-100_000), 1_000),
            Some(Duration::from_secs(19)),
            "the stall of an hour ago escalates first"
        );
        assert_eq!(
            next_in(&p, Some(-500_000), None, 1_000),
            Some(Duration::ZERO),
            "overdue is due now"
        );
    }
}
