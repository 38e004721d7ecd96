//! The engine: everything the daemon does on its own.
//!
//! - The **dispatcher** claims jobs for this process's executors (up to the
//!   free slots, in batches, one round trip each) and runs each in a task.
//! - Each **run** heartbeats for its executor at a third of its
//!   `heartbeat_timeout`, carries the run's reports (turns, progress) on those
//!   heartbeats, and stops the work at once when the store answers that the
//!   lease is lost, a cancel was requested, or the turn budget is exceeded.
//! - The **completer** batches write-backs from all runs into one
//!   transaction each; every element stays fenced on its own epoch.
//! - **Maintenance** promotes due jobs, reaps expired leases (aborting a
//!   reaped run of this process at once), supervises progress (stalls and
//!   escalations, SPEC §10, at most once per `supervise_every`) and prunes
//!   old jobs.
//!
//! **Invariants.** The engine never busy-polls: each loop sleeps until the
//! store's next deadline or a wake-up signal (enqueue, completion, config
//! change), and is idle when nothing is pending. The duties are isolated:
//! an error in one is logged and retried with backoff, and never stops the
//! others. A run whose lease was lost never writes back.

mod completer;
mod dispatch;
mod firing;
mod leader;
mod maintenance;
pub mod process;
mod run;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reeve_core::{Job, JobId};
use reeve_exec::{CancellationToken, OutputBuffer, Report};
use reeve_store::{KindFilter, Outcome, Store};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

pub use reeve_exec;

/// Settings of one engine. Defaults are named constants below.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This executor's identity, recorded as the runs' `claimed_by`.
    pub worker_id: String,
    /// Concurrent in-process runs.
    pub slots: u32,
    /// Most jobs taken by one claim.
    pub claim_batch: u32,
    /// Most runs reaped or jobs promoted per statement.
    pub maintenance_batch: u32,
    /// Finished jobs older than this are pruned.
    pub retention: Duration,
    /// How often pruning runs.
    pub prune_every: Duration,
    /// Bytes of output kept per run.
    pub output_limit: usize,
    /// Whether this engine runs promotion, reaping and pruning. Off for
    /// extra claim-only engines (benchmarks); on PostgreSQL only the leader
    /// will run them.
    pub maintenance: bool,
    /// While pressure is raised, a due firing waits this long (SPEC §8)…
    pub pressure_delay: Duration,
    /// …but never more than this past its nominal time.
    pub pressure_max_defer: Duration,
    /// Extra environment for each run (the daemon sets the job token).
    pub run_env: Option<RunEnv>,
    /// Firing ledger rows older than this are pruned.
    pub firing_retention: Duration,
    /// Stall detection and escalation (SPEC §10); `None` turns it off.
    pub supervision: Option<reeve_store::SuperviseParams>,
    /// Least time between two supervision passes, so that a busy claim and
    /// completion path (which wakes maintenance at every claim) pays for
    /// one pass per period at most.
    pub supervise_every: Duration,
    /// Delivered and abandoned webhook outbox rows older than this are
    /// pruned.
    pub delivery_retention: Duration,
    /// This executor's placement labels (`key=value`, validated by the
    /// caller): it claims pinned jobs whose requirements are all among them,
    /// and with none only unpinned jobs (SPEC §6).
    pub labels: Vec<String>,
}

pub const DEFAULT_SLOTS: u32 = 8;
pub const DEFAULT_CLAIM_BATCH: u32 = 100;
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DEFAULT_PRESSURE_DELAY: Duration = Duration::from_secs(30);
pub const DEFAULT_PRESSURE_MAX_DEFER: Duration = Duration::from_secs(600);
pub const DEFAULT_SUPERVISE_EVERY: Duration = Duration::from_secs(5);

impl EngineConfig {
    pub fn new(worker_id: impl Into<String>) -> Self {
        EngineConfig {
            worker_id: worker_id.into(),
            slots: DEFAULT_SLOTS,
            claim_batch: DEFAULT_CLAIM_BATCH,
            maintenance_batch: 500,
            retention: DEFAULT_RETENTION,
            prune_every: Duration::from_secs(600),
            output_limit: 1024 * 1024,
            maintenance: true,
            pressure_delay: DEFAULT_PRESSURE_DELAY,
            pressure_max_defer: DEFAULT_PRESSURE_MAX_DEFER,
            run_env: None,
            firing_retention: DEFAULT_RETENTION,
            supervision: Some(reeve_store::SuperviseParams::default()),
            supervise_every: DEFAULT_SUPERVISE_EVERY,
            delivery_retention: DEFAULT_RETENTION,
            labels: Vec::new(),
        }
    }
}

/// One run handed to a [`Handler`].
#[derive(Debug)]
pub struct Run {
    pub job: Job,
    /// Fired when the run must stop now (cancel, lost lease, turn budget,
    /// shutdown). The handler stops its work and returns promptly.
    pub stop: CancellationToken,
    /// Reports from the work (turns, progress, result, failure reason); the
    /// engine carries them to the store.
    pub reports: mpsc::UnboundedSender<Report>,
    /// Where the run's output goes, readable while it runs.
    pub output: OutputBuffer,
    /// More environment for the run (`REEVE_JOB_TOKEN`, `REEVE_CHECKPOINT`).
    pub env: Vec<(String, String)>,
}

/// Extra environment a daemon gives each of its runs (the job token).
#[derive(Clone)]
pub struct RunEnv(pub Arc<EnvOf>);

/// The environment variables a daemon adds for a job's run.
pub type EnvOf = dyn Fn(&Job) -> Vec<(String, String)> + Send + Sync;

impl std::fmt::Debug for RunEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunEnv(..)")
    }
}

/// Something that can execute jobs of some kinds inside the daemon.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs the job to its end. The returned outcome is written back unless
    /// the engine stopped the run for a reason that decides it (see
    /// [`StopCause`]).
    async fn run(&self, run: Run) -> Outcome;
}

/// Which handler runs which jobs.
#[derive(Clone, Default)]
pub struct Handlers {
    by_kind: HashMap<String, Arc<dyn Handler>>,
    commands: Option<Arc<dyn Handler>>,
}

impl Handlers {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn kind(mut self, kind: impl Into<String>, handler: Arc<dyn Handler>) -> Self {
        self.by_kind.insert(kind.into(), handler);
        self
    }

    /// The handler for ad-hoc command jobs (`reeve enqueue -- CMD`).
    pub fn commands(mut self, handler: Arc<dyn Handler>) -> Self {
        self.commands = Some(handler);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.by_kind.is_empty() && self.commands.is_none()
    }

    fn filter(&self) -> KindFilter {
        let mut kinds: Vec<String> = self.by_kind.keys().cloned().collect();
        kinds.sort();
        KindFilter::Only {
            kinds,
            commands: self.commands.is_some(),
        }
    }

    fn for_job(&self, job: &Job) -> Option<Arc<dyn Handler>> {
        if job.command.is_some() {
            return self.commands.clone();
        }
        self.by_kind.get(&job.kind).cloned()
    }
}

/// Why the engine stopped a run before its handler finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// An operator cancelled the job: fails with `cancelled`.
    Cancelled,
    /// The store refused a heartbeat or the reaper ended the run: another
    /// owner may hold the job now, so nothing is written back.
    LeaseLost,
    /// The run reported more turns than its `max_turns`.
    TurnLimit,
    /// The daemon is shutting down: released with `worker_shutdown`.
    Shutdown,
}

/// A run executing in this process.
struct Active {
    epoch: i64,
    stop: CancellationToken,
    cause: Mutex<Option<StopCause>>,
    output: OutputBuffer,
}

impl Active {
    fn stop(&self, cause: StopCause) {
        let mut slot = self.cause.lock().expect("cause lock");
        if slot.is_none() {
            *slot = Some(cause);
        }
        drop(slot);
        self.stop.cancel();
    }

    fn cause(&self) -> Option<StopCause> {
        *self.cause.lock().expect("cause lock")
    }
}

/// Counters for `/metrics` and `reeve status`.
#[derive(Debug, Default)]
pub struct Stats {
    pub claimed: AtomicU64,
    pub finished: AtomicU64,
    pub refused_writebacks: AtomicU64,
    pub reaped: AtomicU64,
    pub heartbeats: AtomicU64,
    /// Runs this process's supervision found stalled, and escalated.
    pub stalled: AtomicU64,
    pub escalated: AtomicU64,
}

struct Inner {
    store: Arc<dyn Store>,
    config: EngineConfig,
    handlers: Handlers,
    active: Mutex<HashMap<JobId, Arc<Active>>>,
    slot_freed: Notify,
    stats: Stats,
    completer: completer::CompleterHandle,
    /// Stops claiming (first step of shutdown).
    stop_claiming: CancellationToken,
    /// Stops maintenance and the completer (last step of shutdown).
    stop_all: CancellationToken,
    shutting_down: AtomicBool,
    /// Whether this engine leads (runs maintenance); see `leader`.
    leading: tokio::sync::watch::Sender<bool>,
}

/// A running engine. Dropping it does not stop it; call [`Engine::shutdown`].
pub struct Engine {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("worker_id", &self.inner.config.worker_id)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the dispatcher (if any handler is registered), the completer and
    /// (if configured) maintenance.
    pub fn start(store: Arc<dyn Store>, config: EngineConfig, handlers: Handlers) -> Arc<Engine> {
        let stop_all = CancellationToken::new();
        let (completer, completer_task) = completer::spawn(store.clone(), stop_all.clone());
        let inner = Arc::new(Inner {
            store,
            config,
            handlers,
            active: Mutex::new(HashMap::new()),
            slot_freed: Notify::new(),
            stats: Stats::default(),
            completer,
            stop_claiming: CancellationToken::new(),
            stop_all,
            shutting_down: AtomicBool::new(false),
            leading: tokio::sync::watch::Sender::new(false),
        });
        let mut tasks = vec![completer_task];
        if !inner.handlers.is_empty() {
            tasks.push(tokio::spawn(dispatch::run(inner.clone())));
        }
        if inner.config.maintenance {
            tasks.push(tokio::spawn(leader::run(inner.clone())));
            tasks.push(tokio::spawn(maintenance::run(inner.clone())));
        }
        Arc::new(Engine {
            inner,
            tasks: Mutex::new(tasks),
        })
    }

    pub fn worker_id(&self) -> &str {
        &self.inner.config.worker_id
    }

    /// Whether this engine currently leads (runs maintenance).
    pub fn is_leader(&self) -> bool {
        *self.inner.leading.borrow()
    }

    /// Waits until this engine leads (tests, status).
    pub async fn wait_leading(&self) {
        let mut rx = self.inner.leading.subscribe();
        let _ = rx.wait_for(|leading| *leading).await;
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub fn slots(&self) -> u32 {
        if self.inner.handlers.is_empty() {
            0
        } else {
            self.inner.config.slots
        }
    }

    /// Runs executing in this process now.
    pub fn busy(&self) -> u32 {
        self.inner.active.lock().expect("active lock").len() as u32
    }

    /// The output of a run executing here, from absolute offset `from`.
    pub fn live_output(&self, job: JobId, from: u64) -> Option<(Vec<u8>, u64)> {
        let active = self
            .inner
            .active
            .lock()
            .expect("active lock")
            .get(&job)
            .cloned()?;
        Some(active.output.read_from(from))
    }

    /// Stops a run of this process now because its job was cancelled.
    pub fn cancel_local(&self, job: JobId) {
        self.inner.stop_local(job, None, StopCause::Cancelled);
    }

    /// Graceful shutdown: stop claiming; let runs finish for up to `grace`;
    /// then stop the rest and release them (`worker_shutdown`, retried);
    /// flush write-backs; stop maintenance. Safe to call twice.
    pub async fn shutdown(&self, grace: Duration) {
        if self.inner.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        self.inner.stop_claiming.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        while self.busy() > 0 && tokio::time::Instant::now() < deadline {
            tokio::select! {
                _ = self.inner.slot_freed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        let remaining: Vec<Arc<Active>> = self
            .inner
            .active
            .lock()
            .expect("active lock")
            .values()
            .cloned()
            .collect();
        if !remaining.is_empty() {
            tracing::info!(
                runs = remaining.len(),
                "stopping runs still going at shutdown"
            );
        }
        for active in remaining {
            active.stop(StopCause::Shutdown);
        }
        // Runs write back through the completer, so wait for them first.
        let hard_deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.busy() > 0 && tokio::time::Instant::now() < hard_deadline {
            tokio::select! {
                _ = self.inner.slot_freed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        self.inner.stop_all.cancel();
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Inner {
    /// Stops the local run of `job` (if `epoch` is given, only that run).
    fn stop_local(&self, job: JobId, epoch: Option<i64>, cause: StopCause) {
        let active = self.active.lock().expect("active lock").get(&job).cloned();
        if let Some(active) = active.filter(|a| epoch.is_none_or(|e| e == a.epoch)) {
            active.stop(cause);
        }
    }
}

/// Exponential backoff for a duty whose store calls fail.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    fn reset(&mut self) {
        self.next = Self::MIN;
    }

    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}
