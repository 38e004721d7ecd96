//! The engine against a real SQLite file: dispatch, heartbeats, reaping of
//! local runs, cancel, turn budgets, shutdown, and the process executor.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reeve_core::{FailureReason, JobState, NewJob};
use reeve_engine::process::{CommandTemplate, ProcessHandler};
use reeve_engine::reeve_exec::RunLimits;
use reeve_engine::{Engine, EngineConfig, Handler, Handlers, Run};
use reeve_sqlite::{SqliteOptions, SqliteStore};
use reeve_store::{Limits, Outcome, QueuePatch, Store, StoreConfig};

async fn store() -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteOptions::from_url(&format!("sqlite://{}", dir.path().join("e.db").display()))
        .unwrap();
    (
        dir,
        Arc::new(
            SqliteStore::open(&opts, StoreConfig::default())
                .await
                .unwrap(),
        ),
    )
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_state(store: &Arc<SqliteStore>, id: i64, want: JobState) {
    eventually(want.as_str(), || async { state(store, id).await == want }).await;
}

async fn enqueue_one(store: &Arc<SqliteStore>, job: NewJob) -> i64 {
    store.enqueue(vec![job]).await.unwrap()[0].job.id
}

fn sleep_engine(store: &Arc<SqliteStore>) -> Arc<Engine> {
    Engine::start(
        store.clone(),
        EngineConfig::new("t"),
        Handlers::new().kind("sleep", sleeper()),
    )
}

struct Noop;

#[async_trait]
impl Handler for Noop {
    async fn run(&self, _run: Run) -> Outcome {
        Outcome::Succeeded { result: None }
    }
}

/// Sleeps `ms` from the payload unless stopped; tracks concurrency.
struct Sleeper {
    now: AtomicU32,
    max: AtomicU32,
}

#[async_trait]
impl Handler for Sleeper {
    async fn run(&self, run: Run) -> Outcome {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        let ms = run.job.payload["ms"].as_u64().unwrap_or(10);
        let stopped = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => false,
            _ = run.stop.cancelled() => true,
        };
        self.now.fetch_sub(1, Ordering::SeqCst);
        if stopped {
            return Outcome::Failed {
                reason: FailureReason::Error,
                error: Some("stopped".into()),
            };
        }
        Outcome::Succeeded {
            result: Some(serde_json::json!({"slept": ms})),
        }
    }
}

fn sleeper() -> Arc<Sleeper> {
    Arc::new(Sleeper {
        now: AtomicU32::new(0),
        max: AtomicU32::new(0),
    })
}

fn sleep_job(ms: u64) -> NewJob {
    let mut nj = NewJob::new("default", "sleep");
    nj.payload = serde_json::json!({ "ms": ms });
    nj
}

async fn state(store: &Arc<SqliteStore>, id: i64) -> JobState {
    store.get_job(id).await.unwrap().state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_every_job_once() {
    let (_dir, store) = store().await;
    let engine = Engine::start(
        store.clone(),
        EngineConfig::new("t"),
        Handlers::new().kind("noop", Arc::new(Noop)),
    );
    let jobs: Vec<NewJob> = (0..300).map(|_| NewJob::new("default", "noop")).collect();
    store.enqueue(jobs).await.unwrap();
    eventually("all succeeded", || async {
        store.status().await.unwrap().by_state["succeeded"] == 300
    })
    .await;
    assert_eq!(engine.stats().finished.load(Ordering::Relaxed), 300);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_long_run_alive() {
    let (_dir, store) = store().await;
    let engine = sleep_engine(&store);
    let mut nj = sleep_job(1500);
    nj.heartbeat_timeout = Some(Duration::from_millis(300));
    let id = enqueue_one(&store, nj).await;
    wait_state(&store, id, JobState::Succeeded).await;
    let job = store.get_job(id).await.unwrap();
    assert_eq!(
        job.attempt, 1,
        "never reaped although the run outlived its heartbeat timeout 5x"
    );
    assert!(
        job.heartbeat_count >= 3,
        "heartbeats sent: {}",
        job.heartbeat_count
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaped_local_run_is_aborted_and_never_writes_back() {
    let (_dir, store) = store().await;
    let handler = sleeper();
    let engine = Engine::start(
        store.clone(),
        EngineConfig::new("t"),
        Handlers::new().kind("sleep", handler.clone()),
    );
    let mut nj = sleep_job(60_000);
    nj.max_run_duration = Some(Duration::from_secs(30));
    nj.max_attempts = 1;
    let id = enqueue_one(&store, nj).await;
    wait_state(&store, id, JobState::Running).await;
    // Jump past max_run_duration: the reaper ends the run as a timeout.
    store.advance_clock(Duration::from_secs(31));
    store.signals().deadlines_changed();
    wait_state(&store, id, JobState::Failed).await;
    eventually("local run aborted", || async {
        handler.now.load(Ordering::SeqCst) == 0
    })
    .await;
    let job = store.get_job(id).await.unwrap();
    assert_eq!(job.failure_reason, Some(FailureReason::Timeout));
    assert_eq!(job.result, None, "the aborted run did not write its result");
    engine.shutdown(Duration::from_secs(5)).await;
    assert_eq!(store.get_job(id).await.unwrap(), job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_job() {
    let (_dir, store) = store().await;
    let engine = sleep_engine(&store);
    let id = store.enqueue(vec![sleep_job(60_000)]).await.unwrap()[0]
        .job
        .id;
    wait_state(&store, id, JobState::Running).await;
    store.cancel(id).await.unwrap();
    engine.cancel_local(id);
    wait_state(&store, id, JobState::Cancelled).await;
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_run_through_its_heartbeat() {
    let (_dir, store) = store().await;
    let engine = sleep_engine(&store);
    let mut nj = sleep_job(60_000);
    nj.heartbeat_timeout = Some(Duration::from_millis(300));
    let id = enqueue_one(&store, nj).await;
    wait_state(&store, id, JobState::Running).await;
    // As another daemon would: only the store knows.
    store.cancel(id).await.unwrap();
    wait_state(&store, id, JobState::Cancelled).await;
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_with_many_slots() {
    let (_dir, store) = store().await;
    store.set_limits(Limits { global: Some(3) }).await.unwrap();
    store
        .update_queue(
            "narrow",
            QueuePatch {
                concurrency: Some(Some(1)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let handler = sleeper();
    let mut config = EngineConfig::new("t");
    config.slots = 16;
    let engine = Engine::start(
        store.clone(),
        config,
        Handlers::new().kind("sleep", handler.clone()),
    );
    let mut jobs: Vec<NewJob> = (0..20).map(|_| sleep_job(20)).collect();
    for j in jobs.iter_mut().take(10) {
        j.queue = "narrow".into();
    }
    store.enqueue(jobs).await.unwrap();
    eventually("all done", || async {
        store.status().await.unwrap().by_state["succeeded"] == 20
    })
    .await;
    assert!(
        handler.max.load(Ordering::SeqCst) <= 3,
        "global cap of 3 held"
    );
    assert!(handler.max.load(Ordering::SeqCst) >= 2, "and was used");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_runs_for_retry() {
    let (_dir, store) = store().await;
    let engine = sleep_engine(&store);
    let id = store.enqueue(vec![sleep_job(60_000)]).await.unwrap()[0]
        .job
        .id;
    wait_state(&store, id, JobState::Running).await;
    engine.shutdown(Duration::from_millis(200)).await;
    let job = store.get_job(id).await.unwrap();
    assert_eq!(job.state, JobState::Retryable);
    assert_eq!(job.failure_reason, Some(FailureReason::WorkerShutdown));
}

fn process_engine(store: &Arc<SqliteStore>, kind: &str, script: &str) -> Arc<Engine> {
    let template = CommandTemplate {
        command: vec![script.to_string()],
        shell: true,
        cwd: None,
        env: Default::default(),
    };
    let handler = Arc::new(ProcessHandler::new(
        HashMap::from([(kind.to_string(), template)]),
        RunLimits {
            kill_grace: Duration::from_millis(500),
            ..RunLimits::default()
        },
        "http://127.0.0.1:7433".into(),
    ));
    Engine::start(
        store.clone(),
        EngineConfig::new("t"),
        Handlers::new()
            .kind(kind, handler.clone())
            .commands(handler),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_jobs_get_their_environment_and_exit_codes() {
    let (_dir, store) = store().await;
    let engine = process_engine(
        &store,
        "env",
        r#"echo "job=$REEVE_JOB_ID attempt=$REEVE_ATTEMPT epoch=$REEVE_EPOCH key=$REEVE_IDEMPOTENCY_KEY"; cat; echo; test "$REEVE_ATTEMPT" -ge 2"#,
    );
    let mut nj = NewJob::new("default", "env");
    nj.payload = serde_json::json!({"hello": "world"});
    nj.idempotency_key = Some("k-1".into());
    let id = enqueue_one(&store, nj).await;
    // Attempt 1 exits 1 (exit_code, retried); push the backoff along.
    wait_state(&store, id, JobState::Retryable).await;
    assert_eq!(
        store.get_job(id).await.unwrap().failure_reason,
        Some(FailureReason::ExitCode)
    );
    store.advance_clock(Duration::from_secs(16));
    store.signals().deadlines_changed();
    wait_state(&store, id, JobState::Succeeded).await;
    let output = store.job_output(id).await.unwrap();
    assert_eq!(output.len(), 2);
    assert!(
        output[1]
            .output
            .contains(&format!("job={id} attempt=2 epoch=2 key=k-1")),
        "{}",
        output[1].output
    );
    assert!(
        output[1].output.contains(r#"{"hello":"world"}"#),
        "payload on stdin"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_reports_turns_result_and_reasons() {
    let (_dir, store) = store().await;
    let engine = process_engine(
        &store,
        "agent",
        // Braces are doubled: templates treat `{...}` as placeholders.
        r#"for i in 1 2 3 4 5 6; do echo "{{\"turns\":$i}}" >&3; sleep 0.05; done; echo '{{"result":{{"ok":true}}}}' >&3"#,
    );
    let mut over = NewJob::new("default", "agent");
    over.max_turns = Some(3);
    let mut within = NewJob::new("default", "agent");
    within.max_turns = Some(10);
    let mut adhoc = NewJob::new("default", "adhoc");
    adhoc.command = Some(vec![
        "sh".into(),
        "-c".into(),
        r#"echo '{"failure_reason":"rate_limited","error":"429 from the model"}' >&3; exit 9"#
            .into(),
    ]);
    adhoc.max_attempts = 1;
    let ids: Vec<i64> = store
        .enqueue(vec![over, within, adhoc])
        .await
        .unwrap()
        .iter()
        .map(|e| e.job.id)
        .collect();
    eventually("all ended", || async {
        let mut done = true;
        for id in &ids {
            let j = store.get_job(*id).await.unwrap();
            done &= j.state.is_terminal();
        }
        done
    })
    .await;
    let over = store.get_job(ids[0]).await.unwrap();
    assert_eq!(
        (over.state, over.failure_reason),
        (JobState::Failed, Some(FailureReason::TurnLimitExceeded))
    );
    let within = store.get_job(ids[1]).await.unwrap();
    assert_eq!(within.state, JobState::Succeeded);
    assert_eq!(within.result, Some(serde_json::json!({"ok": true})));
    let adhoc = store.get_job(ids[2]).await.unwrap();
    assert_eq!(
        adhoc.failure_reason,
        Some(FailureReason::RateLimited),
        "the run's own reason wins over exit_code"
    );
    assert_eq!(adhoc.last_error.as_deref(), Some("429 from the model"));
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_programs_fail_with_spawn_failed() {
    let (_dir, store) = store().await;
    let engine = process_engine(&store, "x", "true");
    let mut nj = NewJob::new("default", "adhoc");
    nj.command = Some(vec!["/nonexistent/agent-binary".into()]);
    nj.max_attempts = 1;
    let id = enqueue_one(&store, nj).await;
    wait_state(&store, id, JobState::Failed).await;
    assert_eq!(
        store.get_job(id).await.unwrap().failure_reason,
        Some(FailureReason::SpawnFailed)
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

fn every_second(name: &str) -> reeve_schedule::ScheduleSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "every": "1s",
        "job": {"kind": "noop"}
    }))
    .unwrap()
}

/// Two engines maintain the same store (as two daemons on one SQLite file
/// would): a 1-second schedule fires once per nominal second, never twice,
/// at the due instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_fire_once_per_nominal_time() {
    let (_dir, store) = store().await;
    let now = store.now().await.unwrap();
    let first = reeve_core::Timestamp((now.0 / 1000 + 1) * 1000);
    store
        .put_schedule(reeve_store::SchedulePut {
            spec: every_second("tick"),
            status: None,
            next_fire_at: reeve_store::NextFire::Set(Some(first)),
            anchor: reeve_store::NextFire::Keep,
            max_turns_changed: false,
        })
        .await
        .unwrap();
    let a = Engine::start(
        store.clone(),
        EngineConfig::new("a"),
        Handlers::new().kind("noop", Arc::new(Noop)),
    );
    let b = Engine::start(
        store.clone(),
        EngineConfig::new("b"),
        Handlers::new().kind("noop", Arc::new(Noop)),
    );
    eventually("five firings", || async {
        store
            .list_jobs(reeve_core::JobFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .items
            .len()
            >= 5
    })
    .await;
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
    let jobs = store
        .list_jobs(reeve_core::JobFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    let mut nominals: Vec<i64> = jobs.iter().map(|j| j.nominal_at.unwrap().0).collect();
    nominals.sort();
    assert!(
        nominals.windows(2).all(|w| w[1] - w[0] == 1000),
        "one job per second, none twice: {nominals:?}"
    );
    for j in &jobs {
        assert_eq!(j.schedule.as_deref(), Some("tick"));
        assert_eq!(
            j.idempotency_key,
            reeve_schedule::firing_key("tick", j.nominal_at.unwrap())
        );
        // Created at the due instant, not on a polling tick.
        let lag = j.created_at.0 - j.nominal_at.unwrap().0;
        assert!(
            (0..1000).contains(&lag),
            "fired {lag} ms after its nominal time"
        );
    }
}

/// After downtime, `fire_once` fires only the latest missed time and records
/// the others as one skipped range; the next fire time is in the future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_fire_times_follow_the_misfire_policy() {
    let (_dir, store) = store().await;
    let now = store.now().await.unwrap();
    let minute = 60_000;
    let first_missed = reeve_core::Timestamp((now.0 / minute - 10) * minute);
    let spec: reeve_schedule::ScheduleSpec = serde_json::from_value(serde_json::json!({
        "name": "sync", "every": "1m", "job": {"kind": "noop"}
    }))
    .unwrap();
    store
        .put_schedule(reeve_store::SchedulePut {
            spec,
            status: None,
            next_fire_at: reeve_store::NextFire::Set(Some(first_missed)),
            anchor: reeve_store::NextFire::Keep,
            max_turns_changed: false,
        })
        .await
        .unwrap();
    let engine = Engine::start(
        store.clone(),
        EngineConfig::new("a"),
        Handlers::new().kind("noop", Arc::new(Noop)),
    );
    eventually("the missed times handled", || async {
        store
            .get_schedule("sync")
            .await
            .unwrap()
            .next_fire_at
            .is_some_and(|n| n > now)
    })
    .await;
    engine.shutdown(Duration::from_secs(5)).await;
    let jobs = store
        .list_jobs(reeve_core::JobFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(jobs.len(), 1, "fire_once: one job for ten missed minutes");
    let ledger = store.firings("sync", 100).await.unwrap();
    let skipped: Vec<_> = ledger
        .iter()
        .filter(|f| f.outcome == "skipped_misfire")
        .collect();
    assert_eq!(
        skipped.len(),
        1,
        "the skipped times are one row: {ledger:?}"
    );
    assert_eq!(skipped[0].nominal_at, first_missed);
    assert!(
        skipped[0]
            .nominal_until
            .is_some_and(|u| u < jobs[0].nominal_at.unwrap())
    );
}

/// A schedule of `kind` whose every firing sleeps `ms`, first due at `next`.
fn sleep_schedule(name: &str, ms: u64, next: reeve_core::Timestamp) -> reeve_store::SchedulePut {
    reeve_store::SchedulePut {
        spec: serde_json::from_value(serde_json::json!({
            "name": name,
            "every": "1h",
            "job": {"kind": "sleep", "payload": {"ms": ms}},
        }))
        .unwrap(),
        status: None,
        next_fire_at: reeve_store::NextFire::Set(Some(next)),
        anchor: reeve_store::NextFire::Set(Some(next)),
        max_turns_changed: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_schedules_due_together_share_a_cap_of_two() {
    let (_dir, store) = store().await;
    store.set_limits(Limits { global: Some(2) }).await.unwrap();
    let now = store.now().await.unwrap();
    for i in 0..5 {
        store
            .put_schedule(sleep_schedule(&format!("s{i}"), 300, now))
            .await
            .unwrap();
    }
    let sleeper = sleeper();
    let engine = Engine::start(
        store.clone(),
        EngineConfig::new("t"),
        Handlers::new().kind("sleep", sleeper.clone()),
    );
    let ledger = |store: Arc<SqliteStore>| async move {
        let mut rows = Vec::new();
        for i in 0..5 {
            rows.extend(store.firings(&format!("s{i}"), 10).await.unwrap());
        }
        rows
    };
    eventually("all five firings finish", || {
        let store = store.clone();
        async move {
            let rows = ledger(store).await;
            rows.len() == 5 && rows.iter().all(|r| r.state.as_deref() == Some("succeeded"))
        }
    })
    .await;
    engine.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        sleeper.max.load(Ordering::SeqCst),
        2,
        "never more than the cap"
    );
    let rows = ledger(store.clone()).await;
    assert!(
        rows.iter()
            .all(|r| r.outcome == "fired" && r.nominal_at == now)
    );
    let mut waits: Vec<i64> = rows
        .iter()
        .map(|r| r.slot_wait_ms.expect("slot wait"))
        .collect();
    waits.sort_unstable();
    assert!(waits[1] < 250, "two start at once: {waits:?}");
    assert!(waits[2] >= 250, "three wait for a slot: {waits:?}");
    assert!(
        rows.iter().all(|r| r.running_at_claim.unwrap() <= 2),
        "running count at each claim within the cap"
    );
    assert!(rows.iter().all(|r| r.duration_ms.unwrap() >= 300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pressure_defers_firings_but_never_past_the_bound() {
    let (_dir, store) = store().await;
    store
        .raise_pressure("ide", Duration::from_secs(600))
        .await
        .unwrap();
    let now = store.now().await.unwrap();
    store
        .put_schedule(sleep_schedule("p", 1, now))
        .await
        .unwrap();
    let mut config = EngineConfig::new("t");
    config.pressure_delay = Duration::from_millis(200);
    config.pressure_max_defer = Duration::from_millis(700);
    let engine = Engine::start(
        store.clone(),
        config,
        Handlers::new().kind("sleep", sleeper()),
    );
    eventually("the deferred firing fires anyway", || {
        let store = store.clone();
        async move {
            store
                .firings("p", 1)
                .await
                .unwrap()
                .first()
                .is_some_and(|r| r.outcome == "fired")
        }
    })
    .await;
    engine.shutdown(Duration::from_secs(5)).await;
    let row = store.firings("p", 10).await.unwrap();
    assert_eq!(row.len(), 1, "one row for the fire time");
    let row = &row[0];
    assert!(row.deferrals >= 3, "deferred in 200ms steps: {row:?}");
    assert!(
        row.at.0 - now.0 >= 700,
        "deferred up to the bound: fired {}ms late",
        row.at.0 - now.0
    );
    assert!(
        row.at.0 - now.0 < 700 + 1000,
        "never much past it: fired {}ms late",
        row.at.0 - now.0
    );
    assert_eq!(
        store.list_pressure().await.unwrap().len(),
        1,
        "the pressure was active all along"
    );
}

/// A run that checkpointed and crashed is retried with its checkpoint in
/// `REEVE_CHECKPOINT`, and resumes from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_process_run_resumes_from_its_checkpoint() {
    let (_dir, store) = store().await;
    let engine = process_engine(
        &store,
        "resume",
        r#"if [ -n "$REEVE_CHECKPOINT" ]; then printf '{{"result": {{"resumed": "%s"}}}}\n' "$(cat "$REEVE_CHECKPOINT")" >&3; exit 0; fi; printf '{{"checkpoint": "step-7"}}\n' >&3; sleep 0.2; exit 1"#,
    );
    let id = enqueue_one(&store, NewJob::new("default", "resume")).await;
    wait_state(&store, id, JobState::Retryable).await;
    let saved = store
        .load_checkpoint(id)
        .await
        .unwrap()
        .expect("a checkpoint");
    assert_eq!(
        (saved.data.as_slice(), saved.epoch),
        (b"step-7".as_slice(), 1)
    );
    store.advance_clock(Duration::from_secs(16));
    store.signals().deadlines_changed();
    wait_state(&store, id, JobState::Succeeded).await;
    let job = store.get_job(id).await.unwrap();
    assert_eq!(job.result, Some(serde_json::json!({"resumed": "step-7"})));
    engine.shutdown(Duration::from_secs(5)).await;
}

/// Reports one progress note each time the test says so, then waits to be
/// stopped.
struct Reporter {
    go: tokio::sync::Notify,
}

#[async_trait]
impl Handler for Reporter {
    async fn run(&self, run: Run) -> Outcome {
        for note in ["reading", "writing"] {
            tokio::select! {
                _ = self.go.notified() => {
                    let _ = run.reports.send(reeve_engine::reeve_exec::Report::Progress(note.into()));
                }
                _ = run.stop.cancelled() => break,
            }
        }
        run.stop.cancelled().await;
        Outcome::Failed {
            reason: FailureReason::Cancelled,
            error: None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_stalls_a_silent_run_and_its_reports_clear_the_stall() {
    let (_dir, store) = store().await;
    let reporter = Arc::new(Reporter {
        go: tokio::sync::Notify::new(),
    });
    let mut config = EngineConfig::new("t");
    config.supervision = Some(reeve_store::SuperviseParams {
        stall_after: Duration::from_millis(400),
        // Long enough that the first stall is cleared before it escalates.
        escalate_after: Duration::from_millis(1500),
        limit: 10,
    });
    config.supervise_every = Duration::from_millis(20);
    let engine = Engine::start(
        store.clone(),
        config,
        Handlers::new().kind("agent", reporter.clone()),
    );
    let mut nj = NewJob::new("default", "agent");
    nj.heartbeat_timeout = Some(Duration::from_millis(300));
    let id = enqueue_one(&store, nj).await;
    wait_state(&store, id, JobState::Running).await;
    // Silent but alive (the engine heartbeats): stalled, not reaped.
    eventually("the stall", || async {
        store.get_job(id).await.unwrap().stalled_at.is_some()
    })
    .await;
    let mail = store.read_mail(id, false).await.unwrap();
    assert_eq!((mail.len(), mail[0].sender.as_str()), (1, "supervisor"));
    // A progress report rides the next heartbeat and clears it.
    reporter.go.notify_one();
    eventually("the stall cleared by the report", || async {
        let job = store.get_job(id).await.unwrap();
        job.stalled_at.is_none() && job.progress.as_deref() == Some("reading")
    })
    .await;
    // Silent again: stalled again, then escalated; still running.
    eventually("the escalation", || async {
        store.get_job(id).await.unwrap().escalated_at.is_some()
    })
    .await;
    let job = store.get_job(id).await.unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Running, 1));
    let events = store.job_events(id).await.unwrap();
    let count = |k: reeve_core::EventKind| events.iter().filter(|e| e.event == k).count();
    assert_eq!(count(reeve_core::EventKind::Stalled), 2);
    assert_eq!(count(reeve_core::EventKind::Escalated), 1);
    assert_eq!(store.read_mail(id, false).await.unwrap().len(), 2);
    assert!(engine.stats().stalled.load(Ordering::Relaxed) >= 2);
    engine.shutdown(Duration::from_millis(100)).await;
}
