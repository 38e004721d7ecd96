//! Job routes: enqueue (single and batch), read, cancel, retry, and the fenced
//! executor write-backs (heartbeat, complete, fail).

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use reeve_core::job::EnqueueRequest;
use reeve_core::{FailureReason, Job, JobFilter, JobId, JobState, NewJob};
use reeve_store::{Enqueued, Finish, HeartbeatParams, Outcome};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::extract::{ApiJson, ApiQuery, JobIdParam};
use crate::tokens::Principal;
use crate::{ApiError, AppState};

/// Most jobs accepted in one batch enqueue.
pub const MAX_BATCH_JOBS: usize = 10_000;
/// Default and largest page size of `GET /v1/jobs`.
pub const DEFAULT_LIST_LIMIT: u32 = 50;
pub const MAX_LIST_LIMIT: u32 = 1000;
/// Longest progress note a heartbeat may carry.
pub const MAX_PROGRESS_BYTES: usize = 4096;

type ApiResult<T> = Result<T, ApiError>;

/// `POST /v1/jobs`: 201 with the new job, 200 with the existing one when a
/// live job holds the same `unique_key`. `x-reeve-created` says which.
pub(crate) async fn enqueue(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<EnqueueRequest>,
) -> ApiResult<Response> {
    let job = req.validate("", state.config.max_payload_bytes)?;
    let Enqueued { job, created } = single(state.store.enqueue(vec![job]).await?)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(job)).into_response();
    response.headers_mut().insert(
        "x-reeve-created",
        HeaderValue::from_static(if created { "true" } else { "false" }),
    );
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest {
    jobs: Vec<EnqueueRequest>,
}

#[derive(Debug, Serialize)]
pub(crate) struct BatchResponse {
    jobs: Vec<Enqueued>,
}

/// `POST /v1/jobs/batch`: all jobs validated first (first error wins, nothing
/// enqueued), then one store transaction.
pub(crate) async fn enqueue_batch(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<BatchRequest>,
) -> ApiResult<Response> {
    if req.jobs.is_empty() || req.jobs.len() > MAX_BATCH_JOBS {
        return Err(ApiError::input(
            "jobs",
            format!(
                "must hold between 1 and {MAX_BATCH_JOBS} jobs, got {}",
                req.jobs.len()
            ),
        ));
    }
    let max = state.config.max_payload_bytes;
    let jobs = req
        .jobs
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.validate(&format!("jobs[{i}]."), max))
        .collect::<Result<Vec<NewJob>, _>>()?;
    let expected = jobs.len();
    let jobs = state.store.enqueue(jobs).await?;
    if jobs.len() != expected {
        tracing::error!(
            expected,
            got = jobs.len(),
            "store answered a batch enqueue with the wrong number of jobs"
        );
        return Err(ApiError::Internal);
    }
    Ok((StatusCode::CREATED, Json(BatchResponse { jobs })).into_response())
}

fn single<T>(mut answers: Vec<T>) -> ApiResult<T> {
    match (answers.pop(), answers.is_empty()) {
        (Some(answer), true) => Ok(answer),
        _ => {
            tracing::error!(
                "store answered a single-element call with the wrong number of answers"
            );
            Err(ApiError::Internal)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    state: Option<String>,
    queue: Option<String>,
    kind: Option<String>,
    schedule: Option<String>,
    limit: Option<String>,
    before: Option<String>,
}

impl ListQuery {
    pub(crate) fn into_filter(self) -> ApiResult<JobFilter> {
        let state = self
            .state
            .map(|s| {
                s.parse::<JobState>()
                    .map_err(|m| ApiError::input("state", m))
            })
            .transpose()?;
        if let Some(q) = &self.queue {
            reeve_core::validate::name("queue", q)?;
        }
        if let Some(k) = &self.kind {
            reeve_core::validate::name("kind", k)?;
        }
        let limit = match self.limit {
            None => DEFAULT_LIST_LIMIT,
            Some(raw) => match raw.parse::<u32>() {
                Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::input(
                        "limit",
                        format!("expected an integer between 1 and {MAX_LIST_LIMIT}, got {raw:?}"),
                    ));
                }
            },
        };
        let before_id = self
            .before
            .map(|raw| match raw.parse::<JobId>() {
                Ok(id) if id > 0 => Ok(id),
                _ => Err(ApiError::input(
                    "before",
                    format!("expected a positive integer job id, got {raw:?}"),
                )),
            })
            .transpose()?;
        Ok(JobFilter {
            state,
            queue: self.queue,
            kind: self.kind,
            schedule: self.schedule,
            before_id,
            limit,
        })
    }
}

/// `GET /v1/jobs`: newest first, keyset paging with `before`.
pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<reeve_core::Page<Job>>> {
    let filter = query.into_filter()?;
    Ok(Json(state.store.list_jobs(filter).await?))
}

/// A job as `GET /v1/jobs/{id}` answers it: with what a waiting pinned job
/// waits for, when no live worker can take it.
#[derive(Debug, Serialize)]
pub(crate) struct JobView {
    #[serde(flatten)]
    job: Job,
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_for: Option<String>,
}

pub(crate) async fn get_job(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
) -> ApiResult<Json<JobView>> {
    let job = state.store.get_job(id).await?;
    let waiting_for = crate::workers::waiting_for(&state, &job).await?;
    Ok(Json(JobView { job, waiting_for }))
}

pub(crate) async fn events(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
) -> ApiResult<Json<serde_json::Value>> {
    let events = state.store.job_events(id).await?;
    Ok(Json(json!({ "events": events })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutputQuery {
    from: Option<String>,
}

/// `GET /v1/jobs/{id}/output?from=N`: live output of a run executing in this
/// process, else the stored output of the job's latest attempt.
pub(crate) async fn output(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
    ApiQuery(query): ApiQuery<OutputQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let from = match query.from {
        None => 0,
        Some(raw) => raw.parse::<u64>().map_err(|_| {
            ApiError::input(
                "from",
                format!("expected a non-negative byte offset, got {raw:?}"),
            )
        })?,
    };
    if let Some((data, next_offset)) = state.runtime.live_output(id, from) {
        return Ok(Json(json!({
            "running": true,
            "data": String::from_utf8_lossy(&data),
            "next_offset": next_offset,
        })));
    }
    let job = state.store.get_job(id).await?;
    let outputs = state.store.job_output(id).await?;
    let (attempt, text) = match outputs.into_iter().max_by_key(|o| o.attempt) {
        Some(o) => (o.attempt, o.output),
        None => (job.attempt, String::new()),
    };
    let bytes = text.as_bytes();
    let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    Ok(Json(json!({
        "running": false,
        "attempt": attempt,
        "data": String::from_utf8_lossy(&bytes[start..]),
        "next_offset": bytes.len(),
    })))
}

/// `POST /v1/jobs/{id}/cancel`: a waiting job is cancelled at once; a running
/// one is marked and, if it runs in this process, stopped now.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
) -> ApiResult<Json<Job>> {
    let job = state.store.cancel(id).await?;
    if job.state == JobState::Running {
        state.runtime.cancel_local(id);
    }
    Ok(Json(job))
}

/// `POST /v1/jobs/{id}/retry`: an operator's retry of a failed or cancelled job.
pub(crate) async fn retry(
    State(state): State<AppState>,
    JobIdParam(id): JobIdParam,
) -> ApiResult<Json<Job>> {
    Ok(Json(state.store.retry(id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeartbeatRequest {
    pub(crate) epoch: i64,
    #[serde(default)]
    pub(crate) turns: Option<i64>,
    #[serde(default)]
    pub(crate) progress: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct HeartbeatResponse {
    pub(crate) status: &'static str,
    pub(crate) lease_expires_at: reeve_core::Timestamp,
    /// The lease left, by the store's clock: an executor on another clock
    /// counts down from this instead of comparing instants.
    pub(crate) lease_remaining_ms: i64,
    pub(crate) turns: i64,
    pub(crate) max_turns: Option<i64>,
    /// Messages in the job's inbox not yet read.
    pub(crate) unread_mail: u64,
}

/// A job token may write only its own run: its job and its epoch.
pub(crate) fn own_run(principal: &Principal, job: JobId, epoch: i64) -> ApiResult<()> {
    match principal {
        Principal::Job { job: j, epoch: e } if *j != job || *e != epoch => {
            Err(ApiError::Forbidden(format!(
                "this job token is for job {j} at epoch {e}, not job {job} at epoch {epoch}"
            )))
        }
        _ => Ok(()),
    }
}

/// `POST /v1/jobs/{id}/heartbeat`: extends the lease of the run holding
/// `epoch`. Every refusal is `409 lease_lost`: the executor must stop.
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JobIdParam(id): JobIdParam,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> ApiResult<Json<HeartbeatResponse>> {
    own_run(&principal, id, req.epoch)?;
    beat(&state, id, req).await.map(Json)
}

/// One heartbeat of the run of `id`, shared by `/v1/jobs/{id}/heartbeat`
/// and the worker protocol.
pub(crate) async fn beat(
    state: &AppState,
    id: JobId,
    req: HeartbeatRequest,
) -> ApiResult<HeartbeatResponse> {
    if req.turns.is_some_and(|t| t < 0) {
        return Err(ApiError::input("turns", "must not be negative"));
    }
    if req
        .progress
        .as_ref()
        .is_some_and(|p| p.len() > MAX_PROGRESS_BYTES)
    {
        return Err(ApiError::input(
            "progress",
            format!("must be at most {MAX_PROGRESS_BYTES} bytes"),
        ));
    }
    let ack = state
        .store
        .heartbeat(HeartbeatParams {
            job: id,
            epoch: req.epoch,
            turns: req.turns,
            progress: req.progress,
        })
        .await
        .map_err(ApiError::from_heartbeat)?;
    // A reported turn count past the budget ends the run here, fenced on the
    // same epoch, and tells the executor to stop (SPEC §8).
    if let Some(max) = ack.max_turns
        && ack.turns > max
    {
        let ended = state
            .store
            .finish(vec![Finish {
                job: id,
                epoch: req.epoch,
                outcome: Outcome::Failed {
                    reason: FailureReason::TurnLimitExceeded,
                    error: Some(format!("reported {} turns; the budget is {max}", ack.turns)),
                },
                output: None,
            }])
            .await?
            .remove(0);
        ended.map_err(ApiError::from_heartbeat)?;
        return Ok(HeartbeatResponse {
            status: "turn_limit_exceeded",
            lease_expires_at: ack.lease_expires_at,
            lease_remaining_ms: 0,
            turns: ack.turns,
            max_turns: ack.max_turns,
            unread_mail: 0,
        });
    }
    let now = state.store.now().await?;
    let unread_mail = state.store.unread_mail(id).await?;
    Ok(HeartbeatResponse {
        status: if ack.cancel_requested {
            "cancel_requested"
        } else {
            "ok"
        },
        lease_expires_at: ack.lease_expires_at,
        lease_remaining_ms: now.millis_until(ack.lease_expires_at).max(0),
        turns: ack.turns,
        max_turns: ack.max_turns,
        unread_mail,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompleteRequest {
    pub(crate) epoch: i64,
    #[serde(default)]
    pub(crate) result: Option<serde_json::Value>,
    /// The tail of the run's output, kept with the job.
    #[serde(default)]
    pub(crate) output: Option<String>,
}

/// `POST /v1/jobs/{id}/complete`: fenced on `(job, epoch)`.
pub(crate) async fn complete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JobIdParam(id): JobIdParam,
    ApiJson(req): ApiJson<CompleteRequest>,
) -> ApiResult<Json<Job>> {
    own_run(&principal, id, req.epoch)?;
    complete_run(&state, id, req).await.map(Json)
}

/// A fenced completion, shared with the worker protocol.
pub(crate) async fn complete_run(
    state: &AppState,
    id: JobId,
    req: CompleteRequest,
) -> ApiResult<Job> {
    if let Some(result) = &req.result {
        let max = state.config.max_payload_bytes;
        let len = serde_json::to_vec(result).map_or(usize::MAX, |v| v.len());
        if len > max {
            return Err(ApiError::input(
                "result",
                format!("is {len} bytes; the limit is {max}"),
            ));
        }
    }
    let outcome = Outcome::Succeeded { result: req.result };
    finish_one(state, id, req.epoch, outcome, req.output).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailRequest {
    pub(crate) epoch: i64,
    #[serde(default)]
    pub(crate) reason: Option<FailureReason>,
    #[serde(default)]
    pub(crate) error: Option<String>,
    /// The tail of the run's output, kept with the job.
    #[serde(default)]
    pub(crate) output: Option<String>,
}

/// `POST /v1/jobs/{id}/fail`: fenced on `(job, epoch)`. The executor names
/// the reason; classifying `error`'s text is only the fallback when it gives
/// none.
pub(crate) async fn fail(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JobIdParam(id): JobIdParam,
    ApiJson(req): ApiJson<FailRequest>,
) -> ApiResult<Json<Job>> {
    own_run(&principal, id, req.epoch)?;
    fail_run(&state, id, req).await.map(Json)
}

/// A fenced failure, shared with the worker protocol.
pub(crate) async fn fail_run(state: &AppState, id: JobId, req: FailRequest) -> ApiResult<Job> {
    let reason = match (req.reason, req.error.as_deref()) {
        (Some(reason), _) => reason,
        (None, Some(error)) => FailureReason::classify(error),
        (None, None) => {
            return Err(ApiError::input(
                "reason",
                "give a failure reason (or at least an error text to classify)",
            ));
        }
    };
    let outcome = Outcome::Failed {
        reason,
        error: req.error,
    };
    finish_one(state, id, req.epoch, outcome, req.output).await
}

/// Output kept from a remote run's report (its tail).
const MAX_REPORTED_OUTPUT: usize = 1024 * 1024;

/// One fenced write-back. A test build may abort right after it committed
/// and before answering (`fault::CRASH_AFTER_FINISH_COMMIT`): the executor
/// then never learns the outcome, which must stay written exactly once.
async fn finish_one(
    state: &AppState,
    job: JobId,
    epoch: i64,
    outcome: Outcome,
    output: Option<String>,
) -> ApiResult<Job> {
    let output = output.map(|o| {
        let b = o.into_bytes();
        b[b.len().saturating_sub(MAX_REPORTED_OUTPUT)..].to_vec()
    });
    let answers = state
        .store
        .finish(vec![Finish {
            job,
            epoch,
            outcome,
            output,
        }])
        .await?;
    let answer = single(answers)?;
    if answer.is_ok() {
        reeve_core::fault::abort_if(reeve_core::fault::CRASH_AFTER_FINISH_COMMIT);
    }
    Ok(answer?)
}
