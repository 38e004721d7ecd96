//! One run: the handler's future, the heartbeats carrying its reports, and
//! its write-back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reeve_core::{FailureReason, Job};
use reeve_exec::{CancellationToken, OutputBuffer, Report};
use reeve_store::{Finish, HeartbeatParams, Outcome, StoreError};
use tokio::sync::mpsc;

use crate::{Active, Inner, Run, StopCause};

/// Heartbeat period: a third of the timeout, so two beats can be lost before
/// the lease passes.
pub(crate) fn heartbeat_interval(timeout: Duration) -> Duration {
    (timeout / 3).clamp(Duration::from_millis(20), Duration::from_secs(30))
}

pub(crate) fn start(inner: &Arc<Inner>, job: Job) {
    let Some(handler) = inner.handlers.for_job(&job) else {
        // The claim filter only takes kinds we have; reaching this is a bug,
        // and the lease will pass and the job be retried elsewhere.
        tracing::error!(job = job.id, kind = %job.kind, "claimed a job no handler runs");
        return;
    };
    let active = Arc::new(Active {
        epoch: job.epoch,
        stop: CancellationToken::new(),
        cause: std::sync::Mutex::new(None),
        output: OutputBuffer::new(inner.config.output_limit),
    });
    inner
        .active
        .lock()
        .expect("active lock")
        .insert(job.id, active.clone());
    let inner = inner.clone();
    tokio::spawn(async move {
        let id = job.id;
        drive(&inner, job, handler, &active).await;
        inner.active.lock().expect("active lock").remove(&id);
        inner.slot_freed.notify_one();
    });
}

/// What the run reported so far.
#[derive(Default)]
struct Reported {
    turns: Option<i64>,
    progress: Option<String>,
    result: Option<serde_json::Value>,
    failure: Option<(FailureReason, Option<String>)>,
    dirty: bool,
}

impl Reported {
    fn apply(&mut self, report: Report, job: &Job, active: &Active) {
        match report {
            Report::Turns(n) => {
                self.turns = Some(n);
                self.dirty = true;
                if job.max_turns.is_some_and(|max| n > max) {
                    active.stop(StopCause::TurnLimit);
                }
            }
            Report::Progress(p) => {
                self.progress = Some(p);
                self.dirty = true;
            }
            Report::Result(v) => self.result = Some(v),
            Report::Failure { reason, error } => self.failure = Some((reason, error)),
            // Saved by the caller; a checkpoint counts as progress.
            Report::Checkpoint(_) => self.dirty = true,
        }
    }
}

/// Saves a reported checkpoint, fenced on the run's epoch; a refusal means
/// the lease is gone, which the next heartbeat acts on.
async fn save_checkpoint(inner: &Inner, job: &Job, data: Vec<u8>) {
    if let Err(e) = inner.store.save_checkpoint(job.id, job.epoch, data).await {
        tracing::warn!(job = job.id, epoch = job.epoch, error = %e, "checkpoint not saved");
    }
}

/// The run's environment: the daemon's extra variables, and the job's
/// latest checkpoint in a file of its own (`REEVE_CHECKPOINT`), kept alive
/// by the returned directory. A job at its first epoch has never run, so it
/// has no checkpoint: its run costs no read and no file.
async fn run_env(inner: &Inner, job: &Job) -> (Vec<(String, String)>, Option<tempfile::TempDir>) {
    let mut env = inner
        .config
        .run_env
        .as_ref()
        .map_or(Vec::new(), |f| (f.0)(job));
    if job.epoch <= 1 {
        return (env, None);
    }
    let checkpoint = match inner.store.load_checkpoint(job.id).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(job = job.id, error = %e, "cannot load the checkpoint");
            None
        }
    };
    let Some(c) = checkpoint else {
        return (env, None);
    };
    let written = tempfile::tempdir().and_then(|dir| {
        let path = dir.path().join("checkpoint");
        std::fs::write(&path, &c.data).map(|()| (dir, path))
    });
    match written {
        Ok((dir, path)) => {
            env.push(("REEVE_CHECKPOINT".into(), path.display().to_string()));
            (env, Some(dir))
        }
        Err(e) => {
            tracing::warn!(job = job.id, error = %e, "cannot write the checkpoint file");
            (env, None)
        }
    }
}

async fn drive(
    inner: &Arc<Inner>,
    job: Job,
    handler: Arc<dyn crate::Handler>,
    active: &Arc<Active>,
) {
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let (env, _checkpoint_dir) = run_env(inner, &job).await;
    let run = Run {
        job: job.clone(),
        stop: active.stop.clone(),
        reports: reports_tx,
        output: active.output.clone(),
        env,
    };
    let work = handler.run(run);
    tokio::pin!(work);
    let period = heartbeat_interval(job.heartbeat_timeout);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = Reported::default();
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break outcome,
            Some(report) = reports.recv() => {
                if let Report::Checkpoint(data) = &report {
                    save_checkpoint(inner, &job, data.clone()).await;
                }
                reported.apply(report, &job, active);
            }
            _ = ticker.tick() => heartbeat(inner, &job, active, &mut reported).await,
        }
    };
    while let Ok(report) = reports.try_recv() {
        if let Report::Checkpoint(data) = &report {
            save_checkpoint(inner, &job, data.clone()).await;
        }
        reported.apply(report, &job, active);
    }
    let outcome = match (active.cause(), outcome) {
        (Some(StopCause::LeaseLost), _) => {
            tracing::info!(
                job = job.id,
                epoch = job.epoch,
                "run stopped: lease lost; not writing back"
            );
            return;
        }
        // Work that finished successfully despite a late stop still counts.
        (_, Outcome::Succeeded { result }) => Outcome::Succeeded {
            result: result.or(reported.result),
        },
        (Some(StopCause::Cancelled), _) => Outcome::Failed {
            reason: FailureReason::Cancelled,
            error: Some("cancelled by an operator".into()),
        },
        (Some(StopCause::TurnLimit), _) => Outcome::Failed {
            reason: FailureReason::TurnLimitExceeded,
            error: Some(format!(
                "reported {} turns; the budget is {}",
                reported.turns.unwrap_or_default(),
                job.max_turns.unwrap_or_default()
            )),
        },
        (Some(StopCause::Shutdown), _) => Outcome::Failed {
            reason: FailureReason::WorkerShutdown,
            error: Some("released: the daemon shut down".into()),
        },
        // The run's own report names the reason; the exit code is a fallback.
        (None, Outcome::Failed { reason, error }) => match reported.failure {
            Some((reported_reason, reported_error)) => Outcome::Failed {
                reason: reported_reason,
                error: reported_error.or(error),
            },
            None => Outcome::Failed { reason, error },
        },
    };
    let output = active.output.snapshot();
    let finish = Finish {
        job: job.id,
        epoch: job.epoch,
        outcome,
        output: (!output.is_empty()).then_some(output),
    };
    match inner.completer.finish(finish).await {
        Ok(_) => {
            inner.stats.finished.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) if e.is_refusal() => {
            inner
                .stats
                .refused_writebacks
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(job = job.id, epoch = job.epoch, error = %e, "write-back refused");
        }
        Err(e) => tracing::error!(job = job.id, epoch = job.epoch, error = %e, "write-back failed"),
    }
}

async fn heartbeat(inner: &Inner, job: &Job, active: &Active, reported: &mut Reported) {
    let params = HeartbeatParams {
        job: job.id,
        epoch: job.epoch,
        turns: reported.turns,
        progress: if reported.dirty {
            reported.progress.clone()
        } else {
            None
        },
    };
    match inner.store.heartbeat(params).await {
        Ok(ack) => {
            inner.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
            reported.dirty = false;
            if ack.cancel_requested {
                active.stop(StopCause::Cancelled);
            }
        }
        Err(
            e @ (StoreError::StaleEpoch { .. }
            | StoreError::NotRunning { .. }
            | StoreError::LeaseExpired
            | StoreError::NotFound(_)),
        ) => {
            tracing::warn!(job = job.id, epoch = job.epoch, error = %e, "heartbeat refused: lease lost; stopping the run");
            active.stop(StopCause::LeaseLost);
        }
        Err(e) => {
            // Transient: the next tick tries again; the lease has room for two misses.
            tracing::warn!(job = job.id, epoch = job.epoch, error = %e, "heartbeat failed; will retry");
        }
    }
}
