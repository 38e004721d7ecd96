//! The fleet on PostgreSQL (SPEC §6, §10): worker registrations,
//! checkpoints and mail.
//!
//! **Invariants.**
//! - *One instant per write.* A one-statement write reads the database's
//!   clock once in a CTE (as `write::heartbeat` does); a transaction reads it
//!   once ([`PostgresStore::db_now`]) and binds it.
//! - *Checkpoints are fenced under a row lock.* [`save_checkpoint`] first
//!   marks the job's progress with one update fenced on `(id, epoch,
//!   running)`, which holds the row until the commit, so the run cannot end
//!   (finish and reap take the row `FOR UPDATE`) between the check and the
//!   upsert, and an older epoch can never overwrite a newer one. The lock
//!   never touches an `available` job, so claims (`SKIP LOCKED`) never skip
//!   a job because of it.
//! - *Mail never outlives its job.* Prune locks the terminal jobs it deletes
//!   (`FOR UPDATE SKIP LOCKED`) and deletes their mail in the same
//!   transaction; a send or a marking read of a terminal job first takes its
//!   row `FOR KEY SHARE` ([`pin_job`]), so either prune skips that job this
//!   round or the send finds the job gone. Live jobs are not locked (claims
//!   would skip them): they cannot be pruned before they have been finished
//!   for the retention period.
//! - *Reading marks once.* A marking read locks the job's messages
//!   (`FOR UPDATE`, in id order) and marks exactly the unread ones it
//!   returns; a concurrent marking read waits, then sees them read.

use reeve_core::{JobId, JobState, Timestamp};
use reeve_store::fleet::{Checkpoint, Mail, NewMail, NewWorker, WorkerRecord};
use reeve_store::transition::fence;
use reeve_store::{Result, StoreError};
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgRow;

use crate::rows::{JOB_COLUMNS, col, corrupt, db_error, is_unique_violation, job_from_row};
use crate::write::{Notify, Tx, commit, rollback};
use crate::{NOW_QUERY, PostgresStore};

const WORKER_COLUMNS: &str = "id, name, host, kinds, queues, labels, slots, heartbeats, version, \
    registered_at, last_seen_at, deregistered_at";

const MAIL_COLUMNS: &str = "id, job_id, at, sender, subject, body, read_at";

/// Fresh ids drawn before a registration gives up on collisions (each is 64
/// random bits, so a second draw is already never needed in practice).
const ID_DRAWS: usize = 4;

fn list(what: &str, v: String) -> Result<Vec<String>> {
    serde_json::from_str(&v).map_err(|e| corrupt(what, e))
}

fn worker_from_row(row: &PgRow) -> Result<WorkerRecord> {
    Ok(WorkerRecord {
        id: col(row, 0)?,
        worker: NewWorker {
            name: col(row, 1)?,
            host: col(row, 2)?,
            kinds: list("worker kinds", col(row, 3)?)?,
            queues: list("worker queues", col(row, 4)?)?,
            labels: list("worker labels", col(row, 5)?)?,
            slots: u32::try_from(col::<i64>(row, 6)?).map_err(|e| corrupt("worker slots", e))?,
            heartbeats: col(row, 7)?,
            version: col(row, 8)?,
        },
        registered_at: Timestamp(col(row, 9)?),
        last_seen_at: Timestamp(col(row, 10)?),
        deregistered_at: col::<Option<i64>>(row, 11)?.map(Timestamp),
    })
}

fn mail_from_row(row: &PgRow) -> Result<Mail> {
    Ok(Mail {
        id: col(row, 0)?,
        job_id: col(row, 1)?,
        at: Timestamp(col(row, 2)?),
        sender: col(row, 3)?,
        subject: col(row, 4)?,
        body: col(row, 5)?,
        read_at: col::<Option<i64>>(row, 6)?.map(Timestamp),
    })
}

pub(crate) async fn register_worker(store: &PostgresStore, w: NewWorker) -> Result<WorkerRecord> {
    let sql = format!(
        "WITH t(now) AS ({NOW_QUERY}) \
         INSERT INTO workers (id, name, host, kinds, queues, labels, slots, heartbeats, version, \
           registered_at, last_seen_at) \
         SELECT $2, $3, $4, $5, $6, $7, $8, $9, $10, t.now, t.now FROM t \
         RETURNING {WORKER_COLUMNS}"
    );
    let mut draws = 0;
    loop {
        draws += 1;
        let inserted = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(store.offset())
            .bind(reeve_store::fleet::new_worker_id())
            .bind(&w.name)
            .bind(w.host.as_deref())
            .bind(reeve_store::fleet::list_json(&w.kinds))
            .bind(reeve_store::fleet::list_json(&w.queues))
            .bind(reeve_store::fleet::list_json(&w.labels))
            .bind(i64::from(w.slots))
            .bind(w.heartbeats)
            .bind(w.version.as_deref())
            .fetch_one(&store.pool)
            .await;
        match inserted {
            Ok(row) => return worker_from_row(&row),
            Err(e) if is_unique_violation(&e) && draws < ID_DRAWS => continue,
            Err(e) => return Err(db_error(e)),
        }
    }
}

pub(crate) async fn touch_worker(store: &PostgresStore, id: &str) -> Result<WorkerRecord> {
    // greatest(): a store whose test clock lags another's never moves
    // last_seen_at back.
    let sql = format!(
        "WITH t(now) AS ({NOW_QUERY}) \
         UPDATE workers SET last_seen_at = greatest(workers.last_seen_at, t.now) FROM t \
         WHERE workers.id = $2 AND workers.deregistered_at IS NULL \
         RETURNING {WORKER_COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(store.offset())
        .bind(id)
        .fetch_optional(&store.pool)
        .await
        .map_err(db_error)?
        .ok_or_else(|| StoreError::WorkerNotFound(id.to_string()))?;
    worker_from_row(&row)
}

pub(crate) async fn deregister_worker(store: &PostgresStore, id: &str) -> Result<WorkerRecord> {
    // An already deregistered worker keeps its first deregistration.
    let sql = format!(
        "WITH t(now) AS ({NOW_QUERY}) \
         UPDATE workers SET deregistered_at = coalesce(workers.deregistered_at, t.now) FROM t \
         WHERE workers.id = $2 \
         RETURNING {WORKER_COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(store.offset())
        .bind(id)
        .fetch_optional(&store.pool)
        .await
        .map_err(db_error)?
        .ok_or_else(|| StoreError::WorkerNotFound(id.to_string()))?;
    worker_from_row(&row)
}

pub(crate) async fn get_worker(store: &PostgresStore, id: &str) -> Result<WorkerRecord> {
    let sql = format!("SELECT {WORKER_COLUMNS} FROM workers WHERE id = $1");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&store.pool)
        .await
        .map_err(db_error)?
        .ok_or_else(|| StoreError::WorkerNotFound(id.to_string()))?;
    worker_from_row(&row)
}

pub(crate) async fn list_workers(
    store: &PostgresStore,
    limit: u32,
    keep_gone: std::time::Duration,
) -> Result<Vec<WorkerRecord>> {
    let sql = format!(
        "WITH t(now) AS ({NOW_QUERY}) \
         SELECT {WORKER_COLUMNS} FROM workers, t \
         WHERE deregistered_at IS NULL OR deregistered_at >= t.now - $2 \
         ORDER BY last_seen_at DESC, registered_at DESC, id LIMIT $3"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(store.offset())
        .bind(reeve_core::time::duration_millis(keep_gone))
        .bind(i64::from(limit))
        .fetch_all(&store.pool)
        .await
        .map_err(db_error)?;
    rows.iter().map(worker_from_row).collect()
}

pub(crate) async fn save_checkpoint(
    store: &PostgresStore,
    job: JobId,
    epoch: i64,
    data: Vec<u8>,
) -> Result<Checkpoint> {
    let mut tx = store.begin().await?;
    let now = store.db_now(&mut tx).await?;
    // The fence and the progress mark (a checkpoint is progress, SPEC §10:
    // it clears a stall) in one statement, which holds the job's row until
    // the commit.
    let marked = sqlx::query(
        "UPDATE jobs SET progress_at = $1, stalled_at = NULL, escalated_at = NULL \
         WHERE id = $2 AND epoch = $3 AND state = 'running'",
    )
    .bind(now)
    .bind(job)
    .bind(epoch)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    if marked.rows_affected() == 0 {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(job)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        rollback(tx).await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(job));
        };
        let current = job_from_row(&row)?;
        return Err(fence(&current, epoch).unwrap_or(StoreError::NotRunning {
            state: current.state,
        }));
    }
    let size = data.len();
    sqlx::query(
        "INSERT INTO checkpoints (job_id, epoch, data, size, saved_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (job_id) DO UPDATE SET epoch = excluded.epoch, data = excluded.data, \
           size = excluded.size, saved_at = excluded.saved_at",
    )
    .bind(job)
    .bind(epoch)
    .bind(&data)
    .bind(i64::try_from(size).unwrap_or(i64::MAX))
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    commit(tx, store, now, &[], Notify::NONE).await?;
    Ok(Checkpoint {
        job_id: job,
        epoch,
        data,
        size,
        saved_at: Timestamp(now),
    })
}

pub(crate) async fn load_checkpoint(
    store: &PostgresStore,
    job: JobId,
) -> Result<Option<Checkpoint>> {
    let row = sqlx::query(
        "SELECT c.epoch, c.data, c.size, c.saved_at \
         FROM jobs j LEFT JOIN checkpoints c ON c.job_id = j.id WHERE j.id = $1",
    )
    .bind(job)
    .fetch_optional(&store.pool)
    .await
    .map_err(db_error)?
    .ok_or(StoreError::NotFound(job))?;
    let Some(epoch) = col::<Option<i64>>(&row, 0)? else {
        return Ok(None);
    };
    Ok(Some(Checkpoint {
        job_id: job,
        epoch,
        data: col(&row, 1)?,
        size: usize::try_from(col::<i64>(&row, 2)?).map_err(|e| corrupt("checkpoint size", e))?,
        saved_at: Timestamp(col(&row, 3)?),
    }))
}

/// Checks that `job` exists and, if it is terminal (so prune may be about to
/// delete it), holds it `FOR KEY SHARE` until the commit. `NotFound` if
/// there is no such job (or prune just deleted it).
async fn pin_job(tx: &mut Tx, job: JobId) -> Result<()> {
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)?;
    let state: JobState = state
        .ok_or(StoreError::NotFound(job))?
        .parse()
        .map_err(|e| corrupt("job state", e))?;
    if state.is_terminal() {
        sqlx::query("SELECT 1 FROM jobs WHERE id = $1 FOR KEY SHARE")
            .bind(job)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_error)?
            .ok_or(StoreError::NotFound(job))?;
    }
    Ok(())
}

pub(crate) async fn send_mail(store: &PostgresStore, mail: NewMail) -> Result<Mail> {
    let mut tx = store.begin().await?;
    if let Err(e) = pin_job(&mut tx, mail.job_id).await {
        rollback(tx).await?;
        return Err(e);
    }
    let now = store.db_now(&mut tx).await?;
    let sql = format!(
        "INSERT INTO mail (job_id, at, sender, subject, body) VALUES ($1, $2, $3, $4, $5) \
         RETURNING {MAIL_COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(mail.job_id)
        .bind(now)
        .bind(&mail.sender)
        .bind(&mail.subject)
        .bind(&mail.body)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
    let sent = mail_from_row(&row)?;
    commit(tx, store, now, &[], Notify::NONE).await?;
    Ok(sent)
}

pub(crate) async fn read_mail(
    store: &PostgresStore,
    job: JobId,
    mark_read: bool,
) -> Result<Vec<Mail>> {
    if !mark_read {
        // One statement: a row of NULLs stands for a job without mail.
        let rows = sqlx::query(
            "SELECT m.id, j.id, m.at, m.sender, m.subject, m.body, m.read_at \
             FROM jobs j LEFT JOIN mail m ON m.job_id = j.id WHERE j.id = $1 ORDER BY m.id",
        )
        .bind(job)
        .fetch_all(&store.pool)
        .await
        .map_err(db_error)?;
        if rows.is_empty() {
            return Err(StoreError::NotFound(job));
        }
        let mut mail = Vec::with_capacity(rows.len());
        for row in &rows {
            if col::<Option<i64>>(row, 0)?.is_some() {
                mail.push(mail_from_row(row)?);
            }
        }
        return Ok(mail);
    }
    let mut tx = store.begin().await?;
    if let Err(e) = pin_job(&mut tx, job).await {
        rollback(tx).await?;
        return Err(e);
    }
    let now = store.db_now(&mut tx).await?;
    let sql = format!("SELECT {MAIL_COLUMNS} FROM mail WHERE job_id = $1 ORDER BY id FOR UPDATE");
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(job)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
    let mail = rows.iter().map(mail_from_row).collect::<Result<Vec<_>>>()?;
    // Exactly the unread messages returned (they are locked): one that
    // arrived since is neither returned nor marked.
    let unread: Vec<i64> = mail
        .iter()
        .filter(|m| m.read_at.is_none())
        .map(|m| m.id)
        .collect();
    if unread.is_empty() {
        rollback(tx).await?;
        return Ok(mail);
    }
    sqlx::query("UPDATE mail SET read_at = $1 WHERE id = ANY($2::bigint[]) AND read_at IS NULL")
        .bind(now)
        .bind(&unread)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    commit(tx, store, now, &[], Notify::NONE).await?;
    Ok(mail)
}

pub(crate) async fn unread_mail(store: &PostgresStore, job: JobId) -> Result<u64> {
    let unread: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM mail WHERE job_id = $1 AND read_at IS NULL) \
         FROM jobs WHERE id = $1",
    )
    .bind(job)
    .fetch_optional(&store.pool)
    .await
    .map_err(db_error)?
    .ok_or(StoreError::NotFound(job))?;
    Ok(unread.max(0) as u64)
}
