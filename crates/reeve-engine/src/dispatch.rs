//! The dispatcher: claims jobs for this process's handlers whenever a slot is
//! free and there may be work, and starts a run task for each.
//!
//! It waits on three things only: the store's `work` signal (an enqueue,
//! promotion, freed slot or raised cap anywhere), a slot of its own freeing
//! up, or shutdown. A claim that fails is retried with backoff, so a database
//! outage pauses claiming and it resumes by itself.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use reeve_store::ClaimParams;

use crate::{Backoff, Inner, run};

pub(crate) async fn run(inner: Arc<Inner>) {
    let mut work = inner.store.signals().work.subscribe();
    let filter = inner.handlers.filter();
    let mut backoff = Backoff::new();
    loop {
        if inner.stop_claiming.is_cancelled() {
            return;
        }
        let busy = inner.active.lock().expect("active lock").len() as u32;
        let free = inner.config.slots.saturating_sub(busy);
        let mut full_batch = false;
        if free > 0 {
            // Mark the signal seen *before* claiming: a change that lands
            // during the claim wakes the wait below instead of being missed.
            work.borrow_and_update();
            let limit = free.min(inner.config.claim_batch);
            let params = ClaimParams {
                worker: inner.config.worker_id.clone(),
                queues: None,
                kinds: filter.clone(),
                limit,
                heartbeats: true,
                labels: inner.config.labels.clone(),
            };
            match inner.store.claim(params).await {
                Ok(jobs) => {
                    backoff.reset();
                    full_batch = jobs.len() as u32 == limit;
                    inner
                        .stats
                        .claimed
                        .fetch_add(jobs.len() as u64, Ordering::Relaxed);
                    for job in jobs {
                        run::start(&inner, job);
                    }
                }
                Err(e) => {
                    let wait = backoff.step();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "claim failed; pausing claims");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = inner.stop_claiming.cancelled() => return,
                    }
                    continue;
                }
            }
        }
        if full_batch {
            continue; // there may be more right away
        }
        tokio::select! {
            changed = work.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = inner.slot_freed.notified(), if free == 0 => {}
            _ = inner.stop_claiming.cancelled() => return,
        }
    }
}
