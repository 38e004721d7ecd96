//! The CLI's HTTP client and its human output.
//!
//! Every command but `serve` and `bench` is a client of the daemon's HTTP API
//! (`--url`, env `REEVE_URL`). This module owns:
//! - the one request function ([`Api::send`]): base URL, bearer token (env
//!   `REEVE_TOKEN`, never printed), and the one error decoder
//!   ([`decode_error`]) that turns the API's `{"error","message","field"}`
//!   answers into `error: …` lines and exit codes;
//! - the checks done locally before any request (`--payload` is JSON,
//!   `--concurrency` / `--global` are a non-negative integer or `none`);
//! - how each answer is shown: one table printer ([`table`]) and one
//!   `key: value` printer ([`key_values`]) for people, the API's JSON
//!   (pretty) with `--json`.
//!
//! Exit codes: 0 success; 1 the daemon refused or could not be reached; 2 bad
//! input, whether caught here or answered `invalid_input` / `invalid_json`;
//! 3 a manual run found a cap full (`capacity_full`, with the slot ETA).
//! Answers are read as loose JSON ([`serde_json::Value`]): a missing or
//! unexpected field is shown as `-` or as raw JSON, never a panic.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use reeve_core::job::{EnqueueRequest, FollowUp};
use reeve_core::time::format_duration;
use reeve_core::{JobState, Timestamp};
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Value, json};

use crate::cli::{
    ApplyArgs, Command, EnqueueArgs, GlobalArgs, JobsCommand, LimitsCommand, QueuesCommand,
    SchedulesCommand,
};

mod runs;

/// Exit code of a manual run refused because a cap is full.
const EXIT_CAPACITY_FULL: u8 = 3;

/// How often `jobs logs --follow` polls.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);
/// Lines of output shown by `jobs show`.
const OUTPUT_TAIL_LINES: usize = 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs one client command. Failures the user should see are printed here
/// (`error: …` on stderr) and become the exit code; `Err` is only for
/// commands that are not client commands.
pub async fn run(global: &GlobalArgs, command: Command) -> anyhow::Result<ExitCode> {
    if matches!(
        command,
        Command::Serve(_) | Command::Bench(_) | Command::Migrate(_)
    ) {
        anyhow::bail!("`serve` and `bench` are not client commands");
    }
    let result = match Api::new(global) {
        Ok(api) => dispatch(&api, global.json, command).await,
        Err(fail) => Err(fail),
    };
    Ok(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(fail) => fail.report(),
    })
}

async fn dispatch(api: &Api, json: bool, command: Command) -> Result<(), Fail> {
    match command {
        Command::Enqueue(args) => enqueue(api, json, args).await,
        Command::Jobs(cmd) => jobs(api, json, cmd).await,
        Command::Queues(cmd) => queues(api, json, cmd).await,
        Command::Limits(cmd) => limits(api, json, cmd).await,
        Command::Status => status(api, json).await,
        Command::Apply(args) => apply(api, json, args).await,
        Command::Schedules(cmd) => schedules(api, json, cmd).await,
        Command::Pressure(cmd) => runs::pressure(api, json, cmd).await,
        Command::Audit(cmd) => runs::audit(api, json, cmd).await,
        Command::Forecast { hours } => runs::forecast(api, json, hours).await,
        Command::Workers(cmd) => runs::workers(api, json, cmd).await,
        Command::Mail(cmd) => runs::mail(api, json, cmd).await,
        Command::Checkpoint(cmd) => runs::checkpoint(api, json, cmd).await,
        Command::Serve(_) | Command::Bench(_) | Command::Migrate(_) | Command::Worker(_) => {
            Err(Fail::usage("`serve` and `bench` are not client commands"))
        }
    }
}

// ---------------------------------------------------------------------------
// Failures and exit codes

/// Why a command stopped: the exit code and the line for stderr (`None`:
/// nothing to say, e.g. stdout was closed by `| head`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fail {
    code: u8,
    message: Option<String>,
}

impl Fail {
    /// Bad input: exit 2.
    fn usage(message: impl Into<String>) -> Self {
        Fail {
            code: 2,
            message: Some(message.into()),
        }
    }

    /// Anything else: exit 1.
    fn error(message: impl Into<String>) -> Self {
        Fail {
            code: 1,
            message: Some(message.into()),
        }
    }

    fn report(self) -> ExitCode {
        if let Some(message) = self.message {
            let _ = writeln!(std::io::stderr(), "error: {message}");
        }
        ExitCode::from(self.code)
    }
}

/// Decodes a non-2xx answer: `{"error": CODE, "message": TEXT, "field"?:
/// NAME}` when the daemon wrote it, else whatever text the body holds.
fn decode_error(status: u16, body: &[u8]) -> Fail {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let obj = parsed.as_ref().and_then(Value::as_object);
    let get = |key: &str| obj.and_then(|o| o.get(key)).and_then(Value::as_str);
    let code = get("error");
    let mut message = match (get("message"), code) {
        (Some(m), _) if !m.trim().is_empty() => m.to_string(),
        (_, Some(c)) => format!("{c} (HTTP {status})"),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = one_line(text.trim());
            if text.is_empty() {
                format!("the daemon answered HTTP {status}")
            } else {
                format!(
                    "the daemon answered HTTP {status}: {}",
                    truncate(&text, 200)
                )
            }
        }
    };
    if let Some(field) = get("field") {
        let _ = write!(message, " (field: {field})");
    }
    let client_input =
        (400..500).contains(&status) && matches!(code, Some("invalid_input" | "invalid_json"));
    Fail {
        code: if client_input {
            2
        } else if code == Some("capacity_full") {
            EXIT_CAPACITY_FULL
        } else {
            1
        },
        message: Some(message),
    }
}

/// An error and its causes on one line (reqwest's own text is terse).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        source = cause.source();
    }
    out
}

// ---------------------------------------------------------------------------
// The request function

struct Api {
    http: reqwest::Client,
    /// The daemon's URL without a trailing slash.
    base: String,
    auth: Option<HeaderValue>,
}

/// A successful answer.
struct Answer {
    /// `x-reeve-created`, when the daemon sent it.
    created: Option<bool>,
    body: Value,
}

impl Api {
    fn new(global: &GlobalArgs) -> Result<Self, Fail> {
        let base = global.url.trim().trim_end_matches('/').to_string();
        reqwest::Url::parse(&base)
            .map_err(|e| Fail::usage(format!("--url: {base:?} is not a valid URL ({e})")))?;
        let auth = match global.token.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(token) => {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        Fail::usage("REEVE_TOKEN holds characters not allowed in an HTTP header")
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| {
                Fail::error(format!(
                    "cannot set up the HTTP client: {}",
                    error_chain(&e)
                ))
            })?;
        Ok(Api { http, base, auth })
    }

    /// One request: auth, JSON body, error decoding. `path` starts with `/`.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Answer, Fail> {
        let mut request = self.request(method, path, query);
        if let Some(body) = body {
            request = request.json(body);
        }
        let unreachable = |e: reqwest::Error| self.unreachable(e);
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let created = response
            .headers()
            .get("x-reeve-created")
            .and_then(|v| v.to_str().ok())
            .map(|v| !v.trim().eq_ignore_ascii_case("false"));
        let bytes = response.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(decode_error(status.as_u16(), &bytes));
        }
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                Fail::error(format!(
                    "the daemon at {} answered {path} with something that is not JSON ({e}): {}",
                    self.base,
                    truncate(&one_line(&String::from_utf8_lossy(&bytes)), 200)
                ))
            })?
        };
        Ok(Answer { created, body })
    }

    /// A request to `path` with the token, if any.
    fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> reqwest::RequestBuilder {
        let url = format!("{}{path}{}", self.base, query_string(query));
        let mut request = self.http.request(method, &url);
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        request
    }

    fn unreachable(&self, e: reqwest::Error) -> Fail {
        Fail::error(format!(
            "cannot reach the reeve daemon at {}: {}",
            self.base,
            error_chain(&e)
        ))
    }

    /// The same daemon with another bearer token (a run's job token).
    fn with_token(&self, token: &str) -> Result<Api, Fail> {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
                Fail::usage("the job token holds characters not allowed in an HTTP header")
            })?;
        value.set_sensitive(true);
        Ok(Api {
            http: self.http.clone(),
            base: self.base.clone(),
            auth: Some(value),
        })
    }

    /// A request with a raw body, answering raw bytes (checkpoints): `None`
    /// for a 404.
    async fn bytes(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, Fail> {
        let mut request = self.request(method, path, query);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body);
        }
        let unreachable = |e: reqwest::Error| self.unreachable(e);
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        if status.as_u16() == 404 {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(decode_error(status.as_u16(), &bytes));
        }
        Ok(Some(bytes.to_vec()))
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Fail> {
        Ok(self.send(Method::GET, path, query, None).await?.body)
    }

    async fn write(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, Fail> {
        Ok(self.send(method, path, &[], body).await?.body)
    }
}

/// `?k=v&…`, percent-encoded; empty when there are no pairs.
fn query_string(pairs: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (i, (key, value)) in pairs.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(&encode(key));
        out.push('=');
        out.push_str(&encode(value));
    }
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Output

/// Writes to stdout; a closed pipe (`| head`) ends the command quietly.
fn emit(text: &str) -> Result<(), Fail> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Fail {
            code: 0,
            message: None,
        }),
        Err(e) => Err(Fail::error(format!("cannot write to stdout: {e}"))),
    }
}

/// A line on stderr that is not an error.
fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

/// A JSON value for people: `-` for null, strings bare, yes/no for booleans,
/// anything else as compact JSON.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
        other => other.to_string(),
    }
}

/// Control characters (newlines, tabs) become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A column-aligned table: header row, then rows; two spaces between columns,
/// the last column unpadded. Cells are made single-line.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cells: Vec<Vec<String>> = std::iter::once(headers.iter().map(|h| h.to_string()).collect())
        .chain(rows.iter().map(|r| r.iter().map(|c| one_line(c)).collect()))
        .collect();
    let columns = cells.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            cells
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `key: value` lines with the values aligned; a multi-line value continues
/// under its first line.
fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let label = format!("{key}:");
        let mut lines = value.lines();
        let first = lines.next().unwrap_or("");
        out.push_str(format!("{label:<width$}  {first}").trim_end());
        out.push('\n');
        for line in lines {
            out.push_str(format!("{:width$}  {line}", "").trim_end());
            out.push('\n');
        }
    }
    out
}

/// `in 42s` / `42s ago` / `now` for a signed number of milliseconds.
fn relative(ms: i64) -> String {
    let secs = ms.unsigned_abs().saturating_add(500) / 1000;
    if secs == 0 {
        return "now".to_string();
    }
    let d = format_duration(Duration::from_secs(secs));
    if ms > 0 {
        format!("in {d}")
    } else {
        format!("{d} ago")
    }
}

/// An RFC 3339 instant with its distance from `now`.
fn when(v: &Value, now: Timestamp) -> String {
    match v.as_str().map(|s| (s, Timestamp::parse(s))) {
        Some((s, Ok(at))) => format!("{s} ({})", relative(now.millis_until(at))),
        _ => text(v),
    }
}

/// The last `n` lines of `data` (a trailing newline does not count as a line).
fn tail_lines(data: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let body = data.strip_suffix('\n').unwrap_or(data);
    match body.rmatch_indices('\n').nth(n - 1) {
        Some((i, _)) => &data[i + 1..],
        None => data,
    }
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// A command line for people: arguments with spaces or quotes are quoted.
fn argv(v: &Value) -> String {
    match v.as_array() {
        Some(args) => args
            .iter()
            .map(|a| match a.as_str() {
                Some(s)
                    if !s.is_empty()
                        && !s.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') =>
                {
                    s.to_string()
                }
                Some(s) => format!("{s:?}"),
                None => a.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => text(v),
    }
}

// ---------------------------------------------------------------------------
// enqueue

/// The POST /v1/jobs body: the shared wire type, with absent fields omitted.
fn enqueue_body(args: EnqueueArgs) -> Result<Value, Fail> {
    let payload = args
        .payload
        .as_deref()
        .map(|p| {
            serde_json::from_str::<Value>(p)
                .map_err(|e| Fail::usage(format!("--payload: not valid JSON: {e}")))
        })
        .transpose()?;
    let request = EnqueueRequest {
        queue: Some(args.queue),
        kind: args.kind,
        payload: None,
        priority: args.priority,
        max_attempts: args.max_attempts,
        unique_key: args.unique_key,
        idempotency_key: args.idempotency_key,
        max_run_duration: args.max_run_duration,
        heartbeat_timeout: args.heartbeat_timeout,
        delay: args.delay,
        run_at: args.run_at,
        command: (!args.command.is_empty()).then_some(args.command),
        max_turns: args.max_turns,
        retry_on: None,
        on_success: args.then_kind.map(|kind| FollowUp {
            queue: args.then_queue,
            kind,
            ..Default::default()
        }),
        requires: args.requires,
    };
    let mut body = serde_json::to_value(&request)
        .map_err(|e| Fail::error(format!("cannot encode the job: {e}")))?;
    if let Value::Object(map) = &mut body {
        map.retain(|_, v| !v.is_null());
        if let Some(Value::Object(then)) = map.get_mut("on_success") {
            then.retain(|_, v| !v.is_null());
        }
        // Inserted after the nulls are dropped: `--payload null` is a payload.
        if let Some(payload) = payload {
            map.insert("payload".to_string(), payload);
        }
    }
    Ok(body)
}

async fn enqueue(api: &Api, json: bool, args: EnqueueArgs) -> Result<(), Fail> {
    let body = enqueue_body(args)?;
    let answer = api.send(Method::POST, "/v1/jobs", &[], Some(&body)).await?;
    let job = &answer.body;
    if answer.created == Some(false) {
        note(&format!(
            "note: not enqueued again: live job {} already holds unique key {}",
            text(&job["id"]),
            text(&job["unique_key"]),
        ));
    }
    if json {
        emit(&pretty(job))
    } else {
        emit(&format!("{}\n", text(&job["id"])))
    }
}

// ---------------------------------------------------------------------------
// jobs

async fn jobs(api: &Api, json: bool, command: JobsCommand) -> Result<(), Fail> {
    match command {
        JobsCommand::List {
            state,
            queue,
            kind,
            limit,
            before,
        } => {
            let mut query = Vec::new();
            let optional = [("state", state), ("queue", queue), ("kind", kind)];
            for (key, value) in optional {
                if let Some(value) = value {
                    query.push((key, value));
                }
            }
            query.push(("limit", limit.to_string()));
            if let Some(before) = before {
                query.push(("before", before.to_string()));
            }
            let page = api.get("/v1/jobs", &query).await?;
            if json {
                emit(&pretty(&page))
            } else {
                emit(&render_job_list(&page))
            }
        }
        JobsCommand::Show { id } => {
            let path = format!("/v1/jobs/{id}");
            let events_path = format!("{path}/events");
            let output_path = format!("{path}/output");
            let (job, events, output) = tokio::try_join!(
                api.get(&path, &[]),
                api.get(&events_path, &[]),
                api.get(&output_path, &[]),
            )?;
            let events = match events {
                Value::Object(mut map) => map.remove("events").unwrap_or(Value::Null),
                other => other,
            };
            if json {
                emit(&pretty(
                    &json!({"job": job, "events": events, "output": output}),
                ))
            } else {
                emit(&render_job(&job, &events, &output, Timestamp::now()))
            }
        }
        JobsCommand::Cancel { id } => {
            let job = api
                .write(Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
                .await?;
            if json {
                return emit(&pretty(&job));
            }
            emit(&match job["state"].as_str() {
                Some("cancelled") => format!("cancelled {id}\n"),
                Some("running") => {
                    format!("cancel requested {id} (running; its executor is being stopped)\n")
                }
                _ => format!("cancel {id}: the job is now {}\n", text(&job["state"])),
            })
        }
        JobsCommand::Retry { id } => {
            let job = api
                .write(Method::POST, &format!("/v1/jobs/{id}/retry"), None)
                .await?;
            if json {
                emit(&pretty(&job))
            } else {
                emit(&format!("retried {id}\n"))
            }
        }
        JobsCommand::Logs { id, follow } => {
            if follow {
                return follow_logs(api, id).await;
            }
            let output = api.get(&format!("/v1/jobs/{id}/output"), &[]).await?;
            if json {
                emit(&pretty(&output))
            } else {
                emit(output["data"].as_str().unwrap_or(""))
            }
        }
    }
}

const JOB_HEADERS: [&str; 9] = [
    "ID", "STATE", "QUEUE", "KIND", "ATTEMPT", "EPOCH", "PRIORITY", "WORKER", "CREATED",
];

fn render_job_list(page: &Value) -> String {
    let rows: Vec<Vec<String>> = items(&page["items"])
        .iter()
        .map(|job| {
            vec![
                text(&job["id"]),
                text(&job["state"]),
                text(&job["queue"]),
                text(&job["kind"]),
                format!("{}/{}", text(&job["attempt"]), text(&job["max_attempts"])),
                text(&job["epoch"]),
                text(&job["priority"]),
                text(&job["claimed_by"]),
                text(&job["created_at"]),
            ]
        })
        .collect();
    let mut out = table(&JOB_HEADERS, &rows);
    if let Some(next) = page["next_before_id"].as_i64() {
        let _ = writeln!(out, "more: --before {next}");
    }
    out
}

/// The line that flags a running run the supervisor found without progress
/// (SPEC §10), `None` for any other job.
fn supervision_flag(job: &Value, now: Timestamp) -> Option<String> {
    if job["state"] != "running" || job["stalled_at"].is_null() {
        return None;
    }
    let what = if job["escalated_at"].is_null() {
        "STALLED"
    } else {
        "ESCALATED"
    };
    Some(format!(
        "{what}: no progress since {} (the supervisor mailed the run)",
        when(&job["progress_at"], now)
    ))
}

/// `jobs show`: the job's fields, its events, and the tail of its output.
fn render_job(job: &Value, events: &Value, output: &Value, now: Timestamp) -> String {
    let at = |key: &str| when(&job[key], now);
    let mut state = text(&job["state"]);
    if job["state"] == "running" && !job["cancel_requested_at"].is_null() {
        state.push_str(" (cancel requested)");
    }
    if let Some(waiting) = job["waiting_for"].as_str() {
        let _ = write!(state, " (waiting for {waiting})");
    }
    let requires = match job["requires"].as_array() {
        Some(list) if !list.is_empty() => list.iter().map(text).collect::<Vec<_>>().join(", "),
        _ => "-".to_string(),
    };
    let turns = match &job["max_turns"] {
        Value::Null => text(&job["turns"]),
        max => format!("{}/{}", text(&job["turns"]), text(max)),
    };
    let compact = |key: &str| match &job[key] {
        Value::Null => "-".to_string(),
        v => v.to_string(),
    };
    let pairs = [
        ("id", text(&job["id"])),
        ("state", state),
        ("queue", text(&job["queue"])),
        ("kind", text(&job["kind"])),
        ("priority", text(&job["priority"])),
        (
            "attempt",
            format!("{}/{}", text(&job["attempt"]), text(&job["max_attempts"])),
        ),
        ("epoch", text(&job["epoch"])),
        ("requires", requires),
        ("claimed_by", text(&job["claimed_by"])),
        ("claimed_at", at("claimed_at")),
        ("heartbeat_at", at("heartbeat_at")),
        ("heartbeats", text(&job["heartbeat_count"])),
        // A finished run's lease is history: no "in 1m" for it.
        (
            "lease_expires_at",
            if job["state"] == "running" {
                at("lease_expires_at")
            } else {
                text(&job["lease_expires_at"])
            },
        ),
        ("available_at", at("available_at")),
        ("max_run_duration", text(&job["max_run_duration"])),
        ("heartbeat_timeout", text(&job["heartbeat_timeout"])),
        ("failure_reason", text(&job["failure_reason"])),
        ("last_error", text(&job["last_error"])),
        ("idempotency_key", text(&job["idempotency_key"])),
        ("unique_key", text(&job["unique_key"])),
        ("command", argv(&job["command"])),
        ("payload", compact("payload")),
        ("turns", turns),
        ("progress", text(&job["progress"])),
        ("progress_at", at("progress_at")),
        ("stalled_at", at("stalled_at")),
        ("escalated_at", at("escalated_at")),
        ("result", compact("result")),
        ("cancel_requested_at", at("cancel_requested_at")),
        ("created_at", at("created_at")),
        ("finished_at", at("finished_at")),
    ];
    let mut out = String::new();
    if let Some(flag) = supervision_flag(job, now) {
        let _ = writeln!(out, "{flag}\n");
    }
    out.push_str(&key_values(&pairs));

    out.push_str("\nevents:\n");
    let rows: Vec<Vec<String>> = items(events)
        .iter()
        .map(|e| {
            let detail = e["detail"].as_str().map_or_else(
                || text(&e["detail"]),
                |d| truncate(d.lines().next().unwrap_or(""), 80),
            );
            vec![
                text(&e["at"]),
                text(&e["event"]),
                text(&e["epoch"]),
                text(&e["attempt"]),
                text(&e["worker"]),
                text(&e["reason"]),
                text(&e["by"]),
                detail,
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "AT", "EVENT", "EPOCH", "ATTEMPT", "WORKER", "REASON", "BY", "DETAIL",
        ],
        &rows,
    ));

    let data = output["data"].as_str().unwrap_or("");
    let source = if output["running"] == true {
        "live".to_string()
    } else if output["attempt"].is_null() {
        "stored".to_string()
    } else {
        format!("attempt {}", text(&output["attempt"]))
    };
    if data.is_empty() {
        let _ = writeln!(out, "\noutput ({source}): none");
    } else {
        let _ = writeln!(out, "\noutput (tail, {source}):");
        out.push_str(tail_lines(data, OUTPUT_TAIL_LINES));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// `jobs logs --follow`: prints new output every [`FOLLOW_INTERVAL`] until
/// the job is terminal and a read after that returned nothing new. A new
/// attempt starts again from its beginning.
async fn follow_logs(api: &Api, id: i64) -> Result<(), Fail> {
    let job_path = format!("/v1/jobs/{id}");
    let output_path = format!("{job_path}/output");
    let mut offset: u64 = 0;
    let mut attempt: Option<i64> = None;
    loop {
        // The job first: a read of the output made after the job was seen
        // terminal is the final one.
        let job = api.get(&job_path, &[]).await?;
        let job_attempt = job["attempt"].as_i64();
        if attempt.is_some() && job_attempt != attempt {
            if offset > 0 {
                note(&format!("--- attempt {} ---", text(&job["attempt"])));
            }
            offset = 0;
        }
        attempt = job_attempt;
        let terminal = job["state"]
            .as_str()
            .and_then(|s| s.parse::<JobState>().ok())
            .is_some_and(JobState::is_terminal);
        let output = api
            .get(&output_path, &[("from", offset.to_string())])
            .await?;
        let data = output["data"].as_str().unwrap_or("");
        if !data.is_empty() {
            emit(data)?;
        }
        offset = output["next_offset"]
            .as_u64()
            .unwrap_or_else(|| offset.saturating_add(data.len() as u64));
        if terminal && data.is_empty() {
            return Ok(());
        }
        if !terminal {
            tokio::time::sleep(FOLLOW_INTERVAL).await;
        }
    }
}

// ---------------------------------------------------------------------------
// queues, limits, status

/// `--concurrency` / `--global`: a non-negative integer, or `none` for no
/// limit.
fn parse_limit(flag: &str, raw: &str) -> Result<Option<u32>, Fail> {
    let trimmed = raw.trim();
    if trimmed.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    match trimmed.parse::<u32>() {
        Ok(n) if trimmed.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
        _ => Err(Fail::usage(format!(
            "{flag}: expected a non-negative integer or `none`, got {raw:?}"
        ))),
    }
}

fn limit_text(v: &Value) -> String {
    if v.is_null() {
        "none".to_string()
    } else {
        text(v)
    }
}

const QUEUE_HEADERS: [&str; 7] = [
    "NAME",
    "CONCURRENCY",
    "PAUSED",
    "SCHEDULED",
    "AVAILABLE",
    "RUNNING",
    "RETRYABLE",
];

fn queue_table(queues: &Value) -> String {
    let rows: Vec<Vec<String>> = items(queues)
        .iter()
        .map(|q| {
            let mut row = vec![text(&q["name"]), limit_text(&q["concurrency"])];
            for key in ["paused", "scheduled", "available", "running", "retryable"] {
                row.push(text(&q[key]));
            }
            row
        })
        .collect();
    table(&QUEUE_HEADERS, &rows)
}

async fn queues(api: &Api, json: bool, command: QueuesCommand) -> Result<(), Fail> {
    let (line, answer) = match command {
        QueuesCommand::List => {
            let body = api.get("/v1/queues", &[]).await?;
            return if json {
                emit(&pretty(&body))
            } else {
                emit(&queue_table(&body["queues"]))
            };
        }
        QueuesCommand::Set { queue, concurrency } => {
            let limit = parse_limit("--concurrency", &concurrency)?;
            let path = format!("/v1/queues/{}", encode(&queue));
            let body = json!({ "concurrency": limit });
            let answer = api.write(Method::PATCH, &path, Some(&body)).await?;
            let line = format!(
                "queue {queue}: concurrency {}\n",
                limit_text(&answer["concurrency"])
            );
            (line, answer)
        }
        QueuesCommand::Pause { queue } => {
            let path = format!("/v1/queues/{}/pause", encode(&queue));
            let answer = api.write(Method::POST, &path, None).await?;
            (format!("paused queue {queue}\n"), answer)
        }
        QueuesCommand::Resume { queue } => {
            let path = format!("/v1/queues/{}/resume", encode(&queue));
            let answer = api.write(Method::POST, &path, None).await?;
            (format!("resumed queue {queue}\n"), answer)
        }
    };
    if json {
        emit(&pretty(&answer))
    } else {
        emit(&line)
    }
}

// ---------------------------------------------------------------------------
// Schedules

async fn apply(api: &Api, json: bool, args: ApplyArgs) -> Result<(), Fail> {
    let files =
        crate::schedule_files::read(&args.files).map_err(|e| Fail::usage(format!("-f {e}")))?;
    // Every file is parsed and validated first: one error anywhere and
    // nothing is sent.
    let loaded =
        reeve_schedule::load_all(&files).map_err(|errors| Fail::usage(errors.to_string()))?;
    let specs: Vec<&reeve_schedule::ScheduleSpec> = loaded.iter().map(|l| &l.spec).collect();
    let body = json!({ "schedules": specs, "prune": args.prune, "dry_run": args.dry_run });
    let answer = api
        .write(Method::POST, "/v1/schedules/apply", Some(&body))
        .await?;
    if json {
        return emit(&pretty(&answer));
    }
    let mut out = String::new();
    let names = |key: &str| -> Vec<String> { items(&answer[key]).iter().map(text).collect() };
    for name in names("created") {
        out.push_str(&format!("created    {name}\n"));
    }
    for changed in items(&answer["changed"]) {
        let fields: Vec<String> = items(&changed["fields"]).iter().map(text).collect();
        out.push_str(&format!(
            "changed    {} ({})\n",
            text(&changed["name"]),
            fields.join(", ")
        ));
    }
    for name in names("unchanged") {
        out.push_str(&format!("unchanged  {name}\n"));
    }
    for name in names("deleted") {
        out.push_str(&format!("deleted    {name}\n"));
    }
    if args.dry_run {
        out.push_str("(dry run: nothing was changed)\n");
    }
    for w in items(&answer["warnings"]) {
        out.push_str(&format!("warning: {}\n", text(&w["message"])));
    }
    emit(&out)
}

fn schedule_table(schedules: &Value, now: Timestamp) -> String {
    let rows: Vec<Vec<String>> = items(schedules)
        .iter()
        .map(|s| {
            vec![
                text(&s["name"]),
                text(&s["status"]),
                text(&s["rule"]),
                when(&s["next_fire_at"], now),
                runs::last_outcome(&s["recent"]),
                format!(
                    "{}/{}",
                    text(&s["generic_streak"]),
                    text(&s["budget_streak"])
                ),
                runs::avg_duration(&s["recent"]),
                runs::avg_turns(&s["recent"], &s["spec"]["job"]["max_turns"]),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATUS",
            "RULE",
            "NEXT",
            "LAST",
            "STREAKS",
            "AVG DURATION",
            "AVG TURNS",
        ],
        &rows,
    )
}

async fn schedules(api: &Api, json: bool, command: SchedulesCommand) -> Result<(), Fail> {
    let path = |name: &str, action: &str| format!("/v1/schedules/{}{action}", encode(name));
    let (line, answer) = match command {
        SchedulesCommand::List => {
            let body = api.get("/v1/schedules", &[]).await?;
            return if json {
                emit(&pretty(&body))
            } else {
                emit(&schedule_table(&body["schedules"], Timestamp::now()))
            };
        }
        SchedulesCommand::Show { name } => {
            let body = api.get(&path(&name, ""), &[]).await?;
            if json {
                return emit(&pretty(&body));
            }
            let s = &body["schedule"];
            let now = Timestamp::now();
            let mut out = key_values(&[
                ("name", text(&s["name"])),
                ("rule", text(&s["rule"])),
                ("status", text(&s["status"])),
                ("paused_reason", text(&s["paused_reason"])),
                ("next_fire_at", when(&s["next_fire_at"], now)),
                ("deferred_until", when(&s["defer_until"], now)),
                ("probe_job", text(&s["probe_job"])),
                ("last", runs::last_outcome(&s["recent"])),
                ("avg_duration", runs::avg_duration(&s["recent"])),
                (
                    "avg_turns",
                    runs::avg_turns(&s["recent"], &s["spec"]["job"]["max_turns"]),
                ),
                ("last_nominal", when(&s["last_nominal"], now)),
                (
                    "streaks",
                    format!(
                        "generic {}, budget {}",
                        text(&s["generic_streak"]),
                        text(&s["budget_streak"])
                    ),
                ),
                ("job", one_line(&s["spec"]["job"].to_string())),
            ]);
            let rows: Vec<Vec<String>> = items(&body["firings"])
                .iter()
                .map(|f| {
                    vec![
                        text(&f["nominal_at"]),
                        text(&f["outcome"]),
                        text(&f["job_id"]),
                        runs::explain(f),
                    ]
                })
                .collect();
            out.push_str("\nfirings:\n");
            out.push_str(&table(
                &["NOMINAL", "OUTCOME", "JOB", "WHAT HAPPENED"],
                &rows,
            ));
            return emit(&out);
        }
        SchedulesCommand::Pause { name } => {
            let answer = api
                .write(Method::POST, &path(&name, "/pause"), None)
                .await?;
            (format!("paused schedule {name}\n"), answer)
        }
        SchedulesCommand::Resume { name, probe } => {
            let body = json!({ "probe": probe, "by": runs::whoami() });
            let answer = api
                .write(Method::POST, &path(&name, "/resume"), Some(&body))
                .await?;
            let line = if probe {
                format!(
                    "probing schedule {name}: job {} runs now; the schedule resumes if it succeeds\n",
                    text(&answer["probe_job"]["id"])
                )
            } else {
                format!("resumed schedule {name}\n")
            };
            (line, answer)
        }
        SchedulesCommand::Run { name, force } => {
            return runs::run(api, json, &name, force).await;
        }
        SchedulesCommand::History { name, limit, at } => {
            return runs::history(api, json, &name, limit, at).await;
        }
        SchedulesCommand::Metrics { name, limit } => {
            return runs::metrics(api, json, &name, limit).await;
        }
        SchedulesCommand::Delete { name } => {
            let answer = api.write(Method::DELETE, &path(&name, ""), None).await?;
            (format!("deleted schedule {name}\n"), answer)
        }
    };
    if json {
        emit(&pretty(&answer))
    } else {
        emit(&line)
    }
}

async fn limits(api: &Api, json: bool, command: LimitsCommand) -> Result<(), Fail> {
    let answer = match command {
        LimitsCommand::Show => api.get("/v1/limits", &[]).await?,
        LimitsCommand::Set { global } => {
            let limit = parse_limit("--global", &global)?;
            let body = json!({ "global": limit });
            api.write(Method::PUT, "/v1/limits", Some(&body)).await?
        }
    };
    if json {
        emit(&pretty(&answer))
    } else {
        emit(&format!("global: {}\n", limit_text(&answer["global"])))
    }
}

async fn status(api: &Api, json: bool) -> Result<(), Fail> {
    let body = api.get("/v1/status", &[]).await?;
    if json {
        emit(&pretty(&body))
    } else {
        emit(&render_status(&body))
    }
}

fn render_status(s: &Value) -> String {
    let exec = &s["executor"];
    let pairs = [
        ("backend", text(&s["backend"])),
        ("worker", text(&s["worker_id"])),
        (
            "leader",
            match s["leader"].as_bool() {
                Some(true) => "yes (this daemon reaps and maintains)".to_string(),
                Some(false) => "no (another daemon leads)".to_string(),
                None => "-".to_string(),
            },
        ),
        (
            "running",
            format!(
                "{} (global limit: {})",
                text(&s["running"]),
                limit_text(&s["limits"]["global"])
            ),
        ),
        (
            "stalled",
            format!(
                "{} ({} escalated)",
                s["stalled"].as_u64().unwrap_or(0),
                s["escalated"].as_u64().unwrap_or(0)
            ),
        ),
        (
            "executor",
            format!(
                "{}/{} slots busy; claimed {}, finished {}, reaped {}, refused write-backs {}, heartbeats {}",
                text(&exec["busy"]),
                text(&exec["slots"]),
                text(&exec["claimed_total"]),
                text(&exec["finished_total"]),
                text(&exec["reaped_total"]),
                text(&exec["refused_writebacks_total"]),
                text(&exec["heartbeats_total"]),
            ),
        ),
    ];
    let mut out = key_values(&pairs);

    // Known states in lifecycle order, then any this version does not know.
    let by_state = s["by_state"].as_object();
    let count = |state: &str| {
        by_state
            .and_then(|m| m.get(state))
            .map_or("0".to_string(), text)
    };
    let mut rows: Vec<Vec<String>> = JobState::ALL
        .iter()
        .map(|st| vec![st.as_str().to_string(), count(st.as_str())])
        .collect();
    if let Some(map) = by_state {
        for (state, n) in map {
            if state.parse::<JobState>().is_err() {
                rows.push(vec![state.clone(), text(n)]);
            }
        }
    }
    out.push_str("\njobs by state:\n");
    out.push_str(&table(&["STATE", "JOBS"], &rows));
    out.push_str("\nqueues:\n");
    out.push_str(&queue_table(&s["queues"]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enqueue_args(payload: Option<&str>, command: &[&str]) -> EnqueueArgs {
        EnqueueArgs {
            queue: "default".into(),
            kind: "echo".into(),
            payload: payload.map(String::from),
            priority: Some(-5),
            max_attempts: None,
            unique_key: None,
            idempotency_key: None,
            max_run_duration: Some("20m".into()),
            heartbeat_timeout: None,
            delay: None,
            run_at: None,
            max_turns: None,
            then_kind: None,
            then_queue: None,
            requires: Vec::new(),
            command: command.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn table_aligns_columns_and_leaves_the_last_unpadded() {
        let rows = vec![
            vec!["1".into(), "running".into(), "x".into()],
            vec!["1234".into(), "ok".into(), "two\nlines".into()],
        ];
        let out = table(&["ID", "STATE", "NOTE"], &rows);
        assert_eq!(
            out,
            "ID    STATE    NOTE\n\
             1     running  x\n\
             1234  ok       two lines\n"
        );
        assert_eq!(table(&["A", "B"], &[]), "A  B\n");
        // Width counts characters, not bytes.
        let out = table(&["N", "X"], &[vec!["é".into(), "1".into()]]);
        assert_eq!(out, "N  X\né  1\n");
    }

    #[test]
    fn key_values_align_and_indent_continuations() {
        let out = key_values(&[
            ("id", "7".into()),
            ("last_error", "boom\nat line 2".into()),
            ("unique_key", "-".into()),
        ]);
        assert_eq!(
            out,
            "id:          7\n\
             last_error:  boom\n\
             \x20            at line 2\n\
             unique_key:  -\n"
        );
    }

    #[test]
    fn limits_parse_as_integers_or_none() {
        assert_eq!(parse_limit("--concurrency", "none"), Ok(None));
        assert_eq!(parse_limit("--concurrency", "NONE"), Ok(None));
        assert_eq!(parse_limit("--concurrency", "0"), Ok(Some(0)));
        assert_eq!(parse_limit("--concurrency", " 12 "), Ok(Some(12)));
        for bad in ["-1", "+3", "1.5", "", "lots", "99999999999"] {
            let err = parse_limit("--concurrency", bad).unwrap_err();
            assert_eq!(err.code, 2, "{bad}");
            assert!(
                err.message
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("--concurrency:"),
                "{err:?}"
            );
        }
        let err = parse_limit("--global", "x").unwrap_err();
        assert!(
            err.message
                .as_deref()
                .unwrap_or("")
                .starts_with("--global:")
        );
    }

    #[test]
    fn api_errors_decode_with_field_and_exit_code() {
        let body = br#"{"error":"invalid_input","message":"priority: must be between -10000 and 10000","field":"priority"}"#;
        assert_eq!(
            decode_error(400, body),
            Fail {
                code: 2,
                message: Some(
                    "priority: must be between -10000 and 10000 (field: priority)".into()
                ),
            }
        );
        let body = br#"{"error":"invalid_json","message":"expected a JSON object"}"#;
        assert_eq!(decode_error(400, body).code, 2);
        let body = br#"{"error":"not_found","message":"job 9 not found"}"#;
        assert_eq!(decode_error(404, body), Fail::error("job 9 not found"));
        let body = br#"{"error":"invalid_state","message":"cannot retry a job in state running","action":"retry","state":"running"}"#;
        assert_eq!(decode_error(409, body).code, 1);
        let body = br#"{"error":"unauthorized"}"#;
        assert_eq!(
            decode_error(401, body),
            Fail::error("unauthorized (HTTP 401)")
        );
        // Not JSON at all (a proxy in between, say).
        assert_eq!(
            decode_error(502, b"<html>\nBad Gateway\n</html>"),
            Fail::error("the daemon answered HTTP 502: <html> Bad Gateway </html>")
        );
        assert_eq!(
            decode_error(500, b""),
            Fail::error("the daemon answered HTTP 500")
        );
        // JSON of another shape.
        assert_eq!(decode_error(500, b"[1,2]").code, 1);
    }

    #[test]
    fn enqueue_body_omits_absent_fields() {
        let body =
            enqueue_body(enqueue_args(Some(r#"{"n": 1}"#), &["sh", "-c", "echo hi"])).unwrap();
        assert_eq!(
            body,
            json!({
                "queue": "default",
                "kind": "echo",
                "payload": {"n": 1},
                "priority": -5,
                "max_run_duration": "20m",
                "command": ["sh", "-c", "echo hi"],
            })
        );
        let body = enqueue_body(enqueue_args(None, &[])).unwrap();
        assert!(body.get("payload").is_none() && body.get("command").is_none());
        let body = enqueue_body(enqueue_args(Some("null"), &[])).unwrap();
        assert_eq!(body["payload"], Value::Null);
        assert!(body.get("payload").is_some());
        assert!(body.get("on_success").is_none());
        assert!(body.get("requires").is_none(), "no requirements, no field");
    }

    #[test]
    fn then_flags_name_the_follow_up() {
        let args = EnqueueArgs {
            then_kind: Some("review".into()),
            ..enqueue_args(None, &[])
        };
        let body = enqueue_body(args.clone()).unwrap();
        assert_eq!(body["on_success"], json!({"kind": "review"}));
        let body = enqueue_body(EnqueueArgs {
            then_queue: Some("merge".into()),
            ..args
        })
        .unwrap();
        assert_eq!(
            body["on_success"],
            json!({"kind": "review", "queue": "merge"})
        );
    }

    #[test]
    fn require_flags_pin_the_job() {
        let body = enqueue_body(EnqueueArgs {
            requires: vec!["device=alice-mac".into(), "gpu=1".into()],
            ..enqueue_args(None, &[])
        })
        .unwrap();
        assert_eq!(body["requires"], json!(["device=alice-mac", "gpu=1"]));
    }

    #[test]
    fn bad_payload_is_a_usage_error_naming_the_flag() {
        let err = enqueue_body(enqueue_args(Some("{nope"), &[])).unwrap_err();
        assert_eq!(err.code, 2);
        assert!(
            err.message
                .as_deref()
                .unwrap_or("")
                .starts_with("--payload: not valid JSON: "),
            "{err:?}"
        );
    }

    #[test]
    fn query_strings_are_encoded() {
        assert_eq!(query_string(&[]), "");
        assert_eq!(
            query_string(&[("state", "running".into()), ("kind", "a b&c/é".into())]),
            "?state=running&kind=a%20b%26c%2F%C3%A9"
        );
    }

    #[test]
    fn relative_times_and_tails() {
        assert_eq!(relative(42_000), "in 42s");
        assert_eq!(relative(-90_400), "1m30s ago");
        assert_eq!(relative(200), "now");
        let now = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(
            when(&json!("2026-01-01T00:00:42.000Z"), now),
            "2026-01-01T00:00:42.000Z (in 42s)"
        );
        assert_eq!(when(&Value::Null, now), "-");
        assert_eq!(when(&json!("yesterday"), now), "yesterday");

        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_lines("a\nb\n", 5), "a\nb\n");
        assert_eq!(tail_lines("", 3), "");
        assert_eq!(tail_lines("a\n", 0), "");
    }

    #[test]
    fn job_list_shows_rows_and_the_next_page_hint() {
        let page = json!({
            "items": [{
                "id": 12, "state": "running", "queue": "default", "kind": "echo",
                "attempt": 1, "max_attempts": 3, "epoch": 1, "priority": 0,
                "claimed_by": "host:1", "created_at": "2026-01-01T00:00:00.000Z"
            }, {"id": 11}],
            "next_before_id": 11
        });
        let out = render_job_list(&page);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("ID  STATE"), "{out}");
        assert!(
            lines[1].contains("running") && lines[1].contains("1/3"),
            "{out}"
        );
        assert!(lines[2].starts_with("11  -"), "{out}");
        assert_eq!(lines[3], "more: --before 11");
        // Unexpected shapes never panic.
        assert_eq!(render_job_list(&json!("?")).lines().count(), 1);
    }

    #[test]
    fn job_show_renders_fields_events_and_output_tail() {
        let now = Timestamp::parse("2026-01-01T00:01:00Z").unwrap();
        let job = json!({
            "id": 12, "state": "running", "queue": "default", "kind": "echo",
            "attempt": 1, "max_attempts": 3, "epoch": 2, "claimed_by": "w1",
            "lease_expires_at": "2026-01-01T00:01:42.000Z", "turns": 3, "max_turns": 10,
            "cancel_requested_at": "2026-01-01T00:00:59.000Z", "command": ["sh", "-c", "echo hi"],
        });
        let events = json!([{"at": "2026-01-01T00:00:00.000Z", "event": "enqueued", "epoch": 0,
            "attempt": 0, "worker": null, "reason": null, "by": "client", "detail": "available"}]);
        let data: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let output = json!({"running": true, "data": data, "next_offset": data.len()});
        let out = render_job(&job, &events, &output, now);
        assert!(
            out.contains(&format!("{:<22}running (cancel requested)\n", "state:")),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "{:<22}2026-01-01T00:01:42.000Z (in 42s)\n",
                "lease_expires_at:"
            )),
            "{out}"
        );
        assert!(out.contains(&format!("{:<22}3/10\n", "turns:")), "{out}");
        assert!(
            out.contains(&format!("{:<22}sh -c \"echo hi\"\n", "command:")),
            "{out}"
        );
        assert!(out.contains("enqueued"), "{out}");
        assert!(out.contains("output (tail, live):\nline 11\n"), "{out}");
        assert!(!out.contains("line 10\n"), "{out}");
        assert!(out.starts_with("id:"), "no flag without a stall: {out}");
        let out = render_job(&json!(null), &json!(null), &json!(null), now);
        assert!(out.contains("output (stored): none"), "{out}");
        let pinned = json!({"id": 13, "state": "available", "requires": ["device=alice-mac"],
            "waiting_for": "a worker with device=alice-mac"});
        let out = render_job(&pinned, &json!([]), &json!(null), now);
        assert!(
            out.contains(&format!(
                "{:<22}available (waiting for a worker with device=alice-mac)\n",
                "state:"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!("{:<22}device=alice-mac\n", "requires:")),
            "{out}"
        );
    }

    #[test]
    fn job_show_flags_a_stalled_or_escalated_run() {
        let now = Timestamp::parse("2026-01-01T01:00:00Z").unwrap();
        let mut job = json!({
            "id": 12, "state": "running", "progress_at": "2026-01-01T00:10:00.000Z",
            "stalled_at": "2026-01-01T00:40:00.000Z", "escalated_at": null,
        });
        let out = render_job(&job, &json!([]), &json!(null), now);
        assert!(
            out.starts_with("STALLED: no progress since 2026-01-01T00:10:00.000Z"),
            "{out}"
        );
        assert!(
            out.contains(&format!("{:<22}2026-01-01T00:40:00.000Z", "stalled_at:")),
            "{out}"
        );
        job["escalated_at"] = json!("2026-01-01T00:55:00.000Z");
        let out = render_job(&job, &json!([]), &json!(null), now);
        assert!(out.starts_with("ESCALATED: "), "{out}");
        job["state"] = json!("failed");
        let out = render_job(&job, &json!([]), &json!(null), now);
        assert!(
            out.starts_with("id:"),
            "a finished run is not flagged: {out}"
        );
    }

    #[test]
    fn status_lists_states_in_order_and_queues() {
        let s = json!({
            "backend": "sqlite", "worker_id": "w1", "running": 2,
            "by_state": {"running": 2, "available": 5, "mystery": 1},
            "limits": {"global": null},
            "queues": [{"name": "default", "concurrency": 4, "paused": false,
                "scheduled": 0, "available": 5, "running": 2, "retryable": 0}],
            "executor": {"slots": 8, "busy": 2, "claimed_total": 3, "finished_total": 1,
                "refused_writebacks_total": 0, "reaped_total": 0, "heartbeats_total": 9}
        });
        let out = render_status(&s);
        assert!(out.contains("running:   2 (global limit: none)\n"), "{out}");
        assert!(out.contains("stalled:   0 (0 escalated)\n"), "{out}");
        let mut flagged = s.clone();
        flagged["stalled"] = json!(3);
        flagged["escalated"] = json!(1);
        assert!(
            render_status(&flagged).contains("stalled:   3 (1 escalated)\n"),
            "{out}"
        );
        assert!(out.contains("executor:  2/8 slots busy;"), "{out}");
        let scheduled = out.find("scheduled  0").unwrap();
        let available = out.find("available  5").unwrap();
        assert!(scheduled < available, "{out}");
        assert!(out.contains("mystery    1"), "{out}");
        assert!(out.contains("default  4            no"), "{out}");
    }
}
