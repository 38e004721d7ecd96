//! The Python example worker (`examples/workers/python_worker.py`, standard
//! library only) against a real `reeve serve` on loopback: it claims a
//! `py-sum` job with a worker token, heartbeats, checkpoints with the run's
//! job token, completes it and deregisters; and a job whose first attempt
//! left a checkpoint and failed is resumed from that checkpoint. Without
//! `python3` on PATH the tests say so and skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, wait_until};
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-of-the-python-test";
const WORKER: &str = "worker-token-of-the-python-test";
/// Longest the Python worker may take for its one job.
const WORKER_LIMIT: Duration = Duration::from_secs(60);

/// Whether `python3` runs here (else the test prints why it skips).
fn python_present() -> bool {
    let found = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("skipping python worker test: python3 is not on PATH");
    }
    found
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/workers/python_worker.py")
}

fn daemon(dir: &Path) -> Daemon {
    std::fs::write(dir.join("admin"), ADMIN).unwrap();
    std::fs::write(dir.join("worker"), WORKER).unwrap();
    let config = format!(
        "[server]\nadmin_token_file = \"{0}/admin\"\n\
         [[worker_tokens]]\nname = \"py\"\ntoken_file = \"{0}/worker\"\nkinds = [\"py-sum\"]\n\
         [retry]\nbase = \"200ms\"\nmax = \"1s\"\njitter = 0.0\n\
         [executor]\ncommands = false\n",
        dir.display()
    );
    Daemon::start(dir, "d", &dir.join("reeve.db"), &config)
}

/// One request with `token` as bearer and a JSON or raw body: the status
/// and the body's bytes.
fn http(
    d: &Daemon,
    method: &str,
    path: &str,
    token: &str,
    json: Option<Value>,
    raw: Option<&[u8]>,
) -> (u16, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("{}{path}", d.url))
            .bearer_auth(token);
        if let Some(b) = json {
            req = req.json(&b);
        }
        if let Some(b) = raw {
            req = req.body(b.to_vec());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap().to_vec())
    })
}

/// A JSON call that must succeed.
fn api(d: &Daemon, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
    let (status, bytes) = http(d, method, path, token, body, None);
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {text}"
    );
    serde_json::from_str(&text).unwrap()
}

fn enqueue(d: &Daemon, numbers: &[i64]) -> i64 {
    let job = api(
        d,
        "POST",
        "/v1/jobs",
        ADMIN,
        Some(json!({"kind": "py-sum", "payload": {"numbers": numbers, "delay_ms": 400}})),
    );
    job["id"].as_i64().unwrap()
}

fn job(d: &Daemon, id: i64) -> Value {
    api(d, "GET", &format!("/v1/jobs/{id}"), ADMIN, None)
}

/// Runs the Python worker with `--once` to its exit (killed past the limit)
/// and answers its log.
fn run_python_once(d: &Daemon, dir: &Path, name: &str) -> String {
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new("python3")
        .arg(script())
        .args(["--url", &d.url, "--token-env", "PY_WORKER_TOKEN"])
        .args(["--kind", "py-sum", "--name", name, "--once"])
        .env("PY_WORKER_TOKEN", WORKER)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn python3");
    let deadline = Instant::now() + WORKER_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the python worker ran past {WORKER_LIMIT:?}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        status.success(),
        "the python worker exited {status}:\n{out}"
    );
    out
}

#[test]
fn python_worker_sums_heartbeats_checkpoints_and_deregisters() {
    if !python_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let id = enqueue(&d, &[1, 2, 3, 4]);

    let out = run_python_once(&d, dir.path(), "py-happy");

    let j = job(&d, id);
    assert_eq!(j["state"], "succeeded", "{j}\n{out}");
    assert_eq!(j["result"], json!({"sum": 10, "resumed_from": 0}), "{j}");
    assert_eq!(j["attempt"], 1, "{j}");
    assert!(
        j["heartbeat_count"].as_i64().unwrap() >= 1,
        "the run heartbeated: {j}\n{out}"
    );
    // The last checkpoint it saved with its job token.
    let (status, bytes) = http(
        &d,
        "GET",
        &format!("/v1/jobs/{id}/checkpoint"),
        ADMIN,
        None,
        None,
    );
    assert_eq!(status, 200);
    let saved: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(saved, json!({"next": 4, "sum": 10}));
    // The worker is in the fleet view, deregistered.
    let fleet = api(&d, "GET", "/v1/workers", ADMIN, None);
    let workers = fleet["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{fleet}");
    assert_eq!(workers[0]["name"], "py-happy", "{fleet}");
    assert_eq!(workers[0]["kinds"], json!(["py-sum"]), "{fleet}");
    assert!(
        !workers[0]["deregistered_at"].is_null(),
        "deregistered: {fleet}"
    );
    assert_eq!(workers[0]["running"], 0, "{fleet}");
    d.stop();
}

#[test]
fn python_worker_resumes_from_a_checkpoint() {
    if !python_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let id = enqueue(&d, &[1, 2, 3, 4]);

    // A first attempt by hand through the worker protocol: claim, save a
    // checkpoint (the first two numbers summed), fail retryably.
    let reg = api(
        &d,
        "POST",
        "/v1/workers/register",
        WORKER,
        Some(json!({"name": "by-hand", "kinds": ["py-sum"], "slots": 1})),
    );
    let wid = reg["worker"]["id"].as_str().unwrap().to_string();
    let claim = api(
        &d,
        "POST",
        &format!("/v1/workers/{wid}/claim"),
        WORKER,
        Some(json!({"limit": 1, "wait_ms": 5000})),
    );
    let run = &claim["runs"][0];
    assert_eq!(run["job"]["id"], id, "{claim}");
    assert_eq!(run["checkpoint"], false, "{claim}");
    let epoch = run["job"]["epoch"].as_i64().unwrap();
    let token = run["token"].as_str().unwrap();
    assert!(token.starts_with("rjt_"), "{claim}");
    let (status, body) = http(
        &d,
        "PUT",
        &format!("/v1/jobs/{id}/checkpoint"),
        token,
        None,
        Some(br#"{"next": 2, "sum": 3}"#),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let failed = api(
        &d,
        "POST",
        &format!("/v1/workers/{wid}/fail"),
        WORKER,
        Some(json!({"job": id, "epoch": epoch, "reason": "error", "error": "simulated crash"})),
    );
    assert_eq!(failed["state"], "retryable", "{failed}");
    api(
        &d,
        "POST",
        &format!("/v1/workers/{wid}/deregister"),
        WORKER,
        None,
    );
    wait_until(
        "the job is available again",
        Duration::from_secs(15),
        || job(&d, id)["state"] == "available",
    );

    let out = run_python_once(&d, dir.path(), "py-resume");

    let j = job(&d, id);
    assert_eq!(j["state"], "succeeded", "{j}\n{out}");
    assert_eq!(j["result"], json!({"sum": 10, "resumed_from": 3}), "{j}");
    assert_eq!(j["attempt"], 2, "{j}");
    assert!(out.contains("resuming at number 2"), "{out}");
    d.stop();
}
