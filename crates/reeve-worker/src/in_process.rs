//! The in-process adapter: the same [`Handler`] a remote worker runs, run
//! by the engine inside the daemon as a `reeve_engine::Handler`.
//!
//! **Invariants.** Everything goes through the engine's own paths: turns,
//! progress and checkpoints are the run's reports (the engine carries them
//! on its heartbeats and saves checkpoints fenced on the run's epoch), the
//! outcome is the engine's write-back, and the engine's stop token is the
//! context's cancellation signal, so a lost lease, a cancel, a turn budget
//! or a shutdown reach the handler exactly as they reach any in-process
//! run. The previous checkpoint is the one the engine hands the run
//! (`REEVE_CHECKPOINT`). Mail is read from the store only while the run's
//! epoch is still the job's.
//!
//! The handler runs in a task of its own, aborted when the engine drops the
//! run. The engine's run loop awaits its own store calls (heartbeats,
//! checkpoint saves) between polls of the handler; a handler polled only by
//! that loop and waiting for the same store connection (reading mail on
//! SQLite's one writer) would wait for a loop that waits for it.

use std::sync::Arc;

use async_trait::async_trait;
use reeve_engine::Run;
use reeve_store::{Outcome, Store};

use crate::context::Link;
use crate::{Handler, JobContext};

/// Runs a [`Handler`] inside the engine:
/// `Handlers::new().kind("count", Arc::new(InProcess::new(handler, store)))`.
pub struct InProcess {
    handler: Arc<dyn Handler>,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InProcess(..)")
    }
}

impl InProcess {
    /// `handler` under the engine that runs on `store` (the store is used
    /// to read the runs' mail).
    pub fn new(handler: impl Handler, store: Arc<dyn Store>) -> InProcess {
        InProcess {
            handler: Arc::new(handler),
            store,
        }
    }
}

#[async_trait]
impl reeve_engine::Handler for InProcess {
    async fn run(&self, run: Run) -> Outcome {
        let checkpoint = match run.env.iter().find(|(k, _)| k == "REEVE_CHECKPOINT") {
            Some((_, path)) => match tokio::fs::read(path).await {
                Ok(data) => Some(data),
                Err(e) => {
                    return Outcome::Failed {
                        reason: reeve_core::FailureReason::Error,
                        error: Some(format!("cannot read the checkpoint: {e}")),
                    };
                }
            },
            None => None,
        };
        let ctx = JobContext::new(
            run.job,
            checkpoint,
            run.stop,
            Link::Engine {
                reports: run.reports,
                store: self.store.clone(),
            },
        );
        let handler = self.handler.clone();
        let mut task = AbortOnDrop(tokio::spawn(async move { handler.run(ctx).await }));
        match (&mut task.0).await {
            Ok(Ok(result)) => Outcome::Succeeded { result },
            Ok(Err(failure)) => Outcome::Failed {
                reason: failure.reason,
                error: failure.error,
            },
            Err(e) => Outcome::Failed {
                reason: reeve_core::FailureReason::Error,
                error: Some(format!("the handler did not finish: {e}")),
            },
        }
    }
}

/// A task that ends with the future awaiting it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
