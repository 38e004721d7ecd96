//! `/timeline?hours=N`: a Gantt of the last N hours of runs, one row per
//! schedule (or per queue for jobs without one), with slot waits drawn
//! before each scheduled run and the running count against the global cap
//! below; then the forecast of the next 24 hours with suggested offsets.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use reeve_api::AppState;
use reeve_core::{JobState, Timestamp};
use serde::Deserialize;

use crate::html::{esc, ms, section, table};
use crate::pages::schedule_link;
use crate::svg::{self, Span};
use crate::{Page, PageResult};

/// Runs drawn at most.
const MAX_RUNS: u32 = 2000;
/// Rows drawn at most (the busiest ones).
const MAX_ROWS: usize = 40;

#[derive(Debug, Deserialize, Default)]
pub struct TimelineQuery {
    hours: Option<u32>,
}

pub async fn page(
    State(state): State<AppState>,
    Query(q): Query<TimelineQuery>,
    headers: HeaderMap,
) -> PageResult {
    let hours = q.hours.unwrap_or(6).clamp(1, 72);
    let store = state.store.as_ref();
    let now = store.now().await?;
    let width = i64::from(hours) * 3_600_000;
    let start = now.0 - width;
    let runs = store.runs_since(Timestamp(start), MAX_RUNS).await?;
    let limits = store.limits().await?;

    let mut by_row: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for j in &runs {
        let Some(claimed) = j.claimed_at else {
            continue;
        };
        let row = match &j.schedule {
            Some(s) => s.clone(),
            None => format!("queue {}", j.queue),
        };
        let end = j.finished_at.map_or(now.0, |f| f.0);
        let spans = by_row.entry(row).or_default();
        // A scheduled run's wait for its slot, from its nominal time.
        if j.attempt <= 1
            && let Some(nominal) = j.nominal_at
            && claimed.0 > nominal.0 + 1000
        {
            spans.push(Span {
                from: nominal.0 - start,
                to: claimed.0 - start,
                class: "wait".into(),
                title: format!(
                    "#{} waited {} for a slot",
                    j.id,
                    ms(Some(claimed.0 - nominal.0))
                ),
                href: None,
            });
        }
        let class = match j.state {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Cancelled => "cancelled",
            _ => "failed",
        };
        spans.push(Span {
            from: claimed.0 - start,
            to: end - start,
            class: class.into(),
            title: format!(
                "#{} {} {} · {}",
                j.id,
                j.kind,
                j.state.as_str(),
                ms(Some(end - claimed.0))
            ),
            href: Some(format!("/jobs/{}", j.id)),
        });
    }
    let mut rows: Vec<(String, Vec<Span>)> = by_row.into_iter().collect();
    rows.sort_by_key(|(_, s)| std::cmp::Reverse(s.len()));
    let hidden = rows.len().saturating_sub(MAX_ROWS);
    rows.truncate(MAX_ROWS);
    rows.sort_by(|a, b| a.0.cmp(&b.0));

    let tick = if hours <= 6 {
        3_600_000 / 2
    } else {
        3_600_000 * i64::from(hours.div_ceil(12))
    };
    let label = |t: i64| {
        let at = Timestamp(start + t);
        let s = at.to_string();
        s.get(11..16).unwrap_or(&s).to_string()
    };
    let mut main = format!("<h1>Timeline</h1><p class=\"filters\">Last {hours} h (UTC):");
    for h in [1, 6, 24, 72] {
        let cur = if h == hours {
            " aria-current=\"true\""
        } else {
            ""
        };
        let _ = write!(main, " <a href=\"/timeline?hours={h}\"{cur}>{h} h</a>");
    }
    main.push_str("</p>");
    let chart = if rows.is_empty() {
        "<p class=\"muted\">No runs in this window.</p>".to_string()
    } else {
        let axis = svg::Axis {
            width_ms: width,
            first_tick_ms: (tick - start.rem_euclid(tick)) % tick,
            tick_ms: tick,
            label: &label,
        };
        let mut c = svg::gantt(&rows, &axis, limits.global);
        c.push_str("<p class=\"legend\"><span class=\"k g-running\"></span>running <span class=\"k g-succeeded\"></span>succeeded <span class=\"k g-failed\"></span>failed <span class=\"k g-cancelled\"></span>cancelled <span class=\"k g-wait\"></span>waiting for a slot</p>");
        if hidden > 0 {
            let _ = write!(c, "<p class=\"muted\">{hidden} quieter rows not drawn.</p>");
        }
        c
    };
    main.push_str(&section("gantt", "Runs", &chart));

    let f = reeve_api::build_forecast(store, Duration::from_secs(24 * 3600)).await?;
    let rows: Vec<Vec<String>> = f
        .schedules
        .iter()
        .map(|s| {
            vec![
                schedule_link(&s.name),
                esc(&s.queue),
                s.firings.to_string(),
                format!(
                    "{}{}",
                    ms(Some(s.expected_duration_ms)),
                    if s.observed {
                        ""
                    } else {
                        " <span class=\"small\">(default)</span>"
                    }
                ),
                if s.waited > 0 {
                    format!("<strong class=\"warn-text\">{}</strong>", s.waited)
                } else {
                    "0".into()
                },
                ms(Some(s.wait_p50_ms)),
                ms(Some(s.wait_max_ms)),
                s.blocked.to_string(),
                s.self_overlaps.to_string(),
                esc(&s.overlaps_with.join(", ")),
            ]
        })
        .collect();
    let mut forecast = table(
        &[
            "schedule",
            "queue",
            "firings",
            "expected run",
            "waits",
            "wait p50",
            "wait max",
            "blocked",
            "self-overlaps",
            "runs alongside",
        ],
        &rows,
        "No active schedules.",
    );
    if f.suggestions.is_empty() {
        forecast.push_str("<p class=\"muted\">No offsets to suggest.</p>");
    } else {
        forecast.push_str("<h3>Suggested offsets</h3><ul class=\"suggest\">");
        for s in &f.suggestions {
            let _ = write!(
                forecast,
                "<li>Move {} by <strong>{}{} min</strong> (first fire {}): its waits {} → {}, all waits → {}</li>",
                schedule_link(&s.schedule),
                if s.offset_minutes > 0 { "+" } else { "" },
                s.offset_minutes,
                esc(&s.first_fire_after_offset.to_string()),
                s.waits_before,
                s.waits_after,
                s.total_waits_after
            );
        }
        forecast.push_str("</ul>");
    }
    main.push_str(&section(
        "forecast",
        "Forecast: the next 24 hours",
        &forecast,
    ));
    Ok(Page {
        title: "Timeline".into(),
        nav: "/timeline",
        main,
        live_ms: Some(10_000),
    }
    .respond(&headers))
}
