//! `reeve bench`: measures a store with every guarantee on (fencing, caps
//! checked in each claim, an event row per transition).
//!
//! 1. **Enqueue**: `--jobs` no-op jobs in batches of 1,000.
//! 2. **Process**: `--workers` engines claim and run them with an in-process
//!    no-op handler; the clock stops when every write-back has committed.
//! 3. **Latency**: on an idle queue, from an enqueue returning to its handler
//!    starting; 20 warm-up samples, then `--samples`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reeve_core::NewJob;
use reeve_engine::{Engine, EngineConfig, Handler, Handlers, Run};
use reeve_store::{Outcome, Store, StoreConfig};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::cli::BenchArgs;

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

#[derive(Debug, Serialize)]
struct Report {
    backend: String,
    jobs: u32,
    workers: u32,
    enqueue_jobs_per_s: f64,
    process_jobs_per_s: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    latency_samples: usize,
}

fn engine_config(name: String) -> EngineConfig {
    let mut c = EngineConfig::new(name);
    c.slots = 512;
    c.claim_batch = 128;
    c.maintenance = false;
    c
}

pub async fn run(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.jobs == 0 || args.workers == 0 {
        anyhow::bail!("--jobs and --workers must be at least 1");
    }
    let tmp = tempfile::tempdir()?;
    let url = args
        .db
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", tmp.path().join("bench.db").display()));
    // PostgreSQL: a fresh schema of its own, dropped at the end.
    let (dyn_store, throwaway): (Arc<dyn Store>, Option<Arc<reeve_postgres::PostgresStore>>) =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let schema = format!("reeve_bench_{}", std::process::id());
            let opts = reeve_postgres::PostgresOptions::from_url(&url)?.schema(schema);
            let pg = Arc::new(
                reeve_postgres::PostgresStore::open_with(opts, StoreConfig::default()).await?,
            );
            (pg.clone(), Some(pg))
        } else {
            let database = crate::database::DatabaseConfig::from_parts(&url, &Default::default())?;
            (database.open(StoreConfig::default()).await?, None)
        };

    if args.dashboard {
        let result = crate::bench_dashboard::run(dyn_store.clone(), args.jobs).await;
        match throwaway {
            Some(pg) => pg.drop_schema_and_close().await?,
            None => dyn_store.close().await,
        }
        let report = result?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!("{}", report.table());
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }

    if let Some(firings) = args.firings {
        let result = firing_lag(dyn_store.clone(), firings, args.json).await;
        match throwaway {
            Some(pg) => pg.drop_schema_and_close().await?,
            None => dyn_store.close().await,
        }
        return result;
    }

    // 1. Enqueue.
    let started = Instant::now();
    let mut left = args.jobs;
    while left > 0 {
        let n = left.min(1000);
        let batch = (0..n).map(|_| NewJob::new("bench", "noop")).collect();
        dyn_store.enqueue(batch).await?;
        left -= n;
    }
    let enqueue_s = started.elapsed().as_secs_f64();

    // 2. Process.
    let ran = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let engines: Vec<Arc<Engine>> = (0..args.workers)
        .map(|w| {
            let handlers = Handlers::new().kind("noop", Arc::new(Noop(ran.clone())));
            Engine::start(
                dyn_store.clone(),
                engine_config(format!("bench-{w}")),
                handlers,
            )
        })
        .collect();
    let total = u64::from(args.jobs);
    let deadline = Instant::now() + Duration::from_secs(600);
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
        status.by_state.get("succeeded").copied().unwrap_or(0) >= total
            && ran.load(Ordering::Relaxed) == total,
        "not every job succeeded exactly once: {status:?}"
    );

    // 3. Idle latency.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let engine = Engine::start(
        dyn_store.clone(),
        engine_config("bench-latency".into()),
        Handlers::new().kind("stamp", Arc::new(Stamp(tx))),
    );
    let mut samples = Vec::with_capacity(args.samples as usize);
    for i in 0..(20 + args.samples) {
        tokio::time::sleep(Duration::from_millis(2)).await;
        dyn_store
            .enqueue(vec![NewJob::new("latency", "stamp")])
            .await?;
        let enqueued = Instant::now();
        let began = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("an idle job did not start within 10s"))?
            .ok_or_else(|| anyhow::anyhow!("latency handler stopped"))?;
        if i >= 20 {
            samples.push(began.saturating_duration_since(enqueued).as_secs_f64() * 1000.0);
        }
    }
    engine.shutdown(Duration::from_secs(5)).await;
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];

    let report = Report {
        backend: dyn_store.backend().to_string(),
        jobs: args.jobs,
        workers: args.workers,
        enqueue_jobs_per_s: (f64::from(args.jobs) / enqueue_s).round(),
        process_jobs_per_s: (f64::from(args.jobs) / process_s).round(),
        latency_ms_p50: (pct(0.5) * 1000.0).round() / 1000.0,
        latency_ms_p99: (pct(0.99) * 1000.0).round() / 1000.0,
        latency_samples: samples.len(),
    };
    match throwaway {
        Some(pg) => pg.drop_schema_and_close().await?,
        None => dyn_store.close().await,
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("backend            {}", report.backend);
        println!("jobs / workers     {} / {}", report.jobs, report.workers);
        println!(
            "enqueue            {:>10.0} jobs/s",
            report.enqueue_jobs_per_s
        );
        println!(
            "process            {:>10.0} jobs/s",
            report.process_jobs_per_s
        );
        println!("idle latency p50   {:>10.3} ms", report.latency_ms_p50);
        println!("idle latency p99   {:>10.3} ms", report.latency_ms_p99);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct FiringReport {
    backend: String,
    firings: usize,
    firing_lag_ms_p50: f64,
    firing_lag_ms_p99: f64,
    firing_lag_ms_max: f64,
}

/// Lag from each nominal fire time of a 1-second schedule to its job's
/// creation (both on the store's clock), on an otherwise idle daemon.
async fn firing_lag(
    store: Arc<dyn Store>,
    firings: u32,
    json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(firings > 0, "--firings must be at least 1");
    let spec: reeve_schedule::ScheduleSpec = serde_json::from_value(
        serde_json::json!({"name": "bench-tick", "every": "1s", "job": {"kind": "noop"}}),
    )?;
    let now = store.now().await?;
    store
        .put_schedule(reeve_store::SchedulePut {
            next_fire_at: reeve_store::NextFire::Set(Some(reeve_core::Timestamp(
                (now.0 / 1000 + 1) * 1000,
            ))),
            anchor: reeve_store::NextFire::Keep,
            max_turns_changed: false,
            status: None,
            spec,
        })
        .await?;
    let mut config = engine_config("bench-firing".into());
    config.maintenance = true;
    let ran = Arc::new(AtomicU64::new(0));
    let engine = Engine::start(
        store.clone(),
        config,
        Handlers::new().kind("noop", Arc::new(Noop(ran))),
    );
    let filter = |before| reeve_core::JobFilter {
        kind: Some("noop".into()),
        before_id: before,
        limit: 1000,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(u64::from(firings) * 2 + 60);
    loop {
        let status = store.status().await?;
        let made: u64 = status.by_state.values().sum();
        if made >= u64::from(firings) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the schedule stopped firing");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    engine.shutdown(Duration::from_secs(5)).await;
    let mut lags = Vec::new();
    let mut before = None;
    loop {
        let page = store.list_jobs(filter(before)).await?;
        lags.extend(
            page.items
                .iter()
                .filter_map(|j| Some((j.created_at.0 - j.nominal_at?.0) as f64)),
        );
        match page.next_before_id {
            Some(id) => before = Some(id),
            None => break,
        }
    }
    lags.sort_by(f64::total_cmp);
    let pct = |p: f64| lags[((lags.len() as f64 - 1.0) * p).round() as usize];
    let report = FiringReport {
        backend: store.backend().to_string(),
        firings: lags.len(),
        firing_lag_ms_p50: pct(0.5),
        firing_lag_ms_p99: pct(0.99),
        firing_lag_ms_max: pct(1.0),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("firings            {}", report.firings);
        println!("firing lag p50     {:>8.1} ms", report.firing_lag_ms_p50);
        println!("firing lag p99     {:>8.1} ms", report.firing_lag_ms_p99);
        println!("firing lag max     {:>8.1} ms", report.firing_lag_ms_max);
    }
    Ok(std::process::ExitCode::SUCCESS)
}
