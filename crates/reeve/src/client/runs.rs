//! The CLI of schedule runs: `schedules run | history | metrics`,
//! `pressure raise | clear | list`, `audit list` and `forecast`, each a thin
//! client of the matching `/v1` endpoint with a table for people and the
//! API's JSON with `--json`.

use reqwest::Method;
use serde_json::{Value, json};

use super::{Api, Fail, emit, encode, items, key_values, pretty, table, text, when};
use crate::cli::{AuditCommand, CheckpointCommand, MailCommand, PressureCommand, WorkersCommand};
use reeve_core::Timestamp;
use reeve_core::time::parse_duration;

/// Who the CLI acts as in the audit log: `$USER` (or `$LOGNAME`).
pub(super) fn whoami() -> Option<String> {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.trim().is_empty())
}

fn schedule_path(name: &str, action: &str) -> String {
    format!("/v1/schedules/{}{action}", encode(name))
}

/// `ms` as `1.2s` / `340ms` / `-`.
fn ms(v: &Value) -> String {
    match v.as_i64() {
        Some(ms) if ms >= 10_000 => format!("{}s", ms / 1000),
        Some(ms) if ms >= 1000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => format!("{ms}ms"),
        None => "-".into(),
    }
}

pub(super) async fn run(api: &Api, json: bool, name: &str, force: bool) -> Result<(), Fail> {
    let body = json!({ "force": force, "by": whoami() });
    let answer = api
        .write(Method::POST, &schedule_path(name, "/run"), Some(&body))
        .await?;
    if json {
        return emit(&pretty(&answer));
    }
    let mut line = format!(
        "fired {name} now: job {} ({})\n",
        text(&answer["job"]["id"]),
        text(&answer["outcome"])
    );
    if force && !answer["was_full"].is_null() {
        let full = &answer["was_full"];
        line.push_str(&format!(
            "forced past a full {} cap ({} of {} running); recorded in the audit log\n",
            text(&full["scope"]),
            text(&full["running"]),
            text(&full["limit"])
        ));
    }
    emit(&line)
}

/// `fired → succeeded` from a schedule's `recent` summary.
pub(super) fn last_outcome(recent: &Value) -> String {
    match (
        recent["last_outcome"].as_str(),
        recent["last_state"].as_str(),
    ) {
        (Some(o), Some(s)) => format!("{o} → {s}"),
        (Some(o), None) => o.to_string(),
        _ => "-".into(),
    }
}

pub(super) fn avg_duration(recent: &Value) -> String {
    ms(&recent["avg_duration_ms"])
}

/// `3.5 / 10` (average turns / budget).
pub(super) fn avg_turns(recent: &Value, max_turns: &Value) -> String {
    let avg = recent["avg_turns"]
        .as_f64()
        .map_or("-".to_string(), |t| format!("{t:.1}"));
    match max_turns.as_i64() {
        Some(max) => format!("{avg} / {max}"),
        None => avg,
    }
}

/// One ledger row in words: what happened to that fire time.
pub(super) fn explain(f: &Value) -> String {
    let outcome = text(&f["outcome"]);
    let job = text(&f["job_id"]);
    let mut out = match outcome.as_str() {
        "fired" | "caught_up" | "manual" | "forced" | "probe" => {
            let mut s = format!("{outcome}: job {job}");
            if !f["slot_wait_ms"].is_null() {
                s.push_str(&format!(", waited {} for a slot", ms(&f["slot_wait_ms"])));
            }
            if !f["running_at_claim"].is_null() {
                s.push_str(&format!(
                    " ({} running at its claim)",
                    text(&f["running_at_claim"])
                ));
            }
            match f["state"].as_str() {
                Some(state) => {
                    s.push_str(&format!(", ended {state}"));
                    if let Some(reason) = f["failure_reason"].as_str() {
                        s.push_str(&format!(" ({reason})"));
                    }
                    s.push_str(&format!(" after {}", ms(&f["duration_ms"])));
                }
                None if f["claimed_at"].is_null() => s.push_str(", not started yet"),
                None => s.push_str(", still running"),
            }
            s
        }
        "skipped_overlap" => {
            "skipped: the previous firing was still running (overlap policy)".into()
        }
        "skipped_paused" => "skipped: the schedule was paused".into(),
        "skipped_misfire" => format!(
            "skipped: the daemon was down (misfire policy), through {}",
            text(&f["nominal_until"])
        ),
        "coalesced" => format!("coalesced into waiting job {job} (queue_one)"),
        "deferred" => format!(
            "deferred by pressure, {} time(s) so far",
            text(&f["deferrals"])
        ),
        other => other.to_string(),
    };
    let deferrals = f["deferrals"].as_i64().unwrap_or(0);
    if deferrals > 0 && outcome != "deferred" {
        out.push_str(&format!("; deferred {deferrals}× by pressure first"));
    }
    if let Some(detail) = f["detail"].as_str() {
        out.push_str(&format!(" [{detail}]"));
    }
    out
}

pub(super) async fn history(
    api: &Api,
    json: bool,
    name: &str,
    limit: u32,
    at: Option<String>,
) -> Result<(), Fail> {
    let mut query = vec![("limit", limit.to_string())];
    if let Some(at) = &at {
        Timestamp::parse(at).map_err(|m| Fail::usage(format!("--at: {m}")))?;
        query.push(("at", at.clone()));
    }
    let answer = api.get(&schedule_path(name, "/history"), &query).await?;
    if json {
        return emit(&pretty(&answer));
    }
    let mut out = String::new();
    if let Some(at) = &at {
        match answer.get("covering").filter(|c| !c.is_null()) {
            Some(row) => out.push_str(&format!("{at}: {}\n\n", explain(row))),
            None => out.push_str(&format!(
                "{at}: no fire time of {name} in the ledger at that instant; the rows before it:\n\n"
            )),
        }
    }
    let rows: Vec<Vec<String>> = items(&answer["firings"])
        .iter()
        .map(|f| vec![text(&f["nominal_at"]), text(&f["outcome"]), explain(f)])
        .collect();
    out.push_str(&table(&["NOMINAL", "OUTCOME", "WHAT HAPPENED"], &rows));
    emit(&out)
}

fn percentiles(p: &Value, unit_ms: bool) -> String {
    let show = |v: &Value| if unit_ms { ms(v) } else { text(v) };
    if p["count"].as_u64().unwrap_or(0) == 0 {
        return "-".into();
    }
    format!(
        "p50 {}, p95 {}, max {} (of {})",
        show(&p["p50"]),
        show(&p["p95"]),
        show(&p["max"]),
        text(&p["count"])
    )
}

fn counts(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".into(),
    }
}

pub(super) async fn metrics(api: &Api, json: bool, name: &str, limit: u32) -> Result<(), Fail> {
    let answer = api
        .get(
            &schedule_path(name, "/metrics"),
            &[("limit", limit.to_string())],
        )
        .await?;
    if json {
        return emit(&pretty(&answer));
    }
    emit(&key_values(&[
        ("schedule", text(&answer["schedule"])),
        ("firings", text(&answer["rows"])),
        ("slot wait", percentiles(&answer["slot_wait_ms"], true)),
        ("duration", percentiles(&answer["duration_ms"], true)),
        ("turns", percentiles(&answer["turns"], false)),
        ("outcomes", counts(&answer["by_outcome"])),
        ("ended", counts(&answer["by_state"])),
        ("failures", counts(&answer["failures_by_reason"])),
        ("pressure deferrals", text(&answer["pressure_deferrals"])),
    ]))
}

pub(super) async fn pressure(api: &Api, json: bool, command: PressureCommand) -> Result<(), Fail> {
    let (line, answer) = match command {
        PressureCommand::Raise { source, ttl } => {
            let ttl = parse_duration(&ttl).map_err(|m| Fail::usage(format!("--ttl: {m}")))?;
            let body = json!({ "source": source, "ttl_seconds": ttl.as_secs().max(1) });
            let answer = api.write(Method::POST, "/v1/pressure", Some(&body)).await?;
            let line = format!(
                "pressure from {source} until {}\n",
                when(&answer["expires_at"], Timestamp::now())
            );
            (line, answer)
        }
        PressureCommand::Clear { source } => {
            let path = format!("/v1/pressure/{}", encode(&source));
            let answer = api.write(Method::DELETE, &path, None).await?;
            (format!("cleared pressure from {source}\n"), answer)
        }
        PressureCommand::List => {
            let answer = api.get("/v1/pressure", &[]).await?;
            let now = Timestamp::now();
            let rows: Vec<Vec<String>> = items(&answer["pressure"])
                .iter()
                .map(|p| {
                    vec![
                        text(&p["source"]),
                        when(&p["raised_at"], now),
                        when(&p["expires_at"], now),
                    ]
                })
                .collect();
            (table(&["SOURCE", "RAISED", "EXPIRES"], &rows), answer)
        }
    };
    if json {
        emit(&pretty(&answer))
    } else {
        emit(&line)
    }
}

pub(super) async fn audit(api: &Api, json: bool, command: AuditCommand) -> Result<(), Fail> {
    let AuditCommand::List { limit } = command;
    let answer = api
        .get("/v1/audit", &[("limit", limit.to_string())])
        .await?;
    if json {
        return emit(&pretty(&answer));
    }
    let rows: Vec<Vec<String>> = items(&answer["audit"])
        .iter()
        .map(|a| {
            vec![
                text(&a["at"]),
                text(&a["actor"]),
                text(&a["action"]),
                text(&a["target"]),
                a["detail"].to_string(),
            ]
        })
        .collect();
    emit(&table(&["AT", "WHO", "ACTION", "TARGET", "DETAIL"], &rows))
}

pub(super) async fn forecast(api: &Api, json: bool, hours: u32) -> Result<(), Fail> {
    let answer = api
        .get("/v1/forecast", &[("hours", hours.to_string())])
        .await?;
    if json {
        return emit(&pretty(&answer));
    }
    let rows: Vec<Vec<String>> = items(&answer["schedules"])
        .iter()
        .map(|s| {
            let observed = if s["observed"].as_bool() == Some(true) {
                ""
            } else {
                " (default)"
            };
            vec![
                text(&s["name"]),
                text(&s["queue"]),
                text(&s["firings"]),
                format!("{}{observed}", ms(&s["expected_duration_ms"])),
                text(&s["waited"]),
                ms(&s["wait_p50_ms"]),
                ms(&s["wait_max_ms"]),
                text(&s["blocked"]),
                text(&s["self_overlaps"]),
                items(&s["overlaps_with"])
                    .iter()
                    .map(text)
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    let mut out = format!(
        "forecast {} → {}\n",
        text(&answer["from"]),
        text(&answer["until"])
    );
    out.push_str(&table(
        &[
            "SCHEDULE",
            "QUEUE",
            "FIRINGS",
            "EXPECTED",
            "WAITED",
            "WAIT P50",
            "WAIT MAX",
            "BLOCKED",
            "SELF-OVERLAP",
            "RUNS WITH",
        ],
        &rows,
    ));
    let suggestions = items(&answer["suggestions"]);
    if suggestions.is_empty() {
        out.push_str("\nno offsets to suggest\n");
    } else {
        out.push_str("\nsuggested offsets:\n");
        for s in suggestions {
            let k = s["offset_minutes"].as_i64().unwrap_or(0);
            out.push_str(&format!(
                "  move {} by {}{} min (first fire {}): its waits {} → {}, all waits → {}\n",
                text(&s["schedule"]),
                if k > 0 { "+" } else { "" },
                k,
                text(&s["first_fire_after_offset"]),
                text(&s["waits_before"]),
                text(&s["waits_after"]),
                text(&s["total_waits_after"]),
            ));
        }
    }
    emit(&out)
}

/// Inside a run: its job and its job token (`REEVE_JOB_ID`,
/// `REEVE_JOB_TOKEN`), and the daemon as that run.
fn this_run(api: &Api) -> Result<(i64, Api), Fail> {
    let id = std::env::var("REEVE_JOB_ID")
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            Fail::usage("REEVE_JOB_ID is not set: run this inside a job, or give --job")
        })?;
    let token = std::env::var("REEVE_JOB_TOKEN")
        .map_err(|_| Fail::usage("REEVE_JOB_TOKEN is not set: run this inside a job"))?;
    Ok((id, api.with_token(&token)?))
}

pub(super) async fn workers(api: &Api, json: bool, command: WorkersCommand) -> Result<(), Fail> {
    let WorkersCommand::List = command;
    let answer = api.get("/v1/workers", &[]).await?;
    if json {
        return emit(&pretty(&answer));
    }
    let now = Timestamp::now();
    let rows: Vec<Vec<String>> = items(&answer["workers"])
        .iter()
        .map(|w| {
            let status = if !w["deregistered_at"].is_null() {
                "gone"
            } else if w["stale"].as_bool() == Some(true) {
                "STALE"
            } else {
                "active"
            };
            vec![
                text(&w["name"]),
                text(&w["id"]),
                text(&w["host"]),
                items(&w["kinds"])
                    .iter()
                    .map(text)
                    .collect::<Vec<_>>()
                    .join(","),
                format!("{} / {}", text(&w["running"]), text(&w["slots"])),
                when(&w["last_seen_at"], now),
                text(&w["version"]),
                status.to_string(),
            ]
        })
        .collect();
    emit(&table(
        &[
            "NAME",
            "ID",
            "HOST",
            "KINDS",
            "SLOTS",
            "LAST SEEN",
            "VERSION",
            "STATUS",
        ],
        &rows,
    ))
}

pub(super) async fn mail(api: &Api, json: bool, command: MailCommand) -> Result<(), Fail> {
    match command {
        MailCommand::Send { job, subject, body } => {
            let answer = api
                .write(
                    Method::POST,
                    &format!("/v1/jobs/{job}/mail"),
                    Some(&json!({ "subject": subject, "body": body, "by": whoami() })),
                )
                .await?;
            if json {
                return emit(&pretty(&answer));
            }
            emit(&format!(
                "sent message {} to job {job}\n",
                text(&answer["id"])
            ))
        }
        MailCommand::Read { job, peek } => {
            let (id, as_run) = match job {
                Some(id) => (id, None),
                None => {
                    let (id, run) = this_run(api)?;
                    (id, Some(run))
                }
            };
            let query = [("peek", peek.to_string())];
            let answer = as_run
                .as_ref()
                .unwrap_or(api)
                .get(&format!("/v1/jobs/{id}/mail"), &query)
                .await?;
            if json {
                return emit(&pretty(&answer));
            }
            let mut out = String::new();
            for m in items(&answer["mail"]) {
                let new = if m["read_at"].is_null() { "new " } else { "" };
                out.push_str(&format!(
                    "{new}#{} from {} at {}: {}\n{}\n\n",
                    text(&m["id"]),
                    text(&m["sender"]),
                    text(&m["at"]),
                    text(&m["subject"]),
                    text(&m["body"])
                ));
            }
            if out.is_empty() {
                out.push_str("no mail\n");
            }
            emit(&out)
        }
    }
}

pub(super) async fn checkpoint(
    api: &Api,
    json: bool,
    command: CheckpointCommand,
) -> Result<(), Fail> {
    let (id, run) = this_run(api)?;
    let path = format!("/v1/jobs/{id}/checkpoint");
    match command {
        CheckpointCommand::Save { file } => {
            let data = if file.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                    .map_err(|e| Fail::error(format!("reading stdin: {e}")))?;
                buf
            } else {
                std::fs::read(&file)
                    .map_err(|e| Fail::usage(format!("cannot read {}: {e}", file.display())))?
            };
            let size = data.len();
            run.bytes(Method::PUT, &path, &[], Some(data)).await?;
            if json {
                return emit(&pretty(&json!({ "job_id": id, "size": size })));
            }
            emit(&format!(
                "saved a checkpoint of {size} bytes for job {id}\n"
            ))
        }
        CheckpointCommand::Load { file } => {
            let Some(data) = run.bytes(Method::GET, &path, &[], None).await? else {
                return Err(Fail::error(format!("job {id} has no checkpoint")));
            };
            match file {
                Some(f) => std::fs::write(&f, &data)
                    .map_err(|e| Fail::error(format!("cannot write {}: {e}", f.display()))),
                None => {
                    use std::io::Write as _;
                    std::io::stdout()
                        .write_all(&data)
                        .map_err(|e| Fail::error(format!("writing stdout: {e}")))
                }
            }
        }
    }
}
