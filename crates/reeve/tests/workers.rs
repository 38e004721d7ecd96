//! Remote workers, black-box: `reeve worker` processes against a `reeve
//! serve` daemon on loopback. A worker killed with SIGKILL mid-run has its
//! run reclaimed within the heartbeat timeout and finished by another worker
//! from its checkpoint, and the dead worker's late write is refused; a
//! worker cut off from the daemon (the daemon stopped with SIGSTOP) kills
//! its child when its lease passes and reports nothing for it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, ChildGuard as Worker, Daemon, wait_until};
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-of-the-fleet-test";
const WORKER: &str = "worker-token-of-the-fleet-test";

/// An agent that counts to 6, checkpointing each step, resuming from its
/// checkpoint; it leaves its job token and pid where the test can see them.
const AGENT: &str = r#"
start=0
if [ -n "$REEVE_CHECKPOINT" ]; then start=$(cat "$REEVE_CHECKPOINT"); fi
echo "$REEVE_JOB_TOKEN" > "$OUT/token-$REEVE_ATTEMPT"
echo $$ > "$OUT/pid-$REEVE_ATTEMPT"
echo "attempt $REEVE_ATTEMPT resumed at $start"
i=$start
while [ "$i" -lt "$STEPS" ]; do
  i=$((i+1))
  printf '{"checkpoint": "%s", "progress": "step %s"}\n' "$i" "$i" >&3
  sleep "$NAP"
done
printf '{"result": {"resumed_at": %s}}\n' "$start" >&3
"#;

fn daemon(dir: &Path) -> Daemon {
    common::fleet_daemon(dir, ADMIN, WORKER)
}

fn worker(dir: &Path, url: &str, name: &str, steps: u32, nap: &str) -> Worker {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        // Braces are placeholders in command templates: double them.
        format!(
            "[kinds.agent]\ncommand = [\"sh\", \"-c\", {}]\n",
            toml_string(&AGENT.replace('{', "{{").replace('}', "}}"))
        ),
    )
    .unwrap();
    Command::new(BIN)
        .args([
            "worker",
            "--url",
            url,
            "--token-env",
            "FLEET_TOKEN",
            "--kinds",
            "agent",
            "--slots",
            "1",
            "--name",
            name,
            "--kill-grace",
            "1s",
            "--drain-grace",
            "1s",
        ])
        .arg("--config")
        .arg(&config)
        .env("FLEET_TOKEN", WORKER)
        .env("OUT", dir)
        .env("STEPS", steps.to_string())
        .env("NAP", nap)
        .env("REEVE_LOG", "info")
        .stdout(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .map(Worker)
        .expect("spawn reeve worker")
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn api(d: &Daemon, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    common::request_as(method, &format!("{}{path}", d.url), Some(token), body)
}

fn job(d: &Daemon, id: i64) -> Value {
    api(d, "GET", &format!("/v1/jobs/{id}"), ADMIN, None).1
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

fn alive(pid: i32) -> bool {
    common::pid_alive(pid)
}

#[test]
fn a_killed_worker_s_run_is_reclaimed_and_resumed_elsewhere_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let mut a = worker(dir.path(), &d.url, "worker-a", 8, "0.4");
    let (status, enq) = api(
        &d,
        "POST",
        "/v1/jobs",
        ADMIN,
        Some(json!({"kind": "agent", "max_attempts": 3})),
    );
    assert_eq!(status, 201, "{enq}");
    let id = enq["id"].as_i64().unwrap();
    // Running on worker A, with a checkpoint past step 2.
    wait_until("a checkpoint at step 3", Duration::from_secs(30), || {
        let (s, v) = api(&d, "GET", &format!("/v1/jobs/{id}/checkpoint"), ADMIN, None);
        s == 200 && v.as_i64().is_some_and(|n| n >= 3)
    });
    let first = job(&d, id);
    assert_eq!(first["state"], "running");
    let fleet = api(&d, "GET", "/v1/workers", ADMIN, None).1;
    let a_id = fleet["workers"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(first["claimed_by"], a_id.as_str());
    assert_eq!(fleet["workers"][0]["running"], 1);

    // SIGKILL the worker (its child is orphaned and keeps going, like a
    // crashed host's would not; it can no longer write anything back).
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let killed = Instant::now();
    let token_1 = std::fs::read_to_string(dir.path().join("token-1")).unwrap();
    wait_until("the run to be reaped", Duration::from_secs(20), || {
        job(&d, id)["epoch"] != 1 || job(&d, id)["state"] != "running"
    });
    let reclaimed = killed.elapsed();
    assert!(
        reclaimed < Duration::from_secs(3 + 3),
        "reclaimed after {reclaimed:?} (heartbeat timeout 3s)"
    );
    let events = api(&d, "GET", &format!("/v1/jobs/{id}/events"), ADMIN, None).1;
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "heartbeat_lost"),
        "{events}"
    );

    // Another worker finishes it, resuming from the checkpoint.
    let mut b = worker(dir.path(), &d.url, "worker-b", 8, "0.1");
    wait_until(
        "the job to succeed on worker B",
        Duration::from_secs(40),
        || job(&d, id)["state"] == "succeeded",
    );
    let done = job(&d, id);
    assert!(
        done["result"]["resumed_at"].as_i64().unwrap() >= 3,
        "resumed from the checkpoint: {done}"
    );
    assert_ne!(done["claimed_by"], a_id.as_str());
    assert!(done["epoch"].as_i64().unwrap() >= 2);

    // The dead worker's late write, with its own job token and epoch: refused.
    let (status, body) = api(
        &d,
        "POST",
        &format!("/v1/jobs/{id}/complete"),
        token_1.trim(),
        Some(json!({"epoch": 1, "result": {"late": true}})),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "stale_epoch");
    assert_eq!(
        job(&d, id)["result"]["late"],
        Value::Null,
        "nothing overwritten"
    );

    // Draining on SIGTERM: the worker deregisters and shows as gone.
    signal(b.0.id(), nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the worker did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out, _) = common::cli_with_token(&d.url, ADMIN, &["workers", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("worker-b") && out.contains("gone"), "{out}");
    if let Ok(pid) = std::fs::read_to_string(dir.path().join("pid-1")) {
        // The orphan of the killed worker finishes by itself; make sure.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid.trim().parse().unwrap_or(0)),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    d.stop();
}

#[test]
fn a_worker_cut_off_from_the_daemon_kills_its_child_and_reports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let w = worker(dir.path(), &d.url, "worker-c", 100, "0.2");
    let (_, enq) = api(
        &d,
        "POST",
        "/v1/jobs",
        ADMIN,
        Some(json!({"kind": "agent", "max_attempts": 1})),
    );
    let id = enq["id"].as_i64().unwrap();
    wait_until("the run to start", Duration::from_secs(30), || {
        dir.path().join("pid-1").exists() && job(&d, id)["state"] == "running"
    });
    std::thread::sleep(Duration::from_millis(300));
    let child: i32 = std::fs::read_to_string(dir.path().join("pid-1"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(child));

    // Cut the worker off: the daemon stops answering.
    signal(d.child.id(), nix::sys::signal::Signal::SIGSTOP);
    let cut = Instant::now();
    let deadline = cut + Duration::from_secs(15);
    while alive(child) {
        assert!(
            Instant::now() < deadline,
            "the child outlived the lease by far"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed_after = cut.elapsed();
    signal(d.child.id(), nix::sys::signal::Signal::SIGCONT);
    assert!(
        killed_after >= Duration::from_secs(1),
        "not before the lease could have passed: {killed_after:?}"
    );
    assert!(
        killed_after < Duration::from_secs(3 + 3),
        "killed {killed_after:?} after the cut (lease 3s, kill grace 1s)"
    );

    // Back: the daemon reaps the run; nothing was reported as a success.
    wait_until("the run to be reaped", Duration::from_secs(20), || {
        job(&d, id)["state"] == "failed"
    });
    let ended = job(&d, id);
    assert_eq!(ended["failure_reason"], "heartbeat_lost", "{ended}");
    let events = api(&d, "GET", &format!("/v1/jobs/{id}/events"), ADMIN, None).1;
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["event"] != "succeeded"),
        "{events}"
    );
    let log = std::fs::read_to_string(dir.path().join("worker-c.log")).unwrap();
    assert!(
        !log.contains("event=written_back"),
        "the worker wrote nothing back: {log}"
    );
    drop(w);
    d.stop();
}
