//! Schedules and the firing ledger on PostgreSQL (SPEC §7, §11).
//!
//! **Invariants.** [`fire`] is one transaction that first locks the
//! schedule's row (`SELECT … FOR UPDATE`), so daemons racing for the same
//! fire time are serialized on it: the first one checks its expected
//! `next_fire_at`, inserts the job, writes the ledger row and advances the
//! schedule; the others then read the advanced value and change nothing
//! ([`FireResult::LostRace`]). The ledger's `UNIQUE (schedule, nominal_at)`
//! is a second guard. Every instant is the database's clock, read once per
//! transaction, and every write that moves a deadline or makes work
//! claimable `pg_notify`s like the job writes in `write`.

use reeve_core::time::duration_millis;
use reeve_core::{Actor, EventKind, Job, JobId, JobState, Timestamp};
use reeve_schedule::ScheduleStatus;
use reeve_store::schedule::{
    LIVE_STATES_SQL, OverlapDecision, emit_firing, firing_job, overlap_decision,
};
use reeve_store::transition::{PendingEvent, enqueued_event, materialize, with_id};
use reeve_store::{
    FireParams, FireResult, FiringOutcome, FiringRecord, NextFire, Result, SchedulePut,
    ScheduleRecord, StoreError,
};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};

use crate::PostgresStore;
use crate::rows::{JOB_COLUMNS, db_error, job_from_row};
use crate::write::{Notify, Tx, commit, enqueue_unique, insert_jobs, rollback};

const SCHEDULE_COLUMNS: &str = "name, spec, status, paused_reason, next_fire_at, anchor, \
    last_nominal, generic_streak, budget_streak, max_turns_set_at, created_at, updated_at";

const FIRING_COLUMNS: &str = "id, schedule, nominal_at, nominal_until, outcome, job_id, at, detail";

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Database {
        message: format!("unreadable {what} in the database: {detail}"),
        transient: false,
    }
}

/// Decodes column `i`, answering a type mismatch as a corrupt row.
fn col<'r, T>(row: &'r PgRow, i: usize) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(i).map_err(|e| corrupt("row", e))
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

fn schedule_from_row(row: &PgRow) -> Result<ScheduleRecord> {
    let spec: String = col(row, 1)?;
    let status: String = col(row, 2)?;
    Ok(ScheduleRecord {
        name: col(row, 0)?,
        spec: serde_json::from_str(&spec).map_err(|e| corrupt("schedule spec", e))?,
        status: status.parse().map_err(|e| corrupt("schedule status", e))?,
        paused_reason: col(row, 3)?,
        next_fire_at: ts(col(row, 4)?),
        anchor: ts(col(row, 5)?),
        last_nominal: ts(col(row, 6)?),
        generic_streak: col(row, 7)?,
        budget_streak: col(row, 8)?,
        max_turns_set_at: ts(col(row, 9)?),
        created_at: Timestamp(col(row, 10)?),
        updated_at: Timestamp(col(row, 11)?),
    })
}

fn firing_from_row(row: &PgRow) -> Result<FiringRecord> {
    Ok(FiringRecord {
        id: col(row, 0)?,
        schedule: col(row, 1)?,
        nominal_at: Timestamp(col(row, 2)?),
        nominal_until: ts(col(row, 3)?),
        outcome: col(row, 4)?,
        job_id: col(row, 5)?,
        at: Timestamp(col(row, 6)?),
        detail: col(row, 7)?,
    })
}

pub(crate) async fn put_schedule(
    store: &PostgresStore,
    put: SchedulePut,
) -> Result<(ScheduleRecord, bool)> {
    reeve_core::validate::name("name", &put.spec.name)?;
    let spec = serde_json::to_string(&put.spec).expect("a schedule spec always serializes");
    let mut tx = store.begin().await?;
    let now = store.db_now(&mut tx).await?;
    let sql = format!(
        "INSERT INTO schedules (name, spec, status, next_fire_at, anchor, max_turns_set_at, \
           created_at, updated_at) \
         VALUES ($1, $2, coalesce($3::text, 'active'), $4, $5, CASE WHEN $6::boolean THEN $7::bigint END, $7, $7) \
         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, \
           status = coalesce($3::text, schedules.status), \
           paused_reason = CASE WHEN $3::text = 'active' THEN NULL ELSE schedules.paused_reason END, \
           next_fire_at = CASE WHEN $8::boolean THEN excluded.next_fire_at ELSE schedules.next_fire_at END, \
           anchor = CASE WHEN $9::boolean THEN excluded.anchor ELSE schedules.anchor END, \
           max_turns_set_at = CASE WHEN $6::boolean THEN $7::bigint ELSE schedules.max_turns_set_at END, \
           updated_at = $7 \
         RETURNING {SCHEDULE_COLUMNS}, (xmax = 0) AS inserted"
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
    let created: bool = col(&row, 12)?;
    commit(tx, store, now, &[], Notify::DEADLINES).await?;
    Ok((record, created))
}

pub(crate) async fn get_schedule(store: &PostgresStore, name: &str) -> Result<ScheduleRecord> {
    let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = $1");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(name)
        .fetch_optional(&store.pool)
        .await
        .map_err(db_error)?
        .ok_or_else(|| StoreError::ScheduleNotFound(name.to_string()))?;
    schedule_from_row(&row)
}

pub(crate) async fn list_schedules(store: &PostgresStore) -> Result<Vec<ScheduleRecord>> {
    let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name");
    let rows = sqlx::query(AssertSqlSafe(sql))
        .fetch_all(&store.pool)
        .await
        .map_err(db_error)?;
    rows.iter().map(schedule_from_row).collect()
}

pub(crate) async fn delete_schedule(store: &PostgresStore, name: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM schedules WHERE name = $1")
        .bind(name)
        .execute(&store.pool)
        .await
        .map_err(db_error)?;
    Ok(done.rows_affected() > 0)
}

pub(crate) async fn set_schedule_status(
    store: &PostgresStore,
    name: &str,
    status: ScheduleStatus,
    reason: Option<String>,
    next_fire_at: NextFire,
) -> Result<ScheduleRecord> {
    let mut tx = store.begin().await?;
    let now = store.db_now(&mut tx).await?;
    let sql = format!(
        "UPDATE schedules SET status = $1, \
           paused_reason = CASE WHEN $1 = 'paused' THEN $2 END, \
           next_fire_at = CASE WHEN $3 THEN $4 ELSE next_fire_at END, \
           updated_at = $5 \
         WHERE name = $6 RETURNING {SCHEDULE_COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(status.as_str())
        .bind(reason)
        .bind(next_fire_at.is_set())
        .bind(next_fire_at.resolve(None).map(|t| t.0))
        .bind(now)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
    let Some(row) = row else {
        rollback(tx).await?;
        return Err(StoreError::ScheduleNotFound(name.to_string()));
    };
    let record = schedule_from_row(&row)?;
    commit(tx, store, now, &[], Notify::DEADLINES).await?;
    Ok(record)
}

pub(crate) async fn due_schedules(
    store: &PostgresStore,
    limit: u32,
) -> Result<Vec<ScheduleRecord>> {
    let sql = format!(
        "SELECT {SCHEDULE_COLUMNS} FROM schedules \
         WHERE status = 'active' AND next_fire_at <= \
           (floor(extract(epoch from clock_timestamp()) * 1000))::bigint + $1 \
         ORDER BY next_fire_at, name LIMIT $2"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(store.offset())
        .bind(i64::from(limit))
        .fetch_all(&store.pool)
        .await
        .map_err(db_error)?;
    rows.iter().map(schedule_from_row).collect()
}

pub(crate) async fn firings(
    store: &PostgresStore,
    schedule: &str,
    limit: u32,
) -> Result<Vec<FiringRecord>> {
    let sql = format!(
        "SELECT {FIRING_COLUMNS} FROM firings WHERE schedule = $1 \
         ORDER BY nominal_at DESC, id DESC LIMIT $2"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(schedule)
        .bind(i64::from(limit))
        .fetch_all(&store.pool)
        .await
        .map_err(db_error)?;
    rows.iter().map(firing_from_row).collect()
}

async fn in_ledger(tx: &mut Tx, schedule: &str, at: i64) -> Result<bool> {
    Ok(
        sqlx::query("SELECT 1 FROM firings WHERE schedule = $1 AND nominal_at = $2")
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
    tx: &mut Tx,
    schedule: &str,
    next: NextFire,
    nominal: i64,
    now: i64,
) -> Result<()> {
    if let NextFire::Set(next) = next {
        sqlx::query(
            "UPDATE schedules SET next_fire_at = $1, last_nominal = $2, updated_at = $3 WHERE name = $4",
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

pub(crate) async fn fire(store: &PostgresStore, p: FireParams) -> Result<FireResult> {
    let mut tx = store.begin().await?;
    let now = store.db_now(&mut tx).await?;
    let stored: Option<Option<i64>> =
        sqlx::query_scalar("SELECT next_fire_at FROM schedules WHERE name = $1 FOR UPDATE")
            .bind(&p.schedule)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
    let lost = match (stored, p.expected_next) {
        (None, None) => {
            rollback(tx).await?;
            return Err(StoreError::ScheduleNotFound(p.schedule));
        }
        (None, Some(_)) => true,
        (Some(stored), Some(expected)) => stored != Some(expected.0),
        (Some(_), None) => false,
    };
    if lost {
        rollback(tx).await?;
        return Ok(FireResult::LostRace);
    }
    let mut nominal = p.nominal.0;
    if in_ledger(&mut tx, &p.schedule, nominal).await? {
        if p.expected_next.is_some() {
            // Handled already (the ledger is the second guard): no job, but
            // the schedule moves on so it cannot stick on this time.
            advance(&mut tx, &p.schedule, p.next, nominal, now).await?;
            commit(tx, store, now, &[], Notify::DEADLINES).await?;
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
                "SELECT id, state FROM jobs WHERE schedule = $1 AND state IN {LIVE_STATES_SQL} ORDER BY id"
            );
            let live: Vec<(JobId, JobState)> = sqlx::query(AssertSqlSafe(sql))
                .bind(&p.schedule)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?
                .iter()
                .map(|r| {
                    let state: String = col(r, 1)?;
                    state
                        .parse()
                        .map_err(|e| corrupt("job state", e))
                        .and_then(|s| Ok((col(r, 0)?, s)))
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
                            "UPDATE jobs SET cancel_requested_at = $1, \
                               lease_expires_at = least(lease_expires_at, $1 + $2) \
                             WHERE id = $3 AND state = 'running' AND cancel_requested_at IS NULL \
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
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
    let notify = if matches!(result, FireResult::Fired(_)) {
        Notify::BOTH
    } else {
        Notify::DEADLINES
    };
    commit(tx, store, now, &events, notify).await?;
    if reeve_store::log::enabled() {
        emit_firing(&p.schedule, Timestamp(nominal), outcome, job_id);
    }
    Ok(result)
}

/// Inserts one job as `enqueue` does (its queue registered); `Err(holder)`
/// when a live job holds its unique key.
async fn insert_job(tx: &mut Tx, job: Job) -> Result<std::result::Result<Job, JobId>> {
    sqlx::query("INSERT INTO queues (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(&job.queue)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    if job.unique_key.is_some() {
        let (job, created) = enqueue_unique(tx, job).await?;
        return Ok(if created { Ok(job) } else { Err(job.id) });
    }
    let ids = insert_jobs(tx, &[&job], false).await?;
    let id = *ids.first().ok_or_else(|| StoreError::Database {
        message: "the job insert returned no id".into(),
        transient: false,
    })?;
    Ok(Ok(with_id(job, id)))
}
