//! reeve's HTTP API: the one door through which clients, operators and remote
//! executors reach the store (SPEC §2–§5, §11, §12).
//!
//! This crate owns the routes under `/v1`, `/healthz` and `/metrics`, the
//! admin-token check, the mapping of every refusal to one JSON error shape,
//! and the request/response wire types. It owns no state of its own: every
//! durable change is one [`Store`] call, and everything about runs executing
//! in this process comes from the daemon through the [`Runtime`] trait.
//!
//! **Invariants.**
//! - Validation happens before any store call, so bad input changes nothing.
//!   A batch is validated whole (first error wins) before one enqueue.
//! - Every error answer is JSON `{"error": CODE, "message": TEXT, "field"?:
//!   NAME, ...}`, produced by [`ApiError`] through one exhaustive match from
//!   error kind to status. This includes extractor rejections (malformed JSON,
//!   wrong content type, oversized body), unknown routes and bad query strings.
//! - Database text never reaches a client: store failures are logged with
//!   `tracing::error!` and answered `database_unavailable` (503, transient)
//!   or `internal` (500).
//! - Executor write-backs (heartbeat, complete, fail) are fenced by the store
//!   on `(job, epoch)`; this layer only forwards the epoch and reports the
//!   refusal (`stale_epoch`, `not_running`, or `lease_lost` for heartbeats).
//! - When an admin token is configured, every route except `/healthz` and
//!   `/login` needs `Authorization: Bearer <token>` or the dashboard's
//!   session cookie (set by `POST /login` with that token to a value derived
//!   from it, never the token itself; HttpOnly, SameSite=Strict; the token
//!   itself is also taken as the cookie's value), compared in constant time. A cookie-authenticated
//!   request that changes something must come from the same origin. Tokens
//!   and bodies are never logged, and no page or answer shows a token.

mod admin;
mod error;
mod extract;
mod jobs;
mod openapi;
mod runs;
mod schedules;
mod session;
pub mod tokens;
mod workers;

pub use runs::{Percentiles, build_forecast};
pub use schedules::{ApplyResponse, ChangedSchedule, CollisionWarning, apply_specs};
pub use workers::waiting_for;

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use reeve_core::JobId;
use reeve_store::Store;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tracing::Instrument;

pub use error::{ApiError, LeaseLost};

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub runtime: Arc<dyn Runtime>,
    pub config: Arc<ApiConfig>,
}

/// Settings of the API layer.
#[derive(Clone)]
pub struct ApiConfig {
    /// When set, every route but `/healthz` needs `Authorization: Bearer`.
    pub admin_token: Option<String>,
    /// Largest request body accepted (413 above it). Default 8 MiB.
    pub max_request_bytes: usize,
    /// Largest job payload (and completion result) accepted. Default 1 MiB.
    pub max_payload_bytes: usize,
    /// Worker tokens (only with an admin token: auth on).
    pub worker_tokens: Vec<tokens::WorkerToken>,
    /// Signs the job tokens handed to runs.
    pub job_tokens: tokens::JobTokens,
    /// Largest checkpoint accepted. Default 1 MiB.
    pub max_checkpoint_bytes: usize,
    /// A registered worker silent for longer than this is stale: no longer
    /// counted as live. Default: the default heartbeat timeout.
    pub worker_stale_after: std::time::Duration,
    /// Placement labels of this daemon's own executor, which can take the
    /// pinned jobs they satisfy (empty when it runs nothing).
    pub executor_labels: Vec<String>,
}

impl ApiConfig {
    /// Settings with `admin_token` (and the job-token key derived from it).
    pub fn with_admin_token(admin_token: Option<String>) -> Self {
        ApiConfig {
            job_tokens: tokens::JobTokens::new(admin_token.as_deref()),
            admin_token,
            ..Default::default()
        }
    }
}

/// Default [`ApiConfig::max_request_bytes`].
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            admin_token: None,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_payload_bytes: reeve_core::job::DEFAULT_MAX_PAYLOAD_BYTES,
            worker_tokens: Vec::new(),
            job_tokens: tokens::JobTokens::new(None),
            max_checkpoint_bytes: reeve_store::fleet::DEFAULT_MAX_CHECKPOINT_BYTES,
            worker_stale_after: reeve_core::job::DEFAULT_HEARTBEAT_TIMEOUT,
            executor_labels: Vec::new(),
        }
    }
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("worker_tokens", &self.worker_tokens)
            .field("max_checkpoint_bytes", &self.max_checkpoint_bytes)
            .field("worker_stale_after", &self.worker_stale_after)
            .field("executor_labels", &self.executor_labels)
            .finish()
    }
}

/// What the API needs from the daemon's engine (implemented by the engine
/// crate).
pub trait Runtime: Send + Sync + 'static {
    fn worker_id(&self) -> String;
    /// Output of a run executing in this process, from absolute byte offset
    /// `from`: (bytes still kept from there, next offset). None if the job is
    /// not running here.
    fn live_output(&self, job: JobId, from: u64) -> Option<(Vec<u8>, u64)>;
    /// Called after `Store::cancel` returned a job that is still running:
    /// stop it now if it runs in this process.
    fn cancel_local(&self, job: JobId);
    fn stats(&self) -> RuntimeStats;
}

/// Counters and gauges of this process's executor, for `/metrics` and
/// `/v1/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuntimeStats {
    /// Whether this daemon leads (runs reaping and maintenance).
    pub leader: bool,
    pub slots: u32,
    pub busy: u32,
    pub claimed_total: u64,
    pub finished_total: u64,
    pub refused_writebacks_total: u64,
    pub reaped_total: u64,
    pub heartbeats_total: u64,
}

/// The whole API as an axum router (no server: the daemon serves it, tests
/// call it with `tower::ServiceExt::oneshot`).
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// The API plus `pages` (the dashboard), served behind the same auth.
pub fn router_with(state: AppState, pages: Router<AppState>) -> Router {
    let protected = pages
        .route("/metrics", get(admin::metrics))
        .route("/v1/status", get(admin::status))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/jobs", get(jobs::list).post(jobs::enqueue))
        .route("/v1/jobs/batch", post(jobs::enqueue_batch))
        .route("/v1/jobs/{id}", get(jobs::get_job))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/jobs/{id}/output", get(jobs::output))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/retry", post(jobs::retry))
        .route("/v1/jobs/{id}/heartbeat", post(jobs::heartbeat))
        .route("/v1/jobs/{id}/complete", post(jobs::complete))
        .route("/v1/jobs/{id}/fail", post(jobs::fail))
        .route("/v1/queues", get(admin::list_queues))
        .route(
            "/v1/queues/{name}",
            axum::routing::patch(admin::patch_queue),
        )
        .route("/v1/queues/{name}/pause", post(admin::pause_queue))
        .route("/v1/queues/{name}/resume", post(admin::resume_queue))
        .route("/v1/limits", get(admin::get_limits).put(admin::put_limits))
        .route("/v1/schedules", get(schedules::list))
        .route("/v1/schedules/apply", post(schedules::apply))
        .route(
            "/v1/schedules/{name}",
            get(schedules::show).delete(schedules::delete),
        )
        .route("/v1/schedules/{name}/pause", post(schedules::pause))
        .route("/v1/schedules/{name}/resume", post(runs::resume))
        .route("/v1/schedules/{name}/run", post(runs::run))
        .route("/v1/schedules/{name}/history", get(runs::history))
        .route("/v1/schedules/{name}/metrics", get(runs::metrics))
        .route(
            "/v1/pressure",
            get(runs::list_pressure)
                .post(runs::raise_pressure)
                .delete(runs::clear_pressure),
        )
        .route(
            "/v1/pressure/{source}",
            axum::routing::delete(runs::clear_pressure_named),
        )
        .route("/v1/audit", get(runs::audit))
        .route("/v1/forecast", get(runs::forecast_next))
        .route("/v1/workers", get(workers::list))
        .route("/v1/workers/register", post(workers::register))
        .route("/v1/workers/{id}/claim", post(workers::claim))
        .route("/v1/workers/{id}/heartbeat", post(workers::heartbeat))
        .route("/v1/workers/{id}/complete", post(workers::complete))
        .route("/v1/workers/{id}/fail", post(workers::fail))
        .route("/v1/workers/{id}/deregister", post(workers::deregister))
        .route(
            "/v1/jobs/{id}/checkpoint",
            get(workers::load_checkpoint).put(workers::save_checkpoint),
        )
        .route(
            "/v1/jobs/{id}/mail",
            get(workers::read_mail).post(workers::send_mail),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/login", get(session::login_form).post(session::login))
        .route("/logout", post(session::logout))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_request_bytes))
        .layer(middleware::from_fn(trace_request))
        .with_state(state)
}

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}

/// The admin-token check. Constant-time comparison; a missing and a wrong
/// token get the same answer, and the token is never echoed or logged. A
/// page (not `/v1`, not `/metrics`) asked for without a token answers the
/// login form instead of JSON.
async fn require_admin(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let mut request = request;
    let principal = match &state.config.admin_token {
        None => tokens::Principal::Open,
        Some(expected) => {
            let bearer = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim());
            let by_cookie = bearer.is_none()
                && session::cookie_token(&headers).is_some_and(|t| {
                    token_matches(t, &state.config.job_tokens.session())
                        || token_matches(t, expected)
                });
            if by_cookie && !request.method().is_safe() && !session::same_origin(&headers) {
                return Err(ApiError::Unauthorized);
            }
            match bearer.map(|t| identify(&state.config, t, expected)) {
                Some(Some(p)) => p,
                None if by_cookie => tokens::Principal::Admin,
                _ => {
                    let path = request.uri().path();
                    if request.method() == axum::http::Method::GET
                        && !path.starts_with("/v1/")
                        && path != "/metrics"
                    {
                        return Ok(session::login_page(path, StatusCode::UNAUTHORIZED));
                    }
                    return Err(ApiError::Unauthorized);
                }
            }
        }
    };
    if !tokens::allows(&principal, request.method(), request.uri().path()) {
        return Err(ApiError::Forbidden(
            "this token does not allow this request".into(),
        ));
    }
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// The principal a bearer token names: the admin, a configured worker
/// token, or a genuine job token.
fn identify(config: &ApiConfig, token: &str, admin: &str) -> Option<tokens::Principal> {
    if token_matches(token, admin) {
        return Some(tokens::Principal::Admin);
    }
    if let Some(w) = config
        .worker_tokens
        .iter()
        .find(|w| token_matches(token, &w.token))
    {
        return Some(tokens::Principal::Worker {
            name: w.name.clone(),
            kinds: w.kinds.clone(),
            queues: w.queues.clone(),
        });
    }
    config
        .job_tokens
        .verify(token)
        .map(|(job, epoch)| tokens::Principal::Job { job, epoch })
}

/// Constant-time comparison of a presented token with the configured one.
pub(crate) fn token_matches(presented: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// One debug span and one debug line per request: method, path, status,
/// duration. Never the query string's secrets, headers or body.
async fn trace_request(request: Request, next: Next) -> Response {
    let span = tracing::debug_span!(
        "http",
        method = %request.method(),
        path = %request.uri().path(),
    );
    async move {
        let started = Instant::now();
        let response = next.run(request).await;
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request"
        );
        response
    }
    .instrument(span)
    .await
}
