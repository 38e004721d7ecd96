//! The conformance suite: one body of tests every backend must pass.
//!
//! A backend's test file implements [`Harness`] (a fresh, empty database per
//! test, and a way to move the store's clock) and invokes
//! [`conformance_suite!`](crate::conformance_suite) once; every test below then
//! runs against that backend. A change to the [`Store`] trait extends this
//! suite, so all backends are held to the same contract.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reeve_core::job::Availability;
use reeve_core::{Actor, EventKind, FailureReason, Job, JobFilter, JobState, NewJob, Timestamp};
use reeve_schedule::{OverlapPolicy, ScheduleStatus};

pub mod walk;

use crate::{
    ClaimParams, DeferParams, DeferResult, Finish, FireParams, FireResult, FiringOutcome,
    HeartbeatParams, KindFilter, Limits, NextFire, Outcome, QueuePatch, SchedulePut, Store,
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
    async fn connect(&self) -> Arc<dyn Store> {
        self.connect_with(crate::StoreConfig::default()).await
    }
    /// Like [`Harness::connect`], opened with `config` (a process with other
    /// settings, e.g. webhook subscriptions), its clock where the harness's
    /// is now.
    async fn connect_with(&self, config: crate::StoreConfig) -> Arc<dyn Store>;
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
            schedules_put_get_list_delete,
            schedule_status_and_due_follow_the_store_clock,
            fire_inserts_one_job_and_advances,
            concurrent_firers_make_one_job_per_fire_time,
            overlap_skip_and_allow,
            overlap_queue_one_coalesces_into_the_waiting_job,
            overlap_cancel_previous_requests_the_cancel,
            skipped_misfire_range_is_one_row,
            next_due_in_sees_due_schedules,
            deleting_a_schedule_keeps_its_jobs_and_ledger,
            manual_runs_honor_caps_and_forced_runs_bypass_them,
            ledger_follows_a_firing_to_its_end,
            streaks_auto_pause_and_a_probe_reactivates,
            budget_breaches_count_after_the_grace,
            pressure_defers_a_due_firing_within_its_bound,
            old_ledger_rows_and_audit_are_kept_apart,
            ledger_rows_keep_to_their_own_firing,
            runs_since_and_jobs_by_schedule,
            finished_stats_count_by_hour_and_reason,
            workers_register_touch_and_deregister,
            checkpoints_are_fenced_and_survive_retries,
            mail_is_read_once_and_survives_retries,
            a_success_enqueues_its_follow_up,
            failures_and_cancels_enqueue_no_follow_up,
            a_refused_completion_enqueues_no_follow_up,
            a_batch_of_successes_enqueues_one_follow_up_each,
            a_retried_job_enqueues_its_follow_up_once,
            a_silent_run_stalls_once_with_one_supervisor_mail,
            a_stall_escalates_once_and_writes_a_subscribed_outbox_row,
            turns_notes_and_checkpoints_are_progress_and_clear_a_stall,
            a_run_whose_lease_passed_is_reaped_not_stalled,
            concurrent_supervisors_stall_and_escalate_once,
            failures_write_job_failed_rows_only_when_subscribed,
            an_auto_pause_writes_its_row_in_the_settling_transaction,
            concurrent_delivery_claimers_never_share_a_row,
            delivery_results_are_fenced_retried_and_pruned,
            a_claim_takes_a_pinned_job_only_with_all_its_labels,
            an_unlabeled_claimer_never_takes_a_pinned_job,
            a_pinned_job_at_the_head_does_not_block_the_queue,
            caps_hold_with_pinned_jobs,
            schedule_firings_carry_their_requirements,
            a_follow_up_is_pinned_by_its_own_requirements
        );
        $crate::conformance_suite!(@walks $factory;
            generated_walks_keep_the_job_invariants,
            racing_handles_keep_the_job_invariants
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
    // The generated walks take the factory: a fresh harness per case.
    (@walks $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::conformance::walk::$name(|| $factory()).await;
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
        labels: Vec::new(),
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
        handles.push(tokio::spawn(claim_and_complete_until_idle(
            store,
            sampler,
            format!("w{w}"),
            2,
        )));
    }
    let mut total = 0;
    for handle in handles {
        total += handle.await.expect("claimer task");
    }
    assert_eq!(total, JOBS, "every job completed exactly once");
    assert_history_within_caps(&s, &ids, 2, 1).await;
}

/// A claimer for the concurrency tests: claims two at a time until it has
/// found nothing 200 times in a row, samples the running count (through
/// `sampler`) while it holds runs, completes them, and returns how many it
/// completed.
pub async fn claim_and_complete_until_idle(
    store: Arc<dyn Store>,
    sampler: Arc<dyn Store>,
    worker: String,
    global_cap: u64,
) -> usize {
    claim_with_labels_until_idle(store, sampler, worker, Vec::new(), global_cap).await
}

/// [`claim_and_complete_until_idle`] for a claimer with placement labels;
/// every job it claims must be one those labels satisfy.
pub async fn claim_with_labels_until_idle(
    store: Arc<dyn Store>,
    sampler: Arc<dyn Store>,
    worker: String,
    labels: Vec<String>,
    global_cap: u64,
) -> usize {
    let mut done = 0usize;
    let mut idle_rounds = 0;
    let params = ClaimParams {
        labels: labels.clone(),
        ..claim(&worker, 2)
    };
    while idle_rounds < 200 {
        let claimed = store.claim(params.clone()).await.expect("claim");
        for j in &claimed {
            assert!(
                reeve_core::placement::satisfies(&labels, &j.requires),
                "{worker} with {labels:?} claimed job {} requiring {:?}",
                j.id,
                j.requires
            );
        }
        if claimed.is_empty() {
            idle_rounds += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        idle_rounds = 0;
        let running = sampler.status().await.expect("status").running;
        assert!(
            running <= global_cap,
            "sampled {running} running jobs under a global cap of {global_cap}"
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
}

/// Replays the histories of `ids` in global event order: each job succeeded
/// exactly once, and the running count never exceeded `global_cap` overall
/// or `queue_cap` in any queue, at any instant.
pub async fn assert_history_within_caps(
    s: &Arc<dyn Store>,
    ids: &[i64],
    global_cap: i64,
    queue_cap: i64,
) {
    let mut all = Vec::new();
    for id in ids {
        let events = s.job_events(*id).await.unwrap();
        let succeeded = events
            .iter()
            .filter(|e| e.event == EventKind::Succeeded)
            .count();
        assert_eq!(succeeded, 1, "job {id} succeeded exactly once");
        let job = s.get_job(*id).await.unwrap();
        assert_eq!(job.state, JobState::Succeeded);
        all.extend(events.into_iter().map(|e| (e, job.queue.clone())));
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
        assert!(
            running_total <= global_cap,
            "global cap exceeded at event {}",
            e.id
        );
        assert!(
            running_by_queue[q] <= queue_cap,
            "queue {q} cap exceeded at event {}",
            e.id
        );
    }
    assert!(max_total >= 1, "something ran");
}

// ---------------------------------------------------------------------------
// Schedules and the firing ledger (SPEC §7, §11).

fn schedule_spec(name: &str, queue: &str) -> reeve_schedule::ScheduleSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "every": "1m",
        "job": {"kind": "tick", "queue": queue},
    }))
    .expect("a valid spec")
}

fn put_new(name: &str, queue: &str, next: Option<Timestamp>) -> SchedulePut {
    SchedulePut {
        spec: schedule_spec(name, queue),
        status: None,
        next_fire_at: NextFire::Set(next),
        anchor: NextFire::Set(next),
        max_turns_changed: false,
    }
}

/// A firing of `name` (whose job goes to `queue`) at `nominal`, conditioned
/// on `expected`, moving the schedule to `next`.
fn firing(
    name: &str,
    queue: &str,
    overlap: OverlapPolicy,
    expected: Option<Timestamp>,
    nominal: Timestamp,
    next: Option<Timestamp>,
) -> FireParams {
    let template = schedule_spec(name, queue).validate().expect("valid").job;
    FireParams {
        schedule: name.into(),
        expected_next: expected,
        nominal,
        next: match expected {
            Some(_) => NextFire::Set(next),
            None => NextFire::Keep,
        },
        job: Some(template.new_job(name, nominal)),
        overlap,
        outcome: if expected.is_some() {
            FiringOutcome::Fired
        } else {
            FiringOutcome::Manual
        },
        skipped_until: None,
        require_capacity: false,
        audit: None,
        probe: false,
    }
}

async fn queue_jobs(s: &Arc<dyn Store>, queue: &str) -> Vec<Job> {
    s.list_jobs(JobFilter {
        queue: Some(queue.into()),
        limit: 1000,
        ..Default::default()
    })
    .await
    .expect("list")
    .items
}

fn claim_from(queue: &str) -> ClaimParams {
    ClaimParams {
        queues: Some(vec![queue.into()]),
        ..claim("w", 1)
    }
}

fn fired(r: FireResult) -> Job {
    match r {
        FireResult::Fired(job) => job,
        other => panic!("expected a job, got {other:?}"),
    }
}

pub async fn schedules_put_get_list_delete(h: &impl Harness) {
    let s = h.store();
    let now = s.now().await.unwrap();
    let t1 = Timestamp(now.0 + 60_000);
    let (b, created) = s.put_schedule(put_new("b", "qb", Some(t1))).await.unwrap();
    assert!(created);
    assert_eq!(b.name, "b");
    assert_eq!(b.status, ScheduleStatus::Active, "a new schedule is active");
    assert_eq!((b.next_fire_at, b.anchor), (Some(t1), Some(t1)));
    assert_eq!((b.generic_streak, b.budget_streak), (0, 0));
    assert_eq!((b.last_nominal, b.max_turns_set_at), (None, None));
    assert_eq!(b.spec, schedule_spec("b", "qb"));
    let (a, created) = s.put_schedule(put_new("a", "qa", None)).await.unwrap();
    assert!(created);
    assert_eq!(a.next_fire_at, None);

    // A fire moves last_nominal; an update must keep it and the history.
    fired(
        s.fire(firing(
            "b",
            "qb",
            OverlapPolicy::Allow,
            Some(t1),
            t1,
            Some(Timestamp(t1.0 + 60_000)),
        ))
        .await
        .unwrap(),
    );
    h.advance(Duration::from_millis(5));
    let mut changed = schedule_spec("b", "qb");
    changed.every = Some(Duration::from_secs(120).into());
    let (b2, created) = s
        .put_schedule(SchedulePut {
            spec: changed.clone(),
            status: None,
            next_fire_at: NextFire::Keep,
            anchor: NextFire::Keep,
            max_turns_changed: true,
        })
        .await
        .unwrap();
    assert!(!created, "an existing schedule is updated");
    assert_eq!(b2.spec, changed);
    assert_eq!(
        b2.next_fire_at,
        Some(Timestamp(t1.0 + 60_000)),
        "Keep keeps next_fire_at"
    );
    assert_eq!(b2.anchor, Some(t1), "Keep keeps the anchor");
    assert_eq!(b2.last_nominal, Some(t1), "an update keeps last_nominal");
    assert_eq!(b2.created_at, b.created_at, "an update keeps created_at");
    assert_eq!((b2.generic_streak, b2.budget_streak), (0, 0));
    assert!(b2.max_turns_set_at.is_some());
    assert!(b2.updated_at > b.updated_at);

    // A paused schedule stays paused through a put without a status.
    s.set_schedule_status(
        "b",
        ScheduleStatus::Paused,
        Some("by hand".into()),
        NextFire::Keep,
    )
    .await
    .unwrap();
    let (b3, _) = s
        .put_schedule(SchedulePut {
            spec: changed.clone(),
            status: None,
            next_fire_at: NextFire::Keep,
            anchor: NextFire::Keep,
            max_turns_changed: false,
        })
        .await
        .unwrap();
    assert_eq!(b3.status, ScheduleStatus::Paused);
    assert_eq!(b3.paused_reason.as_deref(), Some("by hand"));
    assert_eq!(b3.max_turns_set_at, b2.max_turns_set_at);
    let (b4, _) = s
        .put_schedule(SchedulePut {
            spec: changed,
            status: Some(ScheduleStatus::Active),
            next_fire_at: NextFire::Set(None),
            anchor: NextFire::Keep,
            max_turns_changed: false,
        })
        .await
        .unwrap();
    assert_eq!(b4.status, ScheduleStatus::Active);
    assert_eq!(b4.paused_reason, None, "resuming clears the reason");
    assert_eq!(b4.next_fire_at, None, "Set(None) clears next_fire_at");

    assert_eq!(s.get_schedule("b").await.unwrap(), b4);
    let names: Vec<String> = s
        .list_schedules()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["a", "b"], "listed by name");
    assert!(matches!(
        s.get_schedule("nope").await,
        Err(StoreError::ScheduleNotFound(n)) if n == "nope"
    ));
    assert!(s.delete_schedule("a").await.unwrap());
    assert!(!s.delete_schedule("a").await.unwrap(), "already gone");
    assert!(matches!(
        s.get_schedule("a").await,
        Err(StoreError::ScheduleNotFound(_))
    ));
    assert!(matches!(
        s.put_schedule(put_new("bad name!", "q", None)).await,
        Err(StoreError::Input(_))
    ));
}

pub async fn schedule_status_and_due_follow_the_store_clock(h: &impl Harness) {
    let s = h.store();
    let now = s.now().await.unwrap();
    let due_at = Timestamp(now.0 + 60_000);
    s.put_schedule(put_new("soon", "q", Some(due_at)))
        .await
        .unwrap();
    s.put_schedule(put_new("later", "q", Some(Timestamp(now.0 + 600_000))))
        .await
        .unwrap();
    s.put_schedule(put_new("never", "q", None)).await.unwrap();
    assert!(
        s.due_schedules(10).await.unwrap().is_empty(),
        "nothing due yet"
    );
    h.advance(Duration::from_secs(61));
    let due = s.due_schedules(10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].name, "soon");

    let paused = s
        .set_schedule_status(
            "soon",
            ScheduleStatus::Paused,
            Some("3 failures in a row".into()),
            NextFire::Keep,
        )
        .await
        .unwrap();
    assert_eq!(paused.status, ScheduleStatus::Paused);
    assert_eq!(paused.paused_reason.as_deref(), Some("3 failures in a row"));
    assert_eq!(paused.next_fire_at, Some(due_at));
    assert!(
        s.due_schedules(10).await.unwrap().is_empty(),
        "a paused schedule is never due"
    );
    h.advance(Duration::from_secs(600));
    let due = s.due_schedules(10).await.unwrap();
    assert_eq!(
        due.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["later"]
    );
    let resumed = s
        .set_schedule_status(
            "soon",
            ScheduleStatus::Active,
            Some("ignored".into()),
            NextFire::Set(Some(due_at)),
        )
        .await
        .unwrap();
    assert_eq!(resumed.paused_reason, None);
    let due = s.due_schedules(10).await.unwrap();
    assert_eq!(
        due.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["soon", "later"],
        "earliest first"
    );
    assert_eq!(s.due_schedules(1).await.unwrap().len(), 1, "limit applies");
    assert!(matches!(
        s.set_schedule_status("nope", ScheduleStatus::Paused, None, NextFire::Keep)
            .await,
        Err(StoreError::ScheduleNotFound(_))
    ));
}

pub async fn fire_inserts_one_job_and_advances(h: &impl Harness) {
    let s = h.store();
    let now = s.now().await.unwrap();
    let t1 = Timestamp(now.0 - 1_000);
    let t2 = Timestamp(t1.0 + 60_000);
    s.put_schedule(put_new("nightly", "qn", Some(t1)))
        .await
        .unwrap();
    let job = fired(
        s.fire(firing(
            "nightly",
            "qn",
            OverlapPolicy::Skip,
            Some(t1),
            t1,
            Some(t2),
        ))
        .await
        .unwrap(),
    );
    assert_eq!(
        job.idempotency_key,
        reeve_schedule::firing_key("nightly", t1)
    );
    assert_eq!(job.schedule.as_deref(), Some("nightly"));
    assert_eq!(job.nominal_at, Some(t1));
    assert_eq!(job.state, JobState::Available);
    assert_eq!(s.get_job(job.id).await.unwrap(), job, "stored as returned");
    let events = s.job_events(job.id).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, EventKind::Enqueued);
    let json = serde_json::to_value(&job).unwrap();
    assert_eq!(
        json["schedule"], "nightly",
        "a job's JSON names its schedule"
    );
    assert!(json["nominal_at"].is_string() || json["nominal_at"].is_number());

    let ledger = s.firings("nightly", 10).await.unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].outcome, "fired");
    assert_eq!(ledger[0].nominal_at, t1);
    assert_eq!(ledger[0].job_id, Some(job.id));
    assert_eq!(ledger[0].schedule, "nightly");
    let rec = s.get_schedule("nightly").await.unwrap();
    assert_eq!(rec.next_fire_at, Some(t2), "next advanced");
    assert_eq!(rec.last_nominal, Some(t1));

    // A firer that read the old next_fire_at loses, and changes nothing.
    let lost = s
        .fire(firing(
            "nightly",
            "qn",
            OverlapPolicy::Allow,
            Some(t1),
            t1,
            Some(t2),
        ))
        .await
        .unwrap();
    assert_eq!(lost, FireResult::LostRace);
    assert_eq!(queue_jobs(&s, "qn").await.len(), 1);
    assert_eq!(s.firings("nightly", 10).await.unwrap().len(), 1);
    assert_eq!(s.get_schedule("nightly").await.unwrap(), rec);

    // A manual run at a nominal time the ledger holds moves to now.
    let manual = fired(
        s.fire(firing(
            "nightly",
            "qn",
            OverlapPolicy::Allow,
            None,
            t1,
            None,
        ))
        .await
        .unwrap(),
    );
    let moved = manual.nominal_at.expect("a nominal time");
    assert!(moved > t1, "moved off the ledger's time");
    assert_eq!(
        manual.idempotency_key,
        reeve_schedule::firing_key("nightly", moved)
    );
    let ledger = s.firings("nightly", 10).await.unwrap();
    assert_eq!(ledger.len(), 2);
    assert_eq!(ledger[0].outcome, "manual", "newest first");
    assert_eq!(ledger[0].job_id, Some(manual.id));
    assert_eq!(
        s.get_schedule("nightly").await.unwrap().next_fire_at,
        Some(t2),
        "a manual run leaves the cadence alone"
    );
    assert_eq!(s.firings("nightly", 1).await.unwrap().len(), 1, "limit");
    assert!(matches!(
        s.fire(firing("ghost", "qn", OverlapPolicy::Allow, None, t1, None))
            .await,
        Err(StoreError::ScheduleNotFound(_))
    ));
}

pub async fn concurrent_firers_make_one_job_per_fire_time(h: &impl Harness) {
    let s = h.store();
    const TIMES: i64 = 50;
    let base = Timestamp(s.now().await.unwrap().0 - 3_600_000);
    let end = Timestamp(base.0 + TIMES * 1000);
    s.put_schedule(put_new("race", "qr", Some(base)))
        .await
        .unwrap();
    let mut handles = Vec::new();
    for w in 0..8 {
        let store = if w % 2 == 0 {
            s.clone()
        } else {
            h.connect().await
        };
        handles.push(tokio::spawn(async move {
            let mut won = 0u32;
            loop {
                let rec = store.get_schedule("race").await.expect("get");
                let next = rec.next_fire_at.expect("a next fire time");
                if next >= end {
                    break;
                }
                let r = store
                    .fire(firing(
                        "race",
                        "qr",
                        OverlapPolicy::Allow,
                        Some(next),
                        next,
                        Some(Timestamp(next.0 + 1000)),
                    ))
                    .await
                    .expect("fire");
                match r {
                    FireResult::Fired(_) => won += 1,
                    FireResult::LostRace => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            won
        }));
    }
    let mut total = 0;
    for handle in handles {
        total += handle.await.expect("firer");
    }
    assert_eq!(total as i64, TIMES, "one win per fire time");
    let jobs = queue_jobs(&s, "qr").await;
    assert_eq!(jobs.len() as i64, TIMES, "exactly one job per fire time");
    let nominals: BTreeSet<i64> = jobs
        .iter()
        .map(|j| j.nominal_at.expect("nominal").0)
        .collect();
    let expected: BTreeSet<i64> = (0..TIMES).map(|k| base.0 + k * 1000).collect();
    assert_eq!(nominals, expected);
    let ledger = s.firings("race", 1000).await.unwrap();
    assert_eq!(ledger.len() as i64, TIMES);
    assert!(ledger.iter().all(|f| f.outcome == "fired"));
    let rec = s.get_schedule("race").await.unwrap();
    assert_eq!(rec.next_fire_at, Some(end));
    assert_eq!(rec.last_nominal, Some(Timestamp(end.0 - 1000)));
}

pub async fn overlap_skip_and_allow(h: &impl Harness) {
    let s = h.store();
    let t = s.now().await.unwrap();
    let at = |k: i64| Timestamp(t.0 + k * 60_000);
    s.put_schedule(put_new("sk", "qs", Some(at(0))))
        .await
        .unwrap();
    let first = fired(
        s.fire(firing(
            "sk",
            "qs",
            OverlapPolicy::Skip,
            Some(at(0)),
            at(0),
            Some(at(1)),
        ))
        .await
        .unwrap(),
    );
    let r = s
        .fire(firing(
            "sk",
            "qs",
            OverlapPolicy::Skip,
            Some(at(1)),
            at(1),
            Some(at(2)),
        ))
        .await
        .unwrap();
    assert_eq!(r, FireResult::Skipped(FiringOutcome::SkippedOverlap));
    assert_eq!(
        queue_jobs(&s, "qs").await.len(),
        1,
        "no job while one is live"
    );
    let ledger = s.firings("sk", 10).await.unwrap();
    assert_eq!(ledger[0].outcome, "skipped_overlap");
    assert_eq!(ledger[0].nominal_at, at(1));
    assert_eq!(ledger[0].job_id, None);
    assert_eq!(
        s.get_schedule("sk").await.unwrap().next_fire_at,
        Some(at(2)),
        "a skip still advances"
    );
    // Once the live job ends, skip fires again.
    let running = claim_one(&s, "w").await;
    assert_eq!(running.id, first.id);
    one(&s, succeed(&running)).await.unwrap();
    fired(
        s.fire(firing(
            "sk",
            "qs",
            OverlapPolicy::Skip,
            Some(at(2)),
            at(2),
            Some(at(3)),
        ))
        .await
        .unwrap(),
    );

    // allow fires beside live jobs.
    s.put_schedule(put_new("al", "qa", Some(at(0))))
        .await
        .unwrap();
    for k in 0..3 {
        fired(
            s.fire(firing(
                "al",
                "qa",
                OverlapPolicy::Allow,
                Some(at(k)),
                at(k),
                Some(at(k + 1)),
            ))
            .await
            .unwrap(),
        );
    }
    assert_eq!(queue_jobs(&s, "qa").await.len(), 3);
}

pub async fn overlap_queue_one_coalesces_into_the_waiting_job(h: &impl Harness) {
    let s = h.store();
    let t = s.now().await.unwrap();
    let at = |k: i64| Timestamp(t.0 + k * 60_000);
    s.put_schedule(put_new("q1", "qq", Some(at(0))))
        .await
        .unwrap();
    let fire = |k: i64| {
        firing(
            "q1",
            "qq",
            OverlapPolicy::QueueOne,
            Some(at(k)),
            at(k),
            Some(at(k + 1)),
        )
    };
    let a = fired(s.fire(fire(0)).await.unwrap());
    assert_eq!(
        s.fire(fire(1)).await.unwrap(),
        FireResult::Coalesced { into: a.id },
        "a is still waiting"
    );
    let claimed = s.claim(claim_from("qq")).await.unwrap();
    assert_eq!(claimed[0].id, a.id);
    let b = fired(s.fire(fire(2)).await.unwrap());
    assert_eq!(
        s.fire(fire(3)).await.unwrap(),
        FireResult::Coalesced { into: b.id },
        "one waits behind the running one"
    );
    assert_eq!(queue_jobs(&s, "qq").await.len(), 2);
    let ledger = s.firings("q1", 10).await.unwrap();
    let outcomes: Vec<(&str, Option<i64>)> = ledger
        .iter()
        .map(|f| (f.outcome.as_str(), f.job_id))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("coalesced", Some(b.id)),
            ("fired", Some(b.id)),
            ("coalesced", Some(a.id)),
            ("fired", Some(a.id)),
        ]
    );
}

pub async fn overlap_cancel_previous_requests_the_cancel(h: &impl Harness) {
    let s = h.store();
    let t = s.now().await.unwrap();
    let at = |k: i64| Timestamp(t.0 + k * 60_000);
    s.put_schedule(put_new("cp", "qc", Some(at(0))))
        .await
        .unwrap();
    let fire = |k: i64| {
        firing(
            "cp",
            "qc",
            OverlapPolicy::CancelPrevious,
            Some(at(k)),
            at(k),
            Some(at(k + 1)),
        )
    };
    let a = fired(s.fire(fire(0)).await.unwrap());
    let running = s.claim(claim_from("qc")).await.unwrap().remove(0);
    assert_eq!(running.id, a.id);
    let b = fired(s.fire(fire(1)).await.unwrap());
    assert_ne!(a.id, b.id);
    let a_now = s.get_job(a.id).await.unwrap();
    assert_eq!(a_now.state, JobState::Running, "the run is asked to stop");
    assert!(a_now.cancel_requested_at.is_some());
    assert!(
        a_now.lease_expires_at.unwrap().0 <= a_now.cancel_requested_at.unwrap().0 + 15_000,
        "the lease is cut to the cancel grace"
    );
    let events = s.job_events(a.id).await.unwrap();
    assert_eq!(events.last().unwrap().event, EventKind::CancelRequested);
    // Its write-back now ends it as cancelled.
    let ended = one(&s, fail(&a_now, FailureReason::Error)).await.unwrap();
    assert_eq!(ended.state, JobState::Cancelled);
    assert_eq!(s.get_job(b.id).await.unwrap().state, JobState::Available);
    assert_eq!(s.firings("cp", 10).await.unwrap()[0].job_id, Some(b.id));
}

pub async fn skipped_misfire_range_is_one_row(h: &impl Harness) {
    let s = h.store();
    let t = s.now().await.unwrap();
    let at = |k: i64| Timestamp(t.0 - 3_600_000 + k * 60_000);
    s.put_schedule(put_new("mf", "qm", Some(at(0))))
        .await
        .unwrap();
    let r = s
        .fire(FireParams {
            schedule: "mf".into(),
            expected_next: Some(at(0)),
            nominal: at(0),
            next: NextFire::Keep,
            job: None,
            overlap: OverlapPolicy::Skip,
            outcome: FiringOutcome::Fired,
            skipped_until: Some(at(58)),
            require_capacity: false,
            audit: None,
            probe: false,
        })
        .await
        .unwrap();
    assert_eq!(r, FireResult::Skipped(FiringOutcome::SkippedMisfire));
    fired(
        s.fire(firing(
            "mf",
            "qm",
            OverlapPolicy::Skip,
            Some(at(0)),
            at(59),
            Some(at(60)),
        ))
        .await
        .unwrap(),
    );
    let ledger = s.firings("mf", 10).await.unwrap();
    assert_eq!(ledger.len(), 2, "59 skipped times and one firing: two rows");
    assert_eq!(ledger[1].outcome, "skipped_misfire");
    assert_eq!(
        (ledger[1].nominal_at, ledger[1].nominal_until),
        (at(0), Some(at(58)))
    );
    assert_eq!(ledger[1].job_id, None);
    assert_eq!(ledger[0].outcome, "fired");
    assert_eq!(queue_jobs(&s, "qm").await.len(), 1);

    // Record-only firings record their outcome (a paused fire time).
    let r = s
        .fire(FireParams {
            schedule: "mf".into(),
            expected_next: Some(at(60)),
            nominal: at(60),
            next: NextFire::Set(Some(at(61))),
            job: None,
            overlap: OverlapPolicy::Skip,
            outcome: FiringOutcome::SkippedPaused,
            skipped_until: None,
            require_capacity: false,
            audit: None,
            probe: false,
        })
        .await
        .unwrap();
    assert_eq!(r, FireResult::Skipped(FiringOutcome::SkippedPaused));
    assert_eq!(
        s.firings("mf", 1).await.unwrap()[0].outcome,
        "skipped_paused"
    );
    assert_eq!(
        s.get_schedule("mf").await.unwrap().next_fire_at,
        Some(at(61))
    );
}

pub async fn next_due_in_sees_due_schedules(h: &impl Harness) {
    let s = h.store();
    assert_eq!(s.next_due_in().await.unwrap(), None);
    let now = s.now().await.unwrap();
    s.put_schedule(put_new("tick", "qt", Some(Timestamp(now.0 + 120_000))))
        .await
        .unwrap();
    let d = s.next_due_in().await.unwrap().expect("a due schedule");
    assert!(
        d <= Duration::from_secs(120) && d > Duration::from_secs(110),
        "{d:?}"
    );
    s.set_schedule_status("tick", ScheduleStatus::Paused, None, NextFire::Keep)
        .await
        .unwrap();
    assert_eq!(
        s.next_due_in().await.unwrap(),
        None,
        "a paused schedule is not waited for"
    );
    s.set_schedule_status("tick", ScheduleStatus::Active, None, NextFire::Keep)
        .await
        .unwrap();
    h.advance(Duration::from_secs(121));
    assert_eq!(s.next_due_in().await.unwrap(), Some(Duration::ZERO));
}

pub async fn deleting_a_schedule_keeps_its_jobs_and_ledger(h: &impl Harness) {
    let s = h.store();
    let t = s.now().await.unwrap();
    s.put_schedule(put_new("gone", "qg", Some(t)))
        .await
        .unwrap();
    let job = fired(
        s.fire(firing(
            "gone",
            "qg",
            OverlapPolicy::Skip,
            Some(t),
            t,
            Some(Timestamp(t.0 + 60_000)),
        ))
        .await
        .unwrap(),
    );
    assert!(s.delete_schedule("gone").await.unwrap());
    assert_eq!(
        s.get_job(job.id).await.unwrap().schedule.as_deref(),
        Some("gone")
    );
    assert_eq!(s.firings("gone", 10).await.unwrap().len(), 1);
    assert_eq!(
        s.fire(firing(
            "gone",
            "qg",
            OverlapPolicy::Allow,
            Some(Timestamp(t.0 + 60_000)),
            Timestamp(t.0 + 60_000),
            None,
        ))
        .await
        .unwrap(),
        FireResult::LostRace,
        "a deleted schedule no longer fires"
    );
    assert_eq!(queue_jobs(&s, "qg").await.len(), 1);
    // Re-created under the same name, it starts fresh but the old ledger
    // rows are still there.
    let (again, created) = s.put_schedule(put_new("gone", "qg", None)).await.unwrap();
    assert!(created);
    assert_eq!(again.last_nominal, None);
}

// ---- Runs of schedules: capacity, forced runs, the ledger's follow-up,
// streaks and probes, pressure, audit, retention.

/// A manual run of `name` (queue `queue`) with `outcome`.
fn manual(name: &str, queue: &str, at: Timestamp, outcome: FiringOutcome) -> FireParams {
    let template = schedule_spec(name, queue).validate().expect("valid").job;
    FireParams::manual(name, at, template.new_job(name, at), outcome)
}

/// Fires `name` at `nominal` (manually, no capacity check), claims the job
/// and returns it running.
async fn fire_and_claim(s: &Arc<dyn Store>, name: &str, queue: &str, nominal: Timestamp) -> Job {
    let mut p = manual(name, queue, nominal, FiringOutcome::Manual);
    p.require_capacity = false;
    let job = fired(s.fire(p).await.expect("fire"));
    let claimed = s.claim(claim_from(queue)).await.expect("claim");
    assert_eq!(claimed.len(), 1, "the firing is claimed");
    assert_eq!(claimed[0].id, job.id);
    claimed.into_iter().next().unwrap()
}

pub async fn manual_runs_honor_caps_and_forced_runs_bypass_them(h: &impl Harness) {
    let s = h.store();
    let now = s.now().await.unwrap();
    s.put_schedule(put_new("m", "qm", None)).await.unwrap();
    s.set_limits(Limits { global: Some(1) }).await.unwrap();
    let busy = enqueue_one(&s, NewJob::new("other", "k")).await;
    claim_one(&s, "w").await;

    let refused = s
        .fire(manual("m", "qm", now, FiringOutcome::Manual))
        .await
        .unwrap();
    let FireResult::CapacityFull(full) = refused else {
        panic!("expected capacity_full, got {refused:?}");
    };
    assert_eq!(
        (full.scope.as_str(), full.running, full.limit),
        ("global", 1, 1)
    );
    assert!(
        s.firings("m", 10).await.unwrap().is_empty(),
        "nothing recorded"
    );
    assert!(queue_jobs(&s, "qm").await.is_empty(), "nothing inserted");

    // A queue cap is named as such.
    s.set_limits(Limits { global: None }).await.unwrap();
    s.update_queue(
        "qm",
        QueuePatch {
            concurrency: Some(Some(0)),
            paused: None,
        },
    )
    .await
    .unwrap();
    let FireResult::CapacityFull(full) = s
        .fire(manual("m", "qm", now, FiringOutcome::Manual))
        .await
        .unwrap()
    else {
        panic!("expected the queue cap to be full");
    };
    assert_eq!(
        (full.scope.as_str(), full.queue.as_deref(), full.limit),
        ("queue", Some("qm"), 0)
    );
    s.update_queue(
        "qm",
        QueuePatch {
            concurrency: Some(None),
            paused: None,
        },
    )
    .await
    .unwrap();
    s.set_limits(Limits { global: Some(1) }).await.unwrap();

    // Forced: inserted with its audit record in one transaction, and claimed
    // past the full cap, before other work.
    let waiting = enqueue_one(&s, NewJob::new("qm", "k")).await;
    let mut forced = manual("m", "qm", now, FiringOutcome::Forced);
    forced.audit = Some(crate::NewAudit {
        actor: "operator:test".into(),
        action: "force_run".into(),
        target: "schedule:m".into(),
        detail: serde_json::json!({"full": "global"}),
    });
    let job = fired(s.fire(forced).await.unwrap());
    let audit = s.list_audit(10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "force_run");
    assert_eq!(audit[0].actor, "operator:test");
    assert_eq!(audit[0].detail["job_id"], job.id);
    assert_eq!(audit[0].detail["full"], "global");

    let claimed = s.claim(claim("w2", 10)).await.unwrap();
    assert_eq!(
        claimed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![job.id],
        "only the forced run passes the full cap"
    );
    let ledger = s.firings("m", 10).await.unwrap();
    assert_eq!(ledger[0].outcome, "forced");
    assert_eq!(
        ledger[0].running_at_claim,
        Some(2),
        "it counts while it runs"
    );
    assert!(s.claim(claim("w2", 10)).await.unwrap().is_empty());
    assert_eq!(
        s.get_job(waiting.id).await.unwrap().state,
        JobState::Available
    );
    let _ = busy;
}

pub async fn ledger_follows_a_firing_to_its_end(h: &impl Harness) {
    let s = h.store();
    let now = s.now().await.unwrap();
    s.put_schedule(put_new("l", "ql", None)).await.unwrap();
    let mut p = manual("l", "ql", now, FiringOutcome::Manual);
    p.require_capacity = false;
    let job = fired(s.fire(p).await.unwrap());
    h.advance(Duration::from_secs(2));
    let running = claim_one(&s, "w").await;
    assert_eq!(running.id, job.id);
    let row = &s.firings("l", 1).await.unwrap()[0];
    assert_eq!(row.claimed_at, running.claimed_at);
    let wait = row.slot_wait_ms.expect("slot wait recorded");
    assert!((2000..3000).contains(&wait), "waited ~2s: {wait}");
    assert_eq!(row.running_at_claim, Some(1));
    assert_eq!(row.finished_at, None);
    s.heartbeat(HeartbeatParams {
        job: job.id,
        epoch: running.epoch,
        turns: Some(4),
        progress: None,
    })
    .await
    .unwrap();
    h.advance(Duration::from_secs(3));
    one(&s, succeed(&running)).await.unwrap();
    let row = &s.firings("l", 1).await.unwrap()[0];
    assert_eq!(row.state.as_deref(), Some("succeeded"));
    let duration = row.duration_ms.expect("duration recorded");
    assert!((3000..4000).contains(&duration), "ran ~3s: {duration}");
    assert_eq!(row.turns, Some(4));
    assert!(row.finished_at.is_some());
    let typical = s
        .typical_durations(
            &["l".to_string(), "none".to_string()],
            &["tick".to_string()],
        )
        .await
        .unwrap();
    assert_eq!(
        typical.by_schedule.get("l"),
        Some(&Duration::from_millis(duration as u64))
    );
    assert!(!typical.by_schedule.contains_key("none"));
    assert!(typical.by_kind.contains_key("tick"));

    // A failure is recorded with its reason; a reaped run too.
    let second = fire_and_claim(&s, "l", "ql", Timestamp(now.0 + 1)).await;
    one(&s, fail(&second, FailureReason::AuthFailed))
        .await
        .unwrap();
    let third = fire_and_claim(&s, "l", "ql", Timestamp(now.0 + 2)).await;
    h.advance(Duration::from_secs(3600));
    let reaped = s.reap_expired(10).await.unwrap();
    assert_eq!(reaped.len(), 1);
    let rows = s.firings("l", 10).await.unwrap();
    let by_job = |id| rows.iter().find(|r| r.job_id == Some(id)).expect("row");
    assert_eq!(
        by_job(second.id).failure_reason.as_deref(),
        Some("auth_failed")
    );
    assert_eq!(by_job(second.id).state.as_deref(), Some("failed"));
    if reaped[0].state.is_terminal() {
        assert!(by_job(third.id).failure_reason.is_some());
    } else {
        assert_eq!(
            by_job(third.id).finished_at,
            None,
            "a retried run is not its firing's end"
        );
    }
}

pub async fn streaks_auto_pause_and_a_probe_reactivates(h: &impl Harness) {
    let s = h.store();
    let now = s.now().await.unwrap();
    let later = Timestamp(now.0 + 600_000);
    s.put_schedule(put_new("st", "qs", Some(later)))
        .await
        .unwrap();
    for i in 0..2 {
        let job = fire_and_claim(&s, "st", "qs", Timestamp(now.0 + i)).await;
        one(&s, fail(&job, FailureReason::AuthFailed))
            .await
            .unwrap();
    }
    let rec = s.get_schedule("st").await.unwrap();
    assert_eq!(
        (rec.generic_streak, rec.status),
        (2, ScheduleStatus::Active)
    );
    // A success resets; then three in a row pause.
    let ok = fire_and_claim(&s, "st", "qs", Timestamp(now.0 + 3)).await;
    one(&s, succeed(&ok)).await.unwrap();
    assert_eq!(s.get_schedule("st").await.unwrap().generic_streak, 0);
    for i in 0..3 {
        let job = fire_and_claim(&s, "st", "qs", Timestamp(now.0 + 10 + i)).await;
        one(&s, fail(&job, FailureReason::AuthFailed))
            .await
            .unwrap();
    }
    let rec = s.get_schedule("st").await.unwrap();
    assert_eq!(rec.status, ScheduleStatus::Paused);
    assert_eq!(rec.generic_streak, 3);
    let why = rec.paused_reason.expect("a reason");
    assert!(
        why.contains("auto-paused") && why.contains("auth_failed"),
        "{why}"
    );
    let audit = s.list_audit(10).await.unwrap();
    assert_eq!(audit[0].action, "schedule_auto_paused");
    assert_eq!(audit[0].target, "schedule:st");
    assert!(s.due_schedules(10).await.unwrap().is_empty());

    // A failing probe leaves it paused and says so.
    let mut probe = manual("st", "qs", now, FiringOutcome::Probe);
    probe.require_capacity = false;
    let canary = fired(s.fire(probe).await.unwrap());
    assert_eq!(
        s.get_schedule("st").await.unwrap().probe_job,
        Some(canary.id)
    );
    let running = claim_one(&s, "w").await;
    one(&s, fail(&running, FailureReason::AuthFailed))
        .await
        .unwrap();
    let rec = s.get_schedule("st").await.unwrap();
    assert_eq!((rec.status, rec.probe_job), (ScheduleStatus::Paused, None));
    assert!(rec.paused_reason.unwrap().contains("probe job"));
    // A succeeding one reactivates it with a next fire time after now.
    let mut probe = manual("st", "qs", now, FiringOutcome::Probe);
    probe.require_capacity = false;
    fired(s.fire(probe).await.unwrap());
    let running = claim_one(&s, "w").await;
    one(&s, succeed(&running)).await.unwrap();
    let rec = s.get_schedule("st").await.unwrap();
    assert_eq!(rec.status, ScheduleStatus::Active);
    assert_eq!(
        (rec.generic_streak, rec.budget_streak, rec.probe_job),
        (0, 0, None)
    );
    assert_eq!(rec.paused_reason, None);
    assert!(rec.next_fire_at.expect("next") > s.now().await.unwrap());
    assert_eq!(
        s.list_audit(1).await.unwrap()[0].action,
        "schedule_probe_succeeded"
    );
    let probes = s.firings("st", 100).await.unwrap();
    assert_eq!(
        probes.iter().filter(|f| f.outcome == "probe").count(),
        2,
        "probes are in the ledger"
    );
}

pub async fn budget_breaches_count_after_the_grace(h: &impl Harness) {
    let s = h.store();
    let now = s.now().await.unwrap();
    let mut put = put_new("b", "qb", Some(Timestamp(now.0 + 3_600_000)));
    put.anchor = NextFire::Set(None);
    put.max_turns_changed = true;
    s.put_schedule(put).await.unwrap();
    let set_at = s
        .get_schedule("b")
        .await
        .unwrap()
        .max_turns_set_at
        .expect("set");
    // every 1m: the two nominal times after the edit are in grace.
    let in_grace = Timestamp(set_at.0 + 30_000);
    let job = fire_and_claim(&s, "b", "qb", in_grace).await;
    one(&s, fail(&job, FailureReason::TurnLimitExceeded))
        .await
        .unwrap();
    let rec = s.get_schedule("b").await.unwrap();
    assert_eq!(
        (rec.budget_streak, rec.generic_streak),
        (0, 0),
        "not counted"
    );
    let row = s.firings("b", 1).await.unwrap().remove(0);
    assert!(
        row.detail.unwrap_or_default().contains("grace"),
        "but recorded"
    );
    for i in 0..5 {
        let nominal = Timestamp(set_at.0 + 600_000 + i * 60_000);
        let job = fire_and_claim(&s, "b", "qb", nominal).await;
        one(&s, fail(&job, FailureReason::TurnLimitExceeded))
            .await
            .unwrap();
        let rec = s.get_schedule("b").await.unwrap();
        assert_eq!(rec.budget_streak, i as i32 + 1);
        let expected = if i < 4 {
            ScheduleStatus::Active
        } else {
            ScheduleStatus::Paused
        };
        assert_eq!(rec.status, expected, "after {} breaches", i + 1);
    }
    let rec = s.get_schedule("b").await.unwrap();
    assert!(rec.paused_reason.unwrap().contains("5 budget breaches"));
}

pub async fn pressure_defers_a_due_firing_within_its_bound(h: &impl Harness) {
    let s = h.store();
    let now = s.now().await.unwrap();
    let nominal = Timestamp(now.0 - 1000);
    s.put_schedule(put_new("p", "qp", Some(nominal)))
        .await
        .unwrap();
    assert!(s.list_pressure().await.unwrap().is_empty());
    assert!(!s.clear_pressure("nobody").await.unwrap());
    let raised = s
        .raise_pressure("ide", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(raised.expires_at.0 - raised.raised_at.0, 120_000);
    let renewed = s
        .raise_pressure("ide", Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(
        renewed.raised_at, raised.raised_at,
        "renewing keeps raised_at"
    );
    s.raise_pressure("short", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(s.list_pressure().await.unwrap().len(), 2);

    let defer = |delay, max| DeferParams {
        schedule: "p".into(),
        expected_next: nominal,
        delay: Duration::from_secs(delay),
        max_defer: Duration::from_secs(max),
        detail: "pressure: ide".into(),
    };
    let DeferResult::Deferred { until, deferrals } = s.defer_firing(defer(30, 100)).await.unwrap()
    else {
        panic!("expected a deferral");
    };
    assert_eq!(deferrals, 1);
    let after = s.now().await.unwrap();
    assert!(until.0 >= after.0 + 29_000 && until.0 <= after.0 + 31_000);
    assert!(s.due_schedules(10).await.unwrap().is_empty(), "deferred");
    let row = s.firings("p", 1).await.unwrap().remove(0);
    assert_eq!((row.outcome.as_str(), row.deferrals), ("deferred", 1));
    let wait = s
        .next_due_in()
        .await
        .unwrap()
        .expect("the deferral is a deadline");
    assert!(wait > Duration::from_secs(25), "{wait:?}");

    h.advance(Duration::from_secs(2));
    assert_eq!(
        s.list_pressure().await.unwrap().len(),
        1,
        "the short one expired"
    );
    h.advance(Duration::from_secs(29));
    assert_eq!(s.due_schedules(10).await.unwrap().len(), 1, "due again");
    // The second deferral is capped at nominal + max_defer.
    let DeferResult::Deferred { until, deferrals } = s.defer_firing(defer(30, 40)).await.unwrap()
    else {
        panic!("expected a second deferral");
    };
    assert_eq!((until, deferrals), (Timestamp(nominal.0 + 40_000), 2));
    h.advance(Duration::from_secs(10));
    assert_eq!(
        s.defer_firing(defer(30, 40)).await.unwrap(),
        DeferResult::FireNow,
        "deferred as far as allowed"
    );
    // A stale deferral changes nothing.
    let mut stale = defer(30, 100);
    stale.expected_next = Timestamp(nominal.0 - 1);
    assert_eq!(s.defer_firing(stale).await.unwrap(), DeferResult::LostRace);

    // It fires into the same ledger row, carrying its deferrals.
    let next = Timestamp(nominal.0 + 60_000);
    fired(
        s.fire(firing(
            "p",
            "qp",
            OverlapPolicy::Allow,
            Some(nominal),
            nominal,
            Some(next),
        ))
        .await
        .unwrap(),
    );
    let rows = s.firings("p", 10).await.unwrap();
    assert_eq!(rows.len(), 1, "one row per nominal time");
    assert_eq!((rows[0].outcome.as_str(), rows[0].deferrals), ("fired", 2));
    let rec = s.get_schedule("p").await.unwrap();
    assert_eq!((rec.defer_until, rec.deferrals), (None, 0));

    // Clearing the last signal makes deferred fire times due at once.
    h.advance(Duration::from_secs(20));
    let DeferResult::Deferred { .. } = s
        .defer_firing(DeferParams {
            expected_next: next,
            ..defer(30, 600)
        })
        .await
        .unwrap()
    else {
        panic!("expected a deferral of the next time");
    };
    assert!(s.due_schedules(10).await.unwrap().is_empty());
    assert!(s.clear_pressure("ide").await.unwrap());
    assert!(s.list_pressure().await.unwrap().is_empty());
    assert_eq!(s.due_schedules(10).await.unwrap().len(), 1);
}

pub async fn old_ledger_rows_and_audit_are_kept_apart(h: &impl Harness) {
    let s = h.store();
    let now = s.now().await.unwrap();
    s.put_schedule(put_new("r", "qr", None)).await.unwrap();
    for i in 0..5 {
        let mut p = manual("r", "qr", Timestamp(now.0 + i), FiringOutcome::Manual);
        p.require_capacity = false;
        fired(s.fire(p).await.unwrap());
    }
    h.advance(Duration::from_secs(7200));
    let mut p = manual("r", "qr", Timestamp(now.0 + 100), FiringOutcome::Manual);
    p.require_capacity = false;
    fired(s.fire(p).await.unwrap());
    assert_eq!(
        s.prune_firings(Duration::from_secs(3600), 2).await.unwrap(),
        2,
        "bounded"
    );
    assert_eq!(
        s.prune_firings(Duration::from_secs(3600), 100)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        s.prune_firings(Duration::from_secs(3600), 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.firings("r", 10).await.unwrap().len(),
        1,
        "the recent one stays"
    );
    let older = s
        .firing_history(
            "r",
            crate::FiringQuery {
                limit: 10,
                at_or_before: Some(Timestamp(now.0 + 50)),
            },
        )
        .await
        .unwrap();
    assert!(older.is_empty());

    for i in 0..3 {
        s.record_audit(crate::NewAudit {
            actor: "operator:a".into(),
            action: format!("act{i}"),
            target: "schedule:r".into(),
            detail: serde_json::json!({"i": i}),
        })
        .await
        .unwrap();
    }
    let audit = s.list_audit(2).await.unwrap();
    assert_eq!(
        audit.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
        ["act2", "act1"],
        "newest first"
    );
    assert_eq!(audit[0].detail["i"], 2);
}

pub async fn ledger_rows_keep_to_their_own_firing(h: &impl Harness) {
    let s = h.store();
    let now = s.now().await.unwrap();
    // queue_one: the second firing coalesces into the first, waiting one; the
    // claim and the end are recorded on the firing that made the job only.
    let base = Timestamp(now.0 - 10_000);
    s.put_schedule(put_new("co", "qc", Some(base)))
        .await
        .unwrap();
    let t2 = Timestamp(base.0 + 1000);
    fired(
        s.fire(firing(
            "co",
            "qc",
            OverlapPolicy::QueueOne,
            Some(base),
            base,
            Some(t2),
        ))
        .await
        .unwrap(),
    );
    let r = s
        .fire(firing(
            "co",
            "qc",
            OverlapPolicy::QueueOne,
            Some(t2),
            t2,
            Some(Timestamp(t2.0 + 1000)),
        ))
        .await
        .unwrap();
    assert!(matches!(r, FireResult::Coalesced { .. }), "{r:?}");
    let job = claim_one(&s, "w").await;
    one(&s, succeed(&job)).await.unwrap();
    let rows = s.firings("co", 10).await.unwrap();
    let coalesced = rows.iter().find(|r| r.outcome == "coalesced").unwrap();
    let fired_row = rows.iter().find(|r| r.outcome == "fired").unwrap();
    assert_eq!(coalesced.job_id, fired_row.job_id);
    assert!(fired_row.claimed_at.is_some() && fired_row.finished_at.is_some());
    assert_eq!((coalesced.claimed_at, coalesced.finished_at), (None, None));

    // A forced run cancelled before its claim is not claimed past the caps
    // later by accident, and its row says how it ended.
    s.put_schedule(put_new("fc", "qf", None)).await.unwrap();
    let forced = fired(
        s.fire(manual("fc", "qf", now, FiringOutcome::Forced))
            .await
            .unwrap(),
    );
    s.cancel(forced.id).await.unwrap();
    let row = s.firings("fc", 1).await.unwrap().remove(0);
    assert_eq!(row.state.as_deref(), Some("cancelled"));
    assert!(s.claim(claim("w", 10)).await.unwrap().is_empty());

    // A manual run at the very instant of a deferred fire time takes another
    // nominal time; the deferred one still fires as itself.
    let due = Timestamp(now.0 - 500);
    s.put_schedule(put_new("dm", "qd", Some(due)))
        .await
        .unwrap();
    s.raise_pressure("ide", Duration::from_secs(60))
        .await
        .unwrap();
    let DeferResult::Deferred { .. } = s
        .defer_firing(DeferParams {
            schedule: "dm".into(),
            expected_next: due,
            delay: Duration::from_secs(30),
            max_defer: Duration::from_secs(600),
            detail: "pressure: ide".into(),
        })
        .await
        .unwrap()
    else {
        panic!("expected a deferral");
    };
    let mut m = manual("dm", "qd", due, FiringOutcome::Manual);
    m.require_capacity = false;
    let manual_job = fired(s.fire(m).await.unwrap());
    assert_ne!(manual_job.nominal_at, Some(due));
    let cadence = fired(
        s.fire(firing(
            "dm",
            "qd",
            OverlapPolicy::Allow,
            Some(due),
            due,
            Some(Timestamp(due.0 + 60_000)),
        ))
        .await
        .unwrap(),
    );
    assert_eq!(cadence.nominal_at, Some(due));
    let rows = s.firings("dm", 10).await.unwrap();
    let at_due = rows.iter().find(|r| r.nominal_at == due).unwrap();
    assert_eq!((at_due.outcome.as_str(), at_due.deferrals), ("fired", 1));

    // Deferring with no pressure left fires at once.
    assert!(s.clear_pressure("ide").await.unwrap());
    let next = s.get_schedule("dm").await.unwrap().next_fire_at.unwrap();
    assert_eq!(
        s.defer_firing(DeferParams {
            schedule: "dm".into(),
            expected_next: next,
            delay: Duration::from_secs(30),
            max_defer: Duration::from_secs(600),
            detail: String::new(),
        })
        .await
        .unwrap(),
        DeferResult::FireNow
    );
}

pub async fn runs_since_and_jobs_by_schedule(h: &impl Harness) {
    let s = h.store();
    let now = s.now().await.unwrap();
    s.put_schedule(put_new("rs", "qrs", None)).await.unwrap();
    enqueue_one(&s, job("k")).await;
    let old = claim_one(&s, "w").await;
    one(&s, succeed(&old)).await.unwrap();
    h.advance(Duration::from_secs(3600));
    let since = s.now().await.unwrap();
    let recent = fire_and_claim(&s, "rs", "qrs", now).await;
    one(&s, succeed(&recent)).await.unwrap();
    enqueue_one(&s, job("k")).await;
    let running = claim_one(&s, "w").await;
    let _waiting = enqueue_one(&s, job("k")).await;
    let runs = s.runs_since(since, 100).await.unwrap();
    assert_eq!(
        runs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![recent.id, running.id],
        "finished since, then running; not the old run nor the waiting job"
    );
    assert_eq!(s.runs_since(since, 1).await.unwrap().len(), 1, "limit");
    let page = s
        .list_jobs(JobFilter {
            schedule: Some("rs".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![recent.id]
    );
}

pub async fn finished_stats_count_by_hour_and_reason(h: &impl Harness) {
    let s = h.store();
    let since = s.now().await.unwrap();
    for reason in [
        FailureReason::AuthFailed,
        FailureReason::AuthFailed,
        FailureReason::TurnLimitExceeded,
    ] {
        enqueue_one(&s, job("k")).await;
        let j = claim_one(&s, "w").await;
        one(&s, fail(&j, reason)).await.unwrap();
    }
    h.advance(Duration::from_secs(3600));
    let mid = s.now().await.unwrap();
    enqueue_one(&s, job("k")).await;
    let j = claim_one(&s, "w").await;
    one(&s, succeed(&j)).await.unwrap();
    let stats = s.finished_stats(since).await.unwrap();
    assert_eq!(stats.per_hour.get(&0), Some(&3));
    assert_eq!(stats.per_hour.get(&1), Some(&1));
    assert_eq!(stats.failed_by_reason.get("auth_failed"), Some(&2));
    assert_eq!(stats.failed_by_reason.get("turn_limit_exceeded"), Some(&1));
    let later = s.finished_stats(mid).await.unwrap();
    assert_eq!(
        later.per_hour.values().sum::<u64>(),
        1,
        "only what finished since"
    );
}

fn new_worker(name: &str) -> crate::NewWorker {
    crate::NewWorker {
        name: name.into(),
        host: Some("alice-mac.local".into()),
        kinds: vec!["agent".into()],
        queues: Vec::new(),
        labels: vec!["device=alice-mac".into()],
        slots: 4,
        heartbeats: true,
        version: Some("0.1.0".into()),
    }
}

pub async fn workers_register_touch_and_deregister(h: &impl Harness) {
    let s = h.store();
    let t0 = s.now().await.unwrap();
    let a = s.register_worker(new_worker("box")).await.unwrap();
    assert!(
        a.id.len() == 18
            && a.id.starts_with("w-")
            && a.id[2..].bytes().all(|b| b.is_ascii_hexdigit()),
        "id {} is w- and 16 hex digits",
        a.id
    );
    assert_eq!(a.worker, new_worker("box"), "stored as registered");
    assert!(a.registered_at >= t0);
    assert_eq!(a.last_seen_at, a.registered_at);
    assert_eq!(a.deregistered_at, None);
    assert_eq!(s.get_worker(&a.id).await.unwrap(), a);

    h.advance(Duration::from_secs(1));
    let b = s.register_worker(new_worker("box")).await.unwrap();
    assert_ne!(b.id, a.id, "a fresh id at every registration");
    assert!(b.registered_at >= Timestamp(a.registered_at.0 + 1000));

    h.advance(Duration::from_secs(10));
    let touched = s.touch_worker(&a.id).await.unwrap();
    assert_eq!(touched.registered_at, a.registered_at);
    assert!(
        touched.last_seen_at >= Timestamp(b.registered_at.0 + 10000),
        "touch moves last_seen_at with the store clock"
    );
    assert_eq!(s.get_worker(&a.id).await.unwrap(), touched);
    let ids = |ws: Vec<crate::WorkerRecord>| ws.into_iter().map(|w| w.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_workers(10, Duration::from_secs(3600)).await.unwrap()),
        vec![a.id.clone(), b.id.clone()],
        "latest seen first"
    );
    assert_eq!(
        ids(s.list_workers(1, Duration::from_secs(3600)).await.unwrap()),
        vec![a.id.clone()],
        "limit"
    );

    h.advance(Duration::from_secs(1));
    let gone = s.deregister_worker(&b.id).await.unwrap();
    let at = gone.deregistered_at.expect("deregistered");
    assert!(at >= Timestamp(touched.last_seen_at.0 + 1000));
    assert_eq!(gone.last_seen_at, b.last_seen_at);
    h.advance(Duration::from_secs(1));
    assert_eq!(
        s.deregister_worker(&b.id).await.unwrap(),
        gone,
        "deregistering again changes nothing"
    );
    assert_eq!(
        s.touch_worker(&b.id).await,
        Err(StoreError::WorkerNotFound(b.id.clone())),
        "a deregistered worker cannot be touched"
    );
    assert_eq!(s.get_worker(&b.id).await.unwrap(), gone, "but is found");
    assert_eq!(
        ids(s.list_workers(10, Duration::from_secs(3600)).await.unwrap()),
        vec![a.id.clone(), b.id.clone()],
        "and stays listed"
    );

    h.advance(Duration::from_secs(7200));
    assert_eq!(
        ids(s.list_workers(10, Duration::from_secs(3600)).await.unwrap()),
        vec![a.id.clone()],
        "gone longer than keep_gone: not listed; live ones are, however long unseen"
    );
    assert_eq!(
        ids(s
            .list_workers(10, Duration::from_secs(3 * 3600))
            .await
            .unwrap()),
        vec![a.id.clone(), b.id.clone()]
    );
    let other = h.connect().await;
    assert_eq!(
        other.touch_worker(&a.id).await.unwrap().id,
        a.id,
        "another process sees the registration"
    );

    let unknown = "w-0000000000000000".to_string();
    assert_eq!(
        s.get_worker(&unknown).await,
        Err(StoreError::WorkerNotFound(unknown.clone()))
    );
    assert_eq!(
        s.touch_worker(&unknown).await,
        Err(StoreError::WorkerNotFound(unknown.clone()))
    );
    assert_eq!(
        s.deregister_worker(&unknown).await,
        Err(StoreError::WorkerNotFound(unknown.clone()))
    );
}

pub async fn checkpoints_are_fenced_and_survive_retries(h: &impl Harness) {
    let s = h.store();
    let mut nj = job("agent");
    nj.max_attempts = 2;
    let j = enqueue_one(&s, nj).await;
    let missing = j.id + 1000;
    assert_eq!(s.load_checkpoint(j.id).await, Ok(None), "none yet");
    assert_eq!(
        s.load_checkpoint(missing).await,
        Err(StoreError::NotFound(missing))
    );
    assert_eq!(
        s.save_checkpoint(missing, 1, b"x".to_vec()).await,
        Err(StoreError::NotFound(missing))
    );
    assert_eq!(
        s.save_checkpoint(j.id, j.epoch, b"x".to_vec()).await,
        Err(StoreError::NotRunning {
            state: JobState::Available
        }),
        "not claimed yet"
    );

    let run = claim_one(&s, "w").await;
    let first = s
        .save_checkpoint(run.id, run.epoch, b"step 1".to_vec())
        .await
        .unwrap();
    assert_eq!(
        (first.job_id, first.epoch, first.data.as_slice(), first.size),
        (run.id, run.epoch, &b"step 1"[..], 6)
    );
    assert!(first.saved_at >= run.claimed_at.unwrap());
    h.advance(Duration::from_secs(1));
    let second = s
        .save_checkpoint(run.id, run.epoch, b"step 2, longer".to_vec())
        .await
        .unwrap();
    assert!(second.saved_at >= Timestamp(first.saved_at.0 + 1000));
    assert_eq!(
        s.load_checkpoint(run.id).await,
        Ok(Some(second.clone())),
        "the latest wins"
    );

    for stale in [run.epoch - 1, run.epoch + 1] {
        assert_eq!(
            s.save_checkpoint(run.id, stale, b"stale".to_vec()).await,
            Err(StoreError::StaleEpoch {
                expected: run.epoch,
                actual: stale
            })
        );
    }
    assert_eq!(
        s.load_checkpoint(run.id).await,
        Ok(Some(second.clone())),
        "a refusal changes nothing"
    );

    let after = one(&s, fail(&run, FailureReason::ExitCode)).await.unwrap();
    assert_eq!(after.state, JobState::Retryable);
    assert_eq!(
        s.save_checkpoint(run.id, run.epoch, b"late".to_vec()).await,
        Err(StoreError::NotRunning {
            state: JobState::Retryable
        })
    );
    h.advance(Duration::from_secs(3600));
    assert_eq!(s.promote_due(10).await.unwrap(), 1);
    let rerun = claim_one(&s, "w2").await;
    assert_eq!(rerun.epoch, run.epoch + 1);
    assert_eq!(
        s.load_checkpoint(rerun.id).await,
        Ok(Some(second.clone())),
        "the next attempt reads the checkpoint of the last"
    );
    assert_eq!(
        s.save_checkpoint(rerun.id, run.epoch, b"old run".to_vec())
            .await,
        Err(StoreError::StaleEpoch {
            expected: rerun.epoch,
            actual: run.epoch
        }),
        "the old run is fenced out"
    );
    let third = s
        .save_checkpoint(rerun.id, rerun.epoch, b"step 3".to_vec())
        .await
        .unwrap();
    assert_eq!(third.epoch, rerun.epoch);
    one(&s, succeed(&rerun)).await.unwrap();
    assert_eq!(
        s.save_checkpoint(rerun.id, rerun.epoch, b"after".to_vec())
            .await,
        Err(StoreError::NotRunning {
            state: JobState::Succeeded
        }),
        "a finished run cannot save"
    );
    let other = h.connect().await;
    assert_eq!(
        other.load_checkpoint(j.id).await,
        Ok(Some(third)),
        "kept by the finished job"
    );

    h.advance(Duration::from_secs(7200));
    assert_eq!(s.prune(Duration::from_secs(3600), 100).await.unwrap(), 1);
    assert_eq!(
        s.load_checkpoint(j.id).await,
        Err(StoreError::NotFound(j.id)),
        "gone with the job"
    );
}

fn mail_to(job: reeve_core::JobId, subject: &str) -> crate::NewMail {
    crate::NewMail {
        job_id: job,
        sender: "operator:alice".into(),
        subject: subject.into(),
        body: format!("about {subject}"),
    }
}

pub async fn mail_is_read_once_and_survives_retries(h: &impl Harness) {
    let s = h.store();
    let mut nj = job("agent");
    nj.max_attempts = 2;
    let j = enqueue_one(&s, nj).await;
    let missing = j.id + 1000;
    assert_eq!(
        s.send_mail(mail_to(missing, "hello")).await,
        Err(StoreError::NotFound(missing))
    );
    assert_eq!(
        s.read_mail(missing, false).await,
        Err(StoreError::NotFound(missing))
    );
    assert_eq!(
        s.unread_mail(missing).await,
        Err(StoreError::NotFound(missing))
    );
    assert_eq!(s.unread_mail(j.id).await, Ok(0));
    assert_eq!(s.read_mail(j.id, true).await, Ok(Vec::new()));

    let t0 = s.now().await.unwrap();
    let m1 = s.send_mail(mail_to(j.id, "first")).await.unwrap();
    assert_eq!(
        (
            m1.job_id,
            m1.sender.as_str(),
            m1.subject.as_str(),
            m1.body.as_str(),
            m1.read_at
        ),
        (j.id, "operator:alice", "first", "about first", None)
    );
    assert!(m1.at >= t0);
    h.advance(Duration::from_secs(1));
    let m2 = s.send_mail(mail_to(j.id, "second")).await.unwrap();
    assert!(m2.id > m1.id && m2.at > m1.at);
    assert_eq!(s.unread_mail(j.id).await, Ok(2));
    assert_eq!(
        s.read_mail(j.id, false).await,
        Ok(vec![m1.clone(), m2.clone()]),
        "oldest first"
    );
    assert_eq!(s.unread_mail(j.id).await, Ok(2), "peeking marks nothing");

    let run = claim_one(&s, "w").await;
    h.advance(Duration::from_secs(1));
    let t1 = s.now().await.unwrap();
    assert_eq!(
        s.read_mail(j.id, true).await,
        Ok(vec![m1.clone(), m2.clone()]),
        "returned as they were: unread"
    );
    assert_eq!(s.unread_mail(j.id).await, Ok(0));
    let again = s.read_mail(j.id, true).await.unwrap();
    assert_eq!(
        again.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![m1.id, m2.id]
    );
    let read_at = again[0].read_at.expect("marked read");
    assert!(read_at >= t1);
    assert!(
        again.iter().all(|m| m.read_at == Some(read_at)),
        "marked once, together"
    );

    h.advance(Duration::from_secs(1));
    let m3 = s.send_mail(mail_to(j.id, "third")).await.unwrap();
    assert_eq!(s.unread_mail(j.id).await, Ok(1));
    let after = one(&s, fail(&run, FailureReason::ExitCode)).await.unwrap();
    assert_eq!(after.state, JobState::Retryable);
    h.advance(Duration::from_secs(3600));
    assert_eq!(s.promote_due(10).await.unwrap(), 1);
    let rerun = claim_one(&s, "w2").await;
    assert_eq!(rerun.epoch, run.epoch + 1);
    let other = h.connect().await;
    assert_eq!(
        other.unread_mail(j.id).await,
        Ok(1),
        "mail survives the retry"
    );
    let mail = other.read_mail(j.id, true).await.unwrap();
    assert_eq!(
        mail.iter().map(|m| (m.id, m.read_at)).collect::<Vec<_>>(),
        vec![
            (m1.id, Some(read_at)),
            (m2.id, Some(read_at)),
            (m3.id, None)
        ],
        "only the new one is new"
    );
    assert_eq!(s.unread_mail(j.id).await, Ok(0));

    one(&s, succeed(&rerun)).await.unwrap();
    let late = s.send_mail(mail_to(j.id, "late")).await.unwrap();
    assert_eq!(
        s.unread_mail(j.id).await,
        Ok(1),
        "a finished job keeps mail"
    );
    assert_eq!(s.read_mail(j.id, false).await.unwrap().last(), Some(&late));

    h.advance(Duration::from_secs(7200));
    assert_eq!(s.prune(Duration::from_secs(3600), 100).await.unwrap(), 1);
    assert_eq!(
        s.read_mail(j.id, false).await,
        Err(StoreError::NotFound(j.id)),
        "gone with the job"
    );
    assert_eq!(s.unread_mail(j.id).await, Err(StoreError::NotFound(j.id)));
    assert_eq!(
        s.send_mail(mail_to(j.id, "too late")).await,
        Err(StoreError::NotFound(j.id))
    );

    // Concurrent marking readers (some as other processes): each message is
    // returned as unread to exactly one of them.
    let k = enqueue_one(&s, job("agent")).await;
    for i in 0..20 {
        s.send_mail(mail_to(k.id, &format!("m{i}"))).await.unwrap();
    }
    let other = h.connect().await;
    let readers: Vec<_> = (0..6)
        .map(|i| {
            let store = if i % 2 == 0 { s.clone() } else { other.clone() };
            tokio::spawn(async move { store.read_mail(k.id, true).await.unwrap() })
        })
        .collect();
    let mut fresh = Vec::new();
    for r in readers {
        let mail = r.await.unwrap();
        assert_eq!(mail.len(), 20, "every reader sees all of the job's mail");
        fresh.extend(
            mail.into_iter()
                .filter(|m| m.read_at.is_none())
                .map(|m| m.id),
        );
    }
    fresh.sort_unstable();
    let all: Vec<i64> = s
        .read_mail(k.id, false)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(fresh, all, "each message is new to exactly one reader");
    assert_eq!(s.unread_mail(k.id).await, Ok(0));
}

// ---- Follow-up jobs (SPEC §10): enqueued with the success, never lost,
// never doubled.

fn then(kind: &str) -> reeve_core::FollowUp {
    reeve_core::FollowUp {
        kind: kind.into(),
        ..Default::default()
    }
}

fn with_follow_up(kind: &str, on_success: reeve_core::FollowUp) -> NewJob {
    let mut nj = job(kind);
    nj.on_success = Some(on_success);
    nj
}

fn succeed_with(job: &Job, result: serde_json::Value) -> Finish {
    Finish {
        outcome: Outcome::Succeeded {
            result: Some(result),
        },
        ..succeed(job)
    }
}

/// Every job of `kind`, oldest first.
async fn kind_jobs(s: &Arc<dyn Store>, kind: &str) -> Vec<Job> {
    let mut jobs = s
        .list_jobs(JobFilter {
            kind: Some(kind.into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("list")
        .items;
    jobs.reverse();
    jobs
}

pub async fn a_success_enqueues_its_follow_up(h: &impl Harness) {
    let s = h.store();
    let mut nj = with_follow_up(
        "build",
        reeve_core::FollowUp {
            payload: Some(serde_json::json!({"branch": "main"})),
            ..then("review")
        },
    );
    nj.queue = "ci".into();
    let parent = enqueue_one(&s, nj).await;
    assert_eq!(
        parent.on_success,
        Some(reeve_core::FollowUp {
            payload: Some(serde_json::json!({"branch": "main"})),
            ..then("review")
        })
    );
    assert_eq!(
        s.get_job(parent.id).await.unwrap(),
        parent,
        "stored as given"
    );
    assert!(
        kind_jobs(&s, "review").await.is_empty(),
        "not before the success"
    );

    let run = claim_one(&s, "w").await;
    assert_eq!(run.on_success, parent.on_success, "the claim reads it back");
    let done = one(&s, succeed_with(&run, serde_json::json!({"sha": "abc"})))
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    let follow = kind_jobs(&s, "review").await;
    assert_eq!(follow.len(), 1, "exactly one follow-up");
    let f = &follow[0];
    assert_eq!(f.queue, "ci", "the parent's queue");
    assert_eq!(f.state, JobState::Available);
    assert_eq!(
        f.payload,
        serde_json::json!({"parent": parent.id, "result": {"sha": "abc"}, "payload": {"branch": "main"}})
    );
    assert_eq!(
        f.unique_key.as_deref(),
        Some(&*format!("followup:{}", parent.id))
    );
    assert_eq!(f.idempotency_key, f.id.to_string(), "derived as usual");
    assert_eq!((f.priority, f.max_attempts), (0, 3), "defaults");
    assert_eq!(f.on_success, None);
    let events = s.job_events(f.id).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.event).collect::<Vec<_>>(),
        vec![EventKind::Enqueued]
    );

    // A follow-up naming its own queue (one nobody has used yet), priority
    // and attempts; the parent's absent result is null.
    let nj = with_follow_up(
        "build",
        reeve_core::FollowUp {
            queue: Some("merge".into()),
            priority: Some(-5),
            max_attempts: Some(1),
            ..then("merge")
        },
    );
    let parent = enqueue_one(&s, nj).await;
    let run = s.claim(claim_from("default")).await.unwrap().remove(0);
    assert_eq!(run.id, parent.id);
    one(&s, succeed(&run)).await.unwrap();
    let follow = kind_jobs(&s, "merge").await;
    assert_eq!(follow.len(), 1);
    let f = &follow[0];
    assert_eq!(
        (f.queue.as_str(), f.priority, f.max_attempts),
        ("merge", -5, 1)
    );
    assert_eq!(
        f.payload,
        serde_json::json!({"parent": parent.id, "result": null, "payload": null})
    );
    let claimed = s.claim(claim_from("merge")).await.unwrap();
    assert_eq!(
        claimed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![f.id],
        "its queue is a queue like any other"
    );
    one(&s, succeed(&claimed[0])).await.unwrap();
    assert_eq!(
        kind_jobs(&s, "merge").await.len(),
        1,
        "a follow-up without on_success enqueues nothing"
    );
}

pub async fn failures_and_cancels_enqueue_no_follow_up(h: &impl Harness) {
    let s = h.store();
    // Retryable, then failed for good.
    let mut nj = with_follow_up("build", then("review"));
    nj.max_attempts = 2;
    nj.heartbeat_timeout = Some(Duration::from_secs(30));
    let a = enqueue_one(&s, nj).await;
    let run = claim_one(&s, "w").await;
    let after = one(&s, fail(&run, FailureReason::Error)).await.unwrap();
    assert_eq!(after.state, JobState::Retryable);
    h.advance(Duration::from_secs(3600));
    s.promote_due(10).await.unwrap();
    let run = claim_one(&s, "w").await;
    let after = one(&s, fail(&run, FailureReason::Error)).await.unwrap();
    assert_eq!(after.state, JobState::Failed);

    // Reaped.
    let mut nj = with_follow_up("build", then("review"));
    nj.heartbeat_timeout = Some(Duration::from_secs(30));
    nj.max_attempts = 1;
    let b = enqueue_one(&s, nj).await;
    claim_one(&s, "w").await;
    h.advance(Duration::from_secs(31));
    let reaped = s.reap_expired(100).await.unwrap();
    assert_eq!(reaped.iter().map(|j| j.id).collect::<Vec<_>>(), vec![b.id]);
    assert_eq!(reaped[0].state, JobState::Failed);

    // Cancelled while waiting, and while running (then the run's failure
    // write-back ends it as cancelled).
    let c = enqueue_one(&s, with_follow_up("build", then("review"))).await;
    assert_eq!(s.cancel(c.id).await.unwrap().state, JobState::Cancelled);
    let d = enqueue_one(&s, with_follow_up("build", then("review"))).await;
    let run = claim_one(&s, "w").await;
    assert_eq!(run.id, d.id);
    s.cancel(d.id).await.unwrap();
    let after = one(&s, fail(&run, FailureReason::Cancelled)).await.unwrap();
    assert_eq!(after.state, JobState::Cancelled);

    assert!(
        kind_jobs(&s, "review").await.is_empty(),
        "no follow-up of {:?}",
        [a.id, b.id, c.id, d.id]
    );
}

pub async fn a_refused_completion_enqueues_no_follow_up(h: &impl Harness) {
    let s = h.store();
    let mut nj = with_follow_up("build", then("review"));
    nj.heartbeat_timeout = Some(Duration::from_secs(30));
    let parent = enqueue_one(&s, nj).await;
    let stale = claim_one(&s, "w1").await;
    h.advance(Duration::from_secs(31));
    assert_eq!(s.reap_expired(100).await.unwrap().len(), 1);
    h.advance(Duration::from_secs(3600));
    s.promote_due(10).await.unwrap();
    let current = claim_one(&s, "w2").await;
    assert_eq!(current.epoch, stale.epoch + 1);

    assert!(matches!(
        one(&s, succeed(&stale)).await,
        Err(StoreError::StaleEpoch { .. })
    ));
    assert!(
        kind_jobs(&s, "review").await.is_empty(),
        "a refused completion enqueues nothing"
    );

    one(&s, succeed(&current)).await.unwrap();
    assert_eq!(kind_jobs(&s, "review").await.len(), 1);
    // The completion replayed (alone, and in a batch): refused, not doubled.
    assert!(matches!(
        one(&s, succeed(&current)).await,
        Err(StoreError::NotRunning { .. })
    ));
    let answers = s
        .finish(vec![succeed(&current), succeed(&stale)])
        .await
        .unwrap();
    assert!(answers.iter().all(Result::is_err));
    let follow = kind_jobs(&s, "review").await;
    assert_eq!(follow.len(), 1, "never doubled");
    assert_eq!(follow[0].payload["parent"], serde_json::json!(parent.id));
}

pub async fn a_batch_of_successes_enqueues_one_follow_up_each(h: &impl Harness) {
    let s = h.store();
    s.update_queue(
        "merge",
        QueuePatch {
            concurrency: Some(Some(1)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut batch = Vec::new();
    for i in 0..12 {
        batch.push(if i % 3 == 2 {
            job("build")
        } else {
            with_follow_up(
                "build",
                reeve_core::FollowUp {
                    queue: Some("merge".into()),
                    ..then("merge")
                },
            )
        });
    }
    s.enqueue(batch).await.unwrap();
    let runs = s.claim(claim("w", 100)).await.unwrap();
    assert_eq!(runs.len(), 12);
    // Every success in one batch (the fast path), and one job named twice
    // (written one by one: the second is refused).
    let mut finishes: Vec<Finish> = runs
        .iter()
        .map(|r| succeed_with(r, serde_json::json!({"n": r.id})))
        .collect();
    let twice = runs
        .iter()
        .find(|r| r.on_success.is_some())
        .expect("a parent with a follow-up");
    finishes.push(succeed(twice));
    let answers = s.finish(finishes).await.unwrap();
    assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), 12);
    assert!(answers.last().unwrap().is_err(), "the second completion");

    let follow = kind_jobs(&s, "merge").await;
    let mut parents: Vec<i64> = follow
        .iter()
        .map(|f| f.payload["parent"].as_i64().expect("parent id"))
        .collect();
    parents.sort_unstable();
    let mut expected: Vec<i64> = runs
        .iter()
        .filter(|r| r.on_success.is_some())
        .map(|r| r.id)
        .collect();
    expected.sort_unstable();
    assert_eq!(parents, expected, "one follow-up per parent that names one");
    for f in &follow {
        assert_eq!(
            f.payload["result"],
            serde_json::json!({"n": f.payload["parent"]})
        );
        assert_eq!(f.queue, "merge");
    }
    // The follow-ups' queue keeps its cap of one.
    let first = s.claim(claim("w", 100)).await.unwrap();
    assert_eq!(first.len(), 1, "concurrency 1");
    assert!(s.claim(claim("w", 100)).await.unwrap().is_empty());
    one(&s, succeed(&first[0])).await.unwrap();
    assert_eq!(s.claim(claim("w", 100)).await.unwrap().len(), 1);
}

pub async fn a_retried_job_enqueues_its_follow_up_once(h: &impl Harness) {
    let s = h.store();
    let mut nj = with_follow_up("build", then("review"));
    nj.max_attempts = 1;
    let parent = enqueue_one(&s, nj).await;
    let run = claim_one(&s, "w").await;
    let failed = one(&s, fail(&run, FailureReason::Error)).await.unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert!(kind_jobs(&s, "review").await.is_empty());

    let retried = s.retry(parent.id).await.unwrap();
    assert_eq!(retried.on_success, parent.on_success, "kept by the retry");
    let again = claim_one(&s, "w").await;
    assert_eq!(again.id, parent.id);
    one(&s, succeed_with(&again, serde_json::json!("ok")))
        .await
        .unwrap();
    let follow = kind_jobs(&s, "review").await;
    assert_eq!(follow.len(), 1, "exactly one");
    assert_eq!(
        follow[0].payload,
        serde_json::json!({"parent": parent.id, "result": "ok", "payload": null})
    );
}

// ---- Supervision and the webhook outbox (SPEC §10) ----

const MINUTE: Duration = Duration::from_secs(60);

/// Supervision at `stall_after = 30m`, `escalate_after = 30m`.
fn supervision() -> crate::SuperviseParams {
    crate::SuperviseParams {
        stall_after: 30 * MINUTE,
        escalate_after: 30 * MINUTE,
        limit: 100,
    }
}

/// A job whose lease outlives the test's clock moves: only supervision
/// (never the reaper) may act on it.
fn long_job(kind: &str) -> NewJob {
    let mut nj = job(kind);
    nj.heartbeat_timeout = Some(Duration::from_secs(6 * 3600));
    nj.max_run_duration = Some(Duration::from_secs(12 * 3600));
    nj
}

fn subscribed(events: &[crate::WebhookEvent]) -> crate::StoreConfig {
    crate::StoreConfig {
        webhooks: crate::Subscriptions::none().with("ops", events),
        ..crate::StoreConfig::default()
    }
}

async fn events_of(s: &Arc<dyn Store>, id: reeve_core::JobId, kind: EventKind) -> usize {
    s.job_events(id)
        .await
        .expect("events")
        .iter()
        .filter(|e| e.event == kind)
        .count()
}

/// Every due outbox row, claimed (so a second call sees none of them).
async fn take_deliveries(s: &Arc<dyn Store>) -> Vec<crate::Delivery> {
    s.claim_deliveries(1000, Duration::from_secs(3600))
        .await
        .expect("claim deliveries")
}

pub async fn a_silent_run_stalls_once_with_one_supervisor_mail(h: &impl Harness) {
    let s = h.store();
    let j = enqueue_one(&s, long_job("agent")).await;
    let run = claim_one(&s, "w").await;
    assert_eq!(run.progress_at, run.claimed_at, "a claim is progress");
    assert_eq!((run.stalled_at, run.escalated_at), (None, None));

    h.advance(29 * MINUTE);
    let pass = s.supervise(supervision()).await.unwrap();
    assert!(pass.stalled.is_empty() && pass.escalated.is_empty());
    let next = pass.next_in.expect("a live run is on its way to a stall");
    assert!(
        next <= MINUTE && next > MINUTE - Duration::from_secs(5),
        "{next:?}"
    );
    // Heartbeats without progress keep the lease but not the run's standing.
    s.heartbeat(HeartbeatParams {
        job: j.id,
        epoch: run.epoch,
        turns: Some(0),
        progress: None,
    })
    .await
    .unwrap();

    h.advance(2 * MINUTE);
    let pass = s.supervise(supervision()).await.unwrap();
    assert_eq!(
        pass.stalled.iter().map(|j| j.id).collect::<Vec<_>>(),
        [j.id]
    );
    let stalled = s.get_job(j.id).await.unwrap();
    assert_eq!(
        stalled.state,
        JobState::Running,
        "nothing is killed for being slow"
    );
    let at = stalled.stalled_at.expect("stalled_at");
    assert!(
        at >= stalled.progress_at.unwrap(),
        "stalled after its last progress"
    );
    assert_eq!(stalled.escalated_at, None);
    let mail = s.read_mail(j.id, false).await.unwrap();
    assert_eq!(mail.len(), 1, "one supervisor message");
    assert_eq!(mail[0].sender, crate::supervision::SUPERVISOR);
    assert!(
        mail[0].subject.contains("no progress for 31m"),
        "{}",
        mail[0].subject
    );
    assert_eq!(events_of(&s, j.id, EventKind::Stalled).await, 1);
    let status = s.status().await.unwrap();
    assert_eq!((status.stalled, status.escalated), (1, 0));

    // Later passes do not repeat it.
    for _ in 0..3 {
        h.advance(MINUTE);
        let pass = s.supervise(supervision()).await.unwrap();
        assert!(pass.stalled.is_empty(), "stalled once");
    }
    assert_eq!(s.read_mail(j.id, false).await.unwrap().len(), 1);
    assert_eq!(events_of(&s, j.id, EventKind::Stalled).await, 1);
    assert_eq!(s.get_job(j.id).await.unwrap().stalled_at, Some(at));
    // Zero thresholds are refused, naming the field, and change nothing.
    let bad = crate::SuperviseParams {
        stall_after: Duration::ZERO,
        ..supervision()
    };
    assert!(matches!(
        s.supervise(bad).await,
        Err(StoreError::Input(e)) if e.field == "stall_after"
    ));
}

pub async fn a_stall_escalates_once_and_writes_a_subscribed_outbox_row(h: &impl Harness) {
    let plain = h.store();
    let s = h
        .connect_with(subscribed(&[crate::WebhookEvent::Escalation]))
        .await;
    let quiet = enqueue_one(&plain, long_job("agent")).await;
    claim_one(&plain, "w").await;
    h.advance(31 * MINUTE);
    // Stalled and escalated through a store that has no webhooks: no row.
    plain.supervise(supervision()).await.unwrap();
    h.advance(31 * MINUTE);
    let pass = plain.supervise(supervision()).await.unwrap();
    assert_eq!(
        pass.escalated.iter().map(|j| j.id).collect::<Vec<_>>(),
        [quiet.id]
    );
    assert!(
        take_deliveries(&s).await.is_empty(),
        "nobody subscribed there"
    );

    let j = enqueue_one(&s, long_job("agent")).await;
    claim_one(&s, "w").await;
    h.advance(31 * MINUTE);
    let pass = s.supervise(supervision()).await.unwrap();
    assert_eq!(
        pass.stalled.iter().map(|j| j.id).collect::<Vec<_>>(),
        [j.id]
    );
    assert!(pass.escalated.is_empty(), "the stall has only begun");
    let next = pass.next_in.expect("on its way to escalation");
    assert!(next <= 30 * MINUTE, "{next:?}");

    h.advance(29 * MINUTE);
    assert!(
        s.supervise(supervision())
            .await
            .unwrap()
            .escalated
            .is_empty()
    );
    h.advance(2 * MINUTE);
    let pass = s.supervise(supervision()).await.unwrap();
    assert_eq!(
        pass.escalated.iter().map(|j| j.id).collect::<Vec<_>>(),
        [j.id]
    );
    let escalated = s.get_job(j.id).await.unwrap();
    assert!(escalated.escalated_at.expect("escalated_at") > escalated.stalled_at.unwrap());
    assert_eq!(events_of(&s, j.id, EventKind::Escalated).await, 1);
    let rows = take_deliveries(&s).await;
    assert_eq!(rows.len(), 1, "one row for the one subscriber");
    assert_eq!(
        (rows[0].event.as_str(), rows[0].target.as_str()),
        ("escalation", "ops")
    );
    assert_eq!(crate::outbox::body_job_id(&rows[0].body), Some(j.id));
    let body: serde_json::Value = serde_json::from_str(&rows[0].body).unwrap();
    assert_eq!(body["event"], "escalation");
    assert_eq!(body["delivery"], rows[0].delivery.as_str());
    assert!(body["no_progress_seconds"].as_u64().unwrap() >= 61 * 60);
    let status = s.status().await.unwrap();
    assert_eq!((status.stalled, status.escalated), (2, 2));

    h.advance(31 * MINUTE);
    assert!(
        s.supervise(supervision())
            .await
            .unwrap()
            .escalated
            .is_empty()
    );
    assert_eq!(events_of(&s, j.id, EventKind::Escalated).await, 1);
    assert!(take_deliveries(&s).await.is_empty(), "escalated once");
}

/// Moves the clock past `stall_after`, then `escalate_after`, with a pass
/// after each: the run stalls, then escalates.
async fn stall_and_escalate(h: &impl Harness, s: &Arc<dyn Store>, before: &str) {
    h.advance(31 * MINUTE);
    let pass = s.supervise(supervision()).await.unwrap();
    assert_eq!(pass.stalled.len(), 1, "stalled before {before}");
    h.advance(31 * MINUTE);
    let pass = s.supervise(supervision()).await.unwrap();
    assert_eq!(pass.escalated.len(), 1, "escalated before {before}");
}

/// The job's `progress_at`, after checking that its stall was cleared.
async fn cleared(s: &Arc<dyn Store>, id: reeve_core::JobId, by: &str) -> Timestamp {
    let job = s.get_job(id).await.unwrap();
    assert_eq!(
        (job.stalled_at, job.escalated_at),
        (None, None),
        "{by} clears the stall"
    );
    job.progress_at.expect("progress_at")
}

pub async fn turns_notes_and_checkpoints_are_progress_and_clear_a_stall(h: &impl Harness) {
    let s = h.store();
    let j = enqueue_one(&s, long_job("agent")).await;
    let run = claim_one(&s, "w").await;
    let beat = |turns: Option<i64>, progress: Option<&str>| HeartbeatParams {
        job: j.id,
        epoch: run.epoch,
        turns,
        progress: progress.map(str::to_string),
    };
    let still_stalled = |job: Job| job.stalled_at.is_some() && job.escalated_at.is_some();

    // Turns that went up.
    h.advance(MINUTE);
    s.heartbeat(beat(Some(3), None)).await.unwrap();
    let first = cleared(&s, j.id, "a first turn count").await;
    assert!(first > run.progress_at.unwrap());
    stall_and_escalate(h, &s, "turns").await;
    s.heartbeat(beat(Some(3), None)).await.unwrap();
    assert!(
        still_stalled(s.get_job(j.id).await.unwrap()),
        "the same turn count is no progress"
    );
    s.heartbeat(beat(Some(4), Some("reading"))).await.unwrap();
    let after_turns = cleared(&s, j.id, "a higher turn count").await;
    assert!(after_turns > first);

    // A new progress note; the same note again is no progress.
    stall_and_escalate(h, &s, "a note").await;
    s.heartbeat(beat(Some(4), Some("reading"))).await.unwrap();
    assert!(
        still_stalled(s.get_job(j.id).await.unwrap()),
        "the same note again is no progress"
    );
    s.heartbeat(beat(None, Some("writing the patch")))
        .await
        .unwrap();
    let after_note = cleared(&s, j.id, "a new note").await;
    assert!(after_note > after_turns);

    // A checkpoint.
    stall_and_escalate(h, &s, "a checkpoint").await;
    s.save_checkpoint(j.id, run.epoch, b"state".to_vec())
        .await
        .unwrap();
    let after_checkpoint = cleared(&s, j.id, "a checkpoint").await;
    assert!(after_checkpoint > after_note);
    // A refused checkpoint (a stale epoch) changes nothing.
    stall_and_escalate(h, &s, "a refused checkpoint").await;
    assert!(matches!(
        s.save_checkpoint(j.id, run.epoch + 1, b"x".to_vec()).await,
        Err(StoreError::StaleEpoch { .. })
    ));
    assert!(still_stalled(s.get_job(j.id).await.unwrap()));

    // It stalls again after progress: each stall mailed once.
    assert_eq!(s.read_mail(j.id, false).await.unwrap().len(), 4);
    assert_eq!(events_of(&s, j.id, EventKind::Stalled).await, 4);
    assert_eq!(events_of(&s, j.id, EventKind::Escalated).await, 4);
    // The next run starts afresh.
    s.cancel(j.id).await.unwrap();
    one(&s, fail(&run, FailureReason::Cancelled)).await.unwrap();
    s.retry(j.id).await.unwrap();
    let again = claim_one(&s, "w").await;
    assert_eq!((again.stalled_at, again.escalated_at), (None, None));
    assert_eq!(again.progress_at, again.claimed_at);
}

pub async fn a_run_whose_lease_passed_is_reaped_not_stalled(h: &impl Harness) {
    let s = h.store();
    let mut nj = job("agent");
    nj.max_attempts = 1;
    nj.max_run_duration = Some(Duration::from_secs(7200));
    let j = enqueue_one(&s, nj).await; // heartbeat_timeout 90s
    claim_one(&s, "w").await;
    h.advance(31 * MINUTE);
    let pass = s.supervise(supervision()).await.unwrap();
    assert!(pass.stalled.is_empty(), "its lease passed: the reaper's");
    assert_eq!(pass.next_in, None, "no live run is on its way");
    assert!(s.read_mail(j.id, false).await.unwrap().is_empty());
    let reaped = s.reap_expired(10).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].failure_reason, Some(FailureReason::HeartbeatLost));
    assert_eq!(reaped[0].stalled_at, None);
    h.advance(31 * MINUTE);
    assert!(s.supervise(supervision()).await.unwrap().stalled.is_empty());
    assert_eq!(events_of(&s, j.id, EventKind::Stalled).await, 0);
}

pub async fn concurrent_supervisors_stall_and_escalate_once(h: &impl Harness) {
    let config = subscribed(&[crate::WebhookEvent::Escalation]);
    let a = h.connect_with(config.clone()).await;
    let b = h.connect_with(config).await;
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(enqueue_one(&a, long_job("agent")).await.id);
    }
    assert_eq!(a.claim(claim("w", 12)).await.unwrap().len(), 12);
    let race = || async {
        let (x, y) = tokio::join!(a.supervise(supervision()), b.supervise(supervision()));
        let (x, y) = (x.unwrap(), y.unwrap());
        (
            x.stalled.len() + y.stalled.len(),
            x.escalated.len() + y.escalated.len(),
        )
    };
    h.advance(31 * MINUTE);
    let (stalled, _) = race().await;
    assert_eq!(stalled, 12, "each run stalled by exactly one pass");
    h.advance(31 * MINUTE);
    let (_, escalated) = race().await;
    assert_eq!(escalated, 12, "each stall escalated by exactly one pass");
    for id in &ids {
        assert_eq!(a.read_mail(*id, false).await.unwrap().len(), 1, "job {id}");
        assert_eq!(events_of(&a, *id, EventKind::Stalled).await, 1);
        assert_eq!(events_of(&a, *id, EventKind::Escalated).await, 1);
    }
    let rows = take_deliveries(&a).await;
    let mut jobs: Vec<_> = rows
        .iter()
        .filter_map(|r| crate::outbox::body_job_id(&r.body))
        .collect();
    jobs.sort_unstable();
    assert_eq!(jobs, ids, "one escalation row per run");
}

pub async fn failures_write_job_failed_rows_only_when_subscribed(h: &impl Harness) {
    let plain = h.store();
    let s = h
        .connect_with(subscribed(&[crate::WebhookEvent::JobFailed]))
        .await;
    let final_job = |max_attempts: i32| {
        let mut nj = job("agent");
        nj.max_attempts = max_attempts;
        nj
    };
    // Without a subscription, nothing is written.
    enqueue_one(&plain, final_job(1)).await;
    let run = claim_one(&plain, "w").await;
    one(&plain, fail(&run, FailureReason::Error)).await.unwrap();
    assert!(take_deliveries(&s).await.is_empty());

    // finish: a final reason, and attempts used up.
    let a = enqueue_one(&s, final_job(3)).await;
    let run = claim_one(&s, "w").await;
    one(&s, fail(&run, FailureReason::AuthFailed))
        .await
        .unwrap();
    // A retryable failure and a success write nothing; a refused write-back
    // (the transition did not happen) neither.
    let b = enqueue_one(&s, final_job(2)).await;
    let run_b = claim_one(&s, "w").await;
    assert_eq!(
        one(&s, fail(&run_b, FailureReason::ExitCode))
            .await
            .unwrap()
            .state,
        JobState::Retryable
    );
    assert!(
        one(&s, fail(&run_b, FailureReason::ExitCode))
            .await
            .is_err()
    );
    let c = enqueue_one(&s, final_job(1)).await;
    let run_c = claim_one(&s, "w").await;
    one(&s, succeed(&run_c)).await.unwrap();
    assert!(one(&s, fail(&run_c, FailureReason::Error)).await.is_err());
    // release: a worker_shutdown with no attempt left.
    let d = enqueue_one(&s, final_job(1)).await;
    let run_d = claim_one(&s, "w").await;
    one(&s, fail(&run_d, FailureReason::WorkerShutdown))
        .await
        .unwrap();
    // reap: a lost heartbeat with no attempt left.
    let e = enqueue_one(&s, final_job(1)).await;
    claim_one(&s, "w").await;
    h.advance(Duration::from_secs(91));
    assert_eq!(s.reap_expired(10).await.unwrap().len(), 1);
    // A reaped cancel ends `cancelled`, not `failed`.
    let f = enqueue_one(&s, final_job(1)).await;
    claim_one(&s, "w").await;
    s.cancel(f.id).await.unwrap();
    h.advance(Duration::from_secs(3600));
    let reaped = s.reap_expired(10).await.unwrap();
    assert_eq!(reaped[0].state, JobState::Cancelled);

    let rows = take_deliveries(&s).await;
    assert!(
        rows.iter()
            .all(|r| r.event == "job_failed" && r.target == "ops")
    );
    let mut jobs: Vec<_> = rows
        .iter()
        .filter_map(|r| crate::outbox::body_job_id(&r.body))
        .collect();
    jobs.sort_unstable();
    assert_eq!(
        jobs,
        [a.id, d.id, e.id],
        "b retried, c succeeded, f cancelled"
    );
    let _ = (b, c);
    let body: serde_json::Value = serde_json::from_str(
        &rows
            .iter()
            .find(|r| crate::outbox::body_job_id(&r.body) == Some(a.id))
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(body["job"]["failure_reason"], "auth_failed");
    assert_eq!(body["job"]["state"], "failed");
}

pub async fn an_auto_pause_writes_its_row_in_the_settling_transaction(h: &impl Harness) {
    let plain = h.store();
    let s = h
        .connect_with(subscribed(&[crate::WebhookEvent::ScheduleAutoPaused]))
        .await;
    let now = s.now().await.unwrap();
    let later = Timestamp(now.0 + 600_000);
    // Paused through a store without webhooks: no row.
    plain
        .put_schedule(put_new("quiet", "qq", Some(later)))
        .await
        .unwrap();
    for i in 0..3 {
        let job = fire_and_claim(&plain, "quiet", "qq", Timestamp(now.0 + i)).await;
        one(&plain, fail(&job, FailureReason::AuthFailed))
            .await
            .unwrap();
    }
    assert_eq!(
        plain.get_schedule("quiet").await.unwrap().status,
        ScheduleStatus::Paused
    );
    assert!(take_deliveries(&s).await.is_empty());

    // Two failures by finish, the third by the reaper: one row, with the
    // pause (no job_failed row: nobody subscribed to it).
    s.put_schedule(put_new("st", "qs", Some(later)))
        .await
        .unwrap();
    for i in 0..2 {
        let job = fire_and_claim(&s, "st", "qs", Timestamp(now.0 + i)).await;
        one(&s, fail(&job, FailureReason::AuthFailed))
            .await
            .unwrap();
        assert!(take_deliveries(&s).await.is_empty(), "not paused yet");
    }
    let third = fire_and_claim(&s, "st", "qs", Timestamp(now.0 + 2)).await;
    assert_eq!(third.max_attempts, 3);
    // A reaped run with attempts left is retryable, not a streak; run it
    // out of attempts by the reaper.
    let mut last = third;
    loop {
        h.advance(Duration::from_secs(3600));
        let reaped = s.reap_expired(10).await.unwrap();
        assert_eq!(reaped.len(), 1);
        if reaped[0].state == JobState::Failed {
            break;
        }
        h.advance(Duration::from_secs(3600));
        s.promote_due(10).await.unwrap();
        last = s.claim(claim_from("qs")).await.unwrap().remove(0);
    }
    let _ = last;
    let rec = s.get_schedule("st").await.unwrap();
    assert_eq!(rec.status, ScheduleStatus::Paused);
    let rows = take_deliveries(&s).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].event, "schedule_auto_paused");
    let body: serde_json::Value = serde_json::from_str(&rows[0].body).unwrap();
    assert_eq!(body["schedule"]["name"], "st");
    assert_eq!(
        body["schedule"]["reason"],
        rec.paused_reason.unwrap().as_str()
    );
    assert_eq!(
        body["job"]["failure_reason"], "timeout",
        "reaped past its hard cap"
    );
}

pub async fn concurrent_delivery_claimers_never_share_a_row(h: &impl Harness) {
    let config = subscribed(&[crate::WebhookEvent::JobFailed]);
    let s = h.connect_with(config.clone()).await;
    let mut nj = job("agent");
    nj.max_attempts = 1;
    let n = 40;
    s.enqueue((0..n).map(|_| nj.clone()).collect())
        .await
        .unwrap();
    let runs = s.claim(claim("w", n)).await.unwrap();
    s.finish(runs.iter().map(|r| fail(r, FailureReason::Error)).collect())
        .await
        .unwrap();
    let mut claimers = Vec::new();
    for _ in 0..3 {
        let store = h.connect_with(config.clone()).await;
        claimers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = store
                    .claim_deliveries(3, Duration::from_secs(600))
                    .await
                    .expect("claim");
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|d| (d.id, d.attempt)));
            }
        }));
    }
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    assert_eq!(all.len(), n as usize, "every row claimed");
    let ids: BTreeSet<i64> = all.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), n as usize, "no row claimed twice");
    assert!(all.iter().all(|(_, attempt)| *attempt == 1));
    // Claimed rows are not due until their lease passes; then they are again.
    assert!(take_deliveries(&s).await.is_empty());
    h.advance(Duration::from_secs(601));
    let again = take_deliveries(&s).await;
    assert_eq!(again.len(), n as usize, "an abandoned claim comes back");
    assert!(again.iter().all(|d| d.attempt == 2));
}

pub async fn delivery_results_are_fenced_retried_and_pruned(h: &impl Harness) {
    let s = h
        .connect_with(subscribed(&[crate::WebhookEvent::JobFailed]))
        .await;
    assert_eq!(s.next_delivery_in().await.unwrap(), None);
    let mut nj = job("agent");
    nj.max_attempts = 1;
    for _ in 0..3 {
        enqueue_one(&s, nj.clone()).await;
        let run = claim_one(&s, "w").await;
        one(&s, fail(&run, FailureReason::Error)).await.unwrap();
    }
    assert_eq!(s.next_delivery_in().await.unwrap(), Some(Duration::ZERO));
    let rows = take_deliveries(&s).await;
    assert_eq!(rows.len(), 3);
    let (ok, retry, dead) = (&rows[0], &rows[1], &rows[2]);
    // Fenced on the attempt number.
    assert!(
        !s.record_delivery(ok.id, ok.attempt + 1, crate::DeliveryOutcome::Delivered)
            .await
            .unwrap()
    );
    assert!(
        s.record_delivery(ok.id, ok.attempt, crate::DeliveryOutcome::Delivered)
            .await
            .unwrap()
    );
    assert!(
        !s.record_delivery(ok.id, ok.attempt, crate::DeliveryOutcome::Delivered)
            .await
            .unwrap(),
        "recorded once"
    );
    let after = Duration::from_secs(120);
    assert!(
        s.record_delivery(
            retry.id,
            retry.attempt,
            crate::DeliveryOutcome::Retry {
                after,
                error: "HTTP 500".into()
            }
        )
        .await
        .unwrap()
    );
    assert!(
        s.record_delivery(
            dead.id,
            dead.attempt,
            crate::DeliveryOutcome::GiveUp {
                error: "HTTP 410".into()
            }
        )
        .await
        .unwrap()
    );
    let next = s
        .next_delivery_in()
        .await
        .unwrap()
        .expect("the retry waits");
    assert!(
        next <= after && next > after - Duration::from_secs(5),
        "{next:?}"
    );
    assert!(take_deliveries(&s).await.is_empty(), "not due yet");
    h.advance(after);
    let again = take_deliveries(&s).await;
    assert_eq!(
        again.iter().map(|d| (d.id, d.attempt)).collect::<Vec<_>>(),
        [(retry.id, 2)],
        "only the retry comes back: delivered and abandoned rows are done"
    );
    assert_eq!(again[0].body, retry.body, "the same bytes on every attempt");
    assert_eq!(again[0].delivery, retry.delivery);
    // Pruning takes finished rows past the retention only.
    assert_eq!(
        s.prune_deliveries(Duration::from_secs(3600), 100)
            .await
            .unwrap(),
        0
    );
    h.advance(Duration::from_secs(7200));
    assert_eq!(
        s.prune_deliveries(Duration::from_secs(3600), 100)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.next_delivery_in().await.unwrap(),
        Some(Duration::ZERO),
        "the claimed retry is left"
    );
}

// ---- Placement by labels (SPEC §6): a pinned job is claimed only by a
// claimer whose labels include all of its requirements, and never blocks
// the jobs behind it.

fn labels(list: &[&str]) -> Vec<String> {
    list.iter().map(|l| l.to_string()).collect()
}

fn pinned(queue: &str, requires: &[&str]) -> NewJob {
    let mut nj = NewJob::new(queue, "watch");
    nj.requires = labels(requires);
    nj
}

fn claim_as(worker: &str, with: &[&str], limit: u32) -> ClaimParams {
    ClaimParams {
        labels: labels(with),
        ..claim(worker, limit)
    }
}

fn ids(jobs: &[Job]) -> Vec<i64> {
    jobs.iter().map(|j| j.id).collect()
}

pub async fn a_claim_takes_a_pinned_job_only_with_all_its_labels(h: &impl Harness) {
    let s = h.store();
    let job = enqueue_one(&s, pinned("default", &["device=a", "gpu=1"])).await;
    assert_eq!(job.requires, labels(&["device=a", "gpu=1"]));
    assert_eq!(s.get_job(job.id).await.unwrap(), job, "stored as given");

    for partial in [&["device=a"][..], &["gpu=1"], &["device=b", "gpu=1"]] {
        assert!(
            s.claim(claim_as("w", partial, 10))
                .await
                .unwrap()
                .is_empty(),
            "{partial:?} lacks a requirement"
        );
    }
    let events = s.job_events(job.id).await.unwrap();
    assert_eq!(events.len(), 1, "passing a job over records nothing");

    let taken = s
        .claim(claim_as(
            "w",
            &["os=mac", "gpu=1", "extra=x", "device=a"],
            10,
        ))
        .await
        .unwrap();
    assert_eq!(ids(&taken), [job.id], "all of them, among others");
    assert_eq!(taken[0].requires, job.requires, "the claim reads them back");
    assert_eq!(taken[0].claimed_by.as_deref(), Some("w"));

    // Retried, it is pinned as before.
    let failed = one(&s, fail(&taken[0], FailureReason::Error))
        .await
        .unwrap();
    assert_eq!(failed.state, JobState::Retryable);
    h.advance(Duration::from_secs(3600));
    assert_eq!(s.promote_due(10).await.unwrap(), 1);
    assert!(
        s.claim(claim_as("w", &["device=a"], 10))
            .await
            .unwrap()
            .is_empty(),
        "a retry keeps its requirements"
    );
    let again = s
        .claim(claim_as("w2", &["device=a", "gpu=1"], 10))
        .await
        .unwrap();
    assert_eq!(ids(&again), [job.id]);
    assert_eq!(again[0].attempt, 2);
}

pub async fn an_unlabeled_claimer_never_takes_a_pinned_job(h: &impl Harness) {
    let s = h.store();
    let job = enqueue_one(&s, pinned("default", &["device=alice-mac"])).await;
    assert!(
        s.claim(claim("w", 10)).await.unwrap().is_empty(),
        "no labels: no pinned jobs"
    );
    let mut by_kind = claim("w", 10);
    by_kind.kinds = KindFilter::Only {
        kinds: vec!["watch".into()],
        commands: true,
    };
    by_kind.queues = Some(vec!["default".into()]);
    assert!(
        s.claim(by_kind).await.unwrap().is_empty(),
        "its kind and queue are not enough"
    );
    assert_eq!(
        s.get_job(job.id).await.unwrap().state,
        JobState::Available,
        "still waiting"
    );
    // An unpinned job is anyone's, labels or not.
    let free = enqueue_one(&s, job_in("default")).await;
    assert_eq!(
        ids(&s
            .claim(claim_as("w", &["device=bob-mac"], 10))
            .await
            .unwrap()),
        [free.id]
    );
    // Labels with a kind filter and a queue list, as a remote worker claims.
    let mut worker = claim_as("w", &["device=alice-mac"], 10);
    worker.kinds = KindFilter::Only {
        kinds: vec!["watch".into()],
        commands: false,
    };
    worker.queues = Some(vec!["default".into()]);
    assert_eq!(ids(&s.claim(worker).await.unwrap()), [job.id]);
}

fn job_in(queue: &str) -> NewJob {
    NewJob::new(queue, "work")
}

pub async fn a_pinned_job_at_the_head_does_not_block_the_queue(h: &impl Harness) {
    let s = h.store();
    let mut head = pinned("q", &["device=a"]);
    head.priority = -10;
    let head = enqueue_one(&s, head).await;
    let mut behind = Vec::new();
    for _ in 0..3 {
        behind.push(enqueue_one(&s, job_in("q")).await);
    }
    // One at a time: the pinned head is passed over, not waited behind.
    let first = s.claim(claim("w", 1)).await.unwrap();
    assert_eq!(ids(&first), [behind[0].id]);
    let other = s.claim(claim_as("w", &["device=b"], 1)).await.unwrap();
    assert_eq!(
        ids(&other),
        [behind[1].id],
        "nor by a claimer it does not fit"
    );
    // A claimer that fits takes it in claim order: ahead of what is left.
    let mut p = claim_as("w", &["device=a"], 10);
    p.queues = Some(vec!["q".into()]);
    let fits = s.claim(p).await.unwrap();
    assert_eq!(
        ids(&fits),
        [head.id, behind[2].id],
        "priority order across both"
    );

    // Many pinned jobs ahead of one free job: still not a block.
    let mut pins = Vec::new();
    for _ in 0..5 {
        let mut nj = pinned("q", &["device=c"]);
        nj.priority = -1;
        pins.push(nj);
    }
    s.enqueue(pins).await.unwrap();
    let free = enqueue_one(&s, job_in("q")).await;
    assert_eq!(ids(&s.claim(claim("w", 1)).await.unwrap()), [free.id]);
}

pub async fn caps_hold_with_pinned_jobs(h: &impl Harness) {
    let s = h.store();
    // A queue cap: the pinned head takes the one slot from its claimer.
    s.update_queue(
        "capped",
        QueuePatch {
            concurrency: Some(Some(1)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut head = pinned("capped", &["device=a"]);
    head.priority = -1;
    let head = enqueue_one(&s, head).await;
    let free = enqueue_one(&s, job_in("capped")).await;
    let taken = s.claim(claim_as("w", &["device=a"], 10)).await.unwrap();
    assert_eq!(ids(&taken), [head.id], "the queue's cap of 1");
    assert!(
        s.claim(claim("w2", 10)).await.unwrap().is_empty(),
        "the slot is taken, by a pinned run like any other"
    );
    one(&s, succeed(&taken[0])).await.unwrap();
    assert_eq!(ids(&s.claim(claim("w2", 10)).await.unwrap()), [free.id]);

    // Concurrent claimers with and without labels, under a global cap of 2
    // and queue caps of 1: never over a cap, each job run once and only by
    // a claimer it fits.
    let s2 = h.connect().await;
    s.set_limits(Limits { global: Some(2) }).await.unwrap();
    let queues = ["p1", "p2", "p3"];
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
    let batch: Vec<NewJob> = (0..60)
        .map(|i| match i % 3 {
            0 => pinned(queues[i % 3], &["device=a"]),
            1 => pinned(queues[i % 3], &["device=a", "gpu=1"]),
            _ => job_in(queues[i % 3]),
        })
        .collect();
    let enqueued: Vec<i64> = s
        .enqueue(batch)
        .await
        .unwrap()
        .iter()
        .map(|e| e.job.id)
        .collect();
    let claimers = [
        (s.clone(), &["device=a", "gpu=1"][..]),
        (s2.clone(), &["device=a"][..]),
        (s.clone(), &[][..]),
        (s2.clone(), &["gpu=1"][..]),
    ];
    let mut handles = Vec::new();
    for (i, (store, with)) in claimers.into_iter().enumerate() {
        handles.push(tokio::spawn(claim_with_labels_until_idle(
            store,
            s.clone(),
            format!("w{i}"),
            labels(with),
            2,
        )));
    }
    let mut total = 0;
    for handle in handles {
        total += handle.await.expect("claimer task");
    }
    assert_eq!(total, enqueued.len(), "every job completed exactly once");
    assert_history_within_caps(&s, &enqueued, 2, 1).await;
}

pub async fn schedule_firings_carry_their_requirements(h: &impl Harness) {
    let s = h.store();
    let now = s.now().await.unwrap();
    let spec: reeve_schedule::ScheduleSpec = serde_json::from_value(serde_json::json!({
        "name": "watcher",
        "every": "1m",
        "job": {"kind": "watch", "queue": "watch", "requires": ["device=alice-mac"]},
    }))
    .expect("a valid spec");
    let template = spec.validate().expect("valid").job;
    s.put_schedule(SchedulePut {
        spec,
        status: None,
        next_fire_at: NextFire::Set(Some(now)),
        anchor: NextFire::Set(Some(now)),
        max_turns_changed: false,
    })
    .await
    .unwrap();
    let stored = s.get_schedule("watcher").await.unwrap();
    assert_eq!(
        stored.spec.job.requires,
        labels(&["device=alice-mac"]),
        "the schedule keeps its requirements"
    );
    let next = Timestamp(now.0 + 60_000);
    let fired = fired(
        s.fire(FireParams {
            schedule: "watcher".into(),
            expected_next: Some(now),
            nominal: now,
            next: NextFire::Set(Some(next)),
            job: Some(template.new_job("watcher", now)),
            overlap: OverlapPolicy::Allow,
            outcome: FiringOutcome::Fired,
            skipped_until: None,
            require_capacity: false,
            audit: None,
            probe: false,
        })
        .await
        .unwrap(),
    );
    assert_eq!(fired.requires, labels(&["device=alice-mac"]));
    assert_eq!(fired.schedule.as_deref(), Some("watcher"));
    assert!(s.claim(claim("w", 10)).await.unwrap().is_empty());
    assert!(
        s.claim(claim_as("w", &["device=bob-mac"], 10))
            .await
            .unwrap()
            .is_empty()
    );
    let run = s
        .claim(claim_as("w", &["device=alice-mac"], 10))
        .await
        .unwrap();
    assert_eq!(ids(&run), [fired.id]);
    one(&s, succeed(&run[0])).await.unwrap();

    // A forced run skips the caps, never its requirements.
    s.set_limits(Limits { global: Some(0) }).await.unwrap();
    let forced = fired_forced(&s, &template, Timestamp(now.0 + 1)).await;
    assert!(s.claim(claim("w", 10)).await.unwrap().is_empty());
    assert!(
        s.claim(claim_as("w", &["device=bob-mac"], 10))
            .await
            .unwrap()
            .is_empty()
    );
    let mut worker = claim_as("w", &["device=alice-mac"], 10);
    worker.kinds = KindFilter::Only {
        kinds: vec!["watch".into()],
        commands: false,
    };
    let run = s.claim(worker).await.unwrap();
    assert_eq!(ids(&run), [forced.id], "past the full cap, on its device");
}

async fn fired_forced(
    s: &Arc<dyn Store>,
    template: &reeve_schedule::JobTemplate,
    at: Timestamp,
) -> Job {
    let mut p = FireParams::manual(
        "watcher",
        at,
        template.new_job("watcher", at),
        FiringOutcome::Forced,
    );
    p.require_capacity = false;
    p.audit = Some(crate::NewAudit {
        actor: "operator:test".into(),
        action: "force_run".into(),
        target: "schedule:watcher".into(),
        detail: serde_json::json!({}),
    });
    fired(s.fire(p).await.expect("fire"))
}

pub async fn a_follow_up_is_pinned_by_its_own_requirements(h: &impl Harness) {
    let s = h.store();
    let mut parent = pinned("default", &["device=a"]);
    parent.on_success = Some(reeve_core::FollowUp {
        requires: labels(&["device=b"]),
        ..then("review")
    });
    enqueue_one(&s, parent).await;
    let run = s.claim(claim_as("w", &["device=a"], 10)).await.unwrap();
    one(&s, succeed(&run[0])).await.unwrap();
    let follow = kind_jobs(&s, "review").await;
    assert_eq!(follow.len(), 1);
    assert_eq!(
        follow[0].requires,
        labels(&["device=b"]),
        "not the parent's"
    );
    assert!(
        s.claim(claim_as("w", &["device=a"], 10))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(&s.claim(claim_as("w", &["device=b"], 10)).await.unwrap()),
        [follow[0].id]
    );
}
