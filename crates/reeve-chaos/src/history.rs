//! The recorded history of a chaos run, and how it is gathered.
//!
//! **What this module owns.** [`History`] is everything the checker reads:
//! the store's jobs and their event history (read straight from PostgreSQL
//! after the run), the write-backs the workers logged as accepted, the side
//! effects the harness's idempotency ledger saw, the running counts sampled
//! during the run, the faults as injected, and the enqueues the harness saw
//! acknowledged. It is written to `history.json`, so a run can be checked
//! again later (`reeve-chaos check DIR`).
//!
//! **Invariant:** the history is read, never inferred: every field comes
//! from a row, a log line or a ledger file of the run.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// A job's final row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRow {
    pub id: i64,
    pub queue: String,
    pub kind: String,
    pub state: String,
    pub epoch: i64,
    pub attempt: i32,
    pub max_attempts: i32,
    pub idempotency_key: String,
    pub unique_key: Option<String>,
    pub schedule: Option<String>,
    pub nominal_at: Option<i64>,
    pub has_follow_up: bool,
    /// For a follow-up: its parent's id (from its payload).
    pub parent: Option<i64>,
    pub heartbeat_timeout_ms: i64,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub failure_reason: Option<String>,
}

/// One row of the store's event history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    pub id: i64,
    pub job_id: i64,
    /// Milliseconds since the Unix epoch (the database's clock).
    pub at: i64,
    pub event: String,
    pub epoch: i64,
    pub attempt: i32,
    pub worker: Option<String>,
    pub reason: Option<String>,
    pub actor: String,
}

/// A write-back a worker logged as accepted by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedWrite {
    pub worker: String,
    pub job_id: i64,
    pub epoch: i64,
    /// `complete` or `fail`.
    pub outcome: String,
}

/// One attempt at a side effect, as the ledger recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectAttempt {
    pub key: String,
    pub job_id: i64,
    pub epoch: i64,
    /// Whether this attempt applied the effect (`new`) or found it applied.
    pub applied: bool,
}

/// A sample of the running counts, taken in one snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningSample {
    pub at: i64,
    pub by_queue: BTreeMap<String, u64>,
}

/// A fault as it was injected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InjectedFault {
    pub kind: String,
    /// `worker:1`, `daemon:0`, `database`.
    pub target: String,
    /// Wall-clock milliseconds since the Unix epoch when it struck.
    pub at: i64,
    pub healed_at: i64,
    /// The executor identities (`claimed_by`) the target had when it struck.
    pub identities: Vec<String>,
    /// Why it was not injected, if it was not.
    pub skipped: Option<String>,
}

/// The caps in force during the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Caps {
    pub global: Option<u64>,
    pub queues: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub jobs: Vec<JobRow>,
    pub events: Vec<EventRow>,
    pub accepted_writes: Vec<AcceptedWrite>,
    pub effects: Vec<EffectAttempt>,
    pub samples: Vec<RunningSample>,
    pub faults: Vec<InjectedFault>,
    /// Job ids whose enqueue the harness saw acknowledged.
    pub acknowledged: Vec<i64>,
    pub caps: Caps,
    /// Where a configured secret (admin or worker token) was found in the
    /// run's logs, `/metrics`, `/v1/status` or the dashboard (must be none).
    #[serde(default)]
    pub secret_sightings: Vec<String>,
    /// reeve processes that exited without a fault ending them (a daemon
    /// that gave up, a worker that crashed): each is restarted, and each is
    /// a violation, as no fault may end a process for good.
    #[serde(default)]
    pub unplanned_exits: Vec<String>,
    /// Wall-clock bounds of the calm and the fault phases.
    pub calm: (i64, i64),
    pub chaos: (i64, i64),
}

impl History {
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    pub fn load(path: &Path) -> anyhow::Result<History> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

/// Reads the jobs and the events from the store's tables.
pub async fn read_store(pool: &sqlx::PgPool) -> anyhow::Result<(Vec<JobRow>, Vec<EventRow>)> {
    let jobs = sqlx::query(
        "SELECT id, queue, kind, state, epoch, attempt, max_attempts, COALESCE(idempotency_key, id::text), \
                unique_key, schedule, nominal_at, on_success IS NOT NULL, \
                CASE WHEN unique_key LIKE 'followup:%' THEN (payload::jsonb ->> 'parent')::bigint END, \
                heartbeat_timeout_ms, created_at, finished_at, failure_reason \
         FROM jobs ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .context("reading jobs")?
    .iter()
    .map(|r| {
        Ok(JobRow {
            id: r.try_get(0)?,
            queue: r.try_get(1)?,
            kind: r.try_get(2)?,
            state: r.try_get(3)?,
            epoch: r.try_get(4)?,
            attempt: r.try_get(5)?,
            max_attempts: r.try_get(6)?,
            idempotency_key: r.try_get(7)?,
            unique_key: r.try_get(8)?,
            schedule: r.try_get(9)?,
            nominal_at: r.try_get(10)?,
            has_follow_up: r.try_get(11)?,
            parent: r.try_get(12)?,
            heartbeat_timeout_ms: r.try_get(13)?,
            created_at: r.try_get(14)?,
            finished_at: r.try_get(15)?,
            failure_reason: r.try_get(16)?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let events = sqlx::query(
        "SELECT id, job_id, at, event, epoch, attempt, worker, reason, actor \
         FROM events ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .context("reading events")?
    .iter()
    .map(|r| {
        Ok(EventRow {
            id: r.try_get(0)?,
            job_id: r.try_get(1)?,
            at: r.try_get(2)?,
            event: r.try_get(3)?,
            epoch: r.try_get(4)?,
            attempt: r.try_get(5)?,
            worker: r.try_get(6)?,
            reason: r.try_get(7)?,
            actor: r.try_get(8)?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok((jobs, events))
}

/// The value of `key=` in a logfmt line: the line is read pair by pair, so
/// a quoted value (which may hold `key=` text itself) is never mistaken
/// for a field. Escapes inside quotes are kept as written.
pub fn logfmt_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && bytes[i] != b' ' {
            i += 1;
        }
        let name = &line[start..i];
        if i >= bytes.len() || bytes[i] == b' ' {
            continue; // a bare word
        }
        i += 1; // '='
        let value = if bytes.get(i) == Some(&b'"') {
            i += 1;
            let from = i;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            let v = line.get(from..i.min(bytes.len()))?;
            i += 1;
            v
        } else {
            let from = i;
            while i < bytes.len() && bytes[i] != b' ' {
                i += 1;
            }
            &line[from..i]
        };
        if name == key {
            return Some(value);
        }
    }
    None
}

/// The accepted write-backs in a worker's log (`event=written_back` lines).
pub fn accepted_writes(log: &str) -> Vec<AcceptedWrite> {
    log.lines()
        .filter(|l| logfmt_field(l, "event") == Some("written_back"))
        .filter_map(|l| {
            Some(AcceptedWrite {
                worker: logfmt_field(l, "worker").unwrap_or("").to_string(),
                job_id: logfmt_field(l, "job")?.parse().ok()?,
                epoch: logfmt_field(l, "epoch")?.parse().ok()?,
                outcome: logfmt_field(l, "outcome")?.to_string(),
            })
        })
        .collect()
}

/// The ledger's attempt lines: `KEY JOB EPOCH new|dup`.
pub fn effect_attempts(ledger: &str) -> Vec<EffectAttempt> {
    ledger
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some(EffectAttempt {
                key: it.next()?.to_string(),
                job_id: it.next()?.parse().ok()?,
                epoch: it.next()?.parse().ok()?,
                applied: it.next()? == "new",
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_fields_are_found_whole_and_quoted() {
        let line =
            r#"ts=1 level=INFO msg="a job=9 x" event=written_back job=12 epoch=3 outcome=complete"#;
        assert_eq!(logfmt_field(line, "job"), Some("12"));
        assert_eq!(logfmt_field(line, "msg"), Some("a job=9 x"));
        assert_eq!(logfmt_field(line, "epoch"), Some("3"));
        assert_eq!(logfmt_field(line, "ob"), None);
        let w = accepted_writes(line);
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].job_id, w[0].epoch), (12, 3));
    }

    #[test]
    fn ledger_lines_parse() {
        let a = effect_attempts("k1 4 1 new\nk1 4 2 dup\nbroken\n");
        assert_eq!(a.len(), 2);
        assert!(a[0].applied && !a[1].applied);
    }
}
