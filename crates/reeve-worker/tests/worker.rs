//! The worker crate against a real daemon API: the `reeve-api` router on a
//! SQLite file in a temp dir, served on loopback, with auth on (admin,
//! worker and job tokens) and an engine doing the daemon's maintenance
//! (reaping, promotion). A TCP proxy between worker and daemon can cut the
//! network. Nothing is mocked.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reeve_api::tokens::WorkerToken;
use reeve_api::{ApiConfig, AppState, Runtime, RuntimeStats};
use reeve_core::{FailureReason, JobId, JobState, NewJob};
use reeve_engine::{Engine, EngineConfig, Handlers};
use reeve_sqlite::{SqliteOptions, SqliteStore};
use reeve_store::{NewMail, Store, StoreConfig};
use reeve_worker::{
    Client, Complete, Error, InProcess, JobContext, JobFailure, StopReason, Worker, handler_fn,
};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

const ADMIN: &str = "admin-token-of-the-worker-crate-tests";
const WORKER: &str = "worker-token-of-the-worker-crate-tests";

/// The API answers only what it is asked; this daemon runs nothing itself.
struct NoRuns;

impl Runtime for NoRuns {
    fn worker_id(&self) -> String {
        "test-daemon".into()
    }
    fn live_output(&self, _job: JobId, _from: u64) -> Option<(Vec<u8>, u64)> {
        None
    }
    fn cancel_local(&self, _job: JobId) {}
    fn stats(&self) -> RuntimeStats {
        RuntimeStats::default()
    }
}

/// A daemon: store, API on loopback, maintenance.
struct Daemon {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    addr: SocketAddr,
    config: Arc<ApiConfig>,
    maintenance: Arc<Engine>,
    server: JoinHandle<()>,
}

impl Daemon {
    async fn start() -> Daemon {
        Daemon::with_auth(true).await
    }

    /// With `auth` off there are no tokens at all: the API lets anyone do
    /// anything, and the epoch of a run's writes comes only from the call.
    async fn with_auth(auth: bool) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("reeve.db").display());
        let mut store_config = StoreConfig::default();
        store_config.retry.base = Duration::from_millis(100);
        store_config.retry.max = Duration::from_millis(200);
        store_config.retry.jitter = 0.0;
        let store = Arc::new(
            SqliteStore::open(&SqliteOptions::from_url(&url).unwrap(), store_config)
                .await
                .unwrap(),
        );
        let mut config = ApiConfig::with_admin_token(auth.then(|| ADMIN.into()));
        if auth {
            config.worker_tokens = vec![WorkerToken {
                name: "fleet".into(),
                token: WORKER.into(),
                kinds: Vec::new(),
                queues: Vec::new(),
            }];
        }
        let config = Arc::new(config);
        let state = AppState {
            store: store.clone(),
            runtime: Arc::new(NoRuns),
            config: config.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = reeve_api::router(state);
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let maintenance = Engine::start(
            store.clone(),
            EngineConfig::new("maintenance"),
            Handlers::new(),
        );
        Daemon {
            _dir: dir,
            store,
            addr,
            config,
            maintenance,
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn client(&self) -> Client {
        Client::new(&self.url()).unwrap().with_token(WORKER)
    }

    async fn enqueue(&self, kind: &str, payload: Value, heartbeat_timeout: Duration) -> JobId {
        let mut job = NewJob::new("default", kind);
        job.payload = payload;
        job.heartbeat_timeout = Some(heartbeat_timeout);
        job.max_attempts = 5;
        self.store.enqueue(vec![job]).await.unwrap()[0].job.id
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("{}{path}", self.url()))
            .bearer_auth(ADMIN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn job(&self, id: JobId) -> reeve_core::Job {
        self.store.get_job(id).await.unwrap()
    }

    async fn stop(self) {
        self.maintenance.shutdown(Duration::from_secs(1)).await;
        self.server.abort();
    }
}

/// A TCP proxy in front of the daemon whose network can be cut: open
/// connections are dropped and new ones closed at once, as by a failing
/// link.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn to(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (cut, links) = (cut.clone(), links.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: the connection closes at once
                    }
                    links.lock().unwrap().push(tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    }));
                }
            })
        };
        Proxy {
            addr,
            cut,
            links,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A worker running in a task, with its shutdown switch.
struct Running {
    stats: Arc<reeve_worker::WorkerStats>,
    shutdown: Arc<Notify>,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    fn start(worker: Worker) -> Running {
        let stats = worker.stats();
        let shutdown = Arc::new(Notify::new());
        let signal = shutdown.clone();
        let task = tokio::spawn(worker.run_until(async move { signal.notified().await }));
        Running {
            stats,
            shutdown,
            task,
        }
    }

    async fn registered(&self) -> String {
        let stats = self.stats.clone();
        eventually("the worker to register", Duration::from_secs(10), || {
            let stats = stats.clone();
            async move { stats.worker_id().is_some() }
        })
        .await;
        self.stats.worker_id().unwrap().to_string()
    }

    async fn shut_down(self) -> Result<(), Error> {
        self.shutdown.notify_one();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the worker stops")
            .unwrap()
    }
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[tokio::test]
async fn jobs_run_and_complete_with_their_results_turns_and_progress() {
    let d = Daemon::start().await;
    let handler = handler_fn(|ctx: JobContext| async move {
        let n = ctx.payload()["n"].as_u64().unwrap();
        ctx.report_turns(n);
        ctx.progress(format!("doubled {n}"))?;
        Ok(Some(json!({ "double": n * 2, "attempt": ctx.attempt() })))
    });
    let worker = Worker::builder(d.client())
        .name("doubler")
        .kinds(["double"])
        .slots(2)
        .build(handler)
        .unwrap();
    let running = Running::start(worker);
    let mut ids = Vec::new();
    for n in 1..=3u64 {
        ids.push(
            d.enqueue("double", json!({ "n": n }), Duration::from_secs(30))
                .await,
        );
    }
    let worker_id = running.registered().await;
    for (n, id) in (1..=3i64).zip(&ids) {
        eventually("the job to succeed", Duration::from_secs(10), || async {
            d.job(*id).await.state == JobState::Succeeded
        })
        .await;
        let job = d.job(*id).await;
        assert_eq!(job.result, Some(json!({ "double": n * 2, "attempt": 1 })));
        // Reported just before the end: carried by the last heartbeat.
        assert_eq!(job.turns, n);
        assert_eq!(
            job.progress.as_deref(),
            Some(format!("doubled {n}").as_str())
        );
        assert_eq!(job.claimed_by.as_deref(), Some(worker_id.as_str()));
    }
    let stats = running.stats.clone();
    running.shut_down().await.unwrap();
    assert_eq!(count(&stats.completed), 3);
    assert_eq!(count(&stats.claimed), 3);
    assert_eq!(count(&stats.lost) + count(&stats.refused), 0);
    // The drain deregistered it.
    assert!(
        d.store
            .get_worker(&worker_id)
            .await
            .map_or(true, |w| w.deregistered_at.is_some())
    );
    d.stop().await;
}

/// Each attempt and the checkpoint it started from.
type Starts = Arc<Mutex<Vec<(i32, Option<String>)>>>;

/// Counts from the checkpoint to `to`, a checkpoint after every step,
/// recording which checkpoint each attempt started from.
fn counting(started: Starts) -> impl reeve_worker::Handler {
    handler_fn(move |ctx: JobContext| {
        let started = started.clone();
        async move {
            let to = ctx.payload()["to"].as_u64().unwrap();
            let step = Duration::from_millis(ctx.payload()["step_ms"].as_u64().unwrap());
            let fail_at = ctx.payload()["fail_first_attempt_at"].as_u64();
            let saved = ctx
                .checkpoint()
                .map(|c| String::from_utf8(c.to_vec()).unwrap());
            started.lock().unwrap().push((ctx.attempt(), saved.clone()));
            let from: u64 = saved.map_or(0, |s| s.parse().unwrap());
            for n in from + 1..=to {
                tokio::select! {
                    () = tokio::time::sleep(step) => {}
                    () = ctx.cancelled() => return Err(JobFailure::cancelled()),
                }
                ctx.save_checkpoint(n.to_string()).await?;
                ctx.report_turns(n);
                ctx.progress(format!("counted {n} of {to}"))?;
                if ctx.attempt() == 1 && fail_at == Some(n) {
                    return Err(JobFailure::error("the first attempt gives up here"));
                }
            }
            let mail: Vec<String> = ctx
                .read_mail()
                .await?
                .into_iter()
                .map(|m| m.subject)
                .collect();
            Ok(Some(json!({ "resumed_from": from, "mail": mail })))
        }
    })
}

#[tokio::test]
async fn a_run_killed_midway_is_retried_from_its_checkpoint() {
    let d = Daemon::start().await;
    let started: Starts = Arc::default();
    let worker = |name: &str| {
        Worker::builder(d.client())
            .name(name)
            .kinds(["count"])
            .build(counting(started.clone()))
            .unwrap()
    };
    let a = Running::start(worker("a"));
    let id = d
        .enqueue(
            "count",
            json!({ "to": 12, "step_ms": 100 }),
            Duration::from_secs(1),
        )
        .await;
    eventually("a checkpoint past 3", Duration::from_secs(10), || async {
        d.store
            .load_checkpoint(id)
            .await
            .unwrap()
            .is_some_and(|c| String::from_utf8(c.data).unwrap().parse::<u64>().unwrap() >= 3)
    })
    .await;
    // Killed: its future is dropped, with every task of it.
    a.task.abort();
    eventually(
        "the dead run to be reaped",
        Duration::from_secs(10),
        || async { d.job(id).await.state != JobState::Running },
    )
    .await;
    let events = d.store.job_events(id).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("heartbeat_lost")),
        "{events:?}"
    );
    // Reaped: nothing of the dead run can apply any more.
    let last_saved =
        String::from_utf8(d.store.load_checkpoint(id).await.unwrap().unwrap().data).unwrap();
    let b = Running::start(worker("b"));
    eventually("the retry to succeed", Duration::from_secs(15), || async {
        d.job(id).await.state == JobState::Succeeded
    })
    .await;
    let job = d.job(id).await;
    assert_eq!(job.attempt, 2);
    let resumed_from: u64 = last_saved.parse().unwrap();
    assert!(resumed_from >= 3);
    assert_eq!(job.result.as_ref().unwrap()["resumed_from"], resumed_from);
    assert_eq!(
        *started.lock().unwrap(),
        vec![(1, None), (2, Some(last_saved.clone()))]
    );
    let checkpoint = d.store.load_checkpoint(id).await.unwrap().unwrap();
    assert_eq!(checkpoint.data, b"12");
    assert_eq!(checkpoint.epoch, 2);
    b.shut_down().await.unwrap();
    d.stop().await;
}

#[tokio::test]
async fn with_auth_off_a_run_checkpoints_and_completes() {
    let d = Daemon::with_auth(false).await;
    let started: Starts = Arc::default();
    let worker = Worker::builder(Client::new(&d.url()).unwrap())
        .kinds(["count"])
        .build(counting(started.clone()))
        .unwrap();
    let running = Running::start(worker);
    let id = d
        .enqueue(
            "count",
            json!({ "to": 3, "step_ms": 30 }),
            Duration::from_secs(30),
        )
        .await;
    eventually("the job to succeed", Duration::from_secs(10), || async {
        d.job(id).await.state == JobState::Succeeded
    })
    .await;
    assert_eq!(
        d.job(id).await.result,
        Some(json!({ "resumed_from": 0, "mail": [] }))
    );
    let checkpoint = d.store.load_checkpoint(id).await.unwrap().unwrap();
    assert_eq!(
        (checkpoint.data.as_slice(), checkpoint.epoch),
        (&b"3"[..], 1)
    );
    running.shut_down().await.unwrap();
    d.stop().await;
}

/// Waits for a stop, records why, and ends as a handler should (a failure),
/// or, when `late_success`, returns a success anyway.
fn waits_for_stop(
    started: Arc<Notify>,
    stopped: Arc<Mutex<Option<StopReason>>>,
    late_success: bool,
) -> impl reeve_worker::Handler {
    handler_fn(move |ctx: JobContext| {
        let (started, stopped) = (started.clone(), stopped.clone());
        async move {
            if ctx.attempt() > 1 {
                return Ok(Some(json!({ "attempt": ctx.attempt() })));
            }
            started.notify_one();
            tokio::select! {
                () = ctx.cancelled() => {}
                () = tokio::time::sleep(Duration::from_secs(20)) => {
                    return Err(JobFailure::error("never stopped"));
                }
            }
            *stopped.lock().unwrap() = ctx.stop_reason();
            if late_success {
                Ok(Some(json!({ "late": true })))
            } else {
                Err(JobFailure::cancelled())
            }
        }
    })
}

#[tokio::test]
async fn a_cancel_reaches_the_handler_through_the_heartbeat() {
    let d = Daemon::start().await;
    let started = Arc::new(Notify::new());
    let stopped = Arc::new(Mutex::new(None));
    let worker = Worker::builder(d.client())
        .kinds(["wait"])
        .build(waits_for_stop(started.clone(), stopped.clone(), false))
        .unwrap();
    let running = Running::start(worker);
    let id = d
        .enqueue("wait", json!({}), Duration::from_millis(900))
        .await;
    started.notified().await;
    let (status, body) = d
        .admin("POST", &format!("/v1/jobs/{id}/cancel"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(
        "the job to be cancelled",
        Duration::from_secs(10),
        || async { d.job(id).await.state == JobState::Cancelled },
    )
    .await;
    assert_eq!(*stopped.lock().unwrap(), Some(StopReason::Cancelled));
    let job = d.job(id).await;
    assert_eq!(job.failure_reason, Some(FailureReason::Cancelled));
    let stats = running.stats.clone();
    running.shut_down().await.unwrap();
    assert_eq!(count(&stats.failed), 1);
    assert_eq!(count(&stats.completed), 0);
    d.stop().await;
}

#[tokio::test]
async fn a_lost_lease_stops_the_handler_and_its_late_success_is_never_reported() {
    let d = Daemon::start().await;
    let proxy = Proxy::to(d.addr).await;
    let started = Arc::new(Notify::new());
    let stopped = Arc::new(Mutex::new(None));
    let client = Client::new(&proxy.url()).unwrap().with_token(WORKER);
    let worker = Worker::builder(client)
        .kinds(["wait"])
        .build(waits_for_stop(started.clone(), stopped.clone(), true))
        .unwrap();
    let running = Running::start(worker);
    let id = d
        .enqueue("wait", json!({}), Duration::from_millis(900))
        .await;
    started.notified().await;
    // Cut off from the daemon: no heartbeat gets through, so the local lease
    // deadline passes and the handler is stopped as lost.
    proxy.cut();
    eventually(
        "the handler to be stopped",
        Duration::from_secs(5),
        || async { stopped.lock().unwrap().is_some() },
    )
    .await;
    assert_eq!(*stopped.lock().unwrap(), Some(StopReason::LeaseLost));
    let stats = running.stats.clone();
    eventually("the run to end as lost", Duration::from_secs(5), || async {
        count(&stats.lost) == 1
    })
    .await;
    assert_eq!(count(&stats.completed), 0);
    // The daemon reaps it on its own clock.
    eventually("the run to be reaped", Duration::from_secs(10), || async {
        d.job(id).await.state != JobState::Running
    })
    .await;
    let job = d.job(id).await;
    assert_eq!(job.failure_reason, Some(FailureReason::HeartbeatLost));
    assert_eq!(job.result, None);
    // The lost run's completion, sent late with its own job token: refused.
    let token = d.config.job_tokens.issue(id, 1);
    let late = d
        .client()
        .complete(
            id,
            &token,
            &Complete {
                epoch: 1,
                result: Some(json!({ "late": true })),
                output: None,
            },
        )
        .await;
    match late {
        Err(Error::Conflict(r)) => assert_eq!(r.code, "not_running", "{r}"),
        other => panic!("a late completion must be refused with 409, got {other:?}"),
    }
    // Back on the network, the worker (which kept retrying) claims the retry.
    proxy.restore();
    eventually("the retry to succeed", Duration::from_secs(20), || async {
        d.job(id).await.state == JobState::Succeeded
    })
    .await;
    let job = d.job(id).await;
    assert_eq!(job.result, Some(json!({ "attempt": 2 })));
    assert_eq!(count(&stats.completed), 1);
    assert_eq!(count(&stats.lost), 1);
    running.shut_down().await.unwrap();
    d.stop().await;
}

#[tokio::test]
async fn a_completion_after_the_run_was_taken_away_is_refused_and_not_counted() {
    let d = Daemon::start().await;
    let go = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let handler = {
        let (go, started) = (go.clone(), started.clone());
        handler_fn(move |_ctx: JobContext| {
            let (go, started) = (go.clone(), started.clone());
            async move {
                started.notify_one();
                go.notified().await;
                Ok(Some(json!({ "late": true })))
            }
        })
    };
    let worker = Worker::builder(d.client())
        .kinds(["slow"])
        .build(handler)
        .unwrap();
    let running = Running::start(worker);
    // A long heartbeat timeout: no heartbeat comes before the completion.
    let id = d.enqueue("slow", json!({}), Duration::from_secs(60)).await;
    started.notified().await;
    let worker_id = running.registered().await;
    // An operator removes the worker: its run is released for retry.
    let (status, body) = d
        .admin("POST", &format!("/v1/workers/{worker_id}/deregister"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["released"], json!([id]));
    go.notify_one();
    let stats = running.stats.clone();
    eventually(
        "the completion to be refused",
        Duration::from_secs(5),
        || async { count(&stats.refused) == 1 },
    )
    .await;
    assert_eq!(count(&stats.completed), 0);
    let job = d.job(id).await;
    assert_ne!(job.state, JobState::Succeeded);
    assert_eq!(job.failure_reason, Some(FailureReason::WorkerShutdown));
    assert_eq!(job.result, None);
    // The daemon no longer knows the registration: the worker stops with
    // that refusal instead of claiming under it.
    let ended = tokio::time::timeout(Duration::from_secs(20), running.task)
        .await
        .expect("the worker stops")
        .unwrap();
    assert!(matches!(ended, Err(Error::NotFound(_))), "{ended:?}");
    d.stop().await;
}

#[tokio::test]
async fn a_run_reads_its_mail_once() {
    let d = Daemon::start().await;
    let started = Arc::new(Notify::new());
    let handler = {
        let started = started.clone();
        handler_fn(move |ctx: JobContext| {
            let started = started.clone();
            async move {
                started.notify_one();
                // The heartbeat says when mail is waiting.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while ctx.unread_mail().unwrap_or(0) == 0 {
                    if tokio::time::Instant::now() > deadline {
                        return Err(JobFailure::error("no mail came"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let first = ctx.read_mail().await?;
                let again = ctx.read_mail().await?;
                Ok(Some(json!({
                    "first": first.iter().map(|m| (m.subject.clone(), m.read_at.is_none())).collect::<Vec<_>>(),
                    "again": again.iter().map(|m| (m.subject.clone(), m.read_at.is_none())).collect::<Vec<_>>(),
                })))
            }
        })
    };
    let worker = Worker::builder(d.client())
        .kinds(["inbox"])
        .build(handler)
        .unwrap();
    let running = Running::start(worker);
    let id = d
        .enqueue("inbox", json!({}), Duration::from_millis(600))
        .await;
    started.notified().await;
    let (status, body) = d
        .admin(
            "POST",
            &format!("/v1/jobs/{id}/mail"),
            Some(json!({ "subject": "hello", "body": "look at the logs", "by": "ops" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    eventually("the job to succeed", Duration::from_secs(10), || async {
        d.job(id).await.state == JobState::Succeeded
    })
    .await;
    assert_eq!(
        d.job(id).await.result,
        Some(json!({ "first": [["hello", true]], "again": [["hello", false]] }))
    );
    assert_eq!(d.store.unread_mail(id).await.unwrap(), 0);
    running.shut_down().await.unwrap();
    d.stop().await;
}

#[tokio::test]
async fn shutdown_drains_then_releases_what_is_left() {
    let d = Daemon::start().await;
    let started = Arc::new(Notify::new());
    let stopped = Arc::new(Mutex::new(None));
    let handler = {
        let (started, stopped) = (started.clone(), stopped.clone());
        handler_fn(move |ctx: JobContext| {
            let (started, stopped) = (started.clone(), stopped.clone());
            async move {
                started.notify_one();
                let ms = ctx.payload()["ms"].as_u64().unwrap();
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(None),
                    () = ctx.cancelled() => {
                        *stopped.lock().unwrap() = ctx.stop_reason();
                        Err(JobFailure::error("interrupted"))
                    }
                }
            }
        })
    };
    let worker = Worker::builder(d.client())
        .kinds(["nap"])
        .slots(2)
        .drain_grace(Duration::from_millis(800))
        .build(handler)
        .unwrap();
    let running = Running::start(worker);
    let short = d
        .enqueue("nap", json!({ "ms": 400 }), Duration::from_secs(30))
        .await;
    let long = d
        .enqueue("nap", json!({ "ms": 20_000 }), Duration::from_secs(30))
        .await;
    started.notified().await;
    started.notified().await;
    let worker_id = running.registered().await;
    let stats = running.stats.clone();
    let began = tokio::time::Instant::now();
    running.shut_down().await.unwrap();
    assert!(began.elapsed() < Duration::from_secs(10));
    // The short run finished within the grace; the long one was stopped
    // and released for retry by the deregistration.
    assert_eq!(d.job(short).await.state, JobState::Succeeded);
    let long = d.job(long).await;
    assert_eq!(long.failure_reason, Some(FailureReason::WorkerShutdown));
    assert!(matches!(
        long.state,
        JobState::Retryable | JobState::Available
    ));
    assert_eq!(*stopped.lock().unwrap(), Some(StopReason::Shutdown));
    assert_eq!(count(&stats.completed), 1);
    assert_eq!(count(&stats.released), 1);
    let worker = d.store.get_worker(&worker_id).await;
    assert!(worker.map_or(true, |w| w.deregistered_at.is_some()));
    d.stop().await;
}

#[tokio::test]
async fn the_same_handler_runs_in_process_under_the_engine() {
    let d = Daemon::start().await;
    let started: Starts = Arc::default();
    let store: Arc<dyn Store> = d.store.clone();
    let engine = Engine::start(
        store.clone(),
        EngineConfig::new("in-process"),
        Handlers::new().kind(
            "count",
            Arc::new(InProcess::new(counting(started.clone()), store.clone())),
        ),
    );
    let id = d
        .enqueue(
            "count",
            json!({ "to": 6, "step_ms": 100, "fail_first_attempt_at": 3 }),
            Duration::from_millis(300),
        )
        .await;
    d.store
        .send_mail(NewMail {
            job_id: id,
            sender: "operator".into(),
            subject: "keep going".into(),
            body: String::new(),
        })
        .await
        .unwrap();
    eventually("the job to succeed", Duration::from_secs(15), || async {
        d.job(id).await.state == JobState::Succeeded
    })
    .await;
    let job = d.job(id).await;
    // The first attempt failed after checkpointing 3; the retry resumed there.
    assert_eq!(job.attempt, 2);
    assert_eq!(
        job.result,
        Some(json!({ "resumed_from": 3, "mail": ["keep going"] }))
    );
    assert_eq!(
        *started.lock().unwrap(),
        vec![(1, None), (2, Some("3".to_string()))]
    );
    // Checkpoints, turns and progress went through the engine's reports.
    let checkpoint = d.store.load_checkpoint(id).await.unwrap().unwrap();
    assert_eq!(
        (checkpoint.data.as_slice(), checkpoint.epoch),
        (&b"6"[..], 2)
    );
    assert!(job.turns >= 1, "turns reported: {}", job.turns);
    assert!(
        job.progress
            .as_deref()
            .is_some_and(|p| p.starts_with("counted ")),
        "{:?}",
        job.progress
    );
    engine.shutdown(Duration::from_secs(1)).await;
    d.stop().await;
}

#[tokio::test]
async fn calls_are_refused_with_errors_that_say_what_to_do() {
    let d = Daemon::start().await;
    // Bad settings are caught before anything is sent, naming the field.
    match Client::new("ftp://127.0.0.1:1") {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "url"),
        other => panic!("{other:?}"),
    }
    let no_kinds =
        Worker::builder(d.client()).build(handler_fn(|_ctx: JobContext| async { Ok(None) }));
    assert!(matches!(no_kinds, Err(Error::InvalidArgument { ref field, .. }) if field == "kinds"));
    let no_slots = Worker::builder(d.client())
        .kinds(["k"])
        .slots(0)
        .build(handler_fn(|_ctx: JobContext| async { Ok(None) }));
    assert!(matches!(no_slots, Err(Error::InvalidArgument { ref field, .. }) if field == "slots"));

    let registration = reeve_worker::Registration {
        name: "probe".into(),
        host: None,
        kinds: vec!["probe".into()],
        queues: Vec::new(),
        labels: Vec::new(),
        slots: 1,
        heartbeats: true,
        version: None,
    };
    // A wrong token.
    let stranger = Client::new(&d.url()).unwrap().with_token("not-a-token");
    match stranger.register(&registration).await {
        Err(Error::Auth(r)) => assert_eq!(r.status, 401),
        other => panic!("{other:?}"),
    }
    // Bad input the daemon refuses names its field.
    let zero = reeve_worker::Registration {
        slots: 0,
        ..registration.clone()
    };
    match d.client().register(&zero).await {
        Err(Error::Input(r)) => assert_eq!(r.field.as_deref(), Some("slots"), "{r}"),
        other => panic!("{other:?}"),
    }
    // An unknown registration.
    assert!(matches!(
        d.client()
            .claim("w-0000000000000000", 1, Duration::ZERO)
            .await,
        Err(Error::NotFound(_))
    ));
    // A daemon that is not there is transient.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = Client::new(&format!("http://{}", closed.local_addr().unwrap())).unwrap();
    drop(closed);
    assert!(
        gone.register(&registration)
            .await
            .unwrap_err()
            .is_transient()
    );

    // A claimed run: its checkpoint, and fenced writes with the wrong epoch.
    let registered = d.client().register(&registration).await.unwrap();
    let id = d.enqueue("probe", json!({}), Duration::from_secs(30)).await;
    let runs = d
        .client()
        .claim(&registered.worker.id, 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!((run.job.id, run.job.epoch, run.checkpoint), (id, 1, false));
    assert_eq!(
        d.client().load_checkpoint(id, &run.token).await.unwrap(),
        None
    );
    let stale = Complete {
        epoch: 7,
        result: None,
        output: None,
    };
    // The job token is for epoch 1 only.
    match d.client().complete(id, &run.token, &stale).await {
        Err(Error::Auth(r)) => assert_eq!(r.status, 403),
        other => panic!("{other:?}"),
    }
    // With the admin token the store's fence answers: a stale epoch.
    match d.client().complete(id, ADMIN, &stale).await {
        Err(e @ Error::Conflict(_)) => {
            assert!(e.is_conflict());
            let r = e.refusal().unwrap();
            assert_eq!(
                (r.code.as_str(), &r.body["expected"]),
                ("stale_epoch", &json!(1))
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(d.job(id).await.state, JobState::Running);
    let gone = d.client().deregister(&registered.worker.id).await.unwrap();
    assert_eq!(gone.released, vec![id]);
    d.stop().await;
}
