//! Black-box tests of the `reeve` binary: real daemons on real SQLite files,
//! killed with SIGKILL, several processes sharing one file, the CLI, and the
//! log contract.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Daemon, cli, pid_alive, wait_until};
use serde_json::{Value, json};

const BASE_CONFIG: &str = "[retry]\nbase = \"200ms\"\nmax = \"1s\"\njitter = 0.0\n[executor]\nslots = 4\nkill_grace = \"1s\"\n";

/// `kill -9` of the daemon mid-run: after a restart the orphaned run is
/// reclaimed within heartbeat_timeout (+ margin), not at max_run_duration,
/// and the job then succeeds.
#[test]
fn a_killed_daemons_runs_are_reclaimed_within_the_heartbeat_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reeve.db");
    let pidfile = dir.path().join("child.pid");
    let mut d = Daemon::start(dir.path(), "a", &db, BASE_CONFIG);
    let script = format!(
        "if [ \"$REEVE_ATTEMPT\" = 1 ]; then echo $$ > {}; exec sleep 60; fi; echo done",
        pidfile.display()
    );
    let id = d.enqueue(json!({
        "kind": "agent", "command": ["sh", "-c", script],
        "heartbeat_timeout": "2s", "max_run_duration": "10m"
    }));
    wait_until("child started", Duration::from_secs(20), || {
        pidfile.exists() && d.job(id)["state"] == "running"
    });
    let child_pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    d.kill9();
    let killed_at = Instant::now();
    // The orphaned child is still running: only the lease can tell.
    assert!(pid_alive(child_pid));
    let d = Daemon::start(dir.path(), "b", &db, BASE_CONFIG);
    wait_until("reclaimed", Duration::from_secs(20), || {
        d.job(id)["state"] != "running"
    });
    let reclaimed_after = killed_at.elapsed();
    assert!(
        reclaimed_after < Duration::from_secs(2 + 3),
        "reclaimed after {reclaimed_after:?}"
    );
    wait_until("succeeded", Duration::from_secs(20), || {
        d.job(id)["state"] == "succeeded"
    });
    let events = d.events(id);
    let lost = events
        .iter()
        .find(|e| e["reason"] == "heartbeat_lost")
        .expect("a heartbeat_lost event");
    assert_eq!(lost["by"], "reaper");
    assert_eq!(d.job(id)["attempt"], 2);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child_pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    d.stop();
}

/// `kill -9` of a run's child process: the run fails with `exit_code` and
/// is retried to success.
#[test]
fn a_killed_child_fails_its_attempt_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reeve.db");
    let pidfile = dir.path().join("child.pid");
    let d = Daemon::start(dir.path(), "a", &db, BASE_CONFIG);
    let script = format!(
        "if [ \"$REEVE_ATTEMPT\" = 1 ]; then echo $$ > {}; exec sleep 60; fi",
        pidfile.display()
    );
    let id = d.enqueue(json!({"kind": "agent", "command": ["sh", "-c", script]}));
    wait_until("child started", Duration::from_secs(20), || {
        pidfile.exists()
    });
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("succeeded", Duration::from_secs(20), || {
        d.job(id)["state"] == "succeeded"
    });
    let events = d.events(id);
    let failed = events.iter().find(|e| e["event"] == "retryable").unwrap();
    assert_eq!(failed["reason"], "exit_code");
    assert!(
        failed["detail"].as_str().unwrap().contains("signal 9"),
        "{failed}"
    );
    d.stop();
}

/// A run that keeps heartbeating but passes max_run_duration is ended as
/// `timeout` and its process is stopped.
#[test]
fn a_run_past_max_run_duration_times_out_and_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reeve.db");
    let pidfile = dir.path().join("child.pid");
    let d = Daemon::start(dir.path(), "a", &db, BASE_CONFIG);
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let id = d.enqueue(json!({
        "kind": "agent", "command": ["sh", "-c", script],
        "max_run_duration": "2s", "heartbeat_timeout": "600ms", "max_attempts": 1
    }));
    wait_until("failed", Duration::from_secs(20), || {
        d.job(id)["state"] == "failed"
    });
    let job = d.job(id);
    assert_eq!(job["failure_reason"], "timeout");
    assert!(
        job["heartbeat_count"].as_i64().unwrap() >= 2,
        "it was heartbeating: {job}"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until("process stopped", Duration::from_secs(10), || {
        !pid_alive(pid) || is_zombie(pid)
    });
    d.stop();
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) == Some("Z"))
        .unwrap_or(true)
}

/// Four daemons (separate processes, 4 slots each) share one SQLite file
/// under caps of 2 global / 1 per queue. Sampling never sees a cap exceeded,
/// the history replayed in commit order never shows one, and every job
/// succeeds exactly once.
#[test]
fn separate_processes_never_exceed_the_caps() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let config = format!(
        "{BASE_CONFIG}[limits]\nglobal = 2\n[queues.q1]\nconcurrency = 1\n[queues.q2]\nconcurrency = 1\n[queues.q3]\nconcurrency = 1\n"
    );
    let daemons: Vec<Daemon> = (0..4)
        .map(|i| Daemon::start(dir.path(), &format!("d{i}"), &db, &config))
        .collect();
    let mut ids = Vec::new();
    for i in 0..36 {
        let queue = format!("q{}", i % 3 + 1);
        ids.push(
            daemons[i % 4]
                .enqueue(json!({"queue": queue, "kind": "work", "command": ["sleep", "0.05"]})),
        );
    }
    let mut max_seen = 0;
    wait_until("all succeeded", Duration::from_secs(120), || {
        let (_, status) = daemons[0].api("GET", "/v1/status", None);
        let running = status["running"].as_u64().unwrap();
        max_seen = max_seen.max(running);
        assert!(
            running <= 2,
            "sampled {running} running under a global cap of 2"
        );
        status["by_state"]["succeeded"].as_u64().unwrap() == ids.len() as u64
    });
    let mut history = Vec::new();
    for id in &ids {
        let job = daemons[1].job(*id);
        let events = daemons[1].events(*id);
        assert_eq!(
            events.iter().filter(|e| e["event"] == "succeeded").count(),
            1,
            "job {id}"
        );
        for e in events {
            history.push((
                e["id"].as_i64().unwrap(),
                e["event"].as_str().unwrap().to_string(),
                job["queue"].clone(),
                e["worker"].clone(),
            ));
        }
    }
    history.sort_by_key(|h| h.0);
    let mut total = 0i32;
    let mut per_queue = std::collections::HashMap::new();
    let mut workers = std::collections::HashSet::new();
    for (_, event, queue, worker) in &history {
        let delta = match event.as_str() {
            "claimed" => {
                workers.insert(worker.to_string());
                1
            }
            "succeeded" | "failed" | "retryable" | "cancelled" => -1,
            _ => 0,
        };
        total += delta;
        let q = per_queue.entry(queue.to_string()).or_insert(0);
        *q += delta;
        assert!(
            total <= 2 && *q <= 1,
            "cap exceeded in the history: total {total}, {queue} {q}"
        );
    }
    assert!(workers.len() >= 2, "several processes claimed: {workers:?}");
    for d in daemons {
        d.stop();
    }
}

/// Parses one logfmt line into key/value pairs.
fn logfmt(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ' ')).collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'=').is_some() {
            if chars.next_if_eq(&'"').is_some() {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                value = std::iter::from_fn(|| chars.next_if(|c| *c != ' ')).collect();
            }
        }
        out.push((key, value));
    }
    out
}

/// The log lines of one job's life, parsed back, give its whole transition
/// sequence with epochs and workers.
#[test]
fn log_lines_replay_a_jobs_life() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reeve.db");
    let d = Daemon::start(dir.path(), "a", &db, BASE_CONFIG);
    let id = d.enqueue(
        json!({"kind": "flaky", "command": ["sh", "-c", "test \"$REEVE_ATTEMPT\" -ge 2"]}),
    );
    wait_until("succeeded", Duration::from_secs(20), || {
        d.job(id)["state"] == "succeeded"
    });
    let cancelled = d.enqueue(json!({"kind": "later", "command": ["true"], "delay": "1h"}));
    d.api("POST", &format!("/v1/jobs/{cancelled}/cancel"), None);
    let log = d.log.clone();
    d.stop();
    let lines: Vec<Vec<(String, String)>> = BufReader::new(std::fs::File::open(log).unwrap())
        .lines()
        .map(|l| logfmt(&l.unwrap()))
        .filter(|kv| kv.iter().any(|(k, _)| k == "event"))
        .collect();
    let field = |kv: &Vec<(String, String)>, k: &str| {
        kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
    };
    let life = |job: i64| -> Vec<(String, String, Option<String>)> {
        lines
            .iter()
            .filter(|kv| field(kv, "job").as_deref() == Some(job.to_string().as_str()))
            .map(|kv| {
                (
                    field(kv, "event").unwrap(),
                    field(kv, "epoch").unwrap(),
                    field(kv, "reason"),
                )
            })
            .collect()
    };
    let seq = life(id);
    let events: Vec<&str> = seq.iter().map(|(e, _, _)| e.as_str()).collect();
    assert_eq!(
        events,
        [
            "enqueued",
            "claimed",
            "retryable",
            "available",
            "claimed",
            "succeeded"
        ]
    );
    assert_eq!(seq[1].1, "1");
    assert_eq!(seq[2].2.as_deref(), Some("exit_code"));
    assert_eq!(seq[4].1, "2");
    let first_claim = lines
        .iter()
        .find(|kv| {
            field(kv, "job") == Some(id.to_string())
                && field(kv, "event").as_deref() == Some("claimed")
        })
        .unwrap();
    assert_eq!(field(first_claim, "queue").as_deref(), Some("default"));
    assert_eq!(field(first_claim, "kind").as_deref(), Some("flaky"));
    assert!(field(first_claim, "worker").is_some_and(|w| !w.is_empty()));
    let other: Vec<String> = life(cancelled).into_iter().map(|(e, _, _)| e).collect();
    assert_eq!(other, ["enqueued", "cancelled"]);
}

/// Invalid configuration stops startup with the key named, before anything
/// is created.
#[test]
fn bad_config_stops_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[executor]\nslotz = 2\n", "slotz"),
        (
            "[defaults]\nheartbeat_timeout = \"-5s\"\n",
            "heartbeat_timeout",
        ),
        ("[server]\nlisten = \"0.0.0.0:7433\"\n", "server.listen"),
        (
            "[server]\nschedules = [\"/nonexistent/schedules\"]\n",
            "server.schedules",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let db = dir.path().join("never.db");
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .arg("--db")
            .arg(format!("sqlite://{}", db.display()))
            .env_remove("REEVE_ADMIN_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
        assert!(!db.exists(), "nothing is created on a bad config");
    }
}

/// The CLI end to end: enqueue an ad-hoc command, follow it, inspect it,
/// change queues and limits, and get clear errors for bad input.
#[test]
fn the_cli_drives_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reeve.db");
    let d = Daemon::start(dir.path(), "a", &db, BASE_CONFIG);
    let (code, out, err) = cli(
        &d.url,
        &[
            "enqueue",
            "--queue",
            "ops",
            "--kind",
            "hello",
            "--",
            "sh",
            "-c",
            "echo hello from $REEVE_JOB_ID",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let id: i64 = out.trim().parse().expect("enqueue prints the id");
    let (code, out, _) = cli(&d.url, &["jobs", "logs", &id.to_string(), "--follow"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("hello from {id}")), "{out}");
    let (code, out, _) = cli(&d.url, &["jobs", "show", &id.to_string(), "--json"]);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["job"]["state"], "succeeded");
    for key in [
        "id",
        "queue",
        "kind",
        "state",
        "priority",
        "attempt",
        "max_attempts",
        "epoch",
        "claimed_by",
        "claimed_at",
        "heartbeat_at",
        "lease_expires_at",
        "failure_reason",
        "idempotency_key",
        "unique_key",
        "created_at",
        "finished_at",
    ] {
        assert!(shown["job"].get(key).is_some(), "job JSON lacks {key}");
    }
    let (code, out, _) = cli(&d.url, &["jobs", "list", "--state", "succeeded"]);
    assert_eq!(code, 0);
    assert!(out.contains("hello"), "{out}");
    assert_eq!(
        cli(&d.url, &["queues", "set", "ops", "--concurrency", "3"]).0,
        0
    );
    assert_eq!(cli(&d.url, &["queues", "pause", "ops"]).0, 0);
    let (_, out, _) = cli(&d.url, &["queues", "list", "--json"]);
    let queues: Value = serde_json::from_str(&out).unwrap();
    let ops = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "ops")
        .unwrap()
        .clone();
    assert_eq!(
        (ops["concurrency"].as_u64(), ops["paused"].as_bool()),
        (Some(3), Some(true))
    );
    assert_eq!(cli(&d.url, &["limits", "set", "--global", "5"]).0, 0);
    let (_, out, _) = cli(&d.url, &["status", "--json"]);
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["limits"]["global"], 5);
    // Bad input: a clear error naming the field, and nothing enqueued.
    let before = status["by_state"].clone();
    let (code, _, err) = cli(
        &d.url,
        &["enqueue", "--kind", "x", "--heartbeat-timeout", "-5s"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("heartbeat_timeout"), "{err}");
    let (code, _, err) = cli(
        &d.url,
        &["enqueue", "--kind", "x", "--payload", "{not json"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("payload"), "{err}");
    let (_, out, _) = cli(&d.url, &["status", "--json"]);
    let after: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(after["by_state"], before, "bad input changed nothing");
    d.stop();
}
