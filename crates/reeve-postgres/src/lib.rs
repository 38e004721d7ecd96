//! The PostgreSQL backend: several daemons share one database (SPEC §9).
//!
//! **Invariants.**
//! - *One clock, the database's.* Every instant written and every lease
//!   comparison uses the server's clock (`clock_timestamp()` as BIGINT
//!   milliseconds) plus this store's test offset
//!   ([`PostgresStore::advance_clock`]); a transaction reads it once and binds
//!   it, so one transaction uses one instant. Nothing compares a database
//!   time with the process clock.
//! - *Every mutation is one transaction* (or one statement) on a pooled
//!   connection at READ COMMITTED, made safe by row locks: write-backs, reaps,
//!   cancels and retries read the job `FOR UPDATE` and update fenced on
//!   `(id, epoch, state)`; claims take candidate rows with `FOR UPDATE SKIP
//!   LOCKED`, so concurrent claimers never block on or double-claim a row.
//! - *Caps are serialized by an advisory lock.* A claim that any cap applies
//!   to takes the schema's claim lock exclusively (`pg_advisory_xact_lock`)
//!   before it counts running jobs, so the count and the update are one atomic
//!   step against every other capped claim; uncapped claims take the same
//!   lock *shared*, so they run in parallel yet a capped claim waits for the
//!   uncapped claims in flight when a cap appears (see `write::claim`).
//! - *Schedules before jobs.* A write that locks both locks the schedule rows
//!   first (in name order), then the job rows (see `schedule`), so firings
//!   and the writes that settle a firing's end never deadlock.
//! - *Wake-ups cross processes.* Every transaction that raises a local signal
//!   also runs `pg_notify` on `reeve_work` / `reeve_deadlines` with the schema
//!   name as payload (delivered at commit); the listener task (`listen`)
//!   turns other processes' notifications into local [`Signals`].
//! - *One leader per schema* ([`PgLeadership`]): a session advisory lock on
//!   a dedicated connection, released by PostgreSQL when that session ends.
//! - *No credentials in errors.* Connection errors name host, port and
//!   database, never the URL or the password.

mod fleet;
mod leader;
mod listen;
mod rows;
mod schedule;
mod supervision;
mod write;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reeve_core::{Event, Job, JobFilter, JobId, Page, Timestamp};
use reeve_schedule::ScheduleStatus;
use reeve_store::fleet::{Checkpoint, Mail, NewMail, NewWorker, WorkerRecord};
use reeve_store::{
    AuditRecord, ClaimParams, DeferParams, DeferResult, Delivery, DeliveryOutcome, Enqueued,
    Finish, FireParams, FireResult, FiringQuery, FiringRecord, HeartbeatAck, HeartbeatParams,
    Leadership, Limits, NewAudit, NextFire, Pressure, QueueInfo, QueuePatch, QueueSettings, Result,
    RunOutput, SchedulePut, ScheduleRecord, Signals, StatusCounts, Store, StoreConfig, StoreError,
    SuperviseParams, Supervised, TypicalDurations,
};
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row};

pub use leader::PgLeadership;
pub use sqlx::postgres::PgConnectOptions;

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

/// The database's clock in milliseconds since the epoch, plus the offset
/// bound as `$1`.
const NOW_QUERY: &str = "SELECT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint + $1";

/// How the backend connects. Its `Debug` shows the target, never the
/// password.
#[derive(Clone)]
pub struct PostgresOptions {
    /// Where and as whom to connect (a password set here never appears in an
    /// error or a log line).
    pub connect: PgConnectOptions,
    /// The schema holding reeve's tables (set as every connection's
    /// `search_path`, created at open if missing). `None` keeps the server's
    /// default `search_path` (usually `public`). Lowercase ASCII letters,
    /// digits and `_`, starting with a letter or `_`, at most 63 bytes.
    pub schema: Option<String>,
    /// Size of the connection pool (the listener has its own connection).
    pub max_connections: u32,
    /// How long an operation waits for a pooled connection.
    pub acquire_timeout: Duration,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("target", &self.target())
            .field("user", &self.connect.get_username())
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish_non_exhaustive()
    }
}

impl PostgresOptions {
    /// Options for `connect` with the default pool (8 connections, 10s
    /// acquire timeout) and the server's default schema.
    pub fn new(connect: PgConnectOptions) -> Self {
        PostgresOptions {
            connect,
            schema: None,
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
        }
    }

    /// Parses a `postgres://user[:password]@host[:port]/database[?…]` URL.
    /// The error never repeats the URL.
    pub fn from_url(url: &str) -> Result<Self> {
        let connect = PgConnectOptions::from_str(url).map_err(|e| StoreError::Database {
            message: format!("invalid PostgreSQL URL: {e}"),
            transient: false,
        })?;
        Ok(PostgresOptions::new(connect))
    }

    /// Uses `schema` for reeve's tables.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// `host:port/database`, for messages (never the password).
    pub fn target(&self) -> String {
        let c = &self.connect;
        let host = match c.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => format!("{}:{}", c.get_host(), c.get_port()),
        };
        format!("{host}/{}", c.get_database().unwrap_or(c.get_username()))
    }
}

/// Checks a schema name against the conservative form this crate accepts,
/// so it never needs quoting in `search_path`, SQL or notifications.
pub fn validate_schema(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(reeve_core::InputError::new(
            "schema",
            "use lowercase ASCII letters, digits and '_', starting with a letter or '_' (at most 63 bytes)",
        )
        .into())
    }
}

/// The PostgreSQL implementation of [`Store`].
pub struct PostgresStore {
    pool: PgPool,
    config: StoreConfig,
    clock_offset_ms: AtomicI64,
    signals: Arc<Signals>,
    /// The schema the tables live in (`current_schema()` at open): the
    /// payload of this store's notifications and the seed of its lock key.
    schema: String,
    /// Advisory lock key serializing capped claims in this schema.
    claim_lock_key: i64,
    /// Advisory lock key serializing raises and clears of pressure signals.
    pressure_lock_key: i64,
    /// Whether the last claim saw a cap (then the next one takes the claim
    /// lock exclusively at once instead of finding out under the shared one).
    caps_hint: AtomicBool,
    listener: Arc<listen::ListenerState>,
    listener_task: Mutex<Option<listen::Handle>>,
    /// The schema's leader lock (its connection is opened on first use).
    leadership: Arc<PgLeadership>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// FNV-1a, 64 bits: a stable hash (unlike std's) for advisory lock keys, so
/// every process derives the same key for the same schema.
fn stable_key(s: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…`), applies migrations and starts the
    /// notification listener.
    pub async fn open(url: &str, config: StoreConfig) -> Result<Self> {
        Self::open_with(PostgresOptions::from_url(url)?, config).await
    }

    /// Like [`PostgresStore::open`] with options built by the caller (a
    /// password from elsewhere, a schema, the pool size).
    pub async fn open_with(opts: PostgresOptions, config: StoreConfig) -> Result<Self> {
        if let Some(schema) = &opts.schema {
            validate_schema(schema)?;
        }
        let target = opts.target();
        let connect_error = |e: sqlx::Error| {
            let e = db_error(e);
            match e {
                StoreError::Database { message, transient } => StoreError::Database {
                    message: format!("cannot connect to PostgreSQL at {target}: {message}"),
                    transient,
                },
                other => other,
            }
        };
        let mut connect = opts.connect.clone();
        if let Some(schema) = &opts.schema {
            connect = connect.options([("search_path", schema.as_str())]);
        }
        if connect.get_application_name().is_none() {
            connect = connect.application_name("reeve");
        }
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(connect.clone())
            .await
            .map_err(connect_error)?;
        if let Some(schema) = &opts.schema {
            ensure_schema(&pool, schema).await?;
        }
        let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&pool)
            .await
            .map_err(db_error)?;
        let schema = schema.ok_or_else(|| StoreError::Database {
            message:
                "no schema to create reeve's tables in: the search_path names no existing schema"
                    .into(),
            transient: false,
        })?;
        let signals = Arc::new(Signals::default());
        let listener = Arc::new(listen::ListenerState::default());
        let store = PostgresStore {
            pool,
            config,
            clock_offset_ms: AtomicI64::new(0),
            signals: signals.clone(),
            claim_lock_key: stable_key(&format!("reeve/claim/{schema}")),
            pressure_lock_key: stable_key(&format!("reeve/pressure/{schema}")),
            schema: schema.clone(),
            caps_hint: AtomicBool::new(false),
            listener: listener.clone(),
            listener_task: Mutex::new(None),
            leadership: Arc::new(PgLeadership::new(
                connect
                    .clone()
                    .application_name(&format!("reeve-leader-{schema}")),
                stable_key(&format!("reeve/leader/{schema}")),
            )),
        };
        store.migrate().await?;
        let listener_connect = connect.application_name(&format!("reeve-listener-{schema}"));
        let task = listen::start(listener_connect, schema, signals, listener)
            .await
            .map_err(connect_error)?;
        *store.listener_task.lock().expect("listener lock") = Some(task);
        Ok(store)
    }

    /// Applies the embedded migrations (idempotent; serialized across
    /// processes by sqlx's migration lock).
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
            .run(&self.pool)
            .await
            .map_err(|e| {
                // A connection lost mid-migration is as transient as any
                // other lost connection: the caller may retry.
                let transient = match &e {
                    MigrateError::Execute(inner) | MigrateError::ExecuteMigration(inner, _) => {
                        rows::is_transient(inner)
                    }
                    _ => false,
                };
                StoreError::Database {
                    message: format!("migration failed: {e}"),
                    transient,
                }
            })
    }

    /// Moves this store's clock forward (tests use it to pass leases and
    /// backoffs without sleeping). It offsets the database's clock as this
    /// store reads it; other stores keep their own offset.
    pub fn advance_clock(&self, by: Duration) {
        self.clock_offset_ms
            .fetch_add(reeve_core::time::duration_millis(by), Ordering::SeqCst);
    }

    /// How far [`PostgresStore::advance_clock`] has moved this store's clock.
    pub fn clock_offset(&self) -> Duration {
        Duration::from_millis(self.offset().max(0) as u64)
    }

    /// The schema holding this store's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The server process id of the listener's connection, `None` while it
    /// is reconnecting.
    pub fn listener_backend_pid(&self) -> Option<i32> {
        self.listener.backend_pid()
    }

    /// How many times the listener has (re)connected and subscribed.
    pub fn listener_connects(&self) -> u64 {
        self.listener.connects()
    }

    /// Drops this store's own schema with everything in it, then closes the
    /// store. Only for throwaway schemas (the benchmark's); refuses when the
    /// store uses the server's default schema.
    pub async fn drop_schema_and_close(&self) -> Result<()> {
        let schema = self.schema.clone();
        if schema == "public" {
            return Err(StoreError::Database {
                message: "refusing to drop the public schema".into(),
                transient: false,
            });
        }
        let result = sqlx::query(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(db_error);
        self.close().await;
        result
    }

    /// Gives up leadership, stops the listener and closes the pool (waiting
    /// for connections in use to come back). Operations after `close` fail
    /// with a database error.
    pub async fn close(&self) {
        self.leadership.release().await;
        let task = self.listener_task.lock().expect("listener lock").take();
        if let Some(task) = task {
            task.shutdown().await;
        }
        self.pool.close().await;
    }

    fn offset(&self) -> i64 {
        self.clock_offset_ms.load(Ordering::SeqCst)
    }

    /// The database's clock (plus offset), read on `conn`.
    async fn db_now(&self, conn: &mut PgConnection) -> Result<i64> {
        sqlx::query_scalar(NOW_QUERY)
            .bind(self.offset())
            .fetch_one(conn)
            .await
            .map_err(db_error)
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.pool.begin().await.map_err(db_error)
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Ok(mut task) = self.listener_task.lock()
            && let Some(task) = task.take()
        {
            task.stop();
        }
    }
}

/// Creates `schema` if it does not exist. Checks first, so a role without
/// `CREATE` on the database can use a schema made for it.
async fn ensure_schema(pool: &PgPool, schema: &str) -> Result<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(pool)
            .await
            .map_err(db_error)?;
    if exists {
        return Ok(());
    }
    // The name was validated: no quoting needed, nothing to inject.
    match sqlx::query(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(pool)
    .await
    {
        Ok(_) => Ok(()),
        // Another process created it between the check and here.
        Err(sqlx::Error::Database(d)) if matches!(d.code().as_deref(), Some("23505" | "42P06")) => {
            Ok(())
        }
        Err(e) => Err(db_error(e)),
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn signals(&self) -> &Signals {
        &self.signals
    }

    /// A session advisory lock per schema, held on a dedicated connection.
    async fn close(&self) {
        PostgresStore::close(self).await;
    }

    fn leadership(&self) -> Arc<dyn Leadership> {
        self.leadership.clone()
    }

    async fn now(&self) -> Result<Timestamp> {
        let now: i64 = sqlx::query_scalar(NOW_QUERY)
            .bind(self.offset())
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(Timestamp(now))
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
                    (floor(extract(epoch from clock_timestamp()) * 1000))::bigint + $1, \
                    (SELECT min(greatest(next_fire_at, defer_until)) FROM schedules \
                       WHERE status = 'active' AND next_fire_at IS NOT NULL)",
        )
        .bind(self.offset())
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        let lease: Option<i64> = row.try_get(0).map_err(db_error)?;
        let due: Option<i64> = row.try_get(1).map_err(db_error)?;
        let now: i64 = row.try_get(2).map_err(db_error)?;
        let fire: Option<i64> = row.try_get(3).map_err(db_error)?;
        let next = [lease, due, fire].into_iter().flatten().min();
        Ok(next.map(|at| Duration::from_millis(at.saturating_sub(now).max(0) as u64)))
    }

    async fn get_job(&self, id: JobId) -> Result<Job> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or(StoreError::NotFound(id))?;
        job_from_row(&row)
    }

    async fn runs_since(&self, since: Timestamp, limit: u32) -> Result<Vec<Job>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM ( \
               SELECT * FROM jobs WHERE state = 'running' \
               UNION ALL \
               SELECT * FROM jobs WHERE finished_at >= $1 AND claimed_at IS NOT NULL) AS runs \
             ORDER BY claimed_at, id LIMIT $2"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(since.0)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter().map(job_from_row).collect()
    }

    async fn finished_stats(&self, since: Timestamp) -> Result<reeve_store::FinishedStats> {
        let mut stats = reeve_store::FinishedStats::default();
        let hours: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT (finished_at - $1) / 3600000 AS h, COUNT(*) FROM jobs \
             WHERE finished_at >= $1 GROUP BY h",
        )
        .bind(since.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        stats.per_hour = hours
            .into_iter()
            .map(|(h, n)| (h, n.max(0) as u64))
            .collect();
        let reasons: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT failure_reason, COUNT(*) FROM jobs \
             WHERE state = 'failed' AND finished_at >= $1 GROUP BY failure_reason",
        )
        .bind(since.0)
        .fetch_all(&self.pool)
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
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE TRUE");
        let mut n = 0;
        let mut param = |sql: &mut String, clause: &str| {
            n += 1;
            sql.push_str(&format!(" AND {clause} ${n}"));
        };
        if filter.state.is_some() {
            param(&mut sql, "state =");
        }
        if filter.queue.is_some() {
            param(&mut sql, "queue =");
        }
        if filter.kind.is_some() {
            param(&mut sql, "kind =");
        }
        if filter.schedule.is_some() {
            param(&mut sql, "schedule =");
        }
        if filter.before_id.is_some() {
            param(&mut sql, "id <");
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", n + 1));
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
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let items = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        Ok(reeve_store::transition::page(items, limit))
    }

    async fn job_events(&self, id: JobId) -> Result<Vec<Event>> {
        self.get_job(id).await?;
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE job_id = $1 ORDER BY id");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn job_output(&self, id: JobId) -> Result<Vec<RunOutput>> {
        self.get_job(id).await?;
        let rows = sqlx::query(
            "SELECT job_id, attempt, output FROM run_output WHERE job_id = $1 ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|r| {
                Ok(RunOutput {
                    job_id: r.try_get(0).map_err(db_error)?,
                    attempt: r.try_get(1).map_err(db_error)?,
                    output: String::from_utf8_lossy(&r.try_get::<Vec<u8>, _>(2).map_err(db_error)?)
                        .into_owned(),
                })
            })
            .collect()
    }

    async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        let settings = sqlx::query("SELECT name, concurrency, paused FROM queues ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let counts = sqlx::query(
            "SELECT queue, state, COUNT(*) FROM jobs \
             WHERE state IN ('scheduled', 'available', 'running', 'retryable') GROUP BY queue, state",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut queues: Vec<QueueInfo> = settings
            .iter()
            .map(|r| {
                Ok(QueueInfo {
                    name: r.try_get(0).map_err(db_error)?,
                    settings: QueueSettings {
                        concurrency: r
                            .try_get::<Option<i64>, _>(1)
                            .map_err(db_error)?
                            .map(|c| c.clamp(0, i64::from(u32::MAX)) as u32),
                        paused: r.try_get(2).map_err(db_error)?,
                    },
                    scheduled: 0,
                    available: 0,
                    running: 0,
                    retryable: 0,
                })
            })
            .collect::<Result<_>>()?;
        for r in &counts {
            let name: String = r.try_get(0).map_err(db_error)?;
            let state: String = r.try_get(1).map_err(db_error)?;
            let n = r.try_get::<i64, _>(2).map_err(db_error)?.max(0) as u64;
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
        write::update_queue(self, name, patch).await?;
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
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        Ok(Limits {
            global: global.and_then(|v| v.parse().ok()),
        })
    }

    async fn set_limits(&self, limits: Limits) -> Result<Limits> {
        write::set_limits(self, limits).await?;
        Ok(limits)
    }

    async fn status(&self) -> Result<StatusCounts> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM jobs GROUP BY state")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let mut counts = StatusCounts::default();
        for state in reeve_core::JobState::ALL {
            counts.by_state.insert(state.as_str().to_string(), 0);
        }
        for r in &rows {
            let state: String = r.try_get(0).map_err(db_error)?;
            let n = r.try_get::<i64, _>(1).map_err(db_error)?.max(0) as u64;
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
            .fetch_one(&self.pool)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_conservative() {
        for ok in ["public", "reeve", "reeve_t_0af3", "_x", "a1"] {
            assert!(validate_schema(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "Reeve",
            "a-b",
            "a b",
            "a\"b",
            "a;drop",
            &"x".repeat(64),
        ] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lock_keys_are_stable_and_per_schema() {
        assert_eq!(
            stable_key("reeve/claim/public"),
            stable_key("reeve/claim/public")
        );
        assert_ne!(stable_key("reeve/claim/a"), stable_key("reeve/claim/b"));
        // FNV-1a test vector: a stable hash, not std's randomized one.
        assert_eq!(stable_key("a") as u64, 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn urls_parse_and_targets_hide_the_password() {
        let opts = PostgresOptions::from_url("postgres://me:s3cret@db.example:6543/reeve").unwrap();
        let target = opts.target();
        assert_eq!(target, "db.example:6543/reeve");
        let debug = format!("{opts:?}");
        assert!(
            debug.contains("db.example") && !debug.contains("s3cret"),
            "{debug}"
        );
        let err = PostgresOptions::from_url("postgres://me:s3cret@db.example:notaport/reeve")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
