//! [`run_process`]: one process, from spawn to reaped, drained and cleaned up.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::output::OutputBuffer;
use crate::report::{Report, read_reports};

/// The environment variable naming the report file descriptor in the child.
pub const REPORT_FD_ENV: &str = "REEVE_REPORT_FD";
/// The file descriptor the child writes its report lines to.
pub const REPORT_FD: i32 = 3;
/// How long, after the child exited (or was stopped), the output and report
/// pipes may take to reach EOF before reading them is abandoned.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the process group is polled for survivors during the stop grace.
const GROUP_POLL: Duration = Duration::from_millis(25);

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ProcessSpec {
    /// Program and arguments; no shell. `argv[0]` is resolved via `PATH`
    /// unless it contains a `/`.
    pub argv: Vec<String>,
    /// Working directory; `None` inherits reeve's.
    pub cwd: Option<PathBuf>,
    /// Added to (and overriding) the inherited environment.
    pub env: Vec<(String, String)>,
    /// Removed from the inherited environment (the parent's secrets).
    pub env_remove: Vec<String>,
    /// Written to the child's stdin, which is then closed (the child always
    /// gets a pipe, so an empty `stdin` means immediate EOF).
    pub stdin: Vec<u8>,
}

/// Limits applied to one run.
#[derive(Debug, Clone)]
pub struct RunLimits {
    /// On stop: SIGTERM to the group, wait this long, then SIGKILL whatever
    /// in the group is still alive.
    pub kill_grace: Duration,
    /// Bytes of combined stdout+stderr kept: the last N. Informational for
    /// callers building the [`OutputBuffer`]; [`run_process`] writes into the
    /// buffer it is given, which enforces its own limit.
    pub output_limit: usize,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            kill_grace: Duration::from_secs(10),
            output_limit: 1024 * 1024,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ExitOutcome {
    /// The process exited by itself; code 0 is success.
    Exited { code: i32 },
    /// The process was killed by a signal it was not asked to stop with.
    Signaled { signal: i32 },
    /// Stop was requested and the process group was terminated (SIGTERM,
    /// then SIGKILL after the grace). Reported whatever the child's own exit
    /// status turned out to be.
    Stopped,
    /// The process could not be started (program not found, cwd missing,
    /// empty argv, ...).
    SpawnFailed { error: String },
}

/// Runs one process to completion.
///
/// - The child is the leader of its own new process group, with stdin,
///   stdout and stderr piped, `REEVE_REPORT_FD=3` in its environment and
///   fd 3 the write end of the report pipe.
/// - stdout and stderr are copied into `output` as they arrive (chunks of the
///   two streams interleave in arrival order).
/// - Report lines from fd 3 are parsed and sent on `reports` as they arrive
///   (malformed ones are logged and dropped; a closed receiver is fine).
/// - Cancelling `stop` sends SIGTERM to the whole group, waits up to
///   `limits.kill_grace` for the child and everything else in the group to be
///   gone, then SIGKILLs the group; the result is [`ExitOutcome::Stopped`].
///   If `stop` is already cancelled on entry nothing is spawned and the
///   result is `Stopped`.
/// - When the child exits by itself, whatever is left in its group (e.g. a
///   backgrounded grandchild) is SIGKILLed so nothing leaks.
/// - Returns once the child is reaped and the output and report pipes have
///   reached EOF, or after [`DRAIN_TIMEOUT`] if something outside the group
///   still holds them open.
/// - If the returned future is dropped before completion, the group is
///   SIGKILLed.
pub async fn run_process(
    spec: ProcessSpec,
    limits: &RunLimits,
    output: OutputBuffer,
    reports: UnboundedSender<Report>,
    stop: CancellationToken,
) -> ExitOutcome {
    if stop.is_cancelled() {
        return ExitOutcome::Stopped;
    }
    let Some(program) = spec.argv.first() else {
        return ExitOutcome::SpawnFailed {
            error: "empty command (argv has no program)".to_owned(),
        };
    };

    let (report_rx, report_tx) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            return ExitOutcome::SpawnFailed {
                error: format!("creating the report pipe: {e}"),
            };
        }
    };

    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..]);
    for name in &spec.env_remove {
        cmd.env_remove(name);
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env(REPORT_FD_ENV, REPORT_FD.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    if let Err(e) = cmd.fd_mappings(vec![FdMapping {
        parent_fd: report_tx.into(),
        child_fd: REPORT_FD,
    }]) {
        return ExitOutcome::SpawnFailed {
            error: format!("mapping the report fd: {e}"),
        };
    }

    let spawned = cmd.spawn();
    // The command owns our copy of the report pipe's write end: drop it now,
    // so the reader sees EOF once the child's group has let go of it.
    drop(cmd);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let error = match &spec.cwd {
                Some(cwd) if !cwd.is_dir() => {
                    format!("cannot start {program:?} in {}: {e}", cwd.display())
                }
                _ => format!("cannot start {program:?}: {e}"),
            };
            return ExitOutcome::SpawnFailed { error };
        }
    };
    let Some(pgid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
    else {
        // Unreachable in practice: a just-spawned child is not yet reaped.
        let _ = child.kill().await;
        return ExitOutcome::SpawnFailed {
            error: format!("{program:?} started but has no pid"),
        };
    };
    let mut guard = GroupGuard { pgid, armed: true };
    tracing::debug!(pid = pgid.as_raw(), program = %program, "spawned");

    // stdin: fed by its own task, which is never waited for (a child that
    // does not read its stdin must not hold us up).
    let mut stdin_task = JoinSet::new();
    if let Some(mut stdin) = child.stdin.take() {
        let data = spec.stdin;
        stdin_task.spawn(async move {
            if let Err(e) = stdin.write_all(&data).await
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                tracing::debug!("writing the child's stdin failed: {e}");
            }
            // Dropping `stdin` closes it.
        });
    }

    let mut readers = JoinSet::new();
    if let Some(stdout) = child.stdout.take() {
        readers.spawn(copy_output(stdout, output.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.spawn(copy_output(stderr, output.clone()));
    }
    match tokio::net::unix::pipe::Receiver::from_owned_fd(report_rx.into()) {
        Ok(rx) => {
            readers.spawn(read_reports(rx, reports));
        }
        Err(e) => tracing::warn!("cannot read the report pipe, reports are lost: {e}"),
    }

    let exited = tokio::select! {
        biased;
        status = child.wait() => Some(status),
        () = stop.cancelled() => None,
    };
    let outcome = match exited {
        Some(status) => {
            // The leader is reaped; anything still in its group is a leftover.
            kill_group(pgid, Signal::SIGKILL);
            match status {
                Ok(status) => outcome_of(status),
                Err(e) => {
                    tracing::warn!(pid = pgid.as_raw(), "waiting for the child failed: {e}");
                    ExitOutcome::Signaled {
                        signal: Signal::SIGKILL as i32,
                    }
                }
            }
        }
        None => {
            stop_group(&mut child, pgid, limits.kill_grace).await;
            ExitOutcome::Stopped
        }
    };
    guard.armed = false;

    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            pid = pgid.as_raw(),
            "output or report pipe still open {DRAIN_TIMEOUT:?} after the process ended; \
             something outside its process group holds it, stopped reading"
        );
    }
    // Dropping the JoinSets aborts whatever is left.
    drop(readers);
    drop(stdin_task);
    outcome
}

/// SIGTERM the group, give it `grace` to be gone, SIGKILL what remains, and
/// reap the child.
async fn stop_group(child: &mut Child, pgid: Pid, grace: Duration) {
    tracing::debug!(pid = pgid.as_raw(), "stop requested: SIGTERM to the group");
    kill_group(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    let mut reaped = tokio::time::timeout_at(deadline, child.wait())
        .await
        .is_ok();
    // The leader is gone; wait out the grace for the rest of the group.
    while reaped && group_alive(pgid) && Instant::now() < deadline {
        tokio::time::sleep_until(deadline.min(Instant::now() + GROUP_POLL)).await;
    }
    if !reaped || group_alive(pgid) {
        tracing::debug!(pid = pgid.as_raw(), "grace over: SIGKILL to the group");
        kill_group(pgid, Signal::SIGKILL);
    }
    if !reaped {
        reaped = child.wait().await.is_ok();
        if !reaped {
            tracing::warn!(pid = pgid.as_raw(), "could not reap the stopped child");
        }
    }
}

fn outcome_of(status: ExitStatus) -> ExitOutcome {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitOutcome::Exited { code },
        (None, Some(signal)) => ExitOutcome::Signaled { signal },
        // Neither exited nor signalled: not possible for a reaped process.
        (None, None) => ExitOutcome::Exited { code: -1 },
    }
}

/// Whether any process (zombies included) is still in the group.
fn group_alive(pgid: Pid) -> bool {
    match killpg(pgid, None) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        // EPERM: something is there, just not ours to signal.
        Err(_) => true,
    }
}

fn kill_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid = pgid.as_raw(), "sending {signal} to the group: {e}"),
    }
}

async fn copy_output<R: AsyncRead + Unpin>(mut from: R, to: OutputBuffer) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => to.write(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("reading the child's output failed: {e}");
                break;
            }
        }
    }
}

/// SIGKILLs the group if `run_process` is dropped mid-run.
struct GroupGuard {
    pgid: Pid,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            kill_group(self.pgid, Signal::SIGKILL);
        }
    }
}
