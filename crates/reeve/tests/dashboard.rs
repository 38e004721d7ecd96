//! The dashboard end to end: a real `reeve serve` with an admin token on
//! loopback, driven by headless Chromium (tests/common/browser.rs). Signs in,
//! loads every page (screenshots in `target/dashboard-screenshots/`), pauses
//! and resumes a schedule, runs one now into a full cap and sees the slot
//! ETA, forces it and finds the audit row, and cancels a running job and
//! watches its state change without a reload. Without Chromium it says so
//! and skips (except under CI with Chromium present). The auth checks at the
//! end need no browser and always run.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{BIN, Daemon, wait_until};
use serde_json::{Value, json};

const TOKEN: &str = "dash-t0ken-never-shown";

fn start(dir: &std::path::Path) -> Daemon {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let config = format!(
        "[server]\nadmin_token_file = \"{}\"\n[executor]\nslots = 4\nkill_grace = \"1s\"\n[limits]\nglobal = 1\n\
         [kinds.slow]\ncommand = [\"sleep\", \"60\"]\n[kinds.quick]\ncommand = [\"sh\", \"-c\", \"echo checking; sleep 0.2\"]\n\
         [kinds.fail]\ncommand = [\"sh\", \"-c\", \"echo boom >&2; exit 3\"]\n",
        token.display()
    );
    Daemon::start(dir, "dash", &dir.join("reeve.db"), &config)
}

/// The CLI with the admin token.
fn cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("REEVE_URL", url)
        .env("REEVE_TOKEN", TOKEN)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A request with optional bearer token and cookie; (status, body text).
fn http(
    method: &str,
    url: &str,
    bearer: bool,
    cookie: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut req = client.request(method.parse().unwrap(), url);
        if bearer {
            req = req.header("Authorization", format!("Bearer {TOKEN}"));
        }
        if let Some(c) = cookie {
            req = req.header("Cookie", c);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    })
}

fn api(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, text) = http(method, &format!("{}{path}", d.url), true, None, body);
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {text}"
    );
    serde_json::from_str(&text).unwrap()
}

fn setup_schedules(d: &Daemon, dir: &std::path::Path) {
    let file = dir.join("s.toml");
    std::fs::write(
        &file,
        "[[schedule]]\nname = \"watch\"\ndescription = \"a watcher\"\ncron = \"*/5 * * * *\"\n[schedule.job]\nkind = \"quick\"\n\n\
         [[schedule]]\nname = \"nightly\"\ncron = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\n[schedule.job]\nkind = \"quick\"\nmax_turns = 20\n",
    )
    .unwrap();
    let (code, _, err) = cli(&d.url, &["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn pages_refuse_without_the_token_and_never_show_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    setup_schedules(&d, dir.path());
    for page in [
        "/",
        "/jobs",
        "/schedules",
        "/timeline",
        "/charts",
        "/workers",
        "/audit",
    ] {
        let (status, body) = http("GET", &format!("{}{page}", d.url), false, None, None);
        assert_eq!(status, 401, "{page} without a token");
        assert!(
            body.contains("Admin token") && !body.contains(TOKEN),
            "{page}: {body}"
        );
        let (status, body) = http(
            "GET",
            &format!("{}{page}", d.url),
            false,
            Some("reeve_session=wrong"),
            None,
        );
        assert_eq!(status, 401, "{page} with a wrong cookie");
        assert!(!body.contains(TOKEN));
        let cookie = format!("reeve_session={TOKEN}");
        let (status, body) = http(
            "GET",
            &format!("{}{page}", d.url),
            false,
            Some(&cookie),
            None,
        );
        assert_eq!(status, 200, "{page} with the session cookie: {body}");
        assert!(!body.contains(TOKEN), "{page} shows the token");
    }
    let (status, body) = http("GET", &format!("{}/v1/status", d.url), false, None, None);
    assert_eq!(status, 401);
    assert!(
        body.contains("unauthorized"),
        "the API still answers JSON: {body}"
    );
    // A cookie never authorizes a change from another origin.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/v1/schedules/watch/pause", d.url))
            .header("Cookie", format!("reeve_session={TOKEN}"))
            .header("Origin", "http://evil.example")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 401, "cross-origin write with a cookie");
    assert_eq!(
        api(&d, "GET", "/v1/schedules/watch", None)["schedule"]["status"],
        "active"
    );
    // A wrong login shows the form again and sets no cookie.
    let (status, body) = http("POST", &format!("{}/login", d.url), false, None, None);
    assert_eq!(status, 401, "{body}");
    d.stop();
}

#[test]
fn an_operator_drives_the_dashboard_in_a_real_browser() {
    let Some(b) = common::browser::start_or_skip() else {
        return;
    };
    let shots = common::browser::screenshot_dir();
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    setup_schedules(&d, dir.path());
    let long = Duration::from_secs(20);

    // Sign in through the form.
    b.goto(&format!("{}/", d.url)).unwrap();
    b.wait_for("input[name=token]", long).unwrap();
    b.type_into("input[name=token]", TOKEN).unwrap();
    b.click("button[type=submit]").unwrap();
    b.wait_for_text("main h1", "Overview", long).unwrap();

    // Some history: a few finished firings, a failure, a pressure signal.
    for _ in 0..3 {
        let run = api(&d, "POST", "/v1/schedules/nightly/run", Some(json!({})));
        let id = run["job"]["id"].as_i64().unwrap();
        wait_until("the firing finishes", long, || {
            api(&d, "GET", &format!("/v1/jobs/{id}"), None)["state"] == "succeeded"
        });
    }
    let failing = api(
        &d,
        "POST",
        "/v1/jobs",
        Some(json!({"kind": "fail", "max_attempts": 1})),
    );
    let failing = failing["id"].as_i64().unwrap();
    wait_until("the failing job fails", long, || {
        api(&d, "GET", &format!("/v1/jobs/{failing}"), None)["state"] == "failed"
    });
    api(
        &d,
        "POST",
        "/v1/pressure",
        Some(json!({"source": "my-ide", "ttl_seconds": 600})),
    );

    // A slow job takes the only slot (global cap 1).
    let slow = api(&d, "POST", "/v1/jobs", Some(json!({"kind": "slow"})));
    let slow_id = slow["id"].as_i64().unwrap();
    wait_until("the slow job runs", long, || {
        api(&d, "GET", &format!("/v1/jobs/{slow_id}"), None)["state"] == "running"
    });

    // Every page loads, and is photographed.
    for (path, heading, file) in [
        ("/", "Overview", "overview"),
        ("/jobs", "Jobs", "jobs"),
        (&format!("/jobs/{slow_id}") as &str, "Job #", "job"),
        ("/schedules", "Schedules", "schedules"),
        ("/schedules/nightly", "Schedule nightly", "schedule"),
        ("/timeline", "Timeline", "timeline"),
        ("/charts", "Metrics", "metrics"),
        ("/workers", "Workers", "workers"),
        ("/audit", "Audit", "audit"),
    ] {
        b.goto(&format!("{}{path}", d.url)).unwrap();
        b.wait_for_text("main h1", heading, long)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        b.screenshot(&shots.join(format!("{file}.png"))).unwrap();
    }
    b.goto(&format!("{}/", d.url)).unwrap();
    b.wait_for_text("#running", &format!("#{slow_id}"), long)
        .unwrap();
    b.wait_for_text("#caps", "Global cap: 1 / 1", long).unwrap();
    b.set_window_size(420, 900).unwrap();
    b.screenshot(&shots.join("overview-narrow.png")).unwrap();
    b.set_window_size(1280, 900).unwrap();

    // Pause and resume a schedule.
    b.goto(&format!("{}/schedules", d.url)).unwrap();
    b.click("button[data-post=\"/v1/schedules/watch/pause\"]")
        .unwrap();
    b.wait_for("button[data-post=\"/v1/schedules/watch/resume\"]", long)
        .unwrap();
    assert_eq!(
        api(&d, "GET", "/v1/schedules/watch", None)["schedule"]["status"],
        "paused"
    );
    b.click("button[data-post=\"/v1/schedules/watch/resume\"]")
        .unwrap();
    b.wait_for("button[data-post=\"/v1/schedules/watch/pause\"]", long)
        .unwrap();
    assert_eq!(
        api(&d, "GET", "/v1/schedules/watch", None)["schedule"]["status"],
        "active"
    );

    // Run now into the full cap: the 429 shows the slot ETA and offers force.
    b.click("button[data-post=\"/v1/schedules/watch/run\"]")
        .unwrap();
    b.wait_for_text("#flash", "a slot is expected in about", long)
        .unwrap();
    b.screenshot(&shots.join("run-now-full.png")).unwrap();
    let eta = b.text("#eta").unwrap();
    assert!(eta.contains("global cap is full: running 1 of 1"), "{eta}");
    b.click("#force").unwrap();
    let question = b.alert_text().unwrap();
    assert!(question.contains("audit"), "{question}");
    b.accept_alert().unwrap();
    b.wait_for_text("#flash", "done", long).unwrap();
    let audit = api(&d, "GET", "/v1/audit", None);
    let forced = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "force_run")
        .expect("a force_run audit record")
        .clone();
    assert_eq!(forced["target"], "schedule:watch");
    b.goto(&format!("{}/audit", d.url)).unwrap();
    b.wait_for_text("main", "force_run", long).unwrap();
    b.wait_for_text("main", &format!("#{}", forced["detail"]["job_id"]), long)
        .unwrap();

    // Cancel the running job and watch its state change, no reload.
    b.goto(&format!("{}/jobs/{slow_id}", d.url)).unwrap();
    b.wait_for_text("#job-state", "running", long).unwrap();
    b.execute("window.__marker = 'same page'; return true", vec![])
        .unwrap();
    b.click("button[data-post$=\"/cancel\"]").unwrap();
    b.accept_alert().unwrap();
    b.wait_for_text("#job-state", "cancelled", long).unwrap();
    let same = b.execute("return window.__marker || null", vec![]).unwrap();
    assert_eq!(
        same,
        json!("same page"),
        "the state changed without a reload"
    );
    b.screenshot(&shots.join("job-cancelled.png")).unwrap();
    let page = b
        .execute("return document.documentElement.outerHTML", vec![])
        .unwrap();
    assert!(
        !page.as_str().unwrap_or("").contains(TOKEN),
        "no page shows the token"
    );
    drop(b);
    d.stop();
}

/// `reeve bench --dashboard` seeds a store and renders every page; each
/// answers 200 (the timings themselves are for people, not asserted).
#[test]
fn the_dashboard_benchmark_renders_every_page() {
    let out = Command::new(BIN)
        .args(["bench", "--dashboard", "--jobs", "2000", "--json"])
        .env_remove("REEVE_DB")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pages = report["pages"].as_array().unwrap();
    assert!(pages.len() >= 7);
    for p in pages {
        assert_eq!(p["status"], 200, "{p}");
        assert!(p["bytes"].as_u64().unwrap() > 500, "{p}");
        assert!(p["p50_ms"].as_f64().unwrap() > 0.0);
    }
}
