//! Jobs and the job state machine (SPEC §2), and the wire shape of an
//! enqueue with its validation, including a job's follow-up ([`FollowUp`],
//! SPEC §10).
//!
//! [`JobState::can_transition`] is the whole transition table; backends
//! implement each transition as one atomic statement or transaction, and the
//! property tests in `reeve-store`'s conformance suite check that no other
//! transition is ever observed.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::failure::FailureReason;
use crate::placement;
use crate::time::{Timestamp, human_duration};
use crate::validate::{self, InputError};

pub type JobId = i64;

/// Default `max_run_duration` (SPEC §4).
pub const DEFAULT_MAX_RUN_DURATION: Duration = Duration::from_secs(20 * 60);
/// Default `heartbeat_timeout` (SPEC §4).
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(90);
/// Default `max_attempts` (SPEC §5).
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;
/// Default payload size limit (SPEC §12).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Queue used when an enqueue names none.
pub const DEFAULT_QUEUE: &str = "default";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its `available_at` (enqueued with a delay or run-at).
    Scheduled,
    /// Ready to be claimed.
    Available,
    /// Claimed by an executor under a lease.
    Running,
    /// Completed by the executor holding the current epoch. Terminal.
    Succeeded,
    /// Failed with attempts left; waits for its backoff to pass.
    Retryable,
    /// Failed with no attempts left or a final reason. Terminal, but an
    /// operator may retry it.
    Failed,
    /// Cancelled by an operator. Terminal, but an operator may retry it.
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Available,
        JobState::Running,
        JobState::Succeeded,
        JobState::Retryable,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Retryable => "retryable",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// The transition table of SPEC §2. Nothing else may happen to a job.
    pub fn can_transition(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Scheduled | Retryable, Available)
                | (Available, Running)
                | (Running, Succeeded | Retryable | Failed)
                | (Scheduled | Available | Running | Retryable, Cancelled)
                | (Failed | Cancelled, Available)
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown job state {s:?}; expected one of scheduled, available, running, succeeded, retryable, failed, cancelled"
                )
            })
    }
}

/// A job as stored, with its current (or last) run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub state: JobState,
    pub payload: serde_json::Value,
    pub priority: i32,
    /// Runs started so far (the current run's number while running).
    pub attempt: i32,
    pub max_attempts: i32,
    /// Fencing token: +1 at every claim. Every executor write carries it.
    pub epoch: i64,
    pub claimed_by: Option<String>,
    pub claimed_at: Option<Timestamp>,
    pub heartbeat_at: Option<Timestamp>,
    pub lease_expires_at: Option<Timestamp>,
    /// Whether the current run's executor declared that it heartbeats.
    pub heartbeats: bool,
    pub heartbeat_count: i64,
    pub available_at: Timestamp,
    #[serde(with = "human_duration")]
    pub max_run_duration: Duration,
    #[serde(with = "human_duration")]
    pub heartbeat_timeout: Duration,
    pub failure_reason: Option<FailureReason>,
    pub last_error: Option<String>,
    /// Failure reasons that are retried for this job; `None` = SPEC default.
    pub retry_on: Option<Vec<FailureReason>>,
    pub idempotency_key: String,
    pub unique_key: Option<String>,
    /// Ad-hoc command (argv) for the process executor, instead of the kind's
    /// template.
    pub command: Option<Vec<String>>,
    pub max_turns: Option<i64>,
    pub turns: i64,
    pub progress: Option<String>,
    pub result: Option<serde_json::Value>,
    pub cancel_requested_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// The schedule whose firing created this job, if any.
    #[serde(default)]
    pub schedule: Option<String>,
    /// The nominal fire time of that firing.
    #[serde(default)]
    pub nominal_at: Option<Timestamp>,
    /// The job to enqueue when this one succeeds (SPEC §10).
    #[serde(default)]
    pub on_success: Option<FollowUp>,
    /// When the current (or last) run last made progress (SPEC §10): its
    /// claim, a turn count that went up, a new progress note, a checkpoint.
    #[serde(default)]
    pub progress_at: Option<Timestamp>,
    /// When the supervisor found the run without progress for `stall_after`
    /// (and mailed it); cleared by the next progress.
    #[serde(default)]
    pub stalled_at: Option<Timestamp>,
    /// When the stall was escalated (`escalate_after` after `stalled_at`);
    /// cleared by the next progress.
    #[serde(default)]
    pub escalated_at: Option<Timestamp>,
    /// Labels a claimer must have, all of them (SPEC §6), in canonical
    /// form ([`crate::placement::requirements`]); empty = any claimer.
    #[serde(default)]
    pub requires: Vec<String>,
}

impl Job {
    /// Whether a failure for `reason` is retried for this job (attempts aside).
    pub fn retries_reason(&self, reason: FailureReason) -> bool {
        match &self.retry_on {
            Some(list) => list.contains(&reason),
            None => reason.retried_by_default(),
        }
    }
}

/// A job to enqueue when another succeeds (SPEC §10), in the same
/// transaction as the completion. It runs in the parent's queue unless it
/// names one, and its payload is `{"parent": ID, "result": R, "payload": P}`:
/// the parent's id and result, and this follow-up's own payload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowUp {
    #[serde(default)]
    pub queue: Option<String>,
    pub kind: String,
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub max_attempts: Option<i32>,
    /// Labels the follow-up's claimer must have; its own, not inherited
    /// from the parent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
}

impl FollowUp {
    /// Validates it as a job's own fields are validated (its `requires`
    /// put in canonical form); problems name the field under `prefix`
    /// (e.g. `on_success.` or `jobs[3].on_success.`).
    pub fn validate(
        mut self,
        prefix: &str,
        max_payload_bytes: usize,
    ) -> Result<FollowUp, InputError> {
        let f = |name: &str| format!("{prefix}{name}");
        if let Some(queue) = &self.queue {
            validate::name(&f("queue"), queue)?;
        }
        validate::name(&f("kind"), &self.kind)?;
        if let Some(payload) = &self.payload {
            check_payload(&f("payload"), payload, max_payload_bytes)?;
        }
        if let Some(priority) = self.priority {
            check_priority(&f("priority"), priority)?;
        }
        if let Some(max_attempts) = self.max_attempts {
            check_max_attempts(&f("max_attempts"), max_attempts)?;
        }
        self.requires = placement::requirements(&f("requires"), &self.requires)?;
        Ok(self)
    }
}

fn check_payload(
    field: &str,
    payload: &serde_json::Value,
    max_payload_bytes: usize,
) -> Result<(), InputError> {
    let payload_len = serde_json::to_vec(payload)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if payload_len > max_payload_bytes {
        return Err(InputError::new(
            field,
            format!("is {payload_len} bytes; the limit is {max_payload_bytes}"),
        ));
    }
    Ok(())
}

fn check_priority(field: &str, priority: i32) -> Result<(), InputError> {
    if !(-10_000..=10_000).contains(&priority) {
        return Err(InputError::new(field, "must be between -10000 and 10000"));
    }
    Ok(())
}

fn check_max_attempts(field: &str, max_attempts: i32) -> Result<(), InputError> {
    if !(1..=1000).contains(&max_attempts) {
        return Err(InputError::new(field, "must be between 1 and 1000"));
    }
    Ok(())
}

/// When a new job becomes claimable. Resolved by the store against its own
/// clock, so a delay means the same thing on every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Availability {
    #[default]
    Now,
    At(Timestamp),
    After(Duration),
}

/// A validated job to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub priority: i32,
    pub max_attempts: i32,
    pub unique_key: Option<String>,
    pub idempotency_key: Option<String>,
    pub max_run_duration: Option<Duration>,
    pub heartbeat_timeout: Option<Duration>,
    pub availability: Availability,
    pub command: Option<Vec<String>>,
    pub max_turns: Option<i64>,
    pub retry_on: Option<Vec<FailureReason>>,
    /// The schedule whose firing creates this job, if any.
    pub schedule: Option<String>,
    /// The nominal fire time of that firing.
    pub nominal_at: Option<Timestamp>,
    /// The job to enqueue when this one succeeds (validated).
    pub on_success: Option<FollowUp>,
    /// Labels a claimer must have (validated, canonical); empty = any.
    pub requires: Vec<String>,
}

impl NewJob {
    /// A job with every optional field at its default.
    pub fn new(queue: impl Into<String>, kind: impl Into<String>) -> Self {
        NewJob {
            queue: queue.into(),
            kind: kind.into(),
            payload: serde_json::json!({}),
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            unique_key: None,
            idempotency_key: None,
            max_run_duration: None,
            heartbeat_timeout: None,
            availability: Availability::Now,
            command: None,
            max_turns: None,
            retry_on: None,
            schedule: None,
            nominal_at: None,
            on_success: None,
            requires: Vec::new(),
        }
    }
}

/// The wire shape of an enqueue (API body, batch element, CLI). Unknown fields
/// are rejected so a typo never silently becomes a default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    #[serde(default)]
    pub queue: Option<String>,
    pub kind: String,
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub max_attempts: Option<i32>,
    #[serde(default)]
    pub unique_key: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub max_run_duration: Option<String>,
    #[serde(default)]
    pub heartbeat_timeout: Option<String>,
    #[serde(default)]
    pub delay: Option<String>,
    #[serde(default)]
    pub run_at: Option<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub max_turns: Option<i64>,
    #[serde(default)]
    pub retry_on: Option<Vec<String>>,
    #[serde(default)]
    pub on_success: Option<FollowUp>,
    /// Labels a claimer must have, each `key=value` (SPEC §6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
}

impl EnqueueRequest {
    /// Validates every field; the first problem is returned with its field
    /// name (prefixed by `prefix`, e.g. `jobs[3].`, for batches).
    pub fn validate(self, prefix: &str, max_payload_bytes: usize) -> Result<NewJob, InputError> {
        let f = |name: &str| format!("{prefix}{name}");
        let queue = self.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_string());
        validate::name(&f("queue"), &queue)?;
        validate::name(&f("kind"), &self.kind)?;
        let payload = self.payload.unwrap_or_else(|| serde_json::json!({}));
        check_payload(&f("payload"), &payload, max_payload_bytes)?;
        let priority = self.priority.unwrap_or(0);
        check_priority(&f("priority"), priority)?;
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        check_max_attempts(&f("max_attempts"), max_attempts)?;
        if let Some(k) = &self.unique_key {
            validate::key(&f("unique_key"), k)?;
        }
        if let Some(k) = &self.idempotency_key {
            validate::key(&f("idempotency_key"), k)?;
        }
        let duration = |name: &str, v: Option<String>| -> Result<Option<Duration>, InputError> {
            v.map(|s| crate::time::parse_duration(&s).map_err(|m| InputError::new(f(name), m)))
                .transpose()
        };
        let max_run_duration = duration("max_run_duration", self.max_run_duration)?;
        if max_run_duration == Some(Duration::ZERO) {
            return Err(InputError::new(
                f("max_run_duration"),
                "must be greater than zero",
            ));
        }
        let heartbeat_timeout = duration("heartbeat_timeout", self.heartbeat_timeout)?;
        if heartbeat_timeout == Some(Duration::ZERO) {
            return Err(InputError::new(
                f("heartbeat_timeout"),
                "must be greater than zero",
            ));
        }
        let delay = duration("delay", self.delay)?;
        let availability = match (delay, self.run_at) {
            (Some(_), Some(_)) => {
                return Err(InputError::new(
                    f("run_at"),
                    "give either delay or run_at, not both",
                ));
            }
            (Some(d), None) => Availability::After(d),
            (None, Some(at)) => Availability::At(
                Timestamp::parse(&at).map_err(|m| InputError::new(f("run_at"), m))?,
            ),
            (None, None) => Availability::Now,
        };
        if self
            .command
            .as_ref()
            .is_some_and(|cmd| cmd.first().is_none_or(String::is_empty))
        {
            return Err(InputError::new(f("command"), "must name a program"));
        }
        if self.max_turns.is_some_and(|t| t < 1) {
            return Err(InputError::new(f("max_turns"), "must be at least 1"));
        }
        let retry_on = self
            .retry_on
            .map(|list| {
                list.iter()
                    .map(|s| s.parse::<FailureReason>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|m| InputError::new(f("retry_on"), m))
            })
            .transpose()?;
        let on_success = self
            .on_success
            .map(|then| then.validate(&f("on_success."), max_payload_bytes))
            .transpose()?;
        let requires = placement::requirements(&f("requires"), &self.requires)?;
        Ok(NewJob {
            queue,
            kind: self.kind,
            payload,
            priority,
            max_attempts,
            unique_key: self.unique_key,
            idempotency_key: self.idempotency_key,
            max_run_duration,
            heartbeat_timeout,
            availability,
            command: self.command,
            max_turns: self.max_turns,
            retry_on,
            schedule: None,
            nominal_at: None,
            on_success,
            requires,
        })
    }
}

/// Which jobs to list. Paging is by id (keyset), newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub queue: Option<String>,
    pub kind: Option<String>,
    /// Only the firings of this schedule.
    pub schedule: Option<String>,
    /// Only jobs with an id below this one (the previous page's last id).
    pub before_id: Option<JobId>,
    pub limit: u32,
}

/// One page of a listing and the cursor for the next.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_before_id: Option<JobId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_table_is_exactly_the_spec() {
        use JobState::*;
        let allowed = [
            (Scheduled, Available),
            (Retryable, Available),
            (Available, Running),
            (Running, Succeeded),
            (Running, Retryable),
            (Running, Failed),
            (Scheduled, Cancelled),
            (Available, Cancelled),
            (Running, Cancelled),
            (Retryable, Cancelled),
            (Failed, Available),
            (Cancelled, Available),
        ];
        for from in JobState::ALL {
            for to in JobState::ALL {
                assert_eq!(
                    from.can_transition(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn enqueue_validation_names_the_field() {
        let bad = |req: EnqueueRequest| req.validate("", 1024).unwrap_err().field;
        let base = || EnqueueRequest {
            kind: "echo".into(),
            ..Default::default()
        };
        assert_eq!(
            bad(EnqueueRequest {
                max_run_duration: Some("-5s".into()),
                ..base()
            }),
            "max_run_duration"
        );
        assert_eq!(
            bad(EnqueueRequest {
                heartbeat_timeout: Some("fast".into()),
                ..base()
            }),
            "heartbeat_timeout"
        );
        assert_eq!(
            bad(EnqueueRequest {
                payload: Some(serde_json::json!("x".repeat(2000))),
                ..base()
            }),
            "payload"
        );
        assert_eq!(
            bad(EnqueueRequest {
                max_attempts: Some(0),
                ..base()
            }),
            "max_attempts"
        );
        assert_eq!(
            bad(EnqueueRequest {
                queue: Some("a b".into()),
                ..base()
            }),
            "queue"
        );
        assert_eq!(
            bad(EnqueueRequest {
                retry_on: Some(vec!["nope".into()]),
                ..base()
            }),
            "retry_on"
        );
        assert_eq!(
            bad(EnqueueRequest {
                delay: Some("1s".into()),
                run_at: Some("2026-01-01T00:00:00Z".into()),
                ..base()
            }),
            "run_at"
        );
        let ok = base().validate("", 1024).unwrap();
        assert_eq!(ok.queue, DEFAULT_QUEUE);
        assert_eq!(ok.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(ok.on_success, None);
    }

    #[test]
    fn follow_up_validation_names_the_field() {
        let then = || FollowUp {
            kind: "review".into(),
            ..Default::default()
        };
        let with = |on_success: FollowUp| EnqueueRequest {
            kind: "echo".into(),
            on_success: Some(on_success),
            ..Default::default()
        };
        let bad = |req: EnqueueRequest, prefix: &str| req.validate(prefix, 1024).unwrap_err().field;
        assert_eq!(
            bad(
                with(FollowUp {
                    kind: "no spaces".into(),
                    ..then()
                }),
                ""
            ),
            "on_success.kind"
        );
        assert_eq!(
            bad(
                with(FollowUp {
                    queue: Some(String::new()),
                    ..then()
                }),
                "jobs[2]."
            ),
            "jobs[2].on_success.queue"
        );
        assert_eq!(
            bad(
                with(FollowUp {
                    payload: Some(serde_json::json!("x".repeat(2000))),
                    ..then()
                }),
                ""
            ),
            "on_success.payload"
        );
        assert_eq!(
            bad(
                with(FollowUp {
                    priority: Some(20_000),
                    ..then()
                }),
                ""
            ),
            "on_success.priority"
        );
        assert_eq!(
            bad(
                with(FollowUp {
                    max_attempts: Some(0),
                    ..then()
                }),
                ""
            ),
            "on_success.max_attempts"
        );
        let ok = with(FollowUp {
            queue: Some("merge".into()),
            ..then()
        })
        .validate("", 1024)
        .unwrap();
        assert_eq!(
            ok.on_success.map(|t| (t.queue, t.kind)),
            Some((Some("merge".into()), "review".into()))
        );
    }

    #[test]
    fn requirements_are_validated_by_index_and_kept_canonical() {
        let with = |requires: &[&str]| EnqueueRequest {
            kind: "watch".into(),
            requires: requires.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            with(&["no-equals"]).validate("", 1024).unwrap_err().field,
            "requires[0]"
        );
        assert_eq!(
            with(&["device=a", "gpu="])
                .validate("jobs[4].", 1024)
                .unwrap_err()
                .field,
            "jobs[4].requires[1]"
        );
        let ok = with(&["gpu=1", "device=a", "device=a"])
            .validate("", 1024)
            .unwrap();
        assert_eq!(ok.requires, ["device=a", "gpu=1"]);
        assert!(with(&[]).validate("", 1024).unwrap().requires.is_empty());
        let then = EnqueueRequest {
            on_success: Some(FollowUp {
                kind: "review".into(),
                requires: vec!["device".into()],
                ..Default::default()
            }),
            ..with(&[])
        };
        assert_eq!(
            then.validate("", 1024).unwrap_err().field,
            "on_success.requires[0]"
        );
    }

    #[test]
    fn unknown_enqueue_fields_are_rejected() {
        let err = serde_json::from_str::<EnqueueRequest>(r#"{"kind":"x","prio":3}"#).unwrap_err();
        assert!(err.to_string().contains("prio"), "{err}");
        let err = serde_json::from_str::<EnqueueRequest>(
            r#"{"kind":"x","on_success":{"kind":"y","delay":"5s"}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("delay"), "{err}");
    }
}
