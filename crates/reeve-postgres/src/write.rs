//! Every mutation of the PostgreSQL backend. Each public function here is one
//! transaction (or one statement): it reads the database's clock once, takes
//! the row locks its decision depends on before deciding, appends the events
//! of its transitions and queues its notifications in that same transaction,
//! and prints log lines and raises local signals only after the commit.
//!
//! **Invariants.**
//! - Fenced writes (finish, reap, cancel, retry) read the job `FOR UPDATE`
//!   and update `WHERE id AND epoch AND state`, so nothing can change between
//!   the check and the write.
//! - A claim counts running jobs only while holding the schema's claim lock
//!   exclusively when any cap exists (see [`claim`]); candidates are locked
//!   with `FOR UPDATE SKIP LOCKED`.
//! - Decisions are the same as on SQLite: the same events, refusals, backoff
//!   (`StoreConfig.retry.delay_after`) and cancel grace.
//! - A completion enqueues the follow-ups of the jobs it made succeed in its
//!   own transaction (SPEC §10), after it has locked every row of its batch.
//! - Every terminal path (finish, reap, cancel) writes the subscribed
//!   webhook outbox rows of what it ended (`supervision::record_ended`) in
//!   its own transaction.
//! - A claim sets the run's `progress_at`; a heartbeat that carries progress
//!   moves it and clears a stall, in the same statement (SPEC §10).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reeve_core::time::duration_millis;
use reeve_core::{Actor, EventKind, Job, JobId, JobState, NewJob, Timestamp};
use reeve_store::transition::{
    MAX_ERROR_LEN, PendingEvent, emit_committed, enqueued_event, failure_transition, fence,
    follow_up, materialize, pick_claims, reap_message, reap_reason, truncate, with_id,
};
use reeve_store::{
    ClaimParams, Enqueued, Finish, HeartbeatAck, HeartbeatParams, KindFilter, Limits, Outcome,
    QueuePatch, Result, StoreError,
};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use crate::PostgresStore;
use crate::listen::{DEADLINES_CHANNEL, WORK_CHANNEL};
use crate::rows::{JOB_COLUMNS, db_error, is_unique_violation, job_from_row};

pub(crate) type Tx = Transaction<'static, Postgres>;

/// Which wake-ups a transaction publishes (locally after commit, and to
/// other processes through `pg_notify` inside the transaction).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Notify {
    work: bool,
    deadlines: bool,
}

impl Notify {
    pub(crate) const NONE: Notify = Notify {
        work: false,
        deadlines: false,
    };
    pub(crate) const WORK: Notify = Notify {
        work: true,
        deadlines: false,
    };
    pub(crate) const DEADLINES: Notify = Notify {
        work: false,
        deadlines: true,
    };
    pub(crate) const BOTH: Notify = Notify {
        work: true,
        deadlines: true,
    };

    fn channels(self) -> Vec<&'static str> {
        let mut c = Vec::with_capacity(2);
        if self.work {
            c.push(WORK_CHANNEL);
        }
        if self.deadlines {
            c.push(DEADLINES_CHANNEL);
        }
        c
    }

    fn raise(self, store: &PostgresStore) {
        if self.work {
            store.signals.work_changed();
        }
        if self.deadlines {
            store.signals.deadlines_changed();
        }
    }
}

/// Rows per multi-row statement (arrays, so no parameter limit applies; this
/// only bounds one statement's size).
const CHUNK: usize = 1000;

/// Appends `events` (all at instant `at`) and queues `notify`, in one
/// statement: a data-modifying CTE always runs, whatever the outer query.
async fn record(
    tx: &mut Tx,
    store: &PostgresStore,
    at: i64,
    events: &[PendingEvent],
    notify: Notify,
) -> Result<()> {
    let channels = notify.channels();
    if events.is_empty() {
        if !channels.is_empty() {
            sqlx::query("SELECT pg_notify(c, $2) FROM unnest($1::text[]) AS c")
                .bind(&channels)
                .bind(&store.schema)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
        }
        return Ok(());
    }
    for (i, chunk) in events.chunks(CHUNK).enumerate() {
        let channels: &[&str] = if i == 0 { &channels } else { &[] };
        sqlx::query(
            "WITH ins AS ( \
               INSERT INTO events (job_id, at, event, epoch, attempt, worker, reason, actor, detail) \
               SELECT j, $1, e, ep, a, w, r, ac, d \
               FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::int[], $6::text[], $7::text[], \
                           $8::text[], $9::text[]) AS t(j, e, ep, a, w, r, ac, d)) \
             SELECT pg_notify(c, $11) FROM unnest($10::text[]) AS c",
        )
        .bind(at)
        .bind(chunk.iter().map(|e| e.job_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.event.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.epoch).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.attempt).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.worker.as_deref()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.reason.as_deref()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.by.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.detail.as_deref()).collect::<Vec<_>>())
        .bind(channels)
        .bind(&store.schema)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

/// Records `events`, commits, then prints their lines and raises `notify`.
pub(crate) async fn commit(
    mut tx: Tx,
    store: &PostgresStore,
    at: i64,
    events: &[PendingEvent],
    notify: Notify,
) -> Result<()> {
    record(&mut tx, store, at, events, notify).await?;
    tx.commit().await.map_err(db_error)?;
    notify.raise(store);
    emit_committed(events, at);
    Ok(())
}

/// Ends a transaction that changed nothing.
pub(crate) async fn rollback(tx: Tx) -> Result<()> {
    tx.rollback().await.map_err(db_error)
}

async fn load_job(tx: &mut Tx, id: JobId, lock: bool) -> Result<Job> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
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

pub(crate) async fn enqueue(store: &PostgresStore, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = store.begin().await?;
    let now = store.db_now(&mut tx).await?;
    // Sorted, so concurrent enqueues registering the same new queues take
    // their index locks in one order.
    let mut queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    sqlx::query("INSERT INTO queues (name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING")
        .bind(&queues)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;

    let mut out: Vec<Option<Enqueued>> = vec![None; jobs.len()];
    let mut events = Vec::with_capacity(jobs.len());
    // Plain jobs go in multi-row inserts; unique jobs one by one, since each
    // must see the ones inserted before it.
    let mut plain: Vec<(usize, Job)> = Vec::with_capacity(jobs.len());
    for (i, nj) in jobs.into_iter().enumerate() {
        let job = materialize(&store.config, nj, now);
        if job.unique_key.is_some() {
            let (job, created) = enqueue_unique(&mut tx, job).await?;
            if created {
                events.push(enqueued_event(&job));
            }
            out[i] = Some(Enqueued { job, created });
        } else {
            plain.push((i, job));
        }
    }
    for chunk in plain.chunks(CHUNK) {
        let rows: Vec<&Job> = chunk.iter().map(|(_, j)| j).collect();
        let ids = insert_jobs(&mut tx, &rows, false).await?;
        if ids.len() != rows.len() {
            return Err(StoreError::Database {
                message: format!("inserted {} jobs of {}", ids.len(), rows.len()),
                transient: false,
            });
        }
        for ((i, job), id) in chunk.iter().zip(ids) {
            let job = with_id(job.clone(), id);
            events.push(enqueued_event(&job));
            out[*i] = Some(Enqueued { job, created: true });
        }
    }
    commit(tx, store, now, &events, Notify::BOTH).await?;
    Ok(out
        .into_iter()
        .map(|e| e.expect("every job answered"))
        .collect())
}

/// Inserts a job with a unique key unless a live job holds the key, and then
/// returns that job. Race-free: `ON CONFLICT DO NOTHING` waits for a
/// concurrent inserter of the same key to commit or roll back.
pub(crate) async fn enqueue_unique(tx: &mut Tx, job: Job) -> Result<(Job, bool)> {
    let key = job.unique_key.clone().expect("a unique job");
    let select = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE unique_key = $1 \
         AND state NOT IN ('succeeded', 'failed', 'cancelled')"
    );
    // The holder can finish between the insert and the select; then the key
    // is free and the insert is tried again. Bounded, as a safety net.
    for _ in 0..16 {
        if let Some(id) = insert_jobs(tx, &[&job], true).await?.first() {
            return Ok((with_id(job, *id), true));
        }
        if let Some(row) = sqlx::query(AssertSqlSafe(select.clone()))
            .bind(&key)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_error)?
        {
            return Ok((job_from_row(&row)?, false));
        }
    }
    Err(StoreError::Database {
        message: format!("unique key {key:?} kept changing hands; try again"),
        transient: true,
    })
}

/// Inserts rows in one statement (one array per column) and returns the new
/// ids in row order. With `unique`, a row whose unique key a live job holds
/// is skipped (no id returned for it).
pub(crate) async fn insert_jobs(tx: &mut Tx, jobs: &[&Job], unique: bool) -> Result<Vec<JobId>> {
    let sql = format!(
        "INSERT INTO jobs (queue, kind, state, payload, priority, max_attempts, available_at, \
           max_run_duration_ms, heartbeat_timeout_ms, retry_on, idempotency_key, unique_key, command, \
           max_turns, created_at, schedule, nominal_at, on_success, requires) \
         SELECT q, k, s, p, pr, ma, av, mrd, hbt, ro, ik, uk, cmd, mt, ca, sch, nom, os, rq \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::int[], \
                     $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::text[], $12::text[], \
                     $13::text[], $14::bigint[], $15::bigint[], $16::text[], $17::bigint[], \
                     $18::text[], $19::text[]) \
           AS t(q, k, s, p, pr, ma, av, mrd, hbt, ro, ik, uk, cmd, mt, ca, sch, nom, os, rq) \
         {}RETURNING id",
        if unique {
            "ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL \
               AND state NOT IN ('succeeded', 'failed', 'cancelled') DO NOTHING "
        } else {
            ""
        }
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(jobs.iter().map(|j| j.queue.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.state.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| to_json(&j.payload)).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.priority).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.max_attempts).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.available_at.0).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|j| duration_millis(j.max_run_duration))
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| duration_millis(j.heartbeat_timeout))
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| j.retry_on.as_ref().map(to_json))
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| (!j.idempotency_key.is_empty()).then_some(j.idempotency_key.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| j.unique_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| j.command.as_ref().map(to_json))
                .collect::<Vec<_>>(),
        )
        .bind(jobs.iter().map(|j| j.max_turns).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.created_at.0).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|j| j.schedule.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| j.nominal_at.map(|t| t.0))
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| j.on_success.as_ref().map(to_json))
                .collect::<Vec<_>>(),
        )
        // No requirements is NULL: the claim index's common case.
        .bind(
            jobs.iter()
                .map(|j| (!j.requires.is_empty()).then(|| to_json(&j.requires)))
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut **tx)
        .await
        .map_err(db_error)?;
    // The identity's nextval runs row by row in array order within one
    // statement, so ascending ids are row order (RETURNING's own order is
    // unspecified, so sort).
    let mut ids: Vec<JobId> = rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(db_error)?;
    ids.sort_unstable();
    Ok(ids)
}

/// A queue's row as a claim sees it.
struct QueueRow {
    name: String,
    concurrency: Option<i64>,
    paused: bool,
}

/// Claims under the caps.
///
/// Locking: every claim first takes the schema's claim lock — *shared* when
/// no cap exists, *exclusive* when one does — and only then reads the caps
/// and counts running jobs. Capped claims are therefore serialized with each
/// other and with the uncapped claims in flight (a cap set meanwhile makes
/// the next capped claim wait for them), while uncapped claims run in
/// parallel, kept apart by `SKIP LOCKED`. A claim that finds a cap under the
/// shared lock rolls back and starts again exclusively. Jobs leave `running`
/// without the lock (finish, reap), which can only make a count too high,
/// never too low.
pub(crate) async fn claim(store: &PostgresStore, p: ClaimParams) -> Result<Vec<Job>> {
    if p.limit == 0 {
        return Ok(Vec::new());
    }
    let mut exclusive = store.caps_hint.load(Ordering::Relaxed);
    loop {
        let mut tx = store.begin().await?;
        let lock = if exclusive {
            "SELECT pg_advisory_xact_lock($1)"
        } else {
            "SELECT pg_advisory_xact_lock_shared($1)"
        };
        sqlx::query(lock)
            .bind(store.claim_lock_key)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        // Read after the lock: the clock (a wait must not shorten leases),
        // the caps and the counts.
        let row = sqlx::query(
            "SELECT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint + $1, \
                    (SELECT value FROM settings WHERE key = 'global_concurrency')",
        )
        .bind(store.offset())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        let now: i64 = row.try_get(0).map_err(db_error)?;
        let global: Option<u64> = row
            .try_get::<Option<String>, _>(1)
            .map_err(db_error)?
            .and_then(|v| v.parse().ok());
        let queues = sqlx::query("SELECT name, concurrency, paused FROM queues")
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?
            .iter()
            .map(|r| {
                Ok(QueueRow {
                    name: r.try_get(0)?,
                    concurrency: r.try_get(1)?,
                    paused: r.try_get(2)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(db_error)?;
        let capped = global.is_some() || queues.iter().any(|q| q.concurrency.is_some());
        store.caps_hint.store(capped, Ordering::Relaxed);
        if capped && !exclusive {
            rollback(tx).await?;
            exclusive = true;
            continue;
        }
        return claim_locked(store, tx, now, &p, global, &queues, capped).await;
    }
}

async fn claim_locked(
    store: &PostgresStore,
    mut tx: Tx,
    now: i64,
    p: &ClaimParams,
    global: Option<u64>,
    queues: &[QueueRow],
    capped: bool,
) -> Result<Vec<Job>> {
    // Forced runs first, under the same claim lock: they skip the cap check
    // at this, their first, claim, and count toward the caps (also for the
    // rest of this claim) while they run.
    let forced = crate::schedule::forced_candidates(
        &mut tx,
        p.queues.as_deref(),
        &p.kinds,
        &p.labels,
        p.limit,
    )
    .await?;
    let limit = p.limit - forced.len() as u32;
    let (mut picked, counted_at) = pick_under_caps(
        &mut tx,
        p,
        limit,
        global,
        queues,
        capped,
        &forced,
        store.offset(),
    )
    .await?;
    // The claim's instant is taken after the running count's snapshot, so
    // every run end the count saw is recorded earlier than this claim: the
    // event history replays the caps exactly as the claim judged them.
    let now = counted_at.map_or(now, |t| t.max(now));
    picked.extend(forced.iter().map(|(id, _)| *id));
    if picked.is_empty() {
        rollback(tx).await?;
        return Ok(Vec::new());
    }

    let update = format!(
        "UPDATE jobs SET state = 'running', epoch = epoch + 1, attempt = attempt + 1, \
           claimed_by = $1, claimed_at = $2, heartbeat_at = $2, heartbeats = $3, heartbeat_count = 0, \
           cancel_requested_at = NULL, progress = NULL, turns = 0, \
           progress_at = $2, stalled_at = NULL, escalated_at = NULL, \
           lease_expires_at = CASE WHEN $3 THEN least($2 + max_run_duration_ms, $2 + heartbeat_timeout_ms) \
                                   ELSE $2 + max_run_duration_ms END \
         WHERE id = ANY($4::bigint[]) AND state = 'available' RETURNING {JOB_COLUMNS}"
    );
    let rows = sqlx::query(AssertSqlSafe(update))
        .bind(&p.worker)
        .bind(now)
        .bind(p.heartbeats)
        .bind(&picked)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
    let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
    jobs.sort_by_key(|j| (j.priority, j.available_at, j.id));
    crate::schedule::record_claims(&mut tx, &jobs, now).await?;
    let events: Vec<PendingEvent> = jobs
        .iter()
        .map(|j| PendingEvent::for_job(j, EventKind::Claimed, Actor::Executor))
        .collect();
    commit(tx, store, now, &events, Notify::DEADLINES).await?;
    Ok(jobs)
}

/// The jobs (locked) a claim of up to `limit` takes under the caps, counting
/// the forced runs it is also taking as running and never picking them
/// again; with caps, also the store's clock read after the count's snapshot.
#[allow(clippy::too_many_arguments)]
async fn pick_under_caps(
    tx: &mut Tx,
    p: &ClaimParams,
    limit: u32,
    global: Option<u64>,
    queues: &[QueueRow],
    capped: bool,
    forced: &[(JobId, String)],
    clock_offset: i64,
) -> Result<(Vec<JobId>, Option<i64>)> {
    if limit == 0 {
        return Ok((Vec::new(), None));
    }
    let mut running: HashMap<String, u64> = HashMap::new();
    let mut counted_at = None;
    if capped {
        // clock_timestamp() runs after the statement's snapshot is taken.
        for r in sqlx::query(
            "SELECT c.now, q.queue, q.n \
             FROM (SELECT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint + $1 AS now) c \
             LEFT JOIN (SELECT queue, COUNT(*) AS n FROM jobs WHERE state = 'running' GROUP BY queue) q \
               ON true",
        )
        .bind(clock_offset)
        .fetch_all(&mut **tx)
        .await
        .map_err(db_error)?
        {
            counted_at = Some(r.try_get::<i64, _>(0).map_err(db_error)?);
            if let Some(queue) = r.try_get::<Option<String>, _>(1).map_err(db_error)? {
                running.insert(
                    queue,
                    r.try_get::<Option<i64>, _>(2)
                        .map_err(db_error)?
                        .unwrap_or(0)
                        .max(0) as u64,
                );
            }
        }
    }
    for (_, queue) in forced {
        *running.entry(queue.clone()).or_default() += 1;
    }
    let total_running: u64 = running.values().sum();
    let global_room = global.map_or(u64::MAX, |g| g.saturating_sub(total_running));
    let take = u64::from(limit).min(global_room);
    if take == 0 {
        return Ok((Vec::new(), counted_at));
    }

    // Per-queue room for the queues this claimer may take from.
    let mut room: HashMap<String, u64> = HashMap::new();
    for q in queues {
        if p.queues
            .as_ref()
            .is_some_and(|wanted| !wanted.contains(&q.name))
        {
            continue;
        }
        if q.paused {
            continue;
        }
        let cap = q.concurrency.map_or(u64::MAX, |c| c.max(0) as u64);
        let free = cap.saturating_sub(running.get(&q.name).copied().unwrap_or(0));
        if free > 0 {
            room.insert(q.name.clone(), free);
        }
    }
    if room.is_empty() {
        return Ok((Vec::new(), counted_at));
    }

    // The head of each eligible queue, in one statement: the claim index per
    // queue, locking what it returns and skipping rows others hold (and the
    // forced runs this claim already holds). Placement: every claimer takes
    // from the unpinned jobs' index (`requires IS NULL`); a claimer with
    // labels also from the pinned jobs' index, only those whose every
    // requirement is among its labels. A pinned job that does not match is
    // passed over, never a block.
    let (exclude, kinds_param) = if forced.is_empty() {
        ("", "$3")
    } else {
        (" AND id <> ALL($3::bigint[])", "$4")
    };
    let kinds_bound = matches!(&p.kinds, KindFilter::Only { kinds, .. } if !kinds.is_empty());
    let labels_param = 3 + usize::from(!forced.is_empty()) + usize::from(kinds_bound);
    let kind_clause = match &p.kinds {
        KindFilter::Any => String::new(),
        KindFilter::Only { kinds, commands } => match (kinds.is_empty(), commands) {
            (true, true) => " AND command IS NOT NULL".to_string(),
            (true, false) => " AND FALSE".to_string(),
            (false, true) => {
                format!(" AND (kind = ANY({kinds_param}::text[]) OR command IS NOT NULL)")
            }
            (false, false) => format!(" AND kind = ANY({kinds_param}::text[])"),
        },
    };
    let heads = |placement: &str| {
        format!(
            "SELECT c.id, c.priority, c.available_at, c.queue \
             FROM unnest($1::text[], $2::bigint[]) AS r(queue, room) \
             CROSS JOIN LATERAL ( \
               SELECT id, priority, available_at, queue FROM jobs \
               WHERE state = 'available' AND queue = r.queue{placement}{exclude}{kind_clause} \
               ORDER BY priority, available_at, id LIMIT r.room \
               FOR UPDATE SKIP LOCKED) AS c"
        )
    };
    let mut select = heads(" AND requires IS NULL");
    if !p.labels.is_empty() {
        select.push_str(" UNION ALL ");
        select.push_str(&heads(&format!(
            " AND requires IS NOT NULL AND requires::jsonb <@ ${labels_param}::jsonb"
        )));
    }
    let (names, rooms): (Vec<&str>, Vec<i64>) = room
        .iter()
        .map(|(q, free)| (q.as_str(), (*free).min(take) as i64))
        .unzip();
    let mut q = sqlx::query(AssertSqlSafe(select)).bind(names).bind(rooms);
    if !forced.is_empty() {
        q = q.bind(forced.iter().map(|(id, _)| *id).collect::<Vec<_>>());
    }
    if let KindFilter::Only { kinds, .. } = &p.kinds
        && !kinds.is_empty()
    {
        q = q.bind(kinds);
    }
    if !p.labels.is_empty() {
        q = q.bind(reeve_store::fleet::list_json(&p.labels));
    }
    // (priority, available_at, id, queue)
    let candidates: Vec<(i32, i64, i64, String)> = q
        .fetch_all(&mut **tx)
        .await
        .map_err(db_error)?
        .iter()
        .map(|r| Ok((r.try_get(1)?, r.try_get(2)?, r.try_get(0)?, r.try_get(3)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db_error)?;
    Ok((pick_claims(candidates, room, take), counted_at))
}

pub(crate) async fn heartbeat(store: &PostgresStore, p: HeartbeatParams) -> Result<HeartbeatAck> {
    // One statement, one instant: the CTE runs once (clock_timestamp() is
    // volatile, so it is never inlined). Progress (SPEC §10): a turn count
    // above the stored one or a note that differs from the stored one (an
    // executor may resend its last note on every beat); SET reads the row
    // as it was before.
    let row = sqlx::query(
        "WITH t AS (SELECT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint + $1 AS now) \
         UPDATE jobs SET heartbeat_at = t.now, heartbeat_count = jobs.heartbeat_count + 1, \
           lease_expires_at = CASE WHEN jobs.heartbeats AND jobs.cancel_requested_at IS NULL \
                                   THEN least(jobs.claimed_at + jobs.max_run_duration_ms, \
                                              t.now + jobs.heartbeat_timeout_ms) \
                                   ELSE jobs.lease_expires_at END, \
           progress_at = CASE WHEN $4::bigint > jobs.turns \
                                OR ($5::text IS NOT NULL AND $5::text IS DISTINCT FROM jobs.progress) \
                              THEN t.now ELSE jobs.progress_at END, \
           stalled_at = CASE WHEN $4::bigint > jobs.turns \
                               OR ($5::text IS NOT NULL AND $5::text IS DISTINCT FROM jobs.progress) \
                             THEN NULL ELSE jobs.stalled_at END, \
           escalated_at = CASE WHEN $4::bigint > jobs.turns \
                                 OR ($5::text IS NOT NULL AND $5::text IS DISTINCT FROM jobs.progress) \
                               THEN NULL ELSE jobs.escalated_at END, \
           turns = coalesce($4, jobs.turns), progress = coalesce($5, jobs.progress) \
         FROM t \
         WHERE jobs.id = $2 AND jobs.epoch = $3 AND jobs.state = 'running' \
           AND jobs.lease_expires_at > t.now \
         RETURNING jobs.lease_expires_at, jobs.cancel_requested_at, jobs.turns, jobs.max_turns",
    )
    .bind(store.offset())
    .bind(p.job)
    .bind(p.epoch)
    .bind(p.turns)
    .bind(p.progress.as_deref())
    .fetch_optional(&store.pool)
    .await
    .map_err(db_error)?;
    match row {
        Some(r) => Ok(HeartbeatAck {
            lease_expires_at: Timestamp(r.try_get(0).map_err(db_error)?),
            cancel_requested: r.try_get::<Option<i64>, _>(1).map_err(db_error)?.is_some(),
            turns: r.try_get(2).map_err(db_error)?,
            max_turns: r.try_get(3).map_err(db_error)?,
        }),
        None => {
            let row = sqlx::query("SELECT state, epoch FROM jobs WHERE id = $1")
                .bind(p.job)
                .fetch_optional(&store.pool)
                .await
                .map_err(db_error)?
                .ok_or(StoreError::NotFound(p.job))?;
            let state: JobState = row
                .try_get::<String, _>(0)
                .map_err(db_error)?
                .parse()
                .map_err(|e: String| StoreError::Database {
                    message: e,
                    transient: false,
                })?;
            let epoch: i64 = row.try_get(1).map_err(db_error)?;
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

/// Applies a failure transition to a running job (locked by the caller),
/// fenced on its epoch.
async fn apply_failure(
    tx: &mut Tx,
    job: &Job,
    t: &reeve_store::transition::FailureTransition,
    error: Option<&str>,
    now: i64,
) -> Result<Job> {
    let terminal = t.state.is_terminal();
    let sql = format!(
        "UPDATE jobs SET state = $1, failure_reason = $2, last_error = $3, available_at = $4, \
           finished_at = $5 \
         WHERE id = $6 AND epoch = $7 AND state = 'running' RETURNING {JOB_COLUMNS}"
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

pub(crate) async fn finish(store: &PostgresStore, batch: Vec<Finish>) -> Result<Vec<Result<Job>>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = store.begin().await?;
    let mut ids: Vec<i64> = batch.iter().map(|f| f.job).collect();
    ids.sort_unstable();
    ids.dedup();
    // The schedules of the batch's jobs first (their settlements below), then
    // every row of the batch, in id order, so two batches (or a batch and a
    // cancel, or a firing) can never deadlock; the fenced writes below then
    // see rows nobody else can change.
    crate::schedule::lock_schedules_of(&mut tx, &ids).await?;
    // The clock once the rows are locked (the aggregate locks them before
    // the outer row is produced): a write-back that waited for a racing
    // transition of its job is stamped after it, never before.
    let now: i64 = sqlx::query_scalar(
        "SELECT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint + $2 \
         FROM (SELECT count(*) FROM ( \
           SELECT id FROM jobs WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE) AS j) AS locked",
    )
    .bind(&ids)
    .bind(store.offset())
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    let mut answers = Vec::with_capacity(batch.len());
    let mut events = Vec::with_capacity(batch.len());
    let mut freed = false;
    let fenced = if reeve_core::fault::active(reeve_core::fault::SKIP_FENCING) {
        "$4::bigint IS NOT NULL" // test builds only: the chaos harness's planted bug
    } else {
        "epoch = $4 AND state = 'running'"
    };
    let success_sql = format!(
        "UPDATE jobs SET state = 'succeeded', finished_at = $1, result = $2, failure_reason = NULL, \
           last_error = NULL \
         WHERE id = $3 AND {fenced} RETURNING {JOB_COLUMNS}"
    );
    for f in batch {
        let answer = match &f.outcome {
            Outcome::Succeeded { result } => {
                let row = sqlx::query(AssertSqlSafe(success_sql.clone()))
                    .bind(now)
                    .bind(result.as_ref().map(to_json))
                    .bind(f.job)
                    .bind(f.epoch)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_error)?;
                match row {
                    Some(row) => {
                        let job = job_from_row(&row)?;
                        events.push(PendingEvent::for_job(
                            &job,
                            EventKind::Succeeded,
                            Actor::Executor,
                        ));
                        Ok(job)
                    }
                    None => match load_job(&mut tx, f.job, false).await {
                        Ok(job) => Err(fence(&job, f.epoch)
                            .unwrap_or(StoreError::NotRunning { state: job.state })),
                        Err(e) => Err(e),
                    },
                }
            }
            Outcome::Failed { reason, error } => match load_job(&mut tx, f.job, false).await {
                Err(e) => Err(e),
                Ok(job) => match fence(&job, f.epoch) {
                    Some(refusal) => Err(refusal),
                    None => {
                        let t = failure_transition(&store.config, &job, *reason, now);
                        let error = error.as_deref().map(|e| truncate(e, MAX_ERROR_LEN));
                        let updated = apply_failure(&mut tx, &job, &t, error, now).await?;
                        events.push(
                            PendingEvent::for_job(&updated, t.event, Actor::Executor)
                                .reason(t.reason.as_str())
                                .detail(error.map(|e| truncate(e, 200).to_string())),
                        );
                        Ok(updated)
                    }
                },
            },
        };
        if let (Ok(job), Some(output)) = (&answer, &f.output)
            && !output.is_empty()
        {
            sqlx::query(
                "INSERT INTO run_output (job_id, attempt, output) VALUES ($1, $2, $3) \
                 ON CONFLICT (job_id, attempt) DO UPDATE SET output = excluded.output",
            )
            .bind(job.id)
            .bind(job.attempt)
            .bind(output.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        freed |= answer.is_ok();
        answers.push(answer);
    }
    // Follow-ups of the jobs that just succeeded, from the rows already read
    // (nothing more runs when none names one).
    let parents: Vec<&Job> = answers
        .iter()
        .flatten()
        .filter(|j| j.state == JobState::Succeeded && j.on_success.is_some())
        .collect();
    events.extend(enqueue_follow_ups(store, &mut tx, &parents, now).await?);
    let ended: Vec<Job> = answers
        .iter()
        .flatten()
        .filter(|j| reeve_store::settle::settles(j))
        .cloned()
        .collect();
    let settled = crate::schedule::settle_jobs(store, &mut tx, &ended, now).await?;
    let failed: Vec<&Job> = answers
        .iter()
        .flatten()
        .filter(|j| j.state == JobState::Failed)
        .collect();
    let outbox = crate::supervision::record_ended(store, &mut tx, &failed, &settled, now).await?;
    let notify = if freed { Notify::BOTH } else { Notify::NONE };
    commit(tx, store, now, &events, notify).await?;
    crate::schedule::emit_settled(&settled);
    if outbox {
        store.signals.outbox_changed();
    }
    Ok(answers)
}

/// Enqueues the follow-ups of `parents` (jobs that just succeeded in `tx`)
/// and returns their `enqueued` events, to be recorded with the commit. A
/// follow-up whose unique key (`followup:<parent id>`) a live job already
/// holds is not enqueued again.
async fn enqueue_follow_ups(
    store: &PostgresStore,
    tx: &mut Tx,
    parents: &[&Job],
    now: i64,
) -> Result<Vec<PendingEvent>> {
    if parents.is_empty() {
        return Ok(Vec::new());
    }
    let jobs: Vec<Job> = parents
        .iter()
        .filter_map(|p| follow_up(p))
        .map(|nj| materialize(&store.config, nj, now))
        .collect();
    // Sorted, as in `enqueue`.
    let mut queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    sqlx::query("INSERT INTO queues (name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING")
        .bind(&queues)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    let mut events = Vec::with_capacity(jobs.len());
    for job in jobs {
        let (job, created) = enqueue_unique(tx, job).await?;
        if created {
            events.push(enqueued_event(&job));
        }
    }
    Ok(events)
}

pub(crate) async fn cancel(store: &PostgresStore, id: JobId) -> Result<Job> {
    let mut tx = store.begin().await?;
    // The job's schedule before the job (see `finish`), and the clock once
    // the job is locked, so a cancel that waited is stamped after the wait.
    crate::schedule::lock_schedules_of(&mut tx, &[id]).await?;
    let job = load_job(&mut tx, id, true).await?;
    let now = store.db_now(&mut tx).await?;
    let (updated, event) = match job.state {
        JobState::Succeeded | JobState::Failed | JobState::Cancelled => {
            rollback(tx).await?;
            return Err(StoreError::InvalidState {
                action: "cancel",
                state: job.state,
            });
        }
        JobState::Running => {
            if job.cancel_requested_at.is_some() {
                rollback(tx).await?;
                return Ok(job);
            }
            let grace = duration_millis(store.config.cancel_grace);
            let sql = format!(
                "UPDATE jobs SET cancel_requested_at = $1, lease_expires_at = least(lease_expires_at, $1 + $2) \
                 WHERE id = $3 AND epoch = $4 AND state = 'running' RETURNING {JOB_COLUMNS}"
            );
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(now)
                .bind(grace)
                .bind(id)
                .bind(job.epoch)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?
                .ok_or(StoreError::NotRunning { state: job.state })?;
            let job = job_from_row(&row)?;
            let event = PendingEvent::for_job(&job, EventKind::CancelRequested, Actor::Operator);
            (job, event)
        }
        JobState::Scheduled | JobState::Available | JobState::Retryable => {
            let sql = format!(
                "UPDATE jobs SET state = 'cancelled', failure_reason = 'cancelled', finished_at = $1 \
                 WHERE id = $2 AND epoch = $3 AND state = $4 RETURNING {JOB_COLUMNS}"
            );
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(now)
                .bind(id)
                .bind(job.epoch)
                .bind(job.state.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?
                .ok_or(StoreError::InvalidState {
                    action: "cancel",
                    state: job.state,
                })?;
            let job = job_from_row(&row)?;
            let event = PendingEvent::for_job(&job, EventKind::Cancelled, Actor::Operator)
                .reason("cancelled");
            (job, event)
        }
    };
    let settled =
        crate::schedule::settle_jobs(store, &mut tx, std::slice::from_ref(&updated), now).await?;
    let outbox =
        crate::supervision::record_ended(store, &mut tx, &[&updated], &settled, now).await?;
    commit(tx, store, now, &[event], Notify::DEADLINES).await?;
    crate::schedule::emit_settled(&settled);
    if outbox {
        store.signals.outbox_changed();
    }
    Ok(updated)
}

pub(crate) async fn retry(store: &PostgresStore, id: JobId) -> Result<Job> {
    let mut tx = store.begin().await?;
    let job = load_job(&mut tx, id, true).await?;
    // After the lock: a retry that waited is stamped after the wait.
    let now = store.db_now(&mut tx).await?;
    if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
        rollback(tx).await?;
        return Err(StoreError::InvalidState {
            action: "retry",
            state: job.state,
        });
    }
    let sql = format!(
        "UPDATE jobs SET state = 'available', attempt = 0, available_at = $1, finished_at = NULL, \
           cancel_requested_at = NULL, failure_reason = NULL, last_error = NULL \
         WHERE id = $2 AND epoch = $3 AND state = $4 RETURNING {JOB_COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(now)
        .bind(id)
        .bind(job.epoch)
        .bind(job.state.as_str())
        .fetch_optional(&mut *tx)
        .await;
    let row = match row {
        Ok(Some(row)) => row,
        Ok(None) => {
            return Err(StoreError::InvalidState {
                action: "retry",
                state: job.state,
            });
        }
        // The failed statement aborted the transaction; dropping it rolls back.
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
    commit(tx, store, now, &events, Notify::WORK).await?;
    Ok(updated)
}

pub(crate) async fn reap_expired(store: &PostgresStore, limit: u32) -> Result<Vec<Job>> {
    let mut tx = store.begin().await?;
    let now = store.db_now(&mut tx).await?;
    // The candidates unlocked first: a scheduled job's schedule must be
    // locked before the job (see `finish`).
    let candidates: Vec<(JobId, Option<String>)> = sqlx::query_as(
        "SELECT id, schedule FROM jobs WHERE state = 'running' AND lease_expires_at <= $1 \
         ORDER BY lease_expires_at LIMIT $2",
    )
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    if candidates.is_empty() {
        rollback(tx).await?;
        return Ok(Vec::new());
    }
    let ids: Vec<JobId> = candidates.iter().map(|(id, _)| *id).collect();
    if candidates.iter().any(|(_, s)| s.is_some()) {
        crate::schedule::lock_schedules_of(&mut tx, &ids).await?;
    }
    // SKIP LOCKED: a run being finished or cancelled right now is left to
    // that transaction (or to the next reap); the conditions again, since
    // the candidates were read unlocked.
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($3::bigint[]) \
           AND state = 'running' AND lease_expires_at <= $1 \
         ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(now)
        .bind(i64::from(limit))
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
    if rows.is_empty() {
        rollback(tx).await?;
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
    let settled = crate::schedule::settle_jobs(store, &mut tx, &reaped, now).await?;
    let ended: Vec<&Job> = reaped.iter().collect();
    let outbox = crate::supervision::record_ended(store, &mut tx, &ended, &settled, now).await?;
    commit(tx, store, now, &events, Notify::BOTH).await?;
    crate::schedule::emit_settled(&settled);
    if outbox {
        store.signals.outbox_changed();
    }
    Ok(reaped)
}

pub(crate) async fn promote_due(store: &PostgresStore, limit: u32) -> Result<u64> {
    let mut tx = store.begin().await?;
    let now = store.db_now(&mut tx).await?;
    let rows = sqlx::query(
        "UPDATE jobs SET state = 'available' WHERE id IN ( \
           SELECT id FROM jobs WHERE state IN ('scheduled', 'retryable') AND available_at <= $1 \
           ORDER BY available_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         AND state IN ('scheduled', 'retryable') \
         RETURNING id, queue, kind, epoch, attempt",
    )
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    if rows.is_empty() {
        rollback(tx).await?;
        return Ok(0);
    }
    let events: Vec<PendingEvent> = rows
        .iter()
        .map(|r| {
            Ok(PendingEvent {
                job_id: r.try_get(0)?,
                event: EventKind::Available,
                epoch: r.try_get(3)?,
                attempt: r.try_get(4)?,
                worker: None,
                reason: None,
                by: Actor::Engine,
                detail: None,
                queue: r.try_get(1)?,
                kind: r.try_get(2)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db_error)?;
    commit(tx, store, now, &events, Notify::WORK).await?;
    Ok(rows.len() as u64)
}

pub(crate) async fn update_queue(
    store: &PostgresStore,
    name: &str,
    patch: QueuePatch,
) -> Result<()> {
    let mut tx = store.begin().await?;
    sqlx::query(
        "INSERT INTO queues (name, concurrency, paused) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET \
           concurrency = CASE WHEN $4 THEN excluded.concurrency ELSE queues.concurrency END, \
           paused = CASE WHEN $5 THEN excluded.paused ELSE queues.paused END",
    )
    .bind(name)
    .bind(patch.concurrency.flatten().map(i64::from))
    .bind(patch.paused.unwrap_or(false))
    .bind(patch.concurrency.is_some())
    .bind(patch.paused.is_some())
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    commit(tx, store, 0, &[], Notify::WORK).await
}

pub(crate) async fn set_limits(store: &PostgresStore, limits: Limits) -> Result<()> {
    let mut tx = store.begin().await?;
    match limits.global {
        Some(n) => {
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES ('global_concurrency', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(n.to_string())
            .execute(&mut *tx)
            .await
        }
        None => {
            sqlx::query("DELETE FROM settings WHERE key = 'global_concurrency'")
                .execute(&mut *tx)
                .await
        }
    }
    .map_err(db_error)?;
    commit(tx, store, 0, &[], Notify::WORK).await
}

pub(crate) async fn prune(store: &PostgresStore, older_than: Duration, batch: u32) -> Result<u64> {
    let mut tx = store.begin().await?;
    let cutoff = store
        .db_now(&mut tx)
        .await?
        .saturating_sub(duration_millis(older_than));
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1 \
         AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at LIMIT $2 \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(cutoff)
    .bind(i64::from(batch))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    if ids.is_empty() {
        rollback(tx).await?;
        return Ok(0);
    }
    for sql in [
        "DELETE FROM events WHERE job_id = ANY($1::bigint[])",
        "DELETE FROM run_output WHERE job_id = ANY($1::bigint[])",
        "DELETE FROM checkpoints WHERE job_id = ANY($1::bigint[])",
        "DELETE FROM mail WHERE job_id = ANY($1::bigint[])",
        "DELETE FROM jobs WHERE id = ANY($1::bigint[])",
    ] {
        sqlx::query(sql)
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)?;
    Ok(ids.len() as u64)
}
