//! Operator routes: health, metrics, status, queues and limits.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use reeve_store::{Limits, QueueInfo, QueuePatch};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::extract::{ApiJson, QueueNameParam, double_option};
use crate::{ApiError, AppState, RuntimeStats};

type ApiResult<T> = Result<T, ApiError>;

/// `GET /healthz`: 200 once the store answers, 503 otherwise. Never needs a
/// token.
pub(crate) async fn healthz(State(state): State<AppState>) -> Response {
    // A read of the (tiny) limits row touches the database on every backend;
    // a clock read alone would not on SQLite.
    match state.store.limits().await {
        Ok(_) => Json(json!({"status": "ok", "backend": state.store.backend()})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check: store did not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "error": "database_unavailable",
                    "message": "the store did not answer",
                    "status": "unavailable",
                    "backend": state.store.backend(),
                })),
            )
                .into_response()
        }
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// `GET /metrics`: gauges computed from the store at scrape time, plus this
/// process's executor counters.
pub(crate) async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let queues = state.store.list_queues().await?;
    let counts = state.store.status().await?;
    let limits = state.store.limits().await?;
    let stats = state.runtime.stats();

    let mut registry = Registry::default();
    let jobs = Family::<Labels, Gauge>::default();
    let queue_limit = Family::<Labels, Gauge>::default();
    let queue_paused = Family::<Labels, Gauge>::default();
    for q in &queues {
        for (st, n) in [
            ("scheduled", q.scheduled),
            ("available", q.available),
            ("running", q.running),
            ("retryable", q.retryable),
        ] {
            jobs.get_or_create(&vec![("queue", q.name.clone()), ("state", st.to_string())])
                .set(gauge_value(n));
        }
        let label = vec![("queue", q.name.clone())];
        if let Some(c) = q.settings.concurrency {
            queue_limit.get_or_create(&label).set(i64::from(c));
        }
        queue_paused
            .get_or_create(&label)
            .set(i64::from(q.settings.paused));
    }
    registry.register(
        "reeve_jobs",
        "Jobs in a live state, by queue and state",
        jobs,
    );
    registry.register(
        "reeve_running_jobs",
        "Running jobs in all queues",
        ConstGauge::new(gauge_value(counts.running)),
    );
    registry.register(
        "reeve_stalled_runs",
        "Running runs without progress for stall_after, escalated ones included",
        ConstGauge::new(gauge_value(counts.stalled)),
    );
    registry.register(
        "reeve_escalated_runs",
        "Running runs whose stall was escalated",
        ConstGauge::new(gauge_value(counts.escalated)),
    );
    registry.register(
        "reeve_queue_concurrency_limit",
        "A queue's concurrency cap (only queues that have one)",
        queue_limit,
    );
    registry.register(
        "reeve_queue_paused",
        "1 when a queue is paused",
        queue_paused,
    );
    if let Some(global) = limits.global {
        registry.register(
            "reeve_global_concurrency_limit",
            "The global concurrency cap",
            ConstGauge::new(i64::from(global)),
        );
    }
    register_runtime(&mut registry, &stats);

    let mut body = String::new();
    if let Err(e) = encode(&mut body, &registry) {
        tracing::error!(error = %e, "encoding metrics failed");
        return Err(ApiError::Internal);
    }
    Ok(([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response())
}

fn register_runtime(registry: &mut Registry, s: &RuntimeStats) {
    registry.register(
        "reeve_leader",
        "1 when this daemon is the leader (runs reaping and maintenance)",
        ConstGauge::new(i64::from(s.leader)),
    );
    registry.register(
        "reeve_executor_slots",
        "Executor slots of this process",
        ConstGauge::new(i64::from(s.slots)),
    );
    registry.register(
        "reeve_executor_busy",
        "Executor slots of this process running a job",
        ConstGauge::new(i64::from(s.busy)),
    );
    // Counter names get their `_total` suffix from the encoder.
    for (name, help, value) in [
        (
            "reeve_claimed",
            "Jobs claimed by this process",
            s.claimed_total,
        ),
        (
            "reeve_finished",
            "Runs finished by this process",
            s.finished_total,
        ),
        (
            "reeve_refused_writebacks",
            "Write-backs refused by the fence (stale epoch or run over)",
            s.refused_writebacks_total,
        ),
        (
            "reeve_reaped",
            "Runs reaped after their lease passed",
            s.reaped_total,
        ),
        (
            "reeve_heartbeats",
            "Heartbeats sent by this process",
            s.heartbeats_total,
        ),
    ] {
        registry.register(name, help, ConstCounter::new(value));
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[derive(Debug, Serialize)]
pub(crate) struct StatusResponse {
    backend: &'static str,
    worker_id: String,
    /// Whether this daemon leads (also in `executor.leader`).
    leader: bool,
    running: u64,
    /// Running runs without progress for `stall_after` (SPEC §10),
    /// escalated ones included.
    stalled: u64,
    /// Running runs whose stall was escalated.
    escalated: u64,
    by_state: std::collections::BTreeMap<String, u64>,
    limits: Limits,
    queues: Vec<QueueInfo>,
    executor: RuntimeStats,
}

/// `GET /v1/status`.
pub(crate) async fn status(State(state): State<AppState>) -> ApiResult<Json<StatusResponse>> {
    let counts = state.store.status().await?;
    let limits = state.store.limits().await?;
    let queues = state.store.list_queues().await?;
    let executor = state.runtime.stats();
    Ok(Json(StatusResponse {
        backend: state.store.backend(),
        worker_id: state.runtime.worker_id(),
        leader: executor.leader,
        running: counts.running,
        stalled: counts.stalled,
        escalated: counts.escalated,
        by_state: counts.by_state,
        limits,
        queues,
        executor,
    }))
}

/// `GET /v1/queues`.
pub(crate) async fn list_queues(
    State(state): State<AppState>,
) -> ApiResult<Json<serde_json::Value>> {
    let queues = state.store.list_queues().await?;
    Ok(Json(json!({ "queues": queues })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueuePatchRequest {
    /// Absent: unchanged; `null`: no cap; a number: the cap.
    #[serde(default, deserialize_with = "double_option")]
    concurrency: Option<Option<u32>>,
    #[serde(default)]
    paused: Option<bool>,
}

/// `PATCH /v1/queues/{name}`: creates the queue's settings if needed.
pub(crate) async fn patch_queue(
    State(state): State<AppState>,
    QueueNameParam(name): QueueNameParam,
    ApiJson(req): ApiJson<QueuePatchRequest>,
) -> ApiResult<Json<QueueInfo>> {
    let patch = QueuePatch {
        concurrency: req.concurrency,
        paused: req.paused,
    };
    Ok(Json(state.store.update_queue(&name, patch).await?))
}

/// `POST /v1/queues/{name}/pause`.
pub(crate) async fn pause_queue(
    State(state): State<AppState>,
    QueueNameParam(name): QueueNameParam,
) -> ApiResult<Json<QueueInfo>> {
    set_paused(&state, &name, true).await
}

/// `POST /v1/queues/{name}/resume`.
pub(crate) async fn resume_queue(
    State(state): State<AppState>,
    QueueNameParam(name): QueueNameParam,
) -> ApiResult<Json<QueueInfo>> {
    set_paused(&state, &name, false).await
}

async fn set_paused(state: &AppState, name: &str, paused: bool) -> ApiResult<Json<QueueInfo>> {
    let patch = QueuePatch {
        concurrency: None,
        paused: Some(paused),
    };
    Ok(Json(state.store.update_queue(name, patch).await?))
}

/// `GET /v1/limits`.
pub(crate) async fn get_limits(State(state): State<AppState>) -> ApiResult<Json<Limits>> {
    Ok(Json(state.store.limits().await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsRequest {
    /// Required: `null` removes the cap, so forgetting the field must not.
    #[serde(default, deserialize_with = "double_option")]
    global: Option<Option<u32>>,
}

/// `PUT /v1/limits`.
pub(crate) async fn put_limits(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LimitsRequest>,
) -> ApiResult<Json<Limits>> {
    let Some(global) = req.global else {
        return Err(ApiError::input(
            "global",
            "is required: a number sets the global cap, null removes it",
        ));
    };
    Ok(Json(state.store.set_limits(Limits { global }).await?))
}
