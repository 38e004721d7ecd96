//! `run_process` against real processes (sh, cat, sleep, seq).

use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use reeve_core::FailureReason;
use reeve_exec::{
    CancellationToken, ExitOutcome, OutputBuffer, ProcessSpec, Report, RunLimits, run_process,
};
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;

/// Generous upper bound for anything that should be quick.
const PATIENCE: Duration = Duration::from_secs(10);

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..ProcessSpec::default()
    }
}

fn quick_limits() -> RunLimits {
    RunLimits {
        kill_grace: Duration::from_millis(300),
        ..RunLimits::default()
    }
}

struct Ran {
    outcome: ExitOutcome,
    output: OutputBuffer,
    reports: Vec<Report>,
}

async fn run(spec: ProcessSpec) -> Ran {
    let output = OutputBuffer::new(1024 * 1024);
    let (tx, mut rx) = unbounded_channel();
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        run_process(
            spec,
            &RunLimits::default(),
            output.clone(),
            tx,
            CancellationToken::new(),
        ),
    )
    .await
    .expect("run_process hung");
    Ran {
        outcome,
        output,
        reports: drain(&mut rx),
    }
}

/// Runs `run_process` on its own task, so the test can watch it meanwhile.
fn spawn_run(
    spec: ProcessSpec,
    limits: RunLimits,
    output: OutputBuffer,
    reports: UnboundedSender<Report>,
    stop: CancellationToken,
) -> JoinHandle<ExitOutcome> {
    tokio::spawn(async move { run_process(spec, &limits, output, reports, stop).await })
}

fn drain(rx: &mut UnboundedReceiver<Report>) -> Vec<Report> {
    let mut v = Vec::new();
    while let Ok(r) = rx.try_recv() {
        v.push(r);
    }
    v
}

fn text(b: &OutputBuffer) -> String {
    String::from_utf8(b.snapshot()).unwrap()
}

/// Polls `cond` every 20ms until it holds, panicking after `within`.
async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_pid(file: &Path) -> Option<Pid> {
    let s = std::fs::read_to_string(file).ok()?;
    s.trim().parse().ok().map(Pid::from_raw)
}

/// Waits until `pid` is gone (kill(pid, 0) fails with ESRCH). A killed
/// orphan is reaped by init, which may take a moment, hence the polling.
async fn assert_gone(pid: Pid) {
    wait_for(
        &format!("pid {pid} to be gone"),
        Duration::from_secs(60),
        || kill(pid, None) == Err(Errno::ESRCH),
    )
    .await;
}

#[tokio::test]
async fn exit_codes() {
    assert_eq!(
        run(sh("exit 0")).await.outcome,
        ExitOutcome::Exited { code: 0 }
    );
    assert_eq!(
        run(sh("exit 3")).await.outcome,
        ExitOutcome::Exited { code: 3 }
    );
    assert_eq!(
        run(ProcessSpec {
            argv: vec!["true".into()],
            ..ProcessSpec::default()
        })
        .await
        .outcome,
        ExitOutcome::Exited { code: 0 }
    );
}

#[tokio::test]
async fn killed_by_a_signal_it_was_not_asked_to_stop_with() {
    assert_eq!(
        run(sh("kill -9 $$")).await.outcome,
        ExitOutcome::Signaled { signal: 9 }
    );
}

#[tokio::test]
async fn spawn_failures_name_the_cause() {
    let ran = run(ProcessSpec {
        argv: vec!["reeve-no-such-program-xyz".into(), "arg".into()],
        ..ProcessSpec::default()
    })
    .await;
    match ran.outcome {
        ExitOutcome::SpawnFailed { error } => {
            assert!(error.contains("reeve-no-such-program-xyz"), "{error}")
        }
        other => panic!("expected SpawnFailed, got {other:?}"),
    }

    let ran = run(ProcessSpec {
        argv: vec!["true".into()],
        cwd: Some("/nonexistent/reeve/dir".into()),
        ..ProcessSpec::default()
    })
    .await;
    match ran.outcome {
        ExitOutcome::SpawnFailed { error } => {
            assert!(error.contains("/nonexistent/reeve/dir"), "{error}")
        }
        other => panic!("expected SpawnFailed, got {other:?}"),
    }

    let ran = run(ProcessSpec::default()).await;
    assert!(matches!(ran.outcome, ExitOutcome::SpawnFailed { .. }));
}

#[tokio::test]
async fn stdin_env_and_cwd_reach_the_child() {
    let payload = br#"{"task":"fix the bug"}"#.to_vec();
    let ran = run(ProcessSpec {
        argv: vec!["cat".into()],
        stdin: payload.clone(),
        ..ProcessSpec::default()
    })
    .await;
    assert_eq!(ran.outcome, ExitOutcome::Exited { code: 0 });
    assert_eq!(ran.output.snapshot(), payload);

    let dir = tempfile::tempdir().unwrap();
    let ran = run(ProcessSpec {
        cwd: Some(dir.path().to_owned()),
        env: vec![
            ("REEVE_TEST_FOO".into(), "bar baz".into()),
            ("REEVE_REPORT_FD".into(), "99".into()),
        ],
        ..sh(r#"echo "$REEVE_TEST_FOO|$REEVE_REPORT_FD|$(pwd -P)"; echo oops >&2"#)
    })
    .await;
    assert_eq!(ran.outcome, ExitOutcome::Exited { code: 0 });
    let cwd = dir.path().canonicalize().unwrap();
    // stdout and stderr both land in the output.
    let out = text(&ran.output);
    assert!(
        out.contains(&format!("bar baz|3|{}\n", cwd.display())),
        "{out:?}"
    );
    assert!(out.contains("oops\n"), "{out:?}");
}

#[tokio::test]
async fn empty_stdin_is_immediate_eof() {
    let ran = run(ProcessSpec {
        argv: vec!["cat".into()],
        ..ProcessSpec::default()
    })
    .await;
    assert_eq!(ran.outcome, ExitOutcome::Exited { code: 0 });
    assert_eq!(ran.output.total_written(), 0);
}

#[tokio::test]
async fn output_keeps_exactly_the_last_limit_bytes() {
    const LIMIT: usize = 1024 * 1024;
    let output = OutputBuffer::new(LIMIT);
    let (tx, _rx) = unbounded_channel();
    let outcome = run_process(
        ProcessSpec {
            argv: vec!["seq".into(), "1".into(), "500000".into()],
            ..ProcessSpec::default()
        },
        &RunLimits::default(),
        output.clone(),
        tx,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome, ExitOutcome::Exited { code: 0 });
    let expected: String = (1..=500_000).map(|i| format!("{i}\n")).collect();
    assert!(expected.len() > 3 * LIMIT);
    assert_eq!(output.total_written(), expected.len() as u64);
    let kept = output.snapshot();
    assert_eq!(kept.len(), LIMIT);
    assert!(kept == expected.as_bytes()[expected.len() - LIMIT..]);
    assert_eq!(output.tail(7), b"500000\n");
}

#[tokio::test]
async fn output_can_be_followed_while_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let script = format!(
        "echo first; while [ ! -e '{}' ]; do sleep 0.02; done; echo second",
        gate.display()
    );
    let output = OutputBuffer::new(1024);
    let (tx, _rx) = unbounded_channel();
    let task = spawn_run(
        sh(&script),
        RunLimits::default(),
        output.clone(),
        tx,
        CancellationToken::new(),
    );

    wait_for("first output", PATIENCE, || output.total_written() >= 6).await;
    let (data, offset) = output.read_from(0);
    assert_eq!(data, b"first\n");
    assert_eq!(offset, 6);
    assert!(!task.is_finished(), "the run should still be going");

    std::fs::write(&gate, b"").unwrap();
    wait_for("second output", PATIENCE, || {
        output.total_written() > offset
    })
    .await;
    let outcome = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    assert_eq!(outcome, ExitOutcome::Exited { code: 0 });
    let (data, offset) = output.read_from(offset);
    assert_eq!(data, b"second\n");
    assert_eq!(offset, 13);
}

#[tokio::test]
async fn stop_kills_a_child_that_ignores_sigterm() {
    let output = OutputBuffer::new(1024);
    let (tx, _rx) = unbounded_channel();
    let stop = CancellationToken::new();
    let task = spawn_run(
        sh(r#"trap "" TERM; echo ready; sleep 30"#),
        quick_limits(),
        output.clone(),
        tx,
        stop.clone(),
    );
    wait_for("the trap to be set", PATIENCE, || {
        output.snapshot() == b"ready\n"
    })
    .await;
    let stopped_at = Instant::now();
    stop.cancel();
    let outcome = tokio::time::timeout(PATIENCE, task)
        .await
        .expect("stop did not end the run")
        .unwrap();
    assert_eq!(outcome, ExitOutcome::Stopped);
    // Nothing in the group dies from SIGTERM, so it took the SIGKILL after the grace.
    assert!(stopped_at.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn stop_ends_a_well_behaved_child_with_sigterm() {
    let output = OutputBuffer::new(1024);
    let (tx, _rx) = unbounded_channel();
    let stop = CancellationToken::new();
    // A grace far longer than PATIENCE: ending in time means SIGTERM did it.
    let limits = RunLimits {
        kill_grace: Duration::from_secs(120),
        ..RunLimits::default()
    };
    let task = spawn_run(
        ProcessSpec {
            argv: vec!["sleep".into(), "30".into()],
            ..ProcessSpec::default()
        },
        limits,
        output,
        tx,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.cancel();
    let outcome = tokio::time::timeout(PATIENCE, task)
        .await
        .expect("SIGTERM did not end sleep")
        .unwrap();
    assert_eq!(outcome, ExitOutcome::Stopped);
}

#[tokio::test]
async fn stop_before_start_spawns_nothing() {
    let stop = CancellationToken::new();
    stop.cancel();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let (tx, _rx) = unbounded_channel();
    let outcome = run_process(
        sh(&format!("touch '{}'", marker.display())),
        &RunLimits::default(),
        OutputBuffer::new(16),
        tx,
        stop,
    )
    .await;
    assert_eq!(outcome, ExitOutcome::Stopped);
    assert!(!marker.exists());
}

#[tokio::test]
async fn stop_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("grandchild.pid");
    let script = format!("sleep 300 & echo $! > '{}'; wait", pid_file.display());
    let (tx, _rx) = unbounded_channel();
    let stop = CancellationToken::new();
    let task = spawn_run(
        sh(&script),
        quick_limits(),
        OutputBuffer::new(1024),
        tx,
        stop.clone(),
    );
    wait_for("the grandchild's pid", PATIENCE, || {
        read_pid(&pid_file).is_some()
    })
    .await;
    let grandchild = read_pid(&pid_file).unwrap();
    assert_eq!(
        kill(grandchild, None),
        Ok(()),
        "grandchild should be running"
    );
    stop.cancel();
    let outcome = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    assert_eq!(outcome, ExitOutcome::Stopped);
    assert_gone(grandchild).await;
}

#[tokio::test]
async fn leftovers_are_killed_when_the_child_exits() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("grandchild.pid");
    // The grandchild keeps stdout open and would outlive its parent shell.
    let ran = tokio::time::timeout(
        PATIENCE,
        run(sh(&format!(
            "sleep 300 & echo $! > '{}'; echo parent done",
            pid_file.display()
        ))),
    )
    .await
    .expect("a grandchild holding stdout open hung the run");
    assert_eq!(ran.outcome, ExitOutcome::Exited { code: 0 });
    assert_eq!(text(&ran.output), "parent done\n");
    let grandchild = read_pid(&pid_file).expect("pid file");
    assert_gone(grandchild).await;
}

#[tokio::test]
async fn reports_arrive_in_order_and_malformed_lines_are_ignored() {
    let ran = run(sh(r#"
        echo "{\"turns\":2,\"progress\":\"half\"}" >&3
        echo "not json" >&3
        echo "{\"result\":{\"ok\":true}}" >&3
    "#))
    .await;
    assert_eq!(ran.outcome, ExitOutcome::Exited { code: 0 });
    assert_eq!(
        ran.reports,
        [
            Report::Turns(2),
            Report::Progress("half".into()),
            Report::Result(json!({"ok": true})),
        ]
    );
}

#[tokio::test]
async fn failure_and_checkpoint_reports() {
    let ran = run(sh(r#"
        printf '%s\n' '{"checkpoint":"step=3"}' >&"$REEVE_REPORT_FD"
        printf '%s\n' '{"failure_reason":"rate_limited","error":"429"}' >&3
        exit 1
    "#))
    .await;
    assert_eq!(ran.outcome, ExitOutcome::Exited { code: 1 });
    assert_eq!(
        ran.reports,
        [
            Report::Checkpoint(b"step=3".to_vec()),
            Report::Failure {
                reason: FailureReason::RateLimited,
                error: Some("429".into())
            },
        ]
    );
}

#[tokio::test]
async fn overlong_report_lines_are_discarded() {
    let ran = run(sh(r#"
        head -c 2097152 /dev/zero | tr '\0' a >&3
        echo >&3
        echo '{"turns":1}' >&3
    "#))
    .await;
    assert_eq!(ran.outcome, ExitOutcome::Exited { code: 0 });
    assert_eq!(ran.reports, [Report::Turns(1)]);
}

#[tokio::test]
async fn reports_are_received_while_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let script = format!(
        r#"echo '{{"turns":1}}' >&3; while [ ! -e '{}' ]; do sleep 0.02; done"#,
        gate.display()
    );
    let (tx, mut rx) = unbounded_channel();
    let task = spawn_run(
        sh(&script),
        RunLimits::default(),
        OutputBuffer::new(16),
        tx,
        CancellationToken::new(),
    );
    let first = tokio::time::timeout(PATIENCE, rx.recv()).await.unwrap();
    assert_eq!(first, Some(Report::Turns(1)));
    assert!(!task.is_finished());
    std::fs::write(&gate, b"").unwrap();
    let outcome = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    assert_eq!(outcome, ExitOutcome::Exited { code: 0 });
    // The sender was dropped with the run: the channel ends.
    assert_eq!(rx.recv().await, None);
}
