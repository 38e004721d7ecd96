//! `reeve serve`: opens the store, applies the configured limits and queues,
//! starts the engine with the process executor and the webhook delivery
//! task, and serves the HTTP API until SIGTERM or Ctrl-C. Shutdown order:
//! stop accepting requests, then the engine (stop claiming, let runs finish
//! up to the grace, release the rest), then the webhook delivery (after the
//! attempts in flight), then close the store.

use std::sync::Arc;

use anyhow::Context;
use reeve_api::{ApiConfig, AppState, Runtime, RuntimeStats};
use reeve_core::JobId;
use reeve_engine::process::ProcessHandler;
use reeve_engine::reeve_exec::RunLimits;
use reeve_engine::{Engine, EngineConfig, Handlers};
use reeve_store::{Limits, QueuePatch, Store};
use std::sync::atomic::Ordering;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::ServeArgs;
use crate::config::{Config, Overrides};

/// Logs as logfmt on stdout; level from `REEVE_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REEVE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_logfmt::builder()
                .with_span_name(false)
                .with_span_path(false)
                .layer(),
        )
        .try_init();
}

/// This process's executor identity: host, pid and a random suffix, so a
/// restarted daemon never looks like its previous self.
pub fn worker_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into());
    let nonce: u32 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{host}:{}:{:04x}", std::process::id(), nonce & 0xffff)
}

/// The engine as the API sees it.
struct EngineRuntime(Arc<Engine>);

impl Runtime for EngineRuntime {
    fn worker_id(&self) -> String {
        self.0.worker_id().to_string()
    }

    fn live_output(&self, job: JobId, from: u64) -> Option<(Vec<u8>, u64)> {
        self.0.live_output(job, from)
    }

    fn cancel_local(&self, job: JobId) {
        self.0.cancel_local(job);
    }

    fn stats(&self) -> RuntimeStats {
        let s = self.0.stats();
        RuntimeStats {
            leader: self.0.is_leader(),
            slots: self.0.slots(),
            busy: self.0.busy(),
            claimed_total: s.claimed.load(Ordering::Relaxed),
            finished_total: s.finished.load(Ordering::Relaxed),
            refused_writebacks_total: s.refused_writebacks.load(Ordering::Relaxed),
            reaped_total: s.reaped.load(Ordering::Relaxed),
            heartbeats_total: s.heartbeats.load(Ordering::Relaxed),
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    init_logging();
    let config = Config::load(
        args.config.as_deref(),
        Overrides {
            db: args.db,
            listen: args.listen,
        },
    )?;
    let store = config
        .database
        .while_unreachable(|| prepare_store(&config))
        .await?;

    let url = format!("http://{}", config.listen);
    let handler = Arc::new(
        ProcessHandler::new(
            config.kinds.clone(),
            RunLimits {
                kill_grace: config.kill_grace,
                output_limit: config.output_limit,
            },
            url.clone(),
        )
        .hiding_env(config.secret_env.clone()),
    );
    let mut handlers = Handlers::new();
    for kind in handler.kinds() {
        handlers = handlers.kind(kind.clone(), handler.clone());
    }
    if config.commands {
        handlers = handlers.commands(handler.clone());
    }
    let api_config = ApiConfig {
        max_request_bytes: config.max_request_bytes,
        max_payload_bytes: config.max_payload_bytes,
        worker_tokens: config.worker_tokens.clone(),
        worker_stale_after: config.store.default_heartbeat_timeout,
        // An executor with nothing to run claims nothing: it can take no
        // pinned job either.
        executor_labels: if handlers.is_empty() {
            Vec::new()
        } else {
            config.labels.clone()
        },
        ..ApiConfig::with_admin_token(config.admin_token.clone())
    };
    let job_tokens = api_config.job_tokens.clone();
    let mut engine_config = EngineConfig::new(worker_id());
    // Each run gets its job token: its own job and epoch, nothing else.
    engine_config.run_env = Some(reeve_engine::RunEnv(Arc::new(
        move |job: &reeve_core::Job| {
            vec![(
                "REEVE_JOB_TOKEN".to_string(),
                job_tokens.issue(job.id, job.epoch),
            )]
        },
    )));
    engine_config.slots = config.slots;
    engine_config.retention = config.retention;
    engine_config.pressure_delay = config.pressure_delay;
    engine_config.pressure_max_defer = config.pressure_max_defer;
    engine_config.firing_retention = config.ledger_retention;
    engine_config.output_limit = config.output_limit;
    engine_config.supervision = config.supervision;
    engine_config.delivery_retention = config.retention;
    engine_config.labels = config.labels.clone();
    let engine = Engine::start(store.clone(), engine_config, handlers);
    // Always running, so that rows left for a webhook no longer configured
    // are given up (with a warning) instead of waiting forever.
    let deliverer = crate::webhooks::spawn(
        store.clone(),
        config.webhooks.clone(),
        crate::webhooks::Policy::default(),
    );

    let state = AppState {
        store: store.clone(),
        runtime: Arc::new(EngineRuntime(engine.clone())),
        config: Arc::new(api_config),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("server.listen: cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        addr = %addr,
        backend = store.backend(),
        db = %config.database.describe(),
        worker = engine.worker_id(),
        slots = config.slots,
        kinds = config.kinds.len(),
        auth = config.admin_token.is_some(),
        supervision = config.supervision.is_some(),
        webhooks = config.webhooks.len(),
        "reeve listening"
    );
    axum::serve(listener, reeve_api::router_with(state, reeve_web::routes()))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    tracing::info!(
        grace_ms = config.shutdown_grace.as_millis() as u64,
        "shutting down"
    );
    engine.shutdown(config.shutdown_grace).await;
    // After the engine: its last write-backs may have written outbox rows.
    deliverer.shutdown().await;
    store.close().await;
    tracing::info!("stopped");
    Ok(std::process::ExitCode::SUCCESS)
}

/// `reeve migrate`: opening a store applies its embedded migrations.
pub async fn migrate(args: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = Config::load(
        args.config.as_deref(),
        Overrides {
            db: args.db,
            listen: args.listen,
        },
    )?;
    let store = config
        .database
        .while_unreachable(|| config.database.open(config.store.clone()))
        .await?;
    store.close().await;
    println!("migrations applied to {}", config.database.describe());
    Ok(std::process::ExitCode::SUCCESS)
}

/// Opens the store and applies the config's settings and schedules: the
/// database work of a start, repeated whole while the database is away.
async fn prepare_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let store = config.database.open(config.store.clone()).await?;
    match configure(store.as_ref(), config).await {
        Ok(()) => Ok(store),
        Err(e) => {
            // Let go of its connections and listener before another try.
            store.close().await;
            Err(e)
        }
    }
}

async fn configure(store: &dyn Store, config: &Config) -> anyhow::Result<()> {
    apply_settings(store, config).await?;
    if !config.schedules.is_empty() {
        let applied = reeve_api::apply_specs(
            store,
            config.schedules.clone(),
            false,
            false,
            config.max_payload_bytes,
        )
        .await
        .map_err(|e| match e {
            // Kept a store error, so that the start waits for the database.
            reeve_api::ApiError::DatabaseUnavailable => {
                anyhow::Error::new(reeve_store::StoreError::Database {
                    message: "the database was unavailable".into(),
                    transient: true,
                })
                .context("server.schedules")
            }
            e => anyhow::anyhow!("server.schedules: {e:?}"),
        })?;
        tracing::info!(
            created = applied.created.len(),
            changed = applied.changed.len(),
            unchanged = applied.unchanged.len(),
            "schedules applied"
        );
    }
    Ok(())
}

/// The config's limits and queues are the source of truth at start; runtime
/// changes through the API last until the next start.
async fn apply_settings(store: &dyn Store, config: &Config) -> anyhow::Result<()> {
    if config.global_limit.is_some() {
        store
            .set_limits(Limits {
                global: config.global_limit,
            })
            .await?;
    }
    for (name, q) in &config.queues {
        let patch = QueuePatch {
            concurrency: q.concurrency.map(Some),
            paused: q.paused,
        };
        store
            .update_queue(name, patch)
            .await
            .with_context(|| format!("queues.{name}"))?;
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
