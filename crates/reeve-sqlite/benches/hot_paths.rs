//! `cargo bench -p reeve-sqlite`: the store's hot paths on a real SQLite
//! file, with every guarantee on. Prints the median of several rounds for
//! each: a batch enqueue of 1,000 jobs, a claim of 100 jobs, a fenced
//! completion of 100 runs, and one heartbeat. Figures, not assertions: the
//! machine is shared, so compare runs made one after the other.

use std::time::{Duration, Instant};

use reeve_core::NewJob;
use reeve_sqlite::{SqliteOptions, SqliteStore};
use reeve_store::{ClaimParams, Finish, HeartbeatParams, KindFilter, Outcome, Store, StoreConfig};

const ROUNDS: usize = 30;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn report(name: &str, per_round: usize, samples: Vec<Duration>) {
    let m = median(samples);
    let per_item = m.as_secs_f64() / per_round as f64;
    println!(
        "{name:<32} median {:>9.3} ms   {:>10.0} items/s",
        m.as_secs_f64() * 1000.0,
        1.0 / per_item
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let opts = SqliteOptions::from_url(&url).expect("url");
        let store = SqliteStore::open(&opts, StoreConfig::default())
            .await
            .expect("open");

        let mut enqueue = Vec::new();
        for _ in 0..ROUNDS {
            let batch: Vec<NewJob> = (0..1000).map(|_| NewJob::new("bench", "noop")).collect();
            let t = Instant::now();
            store.enqueue(batch).await.expect("enqueue");
            enqueue.push(t.elapsed());
        }
        report("enqueue batch of 1000", 1000, enqueue);

        let params = ClaimParams {
            worker: "bench".into(),
            queues: None,
            kinds: KindFilter::Any,
            limit: 100,
            heartbeats: true,
            labels: Vec::new(),
        };
        let (mut claims, mut finishes, mut heartbeats) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let jobs = store.claim(params.clone()).await.expect("claim");
            claims.push(t.elapsed());
            let t = Instant::now();
            store
                .heartbeat(HeartbeatParams {
                    job: jobs[0].id,
                    epoch: jobs[0].epoch,
                    ..Default::default()
                })
                .await
                .expect("heartbeat");
            heartbeats.push(t.elapsed());
            let batch = jobs
                .iter()
                .map(|j| Finish {
                    job: j.id,
                    epoch: j.epoch,
                    outcome: Outcome::Succeeded { result: None },
                    output: None,
                })
                .collect();
            let t = Instant::now();
            store.finish(batch).await.expect("finish");
            finishes.push(t.elapsed());
        }
        report("claim 100", 100, claims);
        report("complete 100 (fenced)", 100, finishes);
        report("heartbeat", 1, heartbeats);
        store.close().await;
    });
}
