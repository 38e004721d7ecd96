//! The fleet on SQLite (SPEC §6, §10): worker registrations, checkpoints
//! and mail.
//!
//! **Invariants.** Like every write of this backend, the writes here run on
//! the single writer connection: one statement, or a `BEGIN IMMEDIATE`
//! transaction holding SQLite's write lock from its first read to its
//! commit. So a checkpoint's fence check and its upsert, and a reader's view
//! of its unread mail and the marking of exactly that mail, are one atomic
//! step even against other processes sharing the file; and a job cannot be
//! pruned between the check that it exists and the insert of its mail.
//! Reads use the reader pool. Instants are the store's clock.

use reeve_core::time::duration_millis;
use reeve_core::{JobId, Timestamp};
use reeve_store::fleet::{Checkpoint, Mail, NewMail, NewWorker, WorkerRecord};
use reeve_store::transition::fence;
use reeve_store::{Result, StoreError};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row};

use crate::SqliteStore;
use crate::rows::{JOB_COLUMNS, corrupt, db_error, is_unique_violation, job_from_row};
use crate::write::commit;

const WORKER_COLUMNS: &str = "id, name, host, kinds, queues, labels, slots, heartbeats, version, \
    registered_at, last_seen_at, deregistered_at";

const MAIL_COLUMNS: &str = "id, job_id, at, sender, subject, body, read_at";

/// Fresh ids drawn before a registration gives up on collisions (each is 64
/// random bits, so a second draw is already never needed in practice).
const ID_DRAWS: usize = 4;

fn list(what: &str, v: String) -> Result<Vec<String>> {
    serde_json::from_str(&v).map_err(|e| corrupt(what, e))
}

fn worker_from_row(row: &SqliteRow) -> Result<WorkerRecord> {
    Ok(WorkerRecord {
        id: row.get(0),
        worker: NewWorker {
            name: row.get(1),
            host: row.get(2),
            kinds: list("worker kinds", row.get(3))?,
            queues: list("worker queues", row.get(4))?,
            labels: list("worker labels", row.get(5))?,
            slots: u32::try_from(row.get::<i64, _>(6)).map_err(|e| corrupt("worker slots", e))?,
            heartbeats: row.get::<i64, _>(7) != 0,
            version: row.get(8),
        },
        registered_at: Timestamp(row.get(9)),
        last_seen_at: Timestamp(row.get(10)),
        deregistered_at: row.get::<Option<i64>, _>(11).map(Timestamp),
    })
}

fn mail_from_row(row: &SqliteRow) -> Mail {
    Mail {
        id: row.get(0),
        job_id: row.get(1),
        at: Timestamp(row.get(2)),
        sender: row.get(3),
        subject: row.get(4),
        body: row.get(5),
        read_at: row.get::<Option<i64>, _>(6).map(Timestamp),
    }
}

pub(crate) async fn register_worker(store: &SqliteStore, w: NewWorker) -> Result<WorkerRecord> {
    let now = store.now_ms();
    let sql = format!(
        "INSERT INTO workers (id, name, host, kinds, queues, labels, slots, heartbeats, version, \
           registered_at, last_seen_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {WORKER_COLUMNS}"
    );
    let mut draws = 0;
    loop {
        draws += 1;
        let inserted = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(reeve_store::fleet::new_worker_id())
            .bind(&w.name)
            .bind(w.host.as_deref())
            .bind(reeve_store::fleet::list_json(&w.kinds))
            .bind(reeve_store::fleet::list_json(&w.queues))
            .bind(reeve_store::fleet::list_json(&w.labels))
            .bind(i64::from(w.slots))
            .bind(w.heartbeats)
            .bind(w.version.as_deref())
            .bind(now)
            .bind(now)
            .fetch_one(&store.writer)
            .await;
        match inserted {
            Ok(row) => return worker_from_row(&row),
            Err(e) if is_unique_violation(&e) && draws < ID_DRAWS => continue,
            Err(e) => return Err(db_error(e)),
        }
    }
}

pub(crate) async fn touch_worker(store: &SqliteStore, id: &str) -> Result<WorkerRecord> {
    // max(): daemons sharing the file may disagree slightly on the time;
    // last_seen_at never moves back.
    let sql = format!(
        "UPDATE workers SET last_seen_at = max(last_seen_at, ?1) \
         WHERE id = ?2 AND deregistered_at IS NULL RETURNING {WORKER_COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(store.now_ms())
        .bind(id)
        .fetch_optional(&store.writer)
        .await
        .map_err(db_error)?
        .ok_or_else(|| StoreError::WorkerNotFound(id.to_string()))?;
    worker_from_row(&row)
}

pub(crate) async fn deregister_worker(store: &SqliteStore, id: &str) -> Result<WorkerRecord> {
    // An already deregistered worker keeps its first deregistration.
    let sql = format!(
        "UPDATE workers SET deregistered_at = coalesce(deregistered_at, ?1) \
         WHERE id = ?2 RETURNING {WORKER_COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(store.now_ms())
        .bind(id)
        .fetch_optional(&store.writer)
        .await
        .map_err(db_error)?
        .ok_or_else(|| StoreError::WorkerNotFound(id.to_string()))?;
    worker_from_row(&row)
}

pub(crate) async fn get_worker(store: &SqliteStore, id: &str) -> Result<WorkerRecord> {
    let sql = format!("SELECT {WORKER_COLUMNS} FROM workers WHERE id = ?");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&store.reader)
        .await
        .map_err(db_error)?
        .ok_or_else(|| StoreError::WorkerNotFound(id.to_string()))?;
    worker_from_row(&row)
}

pub(crate) async fn list_workers(
    store: &SqliteStore,
    limit: u32,
    keep_gone: std::time::Duration,
) -> Result<Vec<WorkerRecord>> {
    let cutoff = store.now_ms().saturating_sub(duration_millis(keep_gone));
    let sql = format!(
        "SELECT {WORKER_COLUMNS} FROM workers \
         WHERE deregistered_at IS NULL OR deregistered_at >= ? \
         ORDER BY last_seen_at DESC, registered_at DESC, id LIMIT ?"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(cutoff)
        .bind(i64::from(limit))
        .fetch_all(&store.reader)
        .await
        .map_err(db_error)?;
    rows.iter().map(worker_from_row).collect()
}

pub(crate) async fn save_checkpoint(
    store: &SqliteStore,
    job: JobId,
    epoch: i64,
    data: Vec<u8>,
) -> Result<Checkpoint> {
    let mut tx = store.begin().await?;
    let now = store.now_ms();
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(job)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?
        .ok_or(StoreError::NotFound(job))?;
    if let Some(refusal) = fence(&job_from_row(&row)?, epoch) {
        return Err(refusal);
    }
    // A checkpoint is progress (SPEC §10): it clears a stall.
    sqlx::query(
        "UPDATE jobs SET progress_at = ?1, stalled_at = NULL, escalated_at = NULL WHERE id = ?2",
    )
    .bind(now)
    .bind(job)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    let size = data.len();
    sqlx::query(
        "INSERT INTO checkpoints (job_id, epoch, data, size, saved_at) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (job_id) DO UPDATE SET epoch = ?2, data = ?3, size = ?4, saved_at = ?5",
    )
    .bind(job)
    .bind(epoch)
    .bind(&data)
    .bind(i64::try_from(size).unwrap_or(i64::MAX))
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    commit(tx, now, &[]).await?;
    Ok(Checkpoint {
        job_id: job,
        epoch,
        data,
        size,
        saved_at: Timestamp(now),
    })
}

pub(crate) async fn load_checkpoint(store: &SqliteStore, job: JobId) -> Result<Option<Checkpoint>> {
    let row = sqlx::query(
        "SELECT c.epoch, c.data, c.size, c.saved_at \
         FROM jobs j LEFT JOIN checkpoints c ON c.job_id = j.id WHERE j.id = ?",
    )
    .bind(job)
    .fetch_optional(&store.reader)
    .await
    .map_err(db_error)?
    .ok_or(StoreError::NotFound(job))?;
    let Some(epoch) = row.get::<Option<i64>, _>(0) else {
        return Ok(None);
    };
    Ok(Some(Checkpoint {
        job_id: job,
        epoch,
        data: row.get(1),
        size: usize::try_from(row.get::<i64, _>(2)).map_err(|e| corrupt("checkpoint size", e))?,
        saved_at: Timestamp(row.get(3)),
    }))
}

pub(crate) async fn send_mail(store: &SqliteStore, mail: NewMail) -> Result<Mail> {
    // One statement on the writer: the job's existence and the insert are
    // one step (a prune cannot come between them).
    let now = store.now_ms();
    let sql = format!(
        "INSERT INTO mail (job_id, at, sender, subject, body) \
         SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ?1) \
         RETURNING {MAIL_COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(mail.job_id)
        .bind(now)
        .bind(&mail.sender)
        .bind(&mail.subject)
        .bind(&mail.body)
        .fetch_optional(&store.writer)
        .await
        .map_err(db_error)?
        .ok_or(StoreError::NotFound(mail.job_id))?;
    Ok(mail_from_row(&row))
}

/// The job's mail (`None` if there is no such job), oldest first, in one
/// statement: one row of NULLs stands for a job without mail.
async fn job_mail<'c, E>(executor: E, job: JobId) -> Result<Option<Vec<Mail>>>
where
    E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
{
    let rows = sqlx::query(
        "SELECT m.id, j.id, m.at, m.sender, m.subject, m.body, m.read_at \
         FROM jobs j LEFT JOIN mail m ON m.job_id = j.id WHERE j.id = ? ORDER BY m.id",
    )
    .bind(job)
    .fetch_all(executor)
    .await
    .map_err(db_error)?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        rows.iter()
            .filter(|r| r.get::<Option<i64>, _>(0).is_some())
            .map(mail_from_row)
            .collect(),
    ))
}

pub(crate) async fn read_mail(
    store: &SqliteStore,
    job: JobId,
    mark_read: bool,
) -> Result<Vec<Mail>> {
    if !mark_read {
        return job_mail(&store.reader, job)
            .await?
            .ok_or(StoreError::NotFound(job));
    }
    let mut tx = store.begin().await?;
    let now = store.now_ms();
    let mail = job_mail(&mut *tx, job)
        .await?
        .ok_or(StoreError::NotFound(job))?;
    // Under the write lock nothing arrives between the read and the mark:
    // exactly the unread messages returned are marked.
    if mail.iter().any(|m| m.read_at.is_none()) {
        sqlx::query("UPDATE mail SET read_at = ? WHERE job_id = ? AND read_at IS NULL")
            .bind(now)
            .bind(job)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
    }
    commit(tx, now, &[]).await?;
    Ok(mail)
}

pub(crate) async fn unread_mail(store: &SqliteStore, job: JobId) -> Result<u64> {
    let unread: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM mail WHERE job_id = ?1 AND read_at IS NULL) \
         FROM jobs WHERE id = ?1",
    )
    .bind(job)
    .fetch_optional(&store.reader)
    .await
    .map_err(db_error)?
    .ok_or(StoreError::NotFound(job))?;
    Ok(unread.max(0) as u64)
}
