//! The dashboard flags stalled and escalated runs (SPEC §10): on the
//! overview's running table and heading, and on the job's page.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use reeve_api::{ApiConfig, AppState, Runtime, RuntimeStats};
use reeve_core::{JobId, NewJob};
use reeve_sqlite::{SqliteOptions, SqliteStore};
use reeve_store::{ClaimParams, KindFilter, Store, StoreConfig, SuperviseParams};
use tower::ServiceExt;

struct Idle;

impl Runtime for Idle {
    fn worker_id(&self) -> String {
        "test".into()
    }
    fn live_output(&self, _job: JobId, _from: u64) -> Option<(Vec<u8>, u64)> {
        None
    }
    fn cancel_local(&self, _job: JobId) {}
    fn stats(&self) -> RuntimeStats {
        RuntimeStats::default()
    }
}

async fn page(app: &axum::Router, path: &str) -> String {
    let response = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_escalated_runs_are_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteOptions::from_url(&format!("sqlite://{}", dir.path().join("r.db").display()))
        .unwrap();
    let sqlite = Arc::new(
        SqliteStore::open(&opts, StoreConfig::default())
            .await
            .unwrap(),
    );
    let store: Arc<dyn Store> = sqlite.clone();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut nj = NewJob::new("default", "agent");
        nj.heartbeat_timeout = Some(Duration::from_secs(6 * 3600));
        nj.max_run_duration = Some(Duration::from_secs(12 * 3600));
        ids.push(store.enqueue(vec![nj]).await.unwrap()[0].job.id);
    }
    let claim = |limit| ClaimParams {
        worker: "w".into(),
        queues: None,
        kinds: KindFilter::Any,
        limit,
        heartbeats: true,
        labels: Vec::new(),
    };
    // The first two run silent since the start; the third is claimed later.
    store.claim(claim(2)).await.unwrap();
    let params = SuperviseParams::default();
    sqlite.advance_clock(Duration::from_secs(31 * 60));
    store.supervise(params).await.unwrap();
    store.claim(claim(1)).await.unwrap();
    sqlite.advance_clock(Duration::from_secs(31 * 60));
    let pass = store.supervise(params).await.unwrap();
    assert_eq!(pass.escalated.len(), 2);
    assert_eq!(pass.stalled.len(), 1);

    let app = reeve_api::router_with(
        AppState {
            store: store.clone(),
            runtime: Arc::new(Idle),
            config: Arc::new(ApiConfig::default()),
        },
        reeve_web::routes(),
    );
    let overview = page(&app, "/").await;
    assert!(
        overview.contains("Running now (3) · 3 stalled, 2 escalated"),
        "{overview}"
    );
    assert_eq!(overview.matches("b-escalated").count(), 2, "{overview}");
    assert_eq!(overview.matches("b-stalled").count(), 1, "{overview}");

    let escalated = page(&app, &format!("/jobs/{}", ids[0])).await;
    assert!(escalated.contains("b-escalated"), "{escalated}");
    assert!(escalated.contains("no progress since"), "{escalated}");
    assert!(escalated.contains("escalated "), "{escalated}");
    let stalled = page(&app, &format!("/jobs/{}", ids[2])).await;
    assert!(stalled.contains("title=\"no progress for"), "{stalled}");
    assert!(!stalled.contains("b-escalated"), "{stalled}");

    // Progress clears the flag.
    let run = store.get_job(ids[2]).await.unwrap();
    store
        .save_checkpoint(run.id, run.epoch, b"x".to_vec())
        .await
        .unwrap();
    let cleared = page(&app, &format!("/jobs/{}", ids[2])).await;
    assert!(!cleared.contains("title=\"no progress for"), "{cleared}");
    assert!(!cleared.contains("no progress since"), "{cleared}");
    assert!(
        cleared.contains("badge b-stalled\">stalled"),
        "the stall stays in the job's history: {cleared}"
    );
}
