//! Leader election: the engine runs maintenance only while it leads.
//!
//! A follower tries to acquire leadership every [`CHECK`]; having acquired
//! it, it waits the backend's takeover grace before acting, so a deposed
//! leader (which confirms every [`CHECK`] and stops at the first doubt) has
//! stopped first. A store without rivals ([`reeve_store::SoleLeader`]) leads
//! from the start and is never checked, so an idle daemon stays idle.

use std::sync::Arc;
use std::time::Duration;

use crate::Inner;

/// How often a follower tries to lead and a leader confirms.
pub(crate) const CHECK: Duration = Duration::from_millis(500);

pub(crate) async fn run(inner: Arc<Inner>) {
    let leadership = inner.store.leadership();
    if !leadership.contested() {
        inner.leading.send_replace(true);
        return;
    }
    let mut leading = false;
    loop {
        if leading {
            if !leadership.confirm().await {
                leading = false;
                inner.leading.send_replace(false);
                tracing::warn!(worker = %inner.config.worker_id, "lost leadership; maintenance stopped");
            }
        } else {
            match leadership.try_acquire().await {
                Ok(true) => {
                    tokio::select! {
                        _ = tokio::time::sleep(leadership.takeover_grace()) => {}
                        _ = inner.stop_all.cancelled() => {
                            leadership.release().await;
                            return;
                        }
                    }
                    if leadership.confirm().await {
                        leading = true;
                        inner.leading.send_replace(true);
                        tracing::info!(worker = %inner.config.worker_id, "became leader");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election failed; will retry"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK) => {}
            _ = inner.stop_all.cancelled() => {
                if leading {
                    inner.leading.send_replace(false);
                }
                leadership.release().await;
                return;
            }
        }
    }
}
