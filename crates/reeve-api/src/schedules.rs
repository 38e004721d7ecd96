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
use axum::extract::State;
use reeve_core::{InputError, Timestamp};
use reeve_schedule::{Change, ScheduleSpec, ScheduleStatus, ValidSchedule, diff};
use reeve_store::{FiringRecord, NextFire, SchedulePut, ScheduleRecord};
use serde::{Deserialize, Serialize};

use crate::extract::{ApiJson, PathText};
use crate::{ApiError, AppState};

type ApiResult<T> = Result<T, ApiError>;

/// A schedule as the API shows it: the stored record plus its rule in words.
#[derive(Debug, Serialize)]
pub(crate) struct ScheduleView {
    #[serde(flatten)]
    record: ScheduleRecord,
    rule: String,
    /// From the latest ledger rows (list and show only).
    #[serde(skip_serializing_if = "Option::is_none")]
    recent: Option<Recent>,
}

/// A schedule's recent firings in brief.
#[derive(Debug, Serialize)]
pub(crate) struct Recent {
    /// The newest ledger row's outcome, and its job's end state if it ended.
    last_outcome: Option<String>,
    last_state: Option<String>,
    last_nominal_at: Option<Timestamp>,
    /// Over the finished firings among the latest [`RECENT_ROWS`].
    avg_duration_ms: Option<i64>,
    avg_turns: Option<f64>,
    finished: usize,
}

/// Ledger rows summarized per schedule in listings.
const RECENT_ROWS: u32 = 20;

async fn recent(store: &dyn reeve_store::Store, name: &str) -> Result<Recent, ApiError> {
    let rows = store.firings(name, RECENT_ROWS).await?;
    let finished: Vec<&FiringRecord> = rows.iter().filter(|r| r.finished_at.is_some()).collect();
    let durations: Vec<i64> = finished.iter().filter_map(|r| r.duration_ms).collect();
    let turns: Vec<i64> = finished.iter().filter_map(|r| r.turns).collect();
    Ok(Recent {
        last_outcome: rows.first().map(|r| r.outcome.clone()),
        last_state: rows.first().and_then(|r| r.state.clone()),
        last_nominal_at: rows.first().map(|r| r.nominal_at),
        avg_duration_ms: (!durations.is_empty())
            .then(|| durations.iter().sum::<i64>() / durations.len() as i64),
        avg_turns: (!turns.is_empty())
            .then(|| turns.iter().sum::<i64>() as f64 / turns.len() as f64),
        finished: finished.len(),
    })
}

pub(crate) fn view(record: ScheduleRecord) -> ScheduleView {
    let rule = record
        .spec
        .validate()
        .map(|v| v.rule.describe())
        .unwrap_or_else(|e| format!("invalid: {e}"));
    ScheduleView {
        record,
        rule,
        recent: None,
    }
}

/// `GET /v1/schedules`.
pub(crate) async fn list(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let mut schedules = Vec::new();
    for record in state.store.list_schedules().await? {
        let mut v = view(record);
        v.recent = Some(recent(state.store.as_ref(), &v.record.name).await?);
        schedules.push(v);
    }
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
    PathText(name): PathText,
) -> ApiResult<Json<ShowResponse>> {
    let record = state.store.get_schedule(&name).await?;
    let firings = state.store.firings(&name, 50).await?;
    let mut schedule = view(record);
    schedule.recent = Some(recent(state.store.as_ref(), &name).await?);
    Ok(Json(ShowResponse { schedule, firings }))
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
    /// Created or changed schedules whose firings in the next 24h pile up
    /// with other active schedules' beyond a cap (SPEC §8).
    pub warnings: Vec<CollisionWarning>,
}

/// A 5-minute bucket where a saved schedule collides with others.
#[derive(Debug, Serialize)]
pub struct CollisionWarning {
    pub schedule: String,
    pub bucket_start: Timestamp,
    pub schedules: Vec<String>,
    pub peak_load: u32,
    pub cap: u32,
    /// `global`, or the queue whose cap is exceeded.
    pub cap_scope: String,
    /// How many colliding buckets there are in all (only the first few are
    /// listed per schedule).
    pub buckets: usize,
    pub message: String,
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
    // The schedules as they are after this apply, for the collision check.
    let mut saved: Vec<(ValidSchedule, ScheduleStatus, bool)> = Vec::new();
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
                    saved.push((new.clone(), record.status, false));
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
        let status = match (&put.status, existing.get(&new.name)) {
            (Some(s), _) => *s,
            (None, Some(r)) => r.status,
            (None, None) => ScheduleStatus::Active,
        };
        saved.push((new, status, true));
        if !dry_run {
            store.put_schedule(put).await?;
        }
    }
    out.warnings = collision_warnings(store, &existing, &saved, &names, prune, now).await?;
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

/// Warnings shown per schedule at most.
const WARNINGS_PER_SCHEDULE: usize = 3;

/// The collision warnings of an apply: for each created or changed active
/// schedule, the 5-minute buckets of the next 24h where it and other active
/// schedules exceed the global cap or their shared queue's cap, with the
/// expected durations observed so far.
async fn collision_warnings(
    store: &dyn reeve_store::Store,
    existing: &HashMap<String, ScheduleRecord>,
    saved: &[(ValidSchedule, ScheduleStatus, bool)],
    applied: &HashSet<String>,
    prune: bool,
    now: Timestamp,
) -> Result<Vec<CollisionWarning>, ApiError> {
    if !saved
        .iter()
        .any(|(_, status, touched)| *touched && *status == ScheduleStatus::Active)
    {
        return Ok(Vec::new());
    }
    // Every active schedule after the apply: the saved ones, and the others
    // unless pruned.
    let mut active: Vec<(ValidSchedule, Option<Timestamp>)> = saved
        .iter()
        .filter(|(_, status, _)| *status == ScheduleStatus::Active)
        .map(|(v, _, _)| (v.clone(), existing.get(&v.name).and_then(|r| r.anchor)))
        .collect();
    if !prune {
        for r in existing.values() {
            if !applied.contains(&r.name)
                && r.status == ScheduleStatus::Active
                && let Ok(v) = r.spec.validate()
            {
                active.push((v, r.anchor));
            }
        }
    }
    let names: Vec<String> = active.iter().map(|(v, _)| v.name.clone()).collect();
    let typical = store.typical_durations(&names, &[]).await?;
    let planned = |v: &ValidSchedule, anchor: Option<Timestamp>| reeve_schedule::Planned {
        name: v.name.clone(),
        rule: v.rule.clone(),
        anchor,
        expected_duration: typical
            .by_schedule
            .get(&v.name)
            .copied()
            .unwrap_or(crate::runs::DEFAULT_EXPECTED_DURATION),
        slots: 1,
    };
    let horizon = std::time::Duration::from_secs(24 * 3600);
    let mut found: Vec<(String, reeve_schedule::Collision)> = Vec::new();
    let limits = store.limits().await?;
    let all: Vec<_> = active.iter().map(|(v, a)| planned(v, *a)).collect();
    for c in reeve_schedule::collisions(&all, limits.global, now, horizon) {
        found.push(("global".into(), c));
    }
    for q in store.list_queues().await? {
        let Some(cap) = q.settings.concurrency else {
            continue;
        };
        let in_queue: Vec<_> = active
            .iter()
            .filter(|(v, _)| v.job.queue == q.name)
            .map(|(v, a)| planned(v, *a))
            .collect();
        for c in reeve_schedule::collisions(&in_queue, Some(cap), now, horizon) {
            found.push((q.name.clone(), c));
        }
    }
    let mut warnings = Vec::new();
    for (v, status, touched) in saved {
        if !*touched || *status != ScheduleStatus::Active {
            continue;
        }
        let mine: Vec<&(String, reeve_schedule::Collision)> =
            found.iter().filter(|(_, c)| c.involves(&v.name)).collect();
        for (scope, c) in mine.iter().take(WARNINGS_PER_SCHEDULE) {
            let others: Vec<&str> = c
                .schedules
                .iter()
                .filter(|s| **s != v.name)
                .map(String::as_str)
                .collect();
            let cap_name = if scope == "global" {
                "the global cap".to_string()
            } else {
                format!("queue {scope}'s cap")
            };
            warnings.push(CollisionWarning {
                schedule: v.name.clone(),
                bucket_start: c.bucket_start,
                schedules: c.schedules.clone(),
                peak_load: c.peak_load,
                cap: c.cap,
                cap_scope: scope.clone(),
                buckets: mine.len(),
                message: format!(
                    "{} fires in the 5 minutes from {} with {}: up to {} runs at once against {cap_name} of {} ({} such bucket(s) in the next 24h)",
                    v.name,
                    c.bucket_start,
                    others.join(", "),
                    c.peak_load,
                    c.cap,
                    mine.len()
                ),
            });
        }
    }
    Ok(warnings)
}

/// `POST /v1/schedules/{name}/pause`.
pub(crate) async fn pause(
    State(state): State<AppState>,
    PathText(name): PathText,
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

/// Resumes a schedule at once: active again from the next fire time after
/// now (times missed while paused do not fire).
pub(crate) async fn resume_now(state: &AppState, name: &str) -> ApiResult<ScheduleView> {
    let name = name.to_string();
    let record = state.store.get_schedule(&name).await?;
    let now: Timestamp = state.store.now().await?;
    if record.status == ScheduleStatus::Paused {
        record_paused_range(state.store.as_ref(), &record, now).await?;
    }
    let next = record
        .spec
        .validate()
        .ok()
        .and_then(|v| v.rule.next_after(now, record.anchor));
    let record = state
        .store
        .set_schedule_status(&name, ScheduleStatus::Active, None, NextFire::Set(next))
        .await?;
    Ok(view(record))
}

/// Records the fire times a paused schedule let pass, as one
/// `skipped_paused` ledger row holding their range, so the history answers
/// "why didn't it run at 09:00?" with "it was paused".
async fn record_paused_range(
    store: &dyn reeve_store::Store,
    record: &ScheduleRecord,
    now: Timestamp,
) -> Result<(), ApiError> {
    let (Some(first), Ok(schedule)) = (record.next_fire_at, record.spec.validate()) else {
        return Ok(());
    };
    if first > now {
        return Ok(());
    }
    // The plan covers the times after the last handled one; interval rules
    // are anchored there, so it must be a real nominal time.
    let last = record
        .last_nominal
        .filter(|l| *l < first)
        .unwrap_or_else(|| {
            let before = schedule
                .rule
                .interval()
                .map_or(1, reeve_core::time::duration_millis);
            Timestamp(first.0.saturating_sub(before))
        });
    let plan = reeve_schedule::misfire_plan(
        &schedule.rule,
        last,
        now,
        reeve_schedule::MisfirePolicy::Skip,
    );
    let Some((from, until)) = plan.skipped else {
        return Ok(());
    };
    store
        .fire(reeve_store::FireParams {
            schedule: record.name.clone(),
            expected_next: None,
            nominal: from,
            next: NextFire::Keep,
            job: None,
            overlap: schedule.overlap,
            outcome: reeve_store::FiringOutcome::SkippedPaused,
            skipped_until: Some(until),
            require_capacity: false,
            audit: None,
            probe: false,
        })
        .await?;
    Ok(())
}

/// `DELETE /v1/schedules/{name}`: its jobs and ledger rows stay.
pub(crate) async fn delete(
    State(state): State<AppState>,
    PathText(name): PathText,
) -> ApiResult<Json<serde_json::Value>> {
    if !state.store.delete_schedule(&name).await? {
        return Err(reeve_store::StoreError::ScheduleNotFound(name).into());
    }
    Ok(Json(serde_json::json!({ "deleted": name })))
}
