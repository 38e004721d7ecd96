//! One chaos run: start the fleet, run a workload through a calm phase and
//! a fault phase, heal, drain, and record the [`History`].
//!
//! **Phases.** *Calm*: the workload alone (the throughput baseline).
//! *Chaos*: the same workload while the seeded plan's faults strike.
//! *Drain*: every fault healed, schedules paused, no more enqueues; the run
//! waits (bounded) until every job is terminal. Every loop here is bounded
//! by the run's own deadlines and stops by itself.
//!
//! **The workload** keeps a backlog of jobs of mixed durations in three
//! capped queues and one uncapped one: remote `effect` jobs, daemon-local
//! `local` jobs, serialized parents whose `on_success` follow-ups go to a
//! review queue of concurrency 1, jobs that fail on purpose, and two interval
//! schedules. Every job applies a side effect through the harness's
//! idempotency ledger (a directory where `mkdir` of the job's idempotency key
//! applies the effect once).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

use crate::fleet::{Database, Network, Proc, free_port};
use crate::history::{self, Caps, History, InjectedFault, RunningSample};
use crate::plan::{self, Fault, FaultKind, PlanParams, Target};

const ADMIN_TOKEN: &str = "chaos-admin-token-7f3a";
const WORKER_TOKEN: &str = "chaos-worker-token-91c2";
const GLOBAL_CAP: u64 = 8;
const QUEUE_CAPS: [(&str, u64); 3] = [("effects", 4), ("serial", 1), ("review", 1)];
const SCHEDULES: [&str; 2] = ["tick-local", "tick-effect"];

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub seed: u64,
    pub calm: Duration,
    pub duration: Duration,
    /// Faults per kind; `None` = one per 6 s of the fault phase.
    pub per_kind: Option<u32>,
    pub kinds: Vec<FaultKind>,
    pub workers: usize,
    pub daemons: usize,
    pub heartbeat_timeout: Duration,
    pub backlog: usize,
    pub drain_timeout: Duration,
    pub reeve: PathBuf,
    pub repo: PathBuf,
    pub out: PathBuf,
    /// Test-only fault switches passed to every reeve process
    /// (`REEVE_FAULTS`; only builds with the `fault-injection` feature obey).
    pub fault_switches: Option<String>,
}

/// What the run recorded besides the history.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunFacts {
    pub network_namespaces: bool,
    pub planned: BTreeMap<String, usize>,
    pub drained: bool,
    pub enqueued: usize,
}

/// Shared between the fault, sampler and workload tasks.
struct Fleet {
    daemons: Vec<Proc>,
    workers: Vec<Proc>,
    database: Database,
    /// Per daemon: its URL, its current executor identity, whether it led
    /// when last asked.
    daemon_urls: Vec<String>,
    daemon_ids: Vec<Option<String>>,
    leader: Option<usize>,
    /// Per worker name (`w0`…): the latest registration id seen.
    worker_ids: BTreeMap<String, String>,
    netns: bool,
    /// Processes found ended with no fault on them (see
    /// `History::unplanned_exits`).
    unplanned_exits: Vec<String>,
}

impl Fleet {
    /// Worker `i`'s latest registration id, as the identities of a fault.
    fn worker_identity(&self, i: usize) -> Vec<String> {
        self.worker_ids
            .get(&format!("w{i}"))
            .cloned()
            .into_iter()
            .collect()
    }
}

type Shared = Arc<Mutex<Fleet>>;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The job script: half its time, the side effect (once per idempotency
/// key), the other half; exits 1 when asked to fail.
fn job_script(ledger: &Path) -> String {
    format!(
        r#"#!/bin/sh
# A chaos job: sleeps, applies its side effect once per idempotency key,
# sleeps again; exits 1 when asked to fail.
ms=$1; fail=$2; ledger='{ledger}'
half=$(awk "BEGIN {{ print $ms / 2000 }}")
sleep "$half"
if mkdir "$ledger/applied/$REEVE_IDEMPOTENCY_KEY" 2>/dev/null; then r=new; else r=dup; fi
echo "$REEVE_IDEMPOTENCY_KEY $REEVE_JOB_ID $REEVE_EPOCH $r" >> "$ledger/attempts.log"
sleep "$half"
[ "$fail" = 1 ] && exit 1
exit 0
"#,
        ledger = ledger.display()
    )
}

fn daemon_config(o: &RunOptions, script: &Path, schedules: &Path) -> String {
    let hb = o.heartbeat_timeout.as_millis();
    let mut queues = String::new();
    for (q, cap) in QUEUE_CAPS {
        queues.push_str(&format!("[queues.{q}]\nconcurrency = {cap}\n"));
    }
    format!(
        r#"[server]
admin_token_env = "CHAOS_ADMIN_TOKEN"
schedules = ["{schedules}"]

[defaults]
heartbeat_timeout = "{hb}ms"
max_run_duration = "60s"

[retry]
base = "200ms"
max = "2s"

[executor]
slots = 2
commands = false
kill_grace = "1s"

[limits]
global = {GLOBAL_CAP}

{queues}
[kinds.local]
command = ["/bin/sh", "{script}", "{{payload.ms}}", "{{payload.fail}}"]

[[worker_tokens]]
name = "chaos"
token_env = "CHAOS_WORKER_TOKEN"
kinds = ["effect", "review"]
"#,
        schedules = schedules.display(),
        script = script.display(),
    )
}

fn worker_config(script: &Path) -> String {
    format!(
        r#"[kinds.effect]
command = ["/bin/sh", "{script}", "{{payload.ms}}", "{{payload.fail}}"]

[kinds.review]
command = ["/bin/sh", "{script}", "300", "0"]
"#,
        script = script.display()
    )
}

const SCHEDULE_FILE: &str = r#"[[schedule]]
name = "tick-local"
every = "2s"
overlap = "skip"

[schedule.job]
queue = "default"
kind = "local"
max_attempts = 20
payload = { ms = 300, fail = 0 }

[[schedule]]
name = "tick-effect"
every = "3s"
overlap = "allow"

[schedule.job]
queue = "effects"
kind = "effect"
max_attempts = 20
payload = { ms = 600, fail = 0 }
"#;

/// Runs the whole thing; returns the history and facts.
pub async fn run(o: &RunOptions) -> anyhow::Result<(History, RunFacts)> {
    std::fs::create_dir_all(&o.out)?;
    let out = o.out.canonicalize()?;
    // Logs are appended across a process's restarts: clear those of an
    // earlier run in the same directory, or their lines would join this
    // run's history.
    for e in std::fs::read_dir(&out)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = ((name.starts_with("daemon") || name.starts_with("worker"))
            && name.ends_with(".log"))
            || (name.starts_with("dashboard") && name.ends_with(".html"))
            || [
                "history.json",
                "facts.json",
                "report.json",
                "plan.json",
                "report.txt",
                "metrics.txt",
                "status.json",
            ]
            .contains(&name.as_str());
        if ours {
            std::fs::remove_file(e.path())?;
        }
    }
    let ledger = out.join("ledger");
    let _ = std::fs::remove_dir_all(&ledger);
    std::fs::create_dir_all(ledger.join("applied"))?;
    write(&ledger.join("attempts.log"), "")?;
    let script = out.join("job.sh");
    write(&script, &job_script(&ledger))?;
    let schedules = out.join("schedules.toml");
    write(&schedules, SCHEDULE_FILE)?;
    let dconf = out.join("daemon.toml");
    write(&dconf, &daemon_config(o, &script, &schedules))?;
    let wconf = out.join("worker.toml");
    write(&wconf, &worker_config(&script))?;

    let mut facts = RunFacts::default();
    let netns_wanted = o.kinds.iter().any(|k| k.needs_netns());
    let network = if netns_wanted && Network::available() {
        Some(Network::create(o.workers).context("creating the worker namespaces")?)
    } else {
        None
    };
    facts.network_namespaces = network.is_some();
    let listen_ip = network
        .as_ref()
        .map_or("127.0.0.1".to_string(), |n| n.bridge_ip.clone());

    let pg_dir = out.join("pg");
    let _ = std::fs::remove_dir_all(&pg_dir);
    let database = Database::start(
        &o.repo.join("scripts/pg-throwaway.sh"),
        &pg_dir,
        free_port()?,
    )
    .context("starting the throwaway PostgreSQL")?;
    let db_url = database.url();
    let switches: Vec<(String, String)> = o
        .fault_switches
        .iter()
        .map(|s| ("REEVE_FAULTS".to_string(), s.clone()))
        .collect();

    // Daemons first (the first one migrates), then the workers.
    let mut daemons = Vec::new();
    let mut daemon_urls = Vec::new();
    for i in 0..o.daemons {
        let port = free_port()?;
        let listen = format!("{listen_ip}:{port}");
        daemon_urls.push(format!("http://{listen}"));
        let mut env = vec![
            ("CHAOS_ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string()),
            ("CHAOS_WORKER_TOKEN".to_string(), WORKER_TOKEN.to_string()),
            ("REEVE_LOG".to_string(), "info".to_string()),
        ];
        env.extend(switches.clone());
        let mut p = Proc::new(
            &format!("daemon{i}"),
            &o.reeve,
            vec![
                "serve".into(),
                "--config".into(),
                dconf.display().to_string(),
                "--db".into(),
                db_url.clone(),
                "--listen".into(),
                listen,
            ],
            env,
            Vec::new(),
            out.join(format!("daemon{i}.log")),
        );
        p.start()?;
        if i == 0 {
            wait_healthy(&daemon_urls[0], Duration::from_secs(30)).await?;
        }
        daemons.push(p);
    }
    for url in &daemon_urls {
        wait_healthy(url, Duration::from_secs(30)).await?;
    }
    let mut workers = Vec::new();
    for i in 0..o.workers {
        let url = &daemon_urls[i % daemon_urls.len()];
        let mut env = vec![
            ("CHAOS_WORKER_TOKEN".to_string(), WORKER_TOKEN.to_string()),
            ("REEVE_LOG".to_string(), "info".to_string()),
        ];
        env.extend(switches.clone());
        let prefix = if network.is_some() {
            Network::prefix(i)
        } else {
            Vec::new()
        };
        let mut p = Proc::new(
            &format!("w{i}"),
            &o.reeve,
            vec![
                "worker".into(),
                "--url".into(),
                url.clone(),
                "--token-env".into(),
                "CHAOS_WORKER_TOKEN".into(),
                "--kinds".into(),
                "effect,review".into(),
                "--slots".into(),
                "3".into(),
                "--config".into(),
                wconf.display().to_string(),
                "--name".into(),
                format!("w{i}"),
                "--kill-grace".into(),
                "1s".into(),
                "--drain-grace".into(),
                "5s".into(),
            ],
            env,
            prefix,
            out.join(format!("worker{i}.log")),
        );
        p.start()?;
        workers.push(p);
    }

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&db_url)
        .await
        .context("connecting the harness to PostgreSQL")?;

    let fleet: Shared = Arc::new(Mutex::new(Fleet {
        daemons,
        workers,
        database,
        daemon_urls: daemon_urls.clone(),
        daemon_ids: vec![None; o.daemons],
        leader: None,
        unplanned_exits: Vec::new(),
        worker_ids: BTreeMap::new(),
        netns: network.is_some(),
    }));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;

    let stop = tokio_util_like::Stop::new();
    let watcher = tokio::spawn(watch(fleet.clone(), http.clone(), stop.clone()));
    let samples = Arc::new(Mutex::new(Vec::<RunningSample>::new()));
    let sampler = tokio::spawn(sample(pool.clone(), samples.clone(), stop.clone()));
    let acknowledged = Arc::new(Mutex::new(Vec::<i64>::new()));
    let enqueue_stop = tokio_util_like::Stop::new();
    let workload = tokio::spawn(workload(
        pool.clone(),
        http.clone(),
        daemon_urls.clone(),
        acknowledged.clone(),
        o.seed,
        o.backlog,
        enqueue_stop.clone(),
    ));

    // Calm.
    let calm_start = now_ms();
    tokio::time::sleep(o.calm).await;
    let calm_end = now_ms();

    // Chaos.
    let per_kind = o
        .per_kind
        .unwrap_or_else(|| (o.duration.as_secs() / 6).max(1) as u32);
    let kinds: Vec<FaultKind> = o
        .kinds
        .iter()
        .copied()
        .filter(|k| !k.needs_netns() || network.is_some())
        .collect();
    let faults = plan::generate(&PlanParams {
        seed: o.seed,
        duration_ms: o.duration.as_millis() as u64,
        workers: o.workers,
        daemons: o.daemons,
        per_kind,
        kinds,
        heartbeat_timeout_ms: o.heartbeat_timeout.as_millis() as u64,
    });
    for f in &faults {
        *facts
            .planned
            .entry(f.kind.as_str().to_string())
            .or_default() += 1;
    }
    write(
        &out.join("plan.json"),
        &serde_json::to_string_pretty(&faults)?,
    )?;
    let chaos_start = now_ms();
    let injected = Arc::new(Mutex::new(Vec::<InjectedFault>::new()));
    let mut strikes = Vec::new();
    let origin = tokio::time::Instant::now();
    for fault in faults {
        tokio::time::sleep_until(origin + Duration::from_millis(fault.at_ms)).await;
        strikes.push(tokio::spawn(strike(fleet.clone(), fault, injected.clone())));
    }
    let chaos_deadline = origin + o.duration;
    tokio::time::sleep_until(chaos_deadline).await;
    for s in strikes {
        let _ = s.await;
    }
    let chaos_end = now_ms();

    // Drain.
    enqueue_stop.stop();
    let _ = workload.await;
    heal_all(&fleet);
    for name in SCHEDULES {
        for url in &daemon_urls {
            let ok = http
                .post(format!("{url}/v1/schedules/{name}/pause"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
        }
    }
    let drain_deadline = tokio::time::Instant::now() + o.drain_timeout;
    loop {
        let open: Option<i64> = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'failed', 'cancelled')",
        )
        .fetch_one(&pool)
        .await
        .ok();
        if open == Some(0) {
            facts.drained = true;
            break;
        }
        if tokio::time::Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.stop();
    let _ = watcher.await;
    let _ = sampler.await;

    // What a daemon shows the world, kept for the secrets check.
    for (path, name) in [
        ("/metrics", "metrics.txt"),
        ("/v1/status", "status.json"),
        ("/", "dashboard.html"),
        ("/jobs", "dashboard-jobs.html"),
        ("/workers", "dashboard-workers.html"),
    ] {
        if let Ok(r) = http
            .get(format!("{}{path}", daemon_urls[0]))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            && let Ok(text) = r.text().await
        {
            write(&out.join(name), &text)?;
        }
    }

    // Stop everything, then read the history.
    {
        let mut f = fleet.lock().expect("fleet");
        for w in &mut f.workers {
            w.stop(Duration::from_secs(10));
        }
        for d in &mut f.daemons {
            d.stop(Duration::from_secs(10));
        }
    }
    let (jobs, events) = history::read_store(&pool).await?;
    pool.close().await;
    let mut accepted_writes = Vec::new();
    for i in 0..o.workers {
        let log = std::fs::read_to_string(out.join(format!("worker{i}.log"))).unwrap_or_default();
        let mut w = history::accepted_writes(&log);
        for a in &mut w {
            if a.worker.is_empty() {
                a.worker = format!("w{i}");
            }
        }
        accepted_writes.extend(w);
    }
    let effects = history::effect_attempts(&std::fs::read_to_string(ledger.join("attempts.log"))?);
    let secret_sightings = secret_sightings(&out);
    let acknowledged = acknowledged.lock().expect("acknowledged").clone();
    facts.enqueued = acknowledged.len();
    let h = History {
        jobs,
        events,
        accepted_writes,
        effects,
        samples: samples.lock().expect("samples").clone(),
        faults: injected.lock().expect("injected").clone(),
        acknowledged,
        caps: Caps {
            global: Some(GLOBAL_CAP),
            queues: QUEUE_CAPS
                .iter()
                .map(|(q, c)| (q.to_string(), *c))
                .collect(),
        },
        secret_sightings,
        unplanned_exits: fleet.lock().expect("fleet").unplanned_exits.clone(),
        calm: (calm_start, calm_end),
        chaos: (chaos_start, chaos_end),
    };
    drop(fleet);
    drop(network);
    Ok((h, facts))
}

/// The files of the run's directory (logs, pages, metrics; not the
/// harness's own configuration) that contain a configured secret.
fn secret_sightings(out: &Path) -> Vec<String> {
    let mut seen = Vec::new();
    let Ok(entries) = std::fs::read_dir(out) else {
        return seen;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let kept = name.ends_with(".log")
            || name.ends_with(".html")
            || name == "metrics.txt"
            || name == "status.json";
        if !kept {
            continue;
        }
        let Ok(bytes) = std::fs::read(e.path()) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        if [ADMIN_TOKEN, WORKER_TOKEN].iter().any(|s| text.contains(s)) {
            seen.push(name);
        }
    }
    seen.sort();
    seen
}

async fn wait_healthy(url: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let http = reqwest::Client::new();
    loop {
        if http
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the daemon at {url} did not come up");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A GET with the admin token, answered as JSON within 500 ms, or nothing.
async fn admin_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url)
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .ok()?
        .json::<Value>()
        .await
        .ok()
}

/// Keeps the daemons' identities and the leader, and the workers'
/// registration ids, up to date (every 300 ms).
async fn watch(fleet: Shared, http: reqwest::Client, stop: tokio_util_like::Stop) {
    let urls = fleet.lock().expect("fleet").daemon_urls.clone();
    while !stop.is_stopped() {
        {
            let mut guard = fleet.lock().expect("fleet");
            let f = &mut *guard;
            let at = now_ms();
            for p in f.daemons.iter_mut().chain(f.workers.iter_mut()) {
                if let Some(status) = p.exited_by_itself() {
                    let restarted = match p.start() {
                        Ok(()) => "restarted".to_string(),
                        Err(e) => format!("restart failed: {e}"),
                    };
                    f.unplanned_exits.push(format!(
                        "{} exited by itself ({status}) at {at}; {restarted}",
                        p.name
                    ));
                }
            }
        }
        for (i, url) in urls.iter().enumerate() {
            let status = admin_json(&http, &format!("{url}/v1/status")).await;
            if let Some(s) = status {
                let mut f = fleet.lock().expect("fleet");
                f.daemon_ids[i] = s["worker_id"].as_str().map(str::to_string);
                match s["leader"].as_bool() {
                    Some(true) => f.leader = Some(i),
                    // Deposed (a pause outlived its lock): no longer the one
                    // a leader fault must strike.
                    Some(false) if f.leader == Some(i) => f.leader = None,
                    _ => {}
                }
            }
        }
        for url in &urls {
            let list = admin_json(&http, &format!("{url}/v1/workers")).await;
            if let Some(list) = list {
                let mut latest: BTreeMap<String, (i64, String)> = BTreeMap::new();
                for w in list["workers"].as_array().into_iter().flatten() {
                    let (Some(name), Some(id)) = (w["name"].as_str(), w["id"].as_str()) else {
                        continue;
                    };
                    let at = w["registered_at"]
                        .as_str()
                        .and_then(|t| reeve_core::Timestamp::parse(t).ok())
                        .map_or(0, |t| t.millis());
                    let e = latest
                        .entry(name.to_string())
                        .or_insert((at, id.to_string()));
                    if at >= e.0 {
                        *e = (at, id.to_string());
                    }
                }
                let mut f = fleet.lock().expect("fleet");
                for (name, (_, id)) in latest {
                    f.worker_ids.insert(name, id);
                }
                break;
            }
        }
        stop.sleep(Duration::from_millis(300)).await;
    }
}

/// Samples the running counts per queue, each in one snapshot, every 100 ms.
async fn sample(
    pool: sqlx::PgPool,
    samples: Arc<Mutex<Vec<RunningSample>>>,
    stop: tokio_util_like::Stop,
) {
    while !stop.is_stopped() {
        let rows: Result<Vec<(String, i64)>, _> = sqlx::query_as(
            "SELECT queue, count(*) FROM jobs WHERE state = 'running' GROUP BY queue",
        )
        .fetch_all(&pool)
        .await;
        if let Ok(rows) = rows {
            samples.lock().expect("samples").push(RunningSample {
                at: now_ms(),
                by_queue: rows.into_iter().map(|(q, n)| (q, n as u64)).collect(),
            });
        }
        stop.sleep(Duration::from_millis(100)).await;
    }
}

/// Keeps `backlog` jobs waiting, in batches to a random live daemon; an
/// enqueue that fails is retried on another daemon with the same unique
/// keys, so a lost answer cannot double a job that is still waiting.
async fn workload(
    pool: sqlx::PgPool,
    http: reqwest::Client,
    urls: Vec<String>,
    acknowledged: Arc<Mutex<Vec<i64>>>,
    seed: u64,
    backlog: usize,
    stop: tokio_util_like::Stop,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_f00d);
    let mut next = 0u64;
    while !stop.is_stopped() {
        let waiting: Option<i64> = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE state IN ('available', 'scheduled', 'retryable')",
        )
        .fetch_one(&pool)
        .await
        .ok();
        let want = waiting.map_or(0, |w| backlog.saturating_sub(w as usize).min(50));
        if want > 0 {
            let jobs: Vec<Value> = (0..want)
                .map(|_| {
                    next += 1;
                    new_job(&mut rng, seed, next)
                })
                .collect();
            let body = json!({ "jobs": jobs });
            for attempt in 0..6 {
                let url = &urls[(next as usize + attempt) % urls.len()];
                let answer = http
                    .post(format!("{url}/v1/jobs/batch"))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&body)
                    .send()
                    .await;
                let Ok(answer) = answer else { continue };
                if !answer.status().is_success() {
                    continue;
                }
                if let Ok(v) = answer.json::<Value>().await {
                    let ids: Vec<i64> = v["jobs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e["job"]["id"].as_i64())
                        .collect();
                    acknowledged.lock().expect("acknowledged").extend(ids);
                }
                break;
            }
        }
        stop.sleep(Duration::from_millis(150)).await;
    }
}

/// One job of the mix.
fn new_job(rng: &mut StdRng, seed: u64, n: u64) -> Value {
    let roll: u32 = rng.random_range(0..100);
    let unique = format!("chaos-{seed}-{n}");
    let ms: u64 = rng.random_range(100..=2500);
    match roll {
        0..=54 => json!({
            "queue": "effects", "kind": "effect", "unique_key": unique,
            "payload": {"ms": ms, "fail": 0}, "max_attempts": 25,
        }),
        55..=69 => json!({
            "queue": "default", "kind": "local", "unique_key": unique,
            "payload": {"ms": ms.min(1500), "fail": 0}, "max_attempts": 25,
        }),
        70..=84 => json!({
            "queue": "serial", "kind": "effect", "unique_key": unique,
            "payload": {"ms": ms.min(800), "fail": 0}, "max_attempts": 25,
            "on_success": {"queue": "review", "kind": "review", "max_attempts": 25},
        }),
        _ => json!({
            "queue": "default", "kind": "effect", "unique_key": unique,
            "payload": {"ms": ms.min(600), "fail": 1}, "max_attempts": 2,
        }),
    }
}

/// Injects one fault and heals it after its hold.
async fn strike(fleet: Shared, fault: Fault, injected: Arc<Mutex<Vec<InjectedFault>>>) {
    // A daemon fault waits (bounded) for a daemon that is up and under no
    // other fault: its planned one, or else any other (the plan cannot know
    // which daemon a leader fault takes down). A leader fault waits for a
    // known leader that is up. So overlapping runtime targets turn into
    // retargeted or slightly later faults, not skipped ones.
    // Leader faults come every few seconds and each must wait out an
    // election, so they queue behind one another: they wait longer.
    let patience = if fault.target == Target::Leader {
        60
    } else {
        30
    };
    let ready_by = tokio::time::Instant::now() + Duration::from_secs(patience);
    let mut fault = fault;
    loop {
        let ready = {
            let mut f = fleet.lock().expect("fleet");
            let up: Vec<bool> = (0..f.daemons.len())
                .map(|i| !f.daemons[i].paused && f.daemons[i].alive())
                .collect();
            match fault.target {
                Target::Daemon(i) if up[i] => true,
                // The next one round from the planned daemon, to spread them.
                Target::Daemon(i) => {
                    match (1..up.len()).map(|k| (i + k) % up.len()).find(|&j| up[j]) {
                        Some(j) => {
                            fault.target = Target::Daemon(j);
                            true
                        }
                        None => false,
                    }
                }
                Target::Leader => f.leader.is_some_and(|i| up[i] && f.daemon_ids[i].is_some()),
                _ => true,
            }
        };
        if ready || tokio::time::Instant::now() > ready_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at = now_ms();
    let mut record = InjectedFault {
        kind: fault.kind.as_str().to_string(),
        target: String::new(),
        at,
        healed_at: at,
        identities: Vec::new(),
        skipped: None,
    };
    let hold = Duration::from_millis(fault.hold_ms);
    let result: Result<(), String> = async {
        match (fault.kind, fault.target) {
            (FaultKind::KillWorker, Target::Worker(i)) => {
                record.target = format!("worker:{i}");
                {
                    let mut f = fleet.lock().expect("fleet");
                    record.identities = f.worker_identity(i);
                    f.workers[i].kill9();
                }
                tokio::time::sleep(hold).await;
                fleet.lock().expect("fleet").workers[i]
                    .start()
                    .map_err(|e| e.to_string())
            }
            (FaultKind::KillDaemon | FaultKind::KillLeader, target) => {
                let i = match target {
                    Target::Daemon(i) => i,
                    _ => match fleet.lock().expect("fleet").leader {
                        Some(i) => i,
                        None => return Err("no leader known".into()),
                    },
                };
                record.target = format!("daemon:{i}");
                {
                    let mut f = fleet.lock().expect("fleet");
                    if !f.daemons[i].alive() {
                        return Err("the daemon was already down".into());
                    }
                    record.identities = f.daemon_ids[i].clone().into_iter().collect();
                    f.daemons[i].kill9();
                    f.daemon_ids[i] = None;
                    if f.leader == Some(i) {
                        f.leader = None;
                    }
                }
                tokio::time::sleep(hold).await;
                fleet.lock().expect("fleet").daemons[i]
                    .start()
                    .map_err(|e| e.to_string())
            }
            (FaultKind::PauseWorker, Target::Worker(i)) => {
                record.target = format!("worker:{i}");
                {
                    let mut f = fleet.lock().expect("fleet");
                    record.identities = f.worker_identity(i);
                    if !f.workers[i].pause() {
                        return Err("the worker was not running".into());
                    }
                }
                tokio::time::sleep(hold).await;
                fleet.lock().expect("fleet").workers[i].resume();
                Ok(())
            }
            (FaultKind::PauseDaemon, Target::Daemon(i)) => {
                record.target = format!("daemon:{i}");
                {
                    let mut f = fleet.lock().expect("fleet");
                    record.identities = f.daemon_ids[i].clone().into_iter().collect();
                    if !f.daemons[i].pause() {
                        return Err("the daemon was not running".into());
                    }
                }
                tokio::time::sleep(hold).await;
                fleet.lock().expect("fleet").daemons[i].resume();
                Ok(())
            }
            (FaultKind::NetCut, Target::Worker(i)) => {
                record.target = format!("worker:{i}");
                record.identities = fleet.lock().expect("fleet").worker_identity(i);
                Network::set_link(i, false).map_err(|e| e.to_string())?;
                tokio::time::sleep(hold).await;
                Network::set_link(i, true).map_err(|e| e.to_string())
            }
            (FaultKind::NetLoss, Target::Worker(i)) => {
                record.target = format!("worker:{i}");
                record.identities = fleet.lock().expect("fleet").worker_identity(i);
                Network::set_loss(i, Some(fault.loss_percent.unwrap_or(30)))
                    .map_err(|e| e.to_string())?;
                tokio::time::sleep(hold).await;
                Network::set_loss(i, None).map_err(|e| e.to_string())
            }
            (FaultKind::PgRestart, _) => {
                record.target = "database".into();
                let stopped =
                    tokio::task::block_in_place(|| fleet.lock().expect("fleet").database.stop());
                tokio::time::sleep(hold).await;
                // Started again whatever the stop said: it counts as down.
                let started =
                    tokio::task::block_in_place(|| fleet.lock().expect("fleet").database.restart());
                stopped.and(started).map_err(|e| e.to_string())
            }
            (kind, target) => Err(format!("{kind:?} cannot strike {target:?}")),
        }
    }
    .await;
    record.healed_at = now_ms();
    if let Err(why) = result {
        record.skipped = Some(why);
    }
    injected.lock().expect("injected").push(record);
}

/// Heals whatever is still broken: continues paused processes, restarts
/// dead ones, restores links and the database.
fn heal_all(fleet: &Shared) {
    let mut f = fleet.lock().expect("fleet");
    if f.database.down {
        let _ = f.database.restart();
    }
    let netns = f.netns;
    for (i, w) in f.workers.iter_mut().enumerate() {
        w.resume();
        if !w.alive() {
            let _ = w.start();
        }
        if netns {
            let _ = Network::set_link(i, true);
            let _ = Network::set_loss(i, None);
        }
    }
    for d in &mut f.daemons {
        d.resume();
        if !d.alive() {
            let _ = d.start();
        }
    }
}

/// A stop flag with an interruptible sleep (the tasks' only shared control).
mod tokio_util_like {
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Clone, Debug)]
    pub struct Stop(Arc<tokio::sync::watch::Sender<bool>>);

    impl Stop {
        pub fn new() -> Stop {
            Stop(Arc::new(tokio::sync::watch::Sender::new(false)))
        }

        pub fn stop(&self) {
            self.0.send_replace(true);
        }

        pub fn is_stopped(&self) -> bool {
            *self.0.borrow()
        }

        /// Sleeps `d`, or less if stopped meanwhile.
        pub async fn sleep(&self, d: Duration) {
            let mut rx = self.0.subscribe();
            let _ = tokio::time::timeout(d, rx.wait_for(|s| *s)).await;
        }
    }
}
