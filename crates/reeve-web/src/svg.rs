//! Charts as SVG, rendered on the server: a lease bar, an outcome strip, a
//! Gantt of runs with the cap drawn, line charts and bar charts.
//!
//! **Invariants.** Output is plain SVG markup sized by `viewBox` (it scales
//! with the window), every label goes through `esc`, and every drawing
//! function is a pure function of its inputs (no clock, no store).

use std::fmt::Write as _;

use crate::html::esc;

/// A horizontal bar filled to `fraction` (0..=1), coloured by `tone`
/// (`ok`, `warn`, `bad`), with an accessible label.
pub fn bar(fraction: f64, tone: &str, label: &str) -> String {
    let pct = (fraction.clamp(0.0, 1.0) * 100.0).round();
    format!(
        "<svg class=\"bar\" viewBox=\"0 0 100 8\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{label}\">\
         <rect width=\"100\" height=\"8\" class=\"track\"/><rect width=\"{pct}\" height=\"8\" class=\"fill {tone}\"/>\
         <title>{label}</title></svg>",
        label = esc(label)
    )
}

/// One square per outcome, oldest left, each titled.
pub fn strip(items: &[(String, String)]) -> String {
    if items.is_empty() {
        return "<span class=\"muted\">—</span>".into();
    }
    let w = items.len() * 12;
    let mut out = format!(
        "<svg class=\"strip\" viewBox=\"0 0 {w} 10\" width=\"{w}\" height=\"10\" role=\"img\" aria-label=\"last outcomes\">"
    );
    for (i, (class, title)) in items.iter().enumerate() {
        let _ = write!(
            out,
            "<rect x=\"{}\" y=\"0\" width=\"10\" height=\"10\" rx=\"2\" class=\"o-{}\"><title>{}</title></rect>",
            i * 12,
            esc(class),
            esc(title)
        );
    }
    out.push_str("</svg>");
    out
}

/// One bar of a Gantt row.
#[derive(Debug, Clone)]
pub struct Span {
    /// Start and end in ms since the chart's start.
    pub from: i64,
    pub to: i64,
    /// A class for its colour (`running`, `succeeded`, `failed`, `wait`).
    pub class: String,
    pub title: String,
    /// A link (the job's page).
    pub href: Option<String>,
}

/// The time axis of a Gantt: its width, and a tick every `tick_ms` from
/// `first_tick_ms` (both in ms since the chart's start), labelled by
/// `label`.
pub struct Axis<'a> {
    pub width_ms: i64,
    pub first_tick_ms: i64,
    pub tick_ms: i64,
    pub label: &'a dyn Fn(i64) -> String,
}

/// A Gantt of `rows` (label, spans) along `axis`, and below it the number
/// of runs at each instant against `cap` (a dashed line), so overlaps and
/// slot waits are visible.
pub fn gantt(rows: &[(String, Vec<Span>)], axis: &Axis<'_>, cap: Option<u32>) -> String {
    let width_ms = axis.width_ms;
    const LABEL: f64 = 160.0;
    const WIDTH: f64 = 900.0;
    const ROW: f64 = 18.0;
    let scale = (WIDTH - LABEL) / width_ms.max(1) as f64;
    let x = |ms: i64| LABEL + ms.clamp(0, width_ms) as f64 * scale;
    let load_h = 60.0;
    let top = 16.0;
    let height = top + rows.len() as f64 * ROW + 10.0 + load_h + 16.0;
    let mut out = format!(
        "<svg class=\"gantt\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"runs over time\">"
    );
    // Ticks.
    let mut t = axis.first_tick_ms.max(0);
    while axis.tick_ms > 0 && t <= width_ms {
        let _ = write!(
            out,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{top}\" y2=\"{1:.1}\" class=\"tick\"/><text x=\"{0:.1}\" y=\"11\" class=\"tl\">{2}</text>",
            x(t),
            height - 16.0,
            esc(&(axis.label)(t))
        );
        t += axis.tick_ms;
    }
    let mut events: Vec<(i64, i32)> = Vec::new();
    for (i, (label, spans)) in rows.iter().enumerate() {
        let y = top + i as f64 * ROW;
        let _ = write!(
            out,
            "<text x=\"4\" y=\"{:.1}\" class=\"rl\">{}</text>",
            y + 12.0,
            esc(label)
        );
        for s in spans {
            let (x0, x1) = (x(s.from), x(s.to.max(s.from)));
            let w = (x1 - x0).max(1.5);
            let (yy, hh) = if s.class == "wait" {
                (y + 7.0, 3.0)
            } else {
                events.push((s.from.max(0), 1));
                events.push((s.to.min(width_ms), -1));
                (y + 2.0, 13.0)
            };
            let rect = format!(
                "<rect x=\"{x0:.1}\" y=\"{yy:.1}\" width=\"{w:.1}\" height=\"{hh:.1}\" class=\"g-{}\"><title>{}</title></rect>",
                esc(&s.class),
                esc(&s.title)
            );
            match &s.href {
                Some(h) => {
                    let _ = write!(out, "<a href=\"{}\">{rect}</a>", esc(h));
                }
                None => out.push_str(&rect),
            }
        }
    }
    // The load: runs at once over time, and the cap.
    events.sort();
    let base = height - 16.0;
    let peak = events
        .iter()
        .scan(0i32, |n, (_, d)| {
            *n += d;
            Some(*n)
        })
        .max()
        .unwrap_or(0)
        .max(cap.unwrap_or(0) as i32)
        .max(1);
    let yv = |n: i32| base - n as f64 / peak as f64 * load_h;
    let mut path = format!("M{:.1},{base:.1}", x(0));
    let mut n = 0;
    for (at, d) in &events {
        let _ = write!(path, " L{:.1},{:.1}", x(*at), yv(n));
        n += d;
        let _ = write!(path, " L{:.1},{:.1}", x(*at), yv(n));
    }
    let _ = write!(
        path,
        " L{:.1},{:.1} L{:.1},{base:.1} Z",
        x(width_ms),
        yv(n),
        x(width_ms)
    );
    let _ = write!(
        out,
        "<path d=\"{path}\" class=\"load\"><title>runs at once (peak {peak})</title></path>\
         <text x=\"4\" y=\"{:.1}\" class=\"rl\">runs at once</text>",
        base - load_h / 2.0
    );
    if let Some(cap) = cap {
        let _ = write!(
            out,
            "<line x1=\"{LABEL}\" x2=\"{WIDTH}\" y1=\"{0:.1}\" y2=\"{0:.1}\" class=\"cap\"/>\
             <text x=\"{1:.1}\" y=\"{2:.1}\" class=\"capl\">cap {cap}</text>",
            yv(cap as i32),
            WIDTH - 50.0,
            yv(cap as i32) - 3.0
        );
    }
    out.push_str("</svg>");
    out
}

/// Points of a chart, `(x, y)`.
pub type Points = Vec<(f64, f64)>;

/// A line chart of named series (name, colour class, points); x in
/// `[0, x_max]`.
pub fn lines(
    series: &[(String, String, Points)],
    x_max: f64,
    y_label: &dyn Fn(f64) -> String,
    x_label: &dyn Fn(f64) -> String,
) -> String {
    const W: f64 = 420.0;
    const H: f64 = 140.0;
    const L: f64 = 52.0;
    const B: f64 = 18.0;
    let y_max = series
        .iter()
        .flat_map(|(_, _, pts)| pts.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let px = |x: f64| L + x / x_max.max(1.0) * (W - L - 6.0);
    let py = |y: f64| (H - B) - y / y_max * (H - B - 8.0);
    let mut out = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"chart\">\
         <line x1=\"{L}\" x2=\"{L}\" y1=\"4\" y2=\"{0}\" class=\"axis\"/><line x1=\"{L}\" x2=\"{W}\" y1=\"{0}\" y2=\"{0}\" class=\"axis\"/>\
         <text x=\"2\" y=\"12\" class=\"tl\">{1}</text><text x=\"2\" y=\"{0}\" class=\"tl\">0</text>\
         <text x=\"{L}\" y=\"{H}\" class=\"tl\">{2}</text><text x=\"{3}\" y=\"{H}\" class=\"tl\">{4}</text>",
        H - B,
        esc(&y_label(y_max)),
        esc(&x_label(0.0)),
        W - 60.0,
        esc(&x_label(x_max)),
    );
    for (name, class, pts) in series {
        if pts.is_empty() {
            continue;
        }
        let d: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            out,
            "<polyline points=\"{}\" class=\"ln {}\"><title>{}</title></polyline>",
            d.join(" "),
            esc(class),
            esc(name)
        );
        for (x, y) in pts {
            let _ = write!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" class=\"pt {}\"><title>{}: {}</title></circle>",
                px(*x),
                py(*y),
                esc(class),
                esc(name),
                esc(&y_label(*y))
            );
        }
    }
    out.push_str("</svg>");
    out
}

/// Vertical bars, one per value, labelled every `label_every`.
pub fn bars(values: &[(String, f64)], label_every: usize) -> String {
    const W: f64 = 420.0;
    const H: f64 = 120.0;
    let max = values.iter().map(|v| v.1).fold(0.0f64, f64::max).max(1.0);
    let n = values.len().max(1) as f64;
    let bw = (W - 10.0) / n;
    let mut out = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"bars\"><text x=\"2\" y=\"10\" class=\"tl\">{max}</text>"
    );
    for (i, (label, v)) in values.iter().enumerate() {
        let h = v / max * (H - 30.0);
        let x = 5.0 + i as f64 * bw;
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" class=\"bv\"><title>{}: {v}</title></rect>",
            H - 16.0 - h,
            (bw - 2.0).max(1.0),
            esc(label)
        );
        if label_every > 0 && i % label_every == 0 {
            let _ = write!(
                out,
                "<text x=\"{x:.1}\" y=\"{H}\" class=\"tl\">{}</text>",
                esc(label)
            );
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gantt_draws_runs_the_load_and_the_cap() {
        let rows = vec![
            (
                "a".to_string(),
                vec![Span {
                    from: 0,
                    to: 50,
                    class: "succeeded".into(),
                    title: "job 1".into(),
                    href: Some("/jobs/1".into()),
                }],
            ),
            (
                "b<x>".to_string(),
                vec![
                    Span {
                        from: 0,
                        to: 20,
                        class: "wait".into(),
                        title: "waited".into(),
                        href: None,
                    },
                    Span {
                        from: 20,
                        to: 100,
                        class: "running".into(),
                        title: "job 2".into(),
                        href: None,
                    },
                ],
            ),
        ];
        let label = |t: i64| format!("{t}");
        let axis = Axis {
            width_ms: 100,
            first_tick_ms: 0,
            tick_ms: 50,
            label: &label,
        };
        let svg = gantt(&rows, &axis, Some(1));
        assert!(svg.contains("g-succeeded") && svg.contains("g-running") && svg.contains("g-wait"));
        assert!(svg.contains("b&lt;x&gt;"), "labels are escaped");
        assert!(svg.contains("class=\"cap\"") && svg.contains("cap 1"));
        assert!(
            svg.contains("peak 2"),
            "two runs overlap between 20 and 50: {svg}"
        );
        assert!(svg.contains("href=\"/jobs/1\""));
    }

    #[test]
    fn strips_and_bars() {
        let s = strip(&[
            ("succeeded".into(), "09:00 ok".into()),
            ("failed".into(), "10:00".into()),
        ]);
        assert_eq!(s.matches("<rect").count(), 2);
        assert!(bar(0.5, "ok", "half").contains("width=\"50\""));
        assert!(bars(&[("09".into(), 3.0), ("10".into(), 0.0)], 1).contains("09: 3"));
    }
}
