//! The report of a chaos run: JSON for machines, a table for people.
//!
//! Figures come from the history alone: jobs by final state, faults by kind
//! (planned, injected, skipped), violations by invariant, reclaim latency,
//! and throughput (jobs finished per second) in the calm phase against the
//! fault phase.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::check::{Findings, Latencies};
use crate::history::History;
use crate::run::RunFacts;

#[derive(Debug, Clone, Serialize)]
pub struct FaultCount {
    pub planned: usize,
    pub injected: usize,
    pub skipped: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub command: String,
    pub calm_seconds: f64,
    pub chaos_seconds: f64,
    pub jobs: usize,
    pub jobs_by_state: BTreeMap<String, usize>,
    pub events: usize,
    pub faults: BTreeMap<String, FaultCount>,
    pub faults_injected: usize,
    pub violations: usize,
    pub violations_by_invariant: BTreeMap<String, usize>,
    /// The first violations, for a look.
    pub examples: Vec<crate::check::Violation>,
    pub reclaim_latency: Latencies,
    pub reclaim_after_due: Latencies,
    pub throughput_calm_per_s: f64,
    pub throughput_chaos_per_s: f64,
    pub max_running: BTreeMap<String, u64>,
    pub caps: crate::history::Caps,
    pub network_namespaces: bool,
    pub drained: bool,
}

impl Report {
    /// The planned fault kinds of which not one was injected (a missing
    /// tool, say): a run that never struck a kind it promised proves
    /// nothing about it, so it does not pass.
    pub fn kinds_never_injected(&self) -> Vec<&str> {
        never_injected(&self.faults)
    }
}

fn never_injected(faults: &BTreeMap<String, FaultCount>) -> Vec<&str> {
    faults
        .iter()
        .filter(|(_, c)| c.planned > 0 && c.injected == 0)
        .map(|(k, _)| k.as_str())
        .collect()
}

fn finished_per_second(h: &History, (from, to): (i64, i64)) -> f64 {
    if to <= from {
        return 0.0;
    }
    let n = h
        .jobs
        .iter()
        .filter(|j| j.finished_at.is_some_and(|t| t >= from && t < to))
        .count();
    n as f64 / ((to - from) as f64 / 1000.0)
}

pub fn build(seed: u64, command: String, h: &History, f: &Findings, facts: &RunFacts) -> Report {
    let mut faults: BTreeMap<String, FaultCount> = BTreeMap::new();
    for (kind, n) in &facts.planned {
        faults.insert(
            kind.clone(),
            FaultCount {
                planned: *n,
                injected: 0,
                skipped: 0,
            },
        );
    }
    for x in &h.faults {
        let e = faults.entry(x.kind.clone()).or_insert(FaultCount {
            planned: 0,
            injected: 0,
            skipped: 0,
        });
        if x.skipped.is_some() {
            e.skipped += 1;
        } else {
            e.injected += 1;
        }
    }
    Report {
        seed,
        command,
        calm_seconds: (h.calm.1 - h.calm.0) as f64 / 1000.0,
        chaos_seconds: (h.chaos.1 - h.chaos.0) as f64 / 1000.0,
        jobs: h.jobs.len(),
        jobs_by_state: f.jobs_by_state.clone(),
        events: h.events.len(),
        faults_injected: faults.values().map(|c| c.injected).sum(),
        faults,
        violations: f.violations.len(),
        violations_by_invariant: f.by_invariant.clone(),
        examples: f.violations.iter().take(20).cloned().collect(),
        reclaim_latency: f.reclaim.clone(),
        reclaim_after_due: f.reclaim_after_due.clone(),
        throughput_calm_per_s: finished_per_second(h, h.calm),
        throughput_chaos_per_s: finished_per_second(h, h.chaos),
        max_running: f.max_running.clone(),
        caps: h.caps.clone(),
        network_namespaces: facts.network_namespaces,
        drained: facts.drained,
    }
}

fn ms(v: Option<i64>) -> String {
    v.map_or("-".into(), |v| format!("{v} ms"))
}

/// The human table.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "reeve chaos run, seed {}", r.seed);
    let _ = writeln!(s, "command: {}", r.command);
    let _ = writeln!(
        s,
        "phases: calm {:.0} s, faults {:.0} s; worker network namespaces: {}; drained: {}",
        r.calm_seconds,
        r.chaos_seconds,
        if r.network_namespaces {
            "yes"
        } else {
            "no (loopback)"
        },
        if r.drained { "yes" } else { "NO" }
    );
    let states: Vec<String> = r
        .jobs_by_state
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        s,
        "jobs: {} ({}), events: {}",
        r.jobs,
        states.join(", "),
        r.events
    );
    let _ = writeln!(
        s,
        "\n{:<14} {:>8} {:>9} {:>8}",
        "fault", "planned", "injected", "skipped"
    );
    for (kind, c) in &r.faults {
        let _ = writeln!(
            s,
            "{kind:<14} {:>8} {:>9} {:>8}",
            c.planned, c.injected, c.skipped
        );
    }
    let _ = writeln!(s, "{:<14} {:>8} {:>9}", "total", "", r.faults_injected);
    let never = r.kinds_never_injected();
    if !never.is_empty() {
        let _ = writeln!(s, "NEVER INJECTED (the run fails): {}", never.join(", "));
    }
    let _ = writeln!(s, "\n{:<24} {:>10}", "invariant", "violations");
    for (inv, n) in &r.violations_by_invariant {
        let _ = writeln!(s, "{inv:<24} {n:>10}");
    }
    let _ = writeln!(s, "{:<24} {:>10}", "total", r.violations);
    let _ = writeln!(
        s,
        "\nreclaim latency (fault → reaped), {} orphaned runs: p50 {}, p99 {}, max {}",
        r.reclaim_latency.count,
        ms(r.reclaim_latency.p50_ms),
        ms(r.reclaim_latency.p99_ms),
        ms(r.reclaim_latency.max_ms)
    );
    let _ = writeln!(
        s,
        "reclaimed after due (heartbeat timeout, or the heal of a daemon/database fault in the way): p50 {}, p99 {}, max {} (allowed {} ms)",
        ms(r.reclaim_after_due.p50_ms),
        ms(r.reclaim_after_due.p99_ms),
        ms(r.reclaim_after_due.max_ms),
        crate::check::RECLAIM_MARGIN_MS
    );
    let ratio = if r.throughput_calm_per_s > 0.0 {
        r.throughput_chaos_per_s / r.throughput_calm_per_s
    } else {
        0.0
    };
    let _ = writeln!(
        s,
        "throughput: {:.2} jobs/s calm, {:.2} jobs/s under faults ({:.2}×)",
        r.throughput_calm_per_s, r.throughput_chaos_per_s, ratio
    );
    let caps: Vec<String> = r
        .max_running
        .iter()
        .map(|(q, n)| {
            let cap = if q == "*" {
                r.caps.global
            } else {
                r.caps.queues.get(q).copied()
            };
            match cap {
                Some(c) => format!("{q} {n}/{c}"),
                None => format!("{q} {n}"),
            }
        })
        .collect();
    let _ = writeln!(
        s,
        "most running at once (replayed, * = all): {}",
        caps.join(", ")
    );
    for v in &r.examples {
        let _ = writeln!(
            s,
            "  violation {} job {:?}: {}",
            v.invariant, v.job, v.detail
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planned_kind_never_injected_is_named() {
        let count = |planned, injected| FaultCount {
            planned,
            injected,
            skipped: planned - injected,
        };
        let faults = BTreeMap::from([
            ("kill_worker".to_string(), count(10, 10)),
            ("net_loss".to_string(), count(10, 0)),
            ("pg_restart".to_string(), count(10, 1)),
            ("net_cut".to_string(), count(0, 0)),
        ]);
        assert_eq!(never_injected(&faults), vec!["net_loss"]);
    }
}
