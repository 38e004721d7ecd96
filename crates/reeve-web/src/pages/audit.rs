//! `/audit`: forced runs, resumes, probes and auto-pauses, newest first.

use axum::extract::State;
use axum::http::HeaderMap;
use reeve_api::AppState;

use crate::html::{badge, esc, esc_trunc, table, when};
use crate::pages::job_link;
use crate::{Page, PageResult};

pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    let store = state.store.as_ref();
    let now = store.now().await?;
    let audit = store.list_audit(200).await?;
    let rows: Vec<Vec<String>> = audit
        .iter()
        .map(|a| {
            let target = match a.target.strip_prefix("schedule:") {
                Some(name) => crate::pages::schedule_link(name),
                None => esc(&a.target),
            };
            let job = a.detail["job_id"].as_i64().map_or(String::new(), job_link);
            vec![
                when(Some(a.at), now),
                esc(&a.actor),
                badge(&a.action),
                target,
                job,
                format!(
                    "<code>{}</code>",
                    esc(&esc_trunc(&a.detail.to_string(), 300))
                ),
            ]
        })
        .collect();
    let main = format!(
        "<h1>Audit</h1>{}",
        table(
            &["when", "who", "action", "target", "job", "detail"],
            &rows,
            "Nothing recorded yet."
        )
    );
    Ok(Page {
        title: "Audit".into(),
        nav: "/audit",
        main,
        live_ms: Some(5000),
    }
    .respond(&headers))
}
