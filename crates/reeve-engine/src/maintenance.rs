//! Maintenance: fire due schedules, promote due jobs, reap expired leases,
//! prune old jobs.
//!
//! The loop sleeps until the store's next deadline (the earliest lease expiry
//! or due job) or until the store signals that a deadline may have moved
//! earlier. Each duty's errors are logged and retried with backoff; one
//! failing duty never stops the others.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::{Backoff, Inner, StopCause};

/// Upper bound on one sleep, so a deadline written by another process
/// without a signal reaching us is still seen.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Floor between two passes, so a deadline that stays due (an error) cannot
/// spin the loop.
const MIN_PASS_GAP: Duration = Duration::from_millis(5);

pub(crate) async fn run(inner: Arc<Inner>) {
    let mut deadlines = inner.store.signals().deadlines.subscribe();
    let mut backoff = Backoff::new();
    let mut next_prune = Instant::now() + Duration::from_secs(5);
    let mut leading = inner.leading.subscribe();
    loop {
        // Only the leader maintains; a follower waits to be elected.
        if !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
                _ = inner.stop_all.cancelled() => return,
            }
        }
        deadlines.borrow_and_update();
        let mut failed = false;
        failed |= !crate::firing::fire_due(&inner.store, &inner.config).await;
        failed |= !promote(&inner).await;
        failed |= !reap(&inner).await;
        if Instant::now() >= next_prune {
            failed |= !prune(&inner).await;
            next_prune = Instant::now() + inner.config.prune_every;
        }
        let mut sleep = match inner.store.next_due_in().await {
            Ok(next) => next.unwrap_or(MAX_SLEEP).min(MAX_SLEEP),
            Err(e) => {
                tracing::warn!(error = %e, "maintenance could not read the next deadline");
                failed = true;
                MAX_SLEEP
            }
        };
        if failed {
            sleep = sleep.min(backoff.step());
        } else {
            backoff.reset();
        }
        let sleep = sleep.max(MIN_PASS_GAP).min(
            next_prune
                .saturating_duration_since(Instant::now())
                .max(MIN_PASS_GAP),
        );
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            changed = deadlines.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = leading.changed() => {}
            _ = inner.stop_all.cancelled() => return,
        }
    }
}

async fn promote(inner: &Inner) -> bool {
    loop {
        match inner
            .store
            .promote_due(inner.config.maintenance_batch)
            .await
        {
            Ok(n) if n == u64::from(inner.config.maintenance_batch) => continue,
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "promoting due jobs failed");
                return false;
            }
        }
    }
}

async fn reap(inner: &Inner) -> bool {
    loop {
        match inner
            .store
            .reap_expired(inner.config.maintenance_batch)
            .await
        {
            Ok(reaped) => {
                inner
                    .stats
                    .reaped
                    .fetch_add(reaped.len() as u64, Ordering::Relaxed);
                for job in &reaped {
                    // A reaped run of this process is aborted at once.
                    inner.stop_local(job.id, Some(job.epoch), StopCause::LeaseLost);
                }
                if reaped.len() < inner.config.maintenance_batch as usize {
                    return true;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reaping expired runs failed");
                return false;
            }
        }
    }
}

async fn prune(inner: &Inner) -> bool {
    // Bounded: at most ten batches per pass, the rest next time.
    for _ in 0..10 {
        match inner
            .store
            .prune_firings(inner.config.firing_retention, 1000)
            .await
        {
            Ok(1000) => continue,
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "pruning old firing ledger rows failed");
                return false;
            }
        }
    }
    for _ in 0..10 {
        match inner.store.prune(inner.config.retention, 1000).await {
            Ok(1000) => continue,
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "pruning old jobs failed");
                return false;
            }
        }
    }
    true
}
