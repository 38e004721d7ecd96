//! Mapping between SQLite rows and domain types. The column list
//! [`JOB_COLUMNS`] and [`job_from_row`] must stay in the same order.

use std::time::Duration;

use reeve_core::{Actor, Event, FailureReason, FollowUp, Job, Timestamp};
use reeve_store::{Result, StoreError};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

pub const JOB_COLUMNS: &str = "id, queue, kind, state, payload, priority, attempt, max_attempts, epoch, \
    claimed_by, claimed_at, heartbeat_at, lease_expires_at, heartbeats, heartbeat_count, available_at, \
    max_run_duration_ms, heartbeat_timeout_ms, failure_reason, last_error, retry_on, idempotency_key, \
    unique_key, command, max_turns, turns, progress, result, cancel_requested_at, created_at, finished_at, \
    schedule, nominal_at, on_success, progress_at, stalled_at, escalated_at, requires";

pub const EVENT_COLUMNS: &str =
    "id, job_id, at, event, epoch, attempt, worker, reason, actor, detail";

/// A row the code cannot read (a database written by something else).
pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Database {
        message: format!("unreadable {what} in the database: {detail}"),
        transient: false,
    }
}

pub(crate) fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

fn json(what: &str, v: Option<String>) -> Result<Option<serde_json::Value>> {
    v.map(|s| serde_json::from_str(&s).map_err(|e| corrupt(what, e)))
        .transpose()
}

pub fn job_from_row(row: &SqliteRow) -> Result<Job> {
    let id: i64 = row.get(0);
    let state: String = row.get(3);
    let failure_reason: Option<String> = row.get(18);
    let retry_on: Option<String> = row.get(20);
    let command: Option<String> = row.get(23);
    let idempotency_key: Option<String> = row.get(21);
    let on_success: Option<String> = row.get(33);
    let requires: Option<String> = row.get(37);
    Ok(Job {
        id,
        queue: row.get(1),
        kind: row.get(2),
        state: state.parse().map_err(|e| corrupt("job state", e))?,
        payload: json("payload", Some(row.get(4)))?.unwrap_or_default(),
        priority: row.get::<i64, _>(5) as i32,
        attempt: row.get::<i64, _>(6) as i32,
        max_attempts: row.get::<i64, _>(7) as i32,
        epoch: row.get(8),
        claimed_by: row.get(9),
        claimed_at: ts(row.get(10)),
        heartbeat_at: ts(row.get(11)),
        lease_expires_at: ts(row.get(12)),
        heartbeats: row.get::<i64, _>(13) != 0,
        heartbeat_count: row.get(14),
        available_at: Timestamp(row.get(15)),
        max_run_duration: Duration::from_millis(row.get::<i64, _>(16).max(0) as u64),
        heartbeat_timeout: Duration::from_millis(row.get::<i64, _>(17).max(0) as u64),
        failure_reason: failure_reason
            .map(|r| {
                r.parse::<FailureReason>()
                    .map_err(|e| corrupt("failure reason", e))
            })
            .transpose()?,
        last_error: row.get(19),
        retry_on: retry_on
            .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("retry_on", e)))
            .transpose()?,
        idempotency_key: idempotency_key.unwrap_or_else(|| id.to_string()),
        unique_key: row.get(22),
        command: command
            .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("command", e)))
            .transpose()?,
        max_turns: row.get(24),
        turns: row.get(25),
        progress: row.get(26),
        result: json("result", row.get(27))?,
        cancel_requested_at: ts(row.get(28)),
        created_at: Timestamp(row.get(29)),
        finished_at: ts(row.get(30)),
        schedule: row.get(31),
        nominal_at: ts(row.get(32)),
        on_success: on_success
            .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("on_success", e)))
            .transpose()?,
        progress_at: ts(row.get(34)),
        stalled_at: ts(row.get(35)),
        escalated_at: ts(row.get(36)),
        requires: requires
            .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("requires", e)))
            .transpose()?
            .unwrap_or_default(),
    })
}

pub fn event_from_row(row: &SqliteRow) -> Result<Event> {
    let event: String = row.get(3);
    let actor: String = row.get(8);
    Ok(Event {
        id: row.get(0),
        job_id: row.get(1),
        at: Timestamp(row.get(2)),
        event: event.parse().map_err(|e| corrupt("event", e))?,
        epoch: row.get(4),
        attempt: row.get::<i64, _>(5) as i32,
        worker: row.get(6),
        reason: row.get(7),
        by: Actor::parse(&actor).ok_or_else(|| corrupt("event actor", &actor))?,
        detail: row.get(9),
    })
}

/// Infrastructure errors: busy and locked databases are transient.
pub fn db_error(e: sqlx::Error) -> StoreError {
    let transient = match &e {
        sqlx::Error::Database(d) => matches!(
            d.code().as_deref(),
            Some("5") | Some("6") | Some("517") | Some("261")
        ),
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
        _ => false,
    };
    StoreError::Database {
        message: e.to_string(),
        transient,
    }
}

pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// A job as one JSON object, built by SQLite. Sending a batch of jobs as one
/// `json_group_array` value crosses from the database thread in one message
/// instead of one per row and column, which dominates a busy claim or
/// completion otherwise.
pub const JOB_JSON: &str = "json_object('id', id, 'queue', queue, 'kind', kind, 'state', state, \
    'payload', json(payload), 'priority', priority, 'attempt', attempt, 'max_attempts', max_attempts, \
    'epoch', epoch, 'claimed_by', claimed_by, 'claimed_at', claimed_at, 'heartbeat_at', heartbeat_at, \
    'lease_expires_at', lease_expires_at, 'heartbeats', heartbeats, 'heartbeat_count', heartbeat_count, \
    'available_at', available_at, 'max_run_duration_ms', max_run_duration_ms, \
    'heartbeat_timeout_ms', heartbeat_timeout_ms, 'failure_reason', failure_reason, 'last_error', last_error, \
    'retry_on', json(retry_on), 'idempotency_key', idempotency_key, 'unique_key', unique_key, \
    'command', json(command), 'max_turns', max_turns, 'turns', turns, 'progress', progress, \
    'result', json(result), 'cancel_requested_at', cancel_requested_at, 'created_at', created_at, \
    'finished_at', finished_at, 'schedule', schedule, 'nominal_at', nominal_at, \
    'on_success', json(on_success), 'progress_at', progress_at, 'stalled_at', stalled_at, \
    'escalated_at', escalated_at, 'requires', json(requires))";

/// The shape of [`JOB_JSON`].
#[derive(serde::Deserialize)]
struct JobJson {
    id: i64,
    queue: String,
    kind: String,
    state: String,
    payload: serde_json::Value,
    priority: i64,
    attempt: i64,
    max_attempts: i64,
    epoch: i64,
    claimed_by: Option<String>,
    claimed_at: Option<i64>,
    heartbeat_at: Option<i64>,
    lease_expires_at: Option<i64>,
    heartbeats: i64,
    heartbeat_count: i64,
    available_at: i64,
    max_run_duration_ms: i64,
    heartbeat_timeout_ms: i64,
    failure_reason: Option<String>,
    last_error: Option<String>,
    retry_on: Option<Vec<FailureReason>>,
    idempotency_key: Option<String>,
    unique_key: Option<String>,
    command: Option<Vec<String>>,
    max_turns: Option<i64>,
    turns: i64,
    progress: Option<String>,
    result: Option<serde_json::Value>,
    cancel_requested_at: Option<i64>,
    created_at: i64,
    finished_at: Option<i64>,
    schedule: Option<String>,
    nominal_at: Option<i64>,
    on_success: Option<FollowUp>,
    progress_at: Option<i64>,
    stalled_at: Option<i64>,
    escalated_at: Option<i64>,
    requires: Option<Vec<String>>,
}

/// Parses a `json_group_array` of [`JOB_JSON`] objects.
pub fn jobs_from_json(text: &str) -> Result<Vec<Job>> {
    let rows: Vec<JobJson> = serde_json::from_str(text).map_err(|e| corrupt("job rows", e))?;
    rows.into_iter()
        .map(|r| {
            Ok(Job {
                id: r.id,
                queue: r.queue,
                kind: r.kind,
                state: r.state.parse().map_err(|e| corrupt("job state", e))?,
                payload: r.payload,
                priority: r.priority as i32,
                attempt: r.attempt as i32,
                max_attempts: r.max_attempts as i32,
                epoch: r.epoch,
                claimed_by: r.claimed_by,
                claimed_at: ts(r.claimed_at),
                heartbeat_at: ts(r.heartbeat_at),
                lease_expires_at: ts(r.lease_expires_at),
                heartbeats: r.heartbeats != 0,
                heartbeat_count: r.heartbeat_count,
                available_at: Timestamp(r.available_at),
                max_run_duration: Duration::from_millis(r.max_run_duration_ms.max(0) as u64),
                heartbeat_timeout: Duration::from_millis(r.heartbeat_timeout_ms.max(0) as u64),
                failure_reason: r
                    .failure_reason
                    .map(|f| {
                        f.parse::<FailureReason>()
                            .map_err(|e| corrupt("failure reason", e))
                    })
                    .transpose()?,
                last_error: r.last_error,
                retry_on: r.retry_on,
                idempotency_key: r.idempotency_key.unwrap_or_else(|| r.id.to_string()),
                unique_key: r.unique_key,
                command: r.command,
                max_turns: r.max_turns,
                turns: r.turns,
                progress: r.progress,
                result: r.result,
                cancel_requested_at: ts(r.cancel_requested_at),
                created_at: Timestamp(r.created_at),
                finished_at: ts(r.finished_at),
                schedule: r.schedule,
                nominal_at: ts(r.nominal_at),
                on_success: r.on_success,
                progress_at: ts(r.progress_at),
                stalled_at: ts(r.stalled_at),
                escalated_at: ts(r.escalated_at),
                requires: r.requires.unwrap_or_default(),
            })
        })
        .collect()
}
