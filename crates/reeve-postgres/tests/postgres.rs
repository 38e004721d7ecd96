//! PostgreSQL-specific behaviour beyond the shared suite: wake-ups across
//! processes (LISTEN/NOTIFY), the listener's reconnect, caps under claimers
//! in separate stores, and credentials kept out of errors. Each test runs in
//! a schema of its own; without a reachable server (and without `CI`) the
//! tests return early after `common::server` says so on stderr.

mod common;

use std::sync::Arc;
use std::time::Duration;

use reeve_core::NewJob;
use reeve_postgres::{PostgresOptions, PostgresStore};
use reeve_store::{ClaimParams, KindFilter, Limits, QueuePatch, Store, conformance};
use tokio::sync::watch;

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

/// Waits until `cond` holds, polling; panics with `what` after `within`.
async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the listener's first connect, whose catch-up signals are then
/// already raised, so a receiver marked seen afterwards sees only later
/// changes.
async fn listening(store: &PostgresStore) {
    eventually("the listener to connect", Duration::from_secs(5), || {
        store.listener_connects() >= 1
    })
    .await;
}

async fn changed_within(rx: &mut watch::Receiver<u64>, within: Duration) -> bool {
    matches!(tokio::time::timeout(within, rx.changed()).await, Ok(Ok(())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_in_another_store_wakes_an_idle_claimer() {
    let Some(db) = common::TestDb::new().await else {
        return;
    };
    let a = db.open().await;
    let b = db.open().await;
    listening(&a).await;
    let mut rx = a.signals().work.subscribe();
    rx.borrow_and_update();
    // A claims, finds nothing, and would now sleep on its work signal.
    assert!(a.claim(claim("a", 1)).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !rx.has_changed().unwrap(),
        "nothing happened yet, so nothing should wake A"
    );
    // Another process enqueues.
    b.enqueue(vec![NewJob::new("default", "wake")])
        .await
        .unwrap();
    assert!(
        changed_within(&mut rx, Duration::from_secs(5)).await,
        "A's work signal was not raised by B's enqueue"
    );
    let got = a.claim(claim("a", 1)).await.unwrap();
    assert_eq!(got.len(), 1, "A claims what B enqueued");
    // And the other way: A's claim moves a deadline B's engine sleeps on.
    let mut deadlines = b.signals().deadlines.subscribe();
    deadlines.borrow_and_update();
    b.enqueue(vec![NewJob::new("default", "two")])
        .await
        .unwrap();
    // B's own listener echoes B's notification back; let it land first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    deadlines.borrow_and_update();
    a.claim(claim("a", 1)).await.unwrap();
    assert!(
        changed_within(&mut deadlines, Duration::from_secs(5)).await,
        "B's deadlines signal was not raised by A's claim"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_of_other_schemas_are_ignored() {
    let Some(db) = common::TestDb::new().await else {
        return;
    };
    let Some(other_db) = common::TestDb::new().await else {
        return;
    };
    let mine = db.open().await;
    let theirs = other_db.open().await;
    listening(&mine).await;
    let mut rx = mine.signals().work.subscribe();
    rx.borrow_and_update();
    theirs
        .enqueue(vec![NewJob::new("default", "elsewhere")])
        .await
        .unwrap();
    assert!(
        !changed_within(&mut rx, Duration::from_millis(500)).await,
        "a store woke up for another schema's enqueue"
    );
}

/// 8 claimers on 4 separate stores (separate pools, as separate daemons
/// would be) race under caps of 2 global / 1 per queue over 3 queues. The
/// event history replayed in event-id order never shows more running jobs
/// than a cap, and every job succeeds exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimers_in_separate_stores_never_exceed_caps() {
    let Some(db) = common::TestDb::new().await else {
        return;
    };
    const JOBS: usize = 120;
    let queues = ["q1", "q2", "q3"];
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(db.open().await);
    }
    let s = stores[0].clone();
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
        .map(|i| NewJob::new(queues[i % 3], "work"))
        .collect();
    let ids: Vec<i64> = s
        .enqueue(batch)
        .await
        .unwrap()
        .iter()
        .map(|e| e.job.id)
        .collect();
    let started = std::time::Instant::now();
    let mut handles = Vec::new();
    for w in 0..8 {
        let store = stores[w % 4].clone();
        let sampler = stores[(w + 1) % 4].clone();
        handles.push(tokio::spawn(conformance::claim_and_complete_until_idle(
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
    eprintln!(
        "{JOBS} capped claims across 4 stores in {:?}",
        started.elapsed()
    );
    assert_eq!(total, JOBS, "every job completed exactly once");
    let s: Arc<dyn Store> = stores[0].clone();
    conformance::assert_history_within_caps(&s, &ids, 2, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_its_backend_is_terminated() {
    let Some(db) = common::TestDb::new().await else {
        return;
    };
    let a = db.open().await;
    let b = db.open().await;
    listening(&a).await;
    let old_pid = a.listener_backend_pid().expect("a listening backend");
    let mut rx = a.signals().work.subscribe();
    rx.borrow_and_update();

    // Terminate exactly A's listener connection: its pid, double-checked by
    // the application name the listener sets and by this database.
    let app = format!("reeve-listener-{}", db.schema);
    let mut admin = db.admin().await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE pid = $1 AND application_name = $2 AND datname = current_database()",
    )
    .bind(old_pid)
    .bind(&app)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(killed, [true], "terminated the listener's backend");

    eventually("the listener to reconnect", Duration::from_secs(10), || {
        a.listener_connects() >= 2
    })
    .await;
    let new_pid = a.listener_backend_pid().expect("listening again");
    assert_ne!(new_pid, old_pid);
    assert!(
        rx.has_changed().unwrap(),
        "a reconnect raises the work signal (notifications may have been missed)"
    );
    rx.borrow_and_update();

    b.enqueue(vec![NewJob::new("default", "after-reconnect")])
        .await
        .unwrap();
    assert!(
        changed_within(&mut rx, Duration::from_secs(5)).await,
        "notifications flow again after the reconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_stops_the_listener_connection() {
    let Some(db) = common::TestDb::new().await else {
        return;
    };
    let a = db.open().await;
    listening(&a).await;
    let pid = a.listener_backend_pid().expect("listening");
    a.close().await;
    let mut admin = db.admin().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let alive: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        if alive == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener's connection outlived close()"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.now().await.is_err(), "a closed store refuses work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_reads_the_database_clock() {
    let Some(db) = common::TestDb::new().await else {
        return;
    };
    let a = db.open().await;
    let b = db.open().await;
    let (ta, tb) = (a.now().await.unwrap(), b.now().await.unwrap());
    assert!((ta.0 - tb.0).abs() < 5_000, "{ta:?} vs {tb:?}");
    a.advance_clock(Duration::from_secs(3600));
    let ta = a.now().await.unwrap();
    assert!(ta.0 - tb.0 >= 3_600_000, "the offset moves only A's clock");
    assert_eq!(a.clock_offset(), Duration::from_secs(3600));
    assert_eq!(a.backend(), "postgres");
    assert_eq!(a.schema(), db.schema);
}

#[tokio::test]
async fn connection_errors_name_the_target_but_never_the_password() {
    // Port 1 on loopback: refused at once, no server needed.
    let opts = PostgresOptions::from_url("postgres://reeve:hunter2-secret@127.0.0.1:1/reevedb")
        .unwrap()
        .acquire_timeout(Duration::from_secs(2));
    let err = PostgresStore::open_with(opts, Default::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1/reevedb"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        err.is_transient(),
        "a refused connection is transient: {text}"
    );
    let err = PostgresStore::open_with(
        PostgresOptions::from_url("postgres://u:hunter2@127.0.0.1:1/x")
            .unwrap()
            .schema("Not Valid"),
        Default::default(),
    )
    .await
    .unwrap_err();
    assert!(!err.to_string().contains("hunter2"));
    assert!(err.is_refusal(), "a bad schema name is an input error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_a_schema_keeps_its_jobs() {
    let Some(db) = common::TestDb::new().await else {
        return;
    };
    let a = db.open().await;
    let j = a
        .enqueue(vec![NewJob::new("default", "durable")])
        .await
        .unwrap()
        .remove(0)
        .job;
    a.close().await;
    drop(a);
    let b = db.open().await;
    assert_eq!(
        b.get_job(j.id).await.unwrap(),
        j,
        "migrations are idempotent"
    );
    let _: Arc<dyn Store> = b;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_per_schema_until_it_releases() {
    let Some(db) = common::TestDb::new().await else {
        return;
    };
    let a = db.open().await.leadership();
    let b = db.open().await.leadership();
    assert!(a.contested());
    assert!(!a.confirm().await, "not leading before acquiring");
    assert!(a.try_acquire().await.unwrap());
    assert!(
        a.try_acquire().await.unwrap(),
        "a leader that asks again still leads"
    );
    assert!(!b.try_acquire().await.unwrap(), "one leader at a time");
    assert!(a.confirm().await);
    assert!(!b.confirm().await);
    a.release().await;
    assert!(!a.confirm().await, "released");
    assert!(b.try_acquire().await.unwrap(), "another takes over at once");
    assert!(!a.try_acquire().await.unwrap());
    b.release().await;

    // Another schema's leader does not compete.
    let Some(other_db) = common::TestDb::new().await else {
        return;
    };
    let c = other_db.open().await.leadership();
    assert!(a.try_acquire().await.unwrap());
    assert!(c.try_acquire().await.unwrap(), "leaders are per schema");
    a.release().await;
    c.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_session_dies_is_deposed() {
    let Some(db) = common::TestDb::new().await else {
        return;
    };
    let a = db.open().await.leadership();
    let b = db.open().await.leadership();
    assert!(a.try_acquire().await.unwrap());
    assert!(!b.try_acquire().await.unwrap());
    // Kill the session that holds this schema's leader lock.
    let app = format!("reeve-leader-{}", db.schema);
    let mut admin = db.admin().await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_stat_activity s USING (pid) \
         WHERE l.locktype = 'advisory' AND l.granted AND s.application_name = $1 \
           AND s.datname = current_database()",
    )
    .bind(&app)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(killed, [true], "terminated the leader's session");
    assert!(!a.confirm().await, "a leader without its session stops");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !b.try_acquire().await.unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "nobody took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !a.try_acquire().await.unwrap(),
        "the old leader follows now"
    );
    b.release().await;
}

/// Runs `write` while another transaction holds job `id`'s row lock, as a
/// racing transition of the job would, for long enough that `write` reads
/// any clock it reads before its lock is granted; answers what `write`
/// answered and the store's clock just before the lock was let go.
async fn while_a_racing_transaction_holds<T>(
    db: &common::TestDb,
    store: &PostgresStore,
    id: i64,
    write: impl std::future::Future<Output = T>,
) -> (T, i64) {
    use sqlx::Connection;
    let mut admin = db.admin().await;
    let mut tx = admin.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {}.jobs WHERE id = $1 FOR UPDATE",
        db.schema
    )))
    .bind(id)
    .execute(&mut *tx)
    .await
    .unwrap();
    let release = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let at = store.now().await.unwrap().0;
        tx.commit().await.unwrap();
        at
    };
    tokio::join!(write, release)
}

/// Found by the race walk: a write-back that read the clock before waiting
/// for a racing claim's row lock recorded its run's end before the claim.
/// Write-backs, cancels and retries read the clock once their job's row is
/// theirs, so a job's history stays in time order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_waited_for_a_row_lock_are_stamped_after_the_wait() {
    use reeve_core::{FailureReason, JobState};
    use reeve_store::{Finish, Outcome};
    let Some(db) = common::TestDb::new().await else {
        return;
    };
    let s = db.open().await;
    let in_order = |events: &[reeve_core::Event], released: i64, what: &str| {
        let last = events.last().expect("a history");
        assert!(
            last.at.0 >= released,
            "{what} was recorded at {}, before the lock it waited for was let go at {released}",
            last.at.0
        );
        assert!(
            events.windows(2).all(|w| w[0].at <= w[1].at),
            "{what}: the history goes back in time: {events:?}"
        );
    };

    // A write-back.
    s.enqueue(vec![NewJob::new("default", "end")])
        .await
        .unwrap();
    let run = s.claim(claim("w", 1)).await.unwrap().remove(0);
    let finish = Finish {
        job: run.id,
        epoch: run.epoch,
        outcome: Outcome::Failed {
            reason: FailureReason::AuthFailed,
            error: None,
        },
        output: None,
    };
    let (answer, released) =
        while_a_racing_transaction_holds(&db, &s, run.id, s.finish(vec![finish])).await;
    let failed = answer.unwrap().remove(0).unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert!(
        failed.finished_at.unwrap().0 >= released,
        "the write-back's finished_at is before the lock was let go"
    );
    in_order(
        &s.job_events(run.id).await.unwrap(),
        released,
        "the write-back",
    );

    // A retry of that failed job.
    let (answer, released) =
        while_a_racing_transaction_holds(&db, &s, run.id, s.retry(run.id)).await;
    let retried = answer.unwrap();
    assert!(
        retried.available_at.0 >= released,
        "the retry's available_at is before the lock was let go"
    );
    in_order(&s.job_events(run.id).await.unwrap(), released, "the retry");

    // A cancel of the waiting job.
    let (answer, released) =
        while_a_racing_transaction_holds(&db, &s, run.id, s.cancel(run.id)).await;
    let cancelled = answer.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(
        cancelled.finished_at.unwrap().0 >= released,
        "the cancel's finished_at is before the lock was let go"
    );
    in_order(&s.job_events(run.id).await.unwrap(), released, "the cancel");
}
