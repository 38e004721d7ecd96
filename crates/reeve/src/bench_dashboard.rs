//! `reeve bench --dashboard`: how long each dashboard page takes to render
//! on the server with a large store (default 100,000 jobs): the store is
//! seeded (finished, failed, waiting and running jobs, schedules with a
//! ledger), then every page is rendered through the router in-process
//! (no network) 20 times after 3 warm-ups; the report is each page's median
//! and maximum.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use reeve_api::{ApiConfig, AppState, Runtime, RuntimeStats};
use reeve_core::{FailureReason, JobId, NewJob};
use reeve_store::{
    ClaimParams, Finish, FireParams, FiringOutcome, KindFilter, Limits, NextFire, Outcome,
    SchedulePut, Store,
};
use serde::Serialize;
use tower::ServiceExt;

/// A runtime with nothing running in-process.
struct Idle;

impl Runtime for Idle {
    fn worker_id(&self) -> String {
        "bench".into()
    }
    fn live_output(&self, _job: JobId, _from: u64) -> Option<(Vec<u8>, u64)> {
        None
    }
    fn cancel_local(&self, _job: JobId) {}
    fn stats(&self) -> RuntimeStats {
        RuntimeStats::default()
    }
}

#[derive(Debug, Serialize)]
struct PageTime {
    path: String,
    status: u16,
    bytes: usize,
    p50_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct DashboardReport {
    backend: String,
    jobs: u32,
    seed_s: f64,
    pages: Vec<PageTime>,
}

impl DashboardReport {
    /// The report for people: one line per page.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} with {} jobs (seeded in {} s); {RENDERS} renders per page after 3 warm-ups\n",
            self.backend, self.jobs, self.seed_s
        );
        out.push_str(&format!(
            "{:<28} {:>6} {:>9} {:>9} {:>9}\n",
            "PAGE", "STATUS", "BYTES", "P50 MS", "MAX MS"
        ));
        for p in &self.pages {
            out.push_str(&format!(
                "{:<28} {:>6} {:>9} {:>9.2} {:>9.2}\n",
                p.path, p.status, p.bytes, p.p50_ms, p.max_ms
            ));
        }
        out
    }
}

const SCHEDULES: usize = 10;
const RENDERS: usize = 20;

fn claim(limit: u32) -> ClaimParams {
    ClaimParams {
        worker: "bench".into(),
        queues: None,
        kinds: KindFilter::Any,
        limit,
        heartbeats: true,
        labels: Vec::new(),
    }
}

/// Seeds `jobs` jobs: about 1% failed, 1% left waiting, 50 running, the rest
/// succeeded; plus schedules whose manual firings fill a ledger.
async fn seed(store: &Arc<dyn Store>, jobs: u32) -> anyhow::Result<()> {
    for i in 0..SCHEDULES {
        let spec = serde_json::from_value(serde_json::json!({
            "name": format!("agent-{i}"),
            "cron": format!("{} * * * *", (i * 7) % 60),
            "job": {"queue": format!("q{}", i % 3), "kind": format!("kind-{i}"), "max_turns": 20},
        }))?;
        store
            .put_schedule(SchedulePut {
                spec,
                status: None,
                next_fire_at: NextFire::Keep,
                anchor: NextFire::Keep,
                max_turns_changed: false,
            })
            .await?;
    }
    // Ledger: 200 firings per schedule, each claimed and finished.
    let now = store.now().await?;
    for round in 0..200i64 {
        for i in 0..SCHEDULES {
            let name = format!("agent-{i}");
            let record = store.get_schedule(&name).await?;
            let v = record.spec.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            let at = reeve_core::Timestamp(now.0 - (200 - round) * 60_000 - i as i64);
            let mut p =
                FireParams::manual(&name, at, v.job.new_job(&name, at), FiringOutcome::Manual);
            p.require_capacity = false;
            store.fire(p).await?;
        }
        let claimed = store.claim(claim(SCHEDULES as u32)).await?;
        let batch = claimed
            .iter()
            .enumerate()
            .map(|(k, j)| Finish {
                job: j.id,
                epoch: j.epoch,
                outcome: if k == 0 && round % 9 == 0 {
                    Outcome::Failed {
                        reason: FailureReason::ExitCode,
                        error: Some("exit 1".into()),
                    }
                } else {
                    Outcome::Succeeded { result: None }
                },
                output: None,
            })
            .collect();
        store.finish(batch).await?;
    }
    // The bulk: enqueue, claim and finish in batches.
    let mut left = jobs;
    let mut n = 0u32;
    while left > 0 {
        let size = left.min(1000);
        let batch: Vec<NewJob> = (0..size)
            .map(|k| {
                let mut nj =
                    NewJob::new(format!("q{}", (n + k) % 3), format!("kind-{}", (n + k) % 7));
                nj.payload = serde_json::json!({"n": n + k});
                nj
            })
            .collect();
        store.enqueue(batch).await?;
        n += size;
        left -= size;
        // Keep the last 1% waiting and 50 running.
        if left == 0 {
            let running = store.claim(claim(50)).await?;
            let _ = running;
            break;
        }
        let claimed = store.claim(claim(size)).await?;
        let finishes = claimed
            .iter()
            .map(|j| Finish {
                job: j.id,
                epoch: j.epoch,
                outcome: if j.id % 97 == 0 {
                    Outcome::Failed {
                        reason: FailureReason::AuthFailed,
                        error: Some("401".into()),
                    }
                } else {
                    Outcome::Succeeded { result: None }
                },
                output: None,
            })
            .collect();
        store.finish(finishes).await?;
    }
    store.set_limits(Limits { global: Some(60) }).await?;
    store
        .raise_pressure("bench-ide", Duration::from_secs(600))
        .await?;
    Ok(())
}

pub async fn run(store: Arc<dyn Store>, jobs: u32) -> anyhow::Result<DashboardReport> {
    let started = Instant::now();
    seed(&store, jobs).await?;
    let seed_s = started.elapsed().as_secs_f64();
    let state = AppState {
        store: store.clone(),
        runtime: Arc::new(Idle),
        config: Arc::new(ApiConfig::default()),
    };
    let app = reeve_api::router_with(state, reeve_web::routes());
    let some_job = store
        .list_jobs(reeve_core::JobFilter {
            limit: 1,
            ..Default::default()
        })
        .await?
        .items
        .first()
        .map_or(1, |j| j.id);
    let mut paths: Vec<String> = reeve_web::PAGES.iter().map(|p| p.to_string()).collect();
    paths.push(format!("/jobs/{some_job}"));
    paths.push(format!("/jobs?before={}", some_job / 2));
    paths.push("/jobs?state=failed".into());
    paths.push("/jobs?schedule=agent-3".into());
    paths.push("/schedules/agent-3".into());
    paths.push("/timeline?hours=24".into());
    let mut pages = Vec::new();
    for path in paths {
        let mut times = Vec::with_capacity(RENDERS);
        let mut status = 0;
        let mut bytes = 0;
        for i in 0..RENDERS + 3 {
            let t = Instant::now();
            let response = app
                .clone()
                .oneshot(Request::get(&path).body(Body::empty())?)
                .await?;
            status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
            bytes = body.len();
            if i >= 3 {
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        times.sort_by(f64::total_cmp);
        pages.push(PageTime {
            path,
            status,
            bytes,
            p50_ms: (times[times.len() / 2] * 100.0).round() / 100.0,
            max_ms: (times[times.len() - 1] * 100.0).round() / 100.0,
        });
    }
    Ok(DashboardReport {
        backend: store.backend().to_string(),
        jobs,
        seed_s: (seed_s * 10.0).round() / 10.0,
        pages,
    })
}
