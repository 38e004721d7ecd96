//! reeve's side: one measurement with every guarantee on (the real
//! `SqliteStore` and `Engine`: fencing, caps checked in each claim, an event
//! row per transition), by the method of `reeve bench`
//! (`crates/reeve/src/bench.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reeve_core::NewJob;
use reeve_engine::{Engine, EngineConfig, Handler, Handlers, Run};
use reeve_sqlite::{SqliteOptions, SqliteStore};
use reeve_store::{Outcome, Store, StoreConfig};
use tokio::sync::mpsc;

use crate::{BATCH, Figures, WARMUP, percentile};

struct Noop(Arc<AtomicU64>);

#[async_trait]
impl Handler for Noop {
    async fn run(&self, _run: Run) -> Outcome {
        self.0.fetch_add(1, Ordering::Relaxed);
        Outcome::Succeeded { result: None }
    }
}

struct Stamp(mpsc::UnboundedSender<Instant>);

#[async_trait]
impl Handler for Stamp {
    async fn run(&self, _run: Run) -> Outcome {
        let _ = self.0.send(Instant::now());
        Outcome::Succeeded { result: None }
    }
}

/// The engine settings `reeve bench` uses.
fn engine_config(name: String) -> EngineConfig {
    let mut c = EngineConfig::new(name);
    c.slots = 512;
    c.claim_batch = 128;
    c.maintenance = false;
    c
}

/// Enqueues `jobs` in batches into a fresh database, processes them with
/// `workers` engines, then samples idle latency `samples` times.
/// `synchronous` is reeve's URL parameter (`full`, its default, or `normal`).
pub async fn measure(
    jobs: u32,
    workers: u32,
    samples: u32,
    synchronous: &str,
) -> anyhow::Result<Figures> {
    let tmp = tempfile::tempdir()?;
    let url = format!(
        "sqlite://{}?synchronous={synchronous}",
        tmp.path().join("reeve.db").display()
    );
    let opts = SqliteOptions::from_url(&url).map_err(anyhow::Error::msg)?;
    let store = Arc::new(SqliteStore::open(&opts, StoreConfig::default()).await?);
    let dyn_store: Arc<dyn Store> = store.clone();

    // 1. Enqueue.
    let started = Instant::now();
    let mut left = jobs;
    while left > 0 {
        let n = left.min(BATCH);
        let batch = (0..n).map(|_| NewJob::new("bench", "noop")).collect();
        dyn_store.enqueue(batch).await?;
        left -= n;
    }
    let enqueue_s = started.elapsed().as_secs_f64();

    // 2. Process. An engine counts a run finished once its write-back has
    // committed, so the clock stops when the database holds no unfinished job.
    let ran = Arc::new(AtomicU64::new(0));
    let total = u64::from(jobs);
    let deadline = Instant::now() + Duration::from_secs(600);
    let started = Instant::now();
    let engines: Vec<Arc<Engine>> = (0..workers)
        .map(|w| {
            let handlers = Handlers::new().kind("noop", Arc::new(Noop(ran.clone())));
            Engine::start(
                dyn_store.clone(),
                engine_config(format!("bench-{w}")),
                handlers,
            )
        })
        .collect();
    loop {
        let finished: u64 = engines
            .iter()
            .map(|e| e.stats().finished.load(Ordering::Relaxed))
            .sum();
        if finished >= total {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "processing did not finish within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let process_s = started.elapsed().as_secs_f64();
    for e in &engines {
        e.shutdown(Duration::from_secs(5)).await;
    }
    let status = dyn_store.status().await?;
    anyhow::ensure!(
        status.by_state.get("succeeded").copied().unwrap_or(0) == total
            && status.by_state.values().sum::<u64>() == total
            && ran.load(Ordering::Relaxed) == total,
        "not every job succeeded exactly once: {status:?}, {} handler runs",
        ran.load(Ordering::Relaxed)
    );

    // 3. Idle latency.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let engine = Engine::start(
        dyn_store.clone(),
        engine_config("bench-latency".into()),
        Handlers::new().kind("stamp", Arc::new(Stamp(tx))),
    );
    let mut latencies = Vec::with_capacity(samples as usize);
    for i in 0..(WARMUP + samples) {
        tokio::time::sleep(Duration::from_millis(2)).await;
        dyn_store
            .enqueue(vec![NewJob::new("latency", "stamp")])
            .await?;
        let enqueued = Instant::now();
        let began = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("an idle job did not start within 10s"))?
            .ok_or_else(|| anyhow::anyhow!("the latency handler stopped"))?;
        if i >= WARMUP {
            latencies.push(began.saturating_duration_since(enqueued).as_secs_f64() * 1000.0);
        }
    }
    engine.shutdown(Duration::from_secs(5)).await;
    store.close().await;

    Ok(Figures {
        enqueue_jobs_per_s: f64::from(jobs) / enqueue_s,
        process_jobs_per_s: f64::from(jobs) / process_s,
        latency_ms_p50: percentile(&mut latencies, 0.5),
        latency_ms_p99: percentile(&mut latencies, 0.99),
    })
}
