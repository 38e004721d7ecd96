//! The event history and log contract (SPEC §11).
//!
//! Every state transition appends one [`Event`] to the job's history, in the
//! same transaction as the transition, and prints one logfmt line
//! (`event=claimed job=… queue=… kind=… epoch=… attempt=… worker=… by=…`).
//! `docs/events.md` documents each event and field; the names here are a
//! contract that users' scripts rely on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::job::{JobId, JobState};
use crate::time::Timestamp;

/// What happened to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Inserted (state `available` or `scheduled`).
    Enqueued,
    /// `scheduled` or `retryable` → `available`: its time came.
    Available,
    /// `available` → `running`; carries the new epoch and the worker.
    Claimed,
    /// `running` → `succeeded`.
    Succeeded,
    /// `running` → `retryable`: failed, reaped or released with attempts left.
    Retryable,
    /// `running` → `failed`: no attempts left or a final reason.
    Failed,
    /// An operator asked to cancel a running job; its executor is being
    /// stopped. Not a state change.
    CancelRequested,
    /// → `cancelled`.
    Cancelled,
    /// `failed` / `cancelled` → `available` by an operator.
    Retried,
    /// A running run made no progress for `stall_after`; the supervisor
    /// mailed it (SPEC §10). Not a state change.
    Stalled,
    /// A stalled run stayed without progress for `escalate_after` more.
    /// Not a state change.
    Escalated,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::Enqueued,
        EventKind::Available,
        EventKind::Claimed,
        EventKind::Succeeded,
        EventKind::Retryable,
        EventKind::Failed,
        EventKind::CancelRequested,
        EventKind::Cancelled,
        EventKind::Retried,
        EventKind::Stalled,
        EventKind::Escalated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Enqueued => "enqueued",
            EventKind::Available => "available",
            EventKind::Claimed => "claimed",
            EventKind::Succeeded => "succeeded",
            EventKind::Retryable => "retryable",
            EventKind::Failed => "failed",
            EventKind::CancelRequested => "cancel_requested",
            EventKind::Cancelled => "cancelled",
            EventKind::Retried => "retried",
            EventKind::Stalled => "stalled",
            EventKind::Escalated => "escalated",
        }
    }

    /// The state a job is in right after this event (`None` for events that
    /// are not transitions).
    pub fn resulting_state(self) -> Option<JobState> {
        Some(match self {
            EventKind::Enqueued => return None, // scheduled or available
            EventKind::Available | EventKind::Retried => JobState::Available,
            EventKind::Claimed => JobState::Running,
            EventKind::Succeeded => JobState::Succeeded,
            EventKind::Retryable => JobState::Retryable,
            EventKind::Failed => JobState::Failed,
            EventKind::Cancelled => JobState::Cancelled,
            EventKind::CancelRequested | EventKind::Stalled | EventKind::Escalated => {
                return None;
            }
        })
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event {s:?}"))
    }
}

/// Who caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// The API client that enqueued.
    Client,
    /// The executor holding the run (write-backs, claims).
    Executor,
    /// The reaper, ending a run whose lease passed.
    Reaper,
    /// The engine's own maintenance (promoting due jobs).
    Engine,
    /// An operator (cancel, retry).
    Operator,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Client => "client",
            Actor::Executor => "executor",
            Actor::Reaper => "reaper",
            Actor::Engine => "engine",
            Actor::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Actor> {
        [
            Actor::Client,
            Actor::Executor,
            Actor::Reaper,
            Actor::Engine,
            Actor::Operator,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of a job's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the store's global event order.
    pub id: i64,
    pub job_id: JobId,
    pub at: Timestamp,
    pub event: EventKind,
    /// The job's epoch after the event.
    pub epoch: i64,
    pub attempt: i32,
    /// The run's owner (the worker that claimed), when there is one.
    pub worker: Option<String>,
    /// Failure reason, or why a cancel or retry happened.
    pub reason: Option<String>,
    pub by: Actor,
    /// A short detail: the error text, the state enqueued into, …
    pub detail: Option<String>,
}
