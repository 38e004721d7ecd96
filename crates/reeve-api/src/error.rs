//! The API's one error type and its JSON shape.
//!
//! Every refusal the API gives is an [`ApiError`]; [`ApiError::into_response`]
//! is the single exhaustive match from error kind to HTTP status, code and
//! extra fields. Store failures are logged here and never described to the
//! client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use reeve_core::{InputError, JobId, JobState};
use reeve_store::StoreError;
use serde_json::{Map, Value, json};

/// Why a heartbeat was refused (all answered `409 lease_lost`).
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseLost {
    StaleEpoch { expected: i64, actual: i64 },
    NotRunning { state: JobState },
    LeaseExpired,
    NotFound(JobId),
}

impl LeaseLost {
    /// The `reason` code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            LeaseLost::StaleEpoch { .. } => "stale_epoch",
            LeaseLost::NotRunning { .. } => "not_running",
            LeaseLost::LeaseExpired => "lease_expired",
            LeaseLost::NotFound(_) => "not_found",
        }
    }
}

/// An error answer of the API.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// 404: unknown route or unknown job.
    NotFound(String),
    /// 405: the route exists but not with this method.
    MethodNotAllowed(String),
    /// 400: the body is not JSON of the expected shape.
    InvalidJson {
        message: String,
        field: Option<String>,
    },
    /// 400: well-formed but invalid input, naming the field.
    InvalidInput(InputError),
    /// 401: missing or wrong bearer token.
    Unauthorized,
    /// 403: a valid token that does not allow this request (a job token on
    /// another job or epoch, a worker token outside its kinds).
    Forbidden(String),
    /// 415: the body is not `application/json`.
    UnsupportedMediaType(String),
    /// 413: the body exceeds the request size limit.
    PayloadTooLarge { limit: usize },
    /// 409: a write-back carried an epoch that is not the job's current one.
    StaleEpoch { expected: i64, actual: i64 },
    /// 409: the write-back's run is over.
    NotRunning { state: JobState },
    /// 409: the run's lease has already passed.
    LeaseExpired,
    /// 409: the operation does not apply to a job in this state.
    InvalidState {
        action: &'static str,
        state: JobState,
    },
    /// 409: a heartbeat was refused; the executor must stop the work.
    LeaseLost(LeaseLost),
    /// 429: a manual run found a cap full; retry after the ETA or force it.
    CapacityFull {
        full: reeve_store::CapacityFull,
        slot_eta_seconds: u64,
    },
    /// 503: the store failed in a way that may pass (busy, connection lost).
    DatabaseUnavailable,
    /// 500: anything else that is our fault.
    Internal,
}

impl ApiError {
    pub fn input(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidInput(InputError::new(field, message))
    }

    /// The heartbeat endpoint's mapping: every refusal becomes `lease_lost`.
    pub fn from_heartbeat(err: StoreError) -> Self {
        match err {
            StoreError::StaleEpoch { expected, actual } => {
                ApiError::LeaseLost(LeaseLost::StaleEpoch { expected, actual })
            }
            StoreError::NotRunning { state } => {
                ApiError::LeaseLost(LeaseLost::NotRunning { state })
            }
            StoreError::LeaseExpired => ApiError::LeaseLost(LeaseLost::LeaseExpired),
            StoreError::NotFound(id) => ApiError::LeaseLost(LeaseLost::NotFound(id)),
            other => ApiError::from(other),
        }
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        ApiError::InvalidInput(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(id) => ApiError::NotFound(format!("job {id} not found")),
            StoreError::ScheduleNotFound(name) => {
                ApiError::NotFound(format!("schedule {name} not found"))
            }
            StoreError::WorkerNotFound(id) => ApiError::NotFound(format!("worker {id} not found")),
            StoreError::StaleEpoch { expected, actual } => {
                ApiError::StaleEpoch { expected, actual }
            }
            StoreError::NotRunning { state } => ApiError::NotRunning { state },
            StoreError::LeaseExpired => ApiError::LeaseExpired,
            StoreError::InvalidState { action, state } => ApiError::InvalidState { action, state },
            StoreError::Input(e) => ApiError::InvalidInput(e),
            StoreError::Database { message, transient } => {
                // The only place database text goes: the log.
                tracing::error!(error = %message, transient, "store call failed");
                if transient {
                    ApiError::DatabaseUnavailable
                } else {
                    ApiError::Internal
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut extra = Map::new();
        let (status, code, message) = match self {
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, "not_found", message),
            ApiError::MethodNotAllowed(message) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                message,
            ),
            ApiError::InvalidJson { message, field } => {
                if let Some(field) = field {
                    extra.insert("field".into(), json!(field));
                }
                (StatusCode::BAD_REQUEST, "invalid_json", message)
            }
            ApiError::InvalidInput(InputError { field, message }) => {
                let message = format!("{field}: {message}");
                extra.insert("field".into(), json!(field));
                (StatusCode::BAD_REQUEST, "invalid_input", message)
            }
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid bearer token".to_string(),
            ),
            ApiError::Forbidden(message) => (StatusCode::FORBIDDEN, "forbidden", message),
            ApiError::UnsupportedMediaType(message) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                message,
            ),
            ApiError::PayloadTooLarge { limit } => {
                extra.insert("limit".into(), json!(limit));
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the request body exceeds the limit of {limit} bytes"),
                )
            }
            ApiError::StaleEpoch { expected, actual } => {
                extra.insert("expected".into(), json!(expected));
                extra.insert("actual".into(), json!(actual));
                (
                    StatusCode::CONFLICT,
                    "stale_epoch",
                    format!(
                        "stale epoch: the job is at epoch {expected}, the write carried {actual}"
                    ),
                )
            }
            ApiError::NotRunning { state } => {
                extra.insert("state".into(), json!(state));
                (
                    StatusCode::CONFLICT,
                    "not_running",
                    format!("the job is not running (state {state})"),
                )
            }
            ApiError::LeaseExpired => (
                StatusCode::CONFLICT,
                "lease_expired",
                "the run's lease has expired".to_string(),
            ),
            ApiError::InvalidState { action, state } => {
                extra.insert("action".into(), json!(action));
                extra.insert("state".into(), json!(state));
                (
                    StatusCode::CONFLICT,
                    "invalid_state",
                    format!("cannot {action} a job in state {state}"),
                )
            }
            ApiError::LeaseLost(lost) => {
                let (reason, message) = match lost {
                    LeaseLost::StaleEpoch { expected, actual } => {
                        extra.insert("expected".into(), json!(expected));
                        extra.insert("actual".into(), json!(actual));
                        (
                            "stale_epoch",
                            format!(
                                "lease lost: the job is at epoch {expected}, the heartbeat carried {actual}"
                            ),
                        )
                    }
                    LeaseLost::NotRunning { state } => {
                        extra.insert("state".into(), json!(state));
                        (
                            "not_running",
                            format!("lease lost: the job is not running (state {state})"),
                        )
                    }
                    LeaseLost::LeaseExpired => (
                        "lease_expired",
                        "lease lost: the run's lease has expired".to_string(),
                    ),
                    LeaseLost::NotFound(id) => {
                        ("not_found", format!("lease lost: job {id} not found"))
                    }
                };
                extra.insert("reason".into(), json!(reason));
                (StatusCode::CONFLICT, "lease_lost", message)
            }
            ApiError::CapacityFull {
                full,
                slot_eta_seconds,
            } => {
                extra.insert("running".into(), json!(full.running));
                extra.insert("limit".into(), json!(full.limit));
                extra.insert("slot_eta_seconds".into(), json!(slot_eta_seconds));
                extra.insert("scope".into(), json!(full.scope));
                if let Some(queue) = &full.queue {
                    extra.insert("queue".into(), json!(queue));
                }
                let cap = match &full.queue {
                    Some(q) => format!("queue {q}"),
                    None => "the global cap".to_string(),
                };
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    "capacity_full",
                    format!(
                        "{cap} is full ({} of {} running); a slot is expected in about {slot_eta_seconds}s; force to run anyway",
                        full.running, full.limit
                    ),
                )
            }
            ApiError::DatabaseUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is unavailable; retry later".to_string(),
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error".to_string(),
            ),
        };
        let mut body = Map::new();
        body.insert("error".into(), json!(code));
        body.insert("message".into(), json!(message));
        body.extend(extra);
        (status, axum::Json(Value::Object(body))).into_response()
    }
}
