//! Maintenance: fire due schedules, promote due jobs, reap expired leases,
//! supervise progress, prune old jobs.
//!
//! The loop sleeps until the store's next deadline (the earliest lease expiry
//! or due job), the next run due to stall or escalate, or until the store
//! signals that a deadline may have moved earlier. Each duty's errors are
//! logged and retried with backoff; one failing duty never stops the others.
//!
//! Supervision is rate-limited: a pass runs at most once per
//! `supervise_every`, however often claims wake the loop; a wake that finds
//! the pass too recent owes one, and the loop wakes again when it is
//! allowed. Between passes the loop still wakes for the earliest stall or
//! escalation the last pass foresaw (never later than `stall_after`, the
//! soonest a run claimed since could stall).

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
    let mut supervision = Supervision::new();
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
        failed |= !supervision.pass(&inner).await;
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
        if let Some(at) = supervision.wake_at() {
            sleep = sleep.min(at.saturating_duration_since(Instant::now()));
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

/// When supervision passes run (see the module docs).
struct Supervision {
    /// The earliest instant the next pass may run.
    allowed_at: Instant,
    /// The earliest stall or escalation the last pass foresaw.
    due_at: Option<Instant>,
    /// A pass was skipped for being too soon after the last one.
    owed: bool,
}

impl Supervision {
    fn new() -> Self {
        Supervision {
            allowed_at: Instant::now(),
            due_at: None,
            owed: false,
        }
    }

    /// Runs a pass if one is allowed now; false if it failed.
    async fn pass(&mut self, inner: &Inner) -> bool {
        let Some(params) = inner.config.supervision else {
            return true;
        };
        let now = Instant::now();
        if now < self.allowed_at {
            self.owed = true;
            return true;
        }
        self.allowed_at = now + inner.config.supervise_every;
        self.owed = false;
        match inner.store.supervise(params).await {
            Ok(done) => {
                inner
                    .stats
                    .stalled
                    .fetch_add(done.stalled.len() as u64, Ordering::Relaxed);
                inner
                    .stats
                    .escalated
                    .fetch_add(done.escalated.len() as u64, Ordering::Relaxed);
                // A run claimed after this pass stalls no sooner than
                // `stall_after` from now.
                let next = done
                    .next_in
                    .unwrap_or(params.stall_after)
                    .min(params.stall_after);
                self.due_at = Some(now + next);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "supervising progress failed");
                self.due_at = None;
                false
            }
        }
    }

    /// When the loop must wake for supervision, if ever.
    fn wake_at(&self) -> Option<Instant> {
        let owed = self.owed.then_some(self.allowed_at);
        // Never before the pass is allowed.
        let due = self.due_at.map(|d| d.max(self.allowed_at));
        owed.into_iter().chain(due).min()
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
        match inner
            .store
            .prune_deliveries(inner.config.delivery_retention, 1000)
            .await
        {
            Ok(1000) => continue,
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "pruning old webhook deliveries failed");
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
