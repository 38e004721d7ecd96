//! Mapping between PostgreSQL rows and domain types, and of sqlx errors to
//! [`StoreError`].
//!
//! **Invariants.** The column list [`JOB_COLUMNS`] and [`job_from_row`] stay
//! in the same order, and every column is decoded with the Rust type of its
//! SQL type in `migrations/` (`BIGINT` ↔ `i64`, `INTEGER` ↔ `i32`, `BOOLEAN`
//! ↔ `bool`, `BYTEA` ↔ `Vec<u8>`): PostgreSQL decoding is strict, so a
//! mismatch is an error, never a silent conversion. Error texts never carry
//! connection settings (sqlx's messages do not include the password, and
//! nothing here formats a URL).

use std::time::Duration;

use reeve_core::{Actor, Event, FailureReason, Job, Timestamp};
use reeve_store::{Result, StoreError};
use sqlx::Row;
use sqlx::postgres::PgRow;

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

fn json<T: serde::de::DeserializeOwned>(what: &str, v: Option<String>) -> Result<Option<T>> {
    v.map(|s| serde_json::from_str(&s).map_err(|e| corrupt(what, e)))
        .transpose()
}

/// Decodes column `i`, answering a type mismatch as a corrupt row.
pub(crate) fn col<'r, T>(row: &'r PgRow, i: usize) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(i).map_err(|e| corrupt("row", e))
}

pub fn job_from_row(row: &PgRow) -> Result<Job> {
    let id: i64 = col(row, 0)?;
    let state: String = col(row, 3)?;
    let failure_reason: Option<String> = col(row, 18)?;
    let idempotency_key: Option<String> = col(row, 21)?;
    Ok(Job {
        id,
        queue: col(row, 1)?,
        kind: col(row, 2)?,
        state: state.parse().map_err(|e| corrupt("job state", e))?,
        payload: json("payload", Some(col(row, 4)?))?.unwrap_or_default(),
        priority: col(row, 5)?,
        attempt: col(row, 6)?,
        max_attempts: col(row, 7)?,
        epoch: col(row, 8)?,
        claimed_by: col(row, 9)?,
        claimed_at: ts(col(row, 10)?),
        heartbeat_at: ts(col(row, 11)?),
        lease_expires_at: ts(col(row, 12)?),
        heartbeats: col(row, 13)?,
        heartbeat_count: col(row, 14)?,
        available_at: Timestamp(col(row, 15)?),
        max_run_duration: Duration::from_millis(col::<i64>(row, 16)?.max(0) as u64),
        heartbeat_timeout: Duration::from_millis(col::<i64>(row, 17)?.max(0) as u64),
        failure_reason: failure_reason
            .map(|r| {
                r.parse::<FailureReason>()
                    .map_err(|e| corrupt("failure reason", e))
            })
            .transpose()?,
        last_error: col(row, 19)?,
        retry_on: json("retry_on", col(row, 20)?)?,
        idempotency_key: idempotency_key.unwrap_or_else(|| id.to_string()),
        unique_key: col(row, 22)?,
        command: json("command", col(row, 23)?)?,
        max_turns: col(row, 24)?,
        turns: col(row, 25)?,
        progress: col(row, 26)?,
        result: json("result", col(row, 27)?)?,
        cancel_requested_at: ts(col(row, 28)?),
        created_at: Timestamp(col(row, 29)?),
        finished_at: ts(col(row, 30)?),
        schedule: col(row, 31)?,
        nominal_at: ts(col(row, 32)?),
        on_success: json("on_success", col(row, 33)?)?,
        progress_at: ts(col(row, 34)?),
        stalled_at: ts(col(row, 35)?),
        escalated_at: ts(col(row, 36)?),
        requires: json("requires", col(row, 37)?)?.unwrap_or_default(),
    })
}

pub fn event_from_row(row: &PgRow) -> Result<Event> {
    let event: String = col(row, 3)?;
    let actor: String = col(row, 8)?;
    Ok(Event {
        id: col(row, 0)?,
        job_id: col(row, 1)?,
        at: Timestamp(col(row, 2)?),
        event: event.parse().map_err(|e| corrupt("event", e))?,
        epoch: col(row, 4)?,
        attempt: col(row, 5)?,
        worker: col(row, 6)?,
        reason: col(row, 7)?,
        by: Actor::parse(&actor).ok_or_else(|| corrupt("event actor", &actor))?,
        detail: col(row, 9)?,
    })
}

/// Whether a SQLSTATE names a condition worth retrying: connection
/// exceptions (class 08), the server shutting down or restarting (57P01–03),
/// serialization failures and deadlocks (40001, 40P01), too many connections
/// (53300) and a lock wait that timed out (55P03).
pub fn is_transient_code(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "53300" | "55P03"
        )
}

/// Infrastructure errors; connection-class failures are transient.
pub fn db_error(e: sqlx::Error) -> StoreError {
    let transient = is_transient(&e);
    let message = match &e {
        sqlx::Error::Database(d) => match d.code() {
            Some(code) => format!("{} (SQLSTATE {code})", d.message()),
            None => d.message().to_string(),
        },
        _ => e.to_string(),
    };
    StoreError::Database { message, transient }
}

/// Whether retrying may succeed: a lost or refused connection, a pool that
/// timed out, or a server error of a transient class.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d.code().as_deref().is_some_and(is_transient_code),
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_class_codes_are_transient() {
        for code in [
            "08000", "08006", "08P01", "57P01", "57P02", "57P03", "40001", "40P01", "53300",
        ] {
            assert!(is_transient_code(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02", "57014"] {
            assert!(!is_transient_code(code), "{code}");
        }
        assert!(db_error(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!db_error(sqlx::Error::RowNotFound).is_transient());
    }
}
