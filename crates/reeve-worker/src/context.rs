//! What a job's code sees: the [`Handler`] trait it implements, the
//! [`JobContext`] of one run, and the [`JobFailure`] it may end with.
//!
//! **Invariants.** A context belongs to exactly one run (one job at one
//! epoch); everything it writes is fenced on that epoch by the daemon, so a
//! context outliving its run can change nothing. Its cancellation signal
//! fires once and stays fired, with the first [`StopReason`]. The same
//! handler runs unchanged under the remote runner ([`crate::Worker`]) and
//! inside the engine ([`crate::InProcess`]); only the link behind the
//! context differs.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use reeve_core::{FailureReason, Job, JobId};
use reeve_engine::reeve_exec::Report;
use reeve_store::{Mail, Store};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::Error;
use crate::runner::RemoteRun;

/// Largest progress note the daemon accepts.
pub const MAX_PROGRESS_BYTES: usize = 4096;
/// Largest checkpoint the daemon accepts by default.
pub const MAX_CHECKPOINT_BYTES: usize = reeve_store::fleet::DEFAULT_MAX_CHECKPOINT_BYTES;

/// The work of some job kinds. A handler runs one job per call, possibly
/// many at once (one per slot).
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs the job of `ctx` to its end: `Ok(result)` completes it (with an
    /// optional JSON result), `Err` fails it with the failure's reason.
    /// When [`JobContext::cancelled`] fires, stop the work and return
    /// promptly; what is written back then depends on why
    /// ([`JobContext::stop_reason`]).
    async fn run(&self, ctx: JobContext) -> Result<Option<serde_json::Value>, JobFailure>;
}

/// A [`Handler`] made of an async function or closure (see [`handler_fn`]).
#[derive(Debug, Clone)]
pub struct FnHandler<F>(F);

/// A handler from an async function: `handler_fn(|ctx| async move { … })`.
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<serde_json::Value>, JobFailure>> + Send + 'static,
{
    FnHandler(f)
}

#[async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<serde_json::Value>, JobFailure>> + Send + 'static,
{
    async fn run(&self, ctx: JobContext) -> Result<Option<serde_json::Value>, JobFailure> {
        (self.0)(ctx).await
    }
}

/// How a run failed: a reason from the closed set, and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    pub reason: FailureReason,
    pub error: Option<String>,
}

impl JobFailure {
    pub fn new(reason: FailureReason, error: impl Into<String>) -> JobFailure {
        JobFailure {
            reason,
            error: Some(error.into()),
        }
    }

    /// A failure with the generic reason `error` (retried by default).
    pub fn error(error: impl Into<String>) -> JobFailure {
        JobFailure::new(FailureReason::Error, error)
    }

    /// The run stopped because it was cancelled.
    pub fn cancelled() -> JobFailure {
        JobFailure::new(FailureReason::Cancelled, "cancelled")
    }
}

impl std::fmt::Display for JobFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason.as_str())?;
        if let Some(e) = &self.error {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for JobFailure {}

/// A failed call inside a handler fails the run with reason `error`, so
/// `ctx.save_checkpoint(..).await?` reads naturally.
impl From<Error> for JobFailure {
    fn from(e: Error) -> JobFailure {
        JobFailure::error(e.to_string())
    }
}

/// Why a run was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The run is no longer this worker's (the daemon answered `lease_lost`,
    /// or the local lease deadline passed without a confirmed heartbeat).
    /// Nothing is written back, whatever the handler returns.
    LeaseLost,
    /// An operator cancelled the job: a failure is reported as `cancelled`.
    Cancelled,
    /// The run reported more turns than its `max_turns`; the daemon already
    /// failed it. Nothing is written back.
    TurnLimit,
    /// The worker is shutting down past its drain grace; the run is
    /// released for retry (`worker_shutdown`) unless the handler still
    /// returns a success.
    Shutdown,
    /// The engine stopped an in-process run (its cause, kept by the engine,
    /// decides the outcome the same way).
    Engine,
}

/// Where a context's reports go.
pub(crate) enum Link {
    /// A remote run of [`crate::Worker`]: heartbeats and job-token calls.
    Remote(Arc<RemoteRun>),
    /// A run inside the engine: its report channel, and the store for mail.
    Engine {
        reports: mpsc::UnboundedSender<Report>,
        store: Arc<dyn Store>,
    },
}

/// One run of one job, as its handler sees it.
pub struct JobContext {
    job: Job,
    checkpoint: Option<Vec<u8>>,
    stop: CancellationToken,
    link: Link,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("job", &self.job.id)
            .field("epoch", &self.job.epoch)
            .field("checkpoint", &self.checkpoint.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

impl JobContext {
    pub(crate) fn new(
        job: Job,
        checkpoint: Option<Vec<u8>>,
        stop: CancellationToken,
        link: Link,
    ) -> JobContext {
        JobContext {
            job,
            checkpoint,
            stop,
            link,
        }
    }

    /// The job as it was claimed.
    pub fn job(&self) -> &Job {
        &self.job
    }

    pub fn id(&self) -> JobId {
        self.job.id
    }

    pub fn kind(&self) -> &str {
        &self.job.kind
    }

    pub fn queue(&self) -> &str {
        &self.job.queue
    }

    pub fn payload(&self) -> &serde_json::Value {
        &self.job.payload
    }

    /// This run's number, from 1.
    pub fn attempt(&self) -> i32 {
        self.job.attempt
    }

    /// This run's fencing token; pass it on to systems that can refuse a
    /// stale writer.
    pub fn epoch(&self) -> i64 {
        self.job.epoch
    }

    /// The same for every attempt of the job: deduplicate side effects by it.
    pub fn idempotency_key(&self) -> &str {
        &self.job.idempotency_key
    }

    /// The latest checkpoint an earlier attempt saved, to resume from.
    pub fn checkpoint(&self) -> Option<&[u8]> {
        self.checkpoint.as_deref()
    }

    /// Reports the turns used so far (absolute). Carried by the next
    /// heartbeat; past the job's `max_turns` the run is stopped
    /// ([`StopReason::TurnLimit`]).
    pub fn report_turns(&self, turns: u64) {
        let turns = i64::try_from(turns).unwrap_or(i64::MAX);
        match &self.link {
            Link::Remote(run) => run.report_turns(turns),
            Link::Engine { reports, .. } => {
                let _ = reports.send(Report::Turns(turns));
            }
        }
    }

    /// Reports a progress note (at most 4096 bytes), carried by the next
    /// heartbeat. A longer note is refused and nothing is reported.
    pub fn progress(&self, note: impl Into<String>) -> Result<(), Error> {
        let note = note.into();
        if note.len() > MAX_PROGRESS_BYTES {
            return Err(Error::invalid(
                "progress",
                format!("is {} bytes; at most {MAX_PROGRESS_BYTES}", note.len()),
            ));
        }
        match &self.link {
            Link::Remote(run) => run.report_progress(note),
            Link::Engine { reports, .. } => {
                let _ = reports.send(Report::Progress(note));
            }
        }
        Ok(())
    }

    /// Saves `data` as the job's checkpoint, fenced on this run's epoch; the
    /// next attempt receives the latest one. A remote save is retried while
    /// the daemon is away (until the run's lease is lost); a refusal
    /// ([`Error::Conflict`]) means the run is lost, and stops it. In the
    /// engine the save goes through the engine's report path.
    pub async fn save_checkpoint(&self, data: impl Into<Vec<u8>>) -> Result<(), Error> {
        let data = data.into();
        match &self.link {
            Link::Remote(run) => run.save_checkpoint(data).await,
            Link::Engine { reports, .. } => {
                if data.len() > MAX_CHECKPOINT_BYTES {
                    return Err(Error::invalid(
                        "checkpoint",
                        format!(
                            "is {} bytes; the limit is {MAX_CHECKPOINT_BYTES}",
                            data.len()
                        ),
                    ));
                }
                reports
                    .send(Report::Checkpoint(data))
                    .map_err(|_| Error::Transient("the engine stopped this run".into()))
            }
        }
    }

    /// The job's mail, oldest first; unread messages are marked read (each
    /// comes back unread this once). Mail belongs to the job and survives
    /// its retries.
    pub async fn read_mail(&self) -> Result<Vec<Mail>, Error> {
        match &self.link {
            Link::Remote(run) => run.read_mail().await,
            Link::Engine { store, .. } => {
                // Like a job token: only the job's current run reads it.
                let job = store
                    .get_job(self.job.id)
                    .await
                    .map_err(Error::from_store)?;
                if job.epoch != self.job.epoch {
                    return Err(Error::from_store(reeve_store::StoreError::StaleEpoch {
                        expected: job.epoch,
                        actual: self.job.epoch,
                    }));
                }
                store
                    .read_mail(self.job.id, true)
                    .await
                    .map_err(Error::from_store)
            }
        }
    }

    /// Unread messages as of the last heartbeat; `None` before the first
    /// one, and in the engine (use [`JobContext::read_mail`]).
    pub fn unread_mail(&self) -> Option<u64> {
        match &self.link {
            Link::Remote(run) => run.unread_mail(),
            Link::Engine { .. } => None,
        }
    }

    /// Resolves when the run must stop (see [`JobContext::stop_reason`]).
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.stop.cancelled()
    }

    pub fn is_cancelled(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// The cancellation token itself, for work spawned off the handler.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Why the run was told to stop, once it was.
    pub fn stop_reason(&self) -> Option<StopReason> {
        match &self.link {
            Link::Remote(run) => run.stop_reason(),
            Link::Engine { .. } => self.stop.is_cancelled().then_some(StopReason::Engine),
        }
    }
}
