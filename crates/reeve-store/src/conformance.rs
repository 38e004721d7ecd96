//! The conformance suite: one body of tests every backend must pass.
//!
//! A backend's test file implements [`Harness`] (a fresh, empty database per
//! test, and a way to move the store's clock) and invokes
//! [`conformance_suite!`](crate::conformance_suite) once; every test below then
//! runs against that backend. A change to the [`Store`] trait extends this
//! suite, so all backends are held to the same contract.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reeve_core::job::Availability;
use reeve_core::{Actor, EventKind, FailureReason, Job, JobFilter, JobState, NewJob};

use crate::{
    ClaimParams, Finish, HeartbeatParams, KindFilter, Limits, Outcome, QueuePatch, Store,
    StoreError,
};

/// A fresh database for one test.
#[async_trait]
pub trait Harness: Send + Sync {
    fn store(&self) -> Arc<dyn Store>;
    /// Moves the store's clock forward by `by` (every handle from
    /// [`Harness::connect`] sees the move).
    fn advance(&self, by: Duration);
    /// Another independent handle on the same database, as a second process
    /// would have (its own connections).
    async fn connect(&self) -> Arc<dyn Store>;
}

/// Generates one `#[tokio::test]` per conformance test, each with a fresh
/// harness from `$factory` (an `async fn() -> impl Harness`).
#[macro_export]
macro_rules! conformance_suite {
    ($factory:path) => {
        $crate::conformance_suite!(@each $factory;
            enqueue_applies_defaults_and_records_an_event,
            enqueue_batch_keeps_order,
            unique_key_returns_the_live_job,
            delayed_job_is_scheduled_then_promoted,
            claim_orders_by_priority_then_time_then_id,
            claim_takes_a_batch_up_to_its_limit,
            claim_skips_paused_queues,
            claim_respects_queue_and_global_caps,
            claim_filters_by_queue_and_kind,
            heartbeat_extends_the_lease_within_the_hard_cap,
            heartbeat_is_fenced,
            write_backs_are_fenced_and_change_nothing,
            a_batch_applies_its_write_backs_in_order,
            failure_retries_with_backoff_until_max_attempts,
            final_reasons_are_not_retried,
            reaper_ends_silent_runs_as_heartbeat_lost,
            reaper_ends_runs_past_max_run_duration_as_timeout,
            fresh_runs_are_never_reaped,
            non_heartbeating_runs_are_governed_by_max_run_duration_only,
            stale_executor_cannot_overwrite_the_new_owner,
            cancel_waiting_and_running_jobs,
            unresponsive_cancel_is_finished_by_the_reaper,
            manual_retry_resets_attempts_and_keeps_epoch,
            events_replay_to_the_current_state,
            next_due_in_tracks_leases_and_due_jobs,
            listing_pages_by_keyset_with_filters,
            queues_limits_and_status,
            output_is_kept_per_attempt,
            prune_deletes_only_old_finished_jobs,
            concurrent_claimers_never_exceed_caps,
            random_operations_keep_invariants
        );
    };
    (@each $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $factory().await;
                $crate::conformance::$name(&harness).await;
            }
        )*
    };
}

fn job(kind: &str) -> NewJob {
    NewJob::new("default", kind)
}

fn claim(worker: &str, limit: u32) -> ClaimParams {
    ClaimParams {
        worker: worker.into(),
        queues: None,
        kinds: KindFilter::Any,
        limit,
        heartbeats: true,
    }
}

fn succeed(job: &Job) -> Finish {
    Finish {
        job: job.id,
        epoch: job.epoch,
        outcome: Outcome::Succeeded { result: None },
        output: None,
    }
}

fn fail(job: &Job, reason: FailureReason) -> Finish {
    Finish {
        job: job.id,
        epoch: job.epoch,
        outcome: Outcome::Failed {
            reason,
            error: Some(format!("{reason} happened")),
        },
        output: None,
    }
}

async fn one(store: &Arc<dyn Store>, f: Finish) -> Result<Job, StoreError> {
    store.finish(vec![f]).await.expect("finish batch").remove(0)
}

async fn enqueue_one(store: &Arc<dyn Store>, nj: NewJob) -> Job {
    store
        .enqueue(vec![nj])
        .await
        .expect("enqueue")
        .remove(0)
        .job
}

async fn claim_one(store: &Arc<dyn Store>, worker: &str) -> Job {
    let mut jobs = store.claim(claim(worker, 1)).await.expect("claim");
    assert_eq!(jobs.len(), 1, "expected to claim one job");
    jobs.remove(0)
}

pub async fn enqueue_applies_defaults_and_records_an_event(h: &impl Harness) {
    let s = h.store();
    let j = enqueue_one(&s, job("echo")).await;
    assert_eq!(j.state, JobState::Available);
    assert_eq!(
        (j.attempt, j.max_attempts, j.epoch, j.priority),
        (0, 3, 0, 0)
    );
    assert_eq!(j.max_run_duration, Duration::from_secs(20 * 60));
    assert_eq!(j.heartbeat_timeout, Duration::from_secs(90));
    assert_eq!(
        j.idempotency_key,
        j.id.to_string(),
        "derived idempotency key is the id"
    );
    let stored = s.get_job(j.id).await.unwrap();
    assert_eq!(stored, j, "the returned job is what was stored");
    let events = s.job_events(j.id).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, EventKind::Enqueued);
    assert_eq!(events[0].by, Actor::Client);
    assert!(matches!(
        s.get_job(j.id + 1000).await,
        Err(StoreError::NotFound(_))
    ));

    let mut custom = job("agent");
    custom.idempotency_key = Some("deploy-42".into());
    custom.max_run_duration = Some(Duration::from_secs(60));
    custom.heartbeat_timeout = Some(Duration::from_secs(5));
    custom.payload = serde_json::json!({"repo": "x"});
    let c = enqueue_one(&s, custom).await;
    assert_eq!(c.idempotency_key, "deploy-42");
    assert_eq!(c.max_run_duration, Duration::from_secs(60));
    assert_eq!(c.payload, serde_json::json!({"repo": "x"}));
}

pub async fn enqueue_batch_keeps_order(h: &impl Harness) {
    let s = h.store();
    let batch: Vec<NewJob> = (0..1200).map(|i| job(&format!("k{i}"))).collect();
    let out = s.enqueue(batch).await.unwrap();
    assert_eq!(out.len(), 1200);
    for (i, e) in out.iter().enumerate() {
        assert!(e.created);
        assert_eq!(e.job.kind, format!("k{i}"));
        assert_eq!(s.get_job(e.job.id).await.unwrap().kind, e.job.kind);
    }
    let ids: HashSet<i64> = out.iter().map(|e| e.job.id).collect();
    assert_eq!(ids.len(), 1200, "ids are distinct");
}

pub async fn unique_key_returns_the_live_job(h: &impl Harness) {
    let s = h.store();
    let mut a = job("sync");
    a.unique_key = Some("sync-repo-1".into());
    let first = s.enqueue(vec![a.clone(), a.clone()]).await.unwrap();
    assert!(first[0].created);
    assert!(
        !first[1].created,
        "the second in the same batch is deduplicated"
    );
    assert_eq!(first[0].job.id, first[1].job.id);
    let again = s.enqueue(vec![a.clone()]).await.unwrap().remove(0);
    assert!(!again.created);
    assert_eq!(again.job.id, first[0].job.id);
    // Once the job is terminal, the key is free again.
    let running = claim_one(&s, "w").await;
    one(&s, succeed(&running)).await.unwrap();
    let fresh = s.enqueue(vec![a]).await.unwrap().remove(0);
    assert!(fresh.created);
    assert_ne!(fresh.job.id, first[0].job.id);
}

pub async fn delayed_job_is_scheduled_then_promoted(h: &impl Harness) {
    let s = h.store();
    let mut nj = job("later");
    nj.availability = Availability::After(Duration::from_secs(60));
    let j = enqueue_one(&s, nj).await;
    assert_eq!(j.state, JobState::Scheduled);
    assert!(s.claim(claim("w", 10)).await.unwrap().is_empty());
    assert_eq!(s.promote_due(100).await.unwrap(), 0, "not due yet");
    h.advance(Duration::from_secs(61));
    assert_eq!(s.promote_due(100).await.unwrap(), 1);
    assert_eq!(s.get_job(j.id).await.unwrap().state, JobState::Available);
    let c = claim_one(&s, "w").await;
    assert_eq!(c.id, j.id);
    let kinds: Vec<EventKind> = s
        .job_events(j.id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::Enqueued,
            EventKind::Available,
            EventKind::Claimed
        ]
    );

    let mut at = job("at");
    let now = s.now().await.unwrap();
    at.availability = Availability::At(reeve_core::Timestamp(now.0 - 1000));
    assert_eq!(
        enqueue_one(&s, at).await.state,
        JobState::Available,
        "a past run_at is available at once"
    );
}

pub async fn claim_orders_by_priority_then_time_then_id(h: &impl Harness) {
    let s = h.store();
    let mut low = job("low");
    low.priority = 5;
    let mut high = job("high");
    high.priority = -1;
    let a = enqueue_one(&s, job("a")).await;
    let b = enqueue_one(&s, job("b")).await;
    enqueue_one(&s, low).await;
    enqueue_one(&s, high).await;
    let claimed = s.claim(claim("w", 10)).await.unwrap();
    let kinds: Vec<&str> = claimed.iter().map(|j| j.kind.as_str()).collect();
    assert_eq!(kinds, ["high", "a", "b", "low"]);
    assert!(a.id < b.id);
    for j in &claimed {
        assert_eq!(
            j,
            &s.get_job(j.id).await.unwrap(),
            "a claim answers with the stored job"
        );
        assert_eq!(j.state, JobState::Running);
        assert_eq!((j.epoch, j.attempt), (1, 1));
        assert_eq!(j.claimed_by.as_deref(), Some("w"));
        assert!(j.lease_expires_at.is_some() && j.claimed_at.is_some() && j.heartbeat_at.is_some());
    }
}

pub async fn claim_takes_a_batch_up_to_its_limit(h: &impl Harness) {
    let s = h.store();
    s.enqueue((0..25).map(|_| job("n")).collect())
        .await
        .unwrap();
    assert_eq!(s.claim(claim("w", 10)).await.unwrap().len(), 10);
    assert_eq!(s.claim(claim("w", 10)).await.unwrap().len(), 10);
    assert_eq!(s.claim(claim("w", 10)).await.unwrap().len(), 5);
    assert!(
        s.claim(claim("w", 10)).await.unwrap().is_empty(),
        "claiming nothing is normal"
    );
    assert!(s.claim(claim("w", 0)).await.unwrap().is_empty());
}

pub async fn claim_skips_paused_queues(h: &impl Harness) {
    let s = h.store();
    let mut other = job("x");
    other.queue = "other".into();
    enqueue_one(&s, job("x")).await;
    enqueue_one(&s, other).await;
    s.update_queue(
        "default",
        QueuePatch {
            paused: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let claimed = s.claim(claim("w", 10)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].queue, "other");
    assert!(s.claim(claim("w", 10)).await.unwrap().is_empty());
    s.update_queue(
        "default",
        QueuePatch {
            paused: Some(false),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(s.claim(claim("w", 10)).await.unwrap().len(), 1);
}

pub async fn claim_respects_queue_and_global_caps(h: &impl Harness) {
    let s = h.store();
    for q in ["a", "b", "c"] {
        let batch = (0..5)
            .map(|_| {
                let mut nj = job("k");
                nj.queue = q.into();
                nj
            })
            .collect();
        s.enqueue(batch).await.unwrap();
    }
    s.update_queue(
        "a",
        QueuePatch {
            concurrency: Some(Some(1)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    s.update_queue(
        "b",
        QueuePatch {
            concurrency: Some(Some(0)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    s.set_limits(Limits { global: Some(3) }).await.unwrap();
    let claimed = s.claim(claim("w", 100)).await.unwrap();
    assert_eq!(claimed.len(), 3, "global cap");
    let per_queue = |jobs: &[Job], q: &str| jobs.iter().filter(|j| j.queue == q).count();
    assert_eq!(per_queue(&claimed, "a"), 1, "queue a's cap");
    assert_eq!(per_queue(&claimed, "b"), 0, "a cap of 0 pauses the queue");
    assert_eq!(per_queue(&claimed, "c"), 2);
    assert!(
        s.claim(claim("w", 100)).await.unwrap().is_empty(),
        "full: claims nothing"
    );
    // Freeing a slot in c lets one more run.
    let c = claimed.iter().find(|j| j.queue == "c").unwrap();
    one(&s, succeed(c)).await.unwrap();
    let next = s.claim(claim("w", 100)).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].queue, "c");
    // Lifting the global cap lets the rest of c run, a stays at 1.
    s.set_limits(Limits { global: None }).await.unwrap();
    let rest = s.claim(claim("w", 100)).await.unwrap();
    assert_eq!(per_queue(&rest, "c"), 2);
    assert_eq!(per_queue(&rest, "a"), 0);
    assert_eq!(per_queue(&rest, "b"), 0);
    assert_eq!(s.limits().await.unwrap(), Limits { global: None });
}

pub async fn claim_filters_by_queue_and_kind(h: &impl Harness) {
    let s = h.store();
    let mut in_q = job("scan");
    in_q.queue = "agents".into();
    let mut cmd = job("adhoc");
    cmd.command = Some(vec!["true".into()]);
    enqueue_one(&s, in_q).await;
    enqueue_one(&s, cmd).await;
    enqueue_one(&s, job("remote-only")).await;
    let mut p = claim("w", 10);
    p.queues = Some(vec!["agents".into()]);
    let got = s.claim(p).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].kind, "scan");
    let mut p = claim("w", 10);
    p.kinds = KindFilter::Only {
        kinds: vec!["nothing-like-it".into()],
        commands: true,
    };
    let got = s.claim(p).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].kind, "adhoc",
        "command jobs are claimable by a command executor"
    );
    let mut p = claim("w", 10);
    p.kinds = KindFilter::Only {
        kinds: vec!["remote-only".into()],
        commands: false,
    };
    assert_eq!(s.claim(p).await.unwrap()[0].kind, "remote-only");
}

pub async fn heartbeat_extends_the_lease_within_the_hard_cap(h: &impl Harness) {
    let s = h.store();
    let mut nj = job("long");
    nj.max_run_duration = Some(Duration::from_secs(100));
    nj.heartbeat_timeout = Some(Duration::from_secs(30));
    enqueue_one(&s, nj).await;
    let j = claim_one(&s, "w").await;
    let claimed_at = j.claimed_at.unwrap();
    assert_eq!(
        j.lease_expires_at.unwrap().0,
        claimed_at.0 + 30_000,
        "lease = claim + heartbeat_timeout"
    );
    h.advance(Duration::from_secs(20));
    let ack = s
        .heartbeat(HeartbeatParams {
            job: j.id,
            epoch: j.epoch,
            turns: Some(4),
            progress: Some("cloned".into()),
        })
        .await
        .unwrap();
    assert!(
        ack.lease_expires_at.0 >= claimed_at.0 + 50_000,
        "extended by heartbeat_timeout"
    );
    assert!(!ack.cancel_requested);
    assert_eq!(ack.turns, 4);
    h.advance(Duration::from_secs(25));
    s.heartbeat(HeartbeatParams {
        job: j.id,
        epoch: j.epoch,
        ..Default::default()
    })
    .await
    .unwrap();
    h.advance(Duration::from_secs(25));
    let ack = s
        .heartbeat(HeartbeatParams {
            job: j.id,
            epoch: j.epoch,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ack.lease_expires_at.0,
        claimed_at.0 + 100_000,
        "never past claimed_at + max_run_duration"
    );
    let stored = s.get_job(j.id).await.unwrap();
    assert_eq!(stored.heartbeat_count, 3);
    assert_eq!(stored.progress.as_deref(), Some("cloned"));
    assert_eq!(
        stored.turns, 4,
        "turns are kept when a heartbeat omits them"
    );
}

pub async fn heartbeat_is_fenced(h: &impl Harness) {
    let s = h.store();
    let mut nj = job("x");
    nj.heartbeat_timeout = Some(Duration::from_secs(10));
    enqueue_one(&s, nj).await;
    let j = claim_one(&s, "w").await;
    let stale = s
        .heartbeat(HeartbeatParams {
            job: j.id,
            epoch: j.epoch - 1,
            ..Default::default()
        })
        .await;
    assert_eq!(
        stale.unwrap_err(),
        StoreError::StaleEpoch {
            expected: j.epoch,
            actual: j.epoch - 1
        }
    );
    let missing = s
        .heartbeat(HeartbeatParams {
            job: j.id + 99,
            epoch: 1,
            ..Default::default()
        })
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))));
    h.advance(Duration::from_secs(11));
    let late = s
        .heartbeat(HeartbeatParams {
            job: j.id,
            epoch: j.epoch,
            ..Default::default()
        })
        .await;
    assert_eq!(
        late.unwrap_err(),
        StoreError::LeaseExpired,
        "a passed lease cannot be revived"
    );
    one(&s, succeed(&j)).await.unwrap();
    let done = s
        .heartbeat(HeartbeatParams {
            job: j.id,
            epoch: j.epoch,
            ..Default::default()
        })
        .await;
    assert_eq!(
        done.unwrap_err(),
        StoreError::NotRunning {
            state: JobState::Succeeded
        }
    );
}

pub async fn write_backs_are_fenced_and_change_nothing(h: &impl Harness) {
    let s = h.store();
    enqueue_one(&s, job("x")).await;
    let j = claim_one(&s, "w").await;
    let before = s.get_job(j.id).await.unwrap();
    let mut wrong = succeed(&j);
    wrong.epoch += 1;
    assert_eq!(
        one(&s, wrong).await.unwrap_err(),
        StoreError::StaleEpoch {
            expected: 1,
            actual: 2
        }
    );
    let mut wrong = fail(&j, FailureReason::Error);
    wrong.epoch = 0;
    assert_eq!(
        one(&s, wrong).await.unwrap_err(),
        StoreError::StaleEpoch {
            expected: 1,
            actual: 0
        }
    );
    assert_eq!(
        s.get_job(j.id).await.unwrap(),
        before,
        "refused writes change nothing"
    );
    let mut with_result = succeed(&j);
    with_result.outcome = Outcome::Succeeded {
        result: Some(serde_json::json!({"pr": 7})),
    };
    let done = one(&s, with_result).await.unwrap();
    assert_eq!(
        done,
        s.get_job(j.id).await.unwrap(),
        "a write-back answers with the stored job"
    );
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result, Some(serde_json::json!({"pr": 7})));
    assert!(done.finished_at.is_some());
    let after = s.get_job(j.id).await.unwrap();
    assert_eq!(
        one(&s, succeed(&j)).await.unwrap_err(),
        StoreError::NotRunning {
            state: JobState::Succeeded
        }
    );
    assert_eq!(
        one(&s, fail(&j, FailureReason::Error)).await.unwrap_err(),
        StoreError::NotRunning {
            state: JobState::Succeeded
        }
    );
    assert_eq!(s.get_job(j.id).await.unwrap(), after);
    // A batch answers each element on its own.
    let answers = s
        .finish(vec![
            succeed(&j),
            Finish {
                job: 987_654,
                epoch: 1,
                outcome: Outcome::Succeeded { result: None },
                output: None,
            },
        ])
        .await
        .unwrap();
    assert!(matches!(answers[0], Err(StoreError::NotRunning { .. })));
    assert!(matches!(answers[1], Err(StoreError::NotFound(987_654))));
}

pub async fn a_batch_applies_its_write_backs_in_order(h: &impl Harness) {
    let s = h.store();
    s.enqueue((0..3).map(|_| job("b")).collect()).await.unwrap();
    let runs = s.claim(claim("w", 3)).await.unwrap();
    let (a, b, c) = (&runs[0], &runs[1], &runs[2]);
    let answers = s
        .finish(vec![
            succeed(a),
            fail(b, FailureReason::Error),
            succeed(b),
            succeed(a),
            succeed(c),
        ])
        .await
        .unwrap();
    assert_eq!(answers[0].as_ref().unwrap().state, JobState::Succeeded);
    assert_eq!(answers[1].as_ref().unwrap().state, JobState::Retryable);
    assert_eq!(
        answers[2].as_ref().unwrap_err(),
        &StoreError::NotRunning {
            state: JobState::Retryable
        },
        "the second write-back of b comes after its failure"
    );
    assert_eq!(
        answers[3].as_ref().unwrap_err(),
        &StoreError::NotRunning {
            state: JobState::Succeeded
        }
    );
    assert_eq!(answers[4].as_ref().unwrap().state, JobState::Succeeded);
    assert_eq!(s.get_job(b.id).await.unwrap().state, JobState::Retryable);
    let a_events = s.job_events(a.id).await.unwrap();
    assert_eq!(
        a_events
            .iter()
            .filter(|e| e.event == EventKind::Succeeded)
            .count(),
        1
    );
}

pub async fn failure_retries_with_backoff_until_max_attempts(h: &impl Harness) {
    let s = h.store();
    let mut nj = job("flaky");
    nj.max_attempts = 3;
    let j = enqueue_one(&s, nj).await;
    for attempt in 1..=3 {
        let run = claim_one(&s, "w").await;
        assert_eq!((run.attempt, run.epoch), (attempt, i64::from(attempt)));
        let after = one(&s, fail(&run, FailureReason::ExitCode)).await.unwrap();
        assert_eq!(after.failure_reason, Some(FailureReason::ExitCode));
        if attempt < 3 {
            assert_eq!(after.state, JobState::Retryable);
            let now = s.now().await.unwrap();
            let base = 15_000 * (1i64 << (attempt - 1));
            let wait = after.available_at.0 - now.0;
            assert!(
                wait <= base && wait >= base * 7 / 10,
                "backoff {wait}ms for attempt {attempt}"
            );
            assert!(
                s.claim(claim("w", 1)).await.unwrap().is_empty(),
                "not before the backoff"
            );
            h.advance(Duration::from_millis(base as u64 + 1));
            assert_eq!(s.promote_due(10).await.unwrap(), 1);
        } else {
            assert_eq!(after.state, JobState::Failed, "no attempts left");
            assert!(after.finished_at.is_some());
            assert_eq!(after.last_error.as_deref(), Some("exit_code happened"));
        }
    }
    assert_eq!(s.get_job(j.id).await.unwrap().attempt, 3);
}

pub async fn final_reasons_are_not_retried(h: &impl Harness) {
    let s = h.store();
    for reason in [
        FailureReason::TurnLimitExceeded,
        FailureReason::BudgetExceeded,
        FailureReason::AuthFailed,
    ] {
        enqueue_one(&s, job("agent")).await;
        let run = claim_one(&s, "w").await;
        let after = one(&s, fail(&run, reason)).await.unwrap();
        assert_eq!(after.state, JobState::Failed, "{reason} is final");
    }
    // A job can change the retry set.
    let mut nj = job("agent");
    nj.retry_on = Some(vec![FailureReason::AuthFailed]);
    enqueue_one(&s, nj).await;
    let run = claim_one(&s, "w").await;
    assert_eq!(
        one(&s, fail(&run, FailureReason::AuthFailed))
            .await
            .unwrap()
            .state,
        JobState::Retryable
    );
    h.advance(Duration::from_secs(16));
    s.promote_due(10).await.unwrap();
    let run = claim_one(&s, "w").await;
    assert_eq!(
        one(&s, fail(&run, FailureReason::Error))
            .await
            .unwrap()
            .state,
        JobState::Failed
    );
}

pub async fn reaper_ends_silent_runs_as_heartbeat_lost(h: &impl Harness) {
    let s = h.store();
    let mut nj = job("agent");
    nj.heartbeat_timeout = Some(Duration::from_secs(30));
    enqueue_one(&s, nj).await;
    let run = claim_one(&s, "w").await;
    h.advance(Duration::from_secs(29));
    assert!(s.reap_expired(100).await.unwrap().is_empty(), "not yet");
    h.advance(Duration::from_secs(2));
    let reaped = s.reap_expired(100).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].id, run.id);
    assert_eq!(reaped[0].state, JobState::Retryable);
    assert_eq!(reaped[0].failure_reason, Some(FailureReason::HeartbeatLost));
    let events = s.job_events(run.id).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.event, last.by, last.reason.as_deref()),
        (EventKind::Retryable, Actor::Reaper, Some("heartbeat_lost"))
    );
    assert_eq!(last.worker.as_deref(), Some("w"));
    assert!(s.reap_expired(100).await.unwrap().is_empty(), "reaped once");
}

pub async fn reaper_ends_runs_past_max_run_duration_as_timeout(h: &impl Harness) {
    let s = h.store();
    let mut nj = job("agent");
    nj.max_run_duration = Some(Duration::from_secs(60));
    nj.heartbeat_timeout = Some(Duration::from_secs(20));
    nj.max_attempts = 1;
    enqueue_one(&s, nj).await;
    let run = claim_one(&s, "w").await;
    for _ in 0..4 {
        h.advance(Duration::from_secs(14));
        s.heartbeat(HeartbeatParams {
            job: run.id,
            epoch: run.epoch,
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(
            s.reap_expired(100).await.unwrap().is_empty(),
            "heartbeating within the hard cap"
        );
    }
    h.advance(Duration::from_secs(5));
    let reaped = s.reap_expired(100).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].failure_reason, Some(FailureReason::Timeout));
    assert_eq!(reaped[0].state, JobState::Failed, "max_attempts 1");
}

pub async fn fresh_runs_are_never_reaped(h: &impl Harness) {
    let s = h.store();
    let mut nj = job("agent");
    nj.max_run_duration = Some(Duration::from_secs(3600));
    nj.heartbeat_timeout = Some(Duration::from_secs(10));
    enqueue_one(&s, nj).await;
    let run = claim_one(&s, "w").await;
    // Claimed long ago (by the run's standards) but still heartbeating.
    for _ in 0..100 {
        h.advance(Duration::from_secs(9));
        s.heartbeat(HeartbeatParams {
            job: run.id,
            epoch: run.epoch,
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(s.reap_expired(100).await.unwrap().is_empty());
    }
    assert_eq!(s.get_job(run.id).await.unwrap().state, JobState::Running);
}

pub async fn non_heartbeating_runs_are_governed_by_max_run_duration_only(h: &impl Harness) {
    let s = h.store();
    let mut nj = job("legacy");
    nj.max_run_duration = Some(Duration::from_secs(300));
    nj.heartbeat_timeout = Some(Duration::from_secs(10));
    enqueue_one(&s, nj).await;
    let mut p = claim("old-client", 1);
    p.heartbeats = false;
    let run = s.claim(p).await.unwrap().remove(0);
    assert!(!run.heartbeats);
    assert_eq!(
        run.lease_expires_at.unwrap().0,
        run.claimed_at.unwrap().0 + 300_000
    );
    h.advance(Duration::from_secs(299));
    assert!(
        s.reap_expired(10).await.unwrap().is_empty(),
        "silence is fine for a non-heartbeating client"
    );
    h.advance(Duration::from_secs(2));
    assert_eq!(
        s.reap_expired(10).await.unwrap()[0].failure_reason,
        Some(FailureReason::Timeout)
    );
}

pub async fn stale_executor_cannot_overwrite_the_new_owner(h: &impl Harness) {
    let s = h.store();
    let mut nj = job("agent");
    nj.heartbeat_timeout = Some(Duration::from_secs(10));
    enqueue_one(&s, nj).await;
    let old = claim_one(&s, "old").await;
    h.advance(Duration::from_secs(11));
    assert_eq!(s.reap_expired(10).await.unwrap().len(), 1);
    h.advance(Duration::from_secs(16));
    s.promote_due(10).await.unwrap();
    let new = claim_one(&s, "new").await;
    assert_eq!(new.epoch, old.epoch + 1);
    // The old executor wakes up and tries every write.
    let hb = s
        .heartbeat(HeartbeatParams {
            job: old.id,
            epoch: old.epoch,
            ..Default::default()
        })
        .await;
    assert_eq!(
        hb.unwrap_err(),
        StoreError::StaleEpoch {
            expected: new.epoch,
            actual: old.epoch
        }
    );
    assert!(matches!(
        one(&s, succeed(&old)).await,
        Err(StoreError::StaleEpoch { .. })
    ));
    assert!(matches!(
        one(&s, fail(&old, FailureReason::Error)).await,
        Err(StoreError::StaleEpoch { .. })
    ));
    assert_eq!(
        s.get_job(new.id).await.unwrap().claimed_by.as_deref(),
        Some("new")
    );
    let mut result = succeed(&new);
    result.outcome = Outcome::Succeeded {
        result: Some(serde_json::json!("new owner")),
    };
    one(&s, result).await.unwrap();
    assert!(matches!(
        one(&s, succeed(&old)).await,
        Err(StoreError::StaleEpoch { .. })
    ));
    let stored = s.get_job(new.id).await.unwrap();
    assert_eq!(
        stored.result,
        Some(serde_json::json!("new owner")),
        "the new owner's result stands"
    );
    assert_eq!(stored.state, JobState::Succeeded);
}

pub async fn cancel_waiting_and_running_jobs(h: &impl Harness) {
    let s = h.store();
    let waiting = enqueue_one(&s, job("w")).await;
    let c = s.cancel(waiting.id).await.unwrap();
    assert_eq!(c.state, JobState::Cancelled);
    assert_eq!(c.failure_reason, Some(FailureReason::Cancelled));
    assert!(matches!(
        s.cancel(waiting.id).await,
        Err(StoreError::InvalidState { .. })
    ));

    enqueue_one(&s, job("r")).await;
    let run = claim_one(&s, "w").await;
    let requested = s.cancel(run.id).await.unwrap();
    assert_eq!(
        requested.state,
        JobState::Running,
        "a running job is stopped by its executor first"
    );
    assert!(requested.cancel_requested_at.is_some());
    let ack = s
        .heartbeat(HeartbeatParams {
            job: run.id,
            epoch: run.epoch,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        ack.cancel_requested,
        "the executor is told through its heartbeat"
    );
    let done = one(&s, fail(&run, FailureReason::Error)).await.unwrap();
    assert_eq!(done.state, JobState::Cancelled);
    assert_eq!(done.failure_reason, Some(FailureReason::Cancelled));
    let kinds: Vec<EventKind> = s
        .job_events(run.id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::Enqueued,
            EventKind::Claimed,
            EventKind::CancelRequested,
            EventKind::Cancelled
        ]
    );
    let missing = s.cancel(123_456).await;
    assert!(matches!(missing, Err(StoreError::NotFound(123_456))));
}

pub async fn unresponsive_cancel_is_finished_by_the_reaper(h: &impl Harness) {
    let s = h.store();
    let mut nj = job("hung");
    nj.heartbeat_timeout = Some(Duration::from_secs(600));
    enqueue_one(&s, nj).await;
    let run = claim_one(&s, "w").await;
    s.cancel(run.id).await.unwrap();
    h.advance(Duration::from_secs(16));
    let reaped = s.reap_expired(10).await.unwrap();
    assert_eq!(reaped.len(), 1, "the cancel grace shortened the lease");
    assert_eq!(reaped[0].state, JobState::Cancelled);
}

pub async fn manual_retry_resets_attempts_and_keeps_epoch(h: &impl Harness) {
    let s = h.store();
    let mut nj = job("x");
    nj.max_attempts = 1;
    enqueue_one(&s, nj).await;
    let run = claim_one(&s, "w").await;
    let failed = one(&s, fail(&run, FailureReason::Error)).await.unwrap();
    assert_eq!(failed.state, JobState::Failed);
    let retried = s.retry(run.id).await.unwrap();
    assert_eq!(retried.state, JobState::Available);
    assert_eq!(retried.attempt, 0);
    assert_eq!(
        retried.epoch, failed.epoch,
        "epoch kept: the next claim still fences the old run"
    );
    let again = claim_one(&s, "w").await;
    assert_eq!(again.epoch, failed.epoch + 1);
    assert!(matches!(
        s.retry(run.id).await,
        Err(StoreError::InvalidState {
            action: "retry",
            ..
        })
    ));
    one(&s, succeed(&again)).await.unwrap();
    assert!(
        matches!(s.retry(run.id).await, Err(StoreError::InvalidState { .. })),
        "succeeded jobs are not retried"
    );
}

/// Replays a job's events through the state machine.
fn replay(events: &[reeve_core::Event]) -> JobState {
    let mut state: Option<JobState> = None;
    for e in events {
        match (state, e.event) {
            (None, EventKind::Enqueued) => {
                state = Some(
                    e.detail
                        .as_deref()
                        .unwrap_or("available")
                        .parse()
                        .expect("enqueued state"),
                );
            }
            (Some(from), kind) => {
                if let Some(to) = kind.resulting_state() {
                    assert!(
                        from.can_transition(to),
                        "illegal transition {from} -> {to} in history"
                    );
                    state = Some(to);
                } else {
                    assert_eq!(kind, EventKind::CancelRequested);
                    assert_eq!(from, JobState::Running);
                }
            }
            (None, other) => panic!("history starts with {other}"),
        }
    }
    state.expect("a history")
}

pub async fn events_replay_to_the_current_state(h: &impl Harness) {
    let s = h.store();
    let mut nj = job("life");
    nj.heartbeat_timeout = Some(Duration::from_secs(5));
    let j = enqueue_one(&s, nj).await;
    let r1 = claim_one(&s, "a").await;
    one(&s, fail(&r1, FailureReason::RateLimited))
        .await
        .unwrap();
    h.advance(Duration::from_secs(16));
    s.promote_due(10).await.unwrap();
    claim_one(&s, "b").await;
    h.advance(Duration::from_secs(6));
    s.reap_expired(10).await.unwrap();
    h.advance(Duration::from_secs(31));
    s.promote_due(10).await.unwrap();
    let r3 = claim_one(&s, "c").await;
    one(&s, succeed(&r3)).await.unwrap();
    let events = s.job_events(j.id).await.unwrap();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.event).collect();
    use EventKind::*;
    assert_eq!(
        kinds,
        [
            Enqueued, Claimed, Retryable, Available, Claimed, Retryable, Available, Claimed,
            Succeeded
        ]
    );
    let epochs: Vec<i64> = events
        .iter()
        .filter(|e| e.event == Claimed)
        .map(|e| e.epoch)
        .collect();
    assert_eq!(epochs, [1, 2, 3]);
    assert_eq!(replay(&events), s.get_job(j.id).await.unwrap().state);
    assert!(
        events
            .windows(2)
            .all(|w| w[0].id < w[1].id && w[0].at <= w[1].at)
    );
}

pub async fn next_due_in_tracks_leases_and_due_jobs(h: &impl Harness) {
    let s = h.store();
    assert_eq!(
        s.next_due_in().await.unwrap(),
        None,
        "idle: nothing to wait for"
    );
    let mut later = job("later");
    later.availability = Availability::After(Duration::from_secs(120));
    enqueue_one(&s, later).await;
    let d = s.next_due_in().await.unwrap().unwrap();
    assert!(
        d <= Duration::from_secs(120) && d > Duration::from_secs(110),
        "{d:?}"
    );
    let mut nj = job("run");
    nj.heartbeat_timeout = Some(Duration::from_secs(30));
    enqueue_one(&s, nj).await;
    claim_one(&s, "w").await;
    let d = s.next_due_in().await.unwrap().unwrap();
    assert!(
        d <= Duration::from_secs(30) && d > Duration::from_secs(20),
        "{d:?}"
    );
    h.advance(Duration::from_secs(40));
    assert_eq!(
        s.next_due_in().await.unwrap(),
        Some(Duration::ZERO),
        "overdue counts as due now"
    );
}

pub async fn listing_pages_by_keyset_with_filters(h: &impl Harness) {
    let s = h.store();
    let mut batch = Vec::new();
    for i in 0..30 {
        let mut nj = job(if i % 2 == 0 { "even" } else { "odd" });
        nj.queue = if i % 3 == 0 { "q3".into() } else { "q".into() };
        batch.push(nj);
    }
    s.enqueue(batch).await.unwrap();
    claim_one(&s, "w").await;
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = s
            .list_jobs(JobFilter {
                before_id: before,
                limit: 7,
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|j| j.id));
        match page.next_before_id {
            Some(id) => before = Some(id),
            None => break,
        }
    }
    assert_eq!(seen.len(), 30);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats"
    );
    let even = s
        .list_jobs(JobFilter {
            kind: Some("even".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(even.items.len(), 15);
    let q3 = s
        .list_jobs(JobFilter {
            queue: Some("q3".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(q3.items.len(), 10);
    let running = s
        .list_jobs(JobFilter {
            state: Some(JobState::Running),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(running.items.len(), 1);
}

pub async fn queues_limits_and_status(h: &impl Harness) {
    let s = h.store();
    let mut batch: Vec<NewJob> = (0..3).map(|_| job("k")).collect();
    let mut delayed = job("k");
    delayed.queue = "slow".into();
    delayed.availability = Availability::After(Duration::from_secs(60));
    batch.push(delayed);
    s.enqueue(batch).await.unwrap();
    claim_one(&s, "w").await;
    let q = s
        .update_queue(
            "slow",
            QueuePatch {
                concurrency: Some(Some(2)),
                paused: Some(true),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (q.settings.concurrency, q.settings.paused, q.scheduled),
        (Some(2), true, 1)
    );
    let q = s
        .update_queue(
            "slow",
            QueuePatch {
                concurrency: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (q.settings.concurrency, q.settings.paused),
        (None, true),
        "a patch leaves other fields alone"
    );
    let queues = s.list_queues().await.unwrap();
    let default = queues.iter().find(|q| q.name == "default").unwrap();
    assert_eq!((default.available, default.running), (2, 1));
    assert!(
        s.update_queue("bad name", QueuePatch::default())
            .await
            .is_err()
    );
    assert_eq!(
        s.set_limits(Limits { global: Some(7) }).await.unwrap(),
        Limits { global: Some(7) }
    );
    assert_eq!(s.limits().await.unwrap().global, Some(7));
    let st = s.status().await.unwrap();
    assert_eq!(st.running, 1);
    assert_eq!(st.by_state["available"], 2);
    assert_eq!(st.by_state["scheduled"], 1);
    assert_eq!(st.by_state["failed"], 0);
}

pub async fn output_is_kept_per_attempt(h: &impl Harness) {
    let s = h.store();
    let j = enqueue_one(&s, job("talk")).await;
    let run = claim_one(&s, "w").await;
    let mut f = fail(&run, FailureReason::ExitCode);
    f.output = Some(b"first try\n".to_vec());
    one(&s, f).await.unwrap();
    h.advance(Duration::from_secs(16));
    s.promote_due(1).await.unwrap();
    let run = claim_one(&s, "w").await;
    let mut f = succeed(&run);
    f.output = Some(b"second try\n".to_vec());
    one(&s, f).await.unwrap();
    let out = s.job_output(j.id).await.unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].attempt, out[0].output.as_str()), (1, "first try\n"));
    assert_eq!(
        (out[1].attempt, out[1].output.as_str()),
        (2, "second try\n")
    );
}

pub async fn prune_deletes_only_old_finished_jobs(h: &impl Harness) {
    let s = h.store();
    s.enqueue((0..5).map(|_| job("x")).collect()).await.unwrap();
    for run in s.claim(claim("w", 3)).await.unwrap() {
        one(&s, succeed(&run)).await.unwrap();
    }
    assert_eq!(
        s.prune(Duration::from_secs(3600), 100).await.unwrap(),
        0,
        "too recent"
    );
    h.advance(Duration::from_secs(7200));
    assert_eq!(
        s.prune(Duration::from_secs(3600), 2).await.unwrap(),
        2,
        "bounded batch"
    );
    assert_eq!(s.prune(Duration::from_secs(3600), 2).await.unwrap(), 1);
    assert_eq!(s.prune(Duration::from_secs(3600), 2).await.unwrap(), 0);
    let st = s.status().await.unwrap();
    assert_eq!(st.by_state["available"], 2, "live jobs stay");
    assert_eq!(st.by_state["succeeded"], 0);
}

/// 8 claimers (half on their own connections, as separate processes would
/// be) race for jobs under caps of 2 global / 1 per queue. The event history,
/// replayed in commit order, must never show more running jobs than a cap,
/// and every job must succeed exactly once.
pub async fn concurrent_claimers_never_exceed_caps(h: &impl Harness) {
    let s = h.store();
    const JOBS: usize = 120;
    let queues = ["q1", "q2", "q3"];
    s.set_limits(Limits { global: Some(2) }).await.unwrap();
    for q in queues {
        s.update_queue(
            q,
            QueuePatch {
                concurrency: Some(Some(1)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let batch: Vec<NewJob> = (0..JOBS)
        .map(|i| {
            let mut nj = job("work");
            nj.queue = queues[i % 3].into();
            nj
        })
        .collect();
    let ids: Vec<i64> = s
        .enqueue(batch)
        .await
        .unwrap()
        .iter()
        .map(|e| e.job.id)
        .collect();
    let mut handles = Vec::new();
    for w in 0..8 {
        let store = if w % 2 == 0 {
            s.clone()
        } else {
            h.connect().await
        };
        let sampler = s.clone();
        handles.push(tokio::spawn(async move {
            let mut done = 0usize;
            let mut idle_rounds = 0;
            while idle_rounds < 200 {
                let claimed = store
                    .claim(claim(&format!("w{w}"), 2))
                    .await
                    .expect("claim");
                if claimed.is_empty() {
                    idle_rounds += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                idle_rounds = 0;
                // Sample the running count while holding runs.
                let running = sampler.status().await.expect("status").running;
                assert!(
                    running <= 2,
                    "sampled {running} running jobs under a global cap of 2"
                );
                tokio::task::yield_now().await;
                let answers = store
                    .finish(claimed.iter().map(succeed).collect())
                    .await
                    .expect("finish");
                for a in answers {
                    a.expect("the owner's completion is accepted");
                    done += 1;
                }
            }
            done
        }));
    }
    let mut total = 0;
    for handle in handles {
        total += handle.await.expect("claimer task");
    }
    assert_eq!(total, JOBS, "every job completed exactly once");
    // Replay every history in global event order.
    let mut all = Vec::new();
    for id in &ids {
        let events = s.job_events(*id).await.unwrap();
        let succeeded = events
            .iter()
            .filter(|e| e.event == EventKind::Succeeded)
            .count();
        assert_eq!(succeeded, 1, "job {id} succeeded exactly once");
        assert_eq!(s.get_job(*id).await.unwrap().state, JobState::Succeeded);
        let queue = s.get_job(*id).await.unwrap().queue;
        all.extend(events.into_iter().map(|e| (e, queue.clone())));
    }
    all.sort_by_key(|(e, _)| e.id);
    let mut running_total = 0i64;
    let mut running_by_queue: HashMap<String, i64> = HashMap::new();
    let mut max_total = 0;
    for (e, q) in &all {
        let delta = match e.event {
            EventKind::Claimed => 1,
            EventKind::Succeeded
            | EventKind::Failed
            | EventKind::Retryable
            | EventKind::Cancelled => -1,
            _ => 0,
        };
        running_total += delta;
        *running_by_queue.entry(q.clone()).or_default() += delta;
        max_total = max_total.max(running_total);
        assert!(running_total <= 2, "global cap exceeded at event {}", e.id);
        assert!(
            running_by_queue[q] <= 1,
            "queue {q} cap exceeded at event {}",
            e.id
        );
    }
    assert!(max_total >= 1);
}

/// A seeded random walk of claims, heartbeats, write-backs with right and
/// wrong epochs, reaps, cancels, retries and clock moves. After every step,
/// each job's history must replay to its stored state through legal
/// transitions, and epochs and attempts must agree with the claims made.
pub async fn random_operations_keep_invariants(h: &impl Harness) {
    let s = h.store();
    let mut rng_state: u64 = 0x5eed_1234_abcd_9876;
    let mut next = move |n: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state % n
    };
    let mut ids = Vec::new();
    let mut claims: BTreeMap<i64, i64> = BTreeMap::new(); // job -> claims seen
    for step in 0..400 {
        match next(9) {
            0 => {
                let mut nj = job("r");
                nj.max_attempts = 1 + next(3) as i32;
                nj.heartbeat_timeout = Some(Duration::from_secs(5 + next(20)));
                nj.max_run_duration = Some(Duration::from_secs(30 + next(60)));
                ids.push(enqueue_one(&s, nj).await.id);
            }
            1 | 2 => {
                for j in s.claim(claim("w", 1 + next(3) as u32)).await.unwrap() {
                    *claims.entry(j.id).or_default() += 1;
                    assert_eq!(j.epoch, claims[&j.id], "epoch counts claims");
                }
            }
            3 | 4 if !ids.is_empty() => {
                let id = ids[next(ids.len() as u64) as usize];
                let current = s.get_job(id).await.unwrap();
                let epoch = current.epoch + next(3) as i64 - 1;
                let before = current.clone();
                let outcome = match next(3) {
                    0 => Outcome::Succeeded { result: None },
                    1 => Outcome::Failed {
                        reason: FailureReason::Error,
                        error: None,
                    },
                    _ => Outcome::Failed {
                        reason: FailureReason::AuthFailed,
                        error: None,
                    },
                };
                let answer = s
                    .finish(vec![Finish {
                        job: id,
                        epoch,
                        outcome,
                        output: None,
                    }])
                    .await
                    .unwrap()
                    .remove(0);
                if answer.is_err() {
                    assert_eq!(
                        s.get_job(id).await.unwrap(),
                        before,
                        "step {step}: refused write changed the job"
                    );
                } else {
                    assert_eq!((before.state, before.epoch), (JobState::Running, epoch));
                }
            }
            5 if !ids.is_empty() => {
                let id = ids[next(ids.len() as u64) as usize];
                let current = s.get_job(id).await.unwrap();
                let epoch = current.epoch + next(2) as i64 - 1;
                let answer = s
                    .heartbeat(HeartbeatParams {
                        job: id,
                        epoch,
                        ..Default::default()
                    })
                    .await;
                if answer.is_ok() {
                    assert_eq!((current.state, current.epoch), (JobState::Running, epoch));
                }
            }
            6 if !ids.is_empty() => {
                let id = ids[next(ids.len() as u64) as usize];
                let _ = if next(2) == 0 {
                    s.cancel(id).await
                } else {
                    s.retry(id).await
                };
            }
            7 => {
                h.advance(Duration::from_secs(next(30)));
                s.reap_expired(100).await.unwrap();
                s.promote_due(100).await.unwrap();
            }
            _ => {}
        }
        if step % 50 == 49 {
            for id in &ids {
                let job = s.get_job(*id).await.unwrap();
                assert_eq!(
                    replay(&s.job_events(*id).await.unwrap()),
                    job.state,
                    "job {id} at step {step}"
                );
                assert_eq!(job.epoch, claims.get(id).copied().unwrap_or(0));
                assert!(job.attempt <= job.max_attempts || job.state != JobState::Running);
            }
        }
    }
}
