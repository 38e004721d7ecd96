//! What can go wrong talking to a reeve daemon, sorted by what the caller
//! should do about it.
//!
//! **Invariants.** Every failed call maps to exactly one [`Error`] variant:
//! a 409 is always [`Error::Conflict`] (the run is no longer this worker's:
//! stop and write nothing more), 401/403 [`Error::Auth`], 404
//! [`Error::NotFound`], other 4xx [`Error::Input`], and only connection
//! failures, timeouts, 429 and 5xx are [`Error::Transient`] (the one kind
//! worth retrying unchanged).

use std::fmt;

use reeve_store::StoreError;

/// The daemon's refusal of a request: its JSON error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The HTTP status (409 for a fenced write, 400 for bad input, …).
    pub status: u16,
    /// The API's error code: `stale_epoch`, `not_running`, `lease_expired`,
    /// `invalid_input`, `forbidden`, … (`unknown` if the answer had none).
    pub code: String,
    pub message: String,
    /// The offending field, for input errors.
    pub field: Option<String>,
    /// The whole answer, with the code's extra fields (`expected`,
    /// `actual`, `state`, …).
    pub body: serde_json::Value,
}

impl Refusal {
    /// A refusal read from an error answer's status and body.
    pub(crate) fn from_answer(status: u16, body: &[u8]) -> Refusal {
        let body: serde_json::Value =
            serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        let text = |key: &str| body.get(key).and_then(|v| v.as_str()).map(str::to_string);
        Refusal {
            status,
            code: text("error").unwrap_or_else(|| "unknown".into()),
            message: text("message").unwrap_or_default(),
            field: text("field"),
            body,
        }
    }

    /// A refusal made here, for the in-process adapter, in the API's terms.
    pub(crate) fn local(status: u16, code: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code: code.into(),
            message: message.into(),
            field: None,
            body: serde_json::Value::Null,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code, self.status)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// A failed call of the worker protocol.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 409: the write was fenced out (`stale_epoch`, `not_running`,
    /// `lease_expired`, `lease_lost`). The run is lost: stop it and write
    /// nothing more for it.
    #[error("refused, the run is no longer this worker's: {0}")]
    Conflict(Refusal),
    /// 401 or 403: a missing or wrong token, or one used beyond what it
    /// allows (another job's run, kinds outside a worker token's).
    #[error("not allowed: {0}")]
    Auth(Refusal),
    /// 404: no such job, worker registration or checkpoint.
    #[error("not found: {0}")]
    NotFound(Refusal),
    /// Another 4xx: the request itself is wrong ([`Refusal::field`] names
    /// what); sending it again unchanged will not help.
    #[error("invalid request: {0}")]
    Input(Refusal),
    /// The daemon could not be reached, did not answer in time, or answered
    /// 429 or 5xx: worth retrying with backoff.
    #[error("the daemon is unavailable: {0}")]
    Transient(String),
    /// A success answer that does not have the protocol's shape.
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
    /// A value given to this library is invalid; nothing was sent.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
}

impl Error {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient(_))
    }

    /// Whether the daemon fenced the call out: the run is lost.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict(_))
    }

    /// The daemon's refusal, for the variants that carry one.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Error::Conflict(r) | Error::Auth(r) | Error::NotFound(r) | Error::Input(r) => Some(r),
            _ => None,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The error for a refused answer with `status` (4xx/5xx).
    pub(crate) fn from_status(status: u16, body: &[u8], path: &str) -> Error {
        match status {
            409 => Error::Conflict(Refusal::from_answer(status, body)),
            401 | 403 => Error::Auth(Refusal::from_answer(status, body)),
            404 => Error::NotFound(Refusal::from_answer(status, body)),
            429 | 500.. => Error::Transient(format!("{path}: the daemon answered {status}")),
            _ => Error::Input(Refusal::from_answer(status, body)),
        }
    }

    /// A store's answer to an in-process call, in the API's terms.
    pub(crate) fn from_store(e: StoreError) -> Error {
        match e {
            StoreError::StaleEpoch { expected, actual } => Error::Conflict(Refusal::local(
                409,
                "stale_epoch",
                format!("the job is at epoch {expected}, not {actual}"),
            )),
            StoreError::NotRunning { state } => Error::Conflict(Refusal::local(
                409,
                "not_running",
                format!("the job is {}", state.as_str()),
            )),
            StoreError::LeaseExpired => Error::Conflict(Refusal::local(
                409,
                "lease_expired",
                "the run's lease already passed",
            )),
            StoreError::NotFound(id) => {
                Error::NotFound(Refusal::local(404, "not_found", format!("no job {id}")))
            }
            StoreError::Input(e) => Error::Input(Refusal {
                field: Some(e.field.clone()),
                ..Refusal::local(400, "invalid_input", e.to_string())
            }),
            e if e.is_transient() => Error::Transient(e.to_string()),
            e => Error::Protocol(e.to_string()),
        }
    }
}
