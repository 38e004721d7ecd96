//! effectum 0.7.0's side of `reeve-bench-compare`: one measurement in a fresh
//! process, printed as one JSON line. The driver (`../src/main.rs`) runs it;
//! it is a separate cargo project because effectum's SQLite bindings cannot
//! share a dependency graph with reeve's.
//!
//! Same method as reeve's side, on a fresh database file with
//! `journal_mode=WAL` set before effectum opens it (effectum 0.7.0 issues
//! `PRAGMA journal` instead, so as shipped it stays in rollback-journal mode):
//!
//! 1. **Enqueue**: `--jobs` no-op jobs with `Queue::add_jobs`, 1,000 per call.
//! 2. **Process**: one `Worker` with `max_concurrency` `--concurrency` starts
//!    on the pre-filled queue; the clock stops when every handler has run and
//!    the database shows no unfinished job (`active_jobs` empty).
//! 3. **Latency**: on the idle queue, from `add_to` returning to the handler
//!    starting; 20 warm-up samples, then `--samples`.
//!
//! Usage: `effectum-peer [--jobs N] [--concurrency C] [--samples S]`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use effectum::{Job, JobRunner, Queue, RunningJob, Worker};
use tokio::sync::mpsc;

const BATCH: u32 = 1000;
const WARMUP: u32 = 20;

struct Args {
    jobs: u32,
    concurrency: u16,
    samples: u32,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        jobs: 20_000,
        concurrency: 10,
        samples: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--jobs" => args.jobs = value.parse().context("--jobs")?,
            "--concurrency" => args.concurrency = value.parse().context("--concurrency")?,
            "--samples" => args.samples = value.parse().context("--samples")?,
            _ => bail!("unknown flag {flag} (known: --jobs, --concurrency, --samples)"),
        }
    }
    ensure!(
        args.jobs > 0 && args.concurrency > 0 && args.samples > 0,
        "--jobs, --concurrency and --samples must be at least 1"
    );
    Ok(args)
}

/// Counts handler runs.
#[derive(Debug, Clone, Default)]
struct Counter(Arc<AtomicU64>);

/// Sends the instant each handler starts.
#[derive(Debug, Clone)]
struct Stamps(mpsc::UnboundedSender<Instant>);

/// `(state, count)` for every job state in the database.
fn job_states(db: &rusqlite::Connection) -> anyhow::Result<Vec<(String, u64)>> {
    let mut stmt =
        db.prepare("SELECT COALESCE(status, 'null'), COUNT(*) FROM jobs GROUP BY 1 ORDER BY 1")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn unfinished(db: &rusqlite::Connection) -> anyhow::Result<u64> {
    Ok(db.query_row("SELECT COUNT(*) FROM active_jobs", [], |r| r.get(0))?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("effectum.db");

    // WAL persists in the file, so effectum's own connections all use it.
    let db = rusqlite::Connection::open(&path)?;
    let mode: String = db.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    ensure!(
        mode.eq_ignore_ascii_case("wal"),
        "journal_mode is {mode}, not wal"
    );
    let queue = Queue::new(Path::new(&path)).await?;

    // 1. Enqueue.
    let started = Instant::now();
    let mut left = args.jobs;
    while left > 0 {
        let n = left.min(BATCH);
        let batch = (0..n).map(|_| Job::builder("noop").build()).collect();
        queue.add_jobs(batch).await?;
        left -= n;
    }
    let enqueue_s = started.elapsed().as_secs_f64();

    // 2. Process.
    let ran = Counter::default();
    let noop = JobRunner::builder("noop", |_job: RunningJob, ran: Counter| async move {
        ran.0.fetch_add(1, Ordering::Relaxed);
        Ok::<_, effectum::Error>(())
    })
    .build();
    let total = u64::from(args.jobs);
    let deadline = Instant::now() + Duration::from_secs(600);
    let started = Instant::now();
    let worker = Worker::builder(&queue, ran.clone())
        .max_concurrency(args.concurrency)
        .jobs([noop])
        .build()
        .await?;
    while ran.0.load(Ordering::Relaxed) < total {
        ensure!(
            Instant::now() < deadline,
            "processing did not finish within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Every handler has run; wait for the last completions to commit.
    while unfinished(&db)? > 0 {
        ensure!(
            Instant::now() < deadline,
            "processing did not finish within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let process_s = started.elapsed().as_secs_f64();
    worker.unregister(Some(Duration::from_secs(5))).await?;
    let states = job_states(&db)?;
    ensure!(
        states == [("succeeded".to_string(), total)] && ran.0.load(Ordering::Relaxed) == total,
        "not every job succeeded exactly once: {states:?}, {} handler runs",
        ran.0.load(Ordering::Relaxed)
    );

    // 3. Idle latency.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stamp = JobRunner::builder("stamp", |_job: RunningJob, stamps: Stamps| async move {
        let _ = stamps.0.send(Instant::now());
        Ok::<_, effectum::Error>(())
    })
    .build();
    let worker = Worker::builder(&queue, Stamps(tx))
        .max_concurrency(args.concurrency)
        .jobs([stamp])
        .build()
        .await?;
    let mut samples = Vec::with_capacity(args.samples as usize);
    for i in 0..(WARMUP + args.samples) {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Job::builder("stamp").add_to(&queue).await?;
        let enqueued = Instant::now();
        let began = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .context("an idle job did not start within 10s")?
            .context("the latency handler stopped")?;
        if i >= WARMUP {
            samples.push(began.saturating_duration_since(enqueued).as_secs_f64() * 1000.0);
        }
    }
    worker.unregister(Some(Duration::from_secs(5))).await?;
    queue.close(Duration::from_secs(5)).await?;
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];

    let report = serde_json::json!({
        "product": "effectum",
        "enqueue_jobs_per_s": f64::from(args.jobs) / enqueue_s,
        "process_jobs_per_s": f64::from(args.jobs) / process_s,
        "latency_ms_p50": pct(0.5),
        "latency_ms_p99": pct(0.99),
        "latency_samples": samples.len(),
    });
    println!("{report}");
    Ok(())
}
