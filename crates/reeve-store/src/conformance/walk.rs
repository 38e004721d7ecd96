//! The generated state-machine walk of the job store (SPEC §2–§5).
//!
//! proptest generates a case — per-queue caps and pauses, an optional global
//! cap, then a sequence of enqueues, claims, heartbeats, completions,
//! failures, reaps (a clock move, [`Store::reap_expired`] and
//! [`Store::promote_due`]), cancels, retries and clock moves, each write
//! carrying any epoch (the job's current one, one ahead or up to two behind)
//! in any order — and runs it against a fresh harness. After **every** step
//! the whole store is read back and checked, without a model of its own:
//!
//! - the step's answer and the rows before it decide what may have changed:
//!   a refusal (stale or ahead epoch, not running, lease passed, a state the
//!   operation does not apply to, a deduplicated enqueue, an empty claim)
//!   changes nothing at all, no row and no event, and says why with the
//!   error the contract names; an accepted write changes only its own jobs,
//!   exactly as SPEC §3–§5 say, and an accepted write-back or heartbeat only
//!   ever hit a running job at exactly that epoch (a heartbeat also only an
//!   unexpired lease);
//! - every job's history replays through legal transitions — each event kind
//!   only from the states it may leave and by its actor, epochs +1 per claim,
//!   attempts +1 per claim and reset by a retry — to the stored row, whose
//!   epoch is the number of claims the walk made of it;
//! - never two successes; terminal jobs leave only by an operator's retry;
//! - no queue's running count exceeds its cap, nor the total the global cap,
//!   and a claim that took fewer than it asked for left nothing it could
//!   have taken, in claim order;
//! - a reaped run ends `heartbeat_lost` or `timeout` (or `cancelled` after a
//!   cancel request), and no run whose lease passed is left running.
//!
//! The race walk applies pairs of claims, heartbeats and completions through
//! two handles at once ([`Harness::connect`]), then checks the same
//! invariants and that the pair was fenced: one run ends once.
//!
//! Each test runs a budget of cases per backend (`PROPTEST_CASES`
//! overrides it); a failing case is shrunk and printed, and becomes a named
//! regression test.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reeve_core::job::Availability;
use reeve_core::placement::satisfies;
use reeve_core::time::duration_millis;
use reeve_core::{
    Actor, Event, EventKind, FailureReason, Job, JobFilter, JobId, JobState, NewJob, Timestamp,
};

use super::Harness;
use crate::{
    ClaimParams, Enqueued, Finish, HeartbeatAck, HeartbeatParams, KindFilter, Limits, Outcome,
    QueuePatch, Store, StoreConfig, StoreError,
};

const QUEUES: [&str; 3] = ["walk-a", "walk-b", "walk-c"];
const CLAIMERS: [&str; 3] = ["w1", "w2", "w3"];
/// Placement labels, in canonical (sorted) order.
const LABELS: [&str; 2] = ["arm", "gpu"];
const UNIQUE_KEYS: [&str; 2] = ["walk-once", "walk-single"];
/// Retried by default and final reasons, and `timeout` as an executor may
/// report it.
const REASONS: [FailureReason; 7] = [
    FailureReason::Error,
    FailureReason::RateLimited,
    FailureReason::Timeout,
    FailureReason::WorkerShutdown,
    FailureReason::AuthFailed,
    FailureReason::BudgetExceeded,
    FailureReason::Cancelled,
];

type Check = Result<(), String>;
/// What a step did: the operation and its answer (`accepted` or the
/// refusal), tallied so the fixed-seed walk can show it reached them all.
type Seen = (&'static str, &'static str);

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

// ---------------------------------------------------------------------------
// The generated cases.

/// Queue settings and the global cap, applied before the first operation.
#[derive(Debug, Clone)]
struct Setup {
    caps: [Option<u32>; 3],
    paused: [bool; 3],
    global: Option<u32>,
}

impl Setup {
    fn slot(queue: &str) -> usize {
        QUEUES.iter().position(|q| *q == queue).unwrap_or(0)
    }

    fn cap(&self, queue: &str) -> Option<u32> {
        self.caps[Self::slot(queue)]
    }

    fn paused(&self, queue: &str) -> bool {
        self.paused[Self::slot(queue)]
    }
}

/// Which job an operation targets: one of the running jobs (any job when
/// none runs), any job, or an id that does not exist.
#[derive(Debug, Clone, Copy)]
enum Pick {
    Running(Index),
    Any(Index),
    Missing,
}

#[derive(Debug, Clone)]
struct EnqueueOp {
    queue: usize,
    priority: i32,
    max_attempts: i32,
    heartbeat_timeout_secs: u64,
    max_run_secs: u64,
    unique_key: Option<usize>,
    /// Bit `i` set: requires `LABELS[i]`.
    requires: u8,
    delay_secs: Option<u64>,
}

impl EnqueueOp {
    fn new_job(&self) -> NewJob {
        let mut nj = NewJob::new(QUEUES[self.queue], "walk");
        nj.priority = self.priority;
        nj.max_attempts = self.max_attempts;
        nj.heartbeat_timeout = Some(Duration::from_secs(self.heartbeat_timeout_secs));
        nj.max_run_duration = Some(Duration::from_secs(self.max_run_secs));
        nj.unique_key = self.unique_key.map(|k| UNIQUE_KEYS[k].to_string());
        nj.requires = labels(self.requires);
        if let Some(d) = self.delay_secs {
            nj.availability = Availability::After(Duration::from_secs(d));
        }
        nj
    }
}

#[derive(Debug, Clone)]
struct ClaimOp {
    slots: u32,
    claimer: usize,
    /// Bit `i` set: the claimer has `LABELS[i]`.
    labels: u8,
    /// Bit `i` set: the claimer takes from `QUEUES[i]`; `None` = all.
    queues: Option<u8>,
}

impl ClaimOp {
    fn params(&self) -> ClaimParams {
        ClaimParams {
            worker: CLAIMERS[self.claimer].into(),
            queues: self.queues.map(|mask| {
                QUEUES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, q)| q.to_string())
                    .collect()
            }),
            kinds: KindFilter::Any,
            limit: self.slots,
            heartbeats: true,
            labels: labels(self.labels),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum WalkOutcome {
    Succeed,
    Fail(FailureReason),
}

impl WalkOutcome {
    fn outcome(self) -> Outcome {
        match self {
            WalkOutcome::Succeed => Outcome::Succeeded { result: None },
            WalkOutcome::Fail(reason) => Outcome::Failed {
                reason,
                error: Some(format!("{reason} in the walk")),
            },
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue(EnqueueOp),
    Claim(ClaimOp),
    Heartbeat {
        job: Pick,
        epoch_delta: i64,
    },
    Finish {
        job: Pick,
        epoch_delta: i64,
        outcome: WalkOutcome,
    },
    /// Moves the clock, then reaps expired runs and promotes due jobs.
    Reap {
        advance_secs: u64,
    },
    Cancel {
        job: Pick,
    },
    Retry {
        job: Pick,
    },
    Advance {
        secs: u64,
    },
}

#[derive(Debug, Clone)]
struct WalkCase {
    setup: Setup,
    ops: Vec<Op>,
}

fn labels(mask: u8) -> Vec<String> {
    LABELS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, l)| l.to_string())
        .collect()
}

fn setup_strategy() -> impl Strategy<Value = Setup> {
    (
        proptest::array::uniform3(proptest::option::weighted(0.7, 0u32..=3)),
        proptest::array::uniform3(proptest::bool::weighted(0.1)),
        proptest::option::weighted(0.4, 1u32..=4),
    )
        .prop_map(|(caps, paused, global)| Setup {
            caps,
            paused,
            global,
        })
}

fn pick_strategy() -> impl Strategy<Value = Pick> {
    prop_oneof![
        5 => any::<Index>().prop_map(Pick::Running),
        4 => any::<Index>().prop_map(Pick::Any),
        1 => Just(Pick::Missing),
    ]
}

/// The job's current epoch most often; one ahead, or one or two behind.
fn epoch_delta_strategy() -> impl Strategy<Value = i64> {
    prop_oneof![4 => Just(0i64), 1 => -2i64..=-1, 1 => Just(1i64)]
}

fn outcome_strategy() -> impl Strategy<Value = WalkOutcome> {
    prop_oneof![
        2 => Just(WalkOutcome::Succeed),
        3 => proptest::sample::select(REASONS.to_vec()).prop_map(WalkOutcome::Fail),
    ]
}

fn enqueue_strategy() -> impl Strategy<Value = EnqueueOp> {
    (
        0..QUEUES.len(),
        0i32..=2,
        1i32..=3,
        2u64..=20,
        10u64..=60,
        proptest::option::weighted(0.3, 0..UNIQUE_KEYS.len()),
        prop_oneof![3 => Just(0u8), 1 => 1u8..4],
        proptest::option::weighted(0.2, 1u64..=30),
    )
        .prop_map(
            |(
                queue,
                priority,
                max_attempts,
                heartbeat_timeout_secs,
                max_run_secs,
                unique_key,
                requires,
                delay_secs,
            )| EnqueueOp {
                queue,
                priority,
                max_attempts,
                heartbeat_timeout_secs,
                max_run_secs,
                unique_key,
                requires,
                delay_secs,
            },
        )
}

fn claim_strategy() -> impl Strategy<Value = ClaimOp> {
    (
        1u32..=3,
        0..CLAIMERS.len(),
        0u8..4,
        proptest::option::weighted(0.25, 1u8..8),
    )
        .prop_map(|(slots, claimer, labels, queues)| ClaimOp {
            slots,
            claimer,
            labels,
            queues,
        })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => enqueue_strategy().prop_map(Op::Enqueue),
        3 => claim_strategy().prop_map(Op::Claim),
        2 => (pick_strategy(), epoch_delta_strategy())
            .prop_map(|(job, epoch_delta)| Op::Heartbeat { job, epoch_delta }),
        4 => (pick_strategy(), epoch_delta_strategy(), outcome_strategy()).prop_map(
            |(job, epoch_delta, outcome)| Op::Finish { job, epoch_delta, outcome }
        ),
        2 => (0u64..=40).prop_map(|advance_secs| Op::Reap { advance_secs }),
        1 => pick_strategy().prop_map(|job| Op::Cancel { job }),
        1 => pick_strategy().prop_map(|job| Op::Retry { job }),
        1 => (0u64..=30).prop_map(|secs| Op::Advance { secs }),
    ]
}

fn walk_strategy(max_ops: usize) -> impl Strategy<Value = WalkCase> {
    (
        setup_strategy(),
        proptest::collection::vec(op_strategy(), 1..=max_ops),
    )
        .prop_map(|(setup, ops)| WalkCase { setup, ops })
}

// ---------------------------------------------------------------------------
// Running cases.

/// How many cases of how many steps a test runs on a backend.
#[derive(Debug, Clone, Copy)]
struct Budget {
    cases: u32,
    steps: usize,
}

impl Budget {
    /// Bounded so each test stays within about a minute in a debug build;
    /// PostgreSQL's round trips cost more, so it runs fewer cases.
    fn walk(backend: &str) -> Budget {
        match backend {
            "sqlite" => Budget::overridable(48, 80),
            _ => Budget::overridable(24, 60),
        }
    }

    fn race(backend: &str) -> Budget {
        match backend {
            "sqlite" => Budget::overridable(32, 40),
            _ => Budget::overridable(16, 30),
        }
    }

    fn overridable(cases: u32, steps: usize) -> Budget {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases);
        Budget { cases, steps }
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        // Every shrink step is a fresh database and a whole walk.
        max_shrink_iters: 400,
        // Failing cases become named regression tests, not files.
        failure_persistence: None,
        fork: false,
        timeout: 0,
        ..Config::default()
    })
}

/// Runs `cases` of `strategy` through `body`, each against a fresh harness
/// from `factory`, shrinking a failure. The runner is synchronous, so each
/// case blocks on its async body on this thread, outside the runtime's
/// context (the test's multi-thread runtime keeps driving the I/O).
async fn run_cases<H, F, Fut, S, B, BFut>(factory: &F, strategy: S, cases: u32, body: B)
where
    H: Harness,
    F: Fn() -> Fut,
    Fut: Future<Output = H>,
    S: Strategy,
    B: Fn(H, S::Value) -> BFut,
    BFut: Future<Output = Check>,
{
    let handle = tokio::runtime::Handle::current();
    let mut runner = runner(cases);
    let result = tokio::task::block_in_place(|| {
        runner.run(&strategy, |case| {
            handle
                .block_on(async {
                    let harness = factory().await;
                    body(harness, case).await
                })
                .map_err(TestCaseError::fail)
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The generated walk: first one long fixed-seed case (the same on every
/// run), then the backend's budget of random cases.
pub async fn generated_walks_keep_the_job_invariants<H, F, Fut>(factory: F)
where
    H: Harness,
    F: Fn() -> Fut,
    Fut: Future<Output = H>,
{
    let first = factory().await;
    let backend = first.store().backend();
    let fixed = fixed_case(160);
    let tally = match run_walk(&first, &fixed).await {
        Ok(tally) => tally,
        Err(e) => panic!("the fixed-seed walk broke an invariant: {e}\ncase: {fixed:?}"),
    };
    // The walk means something only if it reaches every kind of answer.
    for seen in FIXED_WALK_REACHES {
        assert!(
            tally.contains_key(&seen),
            "the fixed-seed walk never saw {seen:?}; it saw {tally:?}"
        );
    }
    drop(first);
    let budget = Budget::walk(backend);
    run_cases(
        &factory,
        walk_strategy(budget.steps),
        budget.cases,
        |h, case| async move { run_walk(&h, &case).await.map(drop) },
    )
    .await;
}

/// The answers the fixed-seed walk must meet at least once each.
const FIXED_WALK_REACHES: [Seen; 16] = [
    ("enqueue", "accepted"),
    ("enqueue", "deduplicated"),
    ("claim", "accepted"),
    ("claim", "empty"),
    ("heartbeat", "accepted"),
    ("heartbeat", "stale epoch"),
    ("heartbeat", "epoch ahead"),
    ("heartbeat", "not running"),
    ("heartbeat", "lease expired"),
    ("write-back", "accepted"),
    ("write-back", "stale epoch"),
    ("write-back", "not running"),
    ("reap", "accepted"),
    ("cancel", "accepted"),
    ("retry", "accepted"),
    ("retry", "input"),
];

/// A case drawn from a fixed seed: the same long walk on every run.
fn fixed_case(ops: usize) -> WalkCase {
    let mut runner = TestRunner::deterministic();
    (
        setup_strategy(),
        proptest::collection::vec(op_strategy(), ops),
    )
        .prop_map(|(setup, ops)| WalkCase { setup, ops })
        .new_tree(&mut runner)
        .expect("a fixed case")
        .current()
}

async fn apply_setup(s: &Arc<dyn Store>, setup: &Setup) -> Check {
    s.set_limits(Limits {
        global: setup.global,
    })
    .await
    .map_err(failed("set_limits"))?;
    for (i, q) in QUEUES.iter().enumerate() {
        s.update_queue(
            q,
            QueuePatch {
                concurrency: Some(setup.caps[i]),
                paused: Some(setup.paused[i]),
            },
        )
        .await
        .map_err(failed("update_queue"))?;
    }
    Ok(())
}

/// Runs one case; answers how often each operation met each answer.
async fn run_walk(h: &impl Harness, case: &WalkCase) -> Result<BTreeMap<Seen, u32>, String> {
    let s = h.store();
    apply_setup(&s, &case.setup).await?;
    let mut claims: BTreeMap<JobId, i64> = BTreeMap::new();
    let mut before = snapshot(&s).await?;
    let mut tally = BTreeMap::new();
    for (n, op) in case.ops.iter().enumerate() {
        let (after, seen) = step(h, &s, &case.setup, &mut claims, &before, op)
            .await
            .map_err(|e| format!("step {n} {op:?}: {e}"))?;
        check_store(&after, &claims, &case.setup)
            .map_err(|e| format!("after step {n} {op:?}: {e}"))?;
        *tally.entry(seen).or_default() += 1;
        before = after;
    }
    Ok(tally)
}

fn failed(what: &'static str) -> impl Fn(StoreError) -> String {
    move |e| format!("{what} failed: {e}")
}

async fn now(s: &Arc<dyn Store>) -> Result<i64, String> {
    Ok(s.now().await.map_err(failed("now"))?.0)
}

// ---------------------------------------------------------------------------
// Reading the store back.

/// Every job and its history.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    jobs: BTreeMap<JobId, Job>,
    events: BTreeMap<JobId, Vec<Event>>,
}

impl Snapshot {
    fn job(&self, id: JobId) -> Result<&Job, String> {
        self.jobs
            .get(&id)
            .ok_or_else(|| format!("job {id} is gone"))
    }

    fn events_of(&self, id: JobId) -> &[Event] {
        self.events.get(&id).map_or(&[], Vec::as_slice)
    }

    fn running_in(&self, queue: &str) -> u64 {
        self.jobs
            .values()
            .filter(|j| j.state == JobState::Running && j.queue == queue)
            .count() as u64
    }

    fn running(&self) -> u64 {
        self.jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .count() as u64
    }

    fn resolve(&self, pick: Pick) -> Option<JobId> {
        let running: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .map(|j| j.id)
            .collect();
        let all: Vec<JobId> = self.jobs.keys().copied().collect();
        match pick {
            Pick::Running(i) if !running.is_empty() => Some(*i.get(&running)),
            Pick::Running(i) | Pick::Any(i) => (!all.is_empty()).then(|| *i.get(&all)),
            Pick::Missing => Some(all.last().copied().unwrap_or(0) + 1000),
        }
    }

    fn epoch_of(&self, id: JobId) -> i64 {
        self.jobs.get(&id).map_or(0, |j| j.epoch)
    }
}

async fn snapshot(s: &Arc<dyn Store>) -> Result<Snapshot, String> {
    let page = s
        .list_jobs(JobFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .map_err(failed("list_jobs"))?;
    ensure!(
        page.next_before_id.is_none(),
        "the walk made more jobs than one listing page"
    );
    let mut snap = Snapshot {
        jobs: BTreeMap::new(),
        events: BTreeMap::new(),
    };
    for job in page.items {
        let events = s.job_events(job.id).await.map_err(failed("job_events"))?;
        snap.events.insert(job.id, events);
        snap.jobs.insert(job.id, job);
    }
    Ok(snap)
}

/// The jobs whose row or history differs; fails if a job disappeared or a
/// history was rewritten rather than appended to.
fn changed(before: &Snapshot, after: &Snapshot) -> Result<BTreeSet<JobId>, String> {
    for id in before.jobs.keys() {
        ensure!(after.jobs.contains_key(id), "job {id} disappeared");
        let (old, new) = (before.events_of(*id), after.events_of(*id));
        ensure!(
            new.len() >= old.len() && new[..old.len()] == *old,
            "job {id}'s history was rewritten: {old:?} -> {new:?}"
        );
    }
    Ok(after
        .jobs
        .keys()
        .filter(|id| {
            before.jobs.get(id) != after.jobs.get(id)
                || before.events.get(id) != after.events.get(id)
        })
        .copied()
        .collect())
}

fn new_events<'a>(before: &Snapshot, after: &'a Snapshot, id: JobId) -> &'a [Event] {
    let seen = before.events_of(id).len();
    after.events_of(id).get(seen..).unwrap_or(&[])
}

fn unchanged(before: &Snapshot, after: &Snapshot, what: &str) -> Check {
    let ids = changed(before, after)?;
    ensure!(
        ids.is_empty(),
        "{what} changed jobs {ids:?}: {:?}",
        ids.iter().map(|id| &after.jobs[id]).collect::<Vec<_>>()
    );
    Ok(())
}

fn changed_exactly(before: &Snapshot, after: &Snapshot, ids: &BTreeSet<JobId>) -> Check {
    let seen = changed(before, after)?;
    ensure!(
        seen == *ids,
        "expected changes to exactly jobs {ids:?}, saw {seen:?}"
    );
    Ok(())
}

fn one_event<'a>(before: &Snapshot, after: &'a Snapshot, id: JobId) -> Result<&'a Event, String> {
    match new_events(before, after, id) {
        [e] => Ok(e),
        other => Err(format!("job {id} recorded {other:?}, expected one event")),
    }
}

fn within(t: i64, t0: i64, t1: i64, what: &str) -> Check {
    ensure!(
        (t0..=t1).contains(&t),
        "{what} is {t}, outside the operation's [{t0}, {t1}]"
    );
    Ok(())
}

fn millis(d: Duration) -> i64 {
    duration_millis(d)
}

fn outcome_label(op: &'static str, refusal: Option<&StoreError>) -> Seen {
    let outcome = match refusal {
        None => "accepted",
        Some(StoreError::StaleEpoch { expected, actual }) if actual < expected => "stale epoch",
        Some(StoreError::StaleEpoch { .. }) => "epoch ahead",
        Some(StoreError::NotRunning { .. }) => "not running",
        Some(StoreError::LeaseExpired) => "lease expired",
        Some(StoreError::InvalidState { .. }) => "invalid state",
        Some(StoreError::NotFound(_)) => "not found",
        Some(StoreError::Input(_)) => "input",
        Some(_) => "other",
    };
    (op, outcome)
}

fn event_of(state: JobState) -> EventKind {
    match state {
        JobState::Succeeded => EventKind::Succeeded,
        JobState::Retryable => EventKind::Retryable,
        JobState::Cancelled => EventKind::Cancelled,
        _ => EventKind::Failed,
    }
}

// ---------------------------------------------------------------------------
// One step and what its answer allows.

async fn step(
    h: &impl Harness,
    s: &Arc<dyn Store>,
    setup: &Setup,
    claims: &mut BTreeMap<JobId, i64>,
    before: &Snapshot,
    op: &Op,
) -> Result<(Snapshot, Seen), String> {
    match op {
        Op::Enqueue(e) => {
            let t0 = now(s).await?;
            let mut out = s
                .enqueue(vec![e.new_job()])
                .await
                .map_err(failed("enqueue"))?;
            let t1 = now(s).await?;
            ensure!(out.len() == 1, "one enqueue answered {}", out.len());
            let after = snapshot(s).await?;
            let out = out.remove(0);
            check_enqueue(e, &out, before, &after, t0, t1)?;
            Ok((
                after,
                (
                    "enqueue",
                    if out.created {
                        "accepted"
                    } else {
                        "deduplicated"
                    },
                ),
            ))
        }
        Op::Claim(c) => {
            let params = c.params();
            let t0 = now(s).await?;
            let got = s.claim(params.clone()).await.map_err(failed("claim"))?;
            let t1 = now(s).await?;
            let after = snapshot(s).await?;
            for j in &got {
                *claims.entry(j.id).or_default() += 1;
            }
            check_claim(&params, &got, before, &after, t0, t1, setup)?;
            Ok((
                after,
                ("claim", if got.is_empty() { "empty" } else { "accepted" }),
            ))
        }
        Op::Heartbeat { job, epoch_delta } => {
            let Some(id) = before.resolve(*job) else {
                return Ok((before.clone(), ("any", "no job yet")));
            };
            let epoch = before.epoch_of(id) + epoch_delta;
            let t0 = now(s).await?;
            let answer = s
                .heartbeat(HeartbeatParams {
                    job: id,
                    epoch,
                    ..Default::default()
                })
                .await;
            let t1 = now(s).await?;
            let after = snapshot(s).await?;
            check_heartbeat(id, epoch, &answer, before, &after, t0, t1)?;
            Ok((after, outcome_label("heartbeat", answer.as_ref().err())))
        }
        Op::Finish {
            job,
            epoch_delta,
            outcome,
        } => {
            let Some(id) = before.resolve(*job) else {
                return Ok((before.clone(), ("any", "no job yet")));
            };
            let epoch = before.epoch_of(id) + epoch_delta;
            let t0 = now(s).await?;
            let mut answers = s
                .finish(vec![Finish {
                    job: id,
                    epoch,
                    outcome: outcome.outcome(),
                    output: None,
                }])
                .await
                .map_err(failed("finish"))?;
            let t1 = now(s).await?;
            ensure!(answers.len() == 1, "one finish answered {}", answers.len());
            let after = snapshot(s).await?;
            let answer = answers.remove(0);
            check_finish(id, epoch, *outcome, &answer, before, &after, t0, t1)?;
            Ok((after, outcome_label("write-back", answer.as_ref().err())))
        }
        Op::Reap { advance_secs } => {
            h.advance(Duration::from_secs(*advance_secs));
            let t0 = now(s).await?;
            let reaped = s.reap_expired(100).await.map_err(failed("reap_expired"))?;
            let promoted = s.promote_due(100).await.map_err(failed("promote_due"))?;
            let t1 = now(s).await?;
            let after = snapshot(s).await?;
            check_reap(&reaped, promoted, before, &after, t0, t1)?;
            Ok((
                after,
                (
                    "reap",
                    if reaped.is_empty() {
                        "empty"
                    } else {
                        "accepted"
                    },
                ),
            ))
        }
        Op::Cancel { job } => {
            let Some(id) = before.resolve(*job) else {
                return Ok((before.clone(), ("any", "no job yet")));
            };
            let t0 = now(s).await?;
            let answer = s.cancel(id).await;
            let t1 = now(s).await?;
            let after = snapshot(s).await?;
            check_cancel(id, &answer, before, &after, t0, t1)?;
            Ok((after, outcome_label("cancel", answer.as_ref().err())))
        }
        Op::Retry { job } => {
            let Some(id) = before.resolve(*job) else {
                return Ok((before.clone(), ("any", "no job yet")));
            };
            let t0 = now(s).await?;
            let answer = s.retry(id).await;
            let t1 = now(s).await?;
            let after = snapshot(s).await?;
            check_retry(id, &answer, before, &after, t0, t1)?;
            Ok((after, outcome_label("retry", answer.as_ref().err())))
        }
        Op::Advance { secs } => {
            h.advance(Duration::from_secs(*secs));
            let after = snapshot(s).await?;
            unchanged(before, &after, "moving the clock")?;
            Ok((after, ("advance", "accepted")))
        }
    }
}

fn check_enqueue(
    e: &EnqueueOp,
    out: &Enqueued,
    before: &Snapshot,
    after: &Snapshot,
    t0: i64,
    t1: i64,
) -> Check {
    let live = e.unique_key.and_then(|k| {
        before
            .jobs
            .values()
            .find(|j| j.unique_key.as_deref() == Some(UNIQUE_KEYS[k]) && !j.state.is_terminal())
    });
    if let Some(live) = live {
        ensure!(
            !out.created && out.job == *live,
            "an enqueue under the live unique key of job {} answered {out:?}",
            live.id
        );
        return unchanged(before, after, "a deduplicated enqueue");
    }
    let j = &out.job;
    ensure!(
        out.created,
        "an enqueue without a live duplicate was not created"
    );
    ensure!(
        !before.jobs.contains_key(&j.id),
        "a new job reused id {}",
        j.id
    );
    changed_exactly(before, after, &BTreeSet::from([j.id]))?;
    ensure!(
        after.job(j.id)? == j,
        "the enqueue's answer differs from the stored row"
    );
    let delay = e.delay_secs.map_or(0, |d| millis(Duration::from_secs(d)));
    within(
        j.available_at.0 - delay,
        t0,
        t1,
        "available_at less the delay",
    )?;
    let state = if e.delay_secs.is_some() {
        JobState::Scheduled
    } else {
        JobState::Available
    };
    ensure!(
        (j.state, j.epoch, j.attempt) == (state, 0, 0),
        "a new job is {} at epoch {} attempt {}",
        j.state,
        j.epoch,
        j.attempt
    );
    ensure!(
        j.queue == QUEUES[e.queue]
            && j.priority == e.priority
            && j.max_attempts == e.max_attempts
            && j.heartbeat_timeout == Duration::from_secs(e.heartbeat_timeout_secs)
            && j.max_run_duration == Duration::from_secs(e.max_run_secs)
            && j.requires == labels(e.requires)
            && j.unique_key.as_deref() == e.unique_key.map(|k| UNIQUE_KEYS[k]),
        "the stored job differs from its enqueue {e:?}: {j:?}"
    );
    let ev = one_event(before, after, j.id)?;
    ensure!(
        ev.event == EventKind::Enqueued
            && ev.by == Actor::Client
            && ev.detail.as_deref() == Some(state.as_str()),
        "a new job's history starts with {ev:?}"
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check_claim(
    p: &ClaimParams,
    got: &[Job],
    before: &Snapshot,
    after: &Snapshot,
    t0: i64,
    t1: i64,
    setup: &Setup,
) -> Check {
    ensure!(
        got.len() <= p.limit as usize,
        "a claim of {} took {}",
        p.limit,
        got.len()
    );
    let ids: BTreeSet<JobId> = got.iter().map(|j| j.id).collect();
    ensure!(ids.len() == got.len(), "a claim took a job twice: {ids:?}");
    if got.is_empty() {
        unchanged(before, after, "an empty claim")?;
    } else {
        changed_exactly(before, after, &ids)?;
    }
    let allowed = |queue: &str| {
        p.queues
            .as_ref()
            .is_none_or(|qs| qs.iter().any(|q| q == queue))
            && !setup.paused(queue)
    };
    let claimable = |j: &Job| {
        j.state == JobState::Available && allowed(&j.queue) && satisfies(&p.labels, &j.requires)
    };
    for c in got {
        let b = before.job(c.id)?;
        ensure!(
            claimable(b),
            "claimer {} (labels {:?}, queues {:?}) took job {b:?}",
            p.worker,
            p.labels,
            p.queues
        );
        let a = after.job(c.id)?;
        ensure!(a == c, "the claim's answer differs from the stored row");
        ensure!(
            a.state == JobState::Running && a.epoch == b.epoch + 1 && a.attempt == b.attempt + 1,
            "a claim moved job {} from {} epoch {} attempt {} to {} epoch {} attempt {}",
            a.id,
            b.state,
            b.epoch,
            b.attempt,
            a.state,
            a.epoch,
            a.attempt
        );
        ensure!(
            a.claimed_by.as_deref() == Some(p.worker.as_str()) && a.cancel_requested_at.is_none(),
            "a claimed job is owned by {:?} (cancel {:?})",
            a.claimed_by,
            a.cancel_requested_at
        );
        let at = a.claimed_at.ok_or("a claimed job has no claimed_at")?.0;
        within(at, t0, t1, "claimed_at")?;
        let lease = at + millis(a.max_run_duration.min(a.heartbeat_timeout));
        ensure!(
            a.heartbeat_at == Some(Timestamp(at)) && a.lease_expires_at == Some(Timestamp(lease)),
            "job {} claimed at {at}: heartbeat_at {:?}, lease {:?}, expected lease {lease}",
            a.id,
            a.heartbeat_at,
            a.lease_expires_at
        );
        let ev = one_event(before, after, c.id)?;
        ensure!(
            ev.event == EventKind::Claimed
                && ev.by == Actor::Executor
                && (ev.epoch, ev.attempt) == (a.epoch, a.attempt)
                && ev.worker == a.claimed_by,
            "a claim recorded {ev:?} for {a:?}"
        );
    }
    // What the claim left: nothing it could have taken (room permitting),
    // and nothing that comes before what it took.
    let room = |queue: &str| {
        setup.cap(queue).map_or(u64::MAX, |cap| {
            u64::from(cap).saturating_sub(after.running_in(queue))
        })
    };
    let global_room = setup
        .global
        .map_or(u64::MAX, |g| u64::from(g).saturating_sub(after.running()));
    let order = |j: &Job| (j.priority, j.available_at, j.id);
    for u in before
        .jobs
        .values()
        .filter(|j| claimable(j) && !ids.contains(&j.id))
    {
        if got.len() < p.limit as usize {
            ensure!(
                room(&u.queue) == 0 || global_room == 0,
                "a claim of {} took {} and left job {} ({}) with room in its queue and under the global cap",
                p.limit,
                got.len(),
                u.id,
                u.queue
            );
        }
        for c in got {
            let c = before.job(c.id)?;
            if c.queue == u.queue || (room(&u.queue) > 0 && global_room > 0) {
                ensure!(
                    order(u) > order(c),
                    "job {} was claimed ahead of job {}, which comes first in claim order",
                    c.id,
                    u.id
                );
            }
        }
    }
    Ok(())
}

fn check_heartbeat(
    id: JobId,
    epoch: i64,
    answer: &Result<HeartbeatAck, StoreError>,
    before: &Snapshot,
    after: &Snapshot,
    t0: i64,
    t1: i64,
) -> Check {
    let Some(b) = before.jobs.get(&id) else {
        ensure!(
            *answer == Err(StoreError::NotFound(id)),
            "a heartbeat to missing job {id} answered {answer:?}"
        );
        return unchanged(before, after, "a heartbeat to a missing job");
    };
    match answer {
        Ok(ack) => {
            ensure!(
                b.state == JobState::Running && b.epoch == epoch,
                "a heartbeat with epoch {epoch} was accepted by job {id}, {} at epoch {}",
                b.state,
                b.epoch
            );
            let lease = b.lease_expires_at.ok_or("a running job has no lease")?.0;
            ensure!(
                lease > t0,
                "a heartbeat was accepted on a lease that had passed ({lease} <= {t0})"
            );
            changed_exactly(before, after, &BTreeSet::from([id]))?;
            let a = after.job(id)?;
            let beat = a.heartbeat_at.ok_or("a heartbeat left no heartbeat_at")?.0;
            within(beat, t0, t1, "heartbeat_at")?;
            let claimed = b.claimed_at.ok_or("a running job has no claimed_at")?.0;
            let expected = if b.heartbeats && b.cancel_requested_at.is_none() {
                (claimed + millis(b.max_run_duration)).min(beat + millis(b.heartbeat_timeout))
            } else {
                lease
            };
            ensure!(
                a.lease_expires_at == Some(Timestamp(expected))
                    && ack.lease_expires_at == Timestamp(expected),
                "a heartbeat at {beat} left lease {:?} (ack {:?}), expected {expected}",
                a.lease_expires_at,
                ack.lease_expires_at
            );
            ensure!(
                a.heartbeat_count == b.heartbeat_count + 1
                    && ack.cancel_requested == b.cancel_requested_at.is_some(),
                "heartbeat count {} -> {}, ack {ack:?}",
                b.heartbeat_count,
                a.heartbeat_count
            );
            let mut rest = a.clone();
            rest.heartbeat_at = b.heartbeat_at;
            rest.heartbeat_count = b.heartbeat_count;
            rest.lease_expires_at = b.lease_expires_at;
            ensure!(
                rest == *b,
                "a heartbeat changed more than its lease: {b:?} -> {a:?}"
            );
            ensure!(
                new_events(before, after, id).is_empty(),
                "a heartbeat recorded events"
            );
        }
        Err(e) => {
            unchanged(before, after, "a refused heartbeat")?;
            let expected = if b.epoch != epoch {
                StoreError::StaleEpoch {
                    expected: b.epoch,
                    actual: epoch,
                }
            } else if b.state != JobState::Running {
                StoreError::NotRunning { state: b.state }
            } else {
                StoreError::LeaseExpired
            };
            ensure!(
                *e == expected,
                "a heartbeat with epoch {epoch} to {b:?} was refused with {e:?}, expected {expected:?}"
            );
            if expected == StoreError::LeaseExpired {
                ensure!(
                    b.lease_expires_at.is_some_and(|l| l.0 <= t1),
                    "a heartbeat on a live lease ({:?}, now {t1}) was refused",
                    b.lease_expires_at
                );
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check_finish(
    id: JobId,
    epoch: i64,
    outcome: WalkOutcome,
    answer: &Result<Job, StoreError>,
    before: &Snapshot,
    after: &Snapshot,
    t0: i64,
    t1: i64,
) -> Check {
    let Some(b) = before.jobs.get(&id) else {
        ensure!(
            matches!(answer, Err(StoreError::NotFound(n)) if *n == id),
            "a write-back to missing job {id} answered {answer:?}"
        );
        return unchanged(before, after, "a write-back to a missing job");
    };
    let fenced = if b.epoch != epoch {
        Some(StoreError::StaleEpoch {
            expected: b.epoch,
            actual: epoch,
        })
    } else if b.state != JobState::Running {
        Some(StoreError::NotRunning { state: b.state })
    } else {
        None
    };
    let job = match (answer, fenced) {
        (Err(e), Some(f)) => {
            ensure!(
                *e == f,
                "a write-back with epoch {epoch} to {b:?} was refused with {e:?}, expected {f:?}"
            );
            return unchanged(before, after, "a refused write-back");
        }
        (Err(e), None) => {
            return Err(format!(
                "a write-back with the current epoch of running job {id} was refused: {e:?}"
            ));
        }
        (Ok(job), Some(f)) => {
            return Err(format!(
                "a write-back with epoch {epoch} was accepted ({job:?}) where {f:?} was due: {b:?}"
            ));
        }
        (Ok(job), None) => job,
    };
    changed_exactly(before, after, &BTreeSet::from([id]))?;
    let a = after.job(id)?;
    ensure!(
        a == job,
        "the write-back's answer differs from the stored row"
    );
    ensure!(
        (a.epoch, a.attempt, a.claimed_at) == (b.epoch, b.attempt, b.claimed_at),
        "a write-back changed the run: {b:?} -> {a:?}"
    );
    let (state, reason) = match outcome {
        WalkOutcome::Succeed => (JobState::Succeeded, None),
        WalkOutcome::Fail(_) if b.cancel_requested_at.is_some() => {
            (JobState::Cancelled, Some(FailureReason::Cancelled))
        }
        WalkOutcome::Fail(r) if b.attempt < b.max_attempts && b.retries_reason(r) => {
            (JobState::Retryable, Some(r))
        }
        WalkOutcome::Fail(r) => (JobState::Failed, Some(r)),
    };
    ensure!(
        a.state == state && a.failure_reason == reason,
        "{outcome:?} of {b:?} left {} ({:?}), expected {state} ({reason:?})",
        a.state,
        a.failure_reason
    );
    if state.is_terminal() {
        within(
            a.finished_at.ok_or("a finished job has no finished_at")?.0,
            t0,
            t1,
            "finished_at",
        )?;
    } else {
        ensure!(
            a.finished_at.is_none() && a.available_at.0 >= t0,
            "a retryable job: finished_at {:?}, available_at {} before {t0}",
            a.finished_at,
            a.available_at.0
        );
    }
    let ev = one_event(before, after, id)?;
    ensure!(
        ev.event == event_of(state)
            && ev.by == Actor::Executor
            && ev.epoch == a.epoch
            && (reason.is_none() || ev.reason.as_deref() == reason.map(FailureReason::as_str)),
        "{outcome:?} recorded {ev:?}"
    );
    Ok(())
}

fn check_reap(
    reaped: &[Job],
    promoted: u64,
    before: &Snapshot,
    after: &Snapshot,
    t0: i64,
    t1: i64,
) -> Check {
    let reaped_ids: BTreeSet<JobId> = reaped.iter().map(|j| j.id).collect();
    ensure!(
        reaped_ids.len() == reaped.len(),
        "a run was reaped twice in one pass"
    );
    let promoted_ids: BTreeSet<JobId> = after
        .jobs
        .keys()
        .filter(|id| {
            new_events(before, after, **id)
                .iter()
                .any(|e| e.event == EventKind::Available)
        })
        .copied()
        .collect();
    ensure!(
        promoted_ids.len() as u64 == promoted,
        "promote_due said {promoted}, the histories show {promoted_ids:?}"
    );
    changed_exactly(
        before,
        after,
        &reaped_ids.union(&promoted_ids).copied().collect(),
    )?;
    for r in reaped {
        let b = before.job(r.id)?;
        ensure!(
            b.state == JobState::Running,
            "the reaper ended a {} job",
            b.state
        );
        let lease = b.lease_expires_at.ok_or("a running job has no lease")?.0;
        ensure!(
            lease <= t1,
            "the reaper ended a run whose lease ({lease}) had not passed ({t1})"
        );
        if !promoted_ids.contains(&r.id) {
            ensure!(
                after.job(r.id)? == r,
                "the reaper's answer differs from the stored row"
            );
        }
        ensure!(
            (r.epoch, r.attempt) == (b.epoch, b.attempt),
            "the reaper changed the run's epoch or attempt"
        );
        let (state, reason) = if b.cancel_requested_at.is_some() {
            (JobState::Cancelled, FailureReason::Cancelled)
        } else {
            let reason = r
                .failure_reason
                .ok_or("a reaped run has no failure reason")?;
            ensure!(
                matches!(
                    reason,
                    FailureReason::HeartbeatLost | FailureReason::Timeout
                ),
                "a reaped run ended with {reason}"
            );
            let hard_cap = b.claimed_at.ok_or("a running job has no claimed_at")?.0
                + millis(b.max_run_duration);
            ensure!(
                (hard_cap > t0 || reason == FailureReason::Timeout)
                    && (hard_cap <= t1 || reason == FailureReason::HeartbeatLost),
                "a run whose max_run_duration ends at {hard_cap} was reaped within [{t0}, {t1}] as {reason}"
            );
            let state = if b.attempt < b.max_attempts && b.retries_reason(reason) {
                JobState::Retryable
            } else {
                JobState::Failed
            };
            (state, reason)
        };
        ensure!(
            r.state == state && r.failure_reason == Some(reason),
            "reaping {b:?} left {} ({:?}), expected {state} ({reason})",
            r.state,
            r.failure_reason
        );
        let ev = new_events(before, after, r.id)
            .first()
            .ok_or("a reaped run recorded no event")?;
        ensure!(
            ev.event == event_of(state)
                && ev.by == Actor::Reaper
                && ev.reason.as_deref() == Some(reason.as_str()),
            "reaping recorded {ev:?}"
        );
    }
    for id in &promoted_ids {
        let b = before.job(*id)?;
        let from = if reaped_ids.contains(id) {
            JobState::Retryable
        } else {
            b.state
        };
        ensure!(
            matches!(from, JobState::Scheduled | JobState::Retryable),
            "a {from} job was promoted"
        );
        let a = after.job(*id)?;
        ensure!(
            a.state == JobState::Available && a.available_at.0 <= t1,
            "a promotion left {a:?} (now {t1})"
        );
        let ev = new_events(before, after, *id)
            .last()
            .ok_or("a promotion recorded no event")?;
        ensure!(
            ev.event == EventKind::Available && ev.by == Actor::Engine,
            "a promotion recorded {ev:?}"
        );
    }
    // Nothing overdue is left: a dead run never shows as running, and a due
    // job is claimable.
    for a in after.jobs.values() {
        ensure!(
            !(a.state == JobState::Running && a.lease_expires_at.is_some_and(|l| l.0 <= t0)),
            "job {} is still running after its lease ({:?}) passed and the reaper ran at {t0}",
            a.id,
            a.lease_expires_at
        );
        ensure!(
            !(matches!(a.state, JobState::Scheduled | JobState::Retryable)
                && a.available_at.0 <= t0),
            "job {} is {} though due at {} and promoted at {t0}",
            a.id,
            a.state,
            a.available_at.0
        );
    }
    Ok(())
}

fn check_cancel(
    id: JobId,
    answer: &Result<Job, StoreError>,
    before: &Snapshot,
    after: &Snapshot,
    t0: i64,
    t1: i64,
) -> Check {
    let Some(b) = before.jobs.get(&id) else {
        ensure!(
            matches!(answer, Err(StoreError::NotFound(n)) if *n == id),
            "a cancel of missing job {id} answered {answer:?}"
        );
        return unchanged(before, after, "a cancel of a missing job");
    };
    if b.state.is_terminal() {
        ensure!(
            *answer
                == Err(StoreError::InvalidState {
                    action: "cancel",
                    state: b.state
                }),
            "a cancel of a {} job answered {answer:?}",
            b.state
        );
        return unchanged(before, after, "a refused cancel");
    }
    if b.state == JobState::Running && b.cancel_requested_at.is_some() {
        ensure!(
            *answer == Ok(b.clone()),
            "a second cancel answered {answer:?}"
        );
        return unchanged(before, after, "a repeated cancel request");
    }
    let job = answer
        .as_ref()
        .map_err(|e| format!("a cancel of {b:?} was refused: {e}"))?;
    changed_exactly(before, after, &BTreeSet::from([id]))?;
    let a = after.job(id)?;
    ensure!(a == job, "the cancel's answer differs from the stored row");
    let ev = one_event(before, after, id)?;
    if b.state == JobState::Running {
        let requested = a
            .cancel_requested_at
            .ok_or("a cancel of a running job left no cancel_requested_at")?
            .0;
        within(requested, t0, t1, "cancel_requested_at")?;
        let lease = b.lease_expires_at.ok_or("a running job has no lease")?.0;
        let grace = millis(StoreConfig::default().cancel_grace);
        ensure!(
            a.state == JobState::Running
                && a.lease_expires_at == Some(Timestamp(lease.min(requested + grace))),
            "a cancel request left {} with lease {:?} (was {lease})",
            a.state,
            a.lease_expires_at
        );
        let mut rest = a.clone();
        rest.cancel_requested_at = None;
        rest.lease_expires_at = b.lease_expires_at;
        ensure!(
            rest == *b,
            "a cancel request changed more than the request and the lease"
        );
        ensure!(
            ev.event == EventKind::CancelRequested && ev.by == Actor::Operator,
            "a cancel request recorded {ev:?}"
        );
    } else {
        ensure!(
            a.state == JobState::Cancelled
                && a.failure_reason == Some(FailureReason::Cancelled)
                && (a.epoch, a.attempt) == (b.epoch, b.attempt),
            "a cancel of a waiting job left {a:?}"
        );
        within(
            a.finished_at.ok_or("a cancelled job has no finished_at")?.0,
            t0,
            t1,
            "finished_at",
        )?;
        ensure!(
            ev.event == EventKind::Cancelled
                && ev.by == Actor::Operator
                && ev.reason.as_deref() == Some("cancelled"),
            "a cancel recorded {ev:?}"
        );
    }
    Ok(())
}

fn check_retry(
    id: JobId,
    answer: &Result<Job, StoreError>,
    before: &Snapshot,
    after: &Snapshot,
    t0: i64,
    t1: i64,
) -> Check {
    let Some(b) = before.jobs.get(&id) else {
        ensure!(
            matches!(answer, Err(StoreError::NotFound(n)) if *n == id),
            "a retry of missing job {id} answered {answer:?}"
        );
        return unchanged(before, after, "a retry of a missing job");
    };
    if !matches!(b.state, JobState::Failed | JobState::Cancelled) {
        ensure!(
            *answer
                == Err(StoreError::InvalidState {
                    action: "retry",
                    state: b.state
                }),
            "a retry of a {} job answered {answer:?}",
            b.state
        );
        return unchanged(before, after, "a refused retry");
    }
    let held = b.unique_key.as_ref().is_some_and(|k| {
        before
            .jobs
            .values()
            .any(|o| o.id != id && o.unique_key.as_ref() == Some(k) && !o.state.is_terminal())
    });
    if held {
        ensure!(
            matches!(answer, Err(StoreError::Input(e)) if e.field == "unique_key"),
            "a retry under a held unique key answered {answer:?}"
        );
        return unchanged(before, after, "a retry refused for its unique key");
    }
    let job = answer
        .as_ref()
        .map_err(|e| format!("a retry of {b:?} was refused: {e}"))?;
    changed_exactly(before, after, &BTreeSet::from([id]))?;
    let a = after.job(id)?;
    ensure!(a == job, "the retry's answer differs from the stored row");
    ensure!(
        a.state == JobState::Available
            && (a.attempt, a.epoch) == (0, b.epoch)
            && a.finished_at.is_none()
            && a.failure_reason.is_none()
            && a.cancel_requested_at.is_none(),
        "a retry left {a:?}"
    );
    within(a.available_at.0, t0, t1, "a retried job's available_at")?;
    let ev = one_event(before, after, id)?;
    ensure!(
        ev.event == EventKind::Retried && ev.by == Actor::Operator && ev.attempt == 0,
        "a retry recorded {ev:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The invariants of the whole store, after every step.

fn check_store(snap: &Snapshot, claims: &BTreeMap<JobId, i64>, setup: &Setup) -> Check {
    for (id, job) in &snap.jobs {
        check_history(job, snap.events_of(*id)).map_err(|e| format!("job {id}: {e}"))?;
        let claimed = claims.get(id).copied().unwrap_or(0);
        ensure!(
            job.epoch == claimed,
            "job {id} is at epoch {} after {claimed} claims",
            job.epoch
        );
        ensure!(
            job.attempt <= job.max_attempts,
            "job {id} is at attempt {} of {}",
            job.attempt,
            job.max_attempts
        );
        ensure!(
            job.state.is_terminal() == job.finished_at.is_some(),
            "a {} job has finished_at {:?}",
            job.state,
            job.finished_at
        );
        if job.state == JobState::Running {
            let claimed_at = job.claimed_at.ok_or("a running job has no claimed_at")?.0;
            let lease = job.lease_expires_at.ok_or("a running job has no lease")?.0;
            ensure!(
                job.attempt >= 1 && job.claimed_by.is_some(),
                "running job {id} at attempt {} by {:?}",
                job.attempt,
                job.claimed_by
            );
            ensure!(
                lease <= claimed_at + millis(job.max_run_duration),
                "job {id}'s lease {lease} passes its max_run_duration"
            );
        }
    }
    for q in QUEUES {
        if let Some(cap) = setup.cap(q) {
            ensure!(
                snap.running_in(q) <= u64::from(cap),
                "queue {q} runs {} jobs, its cap is {cap}",
                snap.running_in(q)
            );
        }
        if setup.paused(q) {
            ensure!(snap.running_in(q) == 0, "paused queue {q} runs jobs");
        }
    }
    if let Some(global) = setup.global {
        ensure!(
            snap.running() <= u64::from(global),
            "{} jobs run, the global cap is {global}",
            snap.running()
        );
    }
    Ok(())
}

/// A job's history, event by event: each kind only from the states it may
/// leave and by its actor, epochs and attempts as claims and retries move
/// them, ending at the stored row.
fn check_history(job: &Job, events: &[Event]) -> Check {
    use JobState::*;
    let (first, rest) = events.split_first().ok_or("no history")?;
    ensure!(
        first.event == EventKind::Enqueued && first.by == Actor::Client,
        "the history starts with {first:?}"
    );
    let mut state: JobState = first
        .detail
        .as_deref()
        .unwrap_or("")
        .parse()
        .map_err(|e| format!("the enqueued event's state: {e}"))?;
    ensure!(
        matches!(state, Scheduled | Available) && (first.epoch, first.attempt) == (0, 0),
        "enqueued as {state} at epoch {} attempt {}",
        first.epoch,
        first.attempt
    );
    let (mut epoch, mut attempt) = (0i64, 0i32);
    let mut cancel_requested = false;
    let mut successes = 0;
    let mut previous = first;
    for e in rest {
        ensure!(
            e.job_id == job.id && e.id > previous.id && e.at >= previous.at,
            "event {e:?} out of order after {previous:?}"
        );
        previous = e;
        let by = e.by;
        let legal = match e.event {
            EventKind::Enqueued => false,
            EventKind::Available => matches!(state, Scheduled | Retryable) && by == Actor::Engine,
            EventKind::Claimed => state == Available && by == Actor::Executor,
            EventKind::Succeeded => state == Running && by == Actor::Executor,
            EventKind::Retryable | EventKind::Failed => {
                state == Running && matches!(by, Actor::Executor | Actor::Reaper)
            }
            EventKind::Cancelled => {
                (matches!(state, Scheduled | Available | Retryable) && by == Actor::Operator)
                    || (state == Running
                        && cancel_requested
                        && matches!(by, Actor::Executor | Actor::Reaper))
            }
            EventKind::CancelRequested => {
                state == Running && !cancel_requested && by == Actor::Operator
            }
            EventKind::Retried => matches!(state, Failed | Cancelled) && by == Actor::Operator,
            EventKind::Stalled | EventKind::Escalated => state == Running,
        };
        ensure!(legal, "{e:?} from state {state}");
        match e.event {
            EventKind::Claimed => {
                epoch += 1;
                attempt += 1;
                cancel_requested = false;
            }
            EventKind::Retried => attempt = 0,
            EventKind::CancelRequested => cancel_requested = true,
            EventKind::Succeeded => successes += 1,
            _ => {}
        }
        if matches!(e.event, EventKind::Retryable | EventKind::Failed) {
            let reason: FailureReason = e
                .reason
                .as_deref()
                .unwrap_or("")
                .parse()
                .map_err(|err| format!("{e:?}: {err}"))?;
            if by == Actor::Reaper {
                ensure!(
                    matches!(
                        reason,
                        FailureReason::HeartbeatLost | FailureReason::Timeout
                    ),
                    "the reaper ended a run with {reason}"
                );
            }
        }
        if e.event == EventKind::Cancelled {
            ensure!(
                e.reason.as_deref() == Some("cancelled"),
                "a cancel recorded reason {:?}",
                e.reason
            );
        }
        ensure!(
            (e.epoch, e.attempt) == (epoch, attempt),
            "{e:?} should carry epoch {epoch} attempt {attempt}"
        );
        if let Some(to) = e.event.resulting_state() {
            ensure!(
                state.can_transition(to),
                "illegal transition {state} -> {to}"
            );
            state = to;
        }
    }
    ensure!(successes <= 1, "{successes} successes");
    ensure!(
        (state, epoch, attempt) == (job.state, job.epoch, job.attempt),
        "the history replays to {state} epoch {epoch} attempt {attempt}, the row is {} epoch {} attempt {}",
        job.state,
        job.epoch,
        job.attempt
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The race walk: two handles at once.

/// An operation one of two racing handles applies.
#[derive(Debug, Clone)]
enum RaceOp {
    Claim(ClaimOp),
    Heartbeat {
        job: Pick,
        epoch_delta: i64,
    },
    Finish {
        job: Pick,
        epoch_delta: i64,
        outcome: WalkOutcome,
    },
}

impl RaceOp {
    fn pick(&self) -> Option<Pick> {
        match self {
            RaceOp::Claim(_) => None,
            RaceOp::Heartbeat { job, .. } | RaceOp::Finish { job, .. } => Some(*job),
        }
    }

    fn aimed_at(mut self, pick: Option<Pick>) -> RaceOp {
        if let (Some(p), RaceOp::Heartbeat { job, .. } | RaceOp::Finish { job, .. }) =
            (pick, &mut self)
        {
            *job = p;
        }
        self
    }
}

#[derive(Debug, Clone)]
enum RaceStep {
    /// One operation on the first handle, checked as the walk checks it.
    Solo(Op),
    /// Two operations at once, one per handle.
    Race(RaceOp, RaceOp),
}

#[derive(Debug, Clone)]
struct RaceCase {
    setup: Setup,
    steps: Vec<RaceStep>,
}

fn race_op_strategy() -> impl Strategy<Value = RaceOp> {
    prop_oneof![
        2 => claim_strategy().prop_map(RaceOp::Claim),
        1 => (pick_strategy(), epoch_delta_strategy())
            .prop_map(|(job, epoch_delta)| RaceOp::Heartbeat { job, epoch_delta }),
        3 => (pick_strategy(), epoch_delta_strategy(), outcome_strategy()).prop_map(
            |(job, epoch_delta, outcome)| RaceOp::Finish { job, epoch_delta, outcome }
        ),
    ]
}

fn race_step_strategy() -> impl Strategy<Value = RaceStep> {
    prop_oneof![
        2 => op_strategy().prop_map(RaceStep::Solo),
        // Mostly at the same job, so that the pair collides.
        3 => (race_op_strategy(), race_op_strategy(), proptest::bool::weighted(0.7)).prop_map(
            |(a, b, same)| {
                let pick = if same { a.pick() } else { None };
                RaceStep::Race(a, b.aimed_at(pick))
            }
        ),
    ]
}

fn race_strategy(max_steps: usize) -> impl Strategy<Value = RaceCase> {
    (
        setup_strategy(),
        proptest::collection::vec(race_step_strategy(), 1..=max_steps),
    )
        .prop_map(|(setup, steps)| RaceCase { setup, steps })
}

/// The race walk: the backend's budget of random cases, each with a second
/// handle on the same database.
pub async fn racing_handles_keep_the_job_invariants<H, F, Fut>(factory: F)
where
    H: Harness,
    F: Fn() -> Fut,
    Fut: Future<Output = H>,
{
    let backend = factory().await.store().backend();
    let budget = Budget::race(backend);
    run_cases(
        &factory,
        race_strategy(budget.steps),
        budget.cases,
        |h, case| async move { run_race(&h, &case).await },
    )
    .await;
}

/// A racing operation resolved against the rows before the race.
#[derive(Debug, Clone)]
enum Resolved {
    Claim(ClaimParams),
    Heartbeat(JobId, i64),
    Finish(JobId, i64, WalkOutcome),
    Nothing,
}

#[derive(Debug)]
enum RaceAnswer {
    Claimed(Vec<Job>),
    Beat(JobId, i64, Result<HeartbeatAck, StoreError>),
    Finished(JobId, i64, Box<Result<Job, StoreError>>),
    Nothing,
}

fn resolve(op: &RaceOp, before: &Snapshot) -> Resolved {
    match op {
        RaceOp::Claim(c) => Resolved::Claim(c.params()),
        RaceOp::Heartbeat { job, epoch_delta } => match before.resolve(*job) {
            Some(id) => Resolved::Heartbeat(id, before.epoch_of(id) + epoch_delta),
            None => Resolved::Nothing,
        },
        RaceOp::Finish {
            job,
            epoch_delta,
            outcome,
        } => match before.resolve(*job) {
            Some(id) => Resolved::Finish(id, before.epoch_of(id) + epoch_delta, *outcome),
            None => Resolved::Nothing,
        },
    }
}

async fn apply_race(s: &Arc<dyn Store>, op: Resolved) -> Result<RaceAnswer, String> {
    Ok(match op {
        Resolved::Claim(p) => RaceAnswer::Claimed(s.claim(p).await.map_err(failed("claim"))?),
        Resolved::Heartbeat(job, epoch) => RaceAnswer::Beat(
            job,
            epoch,
            s.heartbeat(HeartbeatParams {
                job,
                epoch,
                ..Default::default()
            })
            .await,
        ),
        Resolved::Finish(job, epoch, outcome) => {
            let mut answers = s
                .finish(vec![Finish {
                    job,
                    epoch,
                    outcome: outcome.outcome(),
                    output: None,
                }])
                .await
                .map_err(failed("finish"))?;
            ensure!(answers.len() == 1, "one finish answered {}", answers.len());
            RaceAnswer::Finished(job, epoch, Box::new(answers.remove(0)))
        }
        Resolved::Nothing => RaceAnswer::Nothing,
    })
}

async fn run_race(h: &impl Harness, case: &RaceCase) -> Check {
    let s = h.store();
    let other = h.connect().await;
    apply_setup(&s, &case.setup).await?;
    let mut claims: BTreeMap<JobId, i64> = BTreeMap::new();
    let mut before = snapshot(&s).await?;
    for (n, st) in case.steps.iter().enumerate() {
        let after = match st {
            RaceStep::Solo(op) => step(h, &s, &case.setup, &mut claims, &before, op)
                .await
                .map(|(after, _)| after),
            RaceStep::Race(a, b) => race(&s, &other, &case.setup, &mut claims, &before, a, b).await,
        }
        .map_err(|e| format!("step {n} {st:?}: {e}"))?;
        check_store(&after, &claims, &case.setup)
            .map_err(|e| format!("after step {n} {st:?}: {e}"))?;
        before = after;
    }
    Ok(())
}

async fn race(
    s: &Arc<dyn Store>,
    other: &Arc<dyn Store>,
    setup: &Setup,
    claims: &mut BTreeMap<JobId, i64>,
    before: &Snapshot,
    a: &RaceOp,
    b: &RaceOp,
) -> Result<Snapshot, String> {
    let (ra, rb) = (resolve(a, before), resolve(b, before));
    let t0 = now(s).await?;
    let (aa, ab) = tokio::join!(apply_race(s, ra.clone()), apply_race(other, rb.clone()));
    let answers = [aa?, ab?];
    let after = snapshot(s).await?;
    // Claims: disjoint, and each of a job that was claimable before.
    let mut claimed: BTreeMap<JobId, (i64, &str)> = BTreeMap::new();
    for (answer, resolved) in answers.iter().zip([&ra, &rb]) {
        let (RaceAnswer::Claimed(jobs), Resolved::Claim(p)) = (answer, resolved) else {
            continue;
        };
        ensure!(
            jobs.len() <= p.limit as usize,
            "a claim of {} took {}",
            p.limit,
            jobs.len()
        );
        for j in jobs {
            let b = before.job(j.id)?;
            ensure!(
                claimed.insert(j.id, (j.epoch, &p.worker)).is_none(),
                "both handles claimed job {}",
                j.id
            );
            ensure!(
                b.state == JobState::Available
                    && !setup.paused(&b.queue)
                    && satisfies(&p.labels, &b.requires)
                    && j.epoch == b.epoch + 1
                    && j.claimed_by.as_deref() == Some(p.worker.as_str()),
                "claimer {} took {b:?} as {j:?}",
                p.worker
            );
            *claims.entry(j.id).or_default() += 1;
        }
    }
    // Write-backs and heartbeats: accepted only at a running epoch, and one
    // run ends once.
    let mut targets: BTreeSet<JobId> = claimed.keys().copied().collect();
    let mut ended: BTreeSet<(JobId, i64)> = BTreeSet::new();
    for answer in &answers {
        let (id, epoch, accepted, refusal) = match answer {
            RaceAnswer::Beat(id, epoch, r) => (*id, *epoch, r.is_ok(), r.as_ref().err()),
            RaceAnswer::Finished(id, epoch, r) => (*id, *epoch, r.is_ok(), (**r).as_ref().err()),
            RaceAnswer::Claimed(_) | RaceAnswer::Nothing => continue,
        };
        targets.insert(id);
        if let Some(e) = refusal {
            ensure!(
                matches!(
                    e,
                    StoreError::StaleEpoch { .. }
                        | StoreError::NotRunning { .. }
                        | StoreError::LeaseExpired
                        | StoreError::NotFound(_)
                ),
                "a racing write to job {id} failed: {e:?}"
            );
            continue;
        }
        let was_running = before
            .jobs
            .get(&id)
            .is_some_and(|b| b.state == JobState::Running && b.epoch == epoch);
        let just_claimed = claimed.get(&id).is_some_and(|(e, _)| *e == epoch);
        ensure!(
            accepted && (was_running || just_claimed),
            "a racing write with epoch {epoch} was accepted by job {id}, which did not run at that epoch: {:?}",
            before.jobs.get(&id)
        );
        if let RaceAnswer::Beat(..) = answer
            && was_running
        {
            let lease = before.job(id)?.lease_expires_at.map_or(i64::MIN, |l| l.0);
            ensure!(
                lease > t0,
                "a racing heartbeat was accepted on a lease that had passed"
            );
        }
        if let RaceAnswer::Finished(..) = answer {
            ensure!(
                ended.insert((id, epoch)),
                "the run of job {id} at epoch {epoch} was ended twice"
            );
            let ends = new_events(before, &after, id)
                .iter()
                .filter(|e| {
                    e.epoch == epoch
                        && e.by == Actor::Executor
                        && matches!(
                            e.event,
                            EventKind::Succeeded
                                | EventKind::Retryable
                                | EventKind::Failed
                                | EventKind::Cancelled
                        )
                })
                .count();
            ensure!(
                ends == 1,
                "an accepted write-back to job {id} at epoch {epoch} recorded {ends} run ends"
            );
        }
    }
    let seen = changed(before, &after)?;
    ensure!(
        seen.is_subset(&targets),
        "a race on {targets:?} changed jobs {seen:?}"
    );
    Ok(after)
}
