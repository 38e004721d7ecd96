//! Supervision and the webhook outbox on SQLite (SPEC §10).
//!
//! **Invariants.** Like every write of this backend, each step runs on the
//! single writer connection inside `BEGIN IMMEDIATE`, so a pass's read of
//! the runs to stall (or escalate) and its conditional update of exactly
//! those rows, their mail, events and outbox rows are one atomic step, also
//! against other processes sharing the file: a run is stalled, mailed and
//! escalated once. The supervisor reads running jobs through the
//! `jobs_lease` partial index (live leases only), so a pass costs what the
//! running runs cost, whatever the table's size. Outbox rows of a terminal
//! transition are written by [`record_ended`] inside that transition's
//! transaction; a delivery claim is one `UPDATE … RETURNING` that pushes the
//! rows' `due_at` past the claim lease and counts the attempt, and a result
//! is recorded only for the attempt that holds the row.

use std::time::Duration;

use reeve_core::Job;
use reeve_core::time::duration_millis;
use reeve_store::Result;
use reeve_store::outbox::{self, Delivery, DeliveryOutcome, NewDelivery};
use reeve_store::settle::Settlement;
use reeve_store::supervision::{
    SuperviseParams, Supervised, cutoffs, escalated_event, next_in, stall_mail, stalled_event,
};
use reeve_store::transition::PendingEvent;
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};

use crate::SqliteStore;
use crate::rows::{JOB_COLUMNS, db_error, job_from_row};
use crate::write::{commit, insert_events};

/// Writes outbox rows in the caller's transaction.
pub(crate) async fn insert_deliveries(
    tx: &mut Transaction<'static, Sqlite>,
    rows: &[NewDelivery],
    now: i64,
) -> Result<()> {
    for r in rows {
        sqlx::query(
            "INSERT INTO outbox (target, event, delivery, body, created_at, due_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        )
        .bind(&r.target)
        .bind(r.event.as_str())
        .bind(&r.delivery)
        .bind(&r.body)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

/// The outbox rows of a terminal transition, in its transaction: the
/// `job_failed` rows of `ended` jobs now `failed` and the
/// `schedule_auto_paused` rows of `settled`, for subscribed events only.
/// Returns whether it wrote any (the caller raises the outbox signal after
/// its commit).
pub(crate) async fn record_ended(
    store: &SqliteStore,
    tx: &mut Transaction<'static, Sqlite>,
    ended: &[&Job],
    settled: &[(String, Settlement)],
    now: i64,
) -> Result<bool> {
    if store.config.webhooks.is_empty() {
        return Ok(false);
    }
    let rows = outbox::ended(&store.config.webhooks, ended, settled, now);
    insert_deliveries(tx, &rows, now).await?;
    Ok(!rows.is_empty())
}

async fn live_running(
    tx: &mut Transaction<'static, Sqlite>,
    condition: &str,
    now: i64,
    cutoff: i64,
    limit: u32,
) -> Result<Vec<Job>> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' AND lease_expires_at > ?1 \
           AND {condition} <= ?2 ORDER BY {condition}, id LIMIT ?3"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(now)
        .bind(cutoff)
        .bind(i64::from(limit))
        .fetch_all(&mut **tx)
        .await
        .map_err(db_error)?
        .iter()
        .map(job_from_row)
        .collect()
}

/// Sets `column` to `now` on `jobs` (read in this transaction, so the
/// condition that selected them still holds under the write lock).
async fn mark(
    tx: &mut Transaction<'static, Sqlite>,
    column: &str,
    jobs: &[Job],
    now: i64,
) -> Result<()> {
    let placeholders = vec!["?"; jobs.len()].join(",");
    let sql = format!("UPDATE jobs SET {column} = ? WHERE id IN ({placeholders})");
    let mut q = sqlx::query(AssertSqlSafe(sql)).bind(now);
    for j in jobs.iter() {
        q = q.bind(j.id);
    }
    q.execute(&mut **tx).await.map_err(db_error)?;
    Ok(())
}

/// The earliest `progress_at` of the live runs not stalled and the
/// earliest `stalled_at` of the live runs not escalated, at `now`.
async fn earliest(store: &SqliteStore, now: i64) -> Result<(Option<i64>, Option<i64>)> {
    let row = sqlx::query(
        "SELECT min(CASE WHEN stalled_at IS NULL THEN progress_at END), \
                min(CASE WHEN escalated_at IS NULL THEN stalled_at END) \
         FROM jobs WHERE state = 'running' AND lease_expires_at > ?",
    )
    .bind(now)
    .fetch_one(&store.reader)
    .await
    .map_err(db_error)?;
    Ok((row.get(0), row.get(1)))
}

pub(crate) async fn supervise(store: &SqliteStore, p: SuperviseParams) -> Result<Supervised> {
    p.validate()?;
    let mut out = Supervised::default();
    let limit = p.limit.max(1);
    // A look through the readers first: a pass with nothing due (the usual
    // one) never takes the write lock.
    let now = store.now_ms();
    let (progress, stall) = earliest(store, now).await?;
    let (stall_cutoff, escalate_cutoff) = cutoffs(&p, now);
    let stall_due = progress.is_some_and(|t| t <= stall_cutoff.0);
    let escalation_due = stall.is_some_and(|t| t <= escalate_cutoff.0);
    if !stall_due && !escalation_due {
        out.next_in = next_in(&p, progress, stall, now);
        return Ok(out);
    }

    // Stalls: live runs without progress since the cutoff, not yet stalled.
    if stall_due {
        let mut tx = store.begin().await?;
        let now = store.now_ms();
        let (stall_cutoff, _) = cutoffs(&p, now);
        let mut stalled = live_running(
            &mut tx,
            "(CASE WHEN stalled_at IS NULL THEN progress_at END)",
            now,
            stall_cutoff.0,
            limit,
        )
        .await?;
        if !stalled.is_empty() {
            mark(&mut tx, "stalled_at", &stalled, now).await?;
            let mut events = Vec::with_capacity(stalled.len());
            for job in &mut stalled {
                job.stalled_at = Some(reeve_core::Timestamp(now));
                let mail = stall_mail(job, now);
                sqlx::query(
                    "INSERT INTO mail (job_id, at, sender, subject, body) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(mail.job_id)
                .bind(now)
                .bind(&mail.sender)
                .bind(&mail.subject)
                .bind(&mail.body)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
                events.push(stalled_event(job, now));
            }
            insert_events(&mut tx, now, &events).await?;
            commit(tx, now, &events).await?;
            out.stalled = stalled;
        }
    }

    // Escalations: stalls older than the cutoff, not yet escalated.
    if escalation_due {
        let mut tx = store.begin().await?;
        let now = store.now_ms();
        let (_, escalate_cutoff) = cutoffs(&p, now);
        let mut escalated = live_running(
            &mut tx,
            "(CASE WHEN escalated_at IS NULL THEN stalled_at END)",
            now,
            escalate_cutoff.0,
            limit,
        )
        .await?;
        if !escalated.is_empty() {
            mark(&mut tx, "escalated_at", &escalated, now).await?;
            let mut events: Vec<PendingEvent> = Vec::with_capacity(escalated.len());
            let mut rows = Vec::new();
            for job in &mut escalated {
                job.escalated_at = Some(reeve_core::Timestamp(now));
                events.push(escalated_event(job, now));
                rows.extend(outbox::escalation(&store.config.webhooks, job, now));
            }
            insert_events(&mut tx, now, &events).await?;
            insert_deliveries(&mut tx, &rows, now).await?;
            commit(tx, now, &events).await?;
            if !rows.is_empty() {
                store.signals.outbox_changed();
            }
            out.escalated = escalated;
        }
    }

    // When the next live run would stall or escalate.
    let now = store.now_ms();
    let (progress, stall) = earliest(store, now).await?;
    out.next_in = next_in(&p, progress, stall, now);
    Ok(out)
}

fn delivery_from_row(row: &sqlx::sqlite::SqliteRow) -> Delivery {
    Delivery {
        id: row.get(0),
        target: row.get(1),
        event: row.get(2),
        delivery: row.get(3),
        body: row.get(4),
        attempt: row.get::<i64, _>(5) as i32,
        created_at: reeve_core::Timestamp(row.get(6)),
    }
}

pub(crate) async fn claim_deliveries(
    store: &SqliteStore,
    limit: u32,
    lease: Duration,
) -> Result<Vec<Delivery>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let now = store.now_ms();
    let rows = sqlx::query(
        "UPDATE outbox SET due_at = ?1 + ?2, attempts = attempts + 1 WHERE id IN ( \
           SELECT id FROM outbox WHERE delivered_at IS NULL AND gave_up_at IS NULL \
             AND due_at <= ?1 ORDER BY due_at, id LIMIT ?3) \
         RETURNING id, target, event, delivery, body, attempts, created_at",
    )
    .bind(now)
    .bind(duration_millis(lease))
    .bind(i64::from(limit))
    .fetch_all(&store.writer)
    .await
    .map_err(db_error)?;
    let mut claimed: Vec<Delivery> = rows.iter().map(delivery_from_row).collect();
    claimed.sort_by_key(|d| d.id);
    Ok(claimed)
}

pub(crate) async fn record_delivery(
    store: &SqliteStore,
    id: i64,
    attempt: i32,
    outcome: DeliveryOutcome,
) -> Result<bool> {
    let now = store.now_ms();
    let (delivered, due, gave_up, error) = match &outcome {
        DeliveryOutcome::Delivered => (Some(now), None, None, None),
        DeliveryOutcome::Retry { after, error } => (
            None,
            Some(now.saturating_add(duration_millis(*after))),
            None,
            Some(error.as_str()),
        ),
        DeliveryOutcome::GiveUp { error } => (None, None, Some(now), Some(error.as_str())),
    };
    let done = sqlx::query(
        "UPDATE outbox SET delivered_at = ?1, due_at = coalesce(?2, due_at), gave_up_at = ?3, \
           last_error = coalesce(?4, last_error) \
         WHERE id = ?5 AND attempts = ?6 AND delivered_at IS NULL AND gave_up_at IS NULL",
    )
    .bind(delivered)
    .bind(due)
    .bind(gave_up)
    .bind(error.map(|e| reeve_store::transition::truncate(e, 1000)))
    .bind(id)
    .bind(attempt)
    .execute(&store.writer)
    .await
    .map_err(db_error)?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn next_delivery_in(store: &SqliteStore) -> Result<Option<Duration>> {
    let next: Option<i64> = sqlx::query_scalar(
        "SELECT min(due_at) FROM outbox WHERE delivered_at IS NULL AND gave_up_at IS NULL",
    )
    .fetch_one(&store.reader)
    .await
    .map_err(db_error)?;
    let now = store.now_ms();
    Ok(next.map(|at| Duration::from_millis(at.saturating_sub(now).max(0) as u64)))
}

pub(crate) async fn prune_deliveries(
    store: &SqliteStore,
    older_than: Duration,
    batch: u32,
) -> Result<u64> {
    let cutoff = store.now_ms().saturating_sub(duration_millis(older_than));
    let done = sqlx::query(
        "DELETE FROM outbox WHERE id IN ( \
           SELECT id FROM outbox WHERE (delivered_at IS NOT NULL OR gave_up_at IS NOT NULL) \
             AND created_at < ? ORDER BY created_at LIMIT ?)",
    )
    .bind(cutoff)
    .bind(i64::from(batch))
    .execute(&store.writer)
    .await
    .map_err(db_error)?;
    Ok(done.rows_affected())
}
