//! Webhook delivery (SPEC §10): the daemon's task that sends the store's
//! outbox rows to the configured webhooks.
//!
//! **What it owns.** The rows are written by the store, in the transaction
//! of the change they report (an escalation, an auto-pause, a job failing);
//! this task only delivers them, so a delivery can never block the engine
//! and a daemon that dies mid-send loses nothing: the row stays in the
//! outbox and is claimed again when its claim lease passes.
//!
//! **Invariants.**
//! - Rows are claimed atomically (`Store::claim_deliveries`), so several
//!   daemons sharing a database never send one row at once; a result is
//!   recorded only for the attempt that holds the row.
//! - Each attempt POSTs the row's body as stored, with `X-Reeve-Event`,
//!   `X-Reeve-Delivery` (the same on every retry, for deduplication) and
//!   `X-Reeve-Signature: sha256=<hex HMAC-SHA256(secret, body)>`, within
//!   [`Policy::timeout`]. A 2xx marks the row delivered; anything else is
//!   retried with exponential backoff (capped) until
//!   [`Policy::max_attempts`], then given up with a warning line.
//! - The secret is never logged or shown (`Secret`'s `Debug` hides it), and
//!   neither is the URL (it may carry a token): lines name the webhook.
//! - The task sleeps until the next row is due, or until this process
//!   writes one (`Signals::outbox`), at most [`MAX_SLEEP`] (rows written by
//!   other processes sharing the database).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use reeve_engine::reeve_exec::CancellationToken;
use reeve_store::{Delivery, DeliveryOutcome, Store, WebhookEvent};
use sha2::Sha256;
use tokio::task::{JoinHandle, JoinSet};

/// Longest sleep between two looks at the outbox.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// An HMAC secret; its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(secret: String) -> Self {
        Secret(secret.into())
    }

    /// `hex(HMAC-SHA256(secret, body))`.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(self.0.as_bytes()).expect("any key length");
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// One configured webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Its name: the outbox rows' target and the log lines' `webhook`.
    pub name: String,
    pub url: reqwest::Url,
    pub events: Vec<WebhookEvent>,
    pub secret: Secret,
}

/// A webhook URL: `http://` with a host. This build's HTTP client has no
/// TLS, so an `https://` URL is refused rather than failing every attempt.
pub fn parse_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| {
        format!("{text:?} is not a URL like http://hooks.internal:8080/reeve ({e})")
    })?;
    match url.scheme() {
        "http" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(url),
        "http" => Err(format!("{text:?} names no host")),
        "https" => Err(
            "https is not supported: this build sends webhooks over plain HTTP only; \
             point it at an http:// receiver (or a local relay that forwards over TLS)"
                .into(),
        ),
        other => Err(format!(
            "the scheme {other:?} is not supported; use http://"
        )),
    }
}

/// How deliveries are attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// One attempt's time limit.
    pub timeout: Duration,
    /// The wait after the first failed attempt; doubled after each further
    /// one…
    pub first_retry: Duration,
    /// …up to this.
    pub max_retry: Duration,
    /// Attempts before a row is given up.
    pub max_attempts: i32,
    /// Rows claimed (and sent concurrently) at once.
    pub batch: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            timeout: Duration::from_secs(10),
            first_retry: Duration::from_secs(10),
            max_retry: Duration::from_secs(600),
            max_attempts: 10,
            batch: 16,
        }
    }
}

impl Policy {
    /// The wait after failed attempt number `attempt` (1 for the first).
    pub fn retry_after(&self, attempt: i32) -> Duration {
        let doublings = attempt.saturating_sub(1).clamp(0, 30) as u32;
        self.first_retry
            .saturating_mul(1u32 << doublings)
            .min(self.max_retry)
    }

    /// How long a claim holds its rows: past any attempt's end, so a row is
    /// claimed again only when its claimer died.
    fn lease(&self) -> Duration {
        self.timeout * 3 + Duration::from_secs(5)
    }
}

/// The running delivery task.
pub struct Deliverer {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Deliverer {
    /// Stops the task after the attempts in flight (each bounded by the
    /// timeout); undelivered rows stay in the outbox for the next start.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Starts delivering `store`'s outbox to `hooks`. Rows for a webhook that
/// is not configured (any more) are given up with a warning.
pub fn spawn(store: Arc<dyn Store>, hooks: Vec<Webhook>, policy: Policy) -> Deliverer {
    let stop = CancellationToken::new();
    let hooks: Arc<HashMap<String, Webhook>> =
        Arc::new(hooks.into_iter().map(|h| (h.name.clone(), h)).collect());
    let task = tokio::spawn(run(store, hooks, policy, stop.clone()));
    Deliverer { stop, task }
}

async fn run(
    store: Arc<dyn Store>,
    hooks: Arc<HashMap<String, Webhook>>,
    policy: Policy,
    stop: CancellationToken,
) {
    let client = match reqwest::Client::builder()
        .timeout(policy.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(target: "reeve::webhook", error = %e.without_url(), "cannot build the webhook HTTP client; webhooks will not be delivered");
            return;
        }
    };
    let mut written = store.signals().outbox.subscribe();
    let mut failures: u32 = 0;
    loop {
        written.borrow_and_update();
        let mut sleep = match store.claim_deliveries(policy.batch, policy.lease()).await {
            Ok(batch) if !batch.is_empty() => {
                failures = 0;
                let mut attempts = JoinSet::new();
                for d in batch {
                    attempts.spawn(attempt(
                        store.clone(),
                        client.clone(),
                        hooks.clone(),
                        policy,
                        d,
                    ));
                }
                while attempts.join_next().await.is_some() {}
                // More may be due already.
                continue;
            }
            Ok(_) => match store.next_delivery_in().await {
                Ok(next) => {
                    failures = 0;
                    next.unwrap_or(MAX_SLEEP).min(MAX_SLEEP)
                }
                Err(e) => {
                    tracing::warn!(target: "reeve::webhook", error = %e, "reading the webhook outbox failed");
                    failures += 1;
                    MAX_SLEEP
                }
            },
            Err(e) => {
                tracing::warn!(target: "reeve::webhook", error = %e, "claiming webhook deliveries failed");
                failures += 1;
                MAX_SLEEP
            }
        };
        if failures > 0 {
            let backoff = Duration::from_millis(100u64 << failures.min(6)).min(MAX_SLEEP);
            sleep = sleep.min(backoff);
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep.max(Duration::from_millis(5))) => {}
            changed = written.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// One attempt of one claimed row, and its result recorded.
async fn attempt(
    store: Arc<dyn Store>,
    client: reqwest::Client,
    hooks: Arc<HashMap<String, Webhook>>,
    policy: Policy,
    d: Delivery,
) {
    let job = reeve_store::outbox::body_job_id(&d.body);
    let sent = match hooks.get(&d.target) {
        None => Err(format!("no webhook named {:?} is configured", d.target)),
        Some(hook) => send(&client, hook, &d).await,
    };
    let outcome = match sent {
        Ok(status) => {
            tracing::info!(target: "reeve::webhook", event = "webhook_delivered", webhook = %d.target, delivery = %d.delivery, webhook_event = %d.event, job, attempt = d.attempt, status);
            DeliveryOutcome::Delivered
        }
        Err(error) if d.attempt >= policy.max_attempts || !hooks.contains_key(&d.target) => {
            tracing::warn!(target: "reeve::webhook", event = "webhook_gave_up", webhook = %d.target, delivery = %d.delivery, webhook_event = %d.event, job, attempts = d.attempt, error = %error);
            DeliveryOutcome::GiveUp { error }
        }
        Err(error) => {
            let after = policy.retry_after(d.attempt);
            tracing::warn!(target: "reeve::webhook", event = "webhook_failed", webhook = %d.target, delivery = %d.delivery, webhook_event = %d.event, job, attempt = d.attempt, retry_in_ms = after.as_millis() as u64, error = %error);
            DeliveryOutcome::Retry { after, error }
        }
    };
    match store.record_delivery(d.id, d.attempt, outcome).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(target: "reeve::webhook", webhook = %d.target, delivery = %d.delivery, "the delivery's claim had passed; its result was not recorded");
        }
        // The row stays claimed; it is due again when the claim lease passes.
        Err(e) => {
            tracing::warn!(target: "reeve::webhook", webhook = %d.target, delivery = %d.delivery, error = %e, "recording a webhook delivery failed")
        }
    }
}

/// POSTs the row; `Ok(status)` on a 2xx, else why not (never the URL).
async fn send(client: &reqwest::Client, hook: &Webhook, d: &Delivery) -> Result<u16, String> {
    let signature = format!("sha256={}", hook.secret.sign(d.body.as_bytes()));
    let answer = client
        .post(hook.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-reeve-event", &d.event)
        .header("x-reeve-delivery", &d.delivery)
        .header("x-reeve-signature", signature)
        .body(d.body.clone())
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    let status = answer.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(format!("HTTP {}", status.as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use axum::http::{HeaderMap, StatusCode};
    use reeve_core::{JobState, NewJob};
    use reeve_engine::{Engine, EngineConfig, Handler, Handlers, Run};
    use reeve_sqlite::{SqliteOptions, SqliteStore};
    use reeve_store::{Outcome, StoreConfig, Subscriptions};

    const SECRET: &str = "a-webhook-secret-of-some-length";

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            Secret::new("Jefe".into()).sign(b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(format!("{:?}", Secret::new(SECRET.into())), "Secret(..)");
    }

    #[test]
    fn urls_are_plain_http_with_a_host() {
        assert!(parse_url("http://127.0.0.1:9000/hook").is_ok());
        let e = parse_url("https://hooks.example/x").unwrap_err();
        assert!(e.contains("https"), "{e}");
        assert!(parse_url("ftp://x/y").unwrap_err().contains("ftp"));
        assert!(parse_url("not a url").is_err());
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let p = Policy::default();
        let waits: Vec<u64> = (1..=8).map(|a| p.retry_after(a).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(p.retry_after(i32::MAX), p.max_retry);
    }

    /// A run that never reports anything and ends only when stopped.
    struct Silent;

    #[async_trait]
    impl Handler for Silent {
        async fn run(&self, run: Run) -> Outcome {
            run.stop.cancelled().await;
            Outcome::Failed {
                reason: reeve_core::FailureReason::Cancelled,
                error: None,
            }
        }
    }

    /// What the receiver saw: the headers and the body of each request.
    #[derive(Default)]
    struct Received {
        requests: Mutex<Vec<(HeaderMap, String)>>,
        calls: AtomicUsize,
    }

    /// An HTTP receiver on 127.0.0.1:0 that checks each signature and
    /// answers 500 to the first `failures` requests, 200 to the next ones.
    async fn receiver(failures: usize) -> (String, Arc<Received>, tokio::task::JoinHandle<()>) {
        let seen = Arc::new(Received::default());
        let state = seen.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let seen = state.clone();
                async move {
                    let signature = headers
                        .get("x-reeve-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let expected = format!(
                        "sha256={}",
                        Secret::new(SECRET.into()).sign(body.as_bytes())
                    );
                    if signature != expected {
                        return StatusCode::UNAUTHORIZED;
                    }
                    seen.requests.lock().unwrap().push((headers, body));
                    if seen.calls.fetch_add(1, Ordering::SeqCst) < failures {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{addr}/hook"), seen, server)
    }

    async fn eventually<F, Fut>(what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stall → supervisor mail → escalation → webhook, on the store's clock
    /// moved forward: the escalation row is signed, refused once with a 500,
    /// retried with the same delivery id and body, and marked delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_run_is_mailed_then_escalated_to_a_signed_webhook() {
        let (url, seen, server) = receiver(1).await;
        let dir = tempfile::tempdir().unwrap();
        let opts =
            SqliteOptions::from_url(&format!("sqlite://{}", dir.path().join("r.db").display()))
                .unwrap();
        let config = StoreConfig {
            webhooks: Subscriptions::none().with("ops", &[WebhookEvent::Escalation]),
            ..StoreConfig::default()
        };
        let sqlite = Arc::new(SqliteStore::open(&opts, config).await.unwrap());
        let store: Arc<dyn Store> = sqlite.clone();

        let mut engine_config = EngineConfig::new("t");
        engine_config.supervise_every = Duration::from_millis(10);
        let engine = Engine::start(
            store.clone(),
            engine_config,
            Handlers::new().kind("agent", Arc::new(Silent)),
        );
        let hook = Webhook {
            name: "ops".into(),
            url: parse_url(&url).unwrap(),
            events: vec![WebhookEvent::Escalation],
            secret: Secret::new(SECRET.into()),
        };
        let policy = Policy {
            first_retry: Duration::from_millis(50),
            ..Policy::default()
        };
        let deliverer = spawn(store.clone(), vec![hook], policy);

        // Its lease outlives the clock's jumps: only supervision acts on it.
        let mut nj = NewJob::new("default", "agent");
        nj.heartbeat_timeout = Some(Duration::from_secs(3 * 3600));
        nj.max_run_duration = Some(Duration::from_secs(6 * 3600));
        let id = store.enqueue(vec![nj]).await.unwrap()[0].job.id;
        eventually("the run to start", || async {
            store.get_job(id).await.unwrap().state == JobState::Running
        })
        .await;

        // 31 minutes without progress: one mail from the supervisor.
        sqlite.advance_clock(Duration::from_secs(31 * 60));
        store.signals().deadlines_changed();
        eventually("the stall", || async {
            store.get_job(id).await.unwrap().stalled_at.is_some()
        })
        .await;
        let mail = store.read_mail(id, false).await.unwrap();
        assert_eq!(mail.len(), 1);
        assert_eq!(mail[0].sender, "supervisor");
        assert!(
            mail[0].subject.starts_with("no progress for 31m"),
            "{}",
            mail[0].subject
        );
        assert!(
            seen.requests.lock().unwrap().is_empty(),
            "a stall alone is no escalation"
        );

        // 31 more: escalated, and the webhook gets it (after one 500).
        sqlite.advance_clock(Duration::from_secs(31 * 60));
        store.signals().deadlines_changed();
        eventually("the escalation", || async {
            store.get_job(id).await.unwrap().escalated_at.is_some()
        })
        .await;
        eventually("a retried delivery", || async {
            seen.requests.lock().unwrap().len() >= 2
        })
        .await;
        eventually("the row marked delivered", || async {
            store.next_delivery_in().await.unwrap().is_none()
        })
        .await;
        let requests = seen.requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 2, "one refusal, one delivery, nothing more");
        let header = |i: usize, name: &str| {
            requests[i]
                .0
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(header(0, "x-reeve-event"), "escalation");
        assert_eq!(header(0, "content-type"), "application/json");
        assert_eq!(
            header(0, "x-reeve-delivery"),
            header(1, "x-reeve-delivery"),
            "a retry keeps its delivery id"
        );
        assert_eq!(requests[0].1, requests[1].1, "and its body");
        let body: serde_json::Value = serde_json::from_str(&requests[1].1).unwrap();
        assert_eq!(body["event"], "escalation");
        assert_eq!(body["delivery"], header(1, "x-reeve-delivery").as_str());
        assert_eq!(body["job"]["id"], id);
        assert_eq!(
            body["job"]["state"], "running",
            "nothing is killed for being slow"
        );
        assert!(body["at"].is_string());
        let job = store.get_job(id).await.unwrap();
        assert_eq!(job.state, JobState::Running);
        assert_eq!(
            store.read_mail(id, false).await.unwrap().len(),
            1,
            "mailed once"
        );

        deliverer.shutdown().await;
        engine.shutdown(Duration::from_millis(100)).await;
        store.close().await;
        server.abort();
    }

    /// A receiver that keeps failing: the row is given up after
    /// `max_attempts`, and a row for a webhook no longer configured is
    /// given up at once; neither is sent again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deliveries_are_given_up_after_the_last_attempt() {
        let (url, seen, server) = receiver(usize::MAX).await;
        let dir = tempfile::tempdir().unwrap();
        let opts =
            SqliteOptions::from_url(&format!("sqlite://{}", dir.path().join("r.db").display()))
                .unwrap();
        let config = StoreConfig {
            webhooks: Subscriptions::none()
                .with("ops", &[WebhookEvent::JobFailed])
                .with("gone", &[WebhookEvent::JobFailed]),
            ..StoreConfig::default()
        };
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&opts, config).await.unwrap());
        let mut nj = NewJob::new("default", "agent");
        nj.max_attempts = 1;
        store.enqueue(vec![nj]).await.unwrap();
        let run = store
            .claim(reeve_store::ClaimParams {
                worker: "w".into(),
                queues: None,
                kinds: reeve_store::KindFilter::Any,
                limit: 1,
                heartbeats: true,
                labels: Vec::new(),
            })
            .await
            .unwrap()
            .remove(0);
        store
            .finish(vec![reeve_store::Finish {
                job: run.id,
                epoch: run.epoch,
                outcome: Outcome::Failed {
                    reason: reeve_core::FailureReason::AuthFailed,
                    error: None,
                },
                output: None,
            }])
            .await
            .unwrap();
        // Only "ops" is configured now.
        let hook = Webhook {
            name: "ops".into(),
            url: parse_url(&url).unwrap(),
            events: vec![WebhookEvent::JobFailed],
            secret: Secret::new(SECRET.into()),
        };
        let policy = Policy {
            first_retry: Duration::from_millis(20),
            max_attempts: 3,
            ..Policy::default()
        };
        let deliverer = spawn(store.clone(), vec![hook], policy);
        eventually("both rows settled", || async {
            store.next_delivery_in().await.unwrap().is_none()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            seen.calls.load(Ordering::SeqCst),
            3,
            "three attempts to ops, none to the unconfigured webhook"
        );
        let requests = seen.requests.lock().unwrap().clone();
        assert!(
            requests
                .iter()
                .all(|(h, _)| h["x-reeve-event"] == "job_failed")
        );
        assert!(
            store
                .claim_deliveries(10, Duration::from_secs(60))
                .await
                .unwrap()
                .is_empty()
        );
        deliverer.shutdown().await;
        store.close().await;
        server.abort();
    }
}
