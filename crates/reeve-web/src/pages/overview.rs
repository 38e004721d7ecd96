//! `/`: what runs now and how alive it is (stalled and escalated runs
//! flagged), what waits and why, the caps,
//! pressure, schedules needing attention, the next firings and recent
//! failures. Refreshes itself every two seconds.

use axum::extract::State;
use axum::http::HeaderMap;
use reeve_api::AppState;
use reeve_core::{JobFilter, JobState, Timestamp};
use reeve_schedule::ScheduleStatus;
use reeve_store::QueueInfo;

use crate::html::{badge, esc, section, table, when};
use crate::pages::{heartbeat_tone, job_link, lease_bar, schedule_link, supervision_flag, turns};
use crate::{Page, PageResult, svg};

/// Why the available jobs of a queue are not running.
fn waiting_why(q: &QueueInfo, global: Option<u32>, running_total: u64) -> String {
    if q.available == 0 {
        return "<span class=\"muted\">nothing waiting</span>".into();
    }
    if q.settings.paused {
        return "queue paused".into();
    }
    if let Some(c) = q.settings.concurrency
        && q.running >= u64::from(c)
    {
        return format!("queue cap full ({}/{c})", q.running);
    }
    if let Some(g) = global
        && running_total >= u64::from(g)
    {
        return format!("global cap full ({running_total}/{g})");
    }
    "waiting for a free executor slot".into()
}

/// How full a cap is, red when full.
fn cap_bar(running: u64, cap: u32, label: &str) -> String {
    let tone = if running >= u64::from(cap) {
        "bad"
    } else {
        "ok"
    };
    svg::bar(running as f64 / f64::from(cap.max(1)), tone, label)
}

pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    let store = state.store.as_ref();
    let now = store.now().await?;
    let counts = store.status().await?;
    let limits = store.limits().await?;
    let queues = store.list_queues().await?;
    let running = store.running_jobs(None, 200).await?;
    let failed = store
        .list_jobs(JobFilter {
            state: Some(JobState::Failed),
            limit: 10,
            ..Default::default()
        })
        .await?
        .items;
    let pressure = store.list_pressure().await?;
    let schedules = store.list_schedules().await?;

    let mut main = String::from("<h1>Overview</h1>");
    // Running now.
    let rows: Vec<Vec<String>> = running
        .iter()
        .map(|j| {
            let (tone, age) = heartbeat_tone(j, now);
            vec![
                job_link(j.id),
                esc(&j.queue),
                esc(&j.kind),
                j.schedule.as_deref().map_or("—".into(), schedule_link),
                esc(j.claimed_by.as_deref().unwrap_or("—")),
                format!("epoch {}", j.epoch),
                when(j.claimed_at, now),
                format!("<span class=\"hb {tone}\" title=\"heartbeat age against a timeout of {}\">{}</span>", crate::html::ms(Some(reeve_core::time::duration_millis(j.heartbeat_timeout))), esc(&age)),
                lease_bar(j, now),
                turns(j),
                [
                    if j.cancel_requested_at.is_some() { badge("cancel_requested") } else { String::new() },
                    supervision_flag(j, now),
                ]
                .concat(),
            ]
        })
        .collect();
    let mut heading = format!("Running now ({})", counts.running);
    if counts.stalled > 0 {
        heading.push_str(&format!(
            " · {} stalled, {} escalated",
            counts.stalled, counts.escalated
        ));
    }
    main.push_str(&section(
        "running",
        &heading,
        &table(
            &[
                "job",
                "queue",
                "kind",
                "schedule",
                "worker",
                "epoch",
                "claimed",
                "heartbeat",
                "lease",
                "turns",
                "",
            ],
            &rows,
            "Nothing is running.",
        ),
    ));

    // Caps and queue depths, and why waiting work waits.
    let mut caps = String::new();
    let global = match limits.global {
        Some(g) => format!(
            "<p>Global cap: <strong>{} / {g}</strong> running {}</p>",
            counts.running,
            cap_bar(counts.running, g, "global cap use")
        ),
        None => format!("<p>Global cap: none ({} running)</p>", counts.running),
    };
    caps.push_str(&global);
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            let cap = match q.settings.concurrency {
                Some(c) => format!(
                    "{} / {c} {}",
                    q.running,
                    cap_bar(q.running, c, "queue cap use")
                ),
                None => format!("{} / —", q.running),
            };
            vec![
                esc(&q.name),
                if q.settings.paused {
                    badge("paused")
                } else {
                    badge("active")
                },
                cap,
                q.available.to_string(),
                q.scheduled.to_string(),
                q.retryable.to_string(),
                waiting_why(q, limits.global, counts.running),
            ]
        })
        .collect();
    caps.push_str(&table(
        &[
            "queue",
            "status",
            "running / cap",
            "available",
            "scheduled",
            "retrying (backoff)",
            "waiting because",
        ],
        &rows,
        "No queues yet.",
    ));
    main.push_str(&section("caps", "Caps and queues", &caps));

    // Pressure.
    let rows: Vec<Vec<String>> = pressure
        .iter()
        .map(|p| {
            vec![
                esc(&p.source),
                when(Some(p.raised_at), now),
                when(Some(p.expires_at), now),
            ]
        })
        .collect();
    main.push_str(&section(
        "pressure",
        "Pressure",
        &if rows.is_empty() {
            "<p class=\"muted\">No pressure: schedules fire on time.</p>".to_string()
        } else {
            format!(
                "<p>Due firings are deferred while any signal is active (never past their bound).</p>{}",
                table(&["source", "raised", "expires"], &rows, "")
            )
        },
    ));

    // Schedules needing attention (auto-paused, probing, deferred).
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .filter(|s| {
            s.paused_reason
                .as_deref()
                .is_some_and(|r| r.starts_with("auto-paused") || r.starts_with("probe"))
                || s.probe_job.is_some()
                || s.defer_until.is_some()
        })
        .map(|s| {
            let what = if let Some(p) = s.probe_job {
                format!("probing with {}", job_link(p))
            } else if let Some(until) = s.defer_until.filter(|_| s.status == ScheduleStatus::Active)
            {
                format!("deferred by pressure until {}", when(Some(until), now))
            } else {
                esc(s.paused_reason.as_deref().unwrap_or(""))
            };
            vec![
                schedule_link(&s.name),
                badge(s.status.as_str()),
                what,
                format!("{} / {}", s.generic_streak, s.budget_streak),
            ]
        })
        .collect();
    if !rows.is_empty() {
        main.push_str(&section(
            "attention",
            "Needs attention",
            &table(
                &["schedule", "status", "why", "streaks (failures / budget)"],
                &rows,
                "",
            ),
        ));
    }

    // The next ten firings, with shared 5-minute buckets marked.
    let mut next: Vec<(Timestamp, String, String)> = Vec::new();
    for s in schedules
        .iter()
        .filter(|s| s.status == ScheduleStatus::Active)
    {
        let Ok(v) = s.spec.validate() else { continue };
        let from = Timestamp(now.0 - 1);
        let first = s.next_fire_at.filter(|t| *t > now);
        let mut times = v
            .rule
            .fire_times(from, Timestamp(now.0 + 7 * 86_400_000), s.anchor, 10);
        if let Some(f) = first
            && !times.contains(&f)
        {
            times.insert(0, f);
        }
        for t in times.into_iter().take(10) {
            next.push((t, s.name.clone(), v.job.queue.clone()));
        }
    }
    next.sort();
    next.truncate(10);
    let bucket = |t: Timestamp| t.0.div_euclid(300_000);
    let rows: Vec<Vec<String>> = next
        .iter()
        .map(|(t, name, queue)| {
            let shared = next.iter().filter(|(u, n, _)| bucket(*u) == bucket(*t) && n != name).count();
            vec![
                when(Some(*t), now),
                format!("<span class=\"small\">{t}</span>"),
                schedule_link(name),
                esc(queue),
                if shared > 0 { format!("<span class=\"warn-text\">shares its 5 minutes with {shared} other(s)</span>") } else { String::new() },
            ]
        })
        .collect();
    main.push_str(&section(
        "next",
        "Next firings",
        &table(
            &["when", "at", "schedule", "queue", ""],
            &rows,
            "No active schedule fires in the next week.",
        ),
    ));

    // Recent failures.
    let rows: Vec<Vec<String>> = failed
        .iter()
        .map(|j| {
            vec![
                job_link(j.id),
                esc(&j.kind),
                j.schedule.as_deref().map_or("—".into(), schedule_link),
                j.failure_reason.map_or("—".into(), |r| badge(r.as_str())),
                esc(&crate::html::esc_trunc(
                    j.last_error.as_deref().unwrap_or(""),
                    120,
                )),
                when(j.finished_at, now),
            ]
        })
        .collect();
    main.push_str(&section(
        "failures",
        "Recent failures",
        &table(
            &["job", "kind", "schedule", "reason", "error", "when"],
            &rows,
            "No failed jobs.",
        ),
    ));
    Ok(Page {
        title: "Overview".into(),
        nav: "/",
        main,
        live_ms: Some(2000),
    }
    .respond(&headers))
}
