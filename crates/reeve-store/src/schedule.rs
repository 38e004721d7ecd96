//! Stored schedules and the firing ledger (SPEC §7, §11): the types of the
//! [`Store`](crate::Store) methods that keep them.
//!
//! **What this module owns.** [`ScheduleRecord`] is a schedule row: its
//! declarative [`ScheduleSpec`] (stored as JSON), its status, and the durable
//! state the engine keeps for it (`next_fire_at`, the interval `anchor`,
//! `last_nominal`, failure streaks). [`FiringRecord`] is one ledger row: what
//! happened to one nominal fire time (or a range of skipped ones).
//!
//! **Invariants** (kept by every backend, checked by the conformance suite):
//! - A fire time produces at most one job, whatever number of daemons race:
//!   [`Store::fire`](crate::Store::fire) is one transaction conditioned on
//!   the stored `next_fire_at` ([`FireParams::expected_next`]); a firer whose
//!   expectation is stale gets [`FireResult::LostRace`] and changes nothing.
//! - The ledger holds at most one row per `(schedule, nominal_at)` (a unique
//!   constraint, a second guard behind the condition).
//! - Upserting a schedule ([`SchedulePut`]) never touches its streaks,
//!   `last_nominal` or `created_at`, so changing a cadence keeps history.
//! - Deleting a schedule keeps its jobs and its ledger rows.

use std::fmt;
use std::str::FromStr;

use reeve_core::{Job, JobId, JobState, NewJob, Timestamp};
use reeve_schedule::{OverlapPolicy, ScheduleSpec, ScheduleStatus, firing_key};

use crate::operator::{CapacityFull, NewAudit};
use serde::{Deserialize, Serialize};

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    pub name: String,
    pub spec: ScheduleSpec,
    pub status: ScheduleStatus,
    /// Why the schedule was paused (by hand, or by a failure streak).
    pub paused_reason: Option<String>,
    /// The next nominal fire time (jitter included as the engine computed
    /// it); `None` = nothing to fire (paused, or a rule with no future time).
    pub next_fire_at: Option<Timestamp>,
    /// The anchor of an interval rule (`anchor + k·every`).
    pub anchor: Option<Timestamp>,
    /// The nominal time of the last cadence firing the schedule handled.
    pub last_nominal: Option<Timestamp>,
    /// Generic failures in a row (SPEC §8).
    pub generic_streak: i32,
    /// Turn-budget breaches in a row (SPEC §8).
    pub budget_streak: i32,
    /// When `max_turns` was last edited (first-breach grace, SPEC §8).
    pub max_turns_set_at: Option<Timestamp>,
    /// Pressure deferred the due fire time until this instant (SPEC §8).
    pub defer_until: Option<Timestamp>,
    /// How often the due fire time was deferred so far.
    pub deferrals: i32,
    /// The canary job of `resume --probe`: the schedule becomes active again
    /// only when it succeeds.
    pub probe_job: Option<JobId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// How a write treats a stored instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NextFire {
    /// Leave it as stored.
    #[default]
    Keep,
    /// Replace it (`Set(None)` clears it).
    Set(Option<Timestamp>),
}

impl NextFire {
    /// The value to write given the stored one.
    pub fn resolve(self, stored: Option<Timestamp>) -> Option<Timestamp> {
        match self {
            NextFire::Keep => stored,
            NextFire::Set(v) => v,
        }
    }

    pub fn is_set(self) -> bool {
        matches!(self, NextFire::Set(_))
    }
}

/// An upsert of a schedule by `spec.name`.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulePut {
    pub spec: ScheduleSpec,
    /// `None`: keep the stored status (`active` for a new schedule).
    /// Setting `active` clears the paused reason.
    pub status: Option<ScheduleStatus>,
    /// `Keep` leaves it as stored (`None` for a new schedule).
    pub next_fire_at: NextFire,
    /// `Keep` leaves it as stored (`None` for a new schedule).
    pub anchor: NextFire,
    /// `max_turns` changed: sets `max_turns_set_at` to the store's now.
    pub max_turns_changed: bool,
}

/// What happened to a nominal fire time (the ledger's `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FiringOutcome {
    Fired,
    SkippedOverlap,
    SkippedPaused,
    SkippedMisfire,
    Coalesced,
    CaughtUp,
    Manual,
    Forced,
    /// Pressure deferred it; the row becomes the firing's row when it fires.
    Deferred,
    /// The canary firing of `resume --probe`.
    Probe,
}

impl FiringOutcome {
    pub const ALL: [FiringOutcome; 10] = [
        FiringOutcome::Fired,
        FiringOutcome::SkippedOverlap,
        FiringOutcome::SkippedPaused,
        FiringOutcome::SkippedMisfire,
        FiringOutcome::Coalesced,
        FiringOutcome::CaughtUp,
        FiringOutcome::Manual,
        FiringOutcome::Forced,
        FiringOutcome::Deferred,
        FiringOutcome::Probe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FiringOutcome::Fired => "fired",
            FiringOutcome::SkippedOverlap => "skipped_overlap",
            FiringOutcome::SkippedPaused => "skipped_paused",
            FiringOutcome::SkippedMisfire => "skipped_misfire",
            FiringOutcome::Coalesced => "coalesced",
            FiringOutcome::CaughtUp => "caught_up",
            FiringOutcome::Manual => "manual",
            FiringOutcome::Forced => "forced",
            FiringOutcome::Deferred => "deferred",
            FiringOutcome::Probe => "probe",
        }
    }
}

impl fmt::Display for FiringOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FiringOutcome {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FiringOutcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown firing outcome {s:?}"))
    }
}

/// One firing of a schedule (see [`Store::fire`](crate::Store::fire)).
#[derive(Debug, Clone, PartialEq)]
pub struct FireParams {
    pub schedule: String,
    /// The `next_fire_at` the firer read: the firing applies only while the
    /// stored value is still this one. `None` for manual and forced runs (no
    /// condition).
    pub expected_next: Option<Timestamp>,
    /// The nominal fire time. A manual run (`expected_next: None`) at a
    /// nominal time already in the ledger uses the store's now instead.
    pub nominal: Timestamp,
    /// The new `next_fire_at`; `Set` also records `last_nominal = nominal`.
    pub next: NextFire,
    /// The job to insert; `None` records the ledger row only (outcome
    /// `outcome`, or `skipped_misfire` with `skipped_until`).
    pub job: Option<NewJob>,
    /// Applied against the schedule's live jobs when `job` is `Some`.
    pub overlap: OverlapPolicy,
    /// What the ledger records when a job is inserted (`fired`, `caught_up`,
    /// `manual`, `forced`), or for a record-only firing.
    pub outcome: FiringOutcome,
    /// With `job: None`: the nominal times `[nominal, skipped_until]` were
    /// skipped; one row holds the range (`skipped_paused` when `outcome`
    /// says so, else `skipped_misfire`).
    pub skipped_until: Option<Timestamp>,
    /// A manual run: refuse with [`FireResult::CapacityFull`] (nothing
    /// changed) when the global cap or the job's queue cap is full, checked
    /// inside the firing's transaction.
    pub require_capacity: bool,
    /// Written in the same transaction (a forced run's audit record); its
    /// `detail` gains `job_id`.
    pub audit: Option<NewAudit>,
    /// The job becomes the schedule's probe (`resume --probe`).
    pub probe: bool,
}

impl FireParams {
    /// A run outside the cadence (`run`, `run --force`, `resume --probe`):
    /// no condition on `next_fire_at`, which stays as it is.
    pub fn manual(schedule: &str, nominal: Timestamp, job: NewJob, outcome: FiringOutcome) -> Self {
        FireParams {
            schedule: schedule.to_string(),
            expected_next: None,
            nominal,
            next: NextFire::Keep,
            job: Some(job),
            overlap: OverlapPolicy::Allow,
            outcome,
            skipped_until: None,
            require_capacity: outcome != FiringOutcome::Forced,
            audit: None,
            probe: outcome == FiringOutcome::Probe,
        }
    }
}

/// A deferral of a schedule's due fire time under pressure (see
/// [`Store::defer_firing`](crate::Store::defer_firing)).
#[derive(Debug, Clone, PartialEq)]
pub struct DeferParams {
    pub schedule: String,
    /// The `next_fire_at` the engine read (the nominal time deferred).
    pub expected_next: Timestamp,
    /// Defer by this much from the store's now (`pressure_delay`)…
    pub delay: std::time::Duration,
    /// …but never past `nominal + max_defer` (`pressure_max_defer`).
    pub max_defer: std::time::Duration,
    /// Why, for the ledger row (the active sources).
    pub detail: String,
}

/// What a deferral did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferResult {
    /// Deferred until this instant; `deferrals` counts them for this firing.
    Deferred { until: Timestamp, deferrals: i32 },
    /// The fire time has been deferred as far as it may be, or no pressure
    /// is active any more: fire it now.
    FireNow,
    /// Another firer handled it (the stored `next_fire_at` moved on).
    LostRace,
}

/// The instant a deferral moves a fire time to: `now + delay`, capped at
/// `nominal + max_defer`; `None` when that cap has been reached.
pub fn defer_until(
    now: Timestamp,
    nominal: Timestamp,
    delay: std::time::Duration,
    max_defer: std::time::Duration,
) -> Option<Timestamp> {
    use reeve_core::time::duration_millis;
    let latest = nominal.0.saturating_add(duration_millis(max_defer));
    let until = now.0.saturating_add(duration_millis(delay)).min(latest);
    (until > now.0).then_some(Timestamp(until))
}

/// What a firing did.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one value per firing; callers match on it at once, boxing buys nothing"
)]
pub enum FireResult {
    /// A job was inserted.
    Fired(Job),
    /// No job: the ledger recorded this outcome.
    Skipped(FiringOutcome),
    /// `queue_one`: a firing of this schedule was still waiting; the ledger
    /// points at it.
    Coalesced { into: JobId },
    /// Another firer handled this fire time first (the stored `next_fire_at`
    /// differs from the expected one, the schedule is gone, or the ledger
    /// already holds this nominal time); this call created no job.
    LostRace,
    /// A manual run found a cap full; nothing changed.
    CapacityFull(CapacityFull),
}

/// One row of the firing ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiringRecord {
    pub id: i64,
    pub schedule: String,
    pub nominal_at: Timestamp,
    /// The last nominal time of a skipped range held in this one row.
    pub nominal_until: Option<Timestamp>,
    pub outcome: String,
    pub job_id: Option<JobId>,
    /// When the row was written (the store's clock): for a fired one, when
    /// its job was created.
    pub at: Timestamp,
    pub detail: Option<String>,
    /// The first claim of the firing's job.
    pub claimed_at: Option<Timestamp>,
    /// From the job being available (nominal time, or jitter) to its first
    /// claim: the time it waited for a slot.
    pub slot_wait_ms: Option<i64>,
    /// Running jobs (this one included) right after that claim.
    pub running_at_claim: Option<i64>,
    /// When the job reached its terminal state, and how.
    pub finished_at: Option<Timestamp>,
    pub state: Option<String>,
    pub failure_reason: Option<String>,
    /// Of the last attempt.
    pub duration_ms: Option<i64>,
    pub turns: Option<i64>,
    pub max_turns: Option<i64>,
    /// Pressure deferrals of this fire time before it fired.
    pub deferrals: i32,
}

/// Which ledger rows to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FiringQuery {
    /// Newest first, at most this many.
    pub limit: u32,
    /// Only rows whose nominal time (or range start) is at or before this.
    pub at_or_before: Option<Timestamp>,
}

impl FiringQuery {
    pub fn latest(limit: u32) -> Self {
        FiringQuery {
            limit,
            at_or_before: None,
        }
    }
}

/// Job states in which a schedule's firing counts as live (overlap).
pub const LIVE_STATES_SQL: &str = "('scheduled', 'available', 'running', 'retryable')";

/// What a firing does about the schedule's live jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlapDecision {
    /// Insert the job, after requesting the cancel of these running jobs.
    Insert { cancel: Vec<JobId> },
    /// Record `skipped_overlap`, insert nothing.
    Skip,
    /// Record `coalesced` into this waiting job, insert nothing.
    Coalesce(JobId),
}

/// Applies `policy` to the schedule's live jobs (`(id, state)`, oldest
/// first): the one decision both backends make.
pub fn overlap_decision(policy: OverlapPolicy, live: &[(JobId, JobState)]) -> OverlapDecision {
    match policy {
        OverlapPolicy::Allow => OverlapDecision::Insert { cancel: Vec::new() },
        OverlapPolicy::Skip if live.is_empty() => OverlapDecision::Insert { cancel: Vec::new() },
        OverlapPolicy::Skip => OverlapDecision::Skip,
        OverlapPolicy::QueueOne => live
            .iter()
            .find(|(_, s)| *s != JobState::Running)
            .map_or(OverlapDecision::Insert { cancel: Vec::new() }, |(id, _)| {
                OverlapDecision::Coalesce(*id)
            }),
        OverlapPolicy::CancelPrevious => OverlapDecision::Insert {
            cancel: live
                .iter()
                .filter(|(_, s)| *s == JobState::Running)
                .map(|(id, _)| *id)
                .collect(),
        },
    }
}

/// The job of a firing at `nominal`: its schedule and nominal time set, and
/// an idempotency key of [`firing_key`] form for `requested` moved to
/// `nominal` (a manual run moved off a nominal time the ledger holds).
pub fn firing_job(
    mut nj: NewJob,
    schedule: &str,
    requested: Timestamp,
    nominal: Timestamp,
) -> NewJob {
    if requested != nominal
        && nj.idempotency_key.as_deref() == Some(&firing_key(schedule, requested))
    {
        nj.idempotency_key = Some(firing_key(schedule, nominal));
    }
    nj.schedule = Some(schedule.to_string());
    nj.nominal_at = Some(nominal);
    nj
}

/// The outcome of a record-only range of skipped fire times: a paused
/// schedule's (recorded when it resumes), else the misfire policy's.
pub fn skipped_range_outcome(asked: FiringOutcome) -> FiringOutcome {
    match asked {
        FiringOutcome::SkippedPaused => FiringOutcome::SkippedPaused,
        _ => FiringOutcome::SkippedMisfire,
    }
}

/// A forced run's audit record with the job it created.
pub fn audit_for_job(mut audit: NewAudit, job: &Job) -> NewAudit {
    if let serde_json::Value::Object(map) = &mut audit.detail {
        map.insert("job_id".into(), job.id.into());
    } else {
        audit.detail = serde_json::json!({ "job_id": job.id, "detail": audit.detail });
    }
    audit
}

/// Prints the logfmt line of a committed ledger row (target
/// `reeve::firing`).
pub fn emit_firing(schedule: &str, nominal: Timestamp, outcome: FiringOutcome, job: Option<JobId>) {
    tracing::info!(
        target: "reeve::firing",
        schedule,
        nominal = %nominal,
        outcome = outcome.as_str(),
        job,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_decisions() {
        use JobState::*;
        let none: [(JobId, JobState); 0] = [];
        let running = [(1, Running)];
        let both = [(1, Running), (2, Available), (3, Retryable)];
        let insert = OverlapDecision::Insert { cancel: Vec::new() };
        for p in OverlapPolicy::ALL {
            let expected = if p == OverlapPolicy::CancelPrevious {
                OverlapDecision::Insert { cancel: vec![] }
            } else {
                insert.clone()
            };
            assert_eq!(overlap_decision(p, &none), expected, "{p}: nothing live");
        }
        assert_eq!(overlap_decision(OverlapPolicy::Allow, &both), insert);
        assert_eq!(
            overlap_decision(OverlapPolicy::Skip, &running),
            OverlapDecision::Skip
        );
        assert_eq!(overlap_decision(OverlapPolicy::QueueOne, &running), insert);
        assert_eq!(
            overlap_decision(OverlapPolicy::QueueOne, &both),
            OverlapDecision::Coalesce(2),
            "the oldest waiting firing"
        );
        assert_eq!(
            overlap_decision(OverlapPolicy::CancelPrevious, &both),
            OverlapDecision::Insert { cancel: vec![1] },
            "only running firings are cancelled"
        );
    }

    #[test]
    fn firing_jobs_carry_their_firing() {
        let t = Timestamp(1_000);
        let mut nj = NewJob::new("q", "k");
        nj.idempotency_key = Some(firing_key("s", t));
        let same = firing_job(nj.clone(), "s", t, t);
        assert_eq!(
            (same.schedule.as_deref(), same.nominal_at),
            (Some("s"), Some(t))
        );
        assert_eq!(same.idempotency_key, Some(firing_key("s", t)));
        let moved = firing_job(nj, "s", t, Timestamp(2_000));
        assert_eq!(moved.nominal_at, Some(Timestamp(2_000)));
        assert_eq!(
            moved.idempotency_key,
            Some(firing_key("s", Timestamp(2_000)))
        );
        let mut custom = NewJob::new("q", "k");
        custom.idempotency_key = Some("mine".into());
        assert_eq!(
            firing_job(custom, "s", t, Timestamp(2_000))
                .idempotency_key
                .as_deref(),
            Some("mine"),
            "a key of the caller's own is kept"
        );
    }

    #[test]
    fn outcome_names_round_trip() {
        for o in FiringOutcome::ALL {
            assert_eq!(o.as_str().parse::<FiringOutcome>(), Ok(o));
            assert_eq!(
                serde_json::to_string(&o).unwrap(),
                format!("\"{}\"", o.as_str())
            );
        }
        assert!("nope".parse::<FiringOutcome>().is_err());
    }
}
