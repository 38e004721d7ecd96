//! The worker protocol's JSON, as the daemon's API writes and reads it
//! (`docs/api.md`, "Remote workers"; `crates/reeve-api/src/workers.rs`).
//!
//! **Invariants.** Request types serialize to exactly the fields the API
//! accepts (it rejects unknown ones), leaving out what is not set; answer
//! types read the API's answers field for field. Jobs, registrations,
//! checkpoints and mail are the very types the API serializes
//! ([`Job`], [`WorkerRecord`], [`Checkpoint`], [`Mail`]).

use reeve_core::{FailureReason, Job, JobId};
use reeve_store::WorkerRecord;
use serde::{Deserialize, Serialize};

/// `POST /v1/workers/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registration {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Kinds this worker runs (at least one).
    pub kinds: Vec<String>,
    /// Queues it claims from; empty = every queue its token allows.
    pub queues: Vec<String>,
    /// `key=value` labels, for jobs pinned to labelled workers.
    pub labels: Vec<String>,
    pub slots: u32,
    /// Whether it heartbeats its runs (then a silent run is reaped after its
    /// `heartbeat_timeout`; otherwise only `max_run_duration` bounds it).
    pub heartbeats: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Registered {
    /// The registration, with its fresh `id`.
    pub worker: WorkerRecord,
    /// How often the daemon suggests heartbeating (a third of its default
    /// heartbeat timeout).
    pub heartbeat_interval_ms: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct ClaimRequest {
    pub(crate) limit: u32,
    pub(crate) wait_ms: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ClaimResponse {
    pub(crate) runs: Vec<ClaimedRun>,
}

/// One run a claim handed to this worker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClaimedRun {
    pub job: Job,
    /// The job token of this claim: it authorizes this run's own writes
    /// (heartbeat, complete, fail, checkpoint, mail) and nothing else.
    pub token: String,
    /// Whether the job has a checkpoint to resume from.
    pub checkpoint: bool,
}

/// One run's part of a worker heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunBeat {
    pub job: JobId,
    pub epoch: i64,
    /// Turns used so far (absolute, not a delta).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turns: Option<i64>,
    /// A progress note (at most 4096 bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct HeartbeatRequest<'a> {
    pub(crate) runs: &'a [RunBeat],
}

#[derive(Debug, Deserialize)]
pub(crate) struct HeartbeatResponse {
    pub(crate) runs: Vec<RunAnswer>,
}

/// What the daemon answered for one heartbeated run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The lease was extended.
    Ok,
    /// An operator cancelled: stop and fail with `cancelled`.
    CancelRequested,
    /// The reported turns passed `max_turns`; the daemon already failed
    /// the run: stop and write nothing.
    TurnLimitExceeded,
    /// The run is no longer this worker's: stop at once, write nothing.
    LeaseLost,
}

/// The daemon's answer for one run of a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RunAnswer {
    pub job: JobId,
    pub status: RunStatus,
    /// With `lease_lost`: why (the store's refusal).
    #[serde(default)]
    pub reason: Option<String>,
    /// The lease left, by the daemon's clock (not with `lease_lost`).
    #[serde(default)]
    pub lease_remaining_ms: Option<i64>,
    /// Unread messages in the job's inbox.
    #[serde(default)]
    pub unread_mail: Option<u64>,
    #[serde(default)]
    pub turns: Option<i64>,
    #[serde(default)]
    pub max_turns: Option<i64>,
}

/// `POST /v1/jobs/{id}/complete`, fenced on `epoch`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Complete {
    pub epoch: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The tail of the run's output, kept with the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// `POST /v1/jobs/{id}/fail`, fenced on `epoch`, with a reason from the
/// closed set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fail {
    pub epoch: i64,
    pub reason: FailureReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// The answer to a deregistration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Deregistered {
    pub worker: WorkerRecord,
    /// The runs the worker still held, released for retry
    /// (`worker_shutdown`).
    pub released: Vec<JobId>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MailList {
    pub(crate) mail: Vec<reeve_store::Mail>,
}
