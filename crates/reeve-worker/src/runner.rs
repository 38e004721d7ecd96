//! The remote runner: [`Worker`] registers with a daemon, claims runs for
//! its free slots, runs each with the [`Handler`], heartbeats them, writes
//! their outcomes back, and drains on shutdown.
//!
//! **Invariants.**
//! - Each run is heartbeated at a third of its `heartbeat_timeout`,
//!   carrying the turns and progress reported since the last confirmed beat.
//! - Each run keeps a local lease deadline on this machine's monotonic clock:
//!   the lease the daemon reported remaining, counted from when the
//!   confirming heartbeat was sent (from when the claim was sent, at first).
//!   When it passes without a newer confirmation, the run is stopped as
//!   lost ([`StopReason::LeaseLost`]).
//! - A run whose lease is lost, or that the daemon ended (turn budget), is
//!   never written back, whatever its handler returns; every other
//!   write-back is fenced by the run's job token and epoch, so a refusal
//!   (409) is counted as refused, never as a success.
//! - Every call is retried with backoff while the daemon is away: the
//!   registration and claims indefinitely, a run's write-back until its
//!   local lease deadline.
//! - Shutdown drains: no more claims; running handlers get the drain grace
//!   to finish, then are stopped ([`StopReason::Shutdown`]) and get the
//!   stop grace to return; then the worker deregisters, which releases what
//!   it still holds for retry (`worker_shutdown`).
//! - Every task belongs to the future of [`Worker::run_until`]: dropping it
//!   abandons every run at once, as a crash would (the daemon reaps them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reeve_core::JobId;
use reeve_store::Mail;
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::context::{Link, StopReason};
use crate::wire::{ClaimedRun, Complete, Fail, Registration, RunAnswer, RunBeat, RunStatus};
use crate::{Client, Error, Handler, JobContext, JobFailure};

/// One claim's long-poll.
const CLAIM_WAIT: Duration = Duration::from_secs(10);
/// Most runs one claim takes (the daemon's limit).
const MAX_CLAIM: usize = 100;
/// Heartbeats due within this of each other go in one request.
const COALESCE: Duration = Duration::from_millis(50);
/// How long a deregistration is retried at shutdown.
const DEREGISTER_FOR: Duration = Duration::from_secs(10);
/// Default time running handlers get to finish after a shutdown signal.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(30);
/// Default time a stopped handler gets to return before it is dropped.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Heartbeat period of a run: a third of its timeout, so two beats can be
/// lost before the lease passes (as the engine does for its own runs).
fn heartbeat_interval(timeout: Duration) -> Duration {
    (timeout / 3).clamp(Duration::from_millis(20), Duration::from_secs(30))
}

/// Exponential backoff while the daemon is away.
struct Backoff(Duration);

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Backoff {
        Backoff(Self::MIN)
    }

    fn step(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        wait
    }

    fn reset(&mut self) {
        self.0 = Self::MIN;
    }
}

/// What a worker did, counted per run.
#[derive(Debug, Default)]
pub struct WorkerStats {
    worker_id: OnceLock<String>,
    /// Runs claimed.
    pub claimed: AtomicU64,
    /// Runs completed (the daemon accepted the success).
    pub completed: AtomicU64,
    /// Runs failed (the daemon accepted the failure).
    pub failed: AtomicU64,
    /// Runs that ended with nothing written back: the lease was lost, or the
    /// daemon ended the run itself (turn budget).
    pub lost: AtomicU64,
    /// Write-backs the daemon refused (409): the run was no longer ours.
    pub refused: AtomicU64,
    /// Runs left to the deregistration at shutdown (released for retry).
    pub released: AtomicU64,
}

impl WorkerStats {
    /// This process's registration id, once registered.
    pub fn worker_id(&self) -> Option<&str> {
        self.worker_id.get().map(String::as_str)
    }

    fn count(&self, end: RunEnd) {
        let counter = match end {
            RunEnd::Completed => &self.completed,
            RunEnd::Failed => &self.failed,
            RunEnd::Lost => &self.lost,
            RunEnd::Refused => &self.refused,
            RunEnd::Released => &self.released,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunEnd {
    Completed,
    Failed,
    Lost,
    Refused,
    Released,
}

/// Settings of a [`Worker`]; see [`Worker::builder`].
#[derive(Debug)]
pub struct WorkerBuilder {
    client: Client,
    name: String,
    host: Option<String>,
    kinds: Vec<String>,
    queues: Vec<String>,
    labels: Vec<String>,
    slots: u32,
    version: Option<String>,
    drain_grace: Duration,
    stop_grace: Duration,
}

impl WorkerBuilder {
    /// The worker's name (a label for people; not an identity).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Adds kinds this worker runs (at least one is needed).
    pub fn kinds<I, S>(mut self, kinds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.kinds.extend(kinds.into_iter().map(Into::into));
        self
    }

    /// Adds queues to claim from (none: every queue the token allows).
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues.extend(queues.into_iter().map(Into::into));
        self
    }

    /// Adds `key=value` labels (jobs may require them).
    pub fn labels<I, S>(mut self, labels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.labels.extend(labels.into_iter().map(Into::into));
        self
    }

    /// Concurrent runs (1 to 10000; default 1).
    pub fn slots(mut self, slots: u32) -> Self {
        self.slots = slots;
        self
    }

    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// How long running handlers may keep going after a shutdown signal
    /// (default 30 s).
    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.drain_grace = grace;
        self
    }

    /// How long a stopped handler has to return before it is dropped
    /// (default 10 s).
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// The worker, running `handler` for every run; the settings are
    /// checked here (the first bad one is named), before anything is sent.
    pub fn build(self, handler: impl Handler) -> Result<Worker, Error> {
        printable("name", &self.name)?;
        if let Some(host) = &self.host {
            printable("host", host)?;
        }
        if self.kinds.is_empty() {
            return Err(Error::invalid("kinds", "name at least one kind"));
        }
        for (i, kind) in self.kinds.iter().enumerate() {
            named(&format!("kinds[{i}]"), kind)?;
        }
        for (i, queue) in self.queues.iter().enumerate() {
            named(&format!("queues[{i}]"), queue)?;
        }
        for (i, label) in self.labels.iter().enumerate() {
            if !label
                .split_once('=')
                .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty())
            {
                return Err(Error::invalid(
                    format!("labels[{i}]"),
                    format!("must be key=value, got {label:?}"),
                ));
            }
        }
        if !(1..=10_000).contains(&self.slots) {
            return Err(Error::invalid(
                "slots",
                format!("must be between 1 and 10000, got {}", self.slots),
            ));
        }
        Ok(Worker {
            registration: Registration {
                name: self.name,
                host: self.host,
                kinds: self.kinds,
                queues: self.queues,
                labels: self.labels,
                slots: self.slots,
                heartbeats: true,
                version: self.version,
            },
            client: self.client,
            handler: Arc::new(handler),
            drain_grace: self.drain_grace,
            stop_grace: self.stop_grace,
            stats: Arc::default(),
        })
    }
}

fn printable(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() || value.len() > 200 || value.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            "must be 1 to 200 printable characters",
        ));
    }
    Ok(())
}

fn named(field: &str, value: &str) -> Result<(), Error> {
    reeve_core::validate::name(field, value).map_err(|e| Error::invalid(e.field, e.message))
}

/// A worker process's runner. Build it with [`Worker::builder`], run it
/// with [`Worker::run_until`].
pub struct Worker {
    registration: Registration,
    client: Client,
    handler: Arc<dyn Handler>,
    drain_grace: Duration,
    stop_grace: Duration,
    stats: Arc<WorkerStats>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("registration", &self.registration)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker talking to the daemon through `client` (with the worker
    /// token), one slot, no kinds yet.
    pub fn builder(client: Client) -> WorkerBuilder {
        WorkerBuilder {
            client,
            name: "worker".into(),
            host: None,
            kinds: Vec::new(),
            queues: Vec::new(),
            labels: Vec::new(),
            slots: 1,
            version: None,
            drain_grace: DEFAULT_DRAIN_GRACE,
            stop_grace: DEFAULT_STOP_GRACE,
        }
    }

    /// What this worker did so far (shared: keep it to watch a running
    /// worker).
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Registers, then claims and runs jobs until `shutdown` resolves, then
    /// drains and deregisters. Returns an error only when the daemon
    /// refuses the worker (a bad token, a registration it no longer knows);
    /// while the daemon is away it keeps retrying.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let mut shutdown = std::pin::pin!(shutdown);
        let registered = tokio::select! {
            r = register(&self.client, &self.registration) => r?,
            () = &mut shutdown => return Ok(()),
        };
        let worker_id = registered.worker.id;
        let _ = self.stats.worker_id.set(worker_id.clone());
        tracing::info!(target: "reeve_worker", worker = %worker_id, slots = self.registration.slots, "registered");
        let shared = Arc::new(Shared {
            client: self.client.clone(),
            worker_id: worker_id.clone(),
            runs: Mutex::default(),
            wake: Arc::new(Notify::new()),
            stats: self.stats.clone(),
            stop_grace: self.stop_grace,
        });
        let beats_stop = CancellationToken::new();
        let mut background = JoinSet::new();
        background.spawn(heartbeats(shared.clone(), beats_stop.clone()));
        let mut runs = JoinSet::new();
        let refused = self.claim_loop(&shared, &mut runs, &mut shutdown).await;

        // Drain: the running handlers get the grace to finish…
        let until = Instant::now() + self.drain_grace;
        while !runs.is_empty() {
            tokio::select! {
                _ = runs.join_next() => {}
                () = tokio::time::sleep_until(until) => break,
            }
        }
        // …then are stopped, and get the stop grace to return and write back.
        for run in shared.runs() {
            run.stop(StopReason::Shutdown);
        }
        let until = Instant::now() + self.stop_grace + Duration::from_secs(5);
        while !runs.is_empty() {
            tokio::select! {
                _ = runs.join_next() => {}
                () = tokio::time::sleep_until(until) => break,
            }
        }
        // What is still running now is abandoned (and left to the
        // deregistration).
        runs.shutdown().await;
        for run in shared.runs() {
            tracing::info!(target: "reeve_worker", job = run.job, epoch = run.epoch, "left to the deregistration");
            self.stats.count(RunEnd::Released);
        }
        beats_stop.cancel();
        background.shutdown().await;
        deregister(&self.client, &worker_id).await;
        match refused {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Claims for the free slots until `shutdown` resolves or the daemon
    /// refuses the worker (that refusal is returned).
    async fn claim_loop(
        &self,
        shared: &Arc<Shared>,
        runs: &mut JoinSet<()>,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Option<Error> {
        let slots = self.registration.slots as usize;
        let mut backoff = Backoff::new();
        loop {
            while runs.try_join_next().is_some() {}
            let free = slots.saturating_sub(runs.len());
            if free == 0 {
                tokio::select! {
                    _ = runs.join_next() => continue,
                    () = shutdown.as_mut() => return None,
                }
            }
            let sent = Instant::now();
            let claimed = tokio::select! {
                c = shared.client.claim(&shared.worker_id, free.min(MAX_CLAIM) as u32, CLAIM_WAIT) => c,
                () = shutdown.as_mut() => return None,
            };
            match claimed {
                Ok(claimed) => {
                    backoff.reset();
                    for run in claimed {
                        self.stats.claimed.fetch_add(1, Ordering::Relaxed);
                        let remote = shared.admit(&run, sent);
                        runs.spawn(drive(shared.clone(), self.handler.clone(), run, remote));
                    }
                }
                Err(e) if e.is_transient() => {
                    let wait = backoff.step();
                    tracing::warn!(target: "reeve_worker", error = %e, retry_in_ms = wait.as_millis() as u64, "claim failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.as_mut() => return None,
                    }
                }
                Err(e) => {
                    tracing::error!(target: "reeve_worker", error = %e, "claim refused; stopping");
                    return Some(e);
                }
            }
        }
    }
}

/// Registers, retrying while the daemon is away.
async fn register(
    client: &Client,
    registration: &Registration,
) -> Result<crate::Registered, Error> {
    let mut backoff = Backoff::new();
    loop {
        match client.register(registration).await {
            Err(e) if e.is_transient() => {
                let wait = backoff.step();
                tracing::warn!(target: "reeve_worker", error = %e, retry_in_ms = wait.as_millis() as u64, "cannot register yet; retrying");
                tokio::time::sleep(wait).await;
            }
            answer => return answer,
        }
    }
}

/// Deregisters, retried for a while; a worker that cannot leaves its runs
/// to the reaper.
async fn deregister(client: &Client, worker_id: &str) {
    let give_up = Instant::now() + DEREGISTER_FOR;
    let mut backoff = Backoff::new();
    loop {
        match client.deregister(worker_id).await {
            Ok(gone) => {
                tracing::info!(target: "reeve_worker", worker = %worker_id, released = gone.released.len(), "deregistered");
                return;
            }
            Err(e) if e.is_transient() && Instant::now() + backoff.0 < give_up => {
                tokio::time::sleep(backoff.step()).await;
            }
            Err(e) => {
                tracing::warn!(target: "reeve_worker", worker = %worker_id, error = %e, "could not deregister; the runs left will be reaped");
                return;
            }
        }
    }
}

/// What the worker's tasks share.
struct Shared {
    client: Client,
    worker_id: String,
    runs: Mutex<HashMap<JobId, Arc<RemoteRun>>>,
    /// Wakes the heartbeat loop (a new run, a beat wanted now).
    wake: Arc<Notify>,
    stats: Arc<WorkerStats>,
    stop_grace: Duration,
}

impl Shared {
    fn runs(&self) -> Vec<Arc<RemoteRun>> {
        self.runs
            .lock()
            .expect("runs lock")
            .values()
            .cloned()
            .collect()
    }

    /// Starts keeping a claimed run: its lease counted from `sent` (when the
    /// claim was sent, so never later than the daemon's count).
    fn admit(&self, claimed: &ClaimedRun, sent: Instant) -> Arc<RemoteRun> {
        let job = &claimed.job;
        let lease = job.heartbeat_timeout.min(job.max_run_duration);
        let interval = heartbeat_interval(job.heartbeat_timeout);
        let run = Arc::new(RemoteRun {
            job: job.id,
            epoch: job.epoch,
            token: claimed.token.clone(),
            max_turns: job.max_turns,
            client: self.client.clone(),
            interval,
            stop: CancellationToken::new(),
            cause: Mutex::new(None),
            deadline: watch::Sender::new(sent + lease),
            next_beat: Mutex::new(sent + interval),
            reports: Mutex::default(),
            unread_mail: Mutex::new(None),
            wake: self.wake.clone(),
        });
        self.runs
            .lock()
            .expect("runs lock")
            .insert(job.id, run.clone());
        self.wake.notify_one();
        run
    }

    fn forget(&self, job: JobId) {
        self.runs.lock().expect("runs lock").remove(&job);
    }
}

/// Turns and progress reported by a handler, and what a heartbeat
/// confirmed of them.
#[derive(Debug, Default)]
struct Reports {
    turns: Option<i64>,
    progress: Option<String>,
    confirmed_turns: Option<i64>,
    confirmed_progress: Option<String>,
}

/// One run held by this worker: what its handler, the heartbeat loop and
/// its write-back share.
pub(crate) struct RemoteRun {
    job: JobId,
    epoch: i64,
    token: String,
    max_turns: Option<i64>,
    client: Client,
    interval: Duration,
    stop: CancellationToken,
    cause: Mutex<Option<StopReason>>,
    /// The local lease deadline.
    deadline: watch::Sender<Instant>,
    next_beat: Mutex<Instant>,
    reports: Mutex<Reports>,
    unread_mail: Mutex<Option<u64>>,
    wake: Arc<Notify>,
}

impl RemoteRun {
    /// Stops the run; the first reason given stays.
    fn stop(&self, reason: StopReason) {
        let mut cause = self.cause.lock().expect("cause lock");
        if cause.is_none() {
            *cause = Some(reason);
        }
        drop(cause);
        self.stop.cancel();
    }

    pub(crate) fn stop_reason(&self) -> Option<StopReason> {
        *self.cause.lock().expect("cause lock")
    }

    /// Whether the run can no longer be ours to write: lost, or ended by
    /// the daemon.
    fn is_over(&self) -> bool {
        matches!(
            self.stop_reason(),
            Some(StopReason::LeaseLost | StopReason::TurnLimit)
        )
    }

    fn deadline(&self) -> Instant {
        *self.deadline.borrow()
    }

    pub(crate) fn unread_mail(&self) -> Option<u64> {
        *self.unread_mail.lock().expect("mail lock")
    }

    pub(crate) fn report_turns(&self, turns: i64) {
        self.reports.lock().expect("reports lock").turns = Some(turns);
        if self.max_turns.is_some_and(|max| turns > max) {
            // Past the budget: tell the daemon now, not at the next beat.
            *self.next_beat.lock().expect("beat lock") = Instant::now();
            self.wake.notify_one();
        }
    }

    pub(crate) fn report_progress(&self, note: String) {
        self.reports.lock().expect("reports lock").progress = Some(note);
    }

    /// This run's part of the next heartbeat: what changed since the last
    /// confirmed one.
    fn beat(&self) -> RunBeat {
        let reports = self.reports.lock().expect("reports lock");
        RunBeat {
            job: self.job,
            epoch: self.epoch,
            turns: reports
                .turns
                .filter(|t| Some(*t) != reports.confirmed_turns),
            progress: reports
                .progress
                .clone()
                .filter(|p| Some(p) != reports.confirmed_progress.as_ref()),
        }
    }

    fn has_unconfirmed_reports(&self) -> bool {
        let beat = self.beat();
        beat.turns.is_some() || beat.progress.is_some()
    }

    /// Applies the daemon's answer to a beat sent at `sent`.
    fn answered(&self, beat: &RunBeat, answer: &RunAnswer, sent: Instant) {
        if let Some(left) = answer.lease_remaining_ms {
            let left = Duration::from_millis(left.max(0) as u64);
            self.deadline.send_replace(sent + left);
        }
        match answer.status {
            RunStatus::Ok | RunStatus::CancelRequested => {
                let mut reports = self.reports.lock().expect("reports lock");
                if beat.turns.is_some() {
                    reports.confirmed_turns = beat.turns;
                }
                if beat.progress.is_some() {
                    reports.confirmed_progress.clone_from(&beat.progress);
                }
                drop(reports);
                if answer.unread_mail.is_some() {
                    *self.unread_mail.lock().expect("mail lock") = answer.unread_mail;
                }
                if answer.status == RunStatus::CancelRequested {
                    tracing::info!(target: "reeve_worker", job = self.job, epoch = self.epoch, "cancel requested; stopping the run");
                    self.stop(StopReason::Cancelled);
                }
            }
            RunStatus::TurnLimitExceeded => {
                tracing::info!(target: "reeve_worker", job = self.job, epoch = self.epoch, "over the turn budget; the daemon ended the run");
                self.stop(StopReason::TurnLimit);
            }
            RunStatus::LeaseLost => {
                tracing::warn!(target: "reeve_worker", job = self.job, epoch = self.epoch, reason = answer.reason.as_deref().unwrap_or(""), "lease lost; stopping the run");
                self.stop(StopReason::LeaseLost);
            }
        }
    }

    /// A job-token call's refusal: 409, or 403 for an epoch that is no
    /// longer the job's, means the run is lost.
    fn refused(&self, e: &Error) {
        if matches!(e, Error::Conflict(_)) || matches!(e, Error::Auth(r) if r.status == 403) {
            self.stop(StopReason::LeaseLost);
        }
    }

    pub(crate) async fn save_checkpoint(&self, data: Vec<u8>) -> Result<(), Error> {
        let mut backoff = Backoff::new();
        loop {
            match self
                .client
                .save_checkpoint(self.job, self.epoch, &self.token, data.clone())
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.is_transient() && !self.is_over() => {
                    let wait = backoff.step();
                    if Instant::now() + wait >= self.deadline() {
                        return Err(e);
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    self.refused(&e);
                    return Err(e);
                }
            }
        }
    }

    pub(crate) async fn read_mail(&self) -> Result<Vec<Mail>, Error> {
        let mail = self.client.read_mail(self.job, &self.token).await;
        match &mail {
            Ok(_) => *self.unread_mail.lock().expect("mail lock") = Some(0),
            Err(e) => self.refused(e),
        }
        mail
    }
}

/// Heartbeats every run when it is due (coalescing runs due together into
/// one request), until `stop`.
async fn heartbeats(shared: Arc<Shared>, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for run in shared.runs() {
            if run.is_over() {
                continue;
            }
            let mut at = run.next_beat.lock().expect("beat lock");
            if *at <= now + COALESCE {
                *at = now + run.interval;
                due.push(run.clone());
            }
            next = Some(next.map_or(*at, |n| n.min(*at)));
        }
        if !due.is_empty() {
            let beats: Vec<RunBeat> = due.iter().map(|r| r.beat()).collect();
            let shortest = due.iter().map(|r| r.interval).min().unwrap_or(CLAIM_WAIT);
            let client = shared
                .client
                .with_timeout(shortest.clamp(Duration::from_millis(500), Duration::from_secs(10)));
            let sent = Instant::now();
            let answer = tokio::select! {
                a = client.heartbeat(&shared.worker_id, &beats) => a,
                () = stop.cancelled() => return,
            };
            match answer {
                Ok(answers) => {
                    failures = 0;
                    for (run, beat) in due.iter().zip(&beats) {
                        if let Some(a) = answers.iter().find(|a| a.job == run.job) {
                            run.answered(beat, a, sent);
                        }
                    }
                }
                Err(e) if e.is_transient() => {
                    // Try again soon, backing off, but never later than the
                    // regular beat.
                    failures += 1;
                    let retry = Backoff::MIN * 2u32.saturating_pow(failures.min(6));
                    for run in &due {
                        let mut at = run.next_beat.lock().expect("beat lock");
                        *at = (*at).min(sent + retry);
                    }
                    tracing::warn!(target: "reeve_worker", error = %e, runs = due.len(), "heartbeat did not get through");
                }
                Err(e @ (Error::NotFound(_) | Error::Auth(_))) => {
                    tracing::error!(target: "reeve_worker", error = %e, "heartbeat refused: the runs are lost");
                    for run in &due {
                        run.stop(StopReason::LeaseLost);
                    }
                }
                Err(e) => {
                    tracing::error!(target: "reeve_worker", error = %e, "heartbeat refused; the local lease deadlines decide");
                }
            }
            continue;
        }
        let wake_at = next.unwrap_or(now + Duration::from_secs(3600));
        tokio::select! {
            () = tokio::time::sleep_until(wake_at) => {}
            () = shared.wake.notified() => {}
            () = stop.cancelled() => return,
        }
    }
}

/// How a run's handler ended, as the worker will report it.
enum WriteBack {
    Complete(Option<Value>),
    Fail(JobFailure),
}

/// Runs one claimed job: loads its checkpoint, runs the handler under the
/// local lease deadline, and writes the outcome back unless the run is
/// lost.
async fn drive(
    shared: Arc<Shared>,
    handler: Arc<dyn Handler>,
    claimed: ClaimedRun,
    run: Arc<RemoteRun>,
) {
    let end = drive_run(&shared, handler, claimed, &run).await;
    shared.forget(run.job);
    shared.stats.count(end);
}

async fn drive_run(
    shared: &Shared,
    handler: Arc<dyn Handler>,
    claimed: ClaimedRun,
    run: &Arc<RemoteRun>,
) -> RunEnd {
    let (job, epoch) = (run.job, run.epoch);
    let checkpoint = if claimed.checkpoint {
        match load_checkpoint(run).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(target: "reeve_worker", job, epoch, error = %e, "cannot load the checkpoint; leaving the run");
                return RunEnd::Lost;
            }
        }
    } else {
        None
    };
    let ctx = JobContext::new(
        claimed.job,
        checkpoint,
        run.stop.clone(),
        Link::Remote(run.clone()),
    );
    tracing::info!(target: "reeve_worker", job, epoch, "running");
    let work = handler.run(ctx);
    tokio::pin!(work);
    let mut deadline = run.deadline.subscribe();
    let mut abandon_at: Option<Instant> = None;
    let outcome = loop {
        let lease_until = *deadline.borrow_and_update();
        tokio::select! {
            outcome = &mut work => break Some(outcome),
            () = tokio::time::sleep_until(lease_until), if run.stop_reason().is_none() => {
                if Instant::now() >= run.deadline() {
                    tracing::warn!(target: "reeve_worker", job, epoch, "the lease passed without a confirmed heartbeat; stopping the run");
                    run.stop(StopReason::LeaseLost);
                }
            }
            _ = deadline.changed() => {}
            () = run.stop.cancelled(), if abandon_at.is_none() => {
                abandon_at = Some(Instant::now() + shared.stop_grace);
            }
            () = sleep_until_some(abandon_at) => {
                tracing::warn!(target: "reeve_worker", job, epoch, "the handler did not return after being stopped; abandoning it");
                break None;
            }
        }
    };
    let write = match (run.stop_reason(), outcome) {
        (Some(StopReason::LeaseLost | StopReason::TurnLimit), _) => {
            tracing::info!(target: "reeve_worker", job, epoch, reason = ?run.stop_reason(), "stopped; nothing written back");
            return RunEnd::Lost;
        }
        // Work that finished despite a late stop still counts.
        (_, Some(Ok(result))) => WriteBack::Complete(result),
        (Some(StopReason::Cancelled), _) => WriteBack::Fail(JobFailure::new(
            reeve_core::FailureReason::Cancelled,
            "cancelled by an operator",
        )),
        // Stopped by the shutdown: the deregistration releases it.
        (Some(StopReason::Shutdown), _) => return RunEnd::Released,
        (_, Some(Err(failure))) => WriteBack::Fail(failure),
        (_, None) => return RunEnd::Released,
    };
    if run.has_unconfirmed_reports() {
        flush_reports(shared, run).await;
    }
    write_back(run, write).await
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn load_checkpoint(run: &RemoteRun) -> Result<Option<Vec<u8>>, Error> {
    let mut backoff = Backoff::new();
    loop {
        match run.client.load_checkpoint(run.job, &run.token).await {
            Err(e) if e.is_transient() => {
                let wait = backoff.step();
                if Instant::now() + wait >= run.deadline() {
                    return Err(e);
                }
                tokio::time::sleep(wait).await;
            }
            answer => return answer,
        }
    }
}

/// One last heartbeat for this run, so turns and progress reported just
/// before the end are recorded before the outcome.
async fn flush_reports(shared: &Shared, run: &RemoteRun) {
    let beat = run.beat();
    let client = shared.client.with_timeout(
        run.interval
            .clamp(Duration::from_millis(500), Duration::from_secs(5)),
    );
    let sent = Instant::now();
    match client
        .heartbeat(&shared.worker_id, std::slice::from_ref(&beat))
        .await
    {
        Ok(answers) => {
            if let Some(a) = answers.iter().find(|a| a.job == run.job) {
                run.answered(&beat, a, sent);
            }
        }
        Err(e) => {
            tracing::warn!(target: "reeve_worker", job = run.job, error = %e, "the last reports did not get through");
        }
    }
}

/// Writes the outcome back, fenced, retrying while the daemon is away and
/// the local lease holds.
async fn write_back(run: &RemoteRun, mut write: WriteBack) -> RunEnd {
    let (job, epoch) = (run.job, run.epoch);
    let mut backoff = Backoff::new();
    loop {
        if run.is_over() || Instant::now() >= run.deadline() {
            tracing::warn!(target: "reeve_worker", job, epoch, "the lease is gone; not writing back");
            return RunEnd::Lost;
        }
        let sent = match &write {
            WriteBack::Complete(result) => {
                let body = Complete {
                    epoch,
                    result: result.clone(),
                    output: None,
                };
                run.client
                    .complete(job, &run.token, &body)
                    .await
                    .map(|_| RunEnd::Completed)
            }
            WriteBack::Fail(failure) => {
                let body = Fail {
                    epoch,
                    reason: failure.reason,
                    error: failure.error.clone(),
                    output: None,
                };
                run.client
                    .fail(job, &run.token, &body)
                    .await
                    .map(|_| RunEnd::Failed)
            }
        };
        match sent {
            Ok(end) => {
                tracing::info!(target: "reeve_worker", job, epoch, outcome = if end == RunEnd::Completed { "completed" } else { "failed" }, "written back");
                return end;
            }
            Err(e) if e.is_transient() => {
                let wait = backoff.step();
                tracing::warn!(target: "reeve_worker", job, epoch, error = %e, "write-back failed; retrying");
                tokio::time::sleep(
                    wait.min(run.deadline().saturating_duration_since(Instant::now())),
                )
                .await;
            }
            Err(Error::Conflict(r)) => {
                tracing::warn!(target: "reeve_worker", job, epoch, refusal = %r, "write-back refused: the run is no longer ours");
                return RunEnd::Refused;
            }
            Err(Error::Input(r)) if matches!(write, WriteBack::Complete(_)) => {
                // The result itself was refused (too large): the run fails.
                write = WriteBack::Fail(JobFailure::error(format!(
                    "the daemon refused the result: {r}"
                )));
            }
            Err(e) => {
                tracing::error!(target: "reeve_worker", job, epoch, error = %e, "write-back refused");
                return RunEnd::Refused;
            }
        }
    }
}
