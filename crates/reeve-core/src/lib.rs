//! reeve's domain model: the vocabulary every other crate speaks.
//!
//! This crate owns the job state machine ([`JobState`] and its legal
//! transitions), the closed set of [`FailureReason`]s, the [`Event`] record and
//! its logfmt line, retry backoff, placement labels, and the parsing of
//! human durations and timestamps.
//!
//! **Architecture invariant:** no I/O lives here. `reeve-core` knows nothing
//! of sqlx, axum or processes; it is pure data and pure functions, so every
//! rule in it is testable without a database. The one exception is
//! [`fault`], the test-only fault switches, which read the environment and
//! can abort the process only in builds with the `fault-injection` feature.

pub mod event;
pub mod failure;
pub mod fault;
pub mod job;
pub mod placement;
pub mod retry;
pub mod time;
pub mod validate;

pub use event::{Actor, Event, EventKind};
pub use failure::FailureReason;
pub use job::{FollowUp, Job, JobFilter, JobId, JobState, NewJob, Page};
pub use retry::RetryPolicy;
pub use time::{Timestamp, parse_duration};
pub use validate::InputError;
