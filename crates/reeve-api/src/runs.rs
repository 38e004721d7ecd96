//! Runs of schedules over the API (SPEC §7, §8, §11): run now under the cap
//! (`429 capacity_full` with a slot ETA, or forced with an audit record),
//! resume with a probe, the firing ledger's history and metrics, pressure
//! signals, the audit log and the forecast.
//!
//! **Invariants.** A manual run's cap check happens inside the firing's own
//! transaction (`FireParams::require_capacity`), so a refused run changed
//! nothing; a forced run and its audit record commit together. The ETA of a
//! full cap comes from the running jobs' typical durations, never a
//! constant. Nothing here fires a schedule on the cadence: that is the
//! engine's.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use reeve_core::{InputError, Timestamp};
use reeve_schedule::forecast::{Busy, Caps, ForecastInput, forecast};
use reeve_schedule::{ScheduleStatus, ValidSchedule};
use reeve_store::operator::{full_cap, slot_eta_seconds};
use reeve_store::{
    CapacityFull, FireParams, FireResult, FiringOutcome, FiringQuery, FiringRecord, NewAudit,
    ScheduleRecord, Store,
};
use serde::{Deserialize, Serialize};

use crate::extract::{ApiJson, ApiQuery, OptionalJson, PathText};
use crate::{ApiError, AppState};

type ApiResult<T> = Result<T, ApiError>;

/// What a schedule's runs are expected to take when none finished yet.
pub const DEFAULT_EXPECTED_DURATION: Duration = Duration::from_secs(300);

fn valid(record: &ScheduleRecord) -> ApiResult<ValidSchedule> {
    record.spec.validate().map_err(|e| {
        ApiError::InvalidInput(InputError::new(
            e.field,
            format!("the stored schedule is invalid: {}", e.message),
        ))
    })
}

/// Who acted, as the audit log names them.
fn actor(by: Option<&str>) -> ApiResult<String> {
    match by {
        None => Ok("operator".into()),
        Some(by) if by.is_empty() || by.len() > 100 || by.chars().any(char::is_control) => Err(
            ApiError::input("by", "must be 1 to 100 printable characters"),
        ),
        Some(by) => Ok(format!("operator:{by}")),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunRequest {
    #[serde(default)]
    force: bool,
    /// Who asks (recorded in the audit log of a forced run).
    by: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct RunResponse {
    job: reeve_core::Job,
    outcome: FiringOutcome,
    /// For a forced run: the caps that were full when it was forced.
    #[serde(skip_serializing_if = "Option::is_none")]
    was_full: Option<CapacityFull>,
}

/// The first full cap a job in `queue` would meet now (outside any
/// transaction: for the audit record's "what was full").
async fn current_full_cap(store: &dyn Store, queue: &str) -> ApiResult<Option<CapacityFull>> {
    let limits = store.limits().await?;
    let counts = store.status().await?;
    let queues = store.list_queues().await?;
    let q = queues.iter().find(|q| q.name == queue);
    Ok(full_cap(
        limits.global,
        counts.running,
        queue,
        q.and_then(|q| q.settings.concurrency),
        q.is_some_and(|q| q.settings.paused),
        q.map_or(0, |q| q.running),
    ))
}

/// The distinct values, sorted.
fn distinct(values: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = values.collect();
    v.sort();
    v.dedup();
    v
}

/// The ETA of a slot under `full`, from the running jobs' typical durations.
async fn slot_eta(store: &dyn Store, full: &CapacityFull) -> ApiResult<u64> {
    let running = store.running_jobs(full.queue.as_deref(), 1000).await?;
    let schedules = distinct(running.iter().filter_map(|j| j.schedule.clone()));
    let kinds = distinct(running.iter().map(|j| j.kind.clone()));
    let typical = store.typical_durations(&schedules, &kinds).await?;
    let now = store.now().await?;
    let with_typical: Vec<_> = running
        .into_iter()
        .map(|job| {
            let t = typical.of(&job);
            (job, t)
        })
        .collect();
    Ok(slot_eta_seconds(&with_typical, full.limit, now))
}

/// Fires `record` outside its cadence with `outcome`; a full cap is
/// answered 429 with the slot ETA.
async fn fire_manually(
    state: &AppState,
    record: &ScheduleRecord,
    outcome: FiringOutcome,
    audit: Option<NewAudit>,
) -> ApiResult<reeve_core::Job> {
    let schedule = valid(record)?;
    let now = state.store.now().await?;
    let mut p = FireParams::manual(
        &record.name,
        now,
        schedule.job.new_job(&record.name, now),
        outcome,
    );
    p.audit = audit;
    match state.store.fire(p).await? {
        FireResult::Fired(job) => Ok(job),
        FireResult::CapacityFull(full) => {
            let slot_eta_seconds = slot_eta(state.store.as_ref(), &full).await?;
            Err(ApiError::CapacityFull {
                full,
                slot_eta_seconds,
            })
        }
        FireResult::LostRace => {
            Err(reeve_store::StoreError::ScheduleNotFound(record.name.clone()).into())
        }
        other => {
            tracing::error!(schedule = %record.name, result = ?other, "a manual firing inserted no job");
            Err(ApiError::Internal)
        }
    }
}

/// `POST /v1/schedules/{name}/run`: one firing now, honoring the caps
/// unless forced.
pub(crate) async fn run(
    State(state): State<AppState>,
    PathText(name): PathText,
    OptionalJson(req): OptionalJson<RunRequest>,
) -> ApiResult<(StatusCode, Json<RunResponse>)> {
    let actor = actor(req.by.as_deref())?;
    let record = state.store.get_schedule(&name).await?;
    let (outcome, audit, was_full) = if req.force {
        let queue = valid(&record)?.job.queue;
        let was_full = current_full_cap(state.store.as_ref(), &queue).await?;
        let audit = NewAudit {
            actor,
            action: "force_run".into(),
            target: format!("schedule:{name}"),
            detail: serde_json::json!({ "full": was_full }),
        };
        (FiringOutcome::Forced, Some(audit), was_full)
    } else {
        (FiringOutcome::Manual, None, None)
    };
    let job = fire_manually(&state, &record, outcome, audit).await?;
    Ok((
        StatusCode::CREATED,
        Json(RunResponse {
            job,
            outcome,
            was_full,
        }),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResumeRequest {
    /// Resume through one canary firing instead of at once.
    #[serde(default)]
    probe: bool,
    by: Option<String>,
}

/// `POST /v1/schedules/{name}/resume` with `{"probe": true}`: one canary
/// firing (under the caps); the schedule stays paused and becomes active
/// only when it succeeds. Without a probe: see `schedules::resume`.
pub(crate) async fn resume(
    State(state): State<AppState>,
    PathText(name): PathText,
    OptionalJson(req): OptionalJson<ResumeRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let actor = actor(req.by.as_deref())?;
    if !req.probe {
        let view = crate::schedules::resume_now(&state, &name).await?;
        state
            .store
            .record_audit(NewAudit {
                actor,
                action: "resume".into(),
                target: format!("schedule:{name}"),
                detail: serde_json::json!({}),
            })
            .await?;
        return Ok(Json(serde_json::to_value(view).expect("views serialize")));
    }
    let record = state.store.get_schedule(&name).await?;
    if record.status != ScheduleStatus::Paused {
        return Err(ApiError::input(
            "probe",
            format!("{name} is not paused; a probe resumes a paused schedule"),
        ));
    }
    let audit = NewAudit {
        actor,
        action: "resume_probe".into(),
        target: format!("schedule:{name}"),
        detail: serde_json::json!({}),
    };
    let job = fire_manually(&state, &record, FiringOutcome::Probe, Some(audit)).await?;
    let record = state.store.get_schedule(&name).await?;
    Ok(Json(serde_json::json!({
        "schedule": crate::schedules::view(record),
        "probe_job": job,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryQuery {
    limit: Option<u32>,
    /// An instant (RFC 3339): the rows at or before it, and the one that
    /// covers it.
    at: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct HistoryResponse {
    schedule: String,
    /// With `at`: the row for that instant's fire time (or the skipped range
    /// holding it), if the ledger has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    covering: Option<FiringRecord>,
    firings: Vec<FiringRecord>,
}

/// `GET /v1/schedules/{name}/history`: the firing ledger, newest first.
pub(crate) async fn history(
    State(state): State<AppState>,
    PathText(name): PathText,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<HistoryResponse>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::input("limit", "must be between 1 and 10000"));
    }
    let at =
        q.at.as_deref()
            .map(|s| Timestamp::parse(s).map_err(|m| ApiError::input("at", m)))
            .transpose()?;
    state.store.get_schedule(&name).await?;
    let firings = state
        .store
        .firing_history(
            &name,
            FiringQuery {
                limit,
                at_or_before: at,
            },
        )
        .await?;
    let covering = at.and_then(|at| {
        firings
            .iter()
            .find(|f| {
                f.nominal_at == at
                    || f.nominal_until
                        .is_some_and(|u| f.nominal_at <= at && at <= u)
            })
            .cloned()
    });
    Ok(Json(HistoryResponse {
        schedule: name,
        covering,
        firings,
    }))
}

/// p50 / p95 / max of a set of values.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: Option<i64>,
    pub p95: Option<i64>,
    pub max: Option<i64>,
}

impl Percentiles {
    pub fn of(mut values: Vec<i64>) -> Self {
        values.sort_unstable();
        let at = |q: f64| {
            (!values.is_empty()).then(|| {
                let i = ((values.len() as f64 - 1.0) * q).round() as usize;
                values[i]
            })
        };
        Percentiles {
            count: values.len(),
            p50: at(0.5),
            p95: at(0.95),
            max: values.last().copied(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct MetricsResponse {
    schedule: String,
    /// Ledger rows considered (the newest `limit`).
    rows: usize,
    by_outcome: BTreeMap<String, u64>,
    by_state: BTreeMap<String, u64>,
    failures_by_reason: BTreeMap<String, u64>,
    slot_wait_ms: Percentiles,
    duration_ms: Percentiles,
    turns: Percentiles,
    pressure_deferrals: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsQuery {
    limit: Option<u32>,
}

/// `GET /v1/schedules/{name}/metrics`: slot waits, durations and turns of
/// the schedule's recent firings.
pub(crate) async fn metrics(
    State(state): State<AppState>,
    PathText(name): PathText,
    ApiQuery(q): ApiQuery<MetricsQuery>,
) -> ApiResult<Json<MetricsResponse>> {
    let limit = q.limit.unwrap_or(500);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::input("limit", "must be between 1 and 10000"));
    }
    state.store.get_schedule(&name).await?;
    let rows = state.store.firings(&name, limit).await?;
    let mut by_outcome = BTreeMap::new();
    let mut by_state = BTreeMap::new();
    let mut failures = BTreeMap::new();
    for r in &rows {
        *by_outcome.entry(r.outcome.clone()).or_default() += 1;
        if let Some(s) = &r.state {
            *by_state.entry(s.clone()).or_default() += 1;
        }
        if let Some(f) = &r.failure_reason {
            *failures.entry(f.clone()).or_default() += 1;
        }
    }
    Ok(Json(MetricsResponse {
        schedule: name,
        rows: rows.len(),
        slot_wait_ms: Percentiles::of(rows.iter().filter_map(|r| r.slot_wait_ms).collect()),
        duration_ms: Percentiles::of(rows.iter().filter_map(|r| r.duration_ms).collect()),
        turns: Percentiles::of(
            rows.iter()
                .filter(|r| r.finished_at.is_some())
                .filter_map(|r| r.turns)
                .collect(),
        ),
        pressure_deferrals: rows.iter().map(|r| r.deferrals.max(0) as u64).sum(),
        by_outcome,
        by_state,
        failures_by_reason: failures,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RaisePressure {
    source: String,
    ttl_seconds: u64,
}

fn check_source(source: &str) -> ApiResult<()> {
    if source.is_empty() || source.len() > 200 || source.chars().any(char::is_control) {
        return Err(ApiError::input(
            "source",
            "must be 1 to 200 printable characters",
        ));
    }
    Ok(())
}

/// Longest pressure TTL accepted: a forgotten signal must not defer
/// firings for longer than a day.
const MAX_PRESSURE_TTL: u64 = 86_400;

/// `POST /v1/pressure`.
pub(crate) async fn raise_pressure(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RaisePressure>,
) -> ApiResult<(StatusCode, Json<reeve_store::Pressure>)> {
    check_source(&req.source)?;
    if !(1..=MAX_PRESSURE_TTL).contains(&req.ttl_seconds) {
        return Err(ApiError::input(
            "ttl_seconds",
            format!("must be between 1 and {MAX_PRESSURE_TTL}"),
        ));
    }
    let p = state
        .store
        .raise_pressure(&req.source, Duration::from_secs(req.ttl_seconds))
        .await?;
    Ok((StatusCode::CREATED, Json(p)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClearPressure {
    source: String,
}

/// `DELETE /v1/pressure` with `{"source": …}`.
pub(crate) async fn clear_pressure(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ClearPressure>,
) -> ApiResult<Json<serde_json::Value>> {
    clear(&state, req.source).await
}

/// `DELETE /v1/pressure/{source}`.
pub(crate) async fn clear_pressure_named(
    State(state): State<AppState>,
    PathText(source): PathText,
) -> ApiResult<Json<serde_json::Value>> {
    clear(&state, source).await
}

async fn clear(state: &AppState, source: String) -> ApiResult<Json<serde_json::Value>> {
    check_source(&source)?;
    if !state.store.clear_pressure(&source).await? {
        return Err(ApiError::NotFound(format!(
            "no active pressure from {source}"
        )));
    }
    Ok(Json(serde_json::json!({ "cleared": source })))
}

/// `GET /v1/pressure`: the active signals.
pub(crate) async fn list_pressure(
    State(state): State<AppState>,
) -> ApiResult<Json<serde_json::Value>> {
    let pressure = state.store.list_pressure().await?;
    Ok(Json(serde_json::json!({ "pressure": pressure })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    limit: Option<u32>,
}

/// `GET /v1/audit`: newest first.
pub(crate) async fn audit(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::input("limit", "must be between 1 and 10000"));
    }
    let audit = state.store.list_audit(limit).await?;
    Ok(Json(serde_json::json!({ "audit": audit })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForecastQuery {
    hours: Option<u32>,
}

/// `GET /v1/forecast?hours=N`: the next N hours (default 24, at most 168)
/// of the active schedules' firings simulated against the caps.
pub(crate) async fn forecast_next(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ForecastQuery>,
) -> ApiResult<Json<reeve_schedule::forecast::Forecast>> {
    let hours = q.hours.unwrap_or(24);
    if !(1..=168).contains(&hours) {
        return Err(ApiError::input("hours", "must be between 1 and 168"));
    }
    let f = build_forecast(
        state.store.as_ref(),
        Duration::from_secs(u64::from(hours) * 3600),
    )
    .await?;
    Ok(Json(f))
}

/// The forecast from the store's schedules, caps, running jobs and observed
/// durations.
pub async fn build_forecast(
    store: &dyn Store,
    horizon: Duration,
) -> ApiResult<reeve_schedule::forecast::Forecast> {
    let records = store.list_schedules().await?;
    let active: Vec<(ScheduleRecord, ValidSchedule)> = records
        .into_iter()
        .filter(|r| r.status == ScheduleStatus::Active)
        .filter_map(|r| r.spec.validate().ok().map(|v| (r, v)))
        .collect();
    let names: Vec<String> = active.iter().map(|(r, _)| r.name.clone()).collect();
    let running = store.running_jobs(None, 1000).await?;
    let kinds = distinct(running.iter().map(|j| j.kind.clone()));
    let typical = store.typical_durations(&names, &kinds).await?;
    let now = store.now().await?;
    let inputs: Vec<ForecastInput> = active
        .iter()
        .map(|(r, v)| {
            let observed = typical.by_schedule.get(&r.name).copied();
            ForecastInput {
                name: r.name.clone(),
                rule: v.rule.clone(),
                anchor: r.anchor,
                queue: v.job.queue.clone(),
                expected_duration: observed.unwrap_or(DEFAULT_EXPECTED_DURATION),
                observed: observed.is_some(),
            }
        })
        .collect();
    let limits = store.limits().await?;
    let queues = store.list_queues().await?;
    let caps = Caps {
        global: limits.global,
        queues: queues
            .iter()
            .filter_map(|q| {
                let cap = if q.settings.paused {
                    Some(0)
                } else {
                    q.settings.concurrency
                };
                cap.map(|c| (q.name.clone(), c))
            })
            .collect(),
    };
    let busy: Vec<Busy> = running
        .iter()
        .map(|job| {
            let claimed = job.claimed_at.unwrap_or(now);
            let t = typical.of(job).unwrap_or(DEFAULT_EXPECTED_DURATION);
            let until = Timestamp(
                claimed
                    .0
                    .saturating_add(reeve_core::time::duration_millis(t))
                    .max(now.0 + 1000),
            );
            Busy {
                queue: job.queue.clone(),
                until,
            }
        })
        .collect();
    Ok(forecast(&inputs, &caps, &busy, now, horizon))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        assert_eq!(Percentiles::of(vec![]), Percentiles::default());
        let p = Percentiles::of((1..=100).collect());
        assert_eq!(
            (p.count, p.p50, p.p95, p.max),
            (100, Some(51), Some(95), Some(100))
        );
    }

    #[test]
    fn actors_are_named_and_checked() {
        assert_eq!(actor(None).unwrap(), "operator");
        assert_eq!(actor(Some("ana")).unwrap(), "operator:ana");
        assert!(actor(Some("")).is_err());
        assert!(actor(Some("a\nb")).is_err());
    }
}
