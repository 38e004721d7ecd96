//! The checker: verifies reeve's invariants against a recorded [`History`].
//!
//! It trusts nothing the run believed; it replays the store's event history
//! job by job through the state machine of SPEC §2 and checks what the
//! workers and the side-effect ledger saw against it:
//!
//! - every job reaches exactly one terminal state, by legal transitions;
//! - no job has two runs that both wrote a success;
//! - no write-back with a stale epoch was accepted;
//! - the running count never exceeds a cap at any instant (replayed from the
//!   claim and end events, and sampled during the run);
//! - a side effect with an idempotency key is applied once, and a succeeded
//!   job's effect was applied;
//! - every schedule fire time produced at most one firing;
//! - a succeeded job with a follow-up has exactly one, others none;
//! - every acknowledged enqueue is in the store;
//! - runs orphaned by a fault are reclaimed within the heartbeat timeout and
//!   a margin, counted from the later of the orphaning and the heal of any
//!   daemon or database fault that stood in the reaper's way (both
//!   latencies are reported).
//!
//! **Invariant:** the checker is a pure function of the history, so it can
//! be tested on synthetic histories (below), including ones with the very
//! bugs it exists to catch.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use reeve_core::JobState;
use serde::{Deserialize, Serialize};

use crate::history::{EventRow, History, JobRow};

/// Extra time allowed past the heartbeat timeout for reclaiming an orphaned
/// run: the reaper's own lag plus a leader failover (takeover grace 2 s and
/// a restart) when the leader was struck too.
pub const RECLAIM_MARGIN_MS: i64 = 5000;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The invariant's name (`stale_write_accepted`, `cap_exceeded`, …).
    pub invariant: String,
    pub job: Option<i64>,
    pub detail: String,
}

/// The distribution of reclaim latencies (fault → the run's end as
/// `heartbeat_lost`), in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    pub count: usize,
    pub p50_ms: Option<i64>,
    pub p99_ms: Option<i64>,
    pub max_ms: Option<i64>,
}

impl Latencies {
    pub fn of(mut v: Vec<i64>) -> Latencies {
        v.sort_unstable();
        let at = |q: f64| -> Option<i64> {
            if v.is_empty() {
                None
            } else {
                let i = ((v.len() as f64 - 1.0) * q).round() as usize;
                Some(v[i])
            }
        };
        Latencies {
            count: v.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: v.last().copied(),
        }
    }
}

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Findings {
    pub violations: Vec<Violation>,
    /// Violations per invariant (every invariant checked is listed, with 0).
    pub by_invariant: BTreeMap<String, usize>,
    pub reclaim: Latencies,
    /// How long after its due time each orphan was reclaimed: due is the
    /// heartbeat timeout after the fault, or the last heal of a daemon or
    /// database fault that overlapped its wait, whichever is later.
    #[serde(default)]
    pub reclaim_after_due: Latencies,
    /// The highest running count seen, globally and per queue, replayed.
    pub max_running: BTreeMap<String, u64>,
    pub jobs_by_state: BTreeMap<String, usize>,
}

pub const INVARIANTS: [&str; 16] = [
    "not_terminal",
    "terminal_count",
    "illegal_transition",
    "double_success",
    "stale_write_accepted",
    "accepted_write_missing",
    "cap_exceeded",
    "cap_exceeded_sampled",
    "effect_applied_twice",
    "effect_missing",
    "double_firing",
    "follow_up_count",
    "lost_job",
    "late_reclaim",
    "secret_leaked",
    "unplanned_exit",
];

const GLOBAL: &str = "*";

fn is_terminal_event(e: &str) -> bool {
    matches!(e, "succeeded" | "failed" | "cancelled")
}

/// A run: one claim of a job, until it ended.
#[derive(Debug, Clone)]
struct Run {
    job: i64,
    queue: String,
    epoch: i64,
    worker: Option<String>,
    start: i64,
    end: Option<(i64, Option<String>)>,
}

/// Checks every invariant; `heartbeat_timeout_ms` is the runs' timeout.
pub fn check(h: &History) -> Findings {
    let mut f = Findings::default();
    for inv in INVARIANTS {
        f.by_invariant.insert(inv.to_string(), 0);
    }
    let violate = |f: &mut Findings, invariant: &str, job: Option<i64>, detail: String| {
        *f.by_invariant.entry(invariant.to_string()).or_default() += 1;
        f.violations.push(Violation {
            invariant: invariant.to_string(),
            job,
            detail,
        });
    };

    let jobs: HashMap<i64, &JobRow> = h.jobs.iter().map(|j| (j.id, j)).collect();
    let mut events: HashMap<i64, Vec<&EventRow>> = HashMap::new();
    for e in &h.events {
        events.entry(e.job_id).or_default().push(e);
    }
    for list in events.values_mut() {
        list.sort_by_key(|e| e.id);
    }
    for j in &h.jobs {
        *f.jobs_by_state.entry(j.state.clone()).or_default() += 1;
    }

    // Per job: the state machine, terminal count, successes, fencing.
    let mut runs: Vec<Run> = Vec::new();
    for j in &h.jobs {
        let list = events.get(&j.id).map(Vec::as_slice).unwrap_or(&[]);
        let state: Option<JobState> = j.state.parse().ok();
        if !state.is_some_and(JobState::is_terminal) {
            violate(
                &mut f,
                "not_terminal",
                Some(j.id),
                format!("ended the run in state {}", j.state),
            );
        }
        let terminals = list.iter().filter(|e| is_terminal_event(&e.event)).count();
        if terminals != 1 {
            violate(
                &mut f,
                "terminal_count",
                Some(j.id),
                format!("{terminals} terminal events"),
            );
        }
        let successes: Vec<i64> = list
            .iter()
            .filter(|e| e.event == "succeeded")
            .map(|e| e.epoch)
            .collect();
        if successes.len() > 1 {
            violate(
                &mut f,
                "double_success",
                Some(j.id),
                format!("succeeded at epochs {successes:?}"),
            );
        }
        replay_job(j, list, &mut runs, &mut |inv, detail| {
            violate(&mut f, inv, Some(j.id), detail)
        });
    }

    // Executor-side: accepted successes of two runs, acknowledged writes
    // the store does not have.
    let mut completes: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    for w in &h.accepted_writes {
        if w.outcome == "complete" {
            completes.entry(w.job_id).or_default().insert(w.epoch);
        }
        let recorded = events.get(&w.job_id).is_some_and(|list| {
            list.iter().any(|e| {
                e.epoch == w.epoch
                    && e.actor == "executor"
                    && matches!(
                        e.event.as_str(),
                        "succeeded" | "failed" | "retryable" | "cancelled"
                    )
            })
        });
        if !recorded {
            violate(
                &mut f,
                "accepted_write_missing",
                Some(w.job_id),
                format!(
                    "worker {} was told its {} at epoch {} was accepted, the store has no such write",
                    w.worker, w.outcome, w.epoch
                ),
            );
        }
    }
    for (job, epochs) in completes {
        if epochs.len() > 1 {
            violate(
                &mut f,
                "double_success",
                Some(job),
                format!("completions accepted for epochs {epochs:?}"),
            );
        }
    }

    // Caps, replayed: +1 at each run's start, -1 at its end; ends first at
    // equal instants (a slot freed and taken in one millisecond).
    let mut points: Vec<(i64, i8, String)> = Vec::new();
    for r in &runs {
        let end = r.end.as_ref().map(|(at, _)| *at).unwrap_or(i64::MAX);
        if end <= r.start {
            continue;
        }
        points.push((r.start, 1, r.queue.clone()));
        points.push((end, -1, r.queue.clone()));
    }
    points.sort_by_key(|(at, delta, _)| (*at, *delta));
    let mut running: BTreeMap<String, i64> = BTreeMap::new();
    for (at, delta, queue) in &points {
        for key in [GLOBAL, queue.as_str()] {
            let n = running.entry(key.to_string()).or_default();
            *n += i64::from(*delta);
            let max = f.max_running.entry(key.to_string()).or_default();
            *max = (*max).max((*n).max(0) as u64);
            let cap = if key == GLOBAL {
                h.caps.global
            } else {
                h.caps.queues.get(key).copied()
            };
            if let Some(cap) = cap
                && *delta > 0
                && *n > cap as i64
            {
                violate(
                    &mut f,
                    "cap_exceeded",
                    None,
                    format!("{n} running in {key} at {at} (cap {cap})"),
                );
            }
        }
    }
    for s in &h.samples {
        let total: u64 = s.by_queue.values().sum();
        if let Some(cap) = h.caps.global
            && total > cap
        {
            violate(
                &mut f,
                "cap_exceeded_sampled",
                None,
                format!("{total} running at {} (global cap {cap})", s.at),
            );
        }
        for (q, n) in &s.by_queue {
            if let Some(cap) = h.caps.queues.get(q)
                && n > cap
            {
                violate(
                    &mut f,
                    "cap_exceeded_sampled",
                    None,
                    format!("{n} running in {q} at {} (cap {cap})", s.at),
                );
            }
        }
    }

    // Side effects.
    let mut applied: BTreeMap<&str, usize> = BTreeMap::new();
    for a in h.effects.iter().filter(|a| a.applied) {
        *applied.entry(a.key.as_str()).or_default() += 1;
    }
    for (key, n) in &applied {
        if *n > 1 {
            violate(
                &mut f,
                "effect_applied_twice",
                None,
                format!("effect {key} applied {n} times"),
            );
        }
    }
    for j in h.jobs.iter().filter(|j| j.state == "succeeded") {
        if !applied.contains_key(j.idempotency_key.as_str()) {
            violate(
                &mut f,
                "effect_missing",
                Some(j.id),
                format!(
                    "succeeded, but effect {} was never applied",
                    j.idempotency_key
                ),
            );
        }
    }

    // Schedules: one firing per fire time.
    let mut firings: BTreeMap<(&str, i64), Vec<i64>> = BTreeMap::new();
    for j in &h.jobs {
        if let (Some(s), Some(at)) = (&j.schedule, j.nominal_at) {
            firings.entry((s.as_str(), at)).or_default().push(j.id);
        }
    }
    for ((s, at), ids) in firings {
        if ids.len() > 1 {
            violate(
                &mut f,
                "double_firing",
                ids.first().copied(),
                format!("schedule {s} fire time {at} fired jobs {ids:?}"),
            );
        }
    }

    // Follow-ups: exactly one per succeeded parent.
    let mut children: BTreeMap<i64, usize> = BTreeMap::new();
    for j in &h.jobs {
        if let Some(p) = j.parent {
            *children.entry(p).or_default() += 1;
        }
    }
    for j in h.jobs.iter().filter(|j| j.has_follow_up) {
        let n = children.get(&j.id).copied().unwrap_or(0);
        let want = usize::from(j.state == "succeeded");
        if n != want {
            violate(
                &mut f,
                "follow_up_count",
                Some(j.id),
                format!("{} parent with {n} follow-ups (want {want})", j.state),
            );
        }
    }

    // Nothing acknowledged is lost.
    for id in &h.acknowledged {
        if !jobs.contains_key(id) {
            violate(
                &mut f,
                "lost_job",
                Some(*id),
                "acknowledged at enqueue, absent from the store".into(),
            );
        }
    }

    // Orphans: the runs a struck process held, ended as heartbeat_lost. The
    // reaper runs on the leader, against the database: while a daemon or the
    // database is itself under a fault, reaping waits for it to heal (and for
    // a takeover). So a reclaim is late only past the heartbeat timeout and
    // the margin counted from the later of the orphaning and the last heal of
    // a control-plane fault active while the run waited.
    let control_plane: Vec<(i64, i64)> = h
        .faults
        .iter()
        .filter(|x| {
            x.skipped.is_none() && (x.target.starts_with("daemon") || x.target == "database")
        })
        .map(|x| (x.at, x.healed_at))
        .collect();
    let mut latencies = Vec::new();
    let mut beyond_recovery = Vec::new();
    for fault in h.faults.iter().filter(|x| x.skipped.is_none()) {
        for r in &runs {
            let Some(worker) = &r.worker else { continue };
            if !fault.identities.contains(worker) || r.start > fault.at {
                continue;
            }
            let Some((end, reason)) = &r.end else {
                continue;
            };
            if *end < fault.at || reason.as_deref() != Some("heartbeat_lost") {
                continue;
            }
            let latency = end - fault.at;
            latencies.push(latency);
            let recovered = control_plane
                .iter()
                .filter(|(at, healed)| *at <= *end && *healed >= fault.at)
                .map(|(_, healed)| *healed)
                .max()
                .unwrap_or(fault.at)
                .max(fault.at);
            let timeout = jobs.get(&r.job).map_or(0, |j| j.heartbeat_timeout_ms);
            let due = (fault.at + timeout).max(recovered);
            beyond_recovery.push((end - due).max(0));
            if *end > due + RECLAIM_MARGIN_MS {
                violate(
                    &mut f,
                    "late_reclaim",
                    Some(r.job),
                    format!(
                        "run at epoch {} orphaned by {} on {} was reclaimed after {latency} ms ({} ms past its due time)",
                        r.epoch,
                        fault.kind,
                        fault.target,
                        end - due
                    ),
                );
            }
        }
    }
    f.reclaim_after_due = Latencies::of(beyond_recovery);
    f.reclaim = Latencies::of(latencies);

    for place in &h.secret_sightings {
        violate(
            &mut f,
            "secret_leaked",
            None,
            format!("a configured secret appears in {place}"),
        );
    }
    for exit in &h.unplanned_exits {
        violate(&mut f, "unplanned_exit", None, exit.clone());
    }
    f
}

/// Replays one job's events through the state machine, collecting its runs
/// and reporting illegal transitions and accepted stale writes.
fn replay_job(
    job: &JobRow,
    events: &[&EventRow],
    runs: &mut Vec<Run>,
    violate: &mut dyn FnMut(&'static str, String),
) {
    let mut state: Option<JobState> = None;
    let mut current_epoch = 0i64;
    let mut open: Option<Run> = None;
    for e in events {
        let Ok(kind) = e.event.parse::<reeve_core::EventKind>() else {
            continue; // events that are not transitions of this replay
        };
        if kind == reeve_core::EventKind::Enqueued {
            if state.is_some() {
                violate(
                    "illegal_transition",
                    format!("enqueued twice (event {})", e.id),
                );
            }
            state = Some(JobState::Available); // or scheduled: both lead to the same edges
            continue;
        }
        let Some(to) = kind.resulting_state() else {
            continue; // cancel_requested and other non-transitions
        };
        let from = state.unwrap_or(JobState::Available);
        let legal =
            from.can_transition(to) || (from == JobState::Available && to == JobState::Available);
        if !legal {
            violate(
                "illegal_transition",
                format!("{} → {} (event {})", from, to, e.id),
            );
        }
        if to == JobState::Running {
            if e.epoch <= current_epoch {
                violate(
                    "illegal_transition",
                    format!("claimed at epoch {} after epoch {current_epoch}", e.epoch),
                );
            }
            current_epoch = e.epoch;
            open = Some(Run {
                job: job.id,
                queue: job.queue.clone(),
                epoch: e.epoch,
                worker: e.worker.clone(),
                start: e.at,
                end: None,
            });
        } else if from == JobState::Running {
            if e.actor == "executor" && (e.epoch != current_epoch || open.is_none()) {
                violate(
                    "stale_write_accepted",
                    format!(
                        "{} written by an executor at epoch {} while the run was at epoch {current_epoch}",
                        e.event, e.epoch
                    ),
                );
            }
            if let Some(mut r) = open.take() {
                r.end = Some((e.at, e.reason.clone()));
                runs.push(r);
            }
        } else if e.actor == "executor" {
            violate(
                "stale_write_accepted",
                format!(
                    "{} written by an executor at epoch {} while the job was {from}",
                    e.event, e.epoch
                ),
            );
        }
        state = Some(to);
    }
    if let Some(r) = open {
        runs.push(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{AcceptedWrite, Caps, EffectAttempt, InjectedFault, RunningSample};

    fn job(id: i64, queue: &str, state: &str) -> JobRow {
        JobRow {
            id,
            queue: queue.into(),
            kind: "effect".into(),
            state: state.into(),
            epoch: 1,
            attempt: 1,
            max_attempts: 5,
            idempotency_key: format!("k{id}"),
            unique_key: None,
            schedule: None,
            nominal_at: None,
            has_follow_up: false,
            parent: None,
            heartbeat_timeout_ms: 2000,
            created_at: 0,
            finished_at: Some(10),
            failure_reason: None,
        }
    }

    struct Events(Vec<EventRow>);
    impl Events {
        fn push(&mut self, job: i64, at: i64, event: &str, epoch: i64, actor: &str) -> &mut Self {
            self.push_by(job, at, event, epoch, actor, None, None)
        }
        #[allow(clippy::too_many_arguments)]
        fn push_by(
            &mut self,
            job: i64,
            at: i64,
            event: &str,
            epoch: i64,
            actor: &str,
            worker: Option<&str>,
            reason: Option<&str>,
        ) -> &mut Self {
            let id = self.0.len() as i64 + 1;
            self.0.push(EventRow {
                id,
                job_id: job,
                at,
                event: event.into(),
                epoch,
                attempt: 1,
                worker: worker.map(str::to_string),
                reason: reason.map(str::to_string),
                actor: actor.into(),
            });
            self
        }
    }

    /// Two jobs that ran one after the other on one slot, cleanly.
    fn clean() -> History {
        let mut ev = Events(Vec::new());
        ev.push(1, 0, "enqueued", 0, "client")
            .push(2, 0, "enqueued", 0, "client")
            .push_by(1, 1, "claimed", 1, "executor", Some("w-a"), None)
            .push(1, 5, "succeeded", 1, "executor")
            .push_by(2, 5, "claimed", 1, "executor", Some("w-a"), None)
            .push(2, 9, "succeeded", 1, "executor");
        History {
            jobs: vec![job(1, "q", "succeeded"), job(2, "q", "succeeded")],
            events: ev.0,
            accepted_writes: vec![AcceptedWrite {
                worker: "w-a".into(),
                job_id: 1,
                epoch: 1,
                outcome: "complete".into(),
            }],
            effects: vec![
                EffectAttempt {
                    key: "k1".into(),
                    job_id: 1,
                    epoch: 1,
                    applied: true,
                },
                EffectAttempt {
                    key: "k2".into(),
                    job_id: 2,
                    epoch: 1,
                    applied: true,
                },
            ],
            samples: vec![RunningSample {
                at: 3,
                by_queue: [("q".to_string(), 1)].into(),
            }],
            acknowledged: vec![1, 2],
            caps: Caps {
                global: Some(1),
                queues: [("q".to_string(), 1)].into(),
            },
            ..Default::default()
        }
    }

    fn invariants(f: &Findings) -> Vec<&str> {
        f.violations.iter().map(|v| v.invariant.as_str()).collect()
    }

    #[test]
    fn a_clean_history_has_no_violations() {
        let f = check(&clean());
        assert!(f.violations.is_empty(), "{:?}", f.violations);
        assert_eq!(f.max_running[GLOBAL], 1);
        assert_eq!(f.by_invariant.len(), INVARIANTS.len());
    }

    #[test]
    fn a_stale_success_after_a_reclaim_is_caught() {
        // Run 1 is reaped, run 2 claims; then the stale run's success lands.
        let mut h = clean();
        let mut ev = Events(Vec::new());
        ev.push(1, 0, "enqueued", 0, "client")
            .push_by(1, 1, "claimed", 1, "executor", Some("w-a"), None)
            .push_by(1, 4, "retryable", 1, "reaper", None, Some("heartbeat_lost"))
            .push(1, 5, "available", 1, "engine")
            .push_by(1, 6, "claimed", 2, "executor", Some("w-b"), None)
            .push(1, 7, "succeeded", 1, "executor")
            .push(1, 8, "succeeded", 2, "executor");
        h.jobs = vec![job(1, "q", "succeeded")];
        h.events = ev.0;
        h.acknowledged = vec![1];
        let f = check(&h);
        let inv = invariants(&f);
        assert!(inv.contains(&"stale_write_accepted"), "{inv:?}");
        assert!(inv.contains(&"double_success"), "{inv:?}");
        assert!(inv.contains(&"terminal_count"), "{inv:?}");
    }

    #[test]
    fn overlapping_runs_beyond_a_cap_are_caught_by_replay_and_samples() {
        let mut h = clean();
        // Job 2 claimed while job 1 still runs, cap 1.
        h.events[4].at = 3;
        h.samples.push(RunningSample {
            at: 4,
            by_queue: [("q".to_string(), 2)].into(),
        });
        let inv = invariants(&check(&h)).join(",");
        assert!(inv.contains("cap_exceeded"), "{inv}");
        assert!(inv.contains("cap_exceeded_sampled"), "{inv}");
    }

    #[test]
    fn a_slot_freed_and_taken_in_one_millisecond_is_not_over_the_cap() {
        let f = check(&clean()); // job 1 ends at 5, job 2 claims at 5
        assert_eq!(f.by_invariant["cap_exceeded"], 0);
    }

    #[test]
    fn double_firings_lost_jobs_missing_effects_and_follow_ups_are_caught() {
        let mut h = clean();
        for j in &mut h.jobs {
            j.schedule = Some("tick".into());
            j.nominal_at = Some(1000);
        }
        h.jobs[0].has_follow_up = true; // succeeded, but no follow-up exists
        h.acknowledged.push(99);
        h.effects.pop(); // job 2's effect never applied
        h.effects.push(EffectAttempt {
            key: "k1".into(),
            job_id: 1,
            epoch: 2,
            applied: true,
        });
        let inv = invariants(&check(&h)).join(",");
        for want in [
            "double_firing",
            "lost_job",
            "effect_missing",
            "effect_applied_twice",
            "follow_up_count",
        ] {
            assert!(inv.contains(want), "{want} in {inv}");
        }
    }

    #[test]
    fn an_accepted_write_the_store_lacks_is_caught() {
        let mut h = clean();
        h.accepted_writes[0].epoch = 7;
        let inv = invariants(&check(&h)).join(",");
        assert!(inv.contains("accepted_write_missing"), "{inv}");
    }

    #[test]
    fn a_process_that_exits_by_itself_is_a_violation() {
        let mut h = clean();
        h.unplanned_exits
            .push("daemon1 exited by itself (exit status: 1) at 1000".into());
        assert_eq!(check(&h).by_invariant["unplanned_exit"], 1);
    }

    #[test]
    fn a_secret_seen_anywhere_is_a_violation() {
        let mut h = clean();
        h.secret_sightings.push("daemon0.log".into());
        assert_eq!(check(&h).by_invariant["secret_leaked"], 1);
    }

    #[test]
    fn reclaim_latency_is_measured_from_the_fault_and_late_ones_flagged() {
        let mut ev = Events(Vec::new());
        ev.push(1, 0, "enqueued", 0, "client")
            .push_by(1, 100, "claimed", 1, "executor", Some("w-a"), None)
            .push_by(
                1,
                9000,
                "retryable",
                1,
                "reaper",
                None,
                Some("heartbeat_lost"),
            )
            .push(1, 9100, "available", 1, "engine")
            .push_by(1, 9200, "claimed", 2, "executor", Some("w-b"), None)
            .push(1, 9300, "succeeded", 2, "executor");
        let mut h = clean();
        h.jobs = vec![job(1, "q", "succeeded")];
        h.events = ev.0;
        h.acknowledged = vec![1];
        h.accepted_writes.clear();
        h.faults = vec![InjectedFault {
            kind: "kill_worker".into(),
            target: "worker:0".into(),
            at: 1000,
            healed_at: 2000,
            identities: vec!["w-a".into()],
            skipped: None,
        }];
        let f = check(&h);
        assert_eq!(f.reclaim.count, 1);
        assert_eq!(f.reclaim.p50_ms, Some(8000));
        assert_eq!(f.by_invariant["late_reclaim"], 1);
        h.faults[0].at = 6000;
        let f = check(&h);
        assert_eq!(f.by_invariant["late_reclaim"], 0);
        assert_eq!(f.reclaim.max_ms, Some(3000));
    }

    #[test]
    fn a_reclaim_delayed_by_a_control_plane_fault_is_due_after_it_heals() {
        let mut ev = Events(Vec::new());
        ev.push(1, 0, "enqueued", 0, "client")
            .push_by(1, 100, "claimed", 1, "executor", Some("w-a"), None)
            .push_by(
                1,
                12_000,
                "retryable",
                1,
                "reaper",
                None,
                Some("heartbeat_lost"),
            )
            .push(1, 12_100, "available", 1, "engine")
            .push_by(1, 12_200, "claimed", 2, "executor", Some("w-b"), None)
            .push(1, 12_300, "succeeded", 2, "executor");
        let mut h = clean();
        h.jobs = vec![job(1, "q", "succeeded")];
        h.events = ev.0;
        h.acknowledged = vec![1];
        h.accepted_writes.clear();
        let fault = |kind: &str, target: &str, at, healed_at, ids: &[&str]| InjectedFault {
            kind: kind.into(),
            target: target.into(),
            at,
            healed_at,
            identities: ids.iter().map(|s| s.to_string()).collect(),
            skipped: None,
        };
        h.faults = vec![fault("kill_worker", "worker:0", 1000, 2000, &["w-a"])];
        assert_eq!(
            check(&h).by_invariant["late_reclaim"],
            1,
            "11 s with no excuse"
        );
        // The database was down until 9 s: due at 9 s, reclaimed 3 s later.
        h.faults
            .push(fault("pg_restart", "database", 2500, 9000, &[]));
        let f = check(&h);
        assert_eq!(f.by_invariant["late_reclaim"], 0);
        assert_eq!(f.reclaim.max_ms, Some(11_000));
        assert_eq!(f.reclaim_after_due.max_ms, Some(3000));
    }
}
