//! The worker protocol (SPEC §6): remote workers register, long-poll for
//! claims, heartbeat their runs, complete or fail them, and deregister;
//! runs read and write checkpoints and mail with their job tokens.
//!
//! **Invariants.** Every run write is fenced on `(job, epoch)` by the store,
//! exactly as for in-process runs; a job token may act only on its own job
//! and epoch, a worker token only within its kinds and queues. A claim
//! answers each job with the job token of that claim, so a run can prove
//! which epoch it is. Deregistering releases the worker's runs at once
//! (`worker_shutdown`, retried). A worker that stops heartbeating is reaped
//! after `heartbeat_timeout` counted from its claim; one that registered as
//! not heartbeating is bounded by `max_run_duration` only. A claim passes
//! the registration's labels, so a worker takes only the pinned jobs whose
//! requirements it meets; [`waiting_for`] says when no live worker does.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use reeve_core::{FailureReason, Job, JobId, JobState};
use reeve_store::{ClaimParams, KindFilter, NewMail, NewWorker, Store, WorkerRecord};
use serde::{Deserialize, Serialize};

use crate::extract::{ApiJson, ApiQuery, JobIdParam, OptionalJson, PathText};
use crate::jobs::{
    CompleteRequest, FailRequest, HeartbeatRequest, HeartbeatResponse, beat, complete_run,
    fail_run, own_run,
};
use crate::tokens::Principal;
use crate::{ApiError, AppState};

type ApiResult<T> = Result<T, ApiError>;

/// Longest a claim waits for work.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Most jobs one claim takes.
const MAX_CLAIM: u32 = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterRequest {
    name: String,
    host: Option<String>,
    kinds: Vec<String>,
    #[serde(default)]
    queues: Vec<String>,
    #[serde(default)]
    labels: Vec<String>,
    slots: u32,
    #[serde(default = "yes")]
    heartbeats: bool,
    version: Option<String>,
}

fn yes() -> bool {
    true
}

fn printable(field: &str, v: &str, max: usize) -> ApiResult<()> {
    if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(ApiError::input(
            field,
            format!("must be 1 to {max} printable characters"),
        ));
    }
    Ok(())
}

/// Within the token's allowance: its list when the request gives none, and
/// never more than it.
fn within(field: &str, asked: Vec<String>, allowed: &[String]) -> ApiResult<Vec<String>> {
    if allowed.is_empty() {
        return Ok(asked);
    }
    if asked.is_empty() {
        return Ok(allowed.to_vec());
    }
    match asked.iter().find(|a| !allowed.contains(a)) {
        Some(a) => Err(ApiError::Forbidden(format!(
            "{field}: this worker token does not allow {a:?}"
        ))),
        None => Ok(asked),
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Registered {
    worker: WorkerRecord,
    /// How often to heartbeat: a third of the staleness bound (the default
    /// heartbeat timeout), at most 10 s.
    heartbeat_interval_ms: u64,
}

/// `POST /v1/workers/register` → a fresh worker id.
pub(crate) async fn register(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    printable("name", &req.name, 200)?;
    if let Some(h) = &req.host {
        printable("host", h, 200)?;
    }
    if !(1..=10_000).contains(&req.slots) {
        return Err(ApiError::input("slots", "must be between 1 and 10000"));
    }
    for (i, k) in req.kinds.iter().enumerate() {
        reeve_core::validate::name(&format!("kinds[{i}]"), k)?;
    }
    for (i, q) in req.queues.iter().enumerate() {
        reeve_core::validate::name(&format!("queues[{i}]"), q)?;
    }
    for (i, l) in req.labels.iter().enumerate() {
        reeve_core::placement::label(&format!("labels[{i}]"), l)?;
    }
    let (kinds, queues) = match &principal {
        Principal::Worker { kinds, queues, .. } => (
            within("kinds", req.kinds, kinds)?,
            within("queues", req.queues, queues)?,
        ),
        _ => (req.kinds, req.queues),
    };
    if kinds.is_empty() {
        return Err(ApiError::input("kinds", "name the kinds this worker runs"));
    }
    let worker = state
        .store
        .register_worker(NewWorker {
            name: req.name,
            host: req.host,
            kinds,
            queues,
            labels: req.labels,
            slots: req.slots,
            heartbeats: req.heartbeats,
            version: req.version,
        })
        .await?;
    tracing::info!(target: "reeve::worker", event = "worker_registered", worker = %worker.id, name = %worker.worker.name);
    // Often enough that a live worker never looks stale.
    let interval = (state.config.worker_stale_after / 3).min(Duration::from_secs(10));
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            worker,
            heartbeat_interval_ms: interval.as_millis() as u64,
        }),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClaimRequest {
    #[serde(default)]
    limit: Option<u32>,
    /// Wait up to this long for work (long-poll), at most 30 s.
    #[serde(default)]
    wait_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ClaimedRun {
    job: Job,
    /// The job token of this claim: heartbeat, complete, fail, checkpoint
    /// and mail of this run, and nothing else.
    token: String,
    /// Whether the job has a checkpoint to resume from
    /// (`GET /v1/jobs/{id}/checkpoint`).
    checkpoint: bool,
}

/// A worker token may act for a registration only within its own kinds and
/// queues (the ones it could have registered), so no token can borrow a
/// broader registration.
fn may_act_for(principal: &Principal, worker: &WorkerRecord) -> ApiResult<()> {
    if let Principal::Worker { kinds, queues, .. } = principal {
        let outside = |asked: &[String], allowed: &[String]| {
            !allowed.is_empty() && (asked.is_empty() || asked.iter().any(|a| !allowed.contains(a)))
        };
        if outside(&worker.worker.kinds, kinds) || outside(&worker.worker.queues, queues) {
            return Err(ApiError::Forbidden(format!(
                "this worker token does not cover worker {}'s kinds and queues",
                worker.id
            )));
        }
    }
    Ok(())
}

/// The registration `id`, if the token may act for it (reads only).
async fn authorized_worker(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> ApiResult<WorkerRecord> {
    let worker = state.store.get_worker(id).await?;
    may_act_for(principal, &worker)?;
    Ok(worker)
}

/// The registration `id` is, seen now, if the token may act for it. Called
/// only once the request is known to be valid, so a refused request does
/// not even move the worker's `last_seen_at`.
async fn acting_worker(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> ApiResult<WorkerRecord> {
    authorized_worker(state, principal, id).await?;
    Ok(state.store.touch_worker(id).await?)
}

/// `POST /v1/workers/{id}/claim`: up to `limit` jobs of the worker's kinds
/// and queues, waiting up to `wait_ms` for one to become claimable.
pub(crate) async fn claim(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathText(id): PathText,
    OptionalJson(req): OptionalJson<ClaimRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = req.limit.unwrap_or(1);
    if !(1..=MAX_CLAIM).contains(&limit) {
        return Err(ApiError::input(
            "limit",
            format!("must be between 1 and {MAX_CLAIM}"),
        ));
    }
    let worker = acting_worker(&state, &principal, &id).await?;
    let wait = Duration::from_millis(req.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    let params = ClaimParams {
        worker: worker.id.clone(),
        queues: (!worker.worker.queues.is_empty()).then(|| worker.worker.queues.clone()),
        kinds: KindFilter::Only {
            kinds: worker.worker.kinds.clone(),
            commands: false,
        },
        limit,
        heartbeats: worker.worker.heartbeats,
        labels: worker.worker.labels.clone(),
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut work = state.store.signals().work.subscribe();
    let jobs = loop {
        work.borrow_and_update();
        let jobs = state.store.claim(params.clone()).await?;
        if !jobs.is_empty() || tokio::time::Instant::now() >= deadline {
            break jobs;
        }
        // Woken by new work, or at the deadline; a bounded re-check covers
        // work made claimable by another process without a signal here.
        let nap = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(Duration::from_secs(1));
        let _ = tokio::time::timeout(nap, work.changed()).await;
    };
    let mut runs = Vec::with_capacity(jobs.len());
    for job in jobs {
        let checkpoint = state.store.load_checkpoint(job.id).await?.is_some();
        runs.push(ClaimedRun {
            token: state.config.job_tokens.issue(job.id, job.epoch),
            checkpoint,
            job,
        });
    }
    Ok(Json(
        serde_json::json!({ "worker_id": worker.id, "runs": runs }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunBeat {
    job: JobId,
    // The fields of `HeartbeatRequest` spelled out, not `#[serde(flatten)]`:
    // flattening loses the path of a deserialization error (so a 400 could
    // not name `runs[0].epoch`) and defeats `deny_unknown_fields`.
    epoch: i64,
    #[serde(default)]
    turns: Option<i64>,
    #[serde(default)]
    progress: Option<String>,
}

impl RunBeat {
    fn beat(self) -> HeartbeatRequest {
        HeartbeatRequest {
            epoch: self.epoch,
            turns: self.turns,
            progress: self.progress,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerHeartbeat {
    #[serde(default)]
    runs: Vec<RunBeat>,
}

#[derive(Debug, Serialize)]
pub(crate) struct RunAnswer {
    job: JobId,
    /// `ok`, `cancel_requested`, `turn_limit_exceeded` (stop: the run is
    /// over) or `lease_lost` (stop at once; write nothing back).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_remaining_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unread_mail: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    turns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_turns: Option<i64>,
}

/// `POST /v1/workers/{id}/heartbeat`: the worker is alive, and each of its
/// runs is heartbeated (fenced on its epoch).
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathText(id): PathText,
    ApiJson(req): ApiJson<WorkerHeartbeat>,
) -> ApiResult<Json<serde_json::Value>> {
    let worker = acting_worker(&state, &principal, &id).await?;
    let mut answers = Vec::with_capacity(req.runs.len());
    for run in req.runs {
        let job = run.job;
        answers.push(match beat(&state, job, run.beat()).await {
            Ok(HeartbeatResponse {
                status,
                lease_remaining_ms,
                unread_mail,
                turns,
                max_turns,
                ..
            }) => RunAnswer {
                job,
                status,
                reason: None,
                lease_remaining_ms: Some(lease_remaining_ms),
                unread_mail: Some(unread_mail),
                turns: Some(turns),
                max_turns,
            },
            Err(ApiError::LeaseLost(lost)) => RunAnswer {
                job,
                status: "lease_lost",
                reason: Some(lost.code().to_string()),
                lease_remaining_ms: None,
                unread_mail: None,
                turns: None,
                max_turns: None,
            },
            Err(e) => return Err(e),
        });
    }
    Ok(Json(
        serde_json::json!({ "worker_id": worker.id, "runs": answers }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerComplete {
    job: JobId,
    // `CompleteRequest`'s fields, spelled out (see `RunBeat`).
    epoch: i64,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    output: Option<String>,
}

/// `POST /v1/workers/{id}/complete`: fenced on the run's epoch.
pub(crate) async fn complete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathText(id): PathText,
    ApiJson(req): ApiJson<WorkerComplete>,
) -> ApiResult<Json<Job>> {
    authorized_worker(&state, &principal, &id).await?;
    let done = CompleteRequest {
        epoch: req.epoch,
        result: req.result,
        output: req.output,
    };
    let job = complete_run(&state, req.job, done).await?;
    state.store.touch_worker(&id).await?;
    Ok(Json(job))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerFail {
    job: JobId,
    // `FailRequest`'s fields, spelled out (see `RunBeat`).
    epoch: i64,
    #[serde(default)]
    reason: Option<reeve_core::FailureReason>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    output: Option<String>,
}

/// `POST /v1/workers/{id}/fail`: fenced on the run's epoch.
pub(crate) async fn fail(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathText(id): PathText,
    ApiJson(req): ApiJson<WorkerFail>,
) -> ApiResult<Json<Job>> {
    authorized_worker(&state, &principal, &id).await?;
    let failed = FailRequest {
        epoch: req.epoch,
        reason: req.reason,
        error: req.error,
        output: req.output,
    };
    let job = fail_run(&state, req.job, failed).await?;
    state.store.touch_worker(&id).await?;
    Ok(Json(job))
}

/// `POST /v1/workers/{id}/deregister`: the worker is leaving; its runs are
/// released at once for retry (`worker_shutdown`).
pub(crate) async fn deregister(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathText(id): PathText,
) -> ApiResult<Json<serde_json::Value>> {
    may_act_for(&principal, &state.store.get_worker(&id).await?)?;
    let worker = state.store.deregister_worker(&id).await?;
    let released = release_runs(state.store.as_ref(), &worker.id).await?;
    tracing::info!(target: "reeve::worker", event = "worker_deregistered", worker = %worker.id, released = released.len());
    Ok(Json(
        serde_json::json!({ "worker": worker, "released": released }),
    ))
}

/// Fails every run `worker` holds with `worker_shutdown` (fenced, so a run
/// that ended meanwhile is left alone).
async fn release_runs(store: &dyn Store, worker: &str) -> ApiResult<Vec<JobId>> {
    let mut finishes = Vec::new();
    for job in store.running_jobs(None, 1000).await? {
        if job.claimed_by.as_deref() == Some(worker) {
            finishes.push(reeve_store::Finish {
                job: job.id,
                epoch: job.epoch,
                outcome: reeve_store::Outcome::Failed {
                    reason: FailureReason::WorkerShutdown,
                    error: Some("the worker deregistered".into()),
                },
                output: None,
            });
        }
    }
    if finishes.is_empty() {
        return Ok(Vec::new());
    }
    let answers = store.finish(finishes).await?;
    Ok(answers
        .into_iter()
        .filter_map(|a| a.ok().map(|j| j.id))
        .collect())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    limit: Option<u32>,
}

/// A registration with what it holds now, for the fleet view.
#[derive(Debug, Serialize)]
pub(crate) struct FleetEntry {
    #[serde(flatten)]
    worker: WorkerRecord,
    running: u64,
    /// Not seen for longer than the staleness bound (the default heartbeat
    /// timeout).
    stale: bool,
}

/// Most registrations read to find a live worker for a pinned job. They
/// come latest seen first, so every live one precedes every stale one.
const LIVE_SCAN: u32 = 1000;

/// What a waiting pinned job waits for (SPEC §6): when the job is
/// `available`, `scheduled` or `retryable` with requirements, and neither a
/// live worker (registered, not deregistered, not stale) nor this daemon's
/// own executor has all of its labels, `a worker with device=alice-mac`.
/// `None` otherwise. Costs nothing for an unpinned job; one indexed read of
/// the registrations for a pinned one.
pub async fn waiting_for(state: &AppState, job: &Job) -> reeve_store::Result<Option<String>> {
    use reeve_core::placement::{self, satisfies};
    let waiting = matches!(
        job.state,
        JobState::Available | JobState::Scheduled | JobState::Retryable
    );
    if !waiting
        || job.requires.is_empty()
        || satisfies(&state.config.executor_labels, &job.requires)
    {
        return Ok(None);
    }
    let now = state.store.now().await?;
    let stale_after = state.config.worker_stale_after;
    let served = state
        .store
        .list_workers(LIVE_SCAN, Duration::ZERO)
        .await?
        .iter()
        .any(|w| w.is_live(now, stale_after) && satisfies(&w.worker.labels, &job.requires));
    Ok((!served).then(|| placement::waiting_for(&job.requires)))
}

/// `GET /v1/workers`: registrations, latest seen first (deregistered ones
/// for an hour).
pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = q.limit.unwrap_or(200).clamp(1, 1000);
    let workers = state
        .store
        .list_workers(limit, Duration::from_secs(3600))
        .await?;
    let running = state.store.running_jobs(None, 1000).await?;
    let now = state.store.now().await?;
    let stale_after = state.config.worker_stale_after;
    let fleet: Vec<FleetEntry> = workers
        .into_iter()
        .map(|w| FleetEntry {
            running: running
                .iter()
                .filter(|j| j.claimed_by.as_deref() == Some(w.id.as_str()))
                .count() as u64,
            stale: w.is_stale(now, stale_after),
            worker: w,
        })
        .collect();
    Ok(Json(serde_json::json!({ "workers": fleet })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EpochQuery {
    epoch: Option<i64>,
}

/// `PUT /v1/jobs/{id}/checkpoint?epoch=E` (body: the bytes): fenced; a job
/// token's own epoch is used when none is given.
pub(crate) async fn save_checkpoint(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JobIdParam(id): JobIdParam,
    ApiQuery(q): ApiQuery<EpochQuery>,
    body: Bytes,
) -> ApiResult<Json<reeve_store::Checkpoint>> {
    let epoch = match (&principal, q.epoch) {
        (_, Some(e)) => e,
        (Principal::Job { epoch, .. }, None) => *epoch,
        _ => return Err(ApiError::input("epoch", "give the run's epoch (?epoch=E)")),
    };
    own_run(&principal, id, epoch)?;
    let max = state.config.max_checkpoint_bytes;
    if body.len() > max {
        return Err(ApiError::input(
            "checkpoint",
            format!("is {} bytes; the limit is {max}", body.len()),
        ));
    }
    let saved = state
        .store
        .save_checkpoint(id, epoch, body.to_vec())
        .await?;
    Ok(Json(saved))
}

/// `GET /v1/jobs/{id}/checkpoint`: the latest checkpoint's bytes (404 when
/// there is none), its epoch in `X-Reeve-Checkpoint-Epoch`.
/// A job token reads its job's checkpoint and mail only while its epoch is
/// the job's current one: a run from an earlier attempt is over.
async fn current_run(state: &AppState, principal: &Principal, id: JobId) -> ApiResult<()> {
    if let Principal::Job { epoch, .. } = principal {
        let job = state.store.get_job(id).await?;
        own_run(principal, id, job.epoch).map_err(|_| {
            ApiError::Forbidden(format!(
                "this job token is for epoch {epoch}; job {id} is at epoch {}",
                job.epoch
            ))
        })?;
    }
    Ok(())
}

pub(crate) async fn load_checkpoint(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JobIdParam(id): JobIdParam,
) -> ApiResult<Response> {
    current_run(&state, &principal, id).await?;
    let Some(c) = state.store.load_checkpoint(id).await? else {
        return Err(ApiError::NotFound(format!("job {id} has no checkpoint")));
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&c.epoch.to_string()) {
        headers.insert("x-reeve-checkpoint-epoch", v);
    }
    Ok((headers, c.data).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendMail {
    subject: String,
    body: String,
    by: Option<String>,
}

/// `POST /v1/jobs/{id}/mail`: an operator's message to the job's runs.
pub(crate) async fn send_mail(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JobIdParam(id): JobIdParam,
    ApiJson(req): ApiJson<SendMail>,
) -> ApiResult<(StatusCode, Json<reeve_store::Mail>)> {
    if matches!(principal, Principal::Job { .. } | Principal::Worker { .. }) {
        return Err(ApiError::Forbidden(
            "runs read mail; operators send it".into(),
        ));
    }
    printable("subject", &req.subject, 200)?;
    if req.body.len() > 64 * 1024 {
        return Err(ApiError::input("body", "must be at most 65536 bytes"));
    }
    let sender = match req.by.as_deref() {
        Some(by) => {
            printable("by", by, 100)?;
            format!("operator:{by}")
        }
        None => "operator".into(),
    };
    let mail = state
        .store
        .send_mail(NewMail {
            job_id: id,
            sender,
            subject: req.subject,
            body: req.body,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(mail)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadQuery {
    /// Leave unread messages unread (peek).
    #[serde(default)]
    peek: bool,
}

/// `GET /v1/jobs/{id}/mail`: the job's messages, oldest first; reading
/// marks them read (unless `peek`).
pub(crate) async fn read_mail(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JobIdParam(id): JobIdParam,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    current_run(&state, &principal, id).await?;
    let mail = state.store.read_mail(id, !q.peek).await?;
    Ok(Json(serde_json::json!({ "mail": mail })))
}
