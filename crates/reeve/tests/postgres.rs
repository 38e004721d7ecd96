//! Black-box tests of several daemons on one PostgreSQL database: leader
//! election and takeover, a leader whose connection is cut, claims spread
//! over daemons under caps, a process clock minutes off, and passwords that
//! never leak. Each test works in its own schema, dropped at the end.
//!
//! They need the server of `REEVE_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and `psql`. Without a server
//! they are skipped with a line saying so, except under CI (`CI` set), where
//! that is a failure.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, pid_alive, wait_until};
use serde_json::json;

use common::pg::{Schema, psql, url as pg_url};

/// What these tests add to the shared schema helper.
impl Schema {
    fn config(&self, extra: &str) -> String {
        format!(
            "[postgres]\nschema = \"{}\"\n[retry]\nbase = \"200ms\"\nmax = \"1s\"\njitter = 0.0\n[executor]\nslots = 4\nkill_grace = \"1s\"\n{extra}",
            self.0
        )
    }

    /// The backend pid holding this schema's leader lock, if any.
    fn leader_backend(&self) -> Option<i32> {
        let sql = format!(
            "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = 'reeve-leader-{}'",
            self.0
        );
        psql(&sql)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
    }
}

fn start(dir: &std::path::Path, name: &str, schema: &Schema, extra: &str) -> Daemon {
    Daemon::start_with(dir, name, &pg_url(), &schema.config(extra), &[])
}

fn is_leader(d: &Daemon) -> bool {
    d.api("GET", "/v1/status", None).1["leader"] == true
}

fn leaders(daemons: &[&Daemon]) -> usize {
    daemons.iter().filter(|d| is_leader(d)).count()
}

/// The `ts=` of the first log line of `d` containing `needle`.
fn log_time(d: &Daemon, needle: &str) -> Option<String> {
    let text = std::fs::read_to_string(&d.log).ok()?;
    let line = text.lines().find(|l| l.contains(needle))?;
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix("ts="))
        .map(str::to_string)
}

#[test]
fn one_leader_at_a_time_and_a_fast_takeover_after_kill_9() {
    let Some(schema) = Schema::new("leader") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut daemons: Vec<Daemon> = (0..3)
        .map(|i| start(dir.path(), &format!("d{i}"), &schema, ""))
        .collect();
    wait_until("a leader", Duration::from_secs(15), || {
        leaders(&daemons.iter().collect::<Vec<_>>()) == 1
    });
    for _ in 0..10 {
        assert_eq!(
            leaders(&daemons.iter().collect::<Vec<_>>()),
            1,
            "exactly one leader"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = daemons
        .iter()
        .map(|d| {
            let (_, body) = common::request("GET", &format!("{}/metrics", d.url), None);
            body.as_str()
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("reeve_leader "))
                .unwrap()
                .to_string()
        })
        .collect::<Vec<_>>();
    assert_eq!(
        metrics.iter().filter(|l| l.ends_with(" 1")).count(),
        1,
        "{metrics:?}"
    );
    let leader = daemons.iter().position(is_leader).unwrap();
    let mut old = daemons.remove(leader);
    old.kill9();
    let killed = Instant::now();
    wait_until("a new leader", Duration::from_secs(15), || {
        leaders(&daemons.iter().collect::<Vec<_>>()) == 1
    });
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(6), "takeover took {took:?}");
    for d in daemons {
        d.stop();
    }
}

#[test]
fn a_leader_whose_connection_is_cut_stops_before_another_starts() {
    let Some(schema) = Schema::new("cut") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), "a", &schema, "");
    wait_until("a leads", Duration::from_secs(15), || is_leader(&a));
    let b = start(dir.path(), "b", &schema, "");
    std::thread::sleep(Duration::from_secs(1));
    assert!(!is_leader(&b));
    let pid = schema.leader_backend().expect("the leader's lock session");
    psql(&format!("SELECT pg_terminate_backend({pid})")).unwrap();
    wait_until("a stops leading", Duration::from_secs(10), || {
        !is_leader(&a) || log_time(&a, "lost leadership").is_some()
    });
    wait_until("someone leads again", Duration::from_secs(15), || {
        is_leader(&a) || is_leader(&b)
    });
    let lost = log_time(&a, "lost leadership").expect("the old leader logged its loss");
    let new_leader = if is_leader(&b) { &b } else { &a };
    let gained = std::fs::read_to_string(&new_leader.log)
        .unwrap()
        .lines()
        .rev()
        .filter(|l| l.contains("became leader"))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix("ts="))
                .map(str::to_string)
        })
        .unwrap();
    assert!(
        lost < gained,
        "the old leader stopped ({lost}) before the new one started ({gained})"
    );
    a.stop();
    b.stop();
}

/// A SIGSTOPped leader keeps its session and its lock while doing nothing;
/// the other daemon ends that session once it is stale, takes over, and
/// reaps the frozen daemon's run — not only once the leader wakes.
#[test]
fn a_frozen_leader_is_deposed_and_its_orphaned_run_reaped() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Some(schema) = Schema::new("frozen") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), "a", &schema, "");
    wait_until("a leads", Duration::from_secs(15), || is_leader(&a));
    let id = a.enqueue(json!({
        "kind": "sleeper",
        "command": ["sh", "-c", "sleep 10"],
        "heartbeat_timeout": "2s",
        "max_attempts": 2,
    }));
    wait_until("a runs the job", Duration::from_secs(10), || {
        a.job(id)["state"] == "running"
    });
    let b = start(dir.path(), "b", &schema, "");
    std::thread::sleep(Duration::from_millis(700));
    assert!(!is_leader(&b));
    let pid = Pid::from_raw(a.child.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let frozen = Instant::now();
    wait_until("b takes over", Duration::from_secs(15), || is_leader(&b));
    let took = frozen.elapsed();
    wait_until("the frozen run is reaped", Duration::from_secs(15), || {
        b.events(id).iter().any(|e| e["reason"] == "heartbeat_lost")
    });
    let reaped = frozen.elapsed();
    kill(pid, Signal::SIGCONT).unwrap();
    // STALE_AFTER (3 s) + the takeover grace (2 s) + confirmation slack.
    assert!(took < Duration::from_secs(8), "takeover took {took:?}");
    assert!(reaped < Duration::from_secs(9), "reaping took {reaped:?}");
    assert!(
        std::fs::read_to_string(&b.log)
            .unwrap()
            .contains("event=leader_deposed"),
        "b says it deposed the frozen leader"
    );
    wait_until("a steps down on waking", Duration::from_secs(10), || {
        !is_leader(&a)
    });
    for _ in 0..5 {
        assert_eq!(leaders(&[&a, &b]), 1, "exactly one leader");
        std::thread::sleep(Duration::from_millis(100));
    }
    a.stop();
    b.stop();
}

#[test]
fn daemons_share_the_work_under_caps_and_run_each_job_once() {
    let Some(schema) = Schema::new("share") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let extra = "[limits]\nglobal = 2\n[queues.q1]\nconcurrency = 1\n";
    let daemons: Vec<Daemon> = (0..3)
        .map(|i| start(dir.path(), &format!("d{i}"), &schema, extra))
        .collect();
    let mut ids = Vec::new();
    for i in 0..30 {
        let queue = if i % 2 == 0 { "q1" } else { "q2" };
        ids.push(
            daemons[i % 3]
                .enqueue(json!({"queue": queue, "kind": "w", "command": ["sleep", "0.05"]})),
        );
    }
    wait_until("all succeeded", Duration::from_secs(90), || {
        let (_, status) = daemons[0].api("GET", "/v1/status", None);
        assert!(
            status["running"].as_u64().unwrap() <= 2,
            "sampled over the global cap"
        );
        status["by_state"]["succeeded"].as_u64().unwrap() == ids.len() as u64
    });
    let mut history = Vec::new();
    let mut workers = std::collections::HashSet::new();
    for id in &ids {
        let job = daemons[1].job(*id);
        let events = daemons[1].events(*id);
        assert_eq!(
            events.iter().filter(|e| e["event"] == "succeeded").count(),
            1,
            "job {id} ran once"
        );
        for e in events {
            if e["event"] == "claimed" {
                workers.insert(e["worker"].as_str().unwrap().to_string());
            }
            history.push((
                e["id"].as_i64().unwrap(),
                e["event"].as_str().unwrap().to_string(),
                job["queue"].clone(),
            ));
        }
    }
    history.sort_by_key(|h| h.0);
    let (mut total, mut q1) = (0, 0);
    for (_, event, queue) in &history {
        let delta = match event.as_str() {
            "claimed" => 1,
            "succeeded" | "failed" | "retryable" | "cancelled" => -1,
            _ => 0,
        };
        total += delta;
        if queue == "q1" {
            q1 += delta;
        }
        assert!(total <= 2 && q1 <= 1, "cap exceeded in the history");
    }
    assert!(workers.len() >= 2, "work spread over daemons: {workers:?}");
    for d in daemons {
        d.stop();
    }
}

/// A daemon whose process clock is ten minutes fast leads: it keeps its own
/// runs alive and reaps another daemon's dead run on time, because every
/// lease comparison uses the database's clock.
#[test]
fn a_process_clock_minutes_off_changes_no_lease() {
    let Some(schema) = Schema::new("skew") else {
        return;
    };
    let Some(libfaketime) = libfaketime() else {
        // scripts/test.sh installs the faketime package when it can; if it
        // could not (no package mirror), say so rather than fail the run.
        let _ = writeln!(
            std::io::stderr(),
            "skipping the clock-skew test: libfaketime is not installed (apt-get install faketime)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let skewed_config = schema.config("");
    // `env` execs the daemon in place (same pid), with the process clock ten
    // minutes fast and the monotonic clock left alone.
    let preload = format!("LD_PRELOAD={libfaketime}");
    let skew = [
        "env",
        &preload,
        "FAKETIME=+10m",
        "FAKETIME_DONT_FAKE_MONOTONIC=1",
    ];
    let fast = Daemon::start_with(dir.path(), "fast", &pg_url(), &skewed_config, &skew);
    wait_until("the skewed daemon leads", Duration::from_secs(15), || {
        is_leader(&fast)
    });
    let logged = log_time(&fast, "reeve listening").expect("a start line");
    let real = jiff::Timestamp::now();
    let logged: jiff::Timestamp = logged.parse().unwrap();
    assert!(
        logged.duration_since(real) > jiff::SignedDuration::from_secs(9 * 60),
        "the daemon's process clock is skewed: it logged {logged} at {real}"
    );
    // Its own run outlives its heartbeat timeout twice over: extended, not reaped.
    let id =
        fast.enqueue(json!({"kind": "w", "command": ["sleep", "4"], "heartbeat_timeout": "2s"}));
    wait_until("succeeded", Duration::from_secs(30), || {
        fast.job(id)["state"] == "succeeded"
    });
    assert_eq!(
        fast.job(id)["attempt"],
        1,
        "never reaped while heartbeating"
    );
    fast.stop();

    // Now it leads without running jobs; a normal daemon runs one and dies.
    let leader = Daemon::start_with(
        dir.path(),
        "fast2",
        &pg_url(),
        &format!("{skewed_config}commands = false\n"),
        &skew,
    );
    wait_until("the skewed daemon leads", Duration::from_secs(15), || {
        is_leader(&leader)
    });
    let pidfile = dir.path().join("child.pid");
    let mut worker = start(dir.path(), "normal", &schema, "");
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let id = worker.enqueue(json!({"kind": "w", "command": ["sh", "-c", script], "heartbeat_timeout": "2s", "max_attempts": 1}));
    wait_until(
        "running on the normal daemon",
        Duration::from_secs(15),
        || pidfile.exists(),
    );
    std::thread::sleep(Duration::from_millis(500));
    worker.kill9();
    let killed = Instant::now();
    wait_until("reaped", Duration::from_secs(20), || {
        leader.job(id)["state"] == "failed"
    });
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_millis(1000),
        "reaped too early ({after:?}): a process clock was used"
    );
    assert!(
        after < Duration::from_secs(2 + 4),
        "reaped too late ({after:?})"
    );
    assert_eq!(leader.job(id)["failure_reason"], "heartbeat_lost");
    if let Ok(pid) = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse::<i32>()
        && pid_alive(pid)
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    leader.stop();
}

/// The libfaketime preload library, if installed.
fn libfaketime() -> Option<String> {
    let dirs = [
        "/usr/lib/x86_64-linux-gnu/faketime",
        "/usr/lib/aarch64-linux-gnu/faketime",
        "/usr/lib/faketime",
    ];
    dirs.iter()
        .map(|d| format!("{d}/libfaketime.so.1"))
        .find(|p| std::path::Path::new(p).exists())
}

/// A password given by reference never shows in logs, errors, /metrics or
/// the status.
#[test]
fn the_password_never_leaks() {
    let Some(schema) = Schema::new("secret") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = format!(
        "pw-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let pwfile = dir.path().join("pg.password");
    std::fs::write(&pwfile, format!("{secret}\n")).unwrap();
    let config = schema.config("").replacen(
        "[postgres]\n",
        &format!("[postgres]\npassword_file = \"{}\"\n", pwfile.display()),
        1,
    );
    let d = Daemon::start_with(dir.path(), "a", &pg_url(), &config, &[]);
    let id = d.enqueue(json!({"kind": "w", "command": ["true"]}));
    wait_until("succeeded", Duration::from_secs(20), || {
        d.job(id)["state"] == "succeeded"
    });
    let (_, metrics) = common::request("GET", &format!("{}/metrics", d.url), None);
    let (_, status) = d.api("GET", "/v1/status", None);
    let log = d.log.clone();
    d.stop();
    for (what, text) in [
        ("log", std::fs::read_to_string(&log).unwrap()),
        ("metrics", metrics.to_string()),
        ("status", status.to_string()),
    ] {
        assert!(
            !text.contains(&secret),
            "the password leaked into the {what}"
        );
    }
    // A failing start (nothing listens on port 1) names the target, not the password.
    let config_path = dir.path().join("bad.toml");
    std::fs::write(&config_path, &config).unwrap();
    let out = Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(&config_path)
        .args([
            "--db",
            "postgres://postgres@127.0.0.1:1/test",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains(&secret) && !String::from_utf8_lossy(&out.stdout).contains(&secret));
}

/// A throwaway server started by `scripts/pg-throwaway.sh`, stopped on drop.
struct Throwaway {
    dir: tempfile::TempDir,
    port: u16,
}

impl Throwaway {
    fn script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg-throwaway.sh")
    }

    fn start() -> Result<Throwaway, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        // The server runs as `postgres`, which must reach its data directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let port = common::free_port();
        let t = Throwaway { dir, port };
        t.run(&["start", &port.to_string()])?;
        Ok(t)
    }

    /// A server for `test`, or `None` (the test is skipped, and says so)
    /// where none can start; under CI that fails instead.
    fn for_test(test: &str) -> Option<Throwaway> {
        match Throwaway::start() {
            Ok(s) => Some(s),
            Err(e) if std::env::var_os("CI").is_none() => {
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping {test}: no throwaway server ({e})"
                );
                None
            }
            Err(e) => panic!("CI is set but a throwaway PostgreSQL could not start: {e}"),
        }
    }

    fn run(&self, args: &[&str]) -> Result<(), String> {
        let data = self.dir.path().join("pg");
        let out = Command::new("bash")
            .arg(Self::script())
            .arg(args[0])
            .arg(&data)
            .args(&args[1..])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = self.run(&["stop"]);
    }
}

/// The database goes down for seconds while jobs run: the daemon pauses
/// claiming, retries its write-backs, reconnects, and finishes every job
/// exactly once.
#[test]
fn a_database_restart_loses_and_duplicates_nothing() {
    let Some(server) = Throwaway::for_test("the database-restart test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = "[retry]\nbase = \"200ms\"\nmax = \"1s\"\njitter = 0.0\n[executor]\nslots = 4\n";
    let d = Daemon::start_with(dir.path(), "a", &server.url(), config, &[]);
    let ids: Vec<i64> = (0..24)
        .map(|_| {
            d.enqueue(json!({"kind": "w", "command": ["sleep", "0.3"], "heartbeat_timeout": "10s"}))
        })
        .collect();
    wait_until("some done", Duration::from_secs(20), || {
        d.api("GET", "/v1/status", None).1["by_state"]["succeeded"]
            .as_u64()
            .unwrap_or(0)
            >= 4
    });
    // Down for a while, then back.
    server.run(&["stop"]).expect("stop");
    std::thread::sleep(Duration::from_secs(3));
    server
        .run(&["start", &server.port.to_string()])
        .expect("start again");
    wait_until(
        "all succeeded after the restart",
        Duration::from_secs(60),
        || {
            let (status, body) = d.api("GET", "/v1/status", None);
            status == 200 && body["by_state"]["succeeded"].as_u64() == Some(ids.len() as u64)
        },
    );
    for id in &ids {
        let events = d.events(*id);
        assert_eq!(
            events.iter().filter(|e| e["event"] == "succeeded").count(),
            1,
            "job {id} ran once"
        );
    }
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains("level=warn"), "the outage was logged");
    d.stop();
}

/// A daemon started while its database is down (a host booting, or the
/// server restarting beside a crashed daemon) waits for it instead of
/// exiting, then serves; with `startup_wait = "0s"` it fails at once.
#[test]
fn a_daemon_started_while_its_database_is_down_waits_for_it() {
    let Some(server) = Throwaway::for_test("the startup-wait test") else {
        return;
    };
    server.run(&["stop"]).expect("stop");
    let dir = tempfile::tempdir().unwrap();
    let mut impatient = Daemon::spawn(
        dir.path(),
        "impatient",
        &server.url(),
        "[postgres]\nstartup_wait = \"0s\"\n",
        &[],
    );
    assert!(
        !impatient.wait_up(Duration::from_secs(20)),
        "with startup_wait = 0s the start fails"
    );
    let mut d = Daemon::spawn(dir.path(), "a", &server.url(), "", &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the daemon waits for its database instead of exiting"
    );
    server
        .run(&["start", &server.port.to_string()])
        .expect("start again");
    assert!(
        d.wait_up(Duration::from_secs(30)),
        "it comes up once the database does"
    );
    let id = d.enqueue(json!({"kind": "w", "command": ["true"]}));
    wait_until("succeeded", Duration::from_secs(20), || {
        d.job(id)["state"] == "succeeded"
    });
    d.stop();
}

/// Two daemons on one PostgreSQL fire an every-second schedule, and the
/// leader is killed with SIGKILL mid-way: every fire time still makes at most
/// one job, and firing goes on under the new leader.
#[test]
fn fire_times_make_one_job_each_across_daemons_and_a_leader_kill() {
    let Some(schema) = Schema::new("fire") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut daemons: Vec<Daemon> = (0..2)
        .map(|i| start(dir.path(), &format!("f{i}"), &schema, ""))
        .collect();
    let file = dir.path().join("race.toml");
    std::fs::write(
        &file,
        "[[schedule]]\nname = \"race\"\nevery = \"1s\"\noverlap = \"allow\"\n[schedule.job]\nkind = \"race\"\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let (code, _, err) = common::cli(&daemons[0].url, &["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let count = |d: &Daemon| {
        let (_, body) = d.api("GET", "/v1/jobs?kind=race&limit=1000", None);
        body["items"].as_array().map_or(0, Vec::len)
    };
    wait_until("four firings", Duration::from_secs(30), || {
        count(&daemons[0]) >= 4
    });
    wait_until("a leader", Duration::from_secs(15), || {
        leaders(&daemons.iter().collect::<Vec<_>>()) == 1
    });
    let leader = daemons.iter().position(is_leader).unwrap();
    let mut old = daemons.remove(leader);
    old.kill9();
    let survivor = daemons.remove(0);
    let before = count(&survivor);
    wait_until(
        "firing goes on under the new leader",
        Duration::from_secs(30),
        || count(&survivor) >= before + 3,
    );
    assert_eq!(
        common::cli(&survivor.url, &["schedules", "pause", "race"]).0,
        0
    );
    let (_, body) = survivor.api("GET", "/v1/jobs?kind=race&limit=1000", None);
    let mut nominals: Vec<String> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["nominal_at"].to_string())
        .collect();
    let all = nominals.len();
    nominals.sort();
    nominals.dedup();
    assert_eq!(nominals.len(), all, "one job per fire time");
    let dupes = psql(&format!(
        "SELECT count(*) FROM (SELECT nominal_at FROM {}.jobs WHERE schedule = 'race' \
         GROUP BY nominal_at HAVING count(*) > 1) d",
        schema.0
    ))
    .unwrap();
    assert_eq!(dupes, "0");
    survivor.stop();
}
