//! `/workers`: the executors doing the work — this daemon (slots used /
//! total, leader, counters), the registered remote workers (host, kinds,
//! slots used / total, last seen, version; stale and gone ones marked), and
//! any other claimer holding runs (another daemon), with the age of its
//! newest heartbeat; one silent past its runs' heartbeat timeout is stale.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::HeaderMap;
use reeve_api::AppState;
use reeve_core::Timestamp;

use crate::html::{badge, esc, ms, section, table, when};
use crate::{Page, PageResult};

struct Claimer {
    runs: u64,
    last_beat: Option<Timestamp>,
    timeout_ms: i64,
    queues: Vec<String>,
    kinds: Vec<String>,
}

pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    let store = state.store.as_ref();
    let now = store.now().await?;
    let stats = state.runtime.stats();
    let me = state.runtime.worker_id();
    let running = store.running_jobs(None, 1000).await?;
    let mut claimers: BTreeMap<String, Claimer> = BTreeMap::new();
    for j in &running {
        let name = j.claimed_by.clone().unwrap_or_else(|| "?".into());
        let c = claimers.entry(name).or_insert(Claimer {
            runs: 0,
            last_beat: None,
            timeout_ms: 0,
            queues: Vec::new(),
            kinds: Vec::new(),
        });
        c.runs += 1;
        c.last_beat = c.last_beat.max(j.heartbeat_at.or(j.claimed_at));
        c.timeout_ms = c
            .timeout_ms
            .max(reeve_core::time::duration_millis(j.heartbeat_timeout));
        if !c.queues.contains(&j.queue) {
            c.queues.push(j.queue.clone());
        }
        if !c.kinds.contains(&j.kind) {
            c.kinds.push(j.kind.clone());
        }
    }
    let registered = store
        .list_workers(200, std::time::Duration::from_secs(3600))
        .await?;
    let stale_after = state.config.worker_stale_after;
    let remote: Vec<Vec<String>> = registered
        .iter()
        .map(|w| {
            let running = claimers.remove(&w.id).map_or(0, |c| c.runs);
            let status = if w.deregistered_at.is_some() {
                badge("gone")
            } else if w.is_stale(now, stale_after) {
                badge("stale")
            } else {
                badge("active")
            };
            vec![
                format!(
                    "{}<div class=\"small\">{}</div>",
                    esc(&w.worker.name),
                    esc(&w.id)
                ),
                status,
                esc(w.worker.host.as_deref().unwrap_or("—")),
                esc(&w.worker.kinds.join(", ")),
                format!("{running} / {}", w.worker.slots),
                when(Some(w.last_seen_at), now),
                esc(&w.worker.labels.join(", ")),
                esc(w.worker.version.as_deref().unwrap_or("—")),
            ]
        })
        .collect();
    let mine = claimers.remove(&me);
    let mut rows = vec![vec![
        format!("{} <span class=\"small\">(this daemon)</span>", esc(&me)),
        if stats.leader {
            badge("leader")
        } else {
            badge("follower")
        },
        format!("{} / {}", stats.busy, stats.slots),
        mine.as_ref()
            .map_or("—".into(), |c| esc(&c.kinds.join(", "))),
        "now".into(),
        format!(
            "{} claimed · {} finished · {} reaped · {} refused write-backs",
            stats.claimed_total,
            stats.finished_total,
            stats.reaped_total,
            stats.refused_writebacks_total
        ),
    ]];
    for (name, c) in &claimers {
        let age = c.last_beat.map(|b| b.millis_until(now).max(0));
        let stale = age.is_some_and(|a| a > c.timeout_ms);
        rows.push(vec![
            esc(name),
            if stale {
                badge("stale")
            } else {
                badge("active")
            },
            format!("{} running", c.runs),
            esc(&c.kinds.join(", ")),
            format!(
                "{} <span class=\"small\">({} ago)</span>",
                when(c.last_beat, now),
                ms(age)
            ),
            format!("queues {}", esc(&c.queues.join(", "))),
        ]);
    }
    let mut main = String::from("<h1>Workers</h1>");
    main.push_str(&section(
        "workers",
        "Executors",
        &table(
            &[
                "worker",
                "status",
                "slots / runs",
                "kinds running",
                "last seen",
                "",
            ],
            &rows,
            "",
        ),
    ));
    main.push_str(&section(
        "remote",
        "Remote workers",
        &table(
            &[
                "worker",
                "status",
                "host",
                "kinds",
                "slots used",
                "last seen",
                "labels",
                "version",
            ],
            &remote,
            "No remote worker has registered (run `reeve worker`).",
        ),
    ));
    Ok(Page {
        title: "Workers".into(),
        nav: "/workers",
        main,
        live_ms: Some(3000),
    }
    .respond(&headers))
}
