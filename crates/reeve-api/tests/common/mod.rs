//! The in-process harness the API tests share: a real SQLite store in a
//! temp dir, the router called with `tower::ServiceExt::oneshot` (no server,
//! no mocks of the store), the admin and worker tokens of the fleet tests,
//! the error-shape assertions, [`Snapshot`], every durable row the API can
//! change, so a test can prove a refused request changed nothing, and
//! [`World`], a fleet with one of everything, to call every operation of
//! the document in with a body the admin could send.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use reeve_api::{ApiConfig, AppState, Runtime, RuntimeStats, router};
use reeve_core::{Job, JobId};
use reeve_sqlite::{SqliteOptions, SqliteStore};
use reeve_store::{ClaimParams, Finish, KindFilter, Outcome, Store, StoreConfig};
use serde_json::{Value, json};
use tower::ServiceExt;

/// A runtime that records what the API asked of it.
#[derive(Default)]
pub struct TestRuntime {
    pub cancelled: Mutex<Vec<JobId>>,
    pub live: Mutex<HashMap<JobId, Vec<u8>>>,
}

impl Runtime for TestRuntime {
    fn worker_id(&self) -> String {
        "test-worker-1".into()
    }

    fn live_output(&self, job: JobId, from: u64) -> Option<(Vec<u8>, u64)> {
        let live = self.live.lock().unwrap();
        let out = live.get(&job)?;
        let start = (from as usize).min(out.len());
        Some((out[start..].to_vec(), out.len() as u64))
    }

    fn cancel_local(&self, job: JobId) {
        self.cancelled.lock().unwrap().push(job);
    }

    fn stats(&self) -> RuntimeStats {
        RuntimeStats {
            leader: true,
            slots: 4,
            busy: 1,
            claimed_total: 7,
            finished_total: 5,
            refused_writebacks_total: 1,
            reaped_total: 2,
            heartbeats_total: 42,
        }
    }
}

pub struct Harness {
    _dir: tempfile::TempDir,
    pub store: Arc<SqliteStore>,
    pub runtime: Arc<TestRuntime>,
    pub app: Router,
    pub token: Option<String>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Harness {
    pub async fn new() -> Self {
        Harness::with_config(ApiConfig::default()).await
    }

    pub async fn with_config(config: ApiConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("reeve.db").display());
        let store = Arc::new(
            SqliteStore::open(
                &SqliteOptions::from_url(&url).unwrap(),
                StoreConfig::default(),
            )
            .await
            .unwrap(),
        );
        let runtime = Arc::new(TestRuntime::default());
        let token = config.admin_token.clone();
        let state = AppState {
            store: store.clone(),
            runtime: runtime.clone(),
            config: Arc::new(config),
        };
        Harness {
            _dir: dir,
            store,
            runtime,
            app: router(state),
            token,
        }
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    pub fn request(&self, method: Method, uri: &str) -> axum::http::request::Builder {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = &self.token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.send(self.request(Method::GET, uri).body(Body::empty()).unwrap())
            .await
    }

    pub async fn raw(&self, method: Method, uri: &str, body: impl Into<String>) -> Reply {
        self.send(
            self.request(method, uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.into()))
                .unwrap(),
        )
        .await
    }

    pub async fn post(&self, uri: &str, body: Value) -> Reply {
        self.raw(Method::POST, uri, body.to_string()).await
    }

    pub async fn post_empty(&self, uri: &str) -> Reply {
        self.send(self.request(Method::POST, uri).body(Body::empty()).unwrap())
            .await
    }

    pub async fn enqueue(&self, body: Value) -> Job {
        let r = self.post("/v1/jobs", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        serde_json::from_value(r.json).unwrap()
    }

    /// Claims one job directly on the store, as an executor would.
    pub async fn claim(&self) -> Job {
        let mut jobs = self
            .store
            .claim(ClaimParams {
                worker: "exec-1".into(),
                queues: None,
                kinds: KindFilter::Any,
                limit: 1,
                heartbeats: true,
                labels: Vec::new(),
            })
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1);
        jobs.pop().unwrap()
    }

    pub async fn total_jobs(&self) -> u64 {
        self.store.status().await.unwrap().by_state.values().sum()
    }
}

pub fn assert_error(r: &Reply, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.json["error"], code, "{}", r.text);
    assert!(r.json["message"].is_string(), "{}", r.text);
    assert!(
        r.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
}

pub fn assert_field(r: &Reply, status: StatusCode, code: &str, field: &str) {
    assert_error(r, status, code);
    assert_eq!(r.json["field"], field, "{}", r.text);
}

pub const ADMIN: &str = "admin-token-for-workers";
pub const WORKER: &str = "worker-token-agents-only";

pub async fn fleet_harness() -> Harness {
    Harness::with_config(ApiConfig {
        worker_tokens: vec![reeve_api::tokens::WorkerToken {
            name: "agents".into(),
            token: WORKER.into(),
            kinds: vec!["agent".into()],
            queues: vec![],
        }],
        ..ApiConfig::with_admin_token(Some(ADMIN.into()))
    })
    .await
}

impl Harness {
    /// A request with `token` (or none) instead of the harness's own.
    pub async fn call(
        &self,
        token: Option<&str>,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send(b.body(body).unwrap()).await
    }

    /// Registers a worker with the worker token; its id.
    pub async fn register(&self, body: Value) -> String {
        let r = self
            .call(
                Some(WORKER),
                Method::POST,
                "/v1/workers/register",
                Some(body),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json["worker"]["id"].as_str().unwrap().to_string()
    }

    /// One claim of the worker `id`: (job, job token).
    pub async fn worker_claim(&self, id: &str) -> Vec<(Job, String)> {
        let r = self
            .call(
                Some(WORKER),
                Method::POST,
                &format!("/v1/workers/{id}/claim"),
                Some(json!({"limit": 5, "wait_ms": 0})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.json["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|run| {
                (
                    serde_json::from_value(run["job"].clone()).unwrap(),
                    run["token"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

/// Every durable row the API can change, as text: jobs, their events,
/// output, checkpoints and mail, schedules and their firings, queues,
/// limits, pressure, audit records and workers. Two snapshots are equal
/// only when nothing the API wrote differs.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub jobs: Vec<String>,
    pub events: Vec<String>,
    pub runs: Vec<String>,
    pub schedules: Vec<String>,
    pub settings: Vec<String>,
    pub workers: Vec<String>,
}

impl Harness {
    /// Fails the run `job` at `epoch` with a retryable error and moves the
    /// clock past its backoff, so the next claim takes it again at a new
    /// epoch (and the run's job token becomes an old attempt's).
    pub async fn fail_for_retry(&self, job: i64, epoch: i64) {
        self.store
            .finish(vec![Finish {
                job,
                epoch,
                outcome: Outcome::Failed {
                    reason: reeve_core::FailureReason::Error,
                    error: None,
                },
                output: None,
            }])
            .await
            .unwrap()
            .remove(0)
            .expect("the run was failed");
        self.store
            .advance_clock(std::time::Duration::from_secs(3600));
        self.store.promote_due(10).await.unwrap();
    }

    /// What the store holds now (see [`Snapshot`]). Reads only: mail is
    /// read without marking it read.
    pub async fn snapshot(&self) -> Snapshot {
        let store = &self.store;
        let jobs = store
            .list_jobs(reeve_core::JobFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .items;
        let mut events = Vec::new();
        let mut runs = Vec::new();
        for job in &jobs {
            for e in store.job_events(job.id).await.unwrap() {
                events.push(format!("{e:?}"));
            }
            runs.push(format!("{:?}", store.job_output(job.id).await.unwrap()));
            runs.push(format!(
                "{:?}",
                store.load_checkpoint(job.id).await.unwrap()
            ));
            runs.push(format!(
                "{:?}",
                store.read_mail(job.id, false).await.unwrap()
            ));
        }
        let mut schedules = Vec::new();
        for s in store.list_schedules().await.unwrap() {
            schedules.push(format!(
                "{:?}",
                store
                    .firing_history(&s.name, reeve_store::FiringQuery::latest(1000))
                    .await
                    .unwrap()
            ));
            schedules.push(format!("{s:?}"));
        }
        let settings = vec![
            format!("{:?}", store.list_queues().await.unwrap()),
            format!("{:?}", store.limits().await.unwrap()),
            format!("{:?}", store.list_pressure().await.unwrap()),
            format!("{:?}", store.list_audit(1000).await.unwrap()),
        ];
        let workers = store
            .list_workers(1000, std::time::Duration::from_secs(365 * 86400))
            .await
            .unwrap()
            .iter()
            .map(|w| format!("{w:?}"))
            .collect();
        Snapshot {
            jobs: jobs.iter().map(|j| format!("{j:?}")).collect(),
            events,
            runs,
            schedules,
            settings,
            workers,
        }
    }
}

/// A small world to call every operation in: a fleet daemon's API with a
/// registered worker, job A running at epoch 2 (its epoch-1 token kept),
/// job B running, a cancelled job, a schedule, a pressure signal, and mail
/// and a checkpoint for A.
pub struct World {
    pub h: Harness,
    pub worker: String,
    pub a: Job,
    pub a_token: String,
    pub a_old_token: String,
    pub b_token: String,
    /// A cancelled job (for retry).
    pub cancelled: reeve_core::JobId,
}

pub async fn world() -> World {
    let h = fleet_harness().await;
    let worker = h
        .register(json!({"name": "w", "kinds": ["agent"], "slots": 4}))
        .await;
    let admin = |method: Method, uri: &str, body: Value| {
        let h = &h;
        let uri = uri.to_string();
        async move {
            let r = h.call(Some(ADMIN), method, &uri, Some(body)).await;
            assert!(r.status.is_success(), "{uri}: {}", r.text);
            r
        }
    };
    admin(Method::POST, "/v1/jobs", json!({"kind": "agent"})).await;
    let (first, a_old_token) = h.worker_claim(&worker).await.remove(0);
    h.fail_for_retry(first.id, first.epoch).await;
    admin(Method::POST, "/v1/jobs", json!({"kind": "agent"})).await;
    let runs = h.worker_claim(&worker).await;
    assert_eq!(runs.len(), 2, "A again and B");
    let (a, a_token) = runs.iter().find(|(j, _)| j.id == first.id).unwrap().clone();
    let (_, b_token) = runs.iter().find(|(j, _)| j.id != first.id).unwrap().clone();
    assert_eq!(a.epoch, first.epoch + 1);
    admin(
        Method::POST,
        "/v1/schedules/apply",
        json!({"schedules": [{"name": "nightly", "every": "1h", "job": {"kind": "agent"}}]}),
    )
    .await;
    admin(
        Method::POST,
        "/v1/pressure",
        json!({"source": "deploy", "ttl_seconds": 600}),
    )
    .await;
    admin(
        Method::POST,
        &format!("/v1/jobs/{}/mail", a.id),
        json!({"subject": "s", "body": "b"}),
    )
    .await;
    let r = h
        .send(
            Request::builder()
                .method(Method::PUT)
                .uri(format!("/v1/jobs/{}/checkpoint", a.id))
                .header(header::AUTHORIZATION, format!("Bearer {a_token}"))
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Body::from("state-1"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let cancelled = admin(Method::POST, "/v1/jobs", json!({"kind": "other"}))
        .await
        .json["id"]
        .as_i64()
        .unwrap();
    admin(
        Method::POST,
        &format!("/v1/jobs/{cancelled}/cancel"),
        json!({}),
    )
    .await;
    World {
        h,
        cancelled,
        worker,
        a,
        a_token,
        a_old_token,
        b_token,
    }
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Payload {
    None,
    Json(Value),
    Form(&'static str),
    Bytes(&'static str),
}

/// The body of a request to `operation` that the admin could make in `w`.
pub fn payload(operation: &str, w: &World) -> Payload {
    let a = &w.a;
    match operation {
        "login" => Payload::Form("token=admin-token-for-workers"),
        "enqueue" => Payload::Json(json!({"kind": "agent"})),
        "enqueueBatch" => Payload::Json(json!({"jobs": [{"kind": "agent"}]})),
        "sendMail" => Payload::Json(json!({"subject": "s", "body": "b"})),
        "patchQueue" => Payload::Json(json!({"concurrency": 3})),
        "putLimits" => Payload::Json(json!({"global": 10})),
        "applySchedules" => Payload::Json(
            json!({"schedules": [{"name": "hourly", "every": "1h", "job": {"kind": "agent"}}]}),
        ),
        "raisePressure" => Payload::Json(json!({"source": "load", "ttl_seconds": 60})),
        "clearPressure" => Payload::Json(json!({"source": "deploy"})),
        "registerWorker" => Payload::Json(json!({"name": "x", "kinds": ["agent"], "slots": 1})),
        "claim" => Payload::Json(json!({"wait_ms": 0})),
        "resumeSchedule" | "runSchedule" => Payload::Json(json!({"by": "ops"})),
        "heartbeatWorker" => Payload::Json(json!({"runs": [{"job": a.id, "epoch": a.epoch}]})),
        "completeWorkerRun" => Payload::Json(json!({"job": a.id, "epoch": a.epoch})),
        "failWorkerRun" => Payload::Json(json!({"job": a.id, "epoch": a.epoch, "reason": "error"})),
        "heartbeatJob" | "completeJob" => Payload::Json(json!({"epoch": a.epoch})),
        "failJob" => Payload::Json(json!({"epoch": a.epoch, "reason": "error"})),
        "saveCheckpoint" => Payload::Bytes("state-2"),
        _ => Payload::None,
    }
}

/// The operation's path with its parameters filled in from the world.
pub fn concrete_path(template: &str, operation: &str, w: &World) -> String {
    let id = if template.starts_with("/v1/workers/") {
        w.worker.clone()
    } else if operation == "retryJob" {
        w.cancelled.to_string()
    } else {
        w.a.id.to_string()
    };
    let name = if template.starts_with("/v1/queues/") {
        "default"
    } else {
        "nightly"
    };
    let mut path = template
        .replace("{id}", &id)
        .replace("{name}", name)
        .replace("{source}", "deploy");
    if operation == "saveCheckpoint" {
        path.push_str(&format!("?epoch={}", w.a.epoch));
    }
    path
}
