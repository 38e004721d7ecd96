//! Supervision and the webhook outbox on PostgreSQL (SPEC §10).
//!
//! **Invariants.**
//! - *A run is stalled, mailed and escalated once.* Each step of
//!   [`supervise`] is one transaction that takes the runs it acts on
//!   `FOR UPDATE SKIP LOCKED` with its whole condition (running, lease live,
//!   not yet stalled or escalated, old enough): a concurrent pass either
//!   skips a locked row or, once the other commits, re-reads it and finds
//!   the condition false. Rows being finished or heartbeated are skipped,
//!   never waited for; the next pass sees them. No schedule row is locked,
//!   so the lock order of `schedule` is kept.
//! - *One clock.* Every instant is the database's, read once per
//!   transaction (plus the test offset).
//! - *Outbox rows commit with their change* ([`record_ended`] runs inside
//!   the terminal transition's transaction), and a claim is one statement
//!   over `FOR UPDATE SKIP LOCKED` candidates that pushes their `due_at`
//!   past the claim lease and counts the attempt, so several daemons never
//!   hold one row at once; a result is recorded only for the attempt that
//!   holds the row.

use std::time::Duration;

use reeve_core::time::duration_millis;
use reeve_core::{Job, Timestamp};
use reeve_store::Result;
use reeve_store::outbox::{self, Delivery, DeliveryOutcome, NewDelivery};
use reeve_store::settle::Settlement;
use reeve_store::supervision::{
    SuperviseParams, Supervised, cutoffs, escalated_event, next_in, stall_mail, stalled_event,
};
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgRow;

use crate::PostgresStore;
use crate::rows::{JOB_COLUMNS, col, db_error, job_from_row};
use crate::write::{Notify, Tx, commit, rollback};

/// Writes outbox rows in the caller's transaction, in one statement.
pub(crate) async fn insert_deliveries(tx: &mut Tx, rows: &[NewDelivery], now: i64) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO outbox (target, event, delivery, body, created_at, due_at) \
         SELECT t, e, d, b, $5, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
           AS r(t, e, d, b)",
    )
    .bind(rows.iter().map(|r| r.target.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.event.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.delivery.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.body.as_str()).collect::<Vec<_>>())
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// The outbox rows of a terminal transition, in its transaction: the
/// `job_failed` rows of `ended` jobs now `failed` and the
/// `schedule_auto_paused` rows of `settled`, for subscribed events only.
/// Returns whether it wrote any (the caller raises the outbox signal after
/// its commit).
pub(crate) async fn record_ended(
    store: &PostgresStore,
    tx: &mut Tx,
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

/// The live running runs whose `column` is at or before `cutoff` while
/// `unset` is still NULL, locked (skipping rows others hold).
async fn take_live(
    tx: &mut Tx,
    column: &str,
    unset: &str,
    now: i64,
    cutoff: i64,
    limit: u32,
) -> Result<Vec<Job>> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' AND lease_expires_at > $1 \
           AND {unset} IS NULL AND {column} <= $2 \
         ORDER BY {column}, id LIMIT $3 FOR UPDATE SKIP LOCKED"
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

/// Sets `column` to `now` on `jobs` (locked by this transaction).
async fn mark(tx: &mut Tx, column: &str, jobs: &[Job], now: i64) -> Result<()> {
    let sql = format!("UPDATE jobs SET {column} = $1 WHERE id = ANY($2::bigint[])");
    sqlx::query(AssertSqlSafe(sql))
        .bind(now)
        .bind(jobs.iter().map(|j| j.id).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// The database's now, the earliest `progress_at` of the live runs not
/// stalled and the earliest `stalled_at` of the live runs not escalated.
async fn earliest(store: &PostgresStore) -> Result<(i64, Option<i64>, Option<i64>)> {
    let row = sqlx::query(
        "WITH t(now) AS (SELECT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint + $1) \
         SELECT t.now, \
                min(progress_at) FILTER (WHERE stalled_at IS NULL), \
                min(stalled_at) FILTER (WHERE escalated_at IS NULL) \
         FROM t LEFT JOIN jobs ON jobs.state = 'running' AND jobs.lease_expires_at > t.now \
         GROUP BY t.now",
    )
    .bind(store.offset())
    .fetch_one(&store.pool)
    .await
    .map_err(db_error)?;
    Ok((col(&row, 0)?, col(&row, 1)?, col(&row, 2)?))
}

pub(crate) async fn supervise(store: &PostgresStore, p: SuperviseParams) -> Result<Supervised> {
    p.validate()?;
    let mut out = Supervised::default();
    let limit = p.limit.max(1);
    // One read first: a pass with nothing due (the usual one) opens no
    // transaction.
    let (now, progress, stall) = earliest(store).await?;
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
        let now = store.db_now(&mut tx).await?;
        let (stall_cutoff, _) = cutoffs(&p, now);
        let mut stalled = take_live(
            &mut tx,
            "progress_at",
            "stalled_at",
            now,
            stall_cutoff.0,
            limit,
        )
        .await?;
        if stalled.is_empty() {
            rollback(tx).await?;
        } else {
            mark(&mut tx, "stalled_at", &stalled, now).await?;
            let mut events = Vec::with_capacity(stalled.len());
            let mut mail = Vec::with_capacity(stalled.len());
            for job in &mut stalled {
                job.stalled_at = Some(Timestamp(now));
                mail.push(stall_mail(job, now));
                events.push(stalled_event(job, now));
            }
            sqlx::query(
                "INSERT INTO mail (job_id, at, sender, subject, body) \
                 SELECT j, $1, s, su, b FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[]) \
                   AS m(j, s, su, b)",
            )
            .bind(now)
            .bind(mail.iter().map(|m| m.job_id).collect::<Vec<_>>())
            .bind(mail.iter().map(|m| m.sender.as_str()).collect::<Vec<_>>())
            .bind(mail.iter().map(|m| m.subject.as_str()).collect::<Vec<_>>())
            .bind(mail.iter().map(|m| m.body.as_str()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            commit(tx, store, now, &events, Notify::NONE).await?;
            out.stalled = stalled;
        }
    }

    // Escalations: stalls older than the cutoff, not yet escalated.
    if escalation_due {
        let mut tx = store.begin().await?;
        let now = store.db_now(&mut tx).await?;
        let (_, escalate_cutoff) = cutoffs(&p, now);
        let mut escalated = take_live(
            &mut tx,
            "stalled_at",
            "escalated_at",
            now,
            escalate_cutoff.0,
            limit,
        )
        .await?;
        if escalated.is_empty() {
            rollback(tx).await?;
        } else {
            mark(&mut tx, "escalated_at", &escalated, now).await?;
            let mut events = Vec::with_capacity(escalated.len());
            let mut rows = Vec::new();
            for job in &mut escalated {
                job.escalated_at = Some(Timestamp(now));
                events.push(escalated_event(job, now));
                rows.extend(outbox::escalation(&store.config.webhooks, job, now));
            }
            insert_deliveries(&mut tx, &rows, now).await?;
            commit(tx, store, now, &events, Notify::NONE).await?;
            if !rows.is_empty() {
                store.signals.outbox_changed();
            }
            out.escalated = escalated;
        }
    }

    // When the next live run would stall or escalate.
    let (now, progress, stall) = earliest(store).await?;
    out.next_in = next_in(&p, progress, stall, now);
    Ok(out)
}

fn delivery_from_row(row: &PgRow) -> Result<Delivery> {
    Ok(Delivery {
        id: col(row, 0)?,
        target: col(row, 1)?,
        event: col(row, 2)?,
        delivery: col(row, 3)?,
        body: col(row, 4)?,
        attempt: col(row, 5)?,
        created_at: Timestamp(col(row, 6)?),
    })
}

pub(crate) async fn claim_deliveries(
    store: &PostgresStore,
    limit: u32,
    lease: Duration,
) -> Result<Vec<Delivery>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "WITH t(now) AS (SELECT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint + $1), \
           due AS (SELECT id FROM outbox, t WHERE delivered_at IS NULL AND gave_up_at IS NULL \
                     AND due_at <= t.now ORDER BY due_at, id LIMIT $3 FOR UPDATE OF outbox SKIP LOCKED) \
         UPDATE outbox SET due_at = t.now + $2, attempts = outbox.attempts + 1 \
         FROM t, due WHERE outbox.id = due.id \
         RETURNING outbox.id, outbox.target, outbox.event, outbox.delivery, outbox.body, \
           outbox.attempts, outbox.created_at",
    )
    .bind(store.offset())
    .bind(duration_millis(lease))
    .bind(i64::from(limit))
    .fetch_all(&store.pool)
    .await
    .map_err(db_error)?;
    let mut claimed = rows
        .iter()
        .map(delivery_from_row)
        .collect::<Result<Vec<_>>>()?;
    claimed.sort_by_key(|d| d.id);
    Ok(claimed)
}

pub(crate) async fn record_delivery(
    store: &PostgresStore,
    id: i64,
    attempt: i32,
    outcome: DeliveryOutcome,
) -> Result<bool> {
    let (delivered, after, gave_up, error) = match &outcome {
        DeliveryOutcome::Delivered => (true, None, false, None),
        DeliveryOutcome::Retry { after, error } => (
            false,
            Some(duration_millis(*after)),
            false,
            Some(error.as_str()),
        ),
        DeliveryOutcome::GiveUp { error } => (false, None, true, Some(error.as_str())),
    };
    let done = sqlx::query(
        "WITH t(now) AS (SELECT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint + $1) \
         UPDATE outbox SET \
           delivered_at = CASE WHEN $2 THEN t.now END, \
           due_at = CASE WHEN $3::bigint IS NULL THEN outbox.due_at ELSE t.now + $3::bigint END, \
           gave_up_at = CASE WHEN $4 THEN t.now END, \
           last_error = coalesce($5::text, outbox.last_error) \
         FROM t WHERE outbox.id = $6 AND outbox.attempts = $7 \
           AND outbox.delivered_at IS NULL AND outbox.gave_up_at IS NULL",
    )
    .bind(store.offset())
    .bind(delivered)
    .bind(after)
    .bind(gave_up)
    .bind(error.map(|e| reeve_store::transition::truncate(e, 1000)))
    .bind(id)
    .bind(attempt)
    .execute(&store.pool)
    .await
    .map_err(db_error)?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn next_delivery_in(store: &PostgresStore) -> Result<Option<Duration>> {
    let row = sqlx::query(
        "SELECT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint + $1, \
                (SELECT min(due_at) FROM outbox WHERE delivered_at IS NULL AND gave_up_at IS NULL)",
    )
    .bind(store.offset())
    .fetch_one(&store.pool)
    .await
    .map_err(db_error)?;
    let now: i64 = col(&row, 0)?;
    let next: Option<i64> = col(&row, 1)?;
    Ok(next.map(|at| Duration::from_millis(at.saturating_sub(now).max(0) as u64)))
}

pub(crate) async fn prune_deliveries(
    store: &PostgresStore,
    older_than: Duration,
    batch: u32,
) -> Result<u64> {
    let done = sqlx::query(
        "WITH t(now) AS (SELECT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint + $1) \
         DELETE FROM outbox WHERE id IN ( \
           SELECT id FROM outbox, t WHERE (delivered_at IS NOT NULL OR gave_up_at IS NOT NULL) \
             AND created_at < t.now - $2 ORDER BY created_at LIMIT $3 FOR UPDATE OF outbox SKIP LOCKED)",
    )
    .bind(store.offset())
    .bind(duration_millis(older_than))
    .bind(i64::from(batch))
    .execute(&store.pool)
    .await
    .map_err(db_error)?;
    Ok(done.rows_affected())
}
