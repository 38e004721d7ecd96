//! `/v1/schedules`: list, show (with the firing ledger), declarative apply,
//! pause, resume, delete.
//!
//! **Apply is all-or-nothing**: every schedule is validated (and duplicate
//! names refused) before anything is written, so a bad element changes
//! nothing. A schedule whose cadence changes gets a new next fire time; any
//! other change keeps it, and no change ever resets history or counters.
//! Applying never fires a schedule.

use std::collections::{HashMap, HashSet};

use axum::Json;
use axum::extract::{Path, State};
use reeve_core::{InputError, Timestamp};
use reeve_schedule::{Change, ScheduleSpec, ScheduleStatus, ValidSchedule, diff};
use reeve_store::{FiringRecord, NextFire, SchedulePut, ScheduleRecord};
use serde::{Deserialize, Serialize};

use crate::extract::ApiJson;
use crate::{ApiError, AppState};

type ApiResult<T> = Result<T, ApiError>;

/// A schedule as the API shows it: the stored record plus its rule in words.
#[derive(Debug, Serialize)]
pub(crate) struct ScheduleView {
    #[serde(flatten)]
    record: ScheduleRecord,
    rule: String,
}

fn view(record: ScheduleRecord) -> ScheduleView {
    let rule = record
        .spec
        .validate()
        .map(|v| v.rule.describe())
        .unwrap_or_else(|e| format!("invalid: {e}"));
    ScheduleView { record, rule }
}

/// `GET /v1/schedules`.
pub(crate) async fn list(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let schedules: Vec<ScheduleView> = state
        .store
        .list_schedules()
        .await?
        .into_iter()
        .map(view)
        .collect();
    Ok(Json(serde_json::json!({ "schedules": schedules })))
}

#[derive(Debug, Serialize)]
pub(crate) struct ShowResponse {
    schedule: ScheduleView,
    firings: Vec<FiringRecord>,
}

/// `GET /v1/schedules/{name}`: the schedule and its latest ledger rows.
pub(crate) async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ShowResponse>> {
    let record = state.store.get_schedule(&name).await?;
    let firings = state.store.firings(&name, 50).await?;
    Ok(Json(ShowResponse {
        schedule: view(record),
        firings,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApplyRequest {
    schedules: Vec<ScheduleSpec>,
    #[serde(default)]
    prune: bool,
    #[serde(default)]
    dry_run: bool,
}

/// What an apply did (or, with `dry_run`, would do).
#[derive(Debug, Default, Serialize)]
pub struct ApplyResponse {
    pub created: Vec<String>,
    pub changed: Vec<ChangedSchedule>,
    pub unchanged: Vec<String>,
    pub deleted: Vec<String>,
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
pub struct ChangedSchedule {
    pub name: String,
    pub fields: Vec<&'static str>,
}

/// `POST /v1/schedules/apply`: upsert every schedule of the request (and with
/// `prune`, delete the ones not in it).
pub(crate) async fn apply(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ApplyRequest>,
) -> ApiResult<Json<ApplyResponse>> {
    let out = apply_specs(
        state.store.as_ref(),
        req.schedules,
        req.prune,
        req.dry_run,
        state.config.max_payload_bytes,
    )
    .await?;
    Ok(Json(out))
}

/// The apply itself, shared by the endpoint and the daemon's start-up
/// (`[server] schedules`): validate everything, then upsert.
pub async fn apply_specs(
    store: &dyn reeve_store::Store,
    specs: Vec<ScheduleSpec>,
    prune: bool,
    dry_run: bool,
    max_payload_bytes: usize,
) -> Result<ApplyResponse, ApiError> {
    let mut valid: Vec<(ScheduleSpec, ValidSchedule)> = Vec::with_capacity(specs.len());
    let mut names = HashSet::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let v = spec
            .validate_with_limit(max_payload_bytes)
            .map_err(|e| InputError::new(format!("schedules[{i}].{}", e.field), e.message))?;
        if !names.insert(v.name.clone()) {
            return Err(InputError::new(
                format!("schedules[{i}].name"),
                format!("{} appears twice", v.name),
            )
            .into());
        }
        valid.push((spec, v));
    }
    let existing: HashMap<String, ScheduleRecord> = store
        .list_schedules()
        .await?
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect();
    let now = store.now().await?;
    let mut out = ApplyResponse {
        dry_run,
        ..Default::default()
    };
    for (spec, new) in valid {
        let name = new.name.clone();
        let put = match existing.get(&name) {
            None => {
                out.created.push(name);
                SchedulePut {
                    next_fire_at: NextFire::Set(new.rule.next_after(now, None)),
                    anchor: NextFire::Keep,
                    max_turns_changed: new.job.max_turns.is_some(),
                    status: new.status,
                    spec,
                }
            }
            Some(record) => {
                let change = match record.spec.validate() {
                    Ok(mut old) => {
                        // Compare with the status the schedule has now (it may
                        // have been paused by hand or by a failure streak).
                        old.status = Some(record.status);
                        diff(&old, &new)
                    }
                    Err(_) => Change::Changed {
                        fields: vec!["spec"],
                        cadence_only: false,
                    },
                };
                let Change::Changed { fields, .. } = &change else {
                    out.unchanged.push(name);
                    continue;
                };
                let resumed = record.status == ScheduleStatus::Paused
                    && new.status == Some(ScheduleStatus::Active);
                let next_fire_at = if change.cadence_changed() || resumed {
                    NextFire::Set(new.rule.next_after(now, record.anchor))
                } else {
                    NextFire::Keep
                };
                out.changed.push(ChangedSchedule {
                    name,
                    fields: fields.clone(),
                });
                SchedulePut {
                    next_fire_at,
                    anchor: NextFire::Keep,
                    max_turns_changed: change.touches("job.max_turns"),
                    status: new.status,
                    spec,
                }
            }
        };
        if !dry_run {
            store.put_schedule(put).await?;
        }
    }
    if prune {
        let mut gone: Vec<&String> = existing.keys().filter(|n| !names.contains(*n)).collect();
        gone.sort();
        for name in gone {
            if !dry_run {
                store.delete_schedule(name).await?;
            }
            out.deleted.push(name.clone());
        }
    }
    Ok(out)
}

/// `POST /v1/schedules/{name}/pause`.
pub(crate) async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ScheduleView>> {
    let record = state
        .store
        .set_schedule_status(
            &name,
            ScheduleStatus::Paused,
            Some("paused by an operator".into()),
            NextFire::Keep,
        )
        .await?;
    Ok(Json(view(record)))
}

/// `POST /v1/schedules/{name}/resume`: active again from the next fire time
/// after now (times missed while paused do not fire).
pub(crate) async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ScheduleView>> {
    let record = state.store.get_schedule(&name).await?;
    let now: Timestamp = state.store.now().await?;
    let next = record
        .spec
        .validate()
        .ok()
        .and_then(|v| v.rule.next_after(now, record.anchor));
    let record = state
        .store
        .set_schedule_status(&name, ScheduleStatus::Active, None, NextFire::Set(next))
        .await?;
    Ok(Json(view(record)))
}

/// `DELETE /v1/schedules/{name}`: its jobs and ledger rows stay.
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    if !state.store.delete_schedule(&name).await? {
        return Err(reeve_store::StoreError::ScheduleNotFound(name).into());
    }
    Ok(Json(serde_json::json!({ "deleted": name })))
}
