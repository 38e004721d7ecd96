//! The fault plan: which fault strikes when, whom, and for how long.
//!
//! **Invariant:** the plan is a pure function of [`PlanParams`] (the seed and
//! the fleet's shape), so the same seed always gives the same plan
//! (`reeve-chaos plan --seed N` prints it). Targets are chosen so that two
//! planned faults never hold the same process at once; the leader is only
//! known at run time, so `kill_leader` names no index.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// Every kind of fault the harness injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// `kill -9` of a `reeve worker`, restarted after the hold.
    KillWorker,
    /// `kill -9` of a daemon, restarted after the hold.
    KillDaemon,
    /// `kill -9` of whichever daemon leads at that moment.
    KillLeader,
    /// SIGSTOP of a worker for longer than the heartbeat timeout, then SIGCONT.
    PauseWorker,
    /// SIGSTOP of a daemon for longer than the heartbeat timeout, then SIGCONT.
    PauseDaemon,
    /// The link between a worker's network namespace and the daemons down.
    NetCut,
    /// Packet loss (`tc netem`) on a worker's link.
    NetLoss,
    /// PostgreSQL stopped and started again.
    PgRestart,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::KillWorker,
        FaultKind::KillDaemon,
        FaultKind::KillLeader,
        FaultKind::PauseWorker,
        FaultKind::PauseDaemon,
        FaultKind::NetCut,
        FaultKind::NetLoss,
        FaultKind::PgRestart,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::KillWorker => "kill_worker",
            FaultKind::KillDaemon => "kill_daemon",
            FaultKind::KillLeader => "kill_leader",
            FaultKind::PauseWorker => "pause_worker",
            FaultKind::PauseDaemon => "pause_daemon",
            FaultKind::NetCut => "net_cut",
            FaultKind::NetLoss => "net_loss",
            FaultKind::PgRestart => "pg_restart",
        }
    }

    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether the fault needs worker network namespaces.
    pub fn needs_netns(self) -> bool {
        matches!(self, FaultKind::NetCut | FaultKind::NetLoss)
    }
}

/// Whom a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "index")]
pub enum Target {
    Worker(usize),
    Daemon(usize),
    /// The daemon that leads when the fault strikes.
    Leader,
    Database,
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Milliseconds from the start of the fault phase.
    pub at_ms: u64,
    pub kind: FaultKind,
    pub target: Target,
    /// How long the fault holds (down, paused, cut) before it heals.
    pub hold_ms: u64,
    /// Packet loss in percent, for `net_loss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_percent: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanParams {
    pub seed: u64,
    /// Length of the fault phase.
    pub duration_ms: u64,
    pub workers: usize,
    pub daemons: usize,
    /// Faults of each kind.
    pub per_kind: u32,
    pub kinds: Vec<FaultKind>,
    pub heartbeat_timeout_ms: u64,
}

/// The hold of a fault of `kind`: restarts come back quickly; pauses and cuts
/// outlast the heartbeat timeout, so the runs they hold are orphaned.
fn hold_range(kind: FaultKind, heartbeat_timeout_ms: u64) -> (u64, u64) {
    let hb = heartbeat_timeout_ms;
    match kind {
        FaultKind::KillWorker | FaultKind::KillDaemon | FaultKind::KillLeader => (300, 1500),
        FaultKind::PauseWorker | FaultKind::PauseDaemon | FaultKind::NetCut => {
            (hb + hb / 4, hb * 2)
        }
        FaultKind::NetLoss => (hb, hb * 2),
        FaultKind::PgRestart => (200, 1500),
    }
}

/// Generates the plan: `per_kind` faults of each kind, spread over the
/// duration (one per equal slot, at a seeded point inside it), sorted by time.
pub fn generate(p: &PlanParams) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(p.seed);
    let mut faults = Vec::new();
    for &kind in &p.kinds {
        if p.per_kind == 0 {
            continue;
        }
        let slot = (p.duration_ms / u64::from(p.per_kind)).max(1);
        let (lo, hi) = hold_range(kind, p.heartbeat_timeout_ms);
        for i in 0..u64::from(p.per_kind) {
            // Leave room at the end of the slot for the hold to heal.
            let at_ms = i * slot + rng.random_range(0..slot.max(2) / 2);
            let hold_ms = rng.random_range(lo..=hi);
            let loss_percent = (kind == FaultKind::NetLoss).then(|| rng.random_range(20..=60));
            let target = match kind {
                FaultKind::KillWorker
                | FaultKind::PauseWorker
                | FaultKind::NetCut
                | FaultKind::NetLoss => Target::Worker(rng.random_range(0..p.workers.max(1))),
                FaultKind::KillDaemon | FaultKind::PauseDaemon => {
                    Target::Daemon(rng.random_range(0..p.daemons.max(1)))
                }
                FaultKind::KillLeader => Target::Leader,
                FaultKind::PgRestart => Target::Database,
            };
            faults.push(Fault {
                at_ms,
                kind,
                target,
                hold_ms,
                loss_percent,
            });
        }
    }
    faults.sort_by_key(|f| (f.at_ms, f.kind));
    separate(&mut faults, &mut rng, p);
    faults
}

/// Moves faults so that no two hold the same process at once: a fault whose
/// target is still held is given another free target of its kind, or waits
/// until its target heals.
fn separate(faults: &mut [Fault], rng: &mut StdRng, p: &PlanParams) {
    let mut worker_busy = vec![0u64; p.workers.max(1)];
    let mut daemon_busy = vec![0u64; p.daemons.max(1)];
    let mut database_busy = 0u64;
    // A gap after a target heals before it is struck again, so a restarted
    // process gets to register and run.
    const SETTLE_MS: u64 = 500;
    for f in faults.iter_mut() {
        let busy: &mut [u64] = match f.target {
            Target::Worker(_) => &mut worker_busy,
            Target::Daemon(_) => &mut daemon_busy,
            Target::Database => std::slice::from_mut(&mut database_busy),
            Target::Leader => continue,
        };
        let at = f.at_ms;
        let free: Vec<usize> = (0..busy.len()).filter(|&i| busy[i] <= at).collect();
        let index = if free.is_empty() {
            let (i, until) = busy
                .iter()
                .enumerate()
                .min_by_key(|(_, u)| **u)
                .map(|(i, u)| (i, *u))
                .expect("at least one target");
            f.at_ms = until;
            i
        } else {
            free[rng.random_range(0..free.len())]
        };
        busy[index] = f.at_ms + f.hold_ms + SETTLE_MS;
        f.target = match f.target {
            Target::Worker(_) => Target::Worker(index),
            Target::Daemon(_) => Target::Daemon(index),
            other => other,
        };
    }
    faults.sort_by_key(|f| (f.at_ms, f.kind));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: u64) -> PlanParams {
        PlanParams {
            seed,
            duration_ms: 600_000,
            workers: 3,
            daemons: 3,
            per_kind: 100,
            kinds: FaultKind::ALL.to_vec(),
            heartbeat_timeout_ms: 2000,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        assert_eq!(generate(&params(7)), generate(&params(7)));
        assert_ne!(generate(&params(7)), generate(&params(8)));
    }

    #[test]
    fn every_kind_gets_its_count_and_pauses_outlast_the_heartbeat_timeout() {
        let plan = generate(&params(1));
        for kind in FaultKind::ALL {
            let of_kind: Vec<_> = plan.iter().filter(|f| f.kind == kind).collect();
            assert_eq!(of_kind.len(), 100, "{kind:?}");
            if matches!(kind, FaultKind::PauseWorker | FaultKind::PauseDaemon) {
                assert!(of_kind.iter().all(|f| f.hold_ms > 2000));
            }
        }
        assert!(plan.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    }

    #[test]
    fn no_two_faults_hold_one_process_at_once() {
        let plan = generate(&params(3));
        for (i, a) in plan.iter().enumerate() {
            if a.target == Target::Leader {
                continue;
            }
            for b in &plan[i + 1..] {
                if b.target == a.target {
                    assert!(
                        b.at_ms >= a.at_ms + a.hold_ms,
                        "{a:?} and {b:?} overlap on one target"
                    );
                }
            }
        }
    }
}
