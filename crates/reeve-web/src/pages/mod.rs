//! One module per page. Each handler reads what it shows from the store in
//! a bounded number of indexed queries and renders it with `html` / `svg`.

pub mod audit;
pub mod charts;
pub mod jobs;
pub mod overview;
pub mod schedules;
pub mod timeline;
pub mod workers;

use reeve_core::{Job, Timestamp};

use crate::html::esc;
use crate::svg;

/// Every page's path, for the benchmark and the tests.
pub const PAGES: [&str; 7] = [
    "/",
    "/jobs",
    "/schedules",
    "/timeline",
    "/charts",
    "/workers",
    "/audit",
];

/// How alive a run is: its heartbeat age against its `heartbeat_timeout`
/// (green under a third, amber under two thirds, red beyond).
pub(crate) fn heartbeat_tone(job: &Job, now: Timestamp) -> (&'static str, String) {
    let Some(beat) = job.heartbeat_at.or(job.claimed_at) else {
        return ("warn", "no heartbeat".into());
    };
    let age = beat.millis_until(now).max(0);
    let timeout = reeve_core::time::duration_millis(job.heartbeat_timeout).max(1);
    let tone = if age * 3 < timeout {
        "ok"
    } else if age * 3 < timeout * 2 {
        "warn"
    } else {
        "bad"
    };
    (tone, crate::html::ms(Some(age)))
}

/// The lease bar of a running job: how much of its lease is left, as a
/// fraction of its heartbeat timeout.
pub(crate) fn lease_bar(job: &Job, now: Timestamp) -> String {
    let Some(expires) = job.lease_expires_at else {
        return "—".into();
    };
    let left = now.millis_until(expires).max(0) as f64;
    let window = reeve_core::time::duration_millis(job.heartbeat_timeout).max(1) as f64;
    let fraction = (left / window).min(1.0);
    let tone = if fraction > 0.5 {
        "ok"
    } else if fraction > 0.2 {
        "warn"
    } else {
        "bad"
    };
    let label = format!("lease: {} left", crate::html::ms(Some(left as i64)));
    format!(
        "{}<span class=\"small\">{}</span>",
        svg::bar(fraction, tone, &label),
        esc(&crate::html::ms(Some(left as i64)))
    )
}

/// `turns / max_turns` with a bar when there is a budget.
pub(crate) fn turns(job: &Job) -> String {
    match job.max_turns {
        Some(max) if max > 0 => {
            let f = job.turns as f64 / max as f64;
            let tone = if f > 1.0 {
                "bad"
            } else if f > 0.8 {
                "warn"
            } else {
                "ok"
            };
            format!(
                "{}<span class=\"small\">{} / {max}</span>",
                svg::bar(f, tone, &format!("{} of {max} turns", job.turns)),
                job.turns
            )
        }
        _ => job.turns.to_string(),
    }
}

/// The badge of a running run the supervisor found without progress
/// (`escalated` over `stalled`, SPEC §10), empty for any other job.
pub(crate) fn supervision_flag(job: &Job, now: Timestamp) -> String {
    if job.state != reeve_core::JobState::Running || job.stalled_at.is_none() {
        return String::new();
    }
    let name = if job.escalated_at.is_some() {
        "escalated"
    } else {
        "stalled"
    };
    let since = job
        .progress_at
        .map_or("its claim".to_string(), |t| t.to_string());
    let silent = job
        .progress_at
        .map(|t| crate::html::ms(Some(now.0.saturating_sub(t.0))))
        .unwrap_or_default();
    format!(
        "<span title=\"no progress for {} (since {})\">{}</span>",
        esc(&silent),
        esc(&since),
        crate::html::badge(name)
    )
}

/// A link to a job's page.
pub(crate) fn job_link(id: i64) -> String {
    format!("<a href=\"/jobs/{id}\">#{id}</a>")
}

/// A link to a schedule's page.
pub(crate) fn schedule_link(name: &str) -> String {
    format!(
        "<a href=\"/schedules/{}\">{}</a>",
        crate::html::url(name),
        esc(name)
    )
}
