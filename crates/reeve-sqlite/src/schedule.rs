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
use reeve_store::operator::{CapacityFull, full_cap, median_ms};
use reeve_store::schedule::{
    LIVE_STATES_SQL, OverlapDecision, audit_for_job, defer_until, emit_firing, firing_job,
    overlap_decision, skipped_range_outcome,
};
use reeve_store::settle::{Settlement, ledger_end, settle, settles};
use reeve_store::transition::{PendingEvent, enqueued_event, materialize, with_id};
use reeve_store::{
    AuditRecord, DeferParams, DeferResult, FireParams, FireResult, FiringOutcome, FiringQuery,
    FiringRecord, NewAudit, NextFire, Pressure, Result, SchedulePut, ScheduleRecord, StoreError,
    TypicalDurations,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};

use crate::SqliteStore;
use crate::rows::{JOB_COLUMNS, corrupt, db_error, job_from_row, ts};
use crate::write::{commit, insert_events, insert_jobs};

const SCHEDULE_COLUMNS: &str = "name, spec, status, paused_reason, next_fire_at, anchor, \
    last_nominal, generic_streak, budget_streak, max_turns_set_at, created_at, updated_at, \
    defer_until, deferrals, probe_job";

const FIRING_COLUMNS: &str = "id, schedule, nominal_at, nominal_until, outcome, job_id, at, detail, \
    claimed_at, slot_wait_ms, running_at_claim, finished_at, state, failure_reason, duration_ms, \
    turns, max_turns, deferrals";

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
        defer_until: ts(row.get(12)),
        deferrals: row.get::<i64, _>(13) as i32,
        probe_job: row.get(14),
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
        claimed_at: ts(row.get(8)),
        slot_wait_ms: row.get(9),
        running_at_claim: row.get(10),
        finished_at: ts(row.get(11)),
        state: row.get(12),
        failure_reason: row.get(13),
        duration_ms: row.get(14),
        turns: row.get(15),
        max_turns: row.get(16),
        deferrals: row.get::<i64, _>(17) as i32,
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
           defer_until = CASE WHEN ?8 THEN NULL ELSE defer_until END, \
           deferrals = CASE WHEN ?8 THEN 0 ELSE deferrals END, \
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
           defer_until = CASE WHEN ?3 THEN NULL ELSE defer_until END, \
           deferrals = CASE WHEN ?3 THEN 0 ELSE deferrals END, \
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
         WHERE status = 'active' AND next_fire_at <= ?1 \
           AND (defer_until IS NULL OR defer_until <= ?1) \
         ORDER BY next_fire_at, name LIMIT ?2"
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
    query: FiringQuery,
) -> Result<Vec<FiringRecord>> {
    let sql = format!(
        "SELECT {FIRING_COLUMNS} FROM firings WHERE schedule = ?1 AND (?2 IS NULL OR nominal_at <= ?2) \
         ORDER BY nominal_at DESC, id DESC LIMIT ?3"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(schedule)
        .bind(query.at_or_before.map(|t| t.0))
        .bind(i64::from(query.limit))
        .fetch_all(&store.reader)
        .await
        .map_err(db_error)?;
    Ok(rows.iter().map(firing_from_row).collect())
}

/// Whether the ledger already holds a row for this nominal time. For a
/// cadence firing a `deferred` row is its own placeholder, not a handled
/// firing; a manual run must not take that nominal time either.
async fn in_ledger(
    tx: &mut Transaction<'static, Sqlite>,
    schedule: &str,
    at: i64,
    cadence: bool,
) -> Result<bool> {
    Ok(sqlx::query(
        "SELECT 1 FROM firings WHERE schedule = ?1 AND nominal_at = ?2 \
           AND (outcome <> 'deferred' OR NOT ?3)",
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
    tx: &mut Transaction<'static, Sqlite>,
    schedule: &str,
    next: NextFire,
    nominal: i64,
    now: i64,
) -> Result<()> {
    if let NextFire::Set(next) = next {
        sqlx::query(
            "UPDATE schedules SET next_fire_at = ?, last_nominal = ?, updated_at = ?, \
               defer_until = NULL, deferrals = 0 WHERE name = ?",
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
    let stored: Option<(Option<i64>, i64)> =
        sqlx::query_as("SELECT next_fire_at, deferrals FROM schedules WHERE name = ?")
            .bind(&p.schedule)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
    let deferrals = stored.map_or(0, |(_, d)| d);
    let stored = stored.map(|(next, _)| next);
    match (stored, p.expected_next) {
        (None, None) => return Err(StoreError::ScheduleNotFound(p.schedule)),
        (None, Some(_)) => return Ok(FireResult::LostRace),
        (Some(stored), Some(expected)) if stored != Some(expected.0) => {
            return Ok(FireResult::LostRace);
        }
        _ => {}
    }
    let mut nominal = p.nominal.0;
    if in_ledger(&mut tx, &p.schedule, nominal, p.expected_next.is_some()).await? {
        if p.expected_next.is_some() {
            // Handled already (the ledger is the second guard): no job, but
            // the schedule moves on so it cannot stick on this time.
            advance(&mut tx, &p.schedule, p.next, nominal, now).await?;
            commit(tx, now, &[]).await?;
            store.signals.deadlines_changed();
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
    // A deferred placeholder row becomes this firing's row.
    sqlx::query(
        "DELETE FROM firings WHERE schedule = ? AND nominal_at = ? AND outcome = 'deferred'",
    )
    .bind(&p.schedule)
    .bind(nominal)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    sqlx::query(
        "INSERT INTO firings (schedule, nominal_at, nominal_until, outcome, job_id, at, detail, \
           max_turns, deferrals) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            sqlx::query("UPDATE schedules SET probe_job = ? WHERE name = ?")
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

/// The first full cap a new job in `queue` would meet (global first), read
/// inside the caller's write transaction.
async fn capacity_full(
    tx: &mut Transaction<'static, Sqlite>,
    queue: &str,
) -> Result<Option<CapacityFull>> {
    let global: Option<u32> = sqlx::query_scalar::<_, String>(
        "SELECT value FROM settings WHERE key = 'global_concurrency'",
    )
    .fetch_optional(&mut **tx)
    .await
    .map_err(db_error)?
    .and_then(|v| v.parse().ok());
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM jobs WHERE state = 'running'), \
                (SELECT COUNT(*) FROM jobs WHERE state = 'running' AND queue = ?1), \
                (SELECT concurrency FROM queues WHERE name = ?1), \
                coalesce((SELECT paused FROM queues WHERE name = ?1), 0)",
    )
    .bind(queue)
    .fetch_one(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(full_cap(
        global,
        row.get::<i64, _>(0) as u64,
        queue,
        row.get::<Option<i64>, _>(2).map(|c| c.max(0) as u32),
        row.get::<i64, _>(3) != 0,
        row.get::<i64, _>(1) as u64,
    ))
}

async fn insert_audit(
    tx: &mut Transaction<'static, Sqlite>,
    now: i64,
    audit: NewAudit,
) -> Result<AuditRecord> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?) RETURNING id",
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

pub(crate) async fn record_audit(store: &SqliteStore, audit: NewAudit) -> Result<AuditRecord> {
    let mut tx = store.begin().await?;
    let now = store.now_ms();
    let record = insert_audit(&mut tx, now, audit).await?;
    commit(tx, now, &[]).await?;
    Ok(record)
}

pub(crate) async fn list_audit(store: &SqliteStore, limit: u32) -> Result<Vec<AuditRecord>> {
    let rows = sqlx::query(
        "SELECT id, at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?",
    )
    .bind(i64::from(limit))
    .fetch_all(&store.reader)
    .await
    .map_err(db_error)?;
    rows.iter()
        .map(|r| {
            let detail: String = r.get(5);
            Ok(AuditRecord {
                id: r.get(0),
                at: Timestamp(r.get(1)),
                actor: r.get(2),
                action: r.get(3),
                target: r.get(4),
                detail: serde_json::from_str(&detail).map_err(|e| corrupt("audit detail", e))?,
            })
        })
        .collect()
}

pub(crate) async fn defer_firing(store: &SqliteStore, p: DeferParams) -> Result<DeferResult> {
    let mut tx = store.begin().await?;
    let now = store.now_ms();
    let Some(until) = defer_until(Timestamp(now), p.expected_next, p.delay, p.max_defer) else {
        return Ok(DeferResult::FireNow);
    };
    // The pressure may have been cleared since the engine looked.
    let pressed: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pressure WHERE expires_at > ?)")
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
    if !pressed {
        return Ok(DeferResult::FireNow);
    }
    let deferrals: Option<i64> = sqlx::query_scalar(
        "UPDATE schedules SET defer_until = ?1, deferrals = deferrals + 1, updated_at = ?2 \
         WHERE name = ?3 AND next_fire_at = ?4 AND status = 'active' RETURNING deferrals",
    )
    .bind(until.0)
    .bind(now)
    .bind(&p.schedule)
    .bind(p.expected_next.0)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_error)?;
    let Some(deferrals) = deferrals else {
        return Ok(DeferResult::LostRace);
    };
    sqlx::query(
        "INSERT INTO firings (schedule, nominal_at, outcome, at, detail, deferrals) \
         VALUES (?1, ?2, 'deferred', ?3, ?4, ?5) \
         ON CONFLICT (schedule, nominal_at) DO UPDATE SET at = ?3, detail = ?4, deferrals = ?5 \
         WHERE outcome = 'deferred'",
    )
    .bind(&p.schedule)
    .bind(p.expected_next.0)
    .bind(now)
    .bind(&p.detail)
    .bind(deferrals)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    commit(tx, now, &[]).await?;
    if reeve_store::log::enabled() {
        emit_firing(&p.schedule, p.expected_next, FiringOutcome::Deferred, None);
    }
    store.signals.deadlines_changed();
    Ok(DeferResult::Deferred {
        until,
        deferrals: deferrals as i32,
    })
}

pub(crate) async fn prune_firings(
    store: &SqliteStore,
    older_than: std::time::Duration,
    batch: u32,
) -> Result<u64> {
    let cutoff = store.now_ms().saturating_sub(duration_millis(older_than));
    let done = sqlx::query(
        "DELETE FROM firings WHERE id IN (SELECT id FROM firings WHERE at < ? ORDER BY at LIMIT ?)",
    )
    .bind(cutoff)
    .bind(i64::from(batch))
    .execute(&store.writer)
    .await
    .map_err(db_error)?;
    Ok(done.rows_affected())
}

/// Runs whose median is a typical duration.
const TYPICAL_OF: i64 = 20;

pub(crate) async fn typical_durations(
    store: &SqliteStore,
    schedules: &[String],
    kinds: &[String],
) -> Result<TypicalDurations> {
    let mut out = TypicalDurations::default();
    for name in schedules {
        let observed: Vec<i64> = sqlx::query_scalar(
            "SELECT duration_ms FROM firings WHERE schedule = ? AND duration_ms IS NOT NULL \
               AND state = 'succeeded' ORDER BY nominal_at DESC LIMIT ?",
        )
        .bind(name)
        .bind(TYPICAL_OF)
        .fetch_all(&store.reader)
        .await
        .map_err(db_error)?;
        if let Some(ms) = median_ms(observed) {
            out.by_schedule
                .insert(name.clone(), std::time::Duration::from_millis(ms as u64));
        }
    }
    for kind in kinds {
        // The newest finished jobs first (by the finished_at index); bounded
        // so a kind that never succeeded cannot scan the whole table.
        let observed: Vec<i64> = sqlx::query_scalar(
            "SELECT finished_at - claimed_at FROM ( \
               SELECT kind, state, finished_at, claimed_at FROM jobs \
               WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 5000) \
             WHERE kind = ? AND state = 'succeeded' AND claimed_at IS NOT NULL LIMIT ?",
        )
        .bind(kind)
        .bind(TYPICAL_OF)
        .fetch_all(&store.reader)
        .await
        .map_err(db_error)?;
        if let Some(ms) = median_ms(observed) {
            out.by_kind.insert(
                kind.clone(),
                std::time::Duration::from_millis(ms.max(0) as u64),
            );
        }
    }
    Ok(out)
}

pub(crate) async fn raise_pressure(
    store: &SqliteStore,
    source: &str,
    ttl: std::time::Duration,
) -> Result<Pressure> {
    let mut tx = store.begin().await?;
    let now = store.now_ms();
    let expires = now.saturating_add(duration_millis(ttl));
    sqlx::query("DELETE FROM pressure WHERE expires_at <= ?")
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    let raised: i64 = sqlx::query_scalar(
        "INSERT INTO pressure (source, raised_at, expires_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (source) DO UPDATE SET expires_at = ?3 RETURNING raised_at",
    )
    .bind(source)
    .bind(now)
    .bind(expires)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    commit(tx, now, &[]).await?;
    Ok(Pressure {
        source: source.to_string(),
        raised_at: Timestamp(raised),
        expires_at: Timestamp(expires),
    })
}

pub(crate) async fn clear_pressure(store: &SqliteStore, source: &str) -> Result<bool> {
    let mut tx = store.begin().await?;
    let now = store.now_ms();
    let gone = sqlx::query("DELETE FROM pressure WHERE source = ? AND expires_at > ?")
        .bind(source)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected()
        > 0;
    sqlx::query(
        "UPDATE schedules SET defer_until = NULL WHERE defer_until IS NOT NULL \
           AND NOT EXISTS (SELECT 1 FROM pressure WHERE expires_at > ?)",
    )
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    commit(tx, now, &[]).await?;
    store.signals.deadlines_changed();
    Ok(gone)
}

pub(crate) async fn list_pressure(store: &SqliteStore) -> Result<Vec<Pressure>> {
    let rows = sqlx::query(
        "SELECT source, raised_at, expires_at FROM pressure WHERE expires_at > ? ORDER BY source",
    )
    .bind(store.now_ms())
    .fetch_all(&store.reader)
    .await
    .map_err(db_error)?;
    Ok(rows
        .iter()
        .map(|r| Pressure {
            source: r.get(0),
            raised_at: Timestamp(r.get(1)),
            expires_at: Timestamp(r.get(2)),
        })
        .collect())
}

/// Forced firings' jobs not yet claimed, claimable by this claimer: they
/// are claimed first and skip the cap check at this, their first, claim
/// (SPEC §3). Paused queues stay paused.
/// An unclaimed forced run, with what a claimer must be able to run it.
pub(crate) struct ForcedCandidate {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub command: bool,
    pub requires: Vec<String>,
}

pub(crate) async fn forced_candidates(
    tx: &mut Transaction<'static, Sqlite>,
    queues: Option<&[String]>,
) -> Result<Vec<ForcedCandidate>> {
    // CROSS JOIN keeps SQLite's join order: the (almost always empty)
    // partial index of unclaimed forced firings first. Joined the other way
    // round, every claim would walk all available jobs.
    let rows = sqlx::query(
        "SELECT j.id, j.queue, j.kind, j.command IS NOT NULL, j.requires \
           FROM firings f CROSS JOIN jobs j ON j.id = f.job_id \
         WHERE f.outcome = 'forced' AND f.claimed_at IS NULL AND f.finished_at IS NULL \
           AND j.state = 'available' \
           AND NOT coalesce((SELECT paused FROM queues q WHERE q.name = j.queue), 0) \
         ORDER BY j.id",
    )
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    let mut out = Vec::new();
    for r in &rows {
        let queue: String = r.get(1);
        if queues.is_some_and(|wanted| !wanted.contains(&queue)) {
            continue;
        }
        let requires: Option<String> = r.get(4);
        out.push(ForcedCandidate {
            id: r.get(0),
            queue,
            kind: r.get(2),
            command: r.get::<bool, _>(3),
            requires: requires
                .map(|s| serde_json::from_str(&s).map_err(|e| crate::rows::corrupt("requires", e)))
                .transpose()?
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Records the first claim of scheduled jobs in their ledger rows: when, the
/// slot wait, and how many jobs were running right after it.
pub(crate) async fn record_claims(
    tx: &mut Transaction<'static, Sqlite>,
    jobs: &[reeve_core::Job],
    now: i64,
) -> Result<()> {
    let scheduled: Vec<&reeve_core::Job> = jobs.iter().filter(|j| j.schedule.is_some()).collect();
    if scheduled.is_empty() {
        return Ok(());
    }
    let running: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE state = 'running'")
        .fetch_one(&mut **tx)
        .await
        .map_err(db_error)?;
    for job in scheduled {
        sqlx::query(
            "UPDATE firings SET claimed_at = ?1, slot_wait_ms = max(0, ?1 - ?2), running_at_claim = ?3 \
             WHERE job_id = ?4 AND claimed_at IS NULL AND outcome <> 'coalesced'",
        )
        .bind(now)
        .bind(job.available_at.0)
        .bind(running)
        .bind(job.id)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

/// Settles the scheduled jobs among `jobs` that just became terminal, in the
/// caller's transaction: their ledger rows, then their schedules' streaks,
/// auto-pause and probe (see `reeve_store::settle`). Returns what changed,
/// for the log lines after the commit.
pub(crate) async fn settle_jobs(
    store: &SqliteStore,
    tx: &mut Transaction<'static, Sqlite>,
    jobs: &[reeve_core::Job],
    now: i64,
) -> Result<Vec<(String, Settlement)>> {
    let mut out = Vec::new();
    for job in jobs.iter().filter(|j| settles(j)) {
        let schedule = job.schedule.as_deref().expect("settles() checked it");
        let end = ledger_end(job, now);
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = ?");
        let record = match sqlx::query(AssertSqlSafe(sql))
            .bind(schedule)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_error)?
        {
            Some(row) => Some(schedule_from_row(&row)?),
            None => None,
        };
        let settlement = record
            .as_ref()
            .map(|r| settle(r, job, &store.config.streaks, Timestamp(now)));
        sqlx::query(
            "UPDATE firings SET finished_at = ?1, duration_ms = ?2, turns = ?3, max_turns = ?4, \
               state = ?5, failure_reason = ?6, \
               detail = CASE WHEN ?7 IS NULL THEN detail \
                             WHEN detail IS NULL THEN ?7 ELSE detail || '; ' || ?7 END \
             WHERE job_id = ?8 AND outcome <> 'coalesced'",
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
        if !s.changes(&record) {
            continue;
        }
        sqlx::query(
            "UPDATE schedules SET generic_streak = ?1, budget_streak = ?2, status = ?3, \
               paused_reason = ?4, next_fire_at = ?5, probe_job = ?6, updated_at = ?7 \
             WHERE name = ?8",
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
        if let Some(audit) = reeve_store::settle::audit_of(schedule, job, &s) {
            insert_audit(tx, now, audit).await?;
        }
        out.push((schedule.to_string(), s));
    }
    Ok(out)
}
