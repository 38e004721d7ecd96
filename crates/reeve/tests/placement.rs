//! Placement by labels, black-box (SPEC §6): two `reeve worker` processes,
//! one labelled `device=alice-mac`. Jobs that require that label run only on
//! it, however idle the other one is. When it is killed with SIGKILL mid-run,
//! the run is reaped after the heartbeat timeout and the job waits — and
//! says, in the API and in `reeve jobs show`, that it waits for a worker with
//! `device=alice-mac` — while the unlabelled worker never touches it; a new
//! worker with the label then finishes it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, ChildGuard as Worker, Daemon, wait_until};
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-of-the-placement-test";
const WORKER: &str = "worker-token-of-the-placement-test";
const WAITING: &str = "a worker with device=alice-mac";

/// Records which worker ran which attempt, then sleeps `$1` seconds on a
/// first attempt (0.1 s on a later one) as a single process, so killing
/// its pid ends it.
const AGENT: &str = r#"
echo "$NAME" >> "$OUT/ran-$REEVE_JOB_ID"
echo $$ > "$OUT/pid-$REEVE_JOB_ID-$REEVE_ATTEMPT"
nap="$1"
if [ "$REEVE_ATTEMPT" -gt 1 ]; then nap=0.1; fi
exec sleep "$nap"
"#;

fn daemon(dir: &Path) -> Daemon {
    common::fleet_daemon(dir, ADMIN, WORKER)
}

fn worker(dir: &Path, url: &str, name: &str, labels: &[&str]) -> Worker {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[kinds.agent]\ncommand = [\"sh\", \"-c\", {}, \"agent\", \"{{payload.nap}}\"]\n",
            serde_json::to_string(AGENT).unwrap()
        ),
    )
    .unwrap();
    let mut command = Command::new(BIN);
    command.args([
        "worker",
        "--url",
        url,
        "--token-env",
        "PLACEMENT_TOKEN",
        "--kinds",
        "agent",
        "--slots",
        "2",
        "--name",
        name,
        "--kill-grace",
        "1s",
        "--drain-grace",
        "1s",
    ]);
    for l in labels {
        command.args(["--label", l]);
    }
    command
        .arg("--config")
        .arg(&config)
        .env("PLACEMENT_TOKEN", WORKER)
        .env("OUT", dir)
        .env("NAME", name)
        .env("REEVE_LOG", "info")
        .stdout(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .map(Worker)
        .expect("spawn reeve worker")
}

/// Kills the run a killed worker left behind (its pid file names it), at
/// the end of the test whatever happens — only if that pid is still the
/// run's `sleep`, never a process that reused the number.
struct Orphan(PathBuf);

impl Drop for Orphan {
    fn drop(&mut self) {
        let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            return;
        };
        let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmd| cmd.starts_with(b"sleep\0"));
        if ours {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn api(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    common::request_as(method, &format!("{}{path}", d.url), Some(ADMIN), body)
}

fn enqueue(d: &Daemon, body: Value) -> i64 {
    let (status, job) = api(d, "POST", "/v1/jobs", Some(body));
    assert_eq!(status, 201, "{job}");
    job["id"].as_i64().unwrap()
}

fn job(d: &Daemon, id: i64) -> Value {
    api(d, "GET", &format!("/v1/jobs/{id}"), None).1
}

/// The registration id of the live worker called `name`.
fn worker_id(d: &Daemon, name: &str) -> String {
    let mut id = None;
    wait_until(
        &format!("{name} to register"),
        Duration::from_secs(20),
        || {
            let fleet = api(d, "GET", "/v1/workers", None).1;
            id = fleet["workers"].as_array().and_then(|ws| {
                ws.iter()
                    .find(|w| w["name"] == name && w["deregistered_at"].is_null())
                    .and_then(|w| w["id"].as_str().map(str::to_string))
            });
            id.is_some()
        },
    );
    id.unwrap()
}

/// The workers of the job's `claimed` events, in order.
fn claimers(d: &Daemon, id: i64) -> Vec<String> {
    api(d, "GET", &format!("/v1/jobs/{id}/events"), None).1["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "claimed")
        .map(|e| e["worker"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn ran_on(dir: &Path, id: i64) -> Vec<String> {
    std::fs::read_to_string(dir.join(format!("ran-{id}")))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn pinned_jobs_run_only_on_their_device_and_wait_for_it_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let _plain = worker(dir.path(), &d.url, "plain", &[]);
    let mut mac = worker(dir.path(), &d.url, "mac", &["device=alice-mac", "os=macos"]);
    let plain_id = worker_id(&d, "plain");
    let mac_id = worker_id(&d, "mac");

    // Pinned jobs queue up behind one slow pinned job on the mac while the
    // plain worker sits idle beside it; unpinned jobs run anywhere.
    let mut pinned = Vec::new();
    for nap in ["1", "0.2", "0.2", "0.2"] {
        pinned.push(enqueue(
            &d,
            json!({"kind": "agent", "payload": {"nap": nap}, "requires": ["device=alice-mac"]}),
        ));
    }
    let free: Vec<i64> = (0..4)
        .map(|_| enqueue(&d, json!({"kind": "agent", "payload": {"nap": "0.1"}})))
        .collect();
    wait_until("every job to succeed", Duration::from_secs(40), || {
        pinned
            .iter()
            .chain(&free)
            .all(|id| job(&d, *id)["state"] == "succeeded")
    });
    for id in &pinned {
        assert_eq!(claimers(&d, *id), [mac_id.as_str()], "job {id}");
        assert_eq!(ran_on(dir.path(), *id), ["mac"], "job {id}");
    }
    let plain_ran = free
        .iter()
        .filter(|id| ran_on(dir.path(), **id) == ["plain"])
        .count();
    assert!(plain_ran > 0, "the plain worker ran unpinned jobs");

    // A long pinned run; its worker is killed in the middle of it.
    let long = enqueue(
        &d,
        json!({"kind": "agent", "payload": {"nap": "60"}, "requires": ["device=alice-mac"],
               "max_attempts": 3}),
    );
    let _orphan = Orphan(dir.path().join(format!("pid-{long}-1")));
    wait_until("the long run to start", Duration::from_secs(20), || {
        dir.path().join(format!("pid-{long}-1")).exists() && job(&d, long)["state"] == "running"
    });
    assert_eq!(job(&d, long)["claimed_by"], mac_id.as_str());
    mac.0.kill().unwrap();
    mac.0.wait().unwrap();
    let killed = Instant::now();

    // Reaped after the heartbeat timeout, then waiting, and saying so.
    wait_until(
        "the job to wait for a worker with device=alice-mac",
        Duration::from_secs(20),
        || job(&d, long)["waiting_for"] == WAITING,
    );
    assert!(
        killed.elapsed() < Duration::from_secs(3 + 5),
        "waiting {:?} after the kill (heartbeat timeout 3s)",
        killed.elapsed()
    );
    let events = api(&d, "GET", &format!("/v1/jobs/{long}/events"), None).1;
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "heartbeat_lost"),
        "{events}"
    );
    let (code, out, err) = common::cli_with_token(
        &d.url,
        ADMIN,
        &["jobs", "show", &long.to_string(), "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["job"]["waiting_for"], WAITING, "{out}");
    assert_eq!(shown["job"]["requires"], json!(["device=alice-mac"]));
    let (code, out, err) =
        common::cli_with_token(&d.url, ADMIN, &["jobs", "show", &long.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("waiting for {WAITING}")), "{out}");
    let (status, page) = api(&d, "GET", &format!("/jobs/{long}"), None);
    assert_eq!(status, 200);
    let page = page.as_str().unwrap_or_default();
    assert!(
        page.contains(&format!("waiting for {WAITING}")),
        "the dashboard's job page says so too: {page}"
    );

    // It stays waiting: the idle plain worker never takes it.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let now = job(&d, long);
        assert_ne!(now["state"], "running", "{now}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(job(&d, long)["waiting_for"], WAITING);
    assert!(!claimers(&d, long).contains(&plain_id));

    // A new worker with the label finishes it.
    let _mac2 = worker(dir.path(), &d.url, "mac2", &["device=alice-mac"]);
    let mac2_id = worker_id(&d, "mac2");
    wait_until(
        "the job to succeed on mac2",
        Duration::from_secs(30),
        || job(&d, long)["state"] == "succeeded",
    );
    let done = job(&d, long);
    assert_eq!(done["claimed_by"], mac2_id.as_str(), "{done}");
    assert!(done.get("waiting_for").is_none(), "{done}");
    assert_eq!(claimers(&d, long), [mac_id.as_str(), mac2_id.as_str()]);
    assert_eq!(ran_on(dir.path(), long), ["mac", "mac2"]);
    d.stop();
}
