//! The storage trait: every durable state change reeve makes, as one method.
//!
//! Each mutating method of [`Store`] is **one atomic statement or one
//! transaction** in the backend, never a read followed by a separate write.
//! Executor write-backs are **fenced**: they apply only while the job is
//! `running` with the epoch the executor presents, and otherwise change
//! nothing and answer [`StoreError::StaleEpoch`] or [`StoreError::NotRunning`].
//!
//! **Architecture invariant:** lease arithmetic uses the *store's* clock
//! ([`Store::now`]): the daemon's on SQLite, the database's `now()` on
//! PostgreSQL. Callers pass durations, never instants computed from their own
//! clock, so a daemon with a skewed clock still reaps and extends correctly.
//!
//! The engine holds an `Arc<dyn Store>` and knows nothing of SQL; the
//! [`conformance`] suite (feature `conformance`) is the one body of tests that
//! every backend must pass.

use std::time::Duration;

use async_trait::async_trait;
use reeve_core::{Event, FailureReason, Job, JobFilter, JobId, JobState, NewJob, Page, Timestamp};
use reeve_schedule::ScheduleStatus;
use serde::{Deserialize, Serialize};

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod fleet;
pub mod leader;
pub mod log;
pub mod operator;
pub mod outbox;
pub mod schedule;
pub mod settle;
pub mod supervision;
pub mod transition;

pub use fleet::{Checkpoint, Mail, NewMail, NewWorker, WorkerRecord};
pub use leader::{Leadership, SoleLeader};
pub use operator::{AuditRecord, CapacityFull, NewAudit, Pressure};
pub use outbox::{Delivery, DeliveryOutcome, NewDelivery, Subscriptions, WebhookEvent};
pub use schedule::{
    DeferParams, DeferResult, FireParams, FireResult, FiringOutcome, FiringQuery, FiringRecord,
    NextFire, SchedulePut, ScheduleRecord,
};
pub use settle::StreakPolicy;
pub use supervision::{SuperviseParams, Supervised};

/// Errors of the store: domain refusals (nothing changed) and infrastructure
/// failures.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error("schedule {0} not found")]
    ScheduleNotFound(String),
    /// No such worker registration, or it was deregistered.
    #[error("worker {0} not found")]
    WorkerNotFound(String),
    /// A write carried an epoch that is not the job's current one. `expected`
    /// is the job's current epoch, `actual` the epoch the writer presented.
    #[error("stale epoch: the job is at epoch {expected}, the write carried {actual}")]
    StaleEpoch { expected: i64, actual: i64 },
    /// The epoch matches but the run is over (or its lease has passed, for
    /// heartbeats).
    #[error("the job is not running (state {state})")]
    NotRunning { state: JobState },
    /// The epoch matches but the lease has already passed: the run is about
    /// to be reaped, so a heartbeat cannot revive it.
    #[error("the lease has expired")]
    LeaseExpired,
    /// The operation does not apply to a job in this state.
    #[error("cannot {action} a job in state {state}")]
    InvalidState {
        action: &'static str,
        state: JobState,
    },
    #[error("invalid input: {0}")]
    Input(#[from] reeve_core::InputError),
    /// The database failed. `transient` errors (busy, connection lost) may be
    /// retried; the message never contains credentials.
    #[error("database error: {message}")]
    Database { message: String, transient: bool },
}

impl StoreError {
    /// Whether nothing was changed because the request does not apply (as
    /// opposed to the database failing).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, StoreError::Database { .. })
    }

    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Database {
                transient: true,
                ..
            }
        )
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Result of enqueueing one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enqueued {
    pub job: Job,
    /// False when a non-terminal job with the same `unique_key` existed and
    /// was returned instead.
    pub created: bool,
}

/// Which kinds a claimer can run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KindFilter {
    #[default]
    Any,
    /// These kinds, plus ad-hoc command jobs when `commands` is set.
    Only { kinds: Vec<String>, commands: bool },
}

impl KindFilter {
    /// Whether a job of `kind` (an ad-hoc command job when `command`) passes.
    pub fn accepts(&self, kind: &str, command: bool) -> bool {
        match self {
            KindFilter::Any => true,
            KindFilter::Only { kinds, commands } => {
                (command && *commands) || kinds.iter().any(|k| k == kind)
            }
        }
    }
}

/// A claim request: up to `limit` jobs in one round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimParams {
    /// The claiming worker's identity, recorded as `claimed_by`.
    pub worker: String,
    /// Queues to claim from; `None` = every queue.
    pub queues: Option<Vec<String>>,
    pub kinds: KindFilter,
    pub limit: u32,
    /// Whether the executor heartbeats (SPEC §4): if not, the lease is only
    /// `claimed_at + max_run_duration`.
    pub heartbeats: bool,
    /// The claimer's placement labels (SPEC §6): a job is taken only when
    /// its `requires` are all among them
    /// ([`reeve_core::placement::satisfies`]); with none, only jobs without
    /// requirements are taken.
    pub labels: Vec<String>,
}

/// A heartbeat for one run, optionally carrying progress reports.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeartbeatParams {
    pub job: JobId,
    pub epoch: i64,
    /// Turns used so far by the run (absolute, not a delta).
    pub turns: Option<i64>,
    pub progress: Option<String>,
}

/// What a successful heartbeat tells the executor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    pub lease_expires_at: Timestamp,
    /// An operator asked to cancel: stop the work and fail with `cancelled`.
    pub cancel_requested: bool,
    pub turns: i64,
    pub max_turns: Option<i64>,
}

/// How a run ended, as reported by its executor.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded {
        result: Option<serde_json::Value>,
    },
    Failed {
        reason: FailureReason,
        error: Option<String>,
    },
}

/// A fenced write-back of one run's end.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub job: JobId,
    pub epoch: i64,
    pub outcome: Outcome,
    /// The tail of the run's output, kept with the job.
    pub output: Option<Vec<u8>>,
}

/// Per-queue settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueSettings {
    /// Maximum running jobs in this queue; `None` = no per-queue cap.
    pub concurrency: Option<u32>,
    pub paused: bool,
}

/// A change to a queue's settings; `None` fields are left as they are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueuePatch {
    /// `Some(None)` removes the cap.
    pub concurrency: Option<Option<u32>>,
    pub paused: Option<bool>,
}

/// A queue with its settings and how many jobs it holds in each live state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    pub name: String,
    #[serde(flatten)]
    pub settings: QueueSettings,
    pub scheduled: u64,
    pub available: u64,
    pub running: u64,
    pub retryable: u64,
}

/// Limits that span queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Maximum running jobs across all queues; `None` = no global cap.
    pub global: Option<u32>,
}

/// Counts for `reeve status`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatusCounts {
    pub by_state: std::collections::BTreeMap<String, u64>,
    pub running: u64,
    /// Running runs the supervisor found without progress (SPEC §10),
    /// escalated ones included.
    #[serde(default)]
    pub stalled: u64,
    /// Running runs whose stall was escalated.
    #[serde(default)]
    pub escalated: u64,
}

/// Output kept for one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutput {
    pub job_id: JobId,
    pub attempt: i32,
    pub output: String,
}

/// Static settings a backend is opened with.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub default_max_run_duration: Duration,
    pub default_heartbeat_timeout: Duration,
    pub retry: reeve_core::RetryPolicy,
    /// How long a running job's executor gets to stop after a cancel before
    /// the reaper ends the run anyway.
    pub cancel_grace: Duration,
    /// When failure streaks auto-pause a schedule.
    pub streaks: StreakPolicy,
    /// Which webhooks receive which events: the store writes outbox rows
    /// for subscribed events only, in the transaction of the change.
    pub webhooks: Subscriptions,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            default_max_run_duration: reeve_core::job::DEFAULT_MAX_RUN_DURATION,
            default_heartbeat_timeout: reeve_core::job::DEFAULT_HEARTBEAT_TIMEOUT,
            retry: reeve_core::RetryPolicy::default(),
            cancel_grace: Duration::from_secs(15),
            streaks: StreakPolicy::default(),
            webhooks: Subscriptions::none(),
        }
    }
}

/// Durable state of jobs, queues and limits. See the crate docs for the
/// atomicity and fencing contract every method keeps.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// Wake-ups published after each commit (see [`Signals`]).
    fn signals(&self) -> &Signals;

    /// Closes the store's connections (after the engine has stopped).
    async fn close(&self) {}

    /// How daemons sharing this store elect the one that runs maintenance.
    /// By default every process leads alone ([`SoleLeader`]).
    fn leadership(&self) -> std::sync::Arc<dyn Leadership> {
        std::sync::Arc::new(SoleLeader)
    }

    /// The store's clock: the authority for every lease comparison.
    async fn now(&self) -> Result<Timestamp>;

    /// Inserts jobs in one transaction; a job whose `unique_key` matches a
    /// non-terminal job returns that job instead (`created: false`).
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>>;

    /// Claims up to `limit` available jobs in priority order, skipping paused
    /// queues and jobs whose requirements the claimer's labels do not meet
    /// (so a pinned job never holds back the jobs behind it), and never
    /// letting the running count exceed the global cap or a queue's cap.
    /// Claiming nothing is a normal outcome. A claim is the run's first
    /// progress (`progress_at`; no stall).
    async fn claim(&self, params: ClaimParams) -> Result<Vec<Job>>;

    /// Extends the lease of a running run. Refused (nothing changes) when the
    /// epoch is stale, the run is over, or its lease has already passed. A
    /// turn count above the stored one, or a progress note that differs from
    /// the stored one, is progress (SPEC §10): `progress_at` moves to now and
    /// a stall is cleared, in the same statement.
    async fn heartbeat(&self, params: HeartbeatParams) -> Result<HeartbeatAck>;

    /// Ends runs: each element is fenced on its own and answered on its own;
    /// the batch shares one transaction. A job that succeeds and names an
    /// `on_success` follow-up has it enqueued in that same transaction
    /// ([`transition::follow_up`], SPEC §10); failures enqueue nothing. The
    /// subscribed outbox rows of the jobs that reach `failed` and of the
    /// schedules their ends auto-pause ([`outbox::ended`]) are written in
    /// that transaction too, as they are by [`Store::reap_expired`] and
    /// [`Store::cancel`].
    async fn finish(&self, batch: Vec<Finish>) -> Result<Vec<Result<Job>>>;

    /// Cancels a job. A waiting job is cancelled at once; a running one gets
    /// `cancel_requested_at` and a lease shortened to the cancel grace, and is
    /// cancelled when its executor reports back (or the reaper ends it).
    async fn cancel(&self, id: JobId) -> Result<Job>;

    /// An operator's retry of a `failed` or `cancelled` job: back to
    /// `available` with attempts reset and the epoch kept.
    async fn retry(&self, id: JobId) -> Result<Job>;

    /// Ends up to `limit` runs whose lease has passed (`timeout` when the run
    /// passed its `max_run_duration`, else `heartbeat_lost`), and returns
    /// them in their new state.
    async fn reap_expired(&self, limit: u32) -> Result<Vec<Job>>;

    /// Moves up to `limit` `scheduled` / `retryable` jobs whose time has come
    /// to `available`; returns how many moved.
    async fn promote_due(&self, limit: u32) -> Result<u64>;

    /// Time until the next lease expiry, due job or due schedule
    /// (`next_fire_at` of an active one), `Some(ZERO)` if one is already due,
    /// `None` if nothing is pending.
    async fn next_due_in(&self) -> Result<Option<Duration>>;

    async fn get_job(&self, id: JobId) -> Result<Job>;

    /// The running jobs (of `queue`, if given), newest first, at most `limit`.
    async fn running_jobs(&self, queue: Option<&str>, limit: u32) -> Result<Vec<Job>> {
        Ok(self
            .list_jobs(JobFilter {
                state: Some(JobState::Running),
                queue: queue.map(str::to_string),
                limit,
                ..Default::default()
            })
            .await?
            .items)
    }

    /// Runs that overlap `[since, now]`: jobs running now, and jobs that
    /// finished at or after `since` after being claimed; oldest claim first,
    /// at most `limit` (the timeline's question).
    async fn runs_since(&self, since: Timestamp, limit: u32) -> Result<Vec<Job>>;

    /// Counts of the jobs that finished at or after `since`: per hour from
    /// `since`, and the failed ones by reason (the metrics page's question,
    /// answered by aggregates on the finished-at index, not by loading rows).
    async fn finished_stats(&self, since: Timestamp) -> Result<FinishedStats>;
    async fn list_jobs(&self, filter: JobFilter) -> Result<Page<Job>>;
    async fn job_events(&self, id: JobId) -> Result<Vec<Event>>;
    async fn job_output(&self, id: JobId) -> Result<Vec<RunOutput>>;

    async fn list_queues(&self) -> Result<Vec<QueueInfo>>;
    async fn update_queue(&self, name: &str, patch: QueuePatch) -> Result<QueueInfo>;
    async fn limits(&self) -> Result<Limits>;
    async fn set_limits(&self, limits: Limits) -> Result<Limits>;
    async fn status(&self) -> Result<StatusCounts>;

    /// Deletes terminal jobs (with their events and output) finished more than
    /// `older_than` ago, at most `batch` jobs per call; returns how many.
    async fn prune(&self, older_than: Duration, batch: u32) -> Result<u64>;

    /// Upserts a schedule by `spec.name` in one statement; answers the row
    /// and whether it was created. Never touches an existing row's streaks,
    /// `last_nominal` or `created_at`.
    async fn put_schedule(&self, put: SchedulePut) -> Result<(ScheduleRecord, bool)>;

    /// [`StoreError::ScheduleNotFound`] when there is none.
    async fn get_schedule(&self, name: &str) -> Result<ScheduleRecord>;

    /// Every schedule, by name.
    async fn list_schedules(&self) -> Result<Vec<ScheduleRecord>>;

    /// Deletes a schedule (its jobs and ledger rows stay); false when there
    /// was none.
    async fn delete_schedule(&self, name: &str) -> Result<bool>;

    /// Sets a schedule's status and paused reason (cleared when `active`),
    /// and its `next_fire_at` per `next_fire_at`, in one statement.
    async fn set_schedule_status(
        &self,
        name: &str,
        status: ScheduleStatus,
        reason: Option<String>,
        next_fire_at: NextFire,
    ) -> Result<ScheduleRecord>;

    /// Up to `limit` active schedules whose `next_fire_at` has come (the
    /// store's clock), earliest first.
    async fn due_schedules(&self, limit: u32) -> Result<Vec<ScheduleRecord>>;

    /// Fires a schedule in one transaction: checks `expected_next` against
    /// the stored `next_fire_at` (else [`FireResult::LostRace`], nothing
    /// changed), applies the overlap policy against the schedule's live jobs,
    /// inserts the job (as [`Store::enqueue`] does, with its schedule and
    /// nominal time), writes the ledger row and advances `next_fire_at`.
    async fn fire(&self, p: FireParams) -> Result<FireResult>;

    /// Ledger rows of a schedule, newest nominal time first.
    async fn firing_history(&self, schedule: &str, query: FiringQuery)
    -> Result<Vec<FiringRecord>>;

    /// The newest `limit` ledger rows of a schedule, newest first.
    async fn firings(&self, schedule: &str, limit: u32) -> Result<Vec<FiringRecord>> {
        self.firing_history(schedule, FiringQuery::latest(limit))
            .await
    }

    /// Defers a due fire time under pressure, in one transaction
    /// conditioned on `expected_next`: sets the schedule's `defer_until`,
    /// counts the deferral and records a `deferred` ledger row for the
    /// nominal time (which becomes the firing's row when it fires).
    async fn defer_firing(&self, p: DeferParams) -> Result<DeferResult>;

    /// Deletes ledger rows written more than `older_than` ago, at most
    /// `batch` per call; returns how many.
    async fn prune_firings(&self, older_than: Duration, batch: u32) -> Result<u64>;

    /// The median duration of the latest (up to 20) finished runs of each
    /// schedule (from its ledger) or, for jobs without one, of each kind.
    /// Keys absent from the answer have no finished runs.
    async fn typical_durations(
        &self,
        schedules: &[String],
        kinds: &[String],
    ) -> Result<TypicalDurations>;

    /// Raises (or renews) a pressure signal until `ttl` from the store's now.
    async fn raise_pressure(&self, source: &str, ttl: Duration) -> Result<Pressure>;

    /// Clears a pressure signal; false when it was not active. When no signal
    /// remains, deferred fire times become due at once.
    async fn clear_pressure(&self, source: &str) -> Result<bool>;

    /// The active pressure signals, by source.
    async fn list_pressure(&self) -> Result<Vec<Pressure>>;

    /// Writes one audit record.
    async fn record_audit(&self, audit: NewAudit) -> Result<AuditRecord>;

    /// The newest `limit` audit records, newest first.
    async fn list_audit(&self, limit: u32) -> Result<Vec<AuditRecord>>;

    /// Registers a worker process under a fresh id (`w-` and random hex).
    async fn register_worker(&self, worker: NewWorker) -> Result<WorkerRecord>;

    /// Marks a registered worker seen at the store's now.
    /// [`StoreError::WorkerNotFound`] if unknown or deregistered.
    async fn touch_worker(&self, id: &str) -> Result<WorkerRecord>;

    /// Marks a worker deregistered (it stays listed). Its runs are released
    /// by the caller (a fenced `worker_shutdown` failure each).
    async fn deregister_worker(&self, id: &str) -> Result<WorkerRecord>;

    /// [`StoreError::WorkerNotFound`] when there is none (deregistered ones
    /// are found).
    async fn get_worker(&self, id: &str) -> Result<WorkerRecord>;

    /// Registrations, latest seen first, at most `limit`; deregistered ones
    /// only if deregistered within `keep_gone` of now.
    async fn list_workers(&self, limit: u32, keep_gone: Duration) -> Result<Vec<WorkerRecord>>;

    /// Saves the latest checkpoint of a running job, fenced on `epoch`
    /// (`StaleEpoch` / `NotRunning` otherwise, nothing changed). A saved
    /// checkpoint is progress: `progress_at` moves to now and a stall is
    /// cleared, in the same transaction.
    async fn save_checkpoint(&self, job: JobId, epoch: i64, data: Vec<u8>) -> Result<Checkpoint>;

    /// The job's latest checkpoint, if any (`NotFound` if no such job).
    async fn load_checkpoint(&self, job: JobId) -> Result<Option<Checkpoint>>;

    /// Sends a message to a job (`NotFound` if no such job).
    async fn send_mail(&self, mail: NewMail) -> Result<Mail>;

    /// The job's mail, oldest first; with `mark_read` the unread ones are
    /// marked read in the same transaction and returned as they were
    /// (`NotFound` if no such job).
    async fn read_mail(&self, job: JobId, mark_read: bool) -> Result<Vec<Mail>>;

    /// How many of the job's messages are unread.
    async fn unread_mail(&self, job: JobId) -> Result<u64>;

    /// One supervision pass (SPEC §10, [`supervision`]): stalls the live
    /// running runs without progress for `stall_after` (each with a
    /// supervisor mail and a `stalled` event), then escalates the stalls
    /// older than `escalate_after` (an `escalated` event and the subscribed
    /// outbox rows). Each step is one transaction that applies only to rows
    /// still unstalled (unescalated), so concurrent passes act once.
    async fn supervise(&self, params: SuperviseParams) -> Result<Supervised>;

    /// Claims up to `limit` due outbox rows in one atomic statement: they
    /// are not due again for `lease` and their attempt count goes up, so no
    /// other claimer takes them meanwhile.
    async fn claim_deliveries(&self, limit: u32, lease: Duration) -> Result<Vec<Delivery>>;

    /// Records the result of a claimed attempt, fenced on its number; false
    /// when the row is no longer that attempt's (its lease passed and it was
    /// claimed again, or it is gone).
    async fn record_delivery(
        &self,
        id: i64,
        attempt: i32,
        outcome: DeliveryOutcome,
    ) -> Result<bool>;

    /// Time until the next outbox row is due (`Some(ZERO)` if one is),
    /// `None` when nothing is pending.
    async fn next_delivery_in(&self) -> Result<Option<Duration>>;

    /// Deletes delivered and abandoned outbox rows written more than
    /// `older_than` ago, at most `batch` per call; returns how many.
    async fn prune_deliveries(&self, older_than: Duration, batch: u32) -> Result<u64>;
}

/// See [`Store::finished_stats`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FinishedStats {
    /// Hour index from `since` (0 = the first hour) → jobs finished in it.
    pub per_hour: std::collections::BTreeMap<i64, u64>,
    /// Failure reason → jobs that ended `failed` with it.
    pub failed_by_reason: std::collections::BTreeMap<String, u64>,
}

/// Observed typical durations, by schedule and by kind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TypicalDurations {
    pub by_schedule: std::collections::HashMap<String, Duration>,
    pub by_kind: std::collections::HashMap<String, Duration>,
}

impl TypicalDurations {
    /// The typical duration of a job like `job`: its schedule's, else its
    /// kind's.
    pub fn of(&self, job: &Job) -> Option<Duration> {
        job.schedule
            .as_ref()
            .and_then(|s| self.by_schedule.get(s))
            .or_else(|| self.by_kind.get(&job.kind))
            .copied()
    }
}

/// Wake-ups a store publishes after a commit. Both are version counters
/// (`tokio::sync::watch`), so a waiter that looks before it sleeps can never
/// miss a change.
#[derive(Debug)]
pub struct Signals {
    /// Something may now be claimable: an enqueue, a promotion, a freed slot,
    /// a raised cap or resumed queue.
    pub work: tokio::sync::watch::Sender<u64>,
    /// A deadline may now be earlier than the engine's sleep: a claim (new
    /// lease), a delayed enqueue, a retry backoff, a cancel request.
    pub deadlines: tokio::sync::watch::Sender<u64>,
    /// This process wrote outbox rows: the webhook delivery may have work.
    pub outbox: tokio::sync::watch::Sender<u64>,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            work: tokio::sync::watch::Sender::new(0),
            deadlines: tokio::sync::watch::Sender::new(0),
            outbox: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Signals {
    pub fn work_changed(&self) {
        self.work.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn deadlines_changed(&self) {
        self.deadlines.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn outbox_changed(&self) {
        self.outbox.send_modify(|v| *v = v.wrapping_add(1));
    }
}
