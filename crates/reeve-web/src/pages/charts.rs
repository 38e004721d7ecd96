//! `/charts`: per schedule, slot wait and duration p50 / p95 per hour over
//! the last 24 hours (from the firing ledger); jobs finished per hour and
//! failures by reason (aggregates over the last 24 hours).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::HeaderMap;
use reeve_api::{AppState, Percentiles};
use reeve_core::Timestamp;

use crate::html::{badge, esc, ms, section, table};
use crate::pages::schedule_link;
use crate::svg::{self, Points};
use crate::{Page, PageResult};

const HOUR: i64 = 3_600_000;
/// Schedules charted at most (those with the most firings).
const MAX_SCHEDULES: usize = 12;
/// Ledger rows read per schedule.
const ROWS: u32 = 2000;

/// Hourly p50 and p95 of `(at, value)` points from `start`.
fn hourly(points: &[(i64, i64)], start: i64) -> (Points, Points) {
    let mut by_hour: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (at, v) in points {
        if *at >= start {
            by_hour.entry((at - start) / HOUR).or_default().push(*v);
        }
    }
    let mut p50 = Vec::new();
    let mut p95 = Vec::new();
    for (h, values) in by_hour {
        let p = Percentiles::of(values);
        let x = h as f64 + 0.5;
        if let (Some(a), Some(b)) = (p.p50, p.p95) {
            p50.push((x, a as f64));
            p95.push((x, b as f64));
        }
    }
    (p50, p95)
}

pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    let store = state.store.as_ref();
    let now = store.now().await?;
    let start = now.0 - 24 * HOUR;
    let hour_label = |x: f64| {
        let at = Timestamp(start + (x * HOUR as f64) as i64);
        let s = at.to_string();
        s.get(11..16).unwrap_or(&s).to_string()
    };
    let ms_label = |y: f64| ms(Some(y as i64));

    let mut main = String::from("<h1>Metrics</h1><p class=\"sub\">The last 24 hours, UTC.</p>");
    let mut per_schedule = Vec::new();
    for r in store.list_schedules().await? {
        let rows = store.firings(&r.name, ROWS).await?;
        let recent: Vec<_> = rows.into_iter().filter(|f| f.at.0 >= start).collect();
        if !recent.is_empty() {
            per_schedule.push((r.name, recent));
        }
    }
    per_schedule.sort_by_key(|(_, rows)| std::cmp::Reverse(rows.len()));
    let skipped = per_schedule.len().saturating_sub(MAX_SCHEDULES);
    per_schedule.truncate(MAX_SCHEDULES);
    per_schedule.sort_by(|a, b| a.0.cmp(&b.0));
    let mut charts = String::new();
    for (name, rows) in &per_schedule {
        let waits: Vec<(i64, i64)> = rows
            .iter()
            .filter_map(|f| Some((f.claimed_at?.0, f.slot_wait_ms?)))
            .collect();
        let durations: Vec<(i64, i64)> = rows
            .iter()
            .filter_map(|f| Some((f.finished_at?.0, f.duration_ms?)))
            .collect();
        let (w50, w95) = hourly(&waits, start);
        let (d50, d95) = hourly(&durations, start);
        let _ = write!(
            charts,
            "<figure class=\"card\"><figcaption>{} <span class=\"small\">{} firings</span></figcaption>\
             <div class=\"pair\"><div><div class=\"small\">slot wait</div>{}</div><div><div class=\"small\">duration</div>{}</div></div></figure>",
            schedule_link(name),
            rows.len(),
            svg::lines(
                &[
                    ("slot wait p50".into(), "p50".into(), w50),
                    ("slot wait p95".into(), "p95".into(), w95)
                ],
                24.0,
                &ms_label,
                &hour_label
            ),
            svg::lines(
                &[
                    ("duration p50".into(), "p50".into(), d50),
                    ("duration p95".into(), "p95".into(), d95)
                ],
                24.0,
                &ms_label,
                &hour_label
            ),
        );
    }
    if charts.is_empty() {
        charts = "<p class=\"muted\">No firings in the last 24 hours.</p>".into();
    } else {
        charts.push_str("<p class=\"legend\"><span class=\"k p50\"></span>p50 <span class=\"k p95\"></span>p95</p>");
    }
    if skipped > 0 {
        let _ = write!(
            charts,
            "<p class=\"muted\">{skipped} quieter schedules not charted.</p>"
        );
    }
    main.push_str(&section(
        "per-schedule",
        "Slot wait and duration by schedule",
        &charts,
    ));

    let finished = store.finished_stats(Timestamp(start)).await?;
    let mut per_hour = [0u64; 24];
    for (h, n) in &finished.per_hour {
        per_hour[(*h).clamp(0, 23) as usize] += n;
    }
    let values: Vec<(String, f64)> = per_hour
        .iter()
        .enumerate()
        .map(|(h, n)| (hour_label(h as f64), *n as f64))
        .collect();
    main.push_str(&section(
        "per-hour",
        "Jobs finished per hour",
        &svg::bars(&values, 3),
    ));
    let rows: Vec<Vec<String>> = finished
        .failed_by_reason
        .iter()
        .map(|(r, n)| {
            vec![
                badge(r),
                n.to_string(),
                "<a href=\"/jobs?state=failed\">failed jobs</a>".to_string(),
            ]
        })
        .collect();
    main.push_str(&section(
        "failures",
        "Failures by reason",
        &table(
            &["reason", "runs", ""],
            &rows,
            "No failures in the last 24 hours.",
        ),
    ));
    let _ = esc;
    Ok(Page {
        title: "Metrics".into(),
        nav: "/charts",
        main,
        live_ms: None,
    }
    .respond(&headers))
}
