//! Every mutation of the SQLite backend. Each public function here is one
//! `BEGIN IMMEDIATE` transaction (or one statement), appends the events of
//! the transitions it made in that same transaction, and prints their log
//! lines only after the commit. A completion enqueues the follow-ups of the
//! jobs it made succeed in its own transaction (SPEC §10), and every
//! terminal path (finish, reap, cancel) writes the subscribed webhook outbox
//! rows of what it ended (`supervision::record_ended`) in its own as well.
//! A claim sets the run's `progress_at`; a heartbeat that carries progress
//! moves it and clears a stall, in the same statement.

use std::collections::HashMap;
use std::time::Duration;

use reeve_core::placement::satisfies;
use reeve_core::time::duration_millis;
use reeve_core::{Actor, EventKind, FailureReason, Job, JobId, JobState, NewJob, Timestamp};
use reeve_store::transition::{
    MAX_ERROR_LEN, PendingEvent, emit_committed, enqueued_event, failure_event, failure_transition,
    fence, follow_up, materialize, pick_claims, reap_message, reap_reason, truncate, with_id,
};
use reeve_store::{
    ClaimParams, Enqueued, Finish, HeartbeatAck, HeartbeatParams, KindFilter, Outcome, Result,
    StoreError,
};
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};

use crate::SqliteStore;
use crate::rows::{
    JOB_COLUMNS, JOB_JSON, db_error, is_unique_violation, job_from_row, jobs_from_json,
};

/// Rows per multi-row statement (SQLite allows 32,766 parameters).
const CHUNK: usize = 500;
/// Jobs per multi-row insert (19 parameters each).
const INSERT_CHUNK: usize = 1000;

pub(crate) async fn insert_events(
    tx: &mut Transaction<'static, Sqlite>,
    at: i64,
    events: &[PendingEvent],
) -> Result<()> {
    for chunk in events.chunks(CHUNK) {
        let mut sql = String::from(
            "INSERT INTO events (job_id, at, event, epoch, attempt, worker, reason, actor, detail) VALUES ",
        );
        for i in 0..chunk.len() {
            sql.push_str(if i == 0 {
                "(?,?,?,?,?,?,?,?,?)"
            } else {
                ",(?,?,?,?,?,?,?,?,?)"
            });
        }
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for e in chunk {
            q = q
                .bind(e.job_id)
                .bind(at)
                .bind(e.event.as_str())
                .bind(e.epoch)
                .bind(e.attempt)
                .bind(e.worker.as_deref())
                .bind(e.reason.as_deref())
                .bind(e.by.as_str())
                .bind(e.detail.as_deref());
        }
        q.execute(&mut **tx).await.map_err(db_error)?;
    }
    Ok(())
}

/// Appends one `event` per job in `ids`, its epoch, attempt and worker
/// copied from the rows as they are after the transition, in one statement
/// per chunk (no per-row parameters).
async fn copy_events(
    tx: &mut Transaction<'static, Sqlite>,
    at: i64,
    event: EventKind,
    by: Actor,
    ids: &[JobId],
) -> Result<()> {
    for chunk in ids.chunks(CHUNK) {
        let placeholders = vec!["?"; chunk.len()].join(",");
        let sql = format!(
            "INSERT INTO events (job_id, at, event, epoch, attempt, worker, actor) \
             SELECT id, ?, ?, epoch, attempt, claimed_by, ? FROM jobs WHERE id IN ({placeholders}) ORDER BY id"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .bind(at)
            .bind(event.as_str())
            .bind(by.as_str());
        for id in chunk {
            q = q.bind(id);
        }
        q.execute(&mut **tx).await.map_err(db_error)?;
    }
    Ok(())
}

/// The log lines of committed settlements (auto-pauses, probe ends).
fn emit_settled(settled: &[(String, reeve_store::settle::Settlement)]) {
    for (schedule, s) in settled {
        reeve_store::settle::emit_settlement(schedule, s);
    }
}

pub(crate) async fn commit(
    tx: Transaction<'static, Sqlite>,
    at: i64,
    events: &[PendingEvent],
) -> Result<()> {
    tx.commit().await.map_err(db_error)?;
    emit_committed(events, at);
    Ok(())
}

async fn load_job(tx: &mut Transaction<'static, Sqlite>, id: JobId) -> Result<Job> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)?
        .ok_or(StoreError::NotFound(id))?;
    job_from_row(&row)
}

fn to_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("domain values always serialize")
}

pub(crate) async fn enqueue(store: &SqliteStore, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = store.begin().await?;
    let now = store.now_ms();
    let mut queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    for q in queues {
        sqlx::query("INSERT OR IGNORE INTO queues (name) VALUES (?)")
            .bind(q)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
    }

    let mut out: Vec<Option<Enqueued>> = vec![None; jobs.len()];
    let mut events = Vec::with_capacity(jobs.len());
    let mut unique_events = Vec::new();
    // Plain jobs go in multi-row inserts; unique jobs one by one, since each
    // must see the ones inserted before it.
    let mut plain: Vec<(usize, Job)> = Vec::with_capacity(jobs.len());
    for (i, nj) in jobs.into_iter().enumerate() {
        let job = materialize(&store.config, nj, now);
        if let Some(key) = &job.unique_key {
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE unique_key = ? \
                 AND state NOT IN ('succeeded', 'failed', 'cancelled')"
            );
            if let Some(row) = sqlx::query(AssertSqlSafe(sql))
                .bind(key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?
            {
                out[i] = Some(Enqueued {
                    job: job_from_row(&row)?,
                    created: false,
                });
                continue;
            }
            let ids = insert_jobs(&mut tx, &[&job]).await?;
            let job = with_id(job, ids[0]);
            unique_events.push(enqueued_event(&job));
            out[i] = Some(Enqueued { job, created: true });
        } else {
            plain.push((i, job));
        }
    }
    insert_events(&mut tx, now, &unique_events).await?;
    events.append(&mut unique_events);
    // Plain jobs: one statement per chunk of rows, and their `enqueued`
    // events copied from the inserted rows in one more.
    let logging = reeve_store::log::enabled();
    let mut plain = plain.into_iter().peekable();
    while plain.peek().is_some() {
        let chunk: Vec<(usize, Job)> = plain.by_ref().take(INSERT_CHUNK).collect();
        let rows: Vec<&Job> = chunk.iter().map(|(_, j)| j).collect();
        let ids = insert_jobs(&mut tx, &rows).await?;
        sqlx::query(
            "INSERT INTO events (job_id, at, event, epoch, attempt, actor, detail) \
             SELECT id, ?, 'enqueued', 0, 0, 'client', state FROM jobs WHERE id BETWEEN ? AND ?",
        )
        .bind(now)
        .bind(ids[0])
        .bind(ids[ids.len() - 1])
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        for ((i, job), id) in chunk.into_iter().zip(ids) {
            let job = with_id(job, id);
            if logging {
                events.push(enqueued_event(&job));
            }
            out[i] = Some(Enqueued { job, created: true });
        }
    }
    commit(tx, now, &events).await?;
    store.signals.work_changed();
    store.signals.deadlines_changed();
    Ok(out
        .into_iter()
        .map(|e| e.expect("every job answered"))
        .collect())
}

/// Inserts rows in one statement and returns their ids in row order.
pub(crate) async fn insert_jobs(
    tx: &mut Transaction<'static, Sqlite>,
    jobs: &[&Job],
) -> Result<Vec<JobId>> {
    let mut sql = String::from(
        "INSERT INTO jobs (queue, kind, state, payload, priority, max_attempts, available_at, \
         max_run_duration_ms, heartbeat_timeout_ms, retry_on, idempotency_key, unique_key, command, \
         max_turns, created_at, schedule, nominal_at, on_success, requires) VALUES ",
    );
    for i in 0..jobs.len() {
        sql.push_str(if i == 0 {
            "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
        } else {
            ",(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
        });
    }
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for j in jobs {
        q = q
            .bind(&j.queue)
            .bind(&j.kind)
            .bind(j.state.as_str())
            .bind(to_json(&j.payload))
            .bind(j.priority)
            .bind(j.max_attempts)
            .bind(j.available_at.0)
            .bind(duration_millis(j.max_run_duration))
            .bind(duration_millis(j.heartbeat_timeout))
            .bind(j.retry_on.as_ref().map(to_json))
            .bind((!j.idempotency_key.is_empty()).then_some(j.idempotency_key.as_str()))
            .bind(j.unique_key.as_deref())
            .bind(j.command.as_ref().map(to_json))
            .bind(j.max_turns)
            .bind(j.created_at.0)
            .bind(j.schedule.as_deref())
            .bind(j.nominal_at.map(|t| t.0))
            .bind(j.on_success.as_ref().map(to_json))
            // No requirements is NULL: the claim index's common case.
            .bind((!j.requires.is_empty()).then(|| to_json(&j.requires)));
    }
    let done = q.execute(&mut **tx).await.map_err(db_error)?;
    // One statement under the write lock allocates consecutive ids in row
    // order (AUTOINCREMENT: each row gets the largest id so far + 1), so the
    // last id names them all without returning a row per job.
    let last = done.last_insert_rowid();
    let first = last - jobs.len() as i64 + 1;
    Ok((first..=last).collect())
}

pub(crate) async fn claim(store: &SqliteStore, p: ClaimParams) -> Result<Vec<Job>> {
    if p.limit == 0 {
        return Ok(Vec::new());
    }
    let mut tx = store.begin().await?;
    let now = store.now_ms();

    // Forced runs first: they skip the cap check at this, their first, claim
    // (they count toward the caps while they run).
    let forced: Vec<(JobId, String)> =
        crate::schedule::forced_candidates(&mut tx, p.queues.as_deref())
            .await?
            .into_iter()
            .filter(|f| p.kinds.accepts(&f.kind, f.command) && satisfies(&p.labels, &f.requires))
            .map(|f| (f.id, f.queue))
            .take(p.limit as usize)
            .collect();
    let limit = p.limit - forced.len() as u32;
    let mut picked = pick_under_caps(&mut tx, &p, limit, &forced).await?;
    picked.extend(forced.iter().map(|(id, _)| *id));
    if picked.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders = vec!["?"; picked.len()].join(",");
    let update = format!(
        "UPDATE jobs SET state = 'running', epoch = epoch + 1, attempt = attempt + 1, \
           claimed_by = ?, claimed_at = ?, heartbeat_at = ?, heartbeats = ?, heartbeat_count = 0, \
           cancel_requested_at = NULL, progress = NULL, turns = 0, \
           progress_at = ?, stalled_at = NULL, escalated_at = NULL, \
           lease_expires_at = CASE WHEN ? THEN min(? + max_run_duration_ms, ? + heartbeat_timeout_ms) \
                                   ELSE ? + max_run_duration_ms END \
         WHERE state = 'available' AND id IN ({placeholders})"
    );
    let mut q = sqlx::query(AssertSqlSafe(update))
        .bind(&p.worker)
        .bind(now)
        .bind(now)
        .bind(p.heartbeats)
        .bind(now)
        .bind(p.heartbeats)
        .bind(now)
        .bind(now)
        .bind(now);
    for id in &picked {
        q = q.bind(id);
    }
    q.execute(&mut *tx).await.map_err(db_error)?;
    let mut jobs = load_jobs(&mut tx, &picked).await?;
    jobs.sort_by_key(|j| (j.priority, j.available_at, j.id));
    copy_events(&mut tx, now, EventKind::Claimed, Actor::Executor, &picked).await?;
    crate::schedule::record_claims(&mut tx, &jobs, now).await?;
    let events: Vec<PendingEvent> = if reeve_store::log::enabled() {
        jobs.iter()
            .map(|j| PendingEvent::for_job(j, EventKind::Claimed, Actor::Executor))
            .collect()
    } else {
        Vec::new()
    };
    commit(tx, now, &events).await?;
    store.signals.deadlines_changed();
    Ok(jobs)
}

/// The jobs a claim of up to `limit` takes under the caps, counting the
/// forced runs it is also taking as running.
async fn pick_under_caps(
    tx: &mut Transaction<'static, Sqlite>,
    p: &ClaimParams,
    limit: u32,
    forced: &[(JobId, String)],
) -> Result<Vec<JobId>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // Caps: read inside the write lock, so nobody can claim between this
    // count and the update below.
    let queue_rows = sqlx::query("SELECT name, concurrency, paused FROM queues")
        .fetch_all(&mut **tx)
        .await
        .map_err(db_error)?;
    let global: Option<u64> = sqlx::query_scalar::<_, String>(
        "SELECT value FROM settings WHERE key = 'global_concurrency'",
    )
    .fetch_optional(&mut **tx)
    .await
    .map_err(db_error)?
    .and_then(|v| v.parse().ok());
    let capped = global.is_some()
        || queue_rows
            .iter()
            .any(|r| r.get::<Option<i64>, _>(1).is_some());
    let mut running: HashMap<String, u64> = HashMap::new();
    if capped {
        for r in
            sqlx::query("SELECT queue, COUNT(*) FROM jobs WHERE state = 'running' GROUP BY queue")
                .fetch_all(&mut **tx)
                .await
                .map_err(db_error)?
        {
            running.insert(r.get(0), r.get::<i64, _>(1) as u64);
        }
    }
    for (_, queue) in forced {
        *running.entry(queue.clone()).or_default() += 1;
    }
    let total_running: u64 = running.values().sum();
    let global_room = global.map_or(u64::MAX, |g| g.saturating_sub(total_running));
    let take = u64::from(limit).min(global_room);
    if take == 0 {
        return Ok(Vec::new());
    }

    // Per-queue room for the queues this claimer may take from.
    let mut room: HashMap<String, u64> = HashMap::new();
    for r in &queue_rows {
        let name: String = r.get(0);
        if p.queues
            .as_ref()
            .is_some_and(|wanted| !wanted.contains(&name))
        {
            continue;
        }
        if r.get::<i64, _>(2) != 0 {
            continue; // paused
        }
        let cap = r
            .get::<Option<i64>, _>(1)
            .map_or(u64::MAX, |c| c.max(0) as u64);
        let free = cap.saturating_sub(running.get(&name).copied().unwrap_or(0));
        if free > 0 {
            room.insert(name, free);
        }
    }
    if room.is_empty() {
        return Ok(Vec::new());
    }

    // Parameters: ?1 the queue, ?2 how many, then the kinds, then (for a
    // claimer with labels) its labels as JSON.
    let kinds: &[String] = match &p.kinds {
        KindFilter::Any => &[],
        KindFilter::Only { kinds, .. } => kinds,
    };
    let labels_param = 3 + kinds.len();
    let kind_clause = match &p.kinds {
        KindFilter::Any => String::new(),
        KindFilter::Only { kinds, commands } => {
            let placeholders = (0..kinds.len())
                .map(|i| format!("?{}", i + 3))
                .collect::<Vec<_>>()
                .join(",");
            match (kinds.is_empty(), commands) {
                (true, true) => " AND command IS NOT NULL".to_string(),
                (true, false) => " AND 0".to_string(),
                (false, true) => format!(" AND (kind IN ({placeholders}) OR command IS NOT NULL)"),
                (false, false) => format!(" AND kind IN ({placeholders})"),
            }
        }
    };
    // Placement: every claimer walks the head of the unpinned jobs' index
    // (`requires IS NULL`); a claimer with labels also walks the pinned
    // jobs' index for those whose every requirement is among its labels. A
    // pinned job that does not match is passed over, never a block.
    let unpinned = format!(
        "SELECT id, priority, available_at FROM jobs \
         WHERE state = 'available' AND queue = ?1 AND requires IS NULL{kind_clause} \
         ORDER BY priority, available_at, id LIMIT ?2"
    );
    let heads = if p.labels.is_empty() {
        unpinned
    } else {
        format!(
            "SELECT * FROM ({unpinned}) UNION ALL SELECT * FROM ( \
               SELECT id, priority, available_at FROM jobs \
               WHERE state = 'available' AND queue = ?1 AND requires IS NOT NULL{kind_clause} \
                 AND NOT EXISTS (SELECT 1 FROM json_each(jobs.requires) \
                                 WHERE value NOT IN (SELECT value FROM json_each(?{labels_param}))) \
               ORDER BY priority, available_at, id LIMIT ?2)"
        )
    };
    let select =
        format!("SELECT json_group_array(json_array(priority, available_at, id)) FROM ({heads})");
    let labels = reeve_store::fleet::list_json(&p.labels);
    // (priority, available_at, id, queue)
    let mut candidates: Vec<(i64, i64, i64, String)> = Vec::new();
    for (queue, free) in &room {
        // The forced runs of this queue are still `available`: ask for as
        // many more and leave them out.
        let forced_here = forced.iter().filter(|(_, q)| q == queue).count() as i64;
        let mut q = sqlx::query(AssertSqlSafe(select.clone()))
            .bind(queue)
            .bind((*free).min(take) as i64 + forced_here);
        for k in kinds {
            q = q.bind(k);
        }
        if !p.labels.is_empty() {
            q = q.bind(&labels);
        }
        let rows: String = q.fetch_one(&mut **tx).await.map_err(db_error)?.get(0);
        let rows: Vec<(i64, i64, i64)> =
            serde_json::from_str(&rows).map_err(|e| StoreError::Database {
                message: format!("unreadable claim candidates: {e}"),
                transient: false,
            })?;
        candidates.extend(
            rows.into_iter()
                .filter(|(_, _, id)| !forced.iter().any(|(f, _)| f == id))
                .map(|(prio, at, id)| (prio, at, id, queue.clone())),
        );
    }
    let picked = pick_claims(candidates, room, take);

    Ok(picked)
}

pub(crate) async fn heartbeat(store: &SqliteStore, p: HeartbeatParams) -> Result<HeartbeatAck> {
    let now = store.now_ms();
    // Progress (SPEC §10): a turn count above the stored one or a note
    // that differs from the stored one (an executor may resend its last
    // note on every beat). The CASEs read the row as it was before.
    let row = sqlx::query(
        "UPDATE jobs SET heartbeat_at = ?1, heartbeat_count = heartbeat_count + 1, \
           lease_expires_at = CASE WHEN heartbeats = 1 AND cancel_requested_at IS NULL \
                                   THEN min(claimed_at + max_run_duration_ms, ?1 + heartbeat_timeout_ms) \
                                   ELSE lease_expires_at END, \
           progress_at = CASE WHEN ?4 > turns OR (?5 IS NOT NULL AND ?5 IS NOT progress) \
                              THEN ?1 ELSE progress_at END, \
           stalled_at = CASE WHEN ?4 > turns OR (?5 IS NOT NULL AND ?5 IS NOT progress) \
                             THEN NULL ELSE stalled_at END, \
           escalated_at = CASE WHEN ?4 > turns OR (?5 IS NOT NULL AND ?5 IS NOT progress) \
                               THEN NULL ELSE escalated_at END, \
           turns = coalesce(?4, turns), progress = coalesce(?5, progress) \
         WHERE id = ?2 AND epoch = ?3 AND state = 'running' AND lease_expires_at > ?1 \
         RETURNING lease_expires_at, cancel_requested_at, turns, max_turns",
    )
    .bind(now)
    .bind(p.job)
    .bind(p.epoch)
    .bind(p.turns)
    .bind(p.progress.as_deref())
    .fetch_optional(&store.writer)
    .await
    .map_err(db_error)?;
    match row {
        Some(r) => Ok(HeartbeatAck {
            lease_expires_at: Timestamp(r.get(0)),
            cancel_requested: r.get::<Option<i64>, _>(1).is_some(),
            turns: r.get(2),
            max_turns: r.get(3),
        }),
        None => {
            let row = sqlx::query("SELECT state, epoch FROM jobs WHERE id = ?")
                .bind(p.job)
                .fetch_optional(&store.writer)
                .await
                .map_err(db_error)?
                .ok_or(StoreError::NotFound(p.job))?;
            let state: JobState =
                row.get::<String, _>(0)
                    .parse()
                    .map_err(|e: String| StoreError::Database {
                        message: e,
                        transient: false,
                    })?;
            let epoch: i64 = row.get(1);
            Err(if epoch != p.epoch {
                StoreError::StaleEpoch {
                    expected: epoch,
                    actual: p.epoch,
                }
            } else if state != JobState::Running {
                StoreError::NotRunning { state }
            } else {
                StoreError::LeaseExpired
            })
        }
    }
}

/// Applies a failure transition to a running job, fenced on its epoch.
async fn apply_failure(
    tx: &mut Transaction<'static, Sqlite>,
    job: &Job,
    t: &reeve_store::transition::FailureTransition,
    error: Option<&str>,
    now: i64,
) -> Result<Job> {
    let terminal = t.state.is_terminal();
    let sql = format!(
        "UPDATE jobs SET state = ?, failure_reason = ?, last_error = ?, available_at = ?, finished_at = ? \
         WHERE id = ? AND epoch = ? AND state = 'running' RETURNING {JOB_COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(t.state.as_str())
        .bind(t.reason.as_str())
        .bind(error)
        .bind(t.available_at)
        .bind(terminal.then_some(now))
        .bind(job.id)
        .bind(job.epoch)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)?
        .ok_or(StoreError::NotRunning { state: job.state })?;
    job_from_row(&row)
}

pub(crate) async fn finish(store: &SqliteStore, batch: Vec<Finish>) -> Result<Vec<Result<Job>>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = store.begin().await?;
    let now = store.now_ms();
    let mut answers: Vec<Option<Result<Job>>> = vec![None; batch.len()];
    let mut events = Vec::with_capacity(batch.len());

    // Successes first, all in one fenced statement: the hot path of a busy
    // queue. A job named more than once in a batch is written one by one in
    // batch order, so the batch means what its elements mean in sequence.
    let mut count: HashMap<JobId, u32> = HashMap::with_capacity(batch.len());
    for f in &batch {
        *count.entry(f.job).or_default() += 1;
    }
    let successes: Vec<usize> = (0..batch.len())
        .filter(|&i| {
            matches!(batch[i].outcome, Outcome::Succeeded { .. }) && count[&batch[i].job] == 1
        })
        .collect();
    let mut completed = Vec::with_capacity(successes.len());
    for chunk in successes.chunks(CHUNK) {
        let mut done = complete_many(&mut tx, &batch, chunk, now).await?;
        for &i in chunk {
            let answer = done
                .remove(&batch[i].job)
                .expect("complete_many answers every job");
            if let Ok(job) = &answer {
                completed.push(job.id);
            }
            answers[i] = Some(answer);
        }
    }
    copy_events(
        &mut tx,
        now,
        EventKind::Succeeded,
        Actor::Executor,
        &completed,
    )
    .await?;
    // Only for the log lines: the rows were copied above.
    let copied: Vec<PendingEvent> = answers
        .iter()
        .filter(|_| reeve_store::log::enabled())
        .flatten()
        .flatten()
        .map(|job| PendingEvent::for_job(job, EventKind::Succeeded, Actor::Executor))
        .collect();
    for (i, f) in batch.iter().enumerate() {
        if answers[i].is_some() {
            continue;
        }
        let answer = match &f.outcome {
            Outcome::Succeeded { result } => complete_one(&mut tx, f, result.as_ref(), now).await?,
            Outcome::Failed { reason, error } => {
                fail_one(store, &mut tx, f, *reason, error.as_deref(), now).await?
            }
        };
        if let Ok(job) = &answer {
            events.push(match (&f.outcome, job.state) {
                (Outcome::Succeeded { .. }, _) => {
                    PendingEvent::for_job(job, EventKind::Succeeded, Actor::Executor)
                }
                (Outcome::Failed { error, .. }, state) => {
                    PendingEvent::for_job(job, failure_event(state), Actor::Executor)
                        .reason(job.failure_reason.map_or("error", FailureReason::as_str))
                        .detail(error.as_deref().map(|e| truncate(e, 200).to_string()))
                }
            });
        }
        answers[i] = Some(answer);
    }
    for (f, answer) in batch.iter().zip(&answers) {
        if let (Some(Ok(job)), Some(output)) = (answer, &f.output)
            && !output.is_empty()
        {
            sqlx::query(
                "INSERT OR REPLACE INTO run_output (job_id, attempt, output) VALUES (?, ?, ?)",
            )
            .bind(job.id)
            .bind(job.attempt)
            .bind(output.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
    }
    insert_events(&mut tx, now, &events).await?;
    // Follow-ups of the jobs that just succeeded, from the rows already read
    // (nothing more runs when none names one).
    let parents: Vec<&Job> = answers
        .iter()
        .flatten()
        .flatten()
        .filter(|j| j.state == JobState::Succeeded && j.on_success.is_some())
        .collect();
    let followed = enqueue_follow_ups(store, &mut tx, &parents, now).await?;
    let ended: Vec<Job> = answers
        .iter()
        .flatten()
        .flatten()
        .filter(|j| reeve_store::settle::settles(j))
        .cloned()
        .collect();
    let settled = crate::schedule::settle_jobs(store, &mut tx, &ended, now).await?;
    let failed: Vec<&Job> = answers
        .iter()
        .flatten()
        .flatten()
        .filter(|j| j.state == JobState::Failed)
        .collect();
    let outbox = crate::supervision::record_ended(store, &mut tx, &failed, &settled, now).await?;
    let changed = !events.is_empty() || !completed.is_empty();
    events.extend(copied);
    events.extend(followed);
    commit(tx, now, &events).await?;
    emit_settled(&settled);
    if outbox {
        store.signals.outbox_changed();
    }
    if changed {
        store.signals.work_changed();
        store.signals.deadlines_changed();
    }
    Ok(answers
        .into_iter()
        .map(|a| a.expect("every write-back answered"))
        .collect())
}

/// Enqueues the follow-ups of `parents` (jobs that just succeeded in `tx`)
/// with their `enqueued` events, and returns those events. A follow-up whose
/// unique key (`followup:<parent id>`) a live job already holds is not
/// enqueued again.
async fn enqueue_follow_ups(
    store: &SqliteStore,
    tx: &mut Transaction<'static, Sqlite>,
    parents: &[&Job],
    now: i64,
) -> Result<Vec<PendingEvent>> {
    if parents.is_empty() {
        return Ok(Vec::new());
    }
    let mut jobs: Vec<Job> = parents
        .iter()
        .filter_map(|p| follow_up(p))
        .map(|nj| materialize(&store.config, nj, now))
        .collect();
    let mut queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    for q in queues {
        sqlx::query("INSERT OR IGNORE INTO queues (name) VALUES (?)")
            .bind(q)
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
    }
    let mut held: Vec<String> = Vec::new();
    for chunk in jobs.chunks(CHUNK) {
        let placeholders = vec!["?"; chunk.len()].join(",");
        let sql = format!(
            "SELECT unique_key FROM jobs WHERE unique_key IN ({placeholders}) \
             AND state NOT IN ('succeeded', 'failed', 'cancelled')"
        );
        let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
        for j in chunk {
            q = q.bind(j.unique_key.as_deref());
        }
        held.extend(q.fetch_all(&mut **tx).await.map_err(db_error)?);
    }
    jobs.retain(|j| !j.unique_key.as_ref().is_some_and(|k| held.contains(k)));
    let mut events = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(INSERT_CHUNK) {
        let rows: Vec<&Job> = chunk.iter().collect();
        let ids = insert_jobs(tx, &rows).await?;
        for (job, id) in chunk.iter().zip(ids) {
            events.push(enqueued_event(&with_id(job.clone(), id)));
        }
    }
    insert_events(tx, now, &events).await?;
    Ok(events)
}

/// One fenced completion; `Ok(Err(refusal))` when it does not apply.
async fn complete_one(
    tx: &mut Transaction<'static, Sqlite>,
    f: &Finish,
    result: Option<&serde_json::Value>,
    now: i64,
) -> Result<Result<Job>> {
    let sql = format!(
        "UPDATE jobs SET state = 'succeeded', finished_at = ?, result = ?, failure_reason = NULL, last_error = NULL \
         WHERE id = ? AND epoch = ? AND state = 'running' RETURNING {JOB_COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(now)
        .bind(result.map(to_json))
        .bind(f.job)
        .bind(f.epoch)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)?;
    match row {
        Some(row) => Ok(Ok(job_from_row(&row)?)),
        None => Ok(Err(match load_job(tx, f.job).await {
            Ok(job) => fence(&job, f.epoch).unwrap_or(StoreError::NotRunning { state: job.state }),
            Err(e) => e,
        })),
    }
}

/// One fenced failure: retry with backoff, fail, or (after a cancel
/// request) cancel; `Ok(Err(refusal))` when it does not apply.
async fn fail_one(
    store: &SqliteStore,
    tx: &mut Transaction<'static, Sqlite>,
    f: &Finish,
    reason: FailureReason,
    error: Option<&str>,
    now: i64,
) -> Result<Result<Job>> {
    let job = match load_job(tx, f.job).await {
        Ok(job) => job,
        Err(e @ StoreError::NotFound(_)) => return Ok(Err(e)),
        Err(e) => return Err(e),
    };
    if let Some(refusal) = fence(&job, f.epoch) {
        return Ok(Err(refusal));
    }
    let t = failure_transition(&store.config, &job, reason, now);
    let error = error.map(|e| truncate(e, MAX_ERROR_LEN));
    Ok(Ok(apply_failure(tx, &job, &t, error, now).await?))
}

/// Completes the successes at `indices` of `batch` (distinct jobs): one read
/// of their states, one fenced update, one read of the results, each a single
/// row. Returns each job's answer.
async fn complete_many(
    tx: &mut Transaction<'static, Sqlite>,
    batch: &[Finish],
    indices: &[usize],
    now: i64,
) -> Result<HashMap<JobId, Result<Job>>> {
    let ids: Vec<JobId> = indices.iter().map(|&i| batch[i].job).collect();
    let placeholders = vec!["?"; ids.len()].join(",");
    let sql = format!(
        "SELECT json_group_array(json_array(id, epoch, state)) FROM jobs WHERE id IN ({placeholders})"
    );
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for id in &ids {
        q = q.bind(id);
    }
    let current: String = q.fetch_one(&mut **tx).await.map_err(db_error)?.get(0);
    let current: Vec<(i64, i64, String)> =
        serde_json::from_str(&current).map_err(|e| StoreError::Database {
            message: format!("unreadable job states: {e}"),
            transient: false,
        })?;
    let current: HashMap<JobId, (i64, String)> = current
        .into_iter()
        .map(|(id, epoch, state)| (id, (epoch, state)))
        .collect();
    let mut answers = HashMap::with_capacity(ids.len());
    let mut valid = Vec::with_capacity(ids.len());
    for &i in indices {
        let f = &batch[i];
        match current.get(&f.job) {
            None => {
                answers.insert(f.job, Err(StoreError::NotFound(f.job)));
            }
            Some((epoch, _)) if *epoch != f.epoch => {
                answers.insert(
                    f.job,
                    Err(StoreError::StaleEpoch {
                        expected: *epoch,
                        actual: f.epoch,
                    }),
                );
            }
            Some((_, state)) if state != "running" => {
                let state = state.parse().map_err(|e: String| StoreError::Database {
                    message: e,
                    transient: false,
                })?;
                answers.insert(f.job, Err(StoreError::NotRunning { state }));
            }
            Some(_) => valid.push(i),
        }
    }
    if valid.is_empty() {
        return Ok(answers);
    }
    let mut sql = String::from("WITH v(vid, vresult) AS (VALUES ");
    for n in 0..valid.len() {
        sql.push_str(if n == 0 { "(?,?)" } else { ",(?,?)" });
    }
    sql.push_str(
        ") UPDATE jobs SET state = 'succeeded', finished_at = ?, result = v.vresult, \
           failure_reason = NULL, last_error = NULL \
         FROM v WHERE jobs.id = v.vid AND jobs.state = 'running'",
    );
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for &i in &valid {
        let f = &batch[i];
        let result = match &f.outcome {
            Outcome::Succeeded { result } => result.as_ref().map(to_json),
            Outcome::Failed { .. } => None,
        };
        q = q.bind(f.job).bind(result);
    }
    q.bind(now).execute(&mut **tx).await.map_err(db_error)?;
    let done: Vec<JobId> = valid.iter().map(|&i| batch[i].job).collect();
    for job in load_jobs(tx, &done).await? {
        answers.insert(job.id, Ok(job));
    }
    Ok(answers)
}

/// Reads jobs by id in one row (see [`JOB_JSON`]).
async fn load_jobs(tx: &mut Transaction<'static, Sqlite>, ids: &[JobId]) -> Result<Vec<Job>> {
    let mut jobs = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let placeholders = vec!["?"; chunk.len()].join(",");
        let sql =
            format!("SELECT json_group_array({JOB_JSON}) FROM jobs WHERE id IN ({placeholders})");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(id);
        }
        let text: String = q.fetch_one(&mut **tx).await.map_err(db_error)?.get(0);
        jobs.extend(jobs_from_json(&text)?);
    }
    Ok(jobs)
}

pub(crate) async fn cancel(store: &SqliteStore, id: JobId) -> Result<Job> {
    let mut tx = store.begin().await?;
    let now = store.now_ms();
    let job = load_job(&mut tx, id).await?;
    let (updated, event) = match job.state {
        JobState::Succeeded | JobState::Failed | JobState::Cancelled => {
            return Err(StoreError::InvalidState {
                action: "cancel",
                state: job.state,
            });
        }
        JobState::Running => {
            if job.cancel_requested_at.is_some() {
                return Ok(job);
            }
            let grace = duration_millis(store.config.cancel_grace);
            let sql = format!(
                "UPDATE jobs SET cancel_requested_at = ?1, lease_expires_at = min(lease_expires_at, ?1 + ?2) \
                 WHERE id = ?3 AND epoch = ?4 AND state = 'running' RETURNING {JOB_COLUMNS}"
            );
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(now)
                .bind(grace)
                .bind(id)
                .bind(job.epoch)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
            let job = job_from_row(&row)?;
            let event = PendingEvent::for_job(&job, EventKind::CancelRequested, Actor::Operator);
            (job, event)
        }
        JobState::Scheduled | JobState::Available | JobState::Retryable => {
            let sql = format!(
                "UPDATE jobs SET state = 'cancelled', failure_reason = 'cancelled', finished_at = ? \
                 WHERE id = ? RETURNING {JOB_COLUMNS}"
            );
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(now)
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
            let job = job_from_row(&row)?;
            let event = PendingEvent::for_job(&job, EventKind::Cancelled, Actor::Operator)
                .reason("cancelled");
            (job, event)
        }
    };
    let events = [event];
    insert_events(&mut tx, now, &events).await?;
    let settled =
        crate::schedule::settle_jobs(store, &mut tx, std::slice::from_ref(&updated), now).await?;
    let outbox =
        crate::supervision::record_ended(store, &mut tx, &[&updated], &settled, now).await?;
    commit(tx, now, &events).await?;
    emit_settled(&settled);
    if outbox {
        store.signals.outbox_changed();
    }
    store.signals.deadlines_changed();
    Ok(updated)
}

pub(crate) async fn retry(store: &SqliteStore, id: JobId) -> Result<Job> {
    let mut tx = store.begin().await?;
    let now = store.now_ms();
    let job = load_job(&mut tx, id).await?;
    if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
        return Err(StoreError::InvalidState {
            action: "retry",
            state: job.state,
        });
    }
    let sql = format!(
        "UPDATE jobs SET state = 'available', attempt = 0, available_at = ?, finished_at = NULL, \
           cancel_requested_at = NULL, failure_reason = NULL, last_error = NULL \
         WHERE id = ? RETURNING {JOB_COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(now)
        .bind(id)
        .fetch_one(&mut *tx)
        .await;
    let row = match row {
        Ok(row) => row,
        Err(e) if is_unique_violation(&e) => {
            return Err(reeve_core::InputError::new(
                "unique_key",
                "another live job holds this job's unique key; cancel or finish it first",
            )
            .into());
        }
        Err(e) => return Err(db_error(e)),
    };
    let updated = job_from_row(&row)?;
    let events = [PendingEvent::for_job(
        &updated,
        EventKind::Retried,
        Actor::Operator,
    )];
    insert_events(&mut tx, now, &events).await?;
    commit(tx, now, &events).await?;
    store.signals.work_changed();
    Ok(updated)
}

pub(crate) async fn reap_expired(store: &SqliteStore, limit: u32) -> Result<Vec<Job>> {
    let mut tx = store.begin().await?;
    let now = store.now_ms();
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' AND lease_expires_at <= ? \
         ORDER BY lease_expires_at LIMIT ?"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut reaped = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let job = job_from_row(row)?;
        let reason = reap_reason(&job, now);
        let t = failure_transition(&store.config, &job, reason, now);
        let updated =
            apply_failure(&mut tx, &job, &t, Some(reap_message(&job, reason)), now).await?;
        events.push(
            PendingEvent::for_job(&updated, t.event, Actor::Reaper).reason(t.reason.as_str()),
        );
        reaped.push(updated);
    }
    insert_events(&mut tx, now, &events).await?;
    let settled = crate::schedule::settle_jobs(store, &mut tx, &reaped, now).await?;
    let ended: Vec<&Job> = reaped.iter().collect();
    let outbox = crate::supervision::record_ended(store, &mut tx, &ended, &settled, now).await?;
    commit(tx, now, &events).await?;
    emit_settled(&settled);
    if outbox {
        store.signals.outbox_changed();
    }
    store.signals.work_changed();
    store.signals.deadlines_changed();
    Ok(reaped)
}

pub(crate) async fn promote_due(store: &SqliteStore, limit: u32) -> Result<u64> {
    let mut tx = store.begin().await?;
    let now = store.now_ms();
    let rows = sqlx::query(
        "UPDATE jobs SET state = 'available' WHERE id IN ( \
           SELECT id FROM jobs WHERE state IN ('scheduled', 'retryable') AND available_at <= ? \
           ORDER BY available_at LIMIT ?) \
         RETURNING id, queue, kind, epoch, attempt, claimed_by",
    )
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let events: Vec<PendingEvent> = rows
        .iter()
        .map(|r| PendingEvent {
            job_id: r.get(0),
            event: EventKind::Available,
            epoch: r.get(3),
            attempt: r.get::<i64, _>(4) as i32,
            worker: None,
            reason: None,
            by: Actor::Engine,
            detail: None,
            queue: r.get(1),
            kind: r.get(2),
        })
        .collect();
    insert_events(&mut tx, now, &events).await?;
    commit(tx, now, &events).await?;
    store.signals.work_changed();
    Ok(rows.len() as u64)
}

pub(crate) async fn prune(store: &SqliteStore, older_than: Duration, batch: u32) -> Result<u64> {
    let mut tx = store.begin().await?;
    let cutoff = store.now_ms().saturating_sub(duration_millis(older_than));
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? \
         AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT ?",
    )
    .bind(cutoff)
    .bind(i64::from(batch))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    if ids.is_empty() {
        return Ok(0);
    }
    let placeholders = vec!["?"; ids.len()].join(",");
    for table in [
        "events WHERE job_id",
        "run_output WHERE job_id",
        "checkpoints WHERE job_id",
        "mail WHERE job_id",
        "jobs WHERE id",
    ] {
        let sql = format!("DELETE FROM {table} IN ({placeholders})");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in &ids {
            q = q.bind(id);
        }
        q.execute(&mut *tx).await.map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)?;
    Ok(ids.len() as u64)
}
