//! What a firing's end does to its schedule (SPEC §8, §11): the
//! backend-neutral half of "settling" a scheduled job.
//!
//! When a job fired by a schedule reaches a terminal state, the backend —
//! inside the same transaction as that terminal transition — writes the
//! outcome into the job's ledger row ([`LedgerEnd`]) and applies the
//! [`Settlement`] computed here to the schedule row: its failure streaks, an
//! auto-pause, or the end of a probe.
//!
//! **Rules** (one place, both backends):
//! - A success resets both streaks.
//! - A budget breach (`turn_limit_exceeded`, `budget_exceeded`) adds one to
//!   the budget streak, unless it falls in the first-breach grace: a firing
//!   whose nominal time is at most the second nominal fire time after
//!   `max_turns_set_at` (two intervals of its rule after the edit). A breach
//!   in grace is recorded in the ledger but counted nowhere.
//! - Any other failure adds one to the generic streak. A cancel counts
//!   nowhere.
//! - The generic streak pauses an active schedule at
//!   [`StreakPolicy::generic_pause_at`] (default 3), the budget streak at
//!   [`StreakPolicy::budget_pause_at`] (default 5); the pause records why.
//! - The probe job of a paused schedule (`resume --probe`) reactivates it
//!   when it succeeds (streaks reset, next fire time after now), and leaves
//!   it paused, saying so, when it fails.

use reeve_core::{FailureReason, Job, JobId, JobState, Timestamp};
use reeve_schedule::ScheduleStatus;
use serde::{Deserialize, Serialize};

use crate::ScheduleRecord;

/// Streak lengths that auto-pause a schedule (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreakPolicy {
    pub generic_pause_at: u32,
    pub budget_pause_at: u32,
}

impl Default for StreakPolicy {
    fn default() -> Self {
        StreakPolicy {
            generic_pause_at: 3,
            budget_pause_at: 5,
        }
    }
}

/// The ledger columns a terminal job fills in its firing's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEnd {
    pub finished_at: i64,
    /// Of the last attempt (`finished - claimed`); `None` if never claimed.
    pub duration_ms: Option<i64>,
    pub turns: i64,
    pub max_turns: Option<i64>,
    pub state: &'static str,
    pub failure_reason: Option<&'static str>,
}

/// Whether `job` is one whose end settles a firing: fired by a schedule and
/// now terminal.
pub fn settles(job: &Job) -> bool {
    job.schedule.is_some() && job.state.is_terminal()
}

pub fn ledger_end(job: &Job, now: i64) -> LedgerEnd {
    let finished_at = job.finished_at.map_or(now, |t| t.0);
    LedgerEnd {
        finished_at,
        duration_ms: job.claimed_at.map(|c| (finished_at - c.0).max(0)),
        turns: job.turns,
        max_turns: job.max_turns,
        state: job.state.as_str(),
        failure_reason: job.failure_reason.map(FailureReason::as_str),
    }
}

/// What settling one job does to its schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The job whose end this is.
    pub job_id: JobId,
    pub generic_streak: i32,
    pub budget_streak: i32,
    pub status: ScheduleStatus,
    pub paused_reason: Option<String>,
    pub next_fire_at: Option<Timestamp>,
    /// The probe job after this settlement (cleared when the probe ended).
    pub probe_job: Option<i64>,
    /// Set when this settlement paused the schedule (an auto-pause event).
    pub auto_paused: Option<String>,
    /// Set when a probe ended: whether it succeeded.
    pub probe_ended: Option<bool>,
    /// A note for the ledger row (a breach in grace).
    pub note: Option<String>,
}

impl Settlement {
    pub fn changes(&self, r: &ScheduleRecord) -> bool {
        self.generic_streak != r.generic_streak
            || self.budget_streak != r.budget_streak
            || self.status != r.status
            || self.paused_reason != r.paused_reason
            || self.next_fire_at != r.next_fire_at
            || self.probe_job != r.probe_job
    }
}

/// Whether a failure reason is a budget breach (its own streak).
pub fn is_budget_breach(reason: Option<FailureReason>) -> bool {
    matches!(
        reason,
        Some(FailureReason::TurnLimitExceeded | FailureReason::BudgetExceeded)
    )
}

/// Whether a breach of the firing at `nominal` falls in the first-breach
/// grace after a `max_turns` edit at `set_at`: at most the second nominal
/// fire time of the rule after the edit.
pub fn in_breach_grace(record: &ScheduleRecord, nominal: Option<Timestamp>) -> bool {
    let (Some(set_at), Some(nominal)) = (record.max_turns_set_at, nominal) else {
        return false;
    };
    let Ok(schedule) = record.spec.validate() else {
        return false;
    };
    let second = schedule
        .rule
        .next_after(set_at, record.anchor)
        .and_then(|first| schedule.rule.next_after(first, record.anchor));
    second.is_some_and(|second| nominal <= second)
}

/// The settlement of `job` (terminal, fired by `record`'s schedule) at the
/// store's `now`.
pub fn settle(
    record: &ScheduleRecord,
    job: &Job,
    policy: &StreakPolicy,
    now: Timestamp,
) -> Settlement {
    let mut s = Settlement {
        job_id: job.id,
        generic_streak: record.generic_streak,
        budget_streak: record.budget_streak,
        status: record.status,
        paused_reason: record.paused_reason.clone(),
        next_fire_at: record.next_fire_at,
        probe_job: record.probe_job,
        auto_paused: None,
        probe_ended: None,
        note: None,
    };
    match job.state {
        JobState::Succeeded => {
            s.generic_streak = 0;
            s.budget_streak = 0;
        }
        JobState::Failed if is_budget_breach(job.failure_reason) => {
            if in_breach_grace(record, job.nominal_at) {
                s.note = Some(
                    "budget breach within the grace after a max_turns edit: not counted".into(),
                );
            } else {
                s.budget_streak += 1;
            }
        }
        JobState::Failed => s.generic_streak += 1,
        _ => {}
    }
    let reason = job.failure_reason.map_or("error", FailureReason::as_str);
    if record.probe_job == Some(job.id) {
        s.probe_job = None;
        let ok = job.state == JobState::Succeeded;
        s.probe_ended = Some(ok);
        if ok {
            s.status = ScheduleStatus::Active;
            s.paused_reason = None;
            s.next_fire_at = record
                .spec
                .validate()
                .ok()
                .and_then(|v| v.rule.next_after(now, record.anchor));
        } else if record.status == ScheduleStatus::Paused {
            s.paused_reason = Some(format!(
                "probe job {} ended {} ({reason}); still paused",
                job.id,
                job.state.as_str()
            ));
        }
        return s;
    }
    if record.status == ScheduleStatus::Active {
        let generic_at = policy.generic_pause_at as i32;
        let budget_at = policy.budget_pause_at as i32;
        let why = if generic_at > 0 && s.generic_streak >= generic_at {
            Some(format!(
                "auto-paused: {} failures in a row (last: {reason}, job {})",
                s.generic_streak, job.id
            ))
        } else if budget_at > 0 && s.budget_streak >= budget_at {
            Some(format!(
                "auto-paused: {} budget breaches in a row (last: {reason}, job {})",
                s.budget_streak, job.id
            ))
        } else {
            None
        };
        if let Some(why) = why {
            s.status = ScheduleStatus::Paused;
            s.paused_reason = Some(why.clone());
            s.auto_paused = Some(why);
        }
    }
    s
}

/// The audit record of a settlement that paused a schedule or ended a
/// probe, written in the same transaction.
pub fn audit_of(schedule: &str, job: &Job, s: &Settlement) -> Option<crate::NewAudit> {
    let action = match (&s.auto_paused, s.probe_ended) {
        (Some(_), _) => "schedule_auto_paused",
        (None, Some(true)) => "schedule_probe_succeeded",
        (None, Some(false)) => "schedule_probe_failed",
        (None, None) => return None,
    };
    Some(crate::NewAudit {
        actor: "engine".into(),
        action: action.into(),
        target: format!("schedule:{schedule}"),
        detail: serde_json::json!({
            "job_id": job.id,
            "reason": s.auto_paused.as_deref().or(s.paused_reason.as_deref()),
            "failure_reason": job.failure_reason.map(FailureReason::as_str),
            "generic_streak": s.generic_streak,
            "budget_streak": s.budget_streak,
        }),
    })
}

/// Prints the logfmt line of a committed auto-pause or probe end (target
/// `reeve::schedule`).
pub fn emit_settlement(schedule: &str, s: &Settlement) {
    if let Some(reason) = &s.auto_paused {
        tracing::warn!(target: "reeve::schedule", event = "schedule_auto_paused", schedule, reason = %reason);
    }
    if let Some(ok) = s.probe_ended {
        tracing::info!(target: "reeve::schedule", event = "schedule_probe_ended", schedule, succeeded = ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reeve_core::NewJob;

    fn record(max_turns_set_at: Option<Timestamp>) -> ScheduleRecord {
        ScheduleRecord {
            name: "s".into(),
            spec: serde_json::from_value(serde_json::json!({
                "name": "s", "every": "1h", "job": {"kind": "k", "max_turns": 5}
            }))
            .unwrap(),
            status: ScheduleStatus::Active,
            paused_reason: None,
            next_fire_at: Some(Timestamp(7_200_000)),
            anchor: Some(Timestamp(0)),
            last_nominal: None,
            generic_streak: 0,
            budget_streak: 0,
            max_turns_set_at,
            defer_until: None,
            deferrals: 0,
            probe_job: None,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        }
    }

    fn ended(id: i64, state: JobState, reason: Option<FailureReason>, nominal: i64) -> Job {
        let nj = NewJob::new("q", "k");
        let mut job = crate::transition::with_id(
            crate::transition::materialize(&crate::StoreConfig::default(), nj, 0),
            id,
        );
        job.state = state;
        job.failure_reason = reason;
        job.schedule = Some("s".into());
        job.nominal_at = Some(Timestamp(nominal));
        job
    }

    const HOUR: i64 = 3_600_000;

    #[test]
    fn generic_failures_pause_at_three_and_success_resets() {
        let p = StreakPolicy::default();
        let mut r = record(None);
        for i in 1..=2 {
            let s = settle(
                &r,
                &ended(i, JobState::Failed, Some(FailureReason::ExitCode), i * HOUR),
                &p,
                Timestamp(0),
            );
            assert_eq!(
                (s.generic_streak, s.status),
                (i as i32, ScheduleStatus::Active)
            );
            r.generic_streak = s.generic_streak;
        }
        let ok = settle(
            &r,
            &ended(3, JobState::Succeeded, None, 3 * HOUR),
            &p,
            Timestamp(0),
        );
        assert_eq!(
            (ok.generic_streak, ok.budget_streak),
            (0, 0),
            "a success resets"
        );
        r.generic_streak = 2;
        let third = settle(
            &r,
            &ended(4, JobState::Failed, Some(FailureReason::Timeout), 4 * HOUR),
            &p,
            Timestamp(0),
        );
        assert_eq!(third.status, ScheduleStatus::Paused);
        let why = third.auto_paused.expect("an auto-pause");
        assert!(
            why.contains("3 failures") && why.contains("timeout"),
            "{why}"
        );
    }

    #[test]
    fn budget_breaches_have_their_own_streak_and_grace() {
        let p = StreakPolicy::default();
        // max_turns edited at 00:30: nominal times 01:00 and 02:00 are in grace.
        let mut r = record(Some(Timestamp(HOUR / 2)));
        let breach = |id, nominal| {
            ended(
                id,
                JobState::Failed,
                Some(FailureReason::TurnLimitExceeded),
                nominal,
            )
        };
        let s = settle(&r, &breach(1, HOUR), &p, Timestamp(0));
        assert_eq!(s.budget_streak, 0);
        assert!(s.note.is_some(), "recorded, not counted");
        let s = settle(&r, &breach(2, 2 * HOUR), &p, Timestamp(0));
        assert_eq!(s.budget_streak, 0, "the second interval is still grace");
        let s = settle(&r, &breach(3, 3 * HOUR), &p, Timestamp(0));
        assert_eq!((s.budget_streak, s.note.as_deref()), (1, None));
        r.budget_streak = 4;
        r.generic_streak = 2;
        let fifth = settle(&r, &breach(4, 5 * HOUR), &p, Timestamp(0));
        assert_eq!(
            fifth.generic_streak, 2,
            "a breach leaves the generic streak alone"
        );
        assert_eq!(fifth.status, ScheduleStatus::Paused);
        assert!(fifth.auto_paused.unwrap().contains("5 budget breaches"));
    }

    #[test]
    fn cancels_count_nowhere_and_paused_schedules_stay_paused() {
        let p = StreakPolicy::default();
        let mut r = record(None);
        r.generic_streak = 2;
        let s = settle(
            &r,
            &ended(1, JobState::Cancelled, Some(FailureReason::Cancelled), HOUR),
            &p,
            Timestamp(0),
        );
        assert_eq!((s.generic_streak, s.status), (2, ScheduleStatus::Active));
        r.status = ScheduleStatus::Paused;
        r.paused_reason = Some("by hand".into());
        let s = settle(
            &r,
            &ended(2, JobState::Failed, Some(FailureReason::Error), HOUR),
            &p,
            Timestamp(0),
        );
        assert_eq!((s.generic_streak, s.auto_paused), (3, None));
        assert_eq!(s.paused_reason.as_deref(), Some("by hand"));
    }

    #[test]
    fn a_probe_reactivates_only_on_success() {
        let p = StreakPolicy::default();
        let mut r = record(None);
        r.status = ScheduleStatus::Paused;
        r.paused_reason = Some("auto-paused".into());
        r.generic_streak = 3;
        r.probe_job = Some(9);
        let failed = settle(
            &r,
            &ended(9, JobState::Failed, Some(FailureReason::ExitCode), HOUR),
            &p,
            Timestamp(0),
        );
        assert_eq!(
            (failed.status, failed.probe_job, failed.probe_ended),
            (ScheduleStatus::Paused, None, Some(false))
        );
        assert!(failed.paused_reason.unwrap().contains("probe job 9"));
        let now = Timestamp(10 * HOUR + 5);
        let ok = settle(&r, &ended(9, JobState::Succeeded, None, HOUR), &p, now);
        assert_eq!(
            (ok.status, ok.probe_job, ok.paused_reason.as_deref()),
            (ScheduleStatus::Active, None, None)
        );
        assert_eq!(
            (ok.generic_streak, ok.next_fire_at),
            (0, Some(Timestamp(11 * HOUR)))
        );
    }
}
