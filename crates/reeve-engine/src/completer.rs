//! Batched write-backs. Runs hand their [`Finish`] to the completer, which
//! writes everything that arrived meanwhile in one store call (one
//! transaction), each element fenced on its own epoch, and answers each run.
//! A transient database error is retried with backoff, never dropped: a
//! finished run's outcome is not lost because the database blinked.
//! (Test builds can abort right after that transaction commits:
//! `reeve_core::fault::CRASH_AFTER_FINISH_COMMIT`.)

use std::sync::Arc;
use std::time::Duration;

use reeve_core::Job;
use reeve_exec::CancellationToken;
use reeve_store::{Finish, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::Backoff;

/// Most write-backs per transaction.
const MAX_BATCH: usize = 512;

type Request = (Finish, oneshot::Sender<Result<Job, StoreError>>);

#[derive(Clone)]
pub(crate) struct CompleterHandle {
    tx: mpsc::UnboundedSender<Request>,
}

impl CompleterHandle {
    /// Writes one run's end and waits for the store's answer.
    pub(crate) async fn finish(&self, finish: Finish) -> Result<Job, StoreError> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((finish, tx)).is_err() {
            return Err(StoreError::Database {
                message: "engine stopped".into(),
                transient: false,
            });
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Database {
                message: "engine stopped".into(),
                transient: false,
            })
        })
    }
}

pub(crate) fn spawn(
    store: Arc<dyn Store>,
    stop: CancellationToken,
) -> (CompleterHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(store, rx, stop));
    (CompleterHandle { tx }, task)
}

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Request>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new();
    loop {
        let first = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => return },
            _ = stop.cancelled() => {
                // Drain what is already queued, then stop.
                match rx.try_recv() { Ok(r) => r, Err(_) => return }
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let finishes: Vec<Finish> = batch.iter().map(|(f, _)| f.clone()).collect();
        loop {
            match store.finish(finishes.clone()).await {
                Ok(answers) => {
                    if answers.iter().any(Result::is_ok) {
                        reeve_core::fault::abort_if(reeve_core::fault::CRASH_AFTER_FINISH_COMMIT);
                    }
                    backoff.reset();
                    for ((_, reply), answer) in batch.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                    break;
                }
                Err(e) if e.is_transient() && !stop.is_cancelled() => {
                    let wait = backoff.step();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, runs = finishes.len(), "write-back failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, runs = finishes.len(), "write-back failed");
                    for (_, reply) in batch {
                        let _ = reply.send(Err(e.clone()));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    break;
                }
            }
        }
    }
}
