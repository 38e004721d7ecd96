//! What operators and interactive clients leave in the store beside jobs and
//! schedules: pressure signals (SPEC §8) and the audit log (SPEC §7), and
//! the arithmetic of a full cap's slot ETA.
//!
//! **Invariants.** A pressure signal is active while the store's clock is
//! before its `expires_at`; raising the same source again replaces its
//! expiry. An audit row is written in the same transaction as the action it
//! records (a forced run and its audit row commit together or not at all)
//! and is never updated.

use std::time::Duration;

use reeve_core::{Job, Timestamp};
use serde::{Deserialize, Serialize};

/// An active pressure signal: interactive work is going on, defer firings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pressure {
    pub source: String,
    pub raised_at: Timestamp,
    pub expires_at: Timestamp,
}

/// An audit record to write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewAudit {
    /// Who acted (`operator:NAME`, `engine`).
    pub actor: String,
    /// What was done: `force_run`, `schedule_auto_paused`, `pause`, ….
    pub action: String,
    /// What it was done to (`schedule:NAME`, `job:ID`).
    pub target: String,
    pub detail: serde_json::Value,
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}

/// A cap a manual firing found full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityFull {
    /// `global` or `queue`.
    pub scope: String,
    /// The queue, for a queue cap.
    pub queue: Option<String>,
    pub running: u64,
    pub limit: u32,
}

/// The caps a firing into `queue` must fit under, given the running counts:
/// the first full one (global first), or `None` if there is room.
pub fn full_cap(
    global: Option<u32>,
    running_total: u64,
    queue: &str,
    queue_cap: Option<u32>,
    queue_paused: bool,
    running_in_queue: u64,
) -> Option<CapacityFull> {
    if let Some(limit) = global
        && running_total >= u64::from(limit)
    {
        return Some(CapacityFull {
            scope: "global".into(),
            queue: None,
            running: running_total,
            limit,
        });
    }
    let limit = if queue_paused { Some(0) } else { queue_cap };
    match limit {
        Some(limit) if running_in_queue >= u64::from(limit) => Some(CapacityFull {
            scope: "queue".into(),
            queue: Some(queue.to_string()),
            running: running_in_queue,
            limit,
        }),
        _ => None,
    }
}

/// The median of observed durations (ms), `None` when there are none.
pub fn median_ms(mut observed: Vec<i64>) -> Option<i64> {
    if observed.is_empty() {
        return None;
    }
    observed.sort_unstable();
    Some(observed[observed.len() / 2])
}

/// When a slot of a full cap is expected to free, in seconds from `now`.
///
/// `running` are the jobs holding the cap's slots, each with its typical
/// duration (the median of its schedule's or kind's recent runs; its
/// `max_run_duration` when none finished yet). Each is expected to end at
/// `claimed_at + typical`, but never after its hard cap
/// (`claimed_at + max_run_duration`); one already past its typical duration
/// is expected within a tenth of it (at least a second). With `running`
/// jobs over a cap of `limit`, a slot frees when the `running - limit + 1`-th
/// earliest of them ends.
pub fn slot_eta_seconds(running: &[(Job, Option<Duration>)], limit: u32, now: Timestamp) -> u64 {
    let mut ends: Vec<i64> = running
        .iter()
        .map(|(job, typical)| {
            let claimed = job.claimed_at.unwrap_or(now).0;
            let typical = typical.unwrap_or(job.max_run_duration);
            let typical_ms = reeve_core::time::duration_millis(typical);
            let hard =
                claimed.saturating_add(reeve_core::time::duration_millis(job.max_run_duration));
            let expected = claimed.saturating_add(typical_ms).min(hard);
            if expected > now.0 {
                expected - now.0
            } else {
                (typical_ms / 10)
                    .max(1000)
                    .min(hard.saturating_sub(now.0).max(1000))
            }
        })
        .collect();
    if ends.is_empty() {
        return 0;
    }
    ends.sort_unstable();
    let over = ends.len().saturating_sub(limit as usize);
    let ms = ends[over.min(ends.len() - 1)];
    (ms as u64).div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reeve_core::NewJob;

    fn running(claimed: i64, max_run: Duration) -> Job {
        let mut nj = NewJob::new("q", "k");
        nj.max_run_duration = Some(max_run);
        let mut job = crate::transition::materialize(&crate::StoreConfig::default(), nj, 0);
        job.claimed_at = Some(Timestamp(claimed));
        job
    }

    #[test]
    fn full_caps_global_first_then_queue() {
        assert_eq!(full_cap(Some(2), 1, "q", Some(1), false, 0), None);
        let g = full_cap(Some(2), 2, "q", None, false, 0).unwrap();
        assert_eq!((g.scope.as_str(), g.running, g.limit), ("global", 2, 2));
        let q = full_cap(None, 5, "q", Some(1), false, 1).unwrap();
        assert_eq!((q.scope.as_str(), q.queue.as_deref()), ("queue", Some("q")));
        let paused = full_cap(None, 0, "q", None, true, 0).unwrap();
        assert_eq!(paused.limit, 0, "a paused queue has no room");
        assert_eq!(full_cap(None, 100, "q", None, false, 100), None);
    }

    #[test]
    fn eta_follows_typical_durations() {
        let now = Timestamp(100_000);
        let hour = Duration::from_secs(3600);
        // Two running jobs over a cap of 2: the earlier expected end frees a slot.
        let jobs = vec![
            (running(40_000, hour), Some(Duration::from_secs(120))), // ends at 160s: 60s from now
            (running(90_000, hour), Some(Duration::from_secs(30))),  // ends at 120s: 20s from now
        ];
        assert_eq!(slot_eta_seconds(&jobs, 2, now), 20);
        // Three over a cap of 2: the second-earliest end.
        let mut three = jobs.clone();
        three.push((running(95_000, hour), Some(Duration::from_secs(300))));
        assert_eq!(slot_eta_seconds(&three, 2, now), 60);
        // Overdue: within a tenth of its typical duration, at least a second.
        let overdue = vec![(running(0, hour), Some(Duration::from_secs(50)))];
        assert_eq!(slot_eta_seconds(&overdue, 1, now), 5);
        // No history: the job's own max_run_duration, bounded by it.
        let fresh = vec![(running(100_000, Duration::from_secs(600)), None)];
        assert_eq!(slot_eta_seconds(&fresh, 1, now), 600);
    }

    #[test]
    fn medians() {
        assert_eq!(median_ms(vec![]), None);
        assert_eq!(median_ms(vec![5, 1, 3]), Some(3));
    }
}
