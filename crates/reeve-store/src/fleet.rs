//! The fleet (SPEC §6, §10): remote workers, checkpoints and mail — the
//! types of the [`Store`](crate::Store) methods that keep them.
//!
//! **What this module owns.** [`WorkerRecord`] is one registration of a
//! worker process: a fresh id at every registration (a reused host name
//! never makes a new process look like an old one), what it claims (kinds,
//! queues, labels), its slots, whether it heartbeats, and when it was last
//! seen. [`Checkpoint`] is the latest opaque state a run saved for its job;
//! [`Mail`] is a message to a job's runs.
//!
//! **Invariants** (kept by every backend, checked by the conformance suite):
//! - Saving a checkpoint is fenced like every executor write: it applies
//!   only while the job is `running` with that epoch, else it changes
//!   nothing and answers `StaleEpoch` / `NotRunning`. A job keeps one
//!   checkpoint, the latest; it survives retries (the next attempt reads it)
//!   and goes with the job when the job is pruned.
//! - Mail belongs to the job, not to a run: it survives retries; reading
//!   marks what was read, once.
//! - A deregistered worker stays listed (for the fleet view) but can no
//!   longer be touched. A registration silent past the staleness bound is
//!   *stale*; one neither deregistered nor stale is *live*
//!   ([`WorkerRecord::is_live`]), which is what a pinned job waits for.

use std::time::Duration;

use reeve_core::{JobId, Timestamp};
use serde::{Deserialize, Serialize};

/// Largest checkpoint accepted by default (SPEC: bounded, 1 MiB).
pub const DEFAULT_MAX_CHECKPOINT_BYTES: usize = 1024 * 1024;

/// A fresh worker id: `w-` and 16 random hex digits.
pub fn new_worker_id() -> String {
    use rand::RngExt;
    format!("w-{:016x}", rand::rng().random::<u64>())
}

/// A list of names as the JSON text the backends store.
pub fn list_json(v: &[String]) -> String {
    serde_json::to_string(v).expect("string lists always serialize")
}

/// A registration request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewWorker {
    /// The worker's chosen name (often its host name); not an identity.
    pub name: String,
    pub host: Option<String>,
    /// Kinds it runs; empty = any kind.
    pub kinds: Vec<String>,
    /// Queues it claims from; empty = every queue.
    pub queues: Vec<String>,
    /// Labels for placement (`device=alice-mac`), `key=value`.
    pub labels: Vec<String>,
    pub slots: u32,
    /// Whether it heartbeats its runs (else only `max_run_duration` bounds
    /// them).
    pub heartbeats: bool,
    pub version: Option<String>,
}

/// A stored registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Fresh at every registration (`w-…`).
    pub id: String,
    #[serde(flatten)]
    pub worker: NewWorker,
    pub registered_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub deregistered_at: Option<Timestamp>,
}

impl WorkerRecord {
    /// Registered and not deregistered, but silent for longer than
    /// `stale_after` at `now` (the store's clock): probably dead.
    pub fn is_stale(&self, now: Timestamp, stale_after: Duration) -> bool {
        self.deregistered_at.is_none()
            && self.last_seen_at.millis_until(now) > reeve_core::time::duration_millis(stale_after)
    }

    /// Registered, not deregistered and not stale: a worker that may still
    /// claim.
    pub fn is_live(&self, now: Timestamp, stale_after: Duration) -> bool {
        self.deregistered_at.is_none() && !self.is_stale(now, stale_after)
    }
}

/// The latest checkpoint of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub job_id: JobId,
    /// The epoch of the run that saved it.
    pub epoch: i64,
    #[serde(skip)]
    pub data: Vec<u8>,
    pub size: usize,
    pub saved_at: Timestamp,
}

/// A message to a job's runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mail {
    pub id: i64,
    pub job_id: JobId,
    pub at: Timestamp,
    /// `operator:NAME` or `supervisor`.
    pub sender: String,
    pub subject: String,
    pub body: String,
    pub read_at: Option<Timestamp>,
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMail {
    pub job_id: JobId,
    pub sender: String,
    pub subject: String,
    pub body: String,
}
