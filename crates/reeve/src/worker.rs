//! `reeve worker`: the reference remote worker. It registers with a daemon,
//! long-polls for jobs of its kinds, runs each with the process executor on
//! this machine, heartbeats for its children, and writes back with each
//! run's job token. It speaks the protocol through `reeve_worker::Client`.
//!
//! **Invariants.**
//! - It runs only jobs a claim answer confirmed; a claim whose answer was
//!   lost is the daemon's to reap.
//! - Each run keeps a local lease deadline, counted on this machine's
//!   monotonic clock from the lease the daemon reported remaining at the
//!   last good heartbeat. Past it (the daemon unreachable, or it answered
//!   `lease_lost`) the child's process group is killed and nothing is
//!   written back for it: the run is someone else's now.
//! - `cancel_requested` stops the child and reports `cancelled`;
//!   `turn_limit_exceeded` stops it and reports nothing (the daemon already
//!   ended the run).
//! - SIGTERM drains: no more claims, running jobs get `--drain-grace` to
//!   finish, then are stopped and the worker deregisters, which releases
//!   them at once for retry (`worker_shutdown`).
//! - Every request is retried with backoff while the daemon is away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use reeve_core::{FailureReason, Job, JobId};
use reeve_engine::Run;
use reeve_engine::process::ProcessHandler;
use reeve_engine::reeve_exec::{CancellationToken, OutputBuffer, Report, RunLimits};
use reeve_store::Outcome;
use reeve_worker::{Client, Complete, Error, Fail, Registration, RunBeat, RunStatus};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cli::WorkerArgs;

/// Longest single wait of a claim (the daemon caps it at 30 s).
const CLAIM_WAIT: Duration = Duration::from_secs(10);
/// Output kept per run and sent with its write-back.
const OUTPUT_LIMIT: usize = 1024 * 1024;

/// Why this worker stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The lease is gone: write nothing back.
    LeaseLost,
    /// An operator cancelled: report `cancelled`.
    Cancelled,
    /// The daemon already failed the run (turn budget): write nothing back.
    Ended,
    /// Draining past the grace: the deregistration releases it.
    Shutdown,
}

/// One run in progress.
struct Active {
    epoch: i64,
    token: String,
    stop: CancellationToken,
    cause: Mutex<Option<Stop>>,
    /// Local lease deadline (monotonic).
    deadline: Mutex<Instant>,
    turns: Mutex<Option<i64>>,
    progress: Mutex<Option<String>>,
}

impl Active {
    fn stop(&self, cause: Stop) {
        let mut c = self.cause.lock().expect("cause lock");
        if c.is_none() {
            *c = Some(cause);
        }
        self.stop.cancel();
    }
}

/// Retries `call` with backoff while the daemon is away (or until
/// `give_up` passes, or `stop`): its answer, or `None` when it never came.
async fn retrying<T, F, Fut>(
    mut call: F,
    give_up: Option<Instant>,
    stop: &CancellationToken,
) -> Option<Result<T, Error>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match call().await {
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "the daemon is away; retrying")
            }
            answer => return Some(answer),
        }
        if give_up.is_some_and(|g| Instant::now() + delay > g) {
            return None;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// A refusal's message, for the log.
fn refusal(e: &Error) -> String {
    e.refusal()
        .map_or_else(|| e.to_string(), |r| r.message.clone())
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<std::process::ExitCode> {
    crate::serve::init_logging();
    let token = match &args.token_env {
        Some(var) => Some(
            std::env::var(var)
                .with_context(|| format!("--token-env: the variable {var} is not set"))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let kinds: Vec<String> = args
        .kinds
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    if kinds.is_empty() {
        bail!("--kinds: name at least one kind");
    }
    if args.slots == 0 || args.slots > 1000 {
        bail!("--slots: must be between 1 and 1000");
    }
    for l in &args.labels {
        reeve_core::placement::label("--label", l).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let templates = match &args.config {
        Some(path) => crate::config::kinds_of_file(path)?,
        None => HashMap::new(),
    };
    for k in &kinds {
        if !templates.contains_key(k) {
            bail!("--kinds: no command template for {k:?} (give --config with [kinds.{k}])");
        }
    }
    let kill_grace = reeve_core::time::parse_duration(&args.kill_grace)
        .map_err(|e| anyhow::anyhow!("--kill-grace: {e}"))?;
    let drain_grace = reeve_core::time::parse_duration(&args.drain_grace)
        .map_err(|e| anyhow::anyhow!("--drain-grace: {e}"))?;
    let base = args.url.trim_end_matches('/').to_string();
    let handler = Arc::new(
        ProcessHandler::new(
            templates,
            RunLimits {
                kill_grace,
                output_limit: OUTPUT_LIMIT,
            },
            base.clone(),
        )
        // The worker's own token never reaches its jobs (each gets its job token).
        .hiding_env(
            ["REEVE_TOKEN".to_string()]
                .into_iter()
                .chain(args.token_env.clone()),
        ),
    );
    let mut client = Client::new(&base).map_err(|e| anyhow::anyhow!("--url: {e}"))?;
    if let Some(token) = token {
        client = client.with_token(token);
    }
    // Bounds every request but the claims (their own wait plus this).
    let client = client.with_timeout(Duration::from_secs(20));
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok());
    let name = args
        .name
        .clone()
        .or_else(|| host.clone())
        .unwrap_or_else(|| "worker".into());
    let queues: Vec<String> = args.queues.as_deref().map_or(Vec::new(), |q| {
        q.split(',')
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(str::to_string)
            .collect()
    });
    let registration = Registration {
        name,
        host,
        kinds,
        queues,
        labels: args.labels.clone(),
        slots: args.slots,
        heartbeats: true,
        version: Some(env!("CARGO_PKG_VERSION").into()),
    };

    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("draining: no more claims");
            shutdown.cancel();
        });
    }

    let never = CancellationToken::new();
    // Registration is retried while the daemon is away.
    let worker_id = match retrying(|| client.register(&registration), None, &shutdown).await {
        Some(Ok(registered)) => registered.worker.id,
        Some(Err(e)) => bail!("registration refused: {e}"),
        None => return Ok(std::process::ExitCode::SUCCESS),
    };
    tracing::info!(target: "reeve::worker", event = "worker_started", worker = %worker_id, slots = args.slots);
    let active: Arc<Mutex<HashMap<JobId, Arc<Active>>>> = Arc::default();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<JobId>();

    // Heartbeats for every run, and the local lease deadlines.
    let beat_stop = CancellationToken::new();
    let beats = tokio::spawn(heartbeats(
        client.clone(),
        worker_id.clone(),
        active.clone(),
        beat_stop.clone(),
    ));

    // Claim while there are free slots and we are not draining.
    while !shutdown.is_cancelled() {
        while done_rx.try_recv().is_ok() {}
        let free = args.slots as usize - active.lock().expect("active").len();
        if free == 0 {
            tokio::select! {
                _ = done_rx.recv() => {}
                _ = shutdown.cancelled() => {}
            }
            continue;
        }
        let limit = free.min(100) as u32;
        let answer = tokio::select! {
            a = retrying(|| client.claim(&worker_id, limit, CLAIM_WAIT), None, &shutdown) => a,
            _ = shutdown.cancelled() => None,
        };
        let runs = match answer {
            Some(Ok(runs)) => runs,
            Some(Err(e)) => {
                tracing::error!(
                    status = e.refusal().map(|r| r.status),
                    message = refusal(&e),
                    "claim refused; stopping"
                );
                break;
            }
            None => break,
        };
        for r in runs {
            let (job, token, has_checkpoint) = (r.job, r.token, r.checkpoint);
            let a = Arc::new(Active {
                epoch: job.epoch,
                token: token.clone(),
                stop: CancellationToken::new(),
                cause: Mutex::new(None),
                deadline: Mutex::new(Instant::now() + job.heartbeat_timeout),
                turns: Mutex::new(None),
                progress: Mutex::new(None),
            });
            active.lock().expect("active").insert(job.id, a.clone());
            let (client, handler, active, done) = (
                client.clone(),
                handler.clone(),
                active.clone(),
                done_tx.clone(),
            );
            let never = never.clone();
            tokio::spawn(async move {
                let id = job.id;
                run_one(&client, &handler, job, &a, has_checkpoint, &never).await;
                active.lock().expect("active").remove(&id);
                let _ = done.send(id);
            });
        }
    }

    // Drain: let runs finish for the grace, then stop them.
    let drain_until = Instant::now() + drain_grace;
    while !active.lock().expect("active").is_empty() && Instant::now() < drain_until {
        let _ = tokio::time::timeout(Duration::from_millis(200), done_rx.recv()).await;
    }
    let left: Vec<Arc<Active>> = active.lock().expect("active").values().cloned().collect();
    for a in &left {
        a.stop(Stop::Shutdown);
    }
    let stop_until = Instant::now() + kill_grace + Duration::from_secs(2);
    while !active.lock().expect("active").is_empty() && Instant::now() < stop_until {
        let _ = tokio::time::timeout(Duration::from_millis(100), done_rx.recv()).await;
    }
    beat_stop.cancel();
    let _ = beats.await;
    let give_up = Some(Instant::now() + Duration::from_secs(10));
    let _ = retrying(|| client.deregister(&worker_id), give_up, &never).await;
    tracing::info!(target: "reeve::worker", event = "worker_stopped", worker = %worker_id);
    Ok(std::process::ExitCode::SUCCESS)
}

/// Stops every run whose local lease deadline passed, whatever the network
/// does; checked often, apart from the heartbeats, which may hang.
async fn watchdog(active: Arc<Mutex<HashMap<JobId, Arc<Active>>>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = Instant::now();
        for (id, a) in active.lock().expect("active").iter() {
            if a.cause.lock().expect("cause").is_none()
                && now >= *a.deadline.lock().expect("deadline")
            {
                tracing::warn!(
                    job = id,
                    "the lease passed without a heartbeat getting through; stopping the run"
                );
                a.stop(Stop::LeaseLost);
            }
        }
    }
}

/// Heartbeats all runs every second (well within any lease), each attempt
/// bounded, and stops the runs the daemon says are no longer theirs.
async fn heartbeats(
    client: Client,
    worker: String,
    active: Arc<Mutex<HashMap<JobId, Arc<Active>>>>,
    stop: CancellationToken,
) {
    tokio::spawn(watchdog(active.clone(), stop.clone()));
    let mut tick = tokio::time::interval(Duration::from_millis(1000));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let runs: Vec<(JobId, Arc<Active>)> = active
            .lock()
            .expect("active")
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let beats: Vec<RunBeat> = runs
            .iter()
            .map(|(id, a)| RunBeat {
                job: *id,
                epoch: a.epoch,
                turns: *a.turns.lock().expect("turns"),
                progress: a.progress.lock().expect("progress").clone(),
            })
            .collect();
        let sent = Instant::now();
        let answer = client
            .with_timeout(Duration::from_secs(2))
            .heartbeat(&worker, &beats)
            .await;
        match answer {
            Ok(answers) => {
                for r in answers {
                    let Some((_, a)) = runs.iter().find(|(j, _)| *j == r.job) else {
                        continue;
                    };
                    match r.status {
                        RunStatus::Ok => {
                            let left = r.lease_remaining_ms.unwrap_or(0).max(0) as u64;
                            *a.deadline.lock().expect("deadline") =
                                sent + Duration::from_millis(left);
                        }
                        RunStatus::CancelRequested => a.stop(Stop::Cancelled),
                        RunStatus::TurnLimitExceeded => a.stop(Stop::Ended),
                        RunStatus::LeaseLost => a.stop(Stop::LeaseLost),
                    }
                }
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "heartbeat did not get through")
            }
            Err(e) => {
                tracing::error!(
                    status = e.refusal().map(|r| r.status),
                    message = refusal(&e),
                    "heartbeat refused; the runs' leases will be treated as lost"
                );
                for (_, a) in &runs {
                    a.stop(Stop::LeaseLost);
                }
            }
        }
    }
}

/// Uploads each new checkpoint of a run (the latest one when several came
/// meanwhile), each attempt bounded, until the run ends.
async fn upload_checkpoints(
    client: Client,
    job: JobId,
    epoch: i64,
    token: String,
    mut latest: tokio::sync::watch::Receiver<Option<Vec<u8>>>,
) {
    let client = client.with_timeout(Duration::from_secs(2));
    while latest.changed().await.is_ok() {
        let Some(bytes) = latest.borrow_and_update().clone() else {
            continue;
        };
        if let Err(e) = client.save_checkpoint(job, epoch, &token, bytes).await {
            tracing::warn!(job, error = %e, "checkpoint not uploaded");
        }
    }
}

/// Runs one claimed job to its end and writes the outcome back with its
/// job token, unless the run is no longer ours.
async fn run_one(
    client: &Client,
    handler: &ProcessHandler,
    job: Job,
    a: &Arc<Active>,
    has_checkpoint: bool,
    never: &CancellationToken,
) {
    let id = job.id;
    let mut env = vec![("REEVE_JOB_TOKEN".to_string(), a.token.clone())];
    let dir = tempfile::tempdir().ok();
    if has_checkpoint
        && let Some(dir) = &dir
        && let Ok(Some(bytes)) = client.load_checkpoint(id, &a.token).await
    {
        let path = dir.path().join("checkpoint");
        if std::fs::write(&path, &bytes).is_ok() {
            env.push(("REEVE_CHECKPOINT".into(), path.display().to_string()));
        }
    }
    let (reports_tx, mut reports_rx) = mpsc::unbounded_channel::<Report>();
    let output = OutputBuffer::new(OUTPUT_LIMIT);
    let run = Run {
        job: job.clone(),
        stop: a.stop.clone(),
        reports: reports_tx,
        output: output.clone(),
        env,
    };
    // Checkpoints go up in order, the latest winning, without ever holding
    // the run: a daemon that stopped answering must not stop the watchdog's
    // kill from reaching the child.
    let (checkpoint_tx, checkpoint_rx) = tokio::sync::watch::channel::<Option<Vec<u8>>>(None);
    let uploader = tokio::spawn(upload_checkpoints(
        client.clone(),
        id,
        a.epoch,
        a.token.clone(),
        checkpoint_rx,
    ));
    let mut result = None;
    let mut failure = None;
    let outcome = {
        let fut = reeve_engine::Handler::run(handler, run);
        tokio::pin!(fut);
        loop {
            tokio::select! {
                outcome = &mut fut => break outcome,
                Some(report) = reports_rx.recv() => match report {
                    Report::Turns(n) => {
                        *a.turns.lock().expect("turns") = Some(n);
                        if job.max_turns.is_some_and(|m| n > m) {
                            // The next heartbeat ends it on the daemon too.
                            tracing::info!(job = id, turns = n, "over the turn budget");
                        }
                    }
                    Report::Progress(p) => *a.progress.lock().expect("progress") = Some(p),
                    Report::Result(v) => result = Some(v),
                    Report::Failure { reason, error } => failure = Some((reason, error)),
                    Report::Checkpoint(bytes) => {
                        let _ = checkpoint_tx.send(Some(bytes));
                    }
                },
            }
        }
    };
    while let Ok(report) = reports_rx.try_recv() {
        match report {
            Report::Result(v) => result = Some(v),
            Report::Failure { reason, error } => failure = Some((reason, error)),
            Report::Checkpoint(bytes) => {
                let _ = checkpoint_tx.send(Some(bytes));
            }
            _ => {}
        }
    }
    // The last checkpoint is up before the outcome is written (bounded).
    drop(checkpoint_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), uploader).await;
    let cause = *a.cause.lock().expect("cause");
    let tail = String::from_utf8_lossy(&output.tail(OUTPUT_LIMIT)).into_owned();
    let write = match (cause, outcome) {
        (Some(Stop::LeaseLost | Stop::Ended | Stop::Shutdown), _) => {
            tracing::info!(job = id, cause = ?cause, "stopped; nothing written back");
            return;
        }
        (Some(Stop::Cancelled), _) => WriteBack::Fail(
            FailureReason::Cancelled,
            Some("cancelled by an operator".into()),
        ),
        (None, Outcome::Succeeded { .. }) => match failure {
            // The run named its failure but exited 0: its word wins.
            Some((reason, error)) => WriteBack::Fail(reason, error),
            None => WriteBack::Complete(result),
        },
        (None, Outcome::Failed { reason, error }) => {
            let (reason, error) = failure.unwrap_or((reason, error));
            WriteBack::Fail(reason, error)
        }
    };
    // Write back while the lease may still be ours.
    let give_up = Some(*a.deadline.lock().expect("deadline") + Duration::from_secs(5));
    let (epoch, token, output) = (a.epoch, a.token.as_str(), Some(tail));
    let outcome = match &write {
        WriteBack::Complete(_) => "complete",
        WriteBack::Fail(..) => "fail",
    };
    let answer = retrying(
        || async {
            match &write {
                WriteBack::Complete(result) => {
                    let body = Complete {
                        epoch,
                        result: result.clone(),
                        output: output.clone(),
                    };
                    client.complete(id, token, &body).await
                }
                WriteBack::Fail(reason, error) => {
                    let body = Fail {
                        epoch,
                        reason: *reason,
                        error: error.clone(),
                        output: output.clone(),
                    };
                    client.fail(id, token, &body).await
                }
            }
        },
        give_up,
        never,
    )
    .await;
    match answer {
        Some(Ok(_)) => {
            tracing::info!(target: "reeve::worker", event = "written_back", job = id, epoch, outcome)
        }
        Some(Err(e)) => tracing::warn!(
            job = id,
            status = e.refusal().map(|r| r.status),
            error = e.refusal().map_or("", |r| r.code.as_str()),
            "write-back refused (the run is no longer ours)"
        ),
        None => tracing::warn!(
            job = id,
            "write-back did not get through before the lease passed"
        ),
    }
}

/// What a finished run reports.
enum WriteBack {
    Complete(Option<serde_json::Value>),
    Fail(FailureReason, Option<String>),
}
