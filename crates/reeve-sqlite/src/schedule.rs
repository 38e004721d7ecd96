//! Schedules and the firing ledger on SQLite (SPEC §7, §11).
//!
//! **Invariants.** Every write here runs on the single writer connection
//! inside `BEGIN IMMEDIATE`, like the job writes in `write`: [`fire`] reads
//! the schedule's `next_fire_at`, checks it against the firer's expectation,
//! applies the overlap policy, inserts the job, writes the ledger row and
//! advances the schedule while holding SQLite's write lock, so a fire time
//! produces at most one job even when several processes share the file. The
//! ledger's `UNIQUE (schedule, nominal_at)` is a second guard. Reads use the
//! reader pool.

use reeve_core::time::duration_millis;
use reeve_core::{Actor, EventKind, JobId, JobState, Timestamp};
use reeve_schedule::ScheduleStatus;
use reeve_store::schedule::{
    LIVE_STATES_SQL, OverlapDecision, emit_firing, firing_job, overlap_decision,
};
use reeve_store::transition::{PendingEvent, enqueued_event, materialize, with_id};
use reeve_store::{
    FireParams, FireResult, FiringOutcome, FiringRecord, NextFire, Result, SchedulePut,
    ScheduleRecord, StoreError,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};

use crate::SqliteStore;
use crate::rows::{JOB_COLUMNS, db_error, job_from_row};
use crate::write::{commit, insert_events, insert_jobs};

const SCHEDULE_COLUMNS: &str = "name, spec, status, paused_reason, next_fire_at, anchor, \
    last_nominal, generic_streak, budget_streak, max_turns_set_at, created_at, updated_at";

const FIRING_COLUMNS: &str = "id, schedule, nominal_at, nominal_until, outcome, job_id, at, detail";

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Database {
        message: format!("unreadable {what} in the database: {detail}"),
        transient: false,
    }
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

fn schedule_from_row(row: &SqliteRow) -> Result<ScheduleRecord> {
    let spec: String = row.get(1);
    let status: String = row.get(2);
    Ok(ScheduleRecord {
        name: row.get(0),
        spec: serde_json::from_str(&spec).map_err(|e| corrupt("schedule spec", e))?,
        status: status.parse().map_err(|e| corrupt("schedule status", e))?,
        paused_reason: row.get(3),
        next_fire_at: ts(row.get(4)),
        anchor: ts(row.get(5)),
        last_nominal: ts(row.get(6)),
        generic_streak: row.get::<i64, _>(7) as i32,
        budget_streak: row.get::<i64, _>(8) as i32,
        max_turns_set_at: ts(row.get(9)),
        created_at: Timestamp(row.get(10)),
        updated_at: Timestamp(row.get(11)),
    })
}

fn firing_from_row(row: &SqliteRow) -> FiringRecord {
    FiringRecord {
        id: row.get(0),
        schedule: row.get(1),
        nominal_at: Timestamp(row.get(2)),
        nominal_until: ts(row.get(3)),
        outcome: row.get(4),
        job_id: row.get(5),
        at: Timestamp(row.get(6)),
        detail: row.get(7),
    }
}

pub(crate) async fn put_schedule(
    store: &SqliteStore,
    put: SchedulePut,
) -> Result<(ScheduleRecord, bool)> {
    reeve_core::validate::name("name", &put.spec.name)?;
    let spec = serde_json::to_string(&put.spec).expect("a schedule spec always serializes");
    let mut tx = store.begin().await?;
    let now = store.now_ms();
    let exists = sqlx::query("SELECT 1 FROM schedules WHERE name = ?")
        .bind(&put.spec.name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?
        .is_some();
    let sql = format!(
        "INSERT INTO schedules (name, spec, status, next_fire_at, anchor, max_turns_set_at, \
           created_at, updated_at) \
         VALUES (?1, ?2, coalesce(?3, 'active'), ?4, ?5, CASE WHEN ?6 THEN ?7 END, ?7, ?7) \
         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, \
           status = coalesce(?3, status), \
           paused_reason = CASE WHEN ?3 = 'active' THEN NULL ELSE paused_reason END, \
           next_fire_at = CASE WHEN ?8 THEN excluded.next_fire_at ELSE next_fire_at END, \
           anchor = CASE WHEN ?9 THEN excluded.anchor ELSE anchor END, \
           max_turns_set_at = CASE WHEN ?6 THEN ?7 ELSE max_turns_set_at END, \
           updated_at = ?7 \
         RETURNING {SCHEDULE_COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(&put.spec.name)
        .bind(spec)
        .bind(put.status.map(ScheduleStatus::as_str))
        .bind(put.next_fire_at.resolve(None).map(|t| t.0))
        .bind(put.anchor.resolve(None).map(|t| t.0))
        .bind(put.max_turns_changed)
        .bind(now)
        .bind(put.next_fire_at.is_set())
        .bind(put.anchor.is_set())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
    let record = schedule_from_row(&row)?;
    commit(tx, now, &[]).await?;
    store.signals.deadlines_changed();
    Ok((record, !exists))
}

pub(crate) async fn get_schedule(store: &SqliteStore, name: &str) -> Result<ScheduleRecord> {
    let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = ?");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(name)
        .fetch_optional(&store.reader)
        .await
        .map_err(db_error)?
        .ok_or_else(|| StoreError::ScheduleNotFound(name.to_string()))?;
    schedule_from_row(&row)
}

pub(crate) async fn list_schedules(store: &SqliteStore) -> Result<Vec<ScheduleRecord>> {
    let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name");
    let rows = sqlx::query(AssertSqlSafe(sql))
        .fetch_all(&store.reader)
        .await
        .map_err(db_error)?;
    rows.iter().map(schedule_from_row).collect()
}

pub(crate) async fn delete_schedule(store: &SqliteStore, name: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM schedules WHERE name = ?")
        .bind(name)
        .execute(&store.writer)
        .await
        .map_err(db_error)?;
    Ok(done.rows_affected() > 0)
}

pub(crate) async fn set_schedule_status(
    store: &SqliteStore,
    name: &str,
    status: ScheduleStatus,
    reason: Option<String>,
    next_fire_at: NextFire,
) -> Result<ScheduleRecord> {
    let now = store.now_ms();
    let sql = format!(
        "UPDATE schedules SET status = ?1, \
           paused_reason = CASE WHEN ?1 = 'paused' THEN ?2 END, \
           next_fire_at = CASE WHEN ?3 THEN ?4 ELSE next_fire_at END, \
           updated_at = ?5 \
         WHERE name = ?6 RETURNING {SCHEDULE_COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(status.as_str())
        .bind(reason)
        .bind(next_fire_at.is_set())
        .bind(next_fire_at.resolve(None).map(|t| t.0))
        .bind(now)
        .bind(name)
        .fetch_optional(&store.writer)
        .await
        .map_err(db_error)?
        .ok_or_else(|| StoreError::ScheduleNotFound(name.to_string()))?;
    store.signals.deadlines_changed();
    schedule_from_row(&row)
}

pub(crate) async fn due_schedules(store: &SqliteStore, limit: u32) -> Result<Vec<ScheduleRecord>> {
    let sql = format!(
        "SELECT {SCHEDULE_COLUMNS} FROM schedules \
         WHERE status = 'active' AND next_fire_at <= ? ORDER BY next_fire_at, name LIMIT ?"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(store.now_ms())
        .bind(i64::from(limit))
        .fetch_all(&store.reader)
        .await
        .map_err(db_error)?;
    rows.iter().map(schedule_from_row).collect()
}

pub(crate) async fn firings(
    store: &SqliteStore,
    schedule: &str,
    limit: u32,
) -> Result<Vec<FiringRecord>> {
    let sql = format!(
        "SELECT {FIRING_COLUMNS} FROM firings WHERE schedule = ? \
         ORDER BY nominal_at DESC, id DESC LIMIT ?"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(schedule)
        .bind(i64::from(limit))
        .fetch_all(&store.reader)
        .await
        .map_err(db_error)?;
    Ok(rows.iter().map(firing_from_row).collect())
}

async fn in_ledger(tx: &mut Transaction<'static, Sqlite>, schedule: &str, at: i64) -> Result<bool> {
    Ok(
        sqlx::query("SELECT 1 FROM firings WHERE schedule = ? AND nominal_at = ?")
            .bind(schedule)
            .bind(at)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_error)?
            .is_some(),
    )
}

/// Advances the schedule per `next` (and `last_nominal` with it).
async fn advance(
    tx: &mut Transaction<'static, Sqlite>,
    schedule: &str,
    next: NextFire,
    nominal: i64,
    now: i64,
) -> Result<()> {
    if let NextFire::Set(next) = next {
        sqlx::query(
            "UPDATE schedules SET next_fire_at = ?, last_nominal = ?, updated_at = ? WHERE name = ?",
        )
        .bind(next.map(|t| t.0))
        .bind(nominal)
        .bind(now)
        .bind(schedule)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

pub(crate) async fn fire(store: &SqliteStore, p: FireParams) -> Result<FireResult> {
    let mut tx = store.begin().await?;
    let now = store.now_ms();
    let stored: Option<Option<i64>> =
        sqlx::query_scalar("SELECT next_fire_at FROM schedules WHERE name = ?")
            .bind(&p.schedule)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
    match (stored, p.expected_next) {
        (None, None) => return Err(StoreError::ScheduleNotFound(p.schedule)),
        (None, Some(_)) => return Ok(FireResult::LostRace),
        (Some(stored), Some(expected)) if stored != Some(expected.0) => {
            return Ok(FireResult::LostRace);
        }
        _ => {}
    }
    let mut nominal = p.nominal.0;
    if in_ledger(&mut tx, &p.schedule, nominal).await? {
        if p.expected_next.is_some() {
            // Handled already (the ledger is the second guard): no job, but
            // the schedule moves on so it cannot stick on this time.
            advance(&mut tx, &p.schedule, p.next, nominal, now).await?;
            commit(tx, now, &[]).await?;
            store.signals.deadlines_changed();
            return Ok(FireResult::LostRace);
        }
        nominal = nominal.max(now);
        while in_ledger(&mut tx, &p.schedule, nominal).await? {
            nominal += 1;
        }
    }

    let mut events = Vec::new();
    let mut nominal_until = None;
    let mut detail = None;
    let (outcome, job_id, result) = match p.job {
        None => {
            let outcome = match p.skipped_until {
                Some(until) => {
                    nominal_until = Some(until.0);
                    FiringOutcome::SkippedMisfire
                }
                None => p.outcome,
            };
            (outcome, None, FireResult::Skipped(outcome))
        }
        Some(nj) => {
            let nj = firing_job(nj, &p.schedule, p.nominal, Timestamp(nominal));
            let sql = format!(
                "SELECT id, state FROM jobs WHERE schedule = ? AND state IN {LIVE_STATES_SQL} ORDER BY id"
            );
            let live: Vec<(JobId, JobState)> = sqlx::query(AssertSqlSafe(sql))
                .bind(&p.schedule)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?
                .iter()
                .map(|r| {
                    let state: String = r.get(1);
                    state
                        .parse()
                        .map(|s| (r.get(0), s))
                        .map_err(|e| corrupt("job state", e))
                })
                .collect::<Result<_>>()?;
            match overlap_decision(p.overlap, &live) {
                OverlapDecision::Skip => (
                    FiringOutcome::SkippedOverlap,
                    None,
                    FireResult::Skipped(FiringOutcome::SkippedOverlap),
                ),
                OverlapDecision::Coalesce(into) => (
                    FiringOutcome::Coalesced,
                    Some(into),
                    FireResult::Coalesced { into },
                ),
                OverlapDecision::Insert { cancel } => {
                    let grace = duration_millis(store.config.cancel_grace);
                    let mut cancelled = Vec::new();
                    for id in cancel {
                        let sql = format!(
                            "UPDATE jobs SET cancel_requested_at = ?1, \
                               lease_expires_at = min(lease_expires_at, ?1 + ?2) \
                             WHERE id = ?3 AND state = 'running' AND cancel_requested_at IS NULL \
                             RETURNING {JOB_COLUMNS}"
                        );
                        if let Some(row) = sqlx::query(AssertSqlSafe(sql))
                            .bind(now)
                            .bind(grace)
                            .bind(id)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(db_error)?
                        {
                            let job = job_from_row(&row)?;
                            events.push(
                                PendingEvent::for_job(
                                    &job,
                                    EventKind::CancelRequested,
                                    Actor::Engine,
                                )
                                .detail(Some("cancel_previous".into())),
                            );
                            cancelled.push(id.to_string());
                        }
                    }
                    if !cancelled.is_empty() {
                        detail = Some(format!("cancel requested: {}", cancelled.join(",")));
                    }
                    match insert_job(&mut tx, materialize(&store.config, nj, now)).await? {
                        Ok(job) => {
                            events.push(enqueued_event(&job));
                            (p.outcome, Some(job.id), FireResult::Fired(job))
                        }
                        Err(holder) => (
                            FiringOutcome::Coalesced,
                            Some(holder),
                            FireResult::Coalesced { into: holder },
                        ),
                    }
                }
            }
        }
    };
    sqlx::query(
        "INSERT INTO firings (schedule, nominal_at, nominal_until, outcome, job_id, at, detail) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&p.schedule)
    .bind(nominal)
    .bind(nominal_until)
    .bind(outcome.as_str())
    .bind(job_id)
    .bind(now)
    .bind(detail)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    advance(&mut tx, &p.schedule, p.next, nominal, now).await?;
    insert_events(&mut tx, now, &events).await?;
    commit(tx, now, &events).await?;
    if reeve_store::log::enabled() {
        emit_firing(&p.schedule, Timestamp(nominal), outcome, job_id);
    }
    if matches!(result, FireResult::Fired(_)) {
        store.signals.work_changed();
    }
    store.signals.deadlines_changed();
    Ok(result)
}

/// Inserts one job as `enqueue` does (its queue registered); `Err(holder)`
/// when a live job holds its unique key.
async fn insert_job(
    tx: &mut Transaction<'static, Sqlite>,
    job: reeve_core::Job,
) -> Result<std::result::Result<reeve_core::Job, JobId>> {
    sqlx::query("INSERT OR IGNORE INTO queues (name) VALUES (?)")
        .bind(&job.queue)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    if let Some(key) = &job.unique_key {
        let holder: Option<JobId> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE unique_key = ? \
             AND state NOT IN ('succeeded', 'failed', 'cancelled')",
        )
        .bind(key)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)?;
        if let Some(holder) = holder {
            return Ok(Err(holder));
        }
    }
    let ids = insert_jobs(tx, &[&job]).await?;
    Ok(Ok(with_id(job, ids[0])))
}
