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
//!
//! *Lock order: schedule rows (in name order), then job rows.* [`fire`]
//! holds its schedule's row while it inserts a job (which may wait on a
//! unique key's holder) or requests a cancel of a running one, and the
//! writes that end jobs (finish, cancel, reap) settle them into their
//! schedules' rows ([`settle_jobs`]); those writes therefore lock the
//! schedules of their jobs first ([`lock_schedules_of`]), so the two never
//! wait on each other in a cycle. Those writes read the clock only once
//! their job rows are locked, so a write that waited for a racing one is
//! stamped after it.
//! Settlements of one schedule are serialized on its row (`FOR UPDATE`
//! before its streaks are read), as are deferrals ([`defer_firing`]).
//! Raises and clears of pressure signals are serialized by an advisory
//! lock, so clearing the last two signals at once still releases the
//! deferred fire times.

use reeve_core::time::duration_millis;
use reeve_core::{Actor, EventKind, Job, JobId, JobState, Timestamp};
use reeve_schedule::ScheduleStatus;
use reeve_store::operator::{CapacityFull, full_cap, median_ms};
use reeve_store::schedule::{
    LIVE_STATES_SQL, OverlapDecision, audit_for_job, defer_until, emit_firing, firing_job,
    overlap_decision, skipped_range_outcome,
};
use reeve_store::settle::{Settlement, audit_of, ledger_end, settle, settles};
use reeve_store::transition::{PendingEvent, enqueued_event, materialize, with_id};
use reeve_store::{
    AuditRecord, DeferParams, DeferResult, FireParams, FireResult, FiringOutcome, FiringQuery,
    FiringRecord, NewAudit, NextFire, Pressure, Result, SchedulePut, ScheduleRecord, StoreError,
    TypicalDurations,
};
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgRow;

use crate::PostgresStore;
use crate::rows::{JOB_COLUMNS, col, corrupt, db_error, job_from_row, ts};
use crate::write::{Notify, Tx, commit, enqueue_unique, insert_jobs, rollback};

const SCHEDULE_COLUMNS: &str = "name, spec, status, paused_reason, next_fire_at, anchor, \
    last_nominal, generic_streak, budget_streak, max_turns_set_at, created_at, updated_at, \
    defer_until, deferrals, probe_job";

/// The index of the first column after [`SCHEDULE_COLUMNS`] in a row that
/// selects more.
const SCHEDULE_COLUMN_COUNT: usize = 15;

const FIRING_COLUMNS: &str = "id, schedule, nominal_at, nominal_until, outcome, job_id, at, detail, \
    claimed_at, slot_wait_ms, running_at_claim, finished_at, state, failure_reason, duration_ms, \
    turns, max_turns, deferrals";

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
        defer_until: ts(col(row, 12)?),
        deferrals: col(row, 13)?,
        probe_job: col(row, 14)?,
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
        claimed_at: ts(col(row, 8)?),
        slot_wait_ms: col(row, 9)?,
        running_at_claim: col(row, 10)?,
        finished_at: ts(col(row, 11)?),
        state: col(row, 12)?,
        failure_reason: col(row, 13)?,
        duration_ms: col(row, 14)?,
        turns: col(row, 15)?,
        max_turns: col(row, 16)?,
        deferrals: col(row, 17)?,
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
           defer_until = CASE WHEN $8::boolean THEN NULL ELSE schedules.defer_until END, \
           deferrals = CASE WHEN $8::boolean THEN 0 ELSE schedules.deferrals END, \
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
    let created: bool = col(&row, SCHEDULE_COLUMN_COUNT)?;
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
           defer_until = CASE WHEN $3 THEN NULL ELSE defer_until END, \
           deferrals = CASE WHEN $3 THEN 0 ELSE deferrals END, \
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
        "WITH t AS (SELECT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint + $1 AS now) \
         SELECT {SCHEDULE_COLUMNS} FROM schedules, t \
         WHERE status = 'active' AND next_fire_at <= t.now \
           AND (defer_until IS NULL OR defer_until <= t.now) \
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
    query: FiringQuery,
) -> Result<Vec<FiringRecord>> {
    let sql = format!(
        "SELECT {FIRING_COLUMNS} FROM firings \
         WHERE schedule = $1 AND ($2::bigint IS NULL OR nominal_at <= $2) \
         ORDER BY nominal_at DESC, id DESC LIMIT $3"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(schedule)
        .bind(query.at_or_before.map(|t| t.0))
        .bind(i64::from(query.limit))
        .fetch_all(&store.pool)
        .await
        .map_err(db_error)?;
    rows.iter().map(firing_from_row).collect()
}

/// Whether the ledger already holds a row for this nominal time. For a
/// cadence firing a `deferred` row is its own placeholder, not a handled
/// firing; a manual run must not take that nominal time either.
async fn in_ledger(tx: &mut Tx, schedule: &str, at: i64, cadence: bool) -> Result<bool> {
    Ok(sqlx::query(
        "SELECT 1 FROM firings WHERE schedule = $1 AND nominal_at = $2 \
           AND (outcome <> 'deferred' OR NOT $3::boolean)",
    )
    .bind(schedule)
    .bind(at)
    .bind(cadence)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db_error)?
    .is_some())
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
            "UPDATE schedules SET next_fire_at = $1, last_nominal = $2, updated_at = $3, \
               defer_until = NULL, deferrals = 0 WHERE name = $4",
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
    let stored: Option<(Option<i64>, i32)> =
        sqlx::query_as("SELECT next_fire_at, deferrals FROM schedules WHERE name = $1 FOR UPDATE")
            .bind(&p.schedule)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
    let deferrals = stored.map_or(0, |(_, d)| d);
    let stored = stored.map(|(next, _)| next);
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
    if in_ledger(&mut tx, &p.schedule, nominal, p.expected_next.is_some()).await? {
        if p.expected_next.is_some() {
            // Handled already (the ledger is the second guard): no job, but
            // the schedule moves on so it cannot stick on this time.
            advance(&mut tx, &p.schedule, p.next, nominal, now).await?;
            commit(tx, store, now, &[], Notify::DEADLINES).await?;
            return Ok(FireResult::LostRace);
        }
        nominal = nominal.max(now);
        while in_ledger(&mut tx, &p.schedule, nominal, false).await? {
            nominal += 1;
        }
    }

    if p.require_capacity
        && let Some(job) = &p.job
        && let Some(full) = capacity_full(&mut tx, &job.queue).await?
    {
        rollback(tx).await?;
        return Ok(FireResult::CapacityFull(full));
    }

    let mut events = Vec::new();
    let mut nominal_until = None;
    let mut detail = None;
    let (outcome, job_id, result) = match p.job {
        None => {
            let outcome = match p.skipped_until {
                Some(until) => {
                    nominal_until = Some(until.0);
                    skipped_range_outcome(p.outcome)
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
    // A deferred placeholder row becomes this firing's row.
    sqlx::query(
        "DELETE FROM firings WHERE schedule = $1 AND nominal_at = $2 AND outcome = 'deferred'",
    )
    .bind(&p.schedule)
    .bind(nominal)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    sqlx::query(
        "INSERT INTO firings (schedule, nominal_at, nominal_until, outcome, job_id, at, detail, \
           max_turns, deferrals) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&p.schedule)
    .bind(nominal)
    .bind(nominal_until)
    .bind(outcome.as_str())
    .bind(job_id)
    .bind(now)
    .bind(detail)
    .bind(match &result {
        FireResult::Fired(job) => job.max_turns,
        _ => None,
    })
    .bind(if p.expected_next.is_some() {
        deferrals
    } else {
        0
    })
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    if let FireResult::Fired(job) = &result {
        if p.probe {
            sqlx::query("UPDATE schedules SET probe_job = $1 WHERE name = $2")
                .bind(job.id)
                .bind(&p.schedule)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        if let Some(audit) = p.audit.clone() {
            insert_audit(&mut tx, now, audit_for_job(audit, job)).await?;
        }
    }
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

/// The first full cap a new job in `queue` would meet (global first), read
/// inside the firing's transaction.
async fn capacity_full(tx: &mut Tx, queue: &str) -> Result<Option<CapacityFull>> {
    let row = sqlx::query(
        "SELECT (SELECT value FROM settings WHERE key = 'global_concurrency'), \
                (SELECT COUNT(*) FROM jobs WHERE state = 'running'), \
                (SELECT COUNT(*) FROM jobs WHERE state = 'running' AND queue = $1), \
                (SELECT concurrency FROM queues WHERE name = $1), \
                coalesce((SELECT paused FROM queues WHERE name = $1), FALSE)",
    )
    .bind(queue)
    .fetch_one(&mut **tx)
    .await
    .map_err(db_error)?;
    let global: Option<String> = col(&row, 0)?;
    Ok(full_cap(
        global.and_then(|v| v.parse().ok()),
        col::<i64>(&row, 1)?.max(0) as u64,
        queue,
        col::<Option<i64>>(&row, 3)?.map(|c| c.clamp(0, i64::from(u32::MAX)) as u32),
        col(&row, 4)?,
        col::<i64>(&row, 2)?.max(0) as u64,
    ))
}

async fn insert_audit(tx: &mut Tx, now: i64, audit: NewAudit) -> Result<AuditRecord> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO audit (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5) \
         RETURNING id",
    )
    .bind(now)
    .bind(&audit.actor)
    .bind(&audit.action)
    .bind(&audit.target)
    .bind(audit.detail.to_string())
    .fetch_one(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(AuditRecord {
        id,
        at: Timestamp(now),
        actor: audit.actor,
        action: audit.action,
        target: audit.target,
        detail: audit.detail,
    })
}

pub(crate) async fn record_audit(store: &PostgresStore, audit: NewAudit) -> Result<AuditRecord> {
    let mut tx = store.begin().await?;
    let now = store.db_now(&mut tx).await?;
    let record = insert_audit(&mut tx, now, audit).await?;
    commit(tx, store, now, &[], Notify::NONE).await?;
    Ok(record)
}

pub(crate) async fn list_audit(store: &PostgresStore, limit: u32) -> Result<Vec<AuditRecord>> {
    let rows = sqlx::query(
        "SELECT id, at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT $1",
    )
    .bind(i64::from(limit))
    .fetch_all(&store.pool)
    .await
    .map_err(db_error)?;
    rows.iter()
        .map(|r| {
            let detail: String = col(r, 5)?;
            Ok(AuditRecord {
                id: col(r, 0)?,
                at: Timestamp(col(r, 1)?),
                actor: col(r, 2)?,
                action: col(r, 3)?,
                target: col(r, 4)?,
                detail: serde_json::from_str(&detail).map_err(|e| corrupt("audit detail", e))?,
            })
        })
        .collect()
}

pub(crate) async fn defer_firing(store: &PostgresStore, p: DeferParams) -> Result<DeferResult> {
    let mut tx = store.begin().await?;
    let now = store.db_now(&mut tx).await?;
    let Some(until) = defer_until(Timestamp(now), p.expected_next, p.delay, p.max_defer) else {
        rollback(tx).await?;
        return Ok(DeferResult::FireNow);
    };
    // The schedule's row lock first (as `fire` takes it): a firing of this
    // time and this deferral are serialized, and the one that comes second
    // sees what the first did.
    let current: Option<i32> = sqlx::query_scalar(
        "SELECT deferrals FROM schedules \
         WHERE name = $1 AND next_fire_at = $2 AND status = 'active' FOR UPDATE",
    )
    .bind(&p.schedule)
    .bind(p.expected_next.0)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_error)?;
    let Some(current) = current else {
        rollback(tx).await?;
        return Ok(DeferResult::LostRace);
    };
    // The pressure may have been cleared since the engine looked.
    let pressed: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pressure WHERE expires_at > $1)")
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
    if !pressed {
        rollback(tx).await?;
        return Ok(DeferResult::FireNow);
    }
    let deferrals = current.saturating_add(1);
    sqlx::query(
        "UPDATE schedules SET defer_until = $1, deferrals = $2, updated_at = $3 WHERE name = $4",
    )
    .bind(until.0)
    .bind(deferrals)
    .bind(now)
    .bind(&p.schedule)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    sqlx::query(
        "INSERT INTO firings (schedule, nominal_at, outcome, at, detail, deferrals) \
         VALUES ($1, $2, 'deferred', $3, $4, $5) \
         ON CONFLICT (schedule, nominal_at) DO UPDATE \
           SET at = excluded.at, detail = excluded.detail, deferrals = excluded.deferrals \
           WHERE firings.outcome = 'deferred'",
    )
    .bind(&p.schedule)
    .bind(p.expected_next.0)
    .bind(now)
    .bind(&p.detail)
    .bind(deferrals)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    commit(tx, store, now, &[], Notify::DEADLINES).await?;
    if reeve_store::log::enabled() {
        emit_firing(&p.schedule, p.expected_next, FiringOutcome::Deferred, None);
    }
    Ok(DeferResult::Deferred { until, deferrals })
}

pub(crate) async fn prune_firings(
    store: &PostgresStore,
    older_than: std::time::Duration,
    batch: u32,
) -> Result<u64> {
    let mut tx = store.begin().await?;
    let cutoff = store
        .db_now(&mut tx)
        .await?
        .saturating_sub(duration_millis(older_than));
    // SKIP LOCKED: concurrent pruners take different rows.
    let done = sqlx::query(
        "DELETE FROM firings WHERE id IN ( \
           SELECT id FROM firings WHERE at < $1 ORDER BY at LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(cutoff)
    .bind(i64::from(batch))
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(done.rows_affected())
}

/// Runs whose median is a typical duration.
const TYPICAL_OF: i64 = 20;

/// Rows of `(key, duration ms)` into each key's median duration.
fn medians_into(
    rows: &[PgRow],
    into: &mut std::collections::HashMap<String, std::time::Duration>,
) -> Result<()> {
    let mut observed: std::collections::HashMap<String, Vec<i64>> = Default::default();
    for r in rows {
        observed
            .entry(col(r, 0)?)
            .or_default()
            .push(col::<i64>(r, 1)?);
    }
    for (key, ms) in observed {
        if let Some(ms) = median_ms(ms) {
            into.insert(key, std::time::Duration::from_millis(ms.max(0) as u64));
        }
    }
    Ok(())
}

pub(crate) async fn typical_durations(
    store: &PostgresStore,
    schedules: &[String],
    kinds: &[String],
) -> Result<TypicalDurations> {
    let mut out = TypicalDurations::default();
    if !schedules.is_empty() {
        // Each schedule's newest succeeded runs, by its ledger's
        // (schedule, nominal_at) index.
        let rows = sqlx::query(
            "SELECT s.name, f.duration_ms FROM unnest($1::text[]) AS s(name) \
             CROSS JOIN LATERAL ( \
               SELECT duration_ms FROM firings \
               WHERE schedule = s.name AND duration_ms IS NOT NULL AND state = 'succeeded' \
               ORDER BY nominal_at DESC LIMIT $2) AS f",
        )
        .bind(schedules)
        .bind(TYPICAL_OF)
        .fetch_all(&store.pool)
        .await
        .map_err(db_error)?;
        medians_into(&rows, &mut out.by_schedule)?;
    }
    if !kinds.is_empty() {
        // The newest finished jobs first (by the finished_at index); bounded
        // so a kind that never succeeded cannot scan the whole table.
        let rows = sqlx::query(
            "WITH recent AS MATERIALIZED ( \
               SELECT kind, state, finished_at, claimed_at FROM jobs \
               WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 5000) \
             SELECT k.kind, d.ms FROM unnest($1::text[]) AS k(kind) \
             CROSS JOIN LATERAL ( \
               SELECT finished_at - claimed_at AS ms FROM recent \
               WHERE recent.kind = k.kind AND state = 'succeeded' AND claimed_at IS NOT NULL \
               ORDER BY finished_at DESC LIMIT $2) AS d",
        )
        .bind(kinds)
        .bind(TYPICAL_OF)
        .fetch_all(&store.pool)
        .await
        .map_err(db_error)?;
        medians_into(&rows, &mut out.by_kind)?;
    }
    Ok(out)
}

/// Serializes the writes of pressure signals, so that two sources cleared
/// at once cannot each see the other still active and both leave deferred
/// fire times deferred.
async fn lock_pressure(store: &PostgresStore, tx: &mut Tx) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(store.pressure_lock_key)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    Ok(())
}

pub(crate) async fn raise_pressure(
    store: &PostgresStore,
    source: &str,
    ttl: std::time::Duration,
) -> Result<Pressure> {
    let mut tx = store.begin().await?;
    lock_pressure(store, &mut tx).await?;
    let now = store.db_now(&mut tx).await?;
    let expires = now.saturating_add(duration_millis(ttl));
    sqlx::query("DELETE FROM pressure WHERE expires_at <= $1")
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    let raised: i64 = sqlx::query_scalar(
        "INSERT INTO pressure (source, raised_at, expires_at) VALUES ($1, $2, $3) \
         ON CONFLICT (source) DO UPDATE SET expires_at = excluded.expires_at \
         RETURNING raised_at",
    )
    .bind(source)
    .bind(now)
    .bind(expires)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    commit(tx, store, now, &[], Notify::NONE).await?;
    Ok(Pressure {
        source: source.to_string(),
        raised_at: Timestamp(raised),
        expires_at: Timestamp(expires),
    })
}

pub(crate) async fn clear_pressure(store: &PostgresStore, source: &str) -> Result<bool> {
    let mut tx = store.begin().await?;
    lock_pressure(store, &mut tx).await?;
    let now = store.db_now(&mut tx).await?;
    let gone = sqlx::query("DELETE FROM pressure WHERE source = $1 AND expires_at > $2")
        .bind(source)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected()
        > 0;
    // The rows in name order first, as every multi-schedule locker takes
    // them (see `settle_jobs`), then the update.
    let released: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM schedules WHERE defer_until IS NOT NULL \
           AND NOT EXISTS (SELECT 1 FROM pressure WHERE expires_at > $1) \
         ORDER BY name FOR UPDATE",
    )
    .bind(now)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    if !released.is_empty() {
        sqlx::query(
            "UPDATE schedules SET defer_until = NULL \
             WHERE name = ANY($1::text[]) AND defer_until IS NOT NULL",
        )
        .bind(&released)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    }
    commit(tx, store, now, &[], Notify::DEADLINES).await?;
    Ok(gone)
}

pub(crate) async fn list_pressure(store: &PostgresStore) -> Result<Vec<Pressure>> {
    let rows = sqlx::query(
        "SELECT source, raised_at, expires_at FROM pressure \
         WHERE expires_at > (floor(extract(epoch from clock_timestamp()) * 1000))::bigint + $1 \
         ORDER BY source",
    )
    .bind(store.offset())
    .fetch_all(&store.pool)
    .await
    .map_err(db_error)?;
    rows.iter()
        .map(|r| {
            Ok(Pressure {
                source: col(r, 0)?,
                raised_at: Timestamp(col(r, 1)?),
                expires_at: Timestamp(col(r, 2)?),
            })
        })
        .collect()
}

/// Locks the schedule rows of the jobs `ids`, in name order. The writes
/// that can end a scheduled job (finish, cancel, reap) call it *before*
/// they lock any job, so their lock order (schedule, then job) is the one
/// [`fire`] uses (it holds the schedule's row while it inserts a job or
/// requests a cancel of a running one): no deadlock between them.
pub(crate) async fn lock_schedules_of(tx: &mut Tx, ids: &[JobId]) -> Result<()> {
    sqlx::query(
        "SELECT name FROM schedules \
         WHERE name IN (SELECT schedule FROM jobs WHERE id = ANY($1::bigint[]) AND schedule IS NOT NULL) \
         ORDER BY name FOR UPDATE",
    )
    .bind(ids)
    .execute(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Forced firings' jobs not yet claimed that this claim may take, locked
/// (`SKIP LOCKED`), at most `limit`, oldest first: they are claimed first
/// and skip the cap check at this, their first, claim (SPEC §3). Paused
/// queues stay paused. Filtered in SQL (queues, kinds and the claimer's
/// labels), so no row this claim will not take is locked. One probe of the
/// `firings_forced` index when there are none.
pub(crate) async fn forced_candidates(
    tx: &mut Tx,
    queues: Option<&[String]>,
    kinds: &reeve_store::KindFilter,
    labels: &[String],
    limit: u32,
) -> Result<Vec<(JobId, String)>> {
    use reeve_store::KindFilter;
    let kind_clause = match kinds {
        KindFilter::Any => "",
        KindFilter::Only { kinds, commands } => match (kinds.is_empty(), commands) {
            (true, true) => " AND j.command IS NOT NULL",
            (true, false) => return Ok(Vec::new()),
            (false, true) => " AND (j.kind = ANY($3::text[]) OR j.command IS NOT NULL)",
            (false, false) => " AND j.kind = ANY($3::text[])",
        },
    };
    let kinds_bound = matches!(kinds, KindFilter::Only { kinds, .. } if !kinds.is_empty());
    let placement_clause = if labels.is_empty() {
        " AND j.requires IS NULL".to_string()
    } else {
        let n = if kinds_bound { 4 } else { 3 };
        format!(" AND (j.requires IS NULL OR j.requires::jsonb <@ ${n}::jsonb)")
    };
    let sql = format!(
        "SELECT j.id, j.queue FROM firings f JOIN jobs j ON j.id = f.job_id \
         WHERE f.outcome = 'forced' AND f.claimed_at IS NULL AND f.finished_at IS NULL \
           AND j.state = 'available' \
           AND NOT coalesce((SELECT q.paused FROM queues q WHERE q.name = j.queue), FALSE) \
           AND ($1::text[] IS NULL OR j.queue = ANY($1::text[])){kind_clause}{placement_clause} \
         ORDER BY j.id LIMIT $2 \
         FOR UPDATE OF j SKIP LOCKED"
    );
    let mut q = sqlx::query(AssertSqlSafe(sql))
        .bind(queues)
        .bind(i64::from(limit));
    if let KindFilter::Only { kinds, .. } = kinds
        && !kinds.is_empty()
    {
        q = q.bind(kinds);
    }
    if !labels.is_empty() {
        q = q.bind(reeve_store::fleet::list_json(labels));
    }
    let mut out: Vec<(JobId, String)> = Vec::new();
    for r in q.fetch_all(&mut **tx).await.map_err(db_error)? {
        let id: JobId = col(&r, 0)?;
        if !out.iter().any(|(o, _)| *o == id) {
            out.push((id, col(&r, 1)?));
        }
    }
    Ok(out)
}

/// Records the first claim of scheduled jobs in their ledger rows: when, the
/// slot wait, and how many jobs were running right after it. Nothing (not a
/// statement) for a claim of jobs without schedules.
pub(crate) async fn record_claims(tx: &mut Tx, jobs: &[Job], now: i64) -> Result<()> {
    let scheduled: Vec<&Job> = jobs.iter().filter(|j| j.schedule.is_some()).collect();
    if scheduled.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE firings SET claimed_at = $1, slot_wait_ms = greatest(0, $1 - t.available_at), \
           running_at_claim = (SELECT COUNT(*) FROM jobs WHERE state = 'running') \
         FROM unnest($2::bigint[], $3::bigint[]) AS t(job_id, available_at) \
         WHERE firings.job_id = t.job_id AND firings.claimed_at IS NULL \
           AND firings.outcome <> 'coalesced'",
    )
    .bind(now)
    .bind(scheduled.iter().map(|j| j.id).collect::<Vec<_>>())
    .bind(
        scheduled
            .iter()
            .map(|j| j.available_at.0)
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Settles the scheduled jobs among `jobs` that just became terminal, in the
/// caller's transaction: their ledger rows, then their schedules' streaks,
/// auto-pause and probe (see `reeve_store::settle`). The schedules' rows are
/// locked (`FOR UPDATE`, in name order) before their streaks are read, so
/// concurrent settlements of one schedule are serialized. Returns what
/// changed, for the log lines after the commit.
pub(crate) async fn settle_jobs(
    store: &PostgresStore,
    tx: &mut Tx,
    jobs: &[Job],
    now: i64,
) -> Result<Vec<(String, Settlement)>> {
    let ending: Vec<&Job> = jobs.iter().filter(|j| settles(j)).collect();
    if ending.is_empty() {
        return Ok(Vec::new());
    }
    let mut names: Vec<&str> = ending
        .iter()
        .filter_map(|j| j.schedule.as_deref())
        .collect();
    names.sort_unstable();
    names.dedup();
    let sql = format!(
        "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = ANY($1::text[]) \
         ORDER BY name FOR UPDATE"
    );
    let mut records: std::collections::HashMap<String, ScheduleRecord> =
        sqlx::query(AssertSqlSafe(sql))
            .bind(&names)
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?
            .iter()
            .map(|r| schedule_from_row(r).map(|s| (s.name.clone(), s)))
            .collect::<Result<_>>()?;
    let mut out = Vec::new();
    for job in ending {
        let schedule = job.schedule.as_deref().expect("settles() checked it");
        let end = ledger_end(job, now);
        let record = records.get_mut(schedule);
        let settlement = record
            .as_deref()
            .map(|r| settle(r, job, &store.config.streaks, Timestamp(now)));
        sqlx::query(
            "UPDATE firings SET finished_at = $1, duration_ms = $2, turns = $3, max_turns = $4, \
               state = $5, failure_reason = $6, \
               detail = CASE WHEN $7::text IS NULL THEN detail \
                             WHEN detail IS NULL THEN $7::text ELSE detail || '; ' || $7::text END \
             WHERE job_id = $8 AND outcome <> 'coalesced'",
        )
        .bind(end.finished_at)
        .bind(end.duration_ms)
        .bind(end.turns)
        .bind(end.max_turns)
        .bind(end.state)
        .bind(end.failure_reason)
        .bind(settlement.as_ref().and_then(|s| s.note.as_deref()))
        .bind(job.id)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
        let (Some(record), Some(s)) = (record, settlement) else {
            continue;
        };
        if !s.changes(record) {
            continue;
        }
        sqlx::query(
            "UPDATE schedules SET generic_streak = $1, budget_streak = $2, status = $3, \
               paused_reason = $4, next_fire_at = $5, probe_job = $6, updated_at = $7 \
             WHERE name = $8",
        )
        .bind(s.generic_streak)
        .bind(s.budget_streak)
        .bind(s.status.as_str())
        .bind(s.paused_reason.as_deref())
        .bind(s.next_fire_at.map(|t| t.0))
        .bind(s.probe_job)
        .bind(now)
        .bind(schedule)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
        // What this transaction now holds, for the next job of the schedule.
        record.generic_streak = s.generic_streak;
        record.budget_streak = s.budget_streak;
        record.status = s.status;
        record.paused_reason = s.paused_reason.clone();
        record.next_fire_at = s.next_fire_at;
        record.probe_job = s.probe_job;
        record.updated_at = Timestamp(now);
        if let Some(audit) = audit_of(schedule, job, &s) {
            insert_audit(tx, now, audit).await?;
        }
        out.push((schedule.to_string(), s));
    }
    Ok(out)
}

/// The log lines of committed settlements (auto-pauses, probe ends).
pub(crate) fn emit_settled(settled: &[(String, Settlement)]) {
    for (schedule, s) in settled {
        reeve_store::settle::emit_settlement(schedule, s);
    }
}
