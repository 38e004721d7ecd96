//! The backend-neutral half of every transition: what a new job's row is,
//! what job a success enqueues ([`follow_up`], SPEC §10), whether a
//! write-back is fenced out, where a failed or reaped run goes, which jobs a
//! claim takes given the room under the caps, and the events a transition
//! records. Backends do the I/O, one transaction per method, and
//! call these so that SQLite and PostgreSQL decide identically.

use std::collections::HashMap;

use reeve_core::job::Availability;
use reeve_core::time::duration_millis;
use reeve_core::{
    Actor, Event, EventKind, FailureReason, Job, JobId, JobState, NewJob, Page, Timestamp,
};

use crate::{StoreConfig, StoreError};

/// An event recorded inside a transaction; its log line is printed after the
/// commit ([`emit_committed`]).
#[derive(Debug, Clone)]
pub struct PendingEvent {
    pub job_id: JobId,
    pub event: EventKind,
    pub epoch: i64,
    pub attempt: i32,
    pub worker: Option<String>,
    pub reason: Option<String>,
    pub by: Actor,
    pub detail: Option<String>,
    pub queue: String,
    pub kind: String,
}

impl PendingEvent {
    /// The event of `job` as it is after the transition.
    pub fn for_job(job: &Job, event: EventKind, by: Actor) -> Self {
        PendingEvent {
            job_id: job.id,
            event,
            epoch: job.epoch,
            attempt: job.attempt,
            worker: job.claimed_by.clone(),
            reason: None,
            by,
            detail: None,
            queue: job.queue.clone(),
            kind: job.kind.clone(),
        }
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn detail(mut self, detail: Option<String>) -> Self {
        self.detail = detail;
        self
    }
}

/// Prints the log lines of committed events (nothing when event lines are
/// not logged).
pub fn emit_committed(events: &[PendingEvent], at: i64) {
    if !crate::log::enabled() {
        return;
    }
    for e in events {
        let event = Event {
            id: 0,
            job_id: e.job_id,
            at: Timestamp(at),
            event: e.event,
            epoch: e.epoch,
            attempt: e.attempt,
            worker: e.worker.clone(),
            reason: e.reason.clone(),
            by: e.by,
            detail: e.detail.clone(),
        };
        crate::log::emit(&event, &e.queue, &e.kind);
    }
}

/// The row a new job becomes at `now` (the store's clock), before it has an
/// id: defaults applied, a delay resolved, `scheduled` if not yet due.
pub fn materialize(config: &StoreConfig, nj: NewJob, now: i64) -> Job {
    let available_at = match nj.availability {
        Availability::Now => now,
        Availability::At(t) => t.0,
        Availability::After(d) => now.saturating_add(duration_millis(d)),
    };
    Job {
        id: 0,
        state: if available_at > now {
            JobState::Scheduled
        } else {
            JobState::Available
        },
        queue: nj.queue,
        kind: nj.kind,
        payload: nj.payload,
        priority: nj.priority,
        attempt: 0,
        max_attempts: nj.max_attempts,
        epoch: 0,
        claimed_by: None,
        claimed_at: None,
        heartbeat_at: None,
        lease_expires_at: None,
        heartbeats: true,
        heartbeat_count: 0,
        available_at: Timestamp(available_at),
        max_run_duration: nj
            .max_run_duration
            .unwrap_or(config.default_max_run_duration),
        heartbeat_timeout: nj
            .heartbeat_timeout
            .unwrap_or(config.default_heartbeat_timeout),
        failure_reason: None,
        last_error: None,
        retry_on: nj.retry_on,
        idempotency_key: nj.idempotency_key.unwrap_or_default(),
        unique_key: nj.unique_key,
        command: nj.command,
        max_turns: nj.max_turns,
        turns: 0,
        progress: None,
        result: None,
        cancel_requested_at: None,
        created_at: Timestamp(now),
        finished_at: None,
        schedule: nj.schedule,
        nominal_at: nj.nominal_at,
        on_success: nj.on_success,
        progress_at: None,
        stalled_at: None,
        escalated_at: None,
        requires: nj.requires,
    }
}

/// The job that `parent`'s success enqueues, if it names one (SPEC §10):
/// in the parent's queue unless the follow-up names its own, with payload
/// `{"parent": ID, "result": R, "payload": P}` (`null` for an absent result
/// or payload), its own requirements (not the parent's), and unique key
/// `followup:<parent id>`, so that one parent never has two live follow-ups.
pub fn follow_up(parent: &Job) -> Option<NewJob> {
    let then = parent.on_success.as_ref()?;
    let mut nj = NewJob::new(
        then.queue.clone().unwrap_or_else(|| parent.queue.clone()),
        then.kind.clone(),
    );
    nj.payload = serde_json::json!({
        "parent": parent.id,
        "result": parent.result,
        "payload": then.payload,
    });
    if let Some(priority) = then.priority {
        nj.priority = priority;
    }
    if let Some(max_attempts) = then.max_attempts {
        nj.max_attempts = max_attempts;
    }
    nj.requires = then.requires.clone();
    nj.unique_key = Some(format!("followup:{}", parent.id));
    Some(nj)
}

/// The job once inserted as `id` (its idempotency key derives from the id
/// when none was given).
pub fn with_id(mut job: Job, id: JobId) -> Job {
    job.id = id;
    if job.idempotency_key.is_empty() {
        job.idempotency_key = id.to_string();
    }
    job
}

pub fn enqueued_event(job: &Job) -> PendingEvent {
    PendingEvent::for_job(job, EventKind::Enqueued, Actor::Client)
        .detail(Some(job.state.as_str().to_string()))
}

/// Why a fenced write to `job` does not apply for `epoch`, if it does not.
pub fn fence(job: &Job, epoch: i64) -> Option<StoreError> {
    if reeve_core::fault::active(reeve_core::fault::SKIP_FENCING) {
        return None; // test builds only: the chaos harness's planted bug
    }
    if job.epoch != epoch {
        Some(StoreError::StaleEpoch {
            expected: job.epoch,
            actual: epoch,
        })
    } else if job.state != JobState::Running {
        Some(StoreError::NotRunning { state: job.state })
    } else {
        None
    }
}

/// Where a failed or reaped run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureTransition {
    pub state: JobState,
    pub reason: FailureReason,
    pub available_at: i64,
    pub event: EventKind,
}

/// A run that fails for `reason` at `now`: cancelled if a cancel was
/// requested; retried after backoff while attempts are left and the job
/// retries that reason; failed otherwise.
pub fn failure_transition(
    config: &StoreConfig,
    job: &Job,
    reason: FailureReason,
    now: i64,
) -> FailureTransition {
    if job.cancel_requested_at.is_some() {
        return FailureTransition {
            state: JobState::Cancelled,
            reason: FailureReason::Cancelled,
            available_at: job.available_at.0,
            event: EventKind::Cancelled,
        };
    }
    if job.attempt < job.max_attempts && job.retries_reason(reason) {
        let delay = config.retry.delay_after(job.attempt);
        FailureTransition {
            state: JobState::Retryable,
            reason,
            available_at: now.saturating_add(duration_millis(delay)),
            event: EventKind::Retryable,
        }
    } else {
        FailureTransition {
            state: JobState::Failed,
            reason,
            available_at: job.available_at.0,
            event: EventKind::Failed,
        }
    }
}

/// The event a failure write-back recorded, from the state it reached.
pub fn failure_event(state: JobState) -> EventKind {
    match state {
        JobState::Retryable => EventKind::Retryable,
        JobState::Cancelled => EventKind::Cancelled,
        _ => EventKind::Failed,
    }
}

/// Why the reaper ends an expired run at `now`: `timeout` once the run is
/// past its `max_run_duration`, else `heartbeat_lost`.
pub fn reap_reason(job: &Job, now: i64) -> FailureReason {
    let hard_cap = job
        .claimed_at
        .map(|c| c.0.saturating_add(duration_millis(job.max_run_duration)))
        .unwrap_or(i64::MAX);
    if now >= hard_cap {
        FailureReason::Timeout
    } else {
        FailureReason::HeartbeatLost
    }
}

/// The error text a reaped run is left with.
pub fn reap_message(job: &Job, reason: FailureReason) -> &'static str {
    match (job.cancel_requested_at.is_some(), reason) {
        (true, _) => "cancelled: the executor did not stop within the cancel grace",
        (false, FailureReason::Timeout) => "run passed its max_run_duration",
        _ => "no heartbeat within heartbeat_timeout",
    }
}

/// Longest error text kept on a job.
pub const MAX_ERROR_LEN: usize = 4096;

/// `s` cut to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Which candidates a claim takes: `candidates` are the heads of each queue
/// with room, as `(priority, available_at, id, queue)`; they are taken in
/// claim order while the claim wants more (`take`) and their queue has room.
pub fn pick_claims<P: Ord + Copy>(
    mut candidates: Vec<(P, i64, i64, String)>,
    mut room: HashMap<String, u64>,
    take: u64,
) -> Vec<i64> {
    candidates.sort_unstable();
    let mut picked = Vec::new();
    for (_, _, id, queue) in candidates {
        if picked.len() as u64 >= take {
            break;
        }
        if let Some(free) = room.get_mut(&queue).filter(|free| **free > 0) {
            *free -= 1;
            picked.push(id);
        }
    }
    picked
}

/// A listing page from up to `limit + 1` rows: the extra row only says that
/// there is a next page.
pub fn page(mut items: Vec<Job>, limit: u32) -> Page<Job> {
    let next_before_id = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|j| j.id)
    } else {
        None
    };
    Page {
        items,
        next_before_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_follow_order_and_room() {
        let c = |p: i32, id: i64, q: &str| (p, 0i64, id, q.to_string());
        let room = HashMap::from([("a".to_string(), 1), ("b".to_string(), 5)]);
        let picked = pick_claims(
            vec![c(1, 3, "b"), c(0, 1, "a"), c(0, 2, "a"), c(2, 4, "b")],
            room.clone(),
            10,
        );
        assert_eq!(picked, [1, 3, 4], "a has room for one");
        assert_eq!(
            pick_claims(vec![c(1, 3, "b"), c(0, 1, "a")], room, 1),
            [1],
            "take bounds the claim"
        );
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
