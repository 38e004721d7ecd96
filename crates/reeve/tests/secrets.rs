//! Secrets never leak (SPEC §12): a daemon whose configuration names an
//! admin token, two worker tokens and two webhook secrets by reference
//! (`*_env` and `*_file`), and on PostgreSQL a database URL with a password,
//! is driven through wrong logins, bad tokens, a remote worker's runs, a
//! failing job, webhook deliveries to a receiver that answers 500, the CLI
//! and every dashboard page. Then the daemon's whole log, every response
//! body and header, the CLI's output, `/metrics`, the pages and the webhook
//! requests are searched for each secret and its obvious encodings (base64,
//! hex, URL-encoded); a hit fails naming the secret, the encoding and where.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const ADMIN: &str = "adm1n-Tok3n-7f3a9c2e5b41";
const WORKER_FILE: &str = "w0rker-F1le-91d2c7a4e8f0";
const WORKER_ENV: &str = "w0rker-Env-4b8e1f6a2d93";
const WEBHOOK_ENV: &str = "h00k-Env-S3cret-6c1f0e9b77";
const WEBHOOK_FILE: &str = "h00k-F1le-S3cret-2a7d4c8f55";
const PG_PASSWORD: &str = "pg-Pa55w0rd-5e9b3a1c08";

/// Everything a client or an operator could see, by where it was seen.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    fn add(&mut self, place: impl Into<String>, text: impl Into<String>) {
        self.0.push((place.into(), text.into()));
    }
}

fn base64(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..=chunk.len() {
            out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        if pad {
            out.push_str(&"=".repeat(3 - chunk.len()));
        }
    }
    out
}

/// The forms a secret could take on its way out: itself, base64 (standard
/// and URL-safe, padded or not), hex (either case), and percent-encoded.
fn encodings(secret: &str) -> Vec<(&'static str, String)> {
    const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = secret.as_bytes();
    let hex: String = b.iter().map(|c| format!("{c:02x}")).collect();
    let percent: String = b
        .iter()
        .map(|c| {
            if c.is_ascii_alphanumeric() || b"-._~".contains(c) {
                (*c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect();
    let all_percent: String = b.iter().map(|c| format!("%{c:02X}")).collect();
    vec![
        ("plain", secret.to_string()),
        ("base64", base64(b, STD, true)),
        ("base64 unpadded", base64(b, STD, false)),
        ("base64url", base64(b, URL, false)),
        ("hex", hex.clone()),
        ("HEX", hex.to_uppercase()),
        ("url-encoded", percent),
        ("fully url-encoded", all_percent),
    ]
}

/// Every (secret, encoding, place) found.
fn hits(seen: &Seen, secrets: &[(&str, &str)]) -> Vec<String> {
    let mut hits = Vec::new();
    for (name, secret) in secrets {
        for (encoding, form) in encodings(secret) {
            for (place, text) in &seen.0 {
                if text.contains(&form) {
                    hits.push(format!("{name} ({encoding}) in {place}"));
                }
            }
        }
    }
    hits
}

/// Fails naming every (secret, encoding, place) found.
fn assert_no_secret(seen: &Seen, secrets: &[(&str, &str)]) {
    let hits = hits(seen, secrets);
    assert!(hits.is_empty(), "secrets leaked:\n  {}", hits.join("\n  "));
    assert!(seen.0.len() > 100, "only {} things seen", seen.0.len());
}

/// The encodings must find a planted secret, or the search proves nothing.
#[test]
fn the_search_finds_a_secret_in_every_encoding() {
    for (encoding, form) in encodings(ADMIN) {
        let mut seen = Seen::default();
        seen.add("a page", format!("x {form} y"));
        assert!(
            hits(&seen, &[("admin", ADMIN)])
                .iter()
                .any(|h| h == &format!("admin ({encoding}) in a page")),
            "{encoding} not found"
        );
    }
    let clean = {
        let mut seen = Seen::default();
        seen.add("a page", "nothing to see");
        seen
    };
    assert!(hits(&clean, &[("admin", ADMIN)]).is_empty());
    assert_eq!(
        base64(
            b"reeve",
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
            true
        ),
        "cmVldmU="
    );
}

/// One HTTP exchange, recorded: status, headers and body.
struct Client {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
}

struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

impl Client {
    fn new(base: &str) -> Client {
        Client {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: base.to_string(),
        }
    }

    /// `method path` with `headers` and an optional body (content type,
    /// bytes); the answer is added to `seen`.
    fn send(
        &self,
        seen: &mut Seen,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Answer {
        let answer = self.rt.block_on(async {
            let mut req = self
                .http
                .request(method.parse().unwrap(), format!("{}{path}", self.base));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some((ct, bytes)) = body {
                req = req.header("content-type", ct).body(bytes);
            }
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            Answer {
                status,
                headers,
                body: resp.text().await.unwrap_or_default(),
            }
        });
        let place = format!("{method} {path} → {}", answer.status);
        seen.add(
            format!("{place} (headers)"),
            format!("{:?}", answer.headers),
        );
        seen.add(format!("{place} (body)"), answer.body.clone());
        answer
    }

    fn bearer(
        &self,
        seen: &mut Seen,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let auth = format!("Bearer {token}");
        self.send(
            seen,
            method,
            path,
            &[("authorization", auth.as_str())],
            body.map(|b| ("application/json", b.to_string().into_bytes())),
        )
    }

    fn admin(&self, seen: &mut Seen, method: &str, path: &str, body: Option<Value>) -> Answer {
        self.bearer(seen, ADMIN, method, path, body)
    }
}

/// A webhook receiver on loopback that answers every request 500 and keeps
/// what it was sent. Bounded: it stops when told or after two minutes.
struct Receiver {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (got, halt) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !halt.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut text = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then the body by Content-Length.
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => text.extend_from_slice(&buf[..n]),
                    }
                    let s = String::from_utf8_lossy(&text).to_string();
                    if let Some(end) = s.find("\r\n\r\n") {
                        let len = s[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())
                                    .flatten()
                            })
                            .unwrap_or(0);
                        if text.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                got.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&text).into_owned());
                let _ = conn.write_all(
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope",
                );
            }
        });
        Receiver {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn received(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The configuration: every secret by reference.
fn config(dir: &Path, hook_port: u16, extra: &str) -> String {
    std::fs::write(dir.join("worker-token"), format!("{WORKER_FILE}\n")).unwrap();
    std::fs::write(dir.join("webhook-secret"), format!("{WEBHOOK_FILE}\n")).unwrap();
    format!(
        "{extra}\n\
         [server]\nadmin_token_env = \"REEVE_SECRETS_ADMIN\"\n\
         [[worker_tokens]]\nname = \"by-file\"\ntoken_file = \"{d}/worker-token\"\nkinds = [\"agent\"]\n\
         [[worker_tokens]]\nname = \"by-env\"\ntoken_env = \"REEVE_SECRETS_WORKER\"\n\
         [[webhooks]]\nname = \"hook-env\"\nurl = \"http://127.0.0.1:{hook_port}/hook\"\nevents = [\"job_failed\"]\nsecret_env = \"REEVE_SECRETS_WEBHOOK\"\n\
         [[webhooks]]\nname = \"hook-file\"\nurl = \"http://127.0.0.1:{hook_port}/other\"\nevents = [\"job_failed\"]\nsecret_file = \"{d}/webhook-secret\"\n\
         [retry]\nbase = \"200ms\"\nmax = \"1s\"\njitter = 0.0\n",
        d = dir.display()
    )
}

fn secret_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("REEVE_SECRETS_ADMIN", ADMIN),
        ("REEVE_SECRETS_WORKER", WORKER_ENV),
        ("REEVE_SECRETS_WEBHOOK", WEBHOOK_ENV),
        ("REEVE_LOG", "debug"),
    ]
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Drives the daemon at `d` through everything a client, a worker and an
/// operator do, recording what each of them saw.
fn drive(d: &Daemon, receiver: &Receiver, seen: &mut Seen) {
    let c = Client::new(&d.url);
    let job_state = |seen: &mut Seen, id: i64| {
        c.admin(seen, "GET", &format!("/v1/jobs/{id}"), None).json()["state"].clone()
    };

    // Bad credentials of every kind, near-misses of the real ones included.
    let near = format!("{ADMIN}x");
    let short = &ADMIN[..ADMIN.len() - 1];
    let basic = format!(
        "Basic {}",
        base64(
            format!("admin:{ADMIN}").as_bytes(),
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
            true
        )
    );
    for token in ["wrong", near.as_str(), short, "rjt_1_1_00", WEBHOOK_ENV] {
        let r = c.bearer(seen, token, "GET", "/v1/status", None);
        assert_eq!(r.status, 401, "{}", r.body);
        c.bearer(seen, token, "POST", "/v1/jobs", Some(json!({"kind": "x"})));
    }
    c.send(
        seen,
        "GET",
        "/v1/jobs",
        &[("authorization", basic.as_str())],
        None,
    );
    c.send(seen, "GET", "/metrics", &[], None);
    c.send(seen, "GET", "/jobs", &[], None);
    c.send(
        seen,
        "GET",
        "/jobs",
        &[("cookie", &format!("reeve_session={near}"))],
        None,
    );
    let r = c.bearer(seen, WORKER_FILE, "GET", "/v1/jobs", None);
    assert_eq!(r.status, 403, "{}", r.body);

    // Wrong logins, then a right one: its cookie opens the pages.
    for token in ["wrong", near.as_str(), short, WORKER_FILE] {
        let r = c.send(
            seen,
            "POST",
            "/login",
            &[],
            Some((
                "application/x-www-form-urlencoded",
                format!("token={token}&next=%2Fjobs").into_bytes(),
            )),
        );
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = c.send(
        seen,
        "POST",
        "/login",
        &[],
        Some((
            "application/x-www-form-urlencoded",
            format!("token={ADMIN}&next=%2F").into_bytes(),
        )),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let cookie = r.headers["set-cookie"]
        .split(';')
        .next()
        .unwrap()
        .to_string();

    // A remote worker on each worker token: one run completes, one fails
    // for good (and so is sent to both webhooks).
    let mut failed_jobs = Vec::new();
    for (token, name) in [(WORKER_FILE, "host-file"), (WORKER_ENV, "host-env")] {
        let r = c.bearer(
            seen,
            token,
            "POST",
            "/v1/workers/register",
            Some(json!({"name": name, "kinds": ["agent"], "slots": 2})),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        let worker = r.json()["worker"]["id"].as_str().unwrap().to_string();
        let ok = c
            .admin(seen, "POST", "/v1/jobs", Some(json!({"kind": "agent"})))
            .json()["id"]
            .as_i64()
            .unwrap();
        let bad = c
            .admin(
                seen,
                "POST",
                "/v1/jobs",
                Some(json!({"kind": "agent", "max_attempts": 1})),
            )
            .json()["id"]
            .as_i64()
            .unwrap();
        let claim = c.bearer(
            seen,
            token,
            "POST",
            &format!("/v1/workers/{worker}/claim"),
            Some(json!({"limit": 2, "wait_ms": 2000})),
        );
        let runs = claim.json()["runs"].as_array().cloned().unwrap_or_default();
        assert_eq!(runs.len(), 2, "{}", claim.body);
        for run in runs {
            let id = run["job"]["id"].as_i64().unwrap();
            let epoch = run["job"]["epoch"].as_i64().unwrap();
            let job_token = run["token"].as_str().unwrap().to_string();
            c.bearer(
                seen,
                &job_token,
                "POST",
                &format!("/v1/jobs/{id}/heartbeat"),
                Some(json!({"epoch": epoch, "progress": "half way"})),
            );
            c.send(
                seen,
                "PUT",
                &format!("/v1/jobs/{id}/checkpoint"),
                &[("authorization", &format!("Bearer {job_token}"))],
                Some(("application/octet-stream", b"state".to_vec())),
            );
            c.bearer(
                seen,
                &job_token,
                "GET",
                &format!("/v1/jobs/{id}/checkpoint"),
                None,
            );
            c.bearer(
                seen,
                &job_token,
                "GET",
                &format!("/v1/jobs/{id}/mail"),
                None,
            );
            c.bearer(seen, &job_token, "GET", "/v1/status", None);
            c.bearer(
                seen,
                token,
                "POST",
                &format!("/v1/workers/{worker}/heartbeat"),
                Some(json!({"runs": [{"job": id, "epoch": epoch}]})),
            );
            let r = if id == ok {
                c.bearer(
                    seen,
                    token,
                    "POST",
                    &format!("/v1/workers/{worker}/complete"),
                    Some(json!({"job": id, "epoch": epoch, "output": "done\n"})),
                )
            } else {
                c.bearer(seen, token, "POST", &format!("/v1/workers/{worker}/fail"), Some(json!({"job": id, "epoch": epoch, "reason": "error", "error": "it broke", "output": "trace\n"})))
            };
            assert_eq!(r.status, 200, "{}", r.body);
            // The run is over: its token writes nothing more.
            c.bearer(
                seen,
                &job_token,
                "POST",
                &format!("/v1/jobs/{id}/complete"),
                Some(json!({"epoch": epoch})),
            );
        }
        failed_jobs.push(bad);
        c.bearer(
            seen,
            token,
            "POST",
            &format!("/v1/workers/{worker}/deregister"),
            None,
        );
    }

    // A command job run by the daemon that fails for good.
    let cmd = c
        .admin(
            seen,
            "POST",
            "/v1/jobs",
            Some(json!({"kind": "agent", "max_attempts": 1, "command": ["sh", "-c", "echo about to fail; echo oops >&2; exit 3"]})),
        )
        .json()["id"]
        .as_i64()
        .unwrap();
    wait_for("the command job to fail", Duration::from_secs(30), || {
        job_state(seen, cmd) == "failed"
    });
    failed_jobs.push(cmd);
    for id in &failed_jobs {
        assert_eq!(job_state(seen, *id), "failed");
    }

    // Webhooks: a delivery attempt to each, answered 500, then logged.
    wait_for(
        "webhook deliveries to both webhooks",
        Duration::from_secs(60),
        || {
            let got = receiver.received();
            got.iter().any(|r| r.starts_with("POST /hook"))
                && got.iter().any(|r| r.starts_with("POST /other"))
        },
    );
    wait_for("a webhook_failed log line", Duration::from_secs(30), || {
        std::fs::read_to_string(&d.log)
            .unwrap_or_default()
            .contains("webhook_failed")
    });

    // A schedule, for its pages.
    c.admin(
        seen,
        "POST",
        "/v1/schedules/apply",
        Some(json!({"schedules": [{"name": "nightly", "cron": "0 3 * * *", "job": {"kind": "agent"}}]})),
    );

    // Everything an operator reads through the API.
    for path in [
        "/v1/status",
        "/v1/jobs",
        "/v1/queues",
        "/v1/limits",
        "/v1/schedules",
        "/v1/schedules/nightly",
        "/v1/schedules/nightly/history",
        "/v1/schedules/nightly/metrics",
        "/v1/pressure",
        "/v1/audit",
        "/v1/forecast",
        "/v1/workers",
        "/v1/openapi.json",
        "/metrics",
        "/healthz",
    ] {
        let r = c.admin(seen, "GET", path, None);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let ids: Vec<i64> = c.admin(seen, "GET", "/v1/jobs?limit=100", None).json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert!(ids.len() >= 5, "{ids:?}");
    for id in &ids {
        for tail in ["", "/events", "/output"] {
            c.admin(seen, "GET", &format!("/v1/jobs/{id}{tail}"), None);
        }
    }

    // Every dashboard page, with the session cookie.
    let mut pages: Vec<String> = [
        "/",
        "/jobs",
        "/schedules",
        "/schedules/nightly",
        "/timeline",
        "/charts",
        "/workers",
        "/audit",
        "/ui/app.js",
        "/ui/app.css",
        "/jobs?state=failed",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    pages.extend(ids.iter().map(|id| format!("/jobs/{id}")));
    for page in &pages {
        let r = c.send(seen, "GET", page, &[("cookie", cookie.as_str())], None);
        assert_eq!(r.status, 200, "{page}: {}", r.body);
    }

    // The CLI, with the right token and with a wrong one.
    let mut run_cli = |token: &str, args: &[&str]| {
        let (code, out, err) = cli_with_token(&d.url, token, args);
        seen.add(
            format!("reeve {} (exit {code}, stdout)", args.join(" ")),
            out,
        );
        seen.add(
            format!("reeve {} (exit {code}, stderr)", args.join(" ")),
            err,
        );
        code
    };
    assert_eq!(run_cli(ADMIN, &["status"]), 0);
    assert_eq!(run_cli(ADMIN, &["status", "--json"]), 0);
    for id in &ids {
        assert_eq!(run_cli(ADMIN, &["jobs", "show", &id.to_string()]), 0);
    }
    assert_eq!(
        run_cli(ADMIN, &["jobs", "show", &cmd.to_string(), "--json"]),
        0
    );
    assert_ne!(run_cli(&near, &["status"]), 0);
    assert_ne!(run_cli(WORKER_ENV, &["jobs", "show", &cmd.to_string()]), 0);

    for (i, request) in receiver.received().iter().enumerate() {
        seen.add(format!("webhook request {i}"), request.clone());
    }
}

/// Waits for the daemon `d` (its files named `d.*` in `dir`), or fails
/// with its log.
fn wait_up(d: &mut Daemon, dir: &Path) {
    if !d.wait_up(Duration::from_secs(30)) {
        panic!(
            "the daemon did not start:\n{}\n{}",
            std::fs::read_to_string(&d.log).unwrap_or_default(),
            std::fs::read_to_string(dir.join("d.err")).unwrap_or_default()
        );
    }
}

/// Stops `d` and adds its whole log (stdout and stderr) to `seen`.
fn stop_and_read_logs(d: Daemon, dir: &Path, name: &str, seen: &mut Seen) {
    let log = d.log.clone();
    d.stop();
    let out = std::fs::read_to_string(&log).unwrap();
    let err = std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default();
    assert!(
        out.contains("webhook_failed"),
        "the log saw the failed delivery"
    );
    seen.add("the daemon's stdout", out);
    seen.add("the daemon's stderr", err);
}

fn all_secrets() -> Vec<(&'static str, &'static str)> {
    vec![
        ("admin token (env)", ADMIN),
        ("worker token (file)", WORKER_FILE),
        ("worker token (env)", WORKER_ENV),
        ("webhook secret (env)", WEBHOOK_ENV),
        ("webhook secret (file)", WEBHOOK_FILE),
        ("database password", PG_PASSWORD),
    ]
}

#[test]
fn no_secret_reaches_a_log_an_answer_the_metrics_or_a_page_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let db = format!("sqlite://{}", dir.path().join("reeve.db").display());
    let mut d = Daemon::spawn(
        dir.path(),
        "d",
        &db,
        &config(dir.path(), receiver.port, ""),
        &secret_env(),
    );
    wait_up(&mut d, dir.path());
    let mut seen = Seen::default();
    drive(&d, &receiver, &mut seen);
    stop_and_read_logs(d, dir.path(), "d", &mut seen);
    assert_no_secret(&seen, &all_secrets());
}

/// `url` with `password` set in its user info.
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (userinfo, host) = rest.split_once('@').expect("a URL with a user");
    let user = userinfo.split(':').next().unwrap();
    format!("{scheme}://{user}:{password}@{host}")
}

#[test]
fn no_secret_reaches_a_log_an_answer_the_metrics_or_a_page_on_postgres() {
    let Some(schema) = pg::Schema::new("secrets") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut seen = Seen::default();
    let extra = format!(
        "[postgres]\nschema = \"{}\"\npassword_env = \"REEVE_SECRETS_PGPASS\"",
        schema.0
    );
    // A password in the URL (user info or parameter) is refused, and the
    // refusal does not repeat it. (The server trusts loopback, so any
    // password would do.)
    let bare = format!("[postgres]\nschema = \"{}\"", schema.0);
    let with_param = format!(
        "{}{}password={PG_PASSWORD}",
        pg::url(),
        if pg::url().contains('?') { "&" } else { "?" }
    );
    for (i, url) in [with_password(&pg::url(), PG_PASSWORD), with_param]
        .iter()
        .enumerate()
    {
        let name = format!("refused{i}");
        let mut d = Daemon::spawn(dir.path(), &name, url, &bare, &secret_env());
        let deadline = Instant::now() + Duration::from_secs(20);
        let code = loop {
            if let Some(status) = d.child.try_wait().unwrap() {
                break status.code();
            }
            assert!(
                Instant::now() < deadline,
                "a URL with a password was not refused"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_ne!(code, Some(0));
        let err = std::fs::read_to_string(dir.path().join(format!("{name}.err"))).unwrap();
        assert!(err.contains("password"), "{err}");
        seen.add(format!("the refusal of URL {i} (stderr)"), err);
        seen.add(
            format!("the refusal of URL {i} (stdout)"),
            std::fs::read_to_string(&d.log).unwrap(),
        );
    }

    let receiver = Receiver::start();
    let mut env = secret_env();
    env.push(("REEVE_SECRETS_PGPASS", PG_PASSWORD));
    let mut d = Daemon::spawn(
        dir.path(),
        "d",
        &pg::url(),
        &config(dir.path(), receiver.port, &extra),
        &env,
    );
    wait_up(&mut d, dir.path());
    let r = Client::new(&d.url).send(&mut seen, "GET", "/healthz", &[], None);
    assert!(r.body.contains("postgres"), "{}", r.body);
    drive(&d, &receiver, &mut seen);
    stop_and_read_logs(d, dir.path(), "d", &mut seen);
    assert_no_secret(&seen, &all_secrets());
}

/// A job's command runs with the daemon's environment, where the admin
/// token and a webhook secret are named by `*_env`: it must not find them
/// there (a job could print them into its output, which the API, the CLI
/// and the dashboard show).
#[test]
fn a_job_s_environment_does_not_carry_the_daemon_s_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("reeve.db").display());
    let mut d = Daemon::spawn(
        dir.path(),
        "d",
        &db,
        &config(dir.path(), 9, ""),
        &secret_env(),
    );
    wait_up(&mut d, dir.path());
    let c = Client::new(&d.url);
    let mut seen = Seen::default();
    let id = c
        .admin(
            &mut seen,
            "POST",
            "/v1/jobs",
            Some(json!({"kind": "agent", "command": ["sh", "-c", "env"]})),
        )
        .json()["id"]
        .as_i64()
        .unwrap();
    wait_for("the env job to finish", Duration::from_secs(30), || {
        c.admin(&mut Seen::default(), "GET", &format!("/v1/jobs/{id}"), None)
            .json()["state"]
            == "succeeded"
    });
    let out = c.admin(&mut seen, "GET", &format!("/v1/jobs/{id}/output"), None);
    assert!(out.body.contains("REEVE_JOB_TOKEN"), "{}", out.body);
    d.stop();
    let hits = hits(&seen, &all_secrets());
    assert!(hits.is_empty(), "a job saw: {hits:?}");
}
