//! The embedded SQLite backend: one file, WAL, migrations in the binary.
//!
//! **Invariants.** Every mutation runs on the single *writer* connection
//! inside `BEGIN IMMEDIATE`, so it holds SQLite's write lock from its first
//! read to its commit: a claim's cap check and its update, or a write-back's
//! fence check and its update, are one atomic step even against other
//! processes using the same file (they wait on `busy_timeout`). Reads use a
//! separate pool of readers, which WAL lets run beside the writer.
//!
//! The clock is the daemon's (SPEC §4), plus an offset that tests use to
//! travel in time ([`SqliteStore::advance_clock`]).

mod fleet;
mod rows;
mod schedule;
mod supervision;
mod write;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reeve_core::{Event, Job, JobFilter, JobId, Page, Timestamp};
use reeve_schedule::ScheduleStatus;
use reeve_store::fleet::{Checkpoint, Mail, NewMail, NewWorker, WorkerRecord};
use reeve_store::{
    AuditRecord, ClaimParams, DeferParams, DeferResult, Delivery, DeliveryOutcome, Enqueued,
    Finish, FireParams, FireResult, FiringQuery, FiringRecord, HeartbeatAck, HeartbeatParams,
    Limits, NewAudit, NextFire, Pressure, QueueInfo, QueuePatch, QueueSettings, Result, RunOutput,
    SchedulePut, ScheduleRecord, Signals, StatusCounts, Store, StoreConfig, StoreError,
    SuperviseParams, Supervised, TypicalDurations,
};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row};

use crate::rows::{EVENT_COLUMNS, JOB_COLUMNS, db_error, event_from_row, job_from_row};

/// The schema, embedded in the binary.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "jobs", include_str!("../migrations/0001_jobs.sql")),
    (
        2,
        "schedules",
        include_str!("../migrations/0002_schedules.sql"),
    ),
    (
        3,
        "schedule_runs",
        include_str!("../migrations/0003_schedule_runs.sql"),
    ),
    (4, "fleet", include_str!("../migrations/0004_fleet.sql")),
    (
        5,
        "follow_ups",
        include_str!("../migrations/0005_follow_ups.sql"),
    ),
    (
        6,
        "supervision",
        include_str!("../migrations/0006_supervision.sql"),
    ),
    (
        7,
        "placement",
        include_str!("../migrations/0007_placement.sql"),
    ),
];

/// How the backend opens its file.
#[derive(Debug, Clone, PartialEq)]
pub struct SqliteOptions {
    pub path: PathBuf,
    /// `FULL` (default) fsyncs every commit; `NORMAL` survives a process
    /// crash but may lose the last commits on power loss.
    pub synchronous: Synchronous,
    /// Reader connections beside the one writer.
    pub readers: u32,
    /// How long a write waits for another process holding the file's lock.
    pub busy_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Full,
    Normal,
}

impl SqliteOptions {
    /// Parses `sqlite://PATH`, `sqlite:PATH` or a plain path. A query string
    /// may set `synchronous=normal|full`.
    pub fn from_url(url: &str) -> std::result::Result<Self, String> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err("the SQLite URL names no file (expected sqlite://PATH)".into());
        }
        let mut opts = SqliteOptions {
            path: PathBuf::from(path),
            synchronous: Synchronous::Full,
            readers: 4,
            busy_timeout: Duration::from_secs(10),
        };
        for pair in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=') {
                Some(("synchronous", "full")) => opts.synchronous = Synchronous::Full,
                Some(("synchronous", "normal")) => opts.synchronous = Synchronous::Normal,
                _ => {
                    return Err(format!(
                        "unknown SQLite URL parameter {pair:?} (known: synchronous=full|normal)"
                    ));
                }
            }
        }
        Ok(opts)
    }
}

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    config: StoreConfig,
    clock_offset_ms: AtomicI64,
    signals: Signals,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(opts: &SqliteOptions, config: StoreConfig) -> Result<Self> {
        let connect = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db_error)?
            .filename(&opts.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match opts.synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(opts.busy_timeout)
            .foreign_keys(false)
            .statement_cache_capacity(256);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(opts.busy_timeout + Duration::from_secs(20))
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(connect.clone())
            .await
            .map_err(db_error)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(opts.readers.max(1))
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(connect.read_only(true))
            .await
            .map_err(db_error)?;
        let store = SqliteStore {
            writer,
            reader,
            config,
            clock_offset_ms: AtomicI64::new(0),
            signals: Signals::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the embedded migrations (idempotent).
    pub async fn migrate(&self) -> Result<()> {
        let migrations = MIGRATIONS
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    *version,
                    (*name).into(),
                    MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(*sql),
                    false,
                )
            })
            .collect();
        Migrator::with_migrations(migrations)
            .run(&self.writer)
            .await
            .map_err(|e| StoreError::Database {
                message: format!("migration failed: {e}"),
                transient: false,
            })
    }

    /// Moves this store's clock forward (tests use it to pass leases and
    /// backoffs without sleeping).
    pub fn advance_clock(&self, by: Duration) {
        self.clock_offset_ms
            .fetch_add(reeve_core::time::duration_millis(by), Ordering::SeqCst);
    }

    /// How far [`SqliteStore::advance_clock`] has moved this store's clock.
    pub fn clock_offset(&self) -> Duration {
        Duration::from_millis(self.clock_offset_ms.load(Ordering::SeqCst).max(0) as u64)
    }

    fn now_ms(&self) -> i64 {
        Timestamp::now().0 + self.clock_offset_ms.load(Ordering::SeqCst)
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)
    }

    /// Closes both pools (checkpointing the WAL).
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn signals(&self) -> &Signals {
        &self.signals
    }

    async fn now(&self) -> Result<Timestamp> {
        Ok(Timestamp(self.now_ms()))
    }

    async fn close(&self) {
        SqliteStore::close(self).await;
    }

    async fn enqueue(&self, jobs: Vec<reeve_core::NewJob>) -> Result<Vec<Enqueued>> {
        write::enqueue(self, jobs).await
    }

    async fn claim(&self, params: ClaimParams) -> Result<Vec<Job>> {
        write::claim(self, params).await
    }

    async fn heartbeat(&self, params: HeartbeatParams) -> Result<HeartbeatAck> {
        write::heartbeat(self, params).await
    }

    async fn finish(&self, batch: Vec<Finish>) -> Result<Vec<Result<Job>>> {
        write::finish(self, batch).await
    }

    async fn cancel(&self, id: JobId) -> Result<Job> {
        write::cancel(self, id).await
    }

    async fn retry(&self, id: JobId) -> Result<Job> {
        write::retry(self, id).await
    }

    async fn reap_expired(&self, limit: u32) -> Result<Vec<Job>> {
        write::reap_expired(self, limit).await
    }

    async fn promote_due(&self, limit: u32) -> Result<u64> {
        write::promote_due(self, limit).await
    }

    async fn next_due_in(&self) -> Result<Option<Duration>> {
        let row = sqlx::query(
            "SELECT (SELECT min(lease_expires_at) FROM jobs WHERE state = 'running'), \
                    (SELECT min(available_at) FROM jobs WHERE state IN ('scheduled', 'retryable')), \
                    (SELECT min(max(next_fire_at, coalesce(defer_until, next_fire_at))) \
                       FROM schedules WHERE status = 'active')",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(db_error)?;
        let lease: Option<i64> = row.get(0);
        let due: Option<i64> = row.get(1);
        let fire: Option<i64> = row.get(2);
        let next = [lease, due, fire].into_iter().flatten().min();
        let now = self.now_ms();
        Ok(next.map(|at| Duration::from_millis(at.saturating_sub(now).max(0) as u64)))
    }

    async fn get_job(&self, id: JobId) -> Result<Job> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(db_error)?
            .ok_or(StoreError::NotFound(id))?;
        job_from_row(&row)
    }

    async fn runs_since(&self, since: Timestamp, limit: u32) -> Result<Vec<Job>> {
        // Two indexed arms (running jobs; jobs by finished_at), then one sort
        // of what they found.
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM ( \
               SELECT * FROM jobs WHERE state = 'running' \
               UNION ALL \
               SELECT * FROM jobs WHERE finished_at >= ?1 AND claimed_at IS NOT NULL) \
             ORDER BY claimed_at, id LIMIT ?2"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(since.0)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(db_error)?;
        rows.iter().map(job_from_row).collect()
    }

    async fn finished_stats(&self, since: Timestamp) -> Result<reeve_store::FinishedStats> {
        let mut stats = reeve_store::FinishedStats::default();
        let hours: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT (finished_at - ?1) / 3600000 AS h, COUNT(*) FROM jobs \
             WHERE finished_at >= ?1 GROUP BY h",
        )
        .bind(since.0)
        .fetch_all(&self.reader)
        .await
        .map_err(db_error)?;
        stats.per_hour = hours
            .into_iter()
            .map(|(h, n)| (h, n.max(0) as u64))
            .collect();
        let reasons: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT failure_reason, COUNT(*) FROM jobs \
             WHERE state = 'failed' AND finished_at >= ?1 GROUP BY failure_reason",
        )
        .bind(since.0)
        .fetch_all(&self.reader)
        .await
        .map_err(db_error)?;
        stats.failed_by_reason = reasons
            .into_iter()
            .map(|(r, n)| (r.unwrap_or_else(|| "error".into()), n.max(0) as u64))
            .collect();
        Ok(stats)
    }

    async fn list_jobs(&self, filter: JobFilter) -> Result<Page<Job>> {
        let limit = filter.limit.clamp(1, 1000);
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1");
        if filter.state.is_some() {
            sql.push_str(" AND state = ?");
        }
        if filter.queue.is_some() {
            sql.push_str(" AND queue = ?");
        }
        if filter.kind.is_some() {
            sql.push_str(" AND kind = ?");
        }
        if filter.schedule.is_some() {
            sql.push_str(" AND schedule = ?");
        }
        if filter.before_id.is_some() {
            sql.push_str(" AND id < ?");
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        if let Some(s) = filter.state {
            q = q.bind(s.as_str());
        }
        if let Some(queue) = &filter.queue {
            q = q.bind(queue);
        }
        if let Some(kind) = &filter.kind {
            q = q.bind(kind);
        }
        if let Some(schedule) = &filter.schedule {
            q = q.bind(schedule);
        }
        if let Some(before) = filter.before_id {
            q = q.bind(before);
        }
        let rows = q
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.reader)
            .await
            .map_err(db_error)?;
        let items = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        Ok(reeve_store::transition::page(items, limit))
    }

    async fn job_events(&self, id: JobId) -> Result<Vec<Event>> {
        self.get_job(id).await?;
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE job_id = ? ORDER BY id");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_all(&self.reader)
            .await
            .map_err(db_error)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn job_output(&self, id: JobId) -> Result<Vec<RunOutput>> {
        self.get_job(id).await?;
        let rows = sqlx::query(
            "SELECT job_id, attempt, output FROM run_output WHERE job_id = ? ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await
        .map_err(db_error)?;
        Ok(rows
            .iter()
            .map(|r| RunOutput {
                job_id: r.get(0),
                attempt: r.get::<i64, _>(1) as i32,
                output: String::from_utf8_lossy(&r.get::<Vec<u8>, _>(2)).into_owned(),
            })
            .collect())
    }

    async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        let settings = sqlx::query("SELECT name, concurrency, paused FROM queues ORDER BY name")
            .fetch_all(&self.reader)
            .await
            .map_err(db_error)?;
        let counts = sqlx::query(
            "SELECT queue, state, COUNT(*) FROM jobs \
             WHERE state IN ('scheduled', 'available', 'running', 'retryable') GROUP BY queue, state",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(db_error)?;
        let mut queues: Vec<QueueInfo> = settings
            .iter()
            .map(|r| QueueInfo {
                name: r.get(0),
                settings: QueueSettings {
                    concurrency: r.get::<Option<i64>, _>(1).map(|c| c as u32),
                    paused: r.get::<i64, _>(2) != 0,
                },
                scheduled: 0,
                available: 0,
                running: 0,
                retryable: 0,
            })
            .collect();
        for r in &counts {
            let name: String = r.get(0);
            let state: String = r.get(1);
            let n = r.get::<i64, _>(2) as u64;
            let q = match queues.iter_mut().position(|q| q.name == name) {
                Some(i) => &mut queues[i],
                None => {
                    queues.push(QueueInfo {
                        name,
                        settings: QueueSettings::default(),
                        scheduled: 0,
                        available: 0,
                        running: 0,
                        retryable: 0,
                    });
                    queues.last_mut().expect("just pushed")
                }
            };
            match state.as_str() {
                "scheduled" => q.scheduled = n,
                "available" => q.available = n,
                "running" => q.running = n,
                _ => q.retryable = n,
            }
        }
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(queues)
    }

    async fn update_queue(&self, name: &str, patch: QueuePatch) -> Result<QueueInfo> {
        reeve_core::validate::name("queue", name)?;
        sqlx::query(
            "INSERT INTO queues (name, concurrency, paused) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET \
               concurrency = CASE WHEN ?4 THEN excluded.concurrency ELSE concurrency END, \
               paused = CASE WHEN ?5 THEN excluded.paused ELSE paused END",
        )
        .bind(name)
        .bind(patch.concurrency.flatten().map(i64::from))
        .bind(patch.paused.unwrap_or(false))
        .bind(patch.concurrency.is_some())
        .bind(patch.paused.is_some())
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        self.signals.work_changed();
        let queues = self.list_queues().await?;
        queues
            .into_iter()
            .find(|q| q.name == name)
            .ok_or_else(|| StoreError::Database {
                message: format!("queue {name} vanished"),
                transient: true,
            })
    }

    async fn limits(&self) -> Result<Limits> {
        let global: Option<String> =
            sqlx::query_scalar("SELECT value FROM settings WHERE key = 'global_concurrency'")
                .fetch_optional(&self.reader)
                .await
                .map_err(db_error)?;
        Ok(Limits {
            global: global.and_then(|v| v.parse().ok()),
        })
    }

    async fn set_limits(&self, limits: Limits) -> Result<Limits> {
        match limits.global {
            Some(n) => {
                sqlx::query(
                    "INSERT INTO settings (key, value) VALUES ('global_concurrency', ?) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(n.to_string())
                .execute(&self.writer)
                .await
            }
            None => {
                sqlx::query("DELETE FROM settings WHERE key = 'global_concurrency'")
                    .execute(&self.writer)
                    .await
            }
        }
        .map_err(db_error)?;
        self.signals.work_changed();
        Ok(limits)
    }

    async fn status(&self) -> Result<StatusCounts> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM jobs GROUP BY state")
            .fetch_all(&self.reader)
            .await
            .map_err(db_error)?;
        let mut counts = StatusCounts::default();
        for state in reeve_core::JobState::ALL {
            counts.by_state.insert(state.as_str().to_string(), 0);
        }
        for r in &rows {
            let state: String = r.get(0);
            let n = r.get::<i64, _>(1) as u64;
            if state == "running" {
                counts.running = n;
            }
            counts.by_state.insert(state, n);
        }
        if counts.running > 0 {
            // Through the running jobs' index: as cheap as the runs are few.
            let (stalled, escalated): (i64, i64) = sqlx::query_as(
                "SELECT count(stalled_at), count(escalated_at) FROM jobs \
                 WHERE state = 'running' AND lease_expires_at IS NOT NULL",
            )
            .fetch_one(&self.reader)
            .await
            .map_err(db_error)?;
            counts.stalled = stalled.max(0) as u64;
            counts.escalated = escalated.max(0) as u64;
        }
        Ok(counts)
    }

    async fn prune(&self, older_than: Duration, batch: u32) -> Result<u64> {
        write::prune(self, older_than, batch).await
    }

    async fn put_schedule(&self, put: SchedulePut) -> Result<(ScheduleRecord, bool)> {
        schedule::put_schedule(self, put).await
    }

    async fn get_schedule(&self, name: &str) -> Result<ScheduleRecord> {
        schedule::get_schedule(self, name).await
    }

    async fn list_schedules(&self) -> Result<Vec<ScheduleRecord>> {
        schedule::list_schedules(self).await
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        schedule::delete_schedule(self, name).await
    }

    async fn set_schedule_status(
        &self,
        name: &str,
        status: ScheduleStatus,
        reason: Option<String>,
        next_fire_at: NextFire,
    ) -> Result<ScheduleRecord> {
        schedule::set_schedule_status(self, name, status, reason, next_fire_at).await
    }

    async fn due_schedules(&self, limit: u32) -> Result<Vec<ScheduleRecord>> {
        schedule::due_schedules(self, limit).await
    }

    async fn fire(&self, p: FireParams) -> Result<FireResult> {
        schedule::fire(self, p).await
    }

    async fn firing_history(
        &self,
        schedule: &str,
        query: FiringQuery,
    ) -> Result<Vec<FiringRecord>> {
        schedule::firings(self, schedule, query).await
    }

    async fn defer_firing(&self, p: DeferParams) -> Result<DeferResult> {
        schedule::defer_firing(self, p).await
    }

    async fn prune_firings(&self, older_than: Duration, batch: u32) -> Result<u64> {
        schedule::prune_firings(self, older_than, batch).await
    }

    async fn typical_durations(
        &self,
        schedules: &[String],
        kinds: &[String],
    ) -> Result<TypicalDurations> {
        schedule::typical_durations(self, schedules, kinds).await
    }

    async fn raise_pressure(&self, source: &str, ttl: Duration) -> Result<Pressure> {
        schedule::raise_pressure(self, source, ttl).await
    }

    async fn clear_pressure(&self, source: &str) -> Result<bool> {
        schedule::clear_pressure(self, source).await
    }

    async fn list_pressure(&self) -> Result<Vec<Pressure>> {
        schedule::list_pressure(self).await
    }

    async fn record_audit(&self, audit: NewAudit) -> Result<AuditRecord> {
        schedule::record_audit(self, audit).await
    }

    async fn list_audit(&self, limit: u32) -> Result<Vec<AuditRecord>> {
        schedule::list_audit(self, limit).await
    }

    async fn register_worker(&self, worker: NewWorker) -> Result<WorkerRecord> {
        fleet::register_worker(self, worker).await
    }

    async fn touch_worker(&self, id: &str) -> Result<WorkerRecord> {
        fleet::touch_worker(self, id).await
    }

    async fn deregister_worker(&self, id: &str) -> Result<WorkerRecord> {
        fleet::deregister_worker(self, id).await
    }

    async fn get_worker(&self, id: &str) -> Result<WorkerRecord> {
        fleet::get_worker(self, id).await
    }

    async fn list_workers(&self, limit: u32, keep_gone: Duration) -> Result<Vec<WorkerRecord>> {
        fleet::list_workers(self, limit, keep_gone).await
    }

    async fn save_checkpoint(&self, job: JobId, epoch: i64, data: Vec<u8>) -> Result<Checkpoint> {
        fleet::save_checkpoint(self, job, epoch, data).await
    }

    async fn load_checkpoint(&self, job: JobId) -> Result<Option<Checkpoint>> {
        fleet::load_checkpoint(self, job).await
    }

    async fn send_mail(&self, mail: NewMail) -> Result<Mail> {
        fleet::send_mail(self, mail).await
    }

    async fn read_mail(&self, job: JobId, mark_read: bool) -> Result<Vec<Mail>> {
        fleet::read_mail(self, job, mark_read).await
    }

    async fn unread_mail(&self, job: JobId) -> Result<u64> {
        fleet::unread_mail(self, job).await
    }

    async fn supervise(&self, params: SuperviseParams) -> Result<Supervised> {
        supervision::supervise(self, params).await
    }

    async fn claim_deliveries(&self, limit: u32, lease: Duration) -> Result<Vec<Delivery>> {
        supervision::claim_deliveries(self, limit, lease).await
    }

    async fn record_delivery(
        &self,
        id: i64,
        attempt: i32,
        outcome: DeliveryOutcome,
    ) -> Result<bool> {
        supervision::record_delivery(self, id, attempt, outcome).await
    }

    async fn next_delivery_in(&self) -> Result<Option<Duration>> {
        supervision::next_delivery_in(self).await
    }

    async fn prune_deliveries(&self, older_than: Duration, batch: u32) -> Result<u64> {
        supervision::prune_deliveries(self, older_than, batch).await
    }
}
