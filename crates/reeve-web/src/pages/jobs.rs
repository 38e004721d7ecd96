//! `/jobs` (filters, keyset paging) and `/jobs/{id}` (the job, its event
//! timeline, live output tail, turns against budget, its placement
//! requirements and, while no live worker can take it, what it waits for;
//! cancel / retry). The
//! detail page refreshes itself while the job is not finished, so a state
//! change shows without a reload.

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use reeve_api::AppState;
use reeve_core::{EventKind, JobFilter, JobId, JobState};
use serde::Deserialize;

use crate::html::{action, badge, esc, esc_trunc, section, table, url, when};
use crate::pages::{heartbeat_tone, job_link, lease_bar, schedule_link, supervision_flag, turns};
use crate::{Page, PageError, PageResult};

/// Jobs per page.
const PAGE: u32 = 50;
/// Output shown on the job's page (its tail).
const OUTPUT_TAIL: usize = 8 * 1024;

#[derive(Debug, Deserialize, Default)]
pub struct ListQuery {
    state: Option<String>,
    queue: Option<String>,
    kind: Option<String>,
    schedule: Option<String>,
    before: Option<i64>,
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_ref()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> PageResult {
    let store = state.store.as_ref();
    let job_state = match nonempty(&q.state) {
        Some(s) => Some(s.parse::<JobState>().map_err(PageError::BadRequest)?),
        None => None,
    };
    let filter = JobFilter {
        state: job_state,
        queue: nonempty(&q.queue),
        kind: nonempty(&q.kind),
        schedule: nonempty(&q.schedule),
        before_id: q.before.filter(|b| *b > 0),
        limit: PAGE,
    };
    let page = store.list_jobs(filter.clone()).await?;
    let now = store.now().await?;

    let mut form = String::from(
        "<form class=\"filters\" method=\"get\" action=\"/jobs\"><label>state <select name=\"state\"><option value=\"\">any</option>",
    );
    for s in JobState::ALL {
        let sel = if job_state == Some(s) {
            " selected"
        } else {
            ""
        };
        let _ = write!(form, "<option{sel}>{}</option>", s.as_str());
    }
    form.push_str("</select></label>");
    for (name, value) in [
        ("queue", &filter.queue),
        ("kind", &filter.kind),
        ("schedule", &filter.schedule),
    ] {
        let _ = write!(
            form,
            "<label>{name} <input name=\"{name}\" value=\"{}\" size=\"12\"></label>",
            esc(value.as_deref().unwrap_or(""))
        );
    }
    form.push_str("<button type=\"submit\">Filter</button> <a href=\"/jobs\">clear</a></form>");

    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|j| {
            vec![
                job_link(j.id),
                badge(j.state.as_str()),
                esc(&j.queue),
                esc(&j.kind),
                j.schedule.as_deref().map_or("—".into(), schedule_link),
                format!("{} / {}", j.attempt, j.max_attempts),
                when(Some(j.created_at), now),
                when(j.finished_at, now),
                j.failure_reason
                    .map_or(String::new(), |r| badge(r.as_str())),
            ]
        })
        .collect();
    let mut main = format!("<h1>Jobs</h1>{form}");
    main.push_str(&table(
        &[
            "job", "state", "queue", "kind", "schedule", "attempt", "created", "finished", "reason",
        ],
        &rows,
        "No jobs match.",
    ));
    if let Some(next) = page.next_before_id {
        let mut link = format!("/jobs?before={next}");
        for (k, v) in [
            ("state", job_state.map(|s| s.as_str().to_string())),
            ("queue", filter.queue.clone()),
            ("kind", filter.kind.clone()),
            ("schedule", filter.schedule.clone()),
        ] {
            if let Some(v) = v {
                let _ = write!(link, "&{k}={}", url(&v));
            }
        }
        let _ = write!(
            main,
            "<p class=\"pager\"><a href=\"{}\" rel=\"next\">Older jobs →</a></p>",
            esc(&link)
        );
    }
    Ok(Page {
        title: "Jobs".into(),
        nav: "/jobs",
        main,
        live_ms: None,
    }
    .respond(&headers))
}

pub async fn detail(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> PageResult {
    let id: JobId = id
        .parse()
        .map_err(|_| PageError::BadRequest(format!("{id:?} is not a job id")))?;
    let store = state.store.as_ref();
    let job = store.get_job(id).await?;
    let events = store.job_events(id).await?;
    let now = store.now().await?;
    let checkpoint = store.load_checkpoint(id).await?;
    let mail = store.read_mail(id, false).await?;
    let waiting_for = reeve_api::waiting_for(&state, &job).await?;

    let mut main = format!(
        "<h1>Job #{} {}{}</h1><p class=\"sub\">{} in queue {}{}</p>",
        job.id,
        badge(job.state.as_str()),
        supervision_flag(&job, now),
        esc(&job.kind),
        esc(&job.queue),
        job.schedule.as_deref().map_or(String::new(), |s| format!(
            ", fired by {}",
            schedule_link(s)
        ))
    );
    let mut actions = String::new();
    if !job.state.is_terminal() {
        actions.push_str(&action(
            "Cancel",
            &format!("/v1/jobs/{id}/cancel"),
            "{}",
            Some("Cancel this job? A running one is stopped."),
        ));
    }
    if matches!(job.state, JobState::Failed | JobState::Cancelled) {
        actions.push_str(&action(
            "Retry",
            &format!("/v1/jobs/{id}/retry"),
            "{}",
            None,
        ));
    }
    if !actions.is_empty() {
        let _ = write!(main, "<p class=\"actions\">{actions}</p>");
    }
    if let Some(waiting) = &waiting_for {
        let _ = write!(
            main,
            "<p class=\"waiting\" id=\"job-waiting\">{} waiting for {}</p>",
            badge("pinned"),
            esc(waiting)
        );
    }
    let mut kv: Vec<(&str, String)> = vec![
        (
            "state",
            format!("<span id=\"job-state\">{}</span>", esc(job.state.as_str())),
        ),
        (
            "attempt",
            format!("{} of {}", job.attempt, job.max_attempts),
        ),
        ("epoch", job.epoch.to_string()),
        (
            "requires",
            if job.requires.is_empty() {
                "—".into()
            } else {
                job.requires
                    .iter()
                    .map(|l| format!("<code>{}</code>", esc(l)))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        ),
        (
            "idempotency key",
            format!("<code>{}</code>", esc(&job.idempotency_key)),
        ),
        ("priority", job.priority.to_string()),
        ("created", when(Some(job.created_at), now)),
        ("available", when(Some(job.available_at), now)),
        ("worker", esc(job.claimed_by.as_deref().unwrap_or("—"))),
        ("claimed", when(job.claimed_at, now)),
        ("turns", turns(&job)),
        ("progress", esc(job.progress.as_deref().unwrap_or("—"))),
        ("last progress", when(job.progress_at, now)),
        ("finished", when(job.finished_at, now)),
        (
            "failure",
            job.failure_reason.map_or("—".into(), |r| badge(r.as_str())),
        ),
        (
            "last error",
            esc(&esc_trunc(job.last_error.as_deref().unwrap_or("—"), 500)),
        ),
        (
            "timers",
            format!(
                "max run {}, heartbeat timeout {}",
                crate::html::ms(Some(reeve_core::time::duration_millis(
                    job.max_run_duration
                ))),
                crate::html::ms(Some(reeve_core::time::duration_millis(
                    job.heartbeat_timeout
                )))
            ),
        ),
    ];
    if job.state == JobState::Running {
        let (tone, age) = heartbeat_tone(&job, now);
        kv.push((
            "heartbeat",
            format!(
                "<span class=\"hb {tone}\">{}</span> ago · {} beats",
                esc(&age),
                job.heartbeat_count
            ),
        ));
        kv.push(("lease", lease_bar(&job, now)));
        if let Some(stalled) = job.stalled_at {
            let escalated = job.escalated_at.map_or(String::new(), |at| {
                format!(", escalated {}", when(Some(at), now))
            });
            kv.push((
                "supervision",
                format!(
                    "<span class=\"warn-text\">no progress since {}: stalled {}{escalated}</span> (the supervisor mailed the run)",
                    when(job.progress_at, now),
                    when(Some(stalled), now)
                ),
            ));
        }
        if job.cancel_requested_at.is_some() {
            kv.push((
                "cancel",
                format!("requested {}", when(job.cancel_requested_at, now)),
            ));
        }
    }
    if let Some(nominal) = job.nominal_at {
        kv.push(("nominal fire time", when(Some(nominal), now)));
    }
    kv.push((
        "checkpoint",
        match &checkpoint {
            Some(c) => format!(
                "{} bytes, saved {} by epoch {}",
                c.size,
                when(Some(c.saved_at), now),
                c.epoch
            ),
            None => "—".into(),
        },
    ));
    let mut dl = String::from("<dl class=\"kv\">");
    for (k, v) in kv {
        let _ = write!(dl, "<dt>{}</dt><dd>{v}</dd>", esc(k));
    }
    dl.push_str("</dl>");
    main.push_str(&dl);
    let _ = write!(
        main,
        "<details><summary>payload</summary><pre>{}</pre></details>",
        esc(&serde_json::to_string_pretty(&job.payload).unwrap_or_default())
    );
    if let Some(result) = &job.result {
        let _ = write!(
            main,
            "<details open><summary>result</summary><pre>{}</pre></details>",
            esc(&serde_json::to_string_pretty(result).unwrap_or_default())
        );
    }

    // The timeline: every transition; heartbeats are counted on the job.
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let what = match e.event {
                EventKind::Claimed => format!(
                    "{} <span class=\"small\">epoch {} · attempt {}</span>",
                    badge(e.event.as_str()),
                    e.epoch,
                    e.attempt
                ),
                _ => badge(e.event.as_str()),
            };
            vec![
                when(Some(e.at), now),
                what,
                esc(e.worker.as_deref().unwrap_or("")),
                esc(e.reason.as_deref().unwrap_or("")),
                esc(e.by.as_str()),
                esc(&esc_trunc(e.detail.as_deref().unwrap_or(""), 200)),
            ]
        })
        .collect();
    let mail_rows: Vec<Vec<String>> = mail
        .iter()
        .map(|m| {
            vec![
                when(Some(m.at), now),
                esc(&m.sender),
                esc(&m.subject),
                esc(&esc_trunc(&m.body, 300)),
                if m.read_at.is_some() {
                    "read".into()
                } else {
                    badge("unread")
                },
            ]
        })
        .collect();
    main.push_str(&section(
        "mail",
        "Mail",
        &table(
            &["when", "from", "subject", "body", ""],
            &mail_rows,
            "No mail.",
        ),
    ));
    main.push_str(&section(
        "timeline",
        "Timeline",
        &table(
            &["when", "event", "worker", "reason", "by", "detail"],
            &rows,
            "No events.",
        ),
    ));

    // Output: the live buffer while it runs here, else what was kept.
    let live = state.runtime.live_output(id, 0).map(|(bytes, _)| bytes);
    let output = match live {
        Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        None => store
            .job_output(id)
            .await?
            .last()
            .map(|o| o.output.clone())
            .unwrap_or_default(),
    };
    let tail = match output.char_indices().rev().nth(OUTPUT_TAIL) {
        Some((i, _)) => &output[i..],
        None => output.as_str(),
    };
    main.push_str(&section(
        "output",
        "Output (tail)",
        &if tail.is_empty() {
            "<p class=\"muted\">No output.</p>".to_string()
        } else {
            format!("<pre class=\"output\">{}</pre>", esc(tail))
        },
    ));
    if job.state.is_terminal() {
        // Tells a live refresh that nothing will change any more.
        main.push_str("<span hidden data-live-stop></span>");
    }
    let live_ms = (!job.state.is_terminal()).then_some(1000);
    Ok(Page {
        title: format!("Job #{id}"),
        nav: "/jobs",
        main,
        live_ms,
    }
    .respond(&headers))
}
