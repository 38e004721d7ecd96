//! HTML by hand: escaping, the page layout, and the small pieces every page
//! uses (time, durations, state badges, tables).
//!
//! **Invariant.** Every piece of data that reaches a page goes through
//! [`esc`] (or is a number); nothing here writes a raw string from the store
//! or a request into the markup.

use std::fmt::Write as _;
use std::time::Duration;

use reeve_core::Timestamp;
use reeve_core::time::format_duration;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The first `max` characters of `s` (with `…` when cut), unescaped: the
/// caller escapes.
pub fn esc_trunc(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Percent-encodes a path segment or query value.
pub fn url(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// The pages, in navigation order: (path, label, shortcut key).
pub const NAV: [(&str, &str, char); 7] = [
    ("/", "Overview", '1'),
    ("/jobs", "Jobs", '2'),
    ("/schedules", "Schedules", '3'),
    ("/timeline", "Timeline", '4'),
    ("/charts", "Metrics", '5'),
    ("/workers", "Workers", '6'),
    ("/audit", "Audit", '7'),
];

/// A whole page: head, navigation (the current page marked), and `main`.
/// `live_ms` makes the page refresh its `main` in place at that interval.
pub fn layout(title: &str, active: &str, main: &str, live_ms: Option<u32>) -> String {
    let mut nav = String::new();
    for (path, label, key) in NAV {
        let current = if path == active {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(
            nav,
            "<a href=\"{path}\"{current} data-key=\"{key}\"><kbd>{key}</kbd> {label}</a>"
        );
    }
    let live = live_ms.map_or(String::new(), |ms| format!(" data-live=\"{ms}\""));
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · reeve</title>\
         <link rel=\"stylesheet\" href=\"/ui/app.css\">\
         <script src=\"/ui/app.js\" defer></script></head><body>\
         <a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><span class=\"brand\">reeve</span><nav aria-label=\"Pages\">{nav}</nav></header>\
         <div id=\"flash\" role=\"status\" aria-live=\"polite\"></div>\
         <main id=\"main\" tabindex=\"-1\"{live}>{main}</main></body></html>",
        title = esc(title)
    )
}

/// `12s ago` / `in 3m` / `now` between `at` and `now`.
pub fn ago(at: Timestamp, now: Timestamp) -> String {
    let ms = now.millis_until(at);
    let secs = ms.unsigned_abs().saturating_add(500) / 1000;
    if secs == 0 {
        return "now".into();
    }
    let d = format_duration(Duration::from_secs(secs));
    if ms > 0 {
        format!("in {d}")
    } else {
        format!("{d} ago")
    }
}

/// An instant as `<time>`: relative text, the exact instant on hover.
pub fn when(at: Option<Timestamp>, now: Timestamp) -> String {
    match at {
        Some(at) => format!(
            "<time datetime=\"{at}\" title=\"{at}\">{}</time>",
            esc(&ago(at, now))
        ),
        None => "<span class=\"muted\">—</span>".into(),
    }
}

/// Milliseconds for people: `340 ms`, `4.2 s`, `3m 10s`.
pub fn ms(v: Option<i64>) -> String {
    match v {
        None => "—".into(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) if ms < 10_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format_duration(Duration::from_secs((ms.max(0) as u64 + 500) / 1000)),
    }
}

/// A state or outcome as a coloured badge (the colour class is the name).
pub fn badge(name: &str) -> String {
    let class: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("<span class=\"badge b-{class}\">{}</span>", esc(name))
}

/// A table in a horizontally scrolling wrapper (narrow windows).
pub fn table(headers: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p class=\"muted empty\">{}</p>", esc(empty));
    }
    let mut out = String::from("<div class=\"scroll\"><table><thead><tr>");
    for h in headers {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// A button that POSTs JSON to the API (see app.js), with an optional
/// confirmation question.
pub fn action(label: &str, url: &str, body: &str, confirm: Option<&str>) -> String {
    let confirm = confirm.map_or(String::new(), |c| format!(" data-confirm=\"{}\"", esc(c)));
    format!(
        "<button type=\"button\" class=\"act\" data-post=\"{}\" data-body=\"{}\"{confirm}>{}</button>",
        esc(url),
        esc(body),
        esc(label)
    )
}

/// A `<section>` with a heading.
pub fn section(id: &str, title: &str, body: &str) -> String {
    format!(
        "<section id=\"{id}\" aria-labelledby=\"h-{id}\"><h2 id=\"h-{id}\">{}</h2>{body}</section>",
        esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_urls() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(url("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(
            badge("skipped_overlap"),
            "<span class=\"badge b-skipped-overlap\">skipped_overlap</span>"
        );
    }

    #[test]
    fn durations_and_times() {
        assert_eq!(ms(Some(340)), "340 ms");
        assert_eq!(ms(Some(4200)), "4.2 s");
        assert_eq!(ms(None), "—");
        let now = Timestamp(100_000);
        assert_eq!(ago(Timestamp(88_000), now), "12s ago");
        assert_eq!(ago(Timestamp(100_200), now), "now");
        assert_eq!(ago(Timestamp(280_000), now), "in 3m");
    }
}
