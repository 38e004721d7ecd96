//! Follow-ups survive crashes exactly once, black-box: parent jobs with
//! `on_success` run on a daemon that is made to die right after a
//! completion committed (the test-only fault `crash_after_finish_commit`,
//! `REEVE_FAULTS`), or is killed with SIGKILL at random moments while many
//! short parents complete. After restarts, every succeeded parent has
//! exactly one follow-up (unique key `followup:<id>`), every failed parent
//! none, and no parent is lost. On SQLite, and on PostgreSQL when a server
//! is there.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::pg::Schema;
use common::{Daemon, wait_until};
use serde_json::{Value, json};

const FAULT: &str = "crash_after_finish_commit";
const SIGABRT: i32 = 6;

/// Short leases and retries, so runs cut off by a crash come back quickly.
const CONFIG: &str = "[defaults]\nheartbeat_timeout = \"1s\"\n\
                      [retry]\nbase = \"100ms\"\nmax = \"300ms\"\njitter = 0.0\n\
                      [executor]\nslots = 4\nkill_grace = \"1s\"\n";

/// Where the daemons keep their jobs.
enum Db {
    Sqlite(PathBuf),
    Postgres(Schema),
}

impl Db {
    fn url(&self) -> String {
        match self {
            Db::Sqlite(path) => format!("sqlite://{}", path.display()),
            Db::Postgres(_) => common::pg::url(),
        }
    }

    fn config(&self) -> String {
        match self {
            Db::Sqlite(_) => CONFIG.to_string(),
            Db::Postgres(schema) => format!("[postgres]\nschema = \"{}\"\n{CONFIG}", schema.0),
        }
    }
}

/// Starts daemon number `n` on `db`, with the fault switched on or not,
/// and whether it came up (a faulty one may die at a completion before it
/// answers).
fn start(dir: &Path, n: usize, db: &Db, faulty: bool) -> (Daemon, bool) {
    let env: &[(&str, &str)] = if faulty {
        &[("REEVE_FAULTS", FAULT)]
    } else {
        &[]
    };
    let mut d = Daemon::spawn(dir, &format!("d{n}"), &db.url(), &db.config(), env);
    let up = d.wait_up(Duration::from_secs(30));
    (d, up)
}

/// A parent job: `true` succeeds, `false` fails for good (one attempt).
fn parent(i: usize, succeeds: bool, command: &[&str]) -> Value {
    let command: Vec<&str> = if succeeds {
        command.to_vec()
    } else {
        vec!["false"]
    };
    json!({
        "kind": "parent",
        "command": command,
        "max_attempts": if succeeds { 20 } else { 1 },
        // Nothing runs kind `followup`: follow-ups only accumulate.
        "on_success": {"kind": "followup", "queue": "followups", "payload": {"i": i}},
    })
}

/// Enqueues the parents in one batch: (id, whether it is meant to succeed).
fn enqueue(d: &Daemon, parents: Vec<(Value, bool)>) -> Vec<(i64, bool)> {
    let (status, body) = d.api(
        "POST",
        "/v1/jobs/batch",
        Some(json!({ "jobs": parents.iter().map(|(j, _)| j.clone()).collect::<Vec<_>>() })),
    );
    assert_eq!(status, 201, "{body}");
    body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&parents)
        .map(|(e, (_, ok))| (e["job"]["id"].as_i64().unwrap(), *ok))
        .collect()
}

const TERMINAL: [&str; 3] = ["succeeded", "failed", "cancelled"];

/// How many parents have not ended yet, asked without failing when the
/// daemon is gone (`None`).
fn unfinished(d: &Daemon, parents: &[(i64, bool)]) -> Option<usize> {
    let mut left = 0;
    for (id, _) in parents {
        let job = common::get(&format!("{}/v1/jobs/{id}", d.url))?;
        if !TERMINAL.contains(&job["state"].as_str()?) {
            left += 1;
        }
    }
    Some(left)
}

fn all_ended(d: &Daemon, parents: &[(i64, bool)]) -> Option<bool> {
    unfinished(d, parents).map(|left| left == 0)
}

/// The exactly-once check: each succeeded parent has one follow-up, each
/// failed parent none, every parent ended as meant.
fn check_exactly_once(d: &Daemon, parents: &[(i64, bool)]) {
    let (status, list) = d.api("GET", "/v1/jobs?kind=followup&limit=1000", None);
    assert_eq!(status, 200, "{list}");
    let follow_ups = list["items"].as_array().unwrap();
    for (id, succeeds) in parents {
        let job = d.job(*id);
        let key = format!("followup:{id}");
        let mine: Vec<&Value> = follow_ups
            .iter()
            .filter(|f| f["unique_key"] == key.as_str())
            .collect();
        let successes = d
            .events(*id)
            .iter()
            .filter(|e| e["event"] == "succeeded")
            .count();
        if *succeeds {
            assert_eq!(job["state"], "succeeded", "parent {id} was lost: {job}");
            assert_eq!(mine.len(), 1, "parent {id} has {} follow-ups", mine.len());
            assert_eq!(mine[0]["payload"]["parent"], *id);
            assert_eq!(successes, 1, "parent {id} succeeded {successes} times");
        } else {
            assert_eq!(job["state"], "failed", "parent {id}: {job}");
            assert!(mine.is_empty(), "failed parent {id} has a follow-up");
            assert_eq!(successes, 0);
        }
    }
    let succeeded = parents.iter().filter(|(_, ok)| *ok).count();
    assert_eq!(follow_ups.len(), succeeded, "follow-ups: {list}");
}

/// Each faulty daemon dies at its first committed completion; restarts
/// continue until every parent has ended.
fn crash_after_each_commit(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, up) = start(dir.path(), 0, &db, true);
    assert!(up, "the first daemon died before any work");
    let parents = enqueue(
        &d,
        (0..9)
            .map(|i| (parent(i, i % 3 != 2, &["true"]), i % 3 != 2))
            .collect(),
    );
    let mut crashes = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        assert!(Instant::now() < deadline, "the parents never all ended");
        let ended = d.child.try_wait().unwrap();
        if let Some(status) = ended {
            assert_eq!(
                status.signal(),
                Some(SIGABRT),
                "the daemon died otherwise: {status:?}"
            );
            let err = std::fs::read_to_string(dir.path().join(format!("d{crashes}.err"))).unwrap();
            assert!(err.contains(FAULT), "{err}");
            crashes += 1;
            (d, _) = start(dir.path(), crashes, &db, true);
            continue;
        }
        if all_ended(&d, &parents) == Some(true) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{crashes} crashes right after a commit");
    assert!(crashes >= 1, "the fault never fired");
    // A clean daemon on what the crashes left.
    d.kill9();
    let (d, up) = start(dir.path(), crashes + 1, &db, false);
    assert!(up);
    check_exactly_once(&d, &parents);
    d.stop();
}

/// A small deterministic generator, seeded from the clock (the seed is
/// printed, so a failure can be replayed).
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("REEVE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("REEVE_TEST_SEED={seed}");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// SIGKILLs at random moments while many short parents complete.
fn random_kills(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::seeded();
    let (mut d, up) = start(dir.path(), 0, &db, false);
    assert!(up);
    let parents = enqueue(
        &d,
        (0..60)
            .map(|i| (parent(i, i % 7 != 3, &["sleep", "0.1"]), i % 7 != 3))
            .collect(),
    );
    let mut interrupted = 0;
    for n in 1..=6 {
        std::thread::sleep(Duration::from_millis(50 + rng.below(350)));
        let left = unfinished(&d, &parents);
        d.kill9();
        eprintln!("kill -9 with {left:?} parents not ended");
        interrupted += usize::from(left.is_some_and(|l| l > 0));
        (d, _) = start(dir.path(), n, &db, false);
    }
    assert!(interrupted >= 2, "the kills came after the work");
    wait_until("every parent to end", Duration::from_secs(120), || {
        all_ended(&d, &parents) == Some(true)
    });
    check_exactly_once(&d, &parents);
    d.stop();
}

#[test]
fn sqlite_a_crash_right_after_a_completion_commits_keeps_each_follow_up_once() {
    let dir = tempfile::tempdir().unwrap();
    crash_after_each_commit(Db::Sqlite(dir.path().join("reeve.db")));
}

#[test]
fn sqlite_random_kill_9s_keep_each_follow_up_once() {
    let dir = tempfile::tempdir().unwrap();
    random_kills(Db::Sqlite(dir.path().join("reeve.db")));
}

#[test]
fn postgres_a_crash_right_after_a_completion_commits_keeps_each_follow_up_once() {
    if let Some(schema) = Schema::new("fucrash") {
        crash_after_each_commit(Db::Postgres(schema));
    }
}

#[test]
fn postgres_random_kill_9s_keep_each_follow_up_once() {
    if let Some(schema) = Schema::new("fukill") {
        random_kills(Db::Postgres(schema));
    }
}

/// The API's completion path: a remote run's completion commits, the daemon
/// dies before answering; the executor never hears back, and sending the
/// completion again is refused, with the follow-up still there once.
#[test]
fn an_api_completion_that_crashes_before_answering_is_kept_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::Sqlite(dir.path().join("reeve.db"));
    let (mut d, up) = start(dir.path(), 0, &db, true);
    assert!(up);
    let id = d.enqueue(json!({
        "kind": "remote",
        "on_success": {"kind": "followup", "queue": "followups"},
    }));
    let (status, registered) = d.api(
        "POST",
        "/v1/workers/register",
        Some(json!({"name": "probe", "kinds": ["remote"], "slots": 1})),
    );
    assert_eq!(status, 201, "{registered}");
    let worker = registered["worker"]["id"].as_str().unwrap().to_string();
    let (status, claimed) = d.api(
        "POST",
        &format!("/v1/workers/{worker}/claim"),
        Some(json!({"limit": 1, "wait_ms": 5000})),
    );
    assert_eq!(status, 200, "{claimed}");
    let run = &claimed["runs"][0];
    assert_eq!(run["job"]["id"], id);
    let token = run["token"].as_str().unwrap().to_string();
    let complete = json!({"epoch": 1, "result": {"done": true}});
    let sent = send_completion(&d.url, id, &token, &complete);
    assert!(sent.is_err(), "the daemon answered: {sent:?}");
    wait_until("the daemon to die", Duration::from_secs(10), || {
        d.child.try_wait().unwrap().is_some()
    });
    let status = d.child.try_wait().unwrap().unwrap();
    assert_eq!(status.signal(), Some(SIGABRT), "{status:?}");
    let (d, up) = start(dir.path(), 1, &db, false);
    assert!(up);
    let job = d.job(id);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"], json!({"done": true}));
    // The executor tries again, as it would after a lost answer: refused.
    let again = send_completion(&d.url, id, &token, &complete).unwrap();
    assert_eq!(again.0, 409, "{}", again.1);
    assert_eq!(again.1["error"], "not_running");
    check_exactly_once(&d, &[(id, true)]);
    d.stop();
}

/// POSTs a completion with a job token: the answer, or the transport error.
fn send_completion(url: &str, id: i64, token: &str, body: &Value) -> Result<(u16, Value), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("{url}/v1/jobs/{id}/complete"))
            .bearer_auth(token)
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    })
}
