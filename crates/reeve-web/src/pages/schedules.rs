//! `/schedules`: every schedule with its rule in words, next fire times,
//! its last outcomes as a strip, streaks and auto-pause reason, average
//! duration and turns; pause / resume / run now (a full cap shows the slot
//! ETA and offers a forced run, which is audited). `/schedules/{name}`: one
//! schedule with its ledger explained row by row and its metrics.

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use reeve_api::{AppState, Percentiles};
use reeve_core::Timestamp;
use reeve_schedule::ScheduleStatus;
use reeve_store::{FiringRecord, ScheduleRecord};

use crate::html::{action, badge, esc, ms, section, table, url, when};
use crate::pages::{job_link, schedule_link};
use crate::{Page, PageResult, svg};

/// Ledger rows shown as the outcome strip.
const STRIP: u32 = 12;

/// The outcome a ledger row shows: its job's end when it ended.
fn shown_outcome(f: &FiringRecord) -> String {
    match (&f.state, f.outcome.as_str()) {
        (Some(state), _) => state.clone(),
        (None, "fired" | "manual" | "forced" | "probe" | "caught_up") if f.claimed_at.is_some() => {
            "running".into()
        }
        (None, "fired" | "manual" | "forced" | "probe" | "caught_up") => "waiting".into(),
        (None, other) => other.to_string(),
    }
}

fn strip(rows: &[FiringRecord]) -> String {
    let items: Vec<(String, String)> = rows
        .iter()
        .rev()
        .map(|f| {
            let o = shown_outcome(f);
            let mut title = format!("{} {}: {o}", f.nominal_at, f.outcome);
            if let Some(r) = &f.failure_reason {
                let _ = write!(title, " ({r})");
            }
            (o, title)
        })
        .collect();
    svg::strip(&items)
}

fn actions(r: &ScheduleRecord) -> String {
    let base = format!("/v1/schedules/{}", url(&r.name));
    let mut out = String::new();
    match r.status {
        ScheduleStatus::Active => {
            out.push_str(&action("Pause", &format!("{base}/pause"), "{}", None))
        }
        ScheduleStatus::Paused => {
            out.push_str(&action("Resume", &format!("{base}/resume"), "{}", None));
            out.push_str(&action("Probe", &format!("{base}/resume"), "{\"probe\":true}", Some("Run one canary firing now? The schedule becomes active again only if it succeeds.")));
        }
    }
    out.push_str(&action("Run now", &format!("{base}/run"), "{}", None));
    out
}

fn avg(rows: &[FiringRecord]) -> (Option<i64>, Option<f64>) {
    let done: Vec<&FiringRecord> = rows.iter().filter(|r| r.finished_at.is_some()).collect();
    let d: Vec<i64> = done.iter().filter_map(|r| r.duration_ms).collect();
    let t: Vec<i64> = done.iter().filter_map(|r| r.turns).collect();
    (
        (!d.is_empty()).then(|| d.iter().sum::<i64>() / d.len() as i64),
        (!t.is_empty()).then(|| t.iter().sum::<i64>() as f64 / t.len() as f64),
    )
}

/// The next `n` nominal fire times of an active schedule.
fn next_fires(r: &ScheduleRecord, now: Timestamp, n: usize) -> Vec<Timestamp> {
    if r.status != ScheduleStatus::Active {
        return Vec::new();
    }
    let Some(first) = r.next_fire_at else {
        return Vec::new();
    };
    let Ok(v) = r.spec.validate() else {
        return Vec::new();
    };
    let mut out = vec![first];
    out.extend(v.rule.fire_times(
        first.max(now),
        Timestamp(now.0 + 30 * 86_400_000),
        r.anchor,
        n - 1,
    ));
    out.truncate(n);
    out
}

fn status_cell(r: &ScheduleRecord) -> String {
    let mut s = badge(r.status.as_str());
    if let Some(reason) = &r.paused_reason {
        let _ = write!(s, "<div class=\"small\">{}</div>", esc(reason));
    }
    if let Some(p) = r.probe_job {
        let _ = write!(s, "<div class=\"small\">probe {}</div>", job_link(p));
    }
    s
}

pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    let store = state.store.as_ref();
    let now = store.now().await?;
    let records = store.list_schedules().await?;
    let mut rows = Vec::with_capacity(records.len());
    for r in &records {
        let ledger = store.firings(&r.name, 20).await?;
        let (avg_ms, avg_turns) = avg(&ledger);
        let rule = r
            .spec
            .validate()
            .map_or_else(|e| format!("invalid: {e}"), |v| v.rule.describe());
        let next: Vec<String> = next_fires(r, now, 3)
            .into_iter()
            .map(|t| when(Some(t), now))
            .collect();
        let max_turns = r.spec.job.max_turns;
        let turns = match (avg_turns, max_turns) {
            (Some(a), Some(m)) => format!("{a:.1} / {m}"),
            (Some(a), None) => format!("{a:.1}"),
            (None, Some(m)) => format!("— / {m}"),
            (None, None) => "—".into(),
        };
        let mut name = schedule_link(&r.name);
        if let Some(d) = &r.spec.description {
            let _ = write!(name, "<div class=\"small\">{}</div>", esc(d));
        }
        rows.push(vec![
            name,
            esc(&rule),
            status_cell(r),
            if next.is_empty() {
                "—".into()
            } else {
                next.join("<br>")
            },
            strip(&ledger[..ledger.len().min(STRIP as usize)]),
            format!("{} / {}", r.generic_streak, r.budget_streak),
            ms(avg_ms),
            turns,
            format!("<span class=\"actions\">{}</span>", actions(r)),
        ]);
    }
    let mut main = String::from("<h1>Schedules</h1>");
    main.push_str(&table(
        &[
            "schedule",
            "rule",
            "status",
            "next",
            "last outcomes",
            "streaks (fail / budget)",
            "avg duration",
            "avg turns",
            "",
        ],
        &rows,
        "No schedules. Apply some with `reeve apply -f FILE`.",
    ));
    Ok(Page {
        title: "Schedules".into(),
        nav: "/schedules",
        main,
        live_ms: Some(5000),
    }
    .respond(&headers))
}

/// A ledger row in words, for the schedule's page.
fn explain(f: &FiringRecord) -> String {
    let job = f.job_id.map_or(String::new(), job_link);
    let mut s = match f.outcome.as_str() {
        "skipped_overlap" => "skipped: the previous firing was still running".to_string(),
        "skipped_paused" => "skipped: the schedule was paused".to_string(),
        "skipped_misfire" => "skipped: the daemon was down (misfire policy)".to_string(),
        "coalesced" => format!("coalesced into waiting {job}"),
        "deferred" => format!("deferred by pressure {}×", f.deferrals),
        _ => {
            let mut s = job.clone();
            if let Some(w) = f.slot_wait_ms {
                let _ = write!(s, " · waited {} for a slot", ms(Some(w)));
            }
            if let Some(n) = f.running_at_claim {
                let _ = write!(s, " · {n} running at its claim");
            }
            match &f.state {
                Some(state) => {
                    let _ = write!(s, " · {} after {}", esc(state), ms(f.duration_ms));
                }
                None if f.claimed_at.is_some() => s.push_str(" · running"),
                None => s.push_str(" · waiting"),
            }
            s
        }
    };
    if f.deferrals > 0 && f.outcome != "deferred" {
        let _ = write!(s, " · deferred {}× first", f.deferrals);
    }
    if let Some(d) = &f.detail {
        let _ = write!(s, " <span class=\"small\">{}</span>", esc(d));
    }
    s
}

fn pct(p: &Percentiles) -> String {
    if p.count == 0 {
        return "—".into();
    }
    format!("p50 {} · p95 {} · max {}", ms(p.p50), ms(p.p95), ms(p.max))
}

pub async fn detail(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> PageResult {
    let store = state.store.as_ref();
    let r = store.get_schedule(&name).await?;
    let now = store.now().await?;
    let ledger = store.firings(&name, 200).await?;
    let rule = r
        .spec
        .validate()
        .map_or_else(|e| format!("invalid: {e}"), |v| v.rule.describe());
    let mut main = format!(
        "<h1>Schedule {}</h1><p class=\"sub\">{}</p><p class=\"actions\">{}</p>",
        esc(&r.name),
        esc(&rule),
        actions(&r)
    );
    let next: Vec<String> = next_fires(&r, now, 5)
        .into_iter()
        .map(|t| when(Some(t), now))
        .collect();
    let waits = Percentiles::of(ledger.iter().filter_map(|f| f.slot_wait_ms).collect());
    let durations = Percentiles::of(ledger.iter().filter_map(|f| f.duration_ms).collect());
    let mut dl = String::from("<dl class=\"kv\">");
    for (k, v) in [
        ("status", status_cell(&r)),
        (
            "next fires",
            if next.is_empty() {
                "—".into()
            } else {
                next.join(", ")
            },
        ),
        ("deferred until", when(r.defer_until, now)),
        (
            "streaks",
            format!(
                "{} failures, {} budget breaches in a row",
                r.generic_streak, r.budget_streak
            ),
        ),
        ("max_turns set", when(r.max_turns_set_at, now)),
        (
            "last outcomes",
            strip(&ledger[..ledger.len().min(STRIP as usize)]),
        ),
        ("slot wait", pct(&waits)),
        ("duration", pct(&durations)),
        (
            "jobs",
            format!(
                "<a href=\"/jobs?schedule={}\">all jobs of this schedule</a>",
                url(&r.name)
            ),
        ),
    ] {
        let _ = write!(dl, "<dt>{}</dt><dd>{v}</dd>", esc(k));
    }
    dl.push_str("</dl>");
    main.push_str(&dl);
    let _ = write!(
        main,
        "<details><summary>spec</summary><pre>{}</pre></details>",
        esc(&serde_json::to_string_pretty(&r.spec).unwrap_or_default())
    );
    let rows: Vec<Vec<String>> = ledger
        .iter()
        .map(|f| {
            let nominal = match f.nominal_until {
                Some(u) => format!("{} … {}", f.nominal_at, u),
                None => f.nominal_at.to_string(),
            };
            vec![
                format!("<span class=\"small\">{}</span>", esc(&nominal)),
                badge(&f.outcome),
                badge(&shown_outcome(f)),
                explain(f),
                when(Some(f.at), now),
            ]
        })
        .collect();
    main.push_str(&section(
        "ledger",
        "Firing ledger",
        &table(
            &["nominal", "outcome", "now", "what happened", "recorded"],
            &rows,
            "Nothing fired yet.",
        ),
    ));
    Ok(Page {
        title: format!("Schedule {name}"),
        nav: "/schedules",
        main,
        live_ms: Some(3000),
    }
    .respond(&headers))
}
