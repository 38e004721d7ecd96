//! The log half of the event contract: one logfmt line per transition.
//!
//! Backends call [`emit`] for each event *after* its transaction commits, so
//! a line is printed only for a change that happened. The line's target is
//! `reeve::event`; its fields are `event job queue kind epoch attempt worker
//! reason by detail` (absent when empty), as documented in `docs/events.md`.

use reeve_core::Event;

/// Prints the logfmt line for one committed event.
pub fn emit(event: &Event, queue: &str, kind: &str) {
    tracing::info!(
        target: "reeve::event",
        event = event.event.as_str(),
        job = event.job_id,
        queue,
        kind,
        epoch = event.epoch,
        attempt = event.attempt,
        worker = event.worker.as_deref(),
        reason = event.reason.as_deref(),
        by = event.by.as_str(),
        detail = event.detail.as_deref(),
    );
}

/// Whether event lines are printed at all, so callers can skip building them
/// (a benchmark or an embedding without a subscriber).
pub fn enabled() -> bool {
    tracing::enabled!(target: "reeve::event", tracing::Level::INFO)
}
