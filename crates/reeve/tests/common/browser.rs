//! A small blocking WebDriver (W3C) client for end-to-end dashboard tests:
//! a headless Debian Chromium driven through chromedriver, both on loopback.
//!
//! Every call is blocking and bounded in time; errors are `String`s that say
//! which command failed and why. chromedriver runs in its own process group:
//! on drop the session is deleted (chromedriver then quits Chromium), and the
//! group of the chromedriver child we spawned is killed for whatever is left.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The key of an element reference in W3C WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Upper bound of one WebDriver command over HTTP (page loads are bounded at
/// `PAGE_LOAD` by chromedriver itself, which answers before this).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const PAGE_LOAD: Duration = Duration::from_secs(30);
const SCRIPT: Duration = Duration::from_secs(10);
/// How long alert commands wait for a dialog to open.
const ALERT_WAIT: Duration = Duration::from_secs(5);

pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    driver: Child,
    driver_log: PathBuf,
    /// Holds Chromium's --user-data-dir and chromedriver's log.
    _dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session. Err (with the
    /// reason) when the binaries are absent or do not come up.
    pub fn start() -> Result<Browser, String> {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(bin).exists() {
                return Err(format!(
                    "{bin} not found (install the Debian packages chromium and chromium-driver)"
                ));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("reeve-browser-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let profile = dir.path().join("profile");
        std::fs::create_dir(&profile).map_err(|e| format!("create {profile:?}: {e}"))?;
        let driver_log = dir.path().join("chromedriver.log");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let client = reqwest::Client::builder()
            .timeout(COMMAND_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| format!("http client: {e}"))?;

        // The port is picked then released, so another process may take it
        // first: retry a couple of times on an early exit.
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = super::free_port();
            let log = std::fs::File::create(&driver_log)
                .map_err(|e| format!("create {driver_log:?}: {e}"))?;
            let mut driver = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(
                    log.try_clone()
                        .map_err(|e| format!("chromedriver log: {e}"))?,
                )
                .stderr(log)
                .process_group(0)
                .spawn()
                .map_err(|e| format!("spawn {CHROMEDRIVER}: {e}"))?;
            let base = format!("http://127.0.0.1:{port}");
            match wait_ready(&rt, &client, &base, &mut driver) {
                Ok(()) => {
                    let mut browser = Browser {
                        rt,
                        client,
                        session: String::new(),
                        driver,
                        driver_log,
                        _dir: dir,
                    };
                    // On error, Drop kills chromedriver.
                    let id = browser.new_session(&base, &profile)?;
                    browser.session = format!("{base}/session/{id}");
                    return Ok(browser);
                }
                Err((e, exited)) => {
                    if !exited {
                        kill_group(&mut driver);
                    }
                    last_err = format!("{e}; chromedriver log: {}", read_log(&driver_log));
                }
            }
        }
        Err(last_err)
    }

    fn new_session(&self, base: &str, profile: &Path) -> Result<String, String> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": {
                "implicit": 0,
                "pageLoad": PAGE_LOAD.as_millis() as u64,
                "script": SCRIPT.as_millis() as u64,
            },
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-quic",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let value = self
            .call("POST", &format!("{base}/session"), Some(caps))
            .map_err(|e| format!("new session: {e}; chromedriver log: {}", self.log()))?;
        value["sessionId"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("new session: no sessionId in {value}"))
    }

    /// The tail of chromedriver's log, for error messages.
    pub fn log(&self) -> String {
        read_log(&self.driver_log)
    }

    /// One WebDriver command: `url` is absolute. Returns the answer's `value`.
    fn call(&self, method: &str, url: &str, body: Option<Value>) -> Result<Value, String> {
        let what = format!(
            "{method} {}",
            url.split_once("/session").map_or(url, |p| p.1)
        );
        let method: reqwest::Method = method.parse().map_err(|e| format!("{what}: {e}"))?;
        let (status, text) = self.rt.block_on(async {
            let mut req = self.client.request(method.clone(), url);
            // chromedriver wants a JSON body on every POST, even `{}`.
            if method == reqwest::Method::POST {
                req = req.json(&body.unwrap_or_else(|| json!({})));
            }
            let resp = req.send().await.map_err(|e| format!("{what}: {e}"))?;
            let status = resp.status().as_u16();
            let text = resp.text().await.map_err(|e| format!("{what}: {e}"))?;
            Ok::<_, String>((status, text))
        })?;
        let answer: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{what}: answered {status} with non-JSON ({e}): {text}"))?;
        let value = answer.get("value").cloned().unwrap_or(Value::Null);
        if status >= 400 || value.get("error").is_some_and(|e| e.is_string()) {
            let error = value["error"].as_str().unwrap_or("unknown error");
            let message = value["message"].as_str().unwrap_or_default();
            let message = message.lines().next().unwrap_or_default();
            return Err(format!("{what}: {status} {error}: {message}"));
        }
        Ok(value)
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.call(method, &format!("{}{path}", self.session), body)
    }

    /// Runs `f` on the first element matching `css`, again (up to 3 tries)
    /// when the element went stale in between (a re-rendering page).
    fn on_element<T>(
        &self,
        css: &str,
        mut f: impl FnMut(&str) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut tries = 0;
        loop {
            let id = self.find(css)?;
            match f(&id) {
                Err(e) if e.contains("stale element reference") && tries < 2 => tries += 1,
                r => return r.map_err(|e| format!("{css:?}: {e}")),
            }
        }
    }

    /// Navigates and waits for the page load (bounded by the session's
    /// page-load timeout).
    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .map(drop)
            .map_err(|e| format!("goto {url}: {e}"))
    }

    pub fn url(&self) -> Result<String, String> {
        string(self.cmd("GET", "/url", None)?)
    }

    pub fn title(&self) -> Result<String, String> {
        string(self.cmd("GET", "/title", None)?)
    }

    /// The element id of the first match of `css` (no waiting).
    pub fn find(&self, css: &str) -> Result<String, String> {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        element_id(&v).ok_or_else(|| format!("find {css:?}: no element reference in {v}"))
    }

    /// The element ids of every match of `css`, in document order (may be
    /// empty).
    pub fn find_all(&self, css: &str) -> Result<Vec<String>, String> {
        let v = self.cmd(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        v.as_array()
            .ok_or_else(|| format!("find_all {css:?}: not an array: {v}"))?
            .iter()
            .map(|e| element_id(e).ok_or_else(|| format!("find_all {css:?}: bad element {e}")))
            .collect()
    }

    /// The rendered text of the first match of `css`.
    pub fn text(&self, css: &str) -> Result<String, String> {
        self.on_element(css, |id| {
            string(self.cmd("GET", &format!("/element/{id}/text"), None)?)
        })
    }

    pub fn click(&self, css: &str) -> Result<(), String> {
        self.on_element(css, |id| {
            self.cmd("POST", &format!("/element/{id}/click"), None)
                .map(drop)
        })
    }

    /// Types `text` into the first match of `css` (appends to its value).
    pub fn type_into(&self, css: &str, text: &str) -> Result<(), String> {
        self.on_element(css, |id| {
            self.cmd(
                "POST",
                &format!("/element/{id}/value"),
                Some(json!({ "text": text })),
            )
            .map(drop)
        })
    }

    /// The HTML attribute `name` of the first match of `css` (as written in
    /// the markup, not the live DOM property: see `property`); None when
    /// absent.
    pub fn attribute(&self, css: &str, name: &str) -> Result<Option<String>, String> {
        self.on_element(css, |id| {
            optional_string(self.cmd("GET", &format!("/element/{id}/attribute/{name}"), None)?)
        })
    }

    /// The live DOM property `name` (e.g. an input's current `value`) of the
    /// first match of `css`, as a string; None when null or undefined.
    pub fn property(&self, css: &str, name: &str) -> Result<Option<String>, String> {
        self.on_element(css, |id| {
            optional_string(self.cmd("GET", &format!("/element/{id}/property/{name}"), None)?)
        })
    }

    /// Runs `js` as a synchronous script (`return …` gives the value);
    /// `arguments[i]` are `args`.
    pub fn execute(&self, js: &str, args: Vec<Value>) -> Result<Value, String> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": args})),
        )
        .map_err(|e| format!("execute {js:?}: {e}"))
    }

    /// Alert commands wait up to ALERT_WAIT for a dialog to open.
    fn alert(&self, method: &str, path: &str) -> Result<Value, String> {
        let deadline = Instant::now() + ALERT_WAIT;
        loop {
            match self.cmd(method, path, None) {
                Err(e) if e.contains("no such alert") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                r => return r,
            }
        }
    }

    pub fn alert_text(&self) -> Result<String, String> {
        string(self.alert("GET", "/alert/text")?)
    }

    pub fn accept_alert(&self) -> Result<(), String> {
        self.alert("POST", "/alert/accept").map(drop)
    }

    pub fn dismiss_alert(&self) -> Result<(), String> {
        self.alert("POST", "/alert/dismiss").map(drop)
    }

    /// Waits until the text of the first match of `css` contains `needle`,
    /// polling every 100 ms.
    pub fn wait_for_text(&self, css: &str, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.text(css) {
                Ok(t) if t.contains(needle) => return Ok(()),
                Ok(t) => format!("text was {t:?}"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {css:?} to contain {needle:?}; {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `css` matches an element; returns its id.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.find(css) {
                Ok(id) => return Ok(id),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "timed out after {timeout:?} waiting for {css:?}; {e}"
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Saves a PNG of the viewport to `path` (parent directories created).
    pub fn screenshot(&self, path: &Path) -> Result<(), String> {
        let b64 = string(self.cmd("GET", "/screenshot", None)?)?;
        let png = base64_decode(&b64).map_err(|e| format!("screenshot: {e}"))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("create {parent:?}: {e}"))?;
        }
        std::fs::write(path, png).map_err(|e| format!("write {path:?}: {e}"))
    }

    pub fn set_window_size(&self, width: u32, height: u32) -> Result<(), String> {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .map(drop)
    }

    /// Sets a cookie for the current page's origin (navigate there first).
    pub fn add_cookie(&self, name: &str, value: &str) -> Result<(), String> {
        self.cmd(
            "POST",
            "/cookie",
            Some(json!({"cookie": {"name": name, "value": value}})),
        )
        .map(drop)
    }

    pub fn delete_cookies(&self) -> Result<(), String> {
        self.cmd("DELETE", "/cookie", None).map(drop)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Bounded: chromedriver quits Chromium, then answers.
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .no_proxy()
                .build();
            if let Ok(client) = client {
                let session = self.session.clone();
                let _ = self
                    .rt
                    .block_on(async { client.delete(&session).send().await });
            }
        }
        kill_group(&mut self.driver);
    }
}

/// Polls chromedriver's `GET /status` until it says ready (at most 20 s).
fn wait_ready(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    base: &str,
    driver: &mut Child,
) -> Result<(), (String, bool)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // An early exit (e.g. the port was taken): the child is reaped here.
        if let Ok(Some(status)) = driver.try_wait() {
            return Err((format!("chromedriver exited early ({status})"), true));
        }
        let ready = rt.block_on(async {
            let resp = client
                .get(format!("{base}/status"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .ok()?;
            let v: Value = resp.json().await.ok()?;
            v["value"]["ready"].as_bool()
        });
        if ready == Some(true) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(("chromedriver did not report ready within 20s".into(), false));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILLs the process group led by our chromedriver child (spawned with
/// its own group: chromedriver and the Chromium it started), then reaps the
/// child. Only for a child not reaped yet, so that its pid, and thereby the
/// group id, is still ours.
fn kill_group(child: &mut Child) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn read_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn string(v: Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(format!("expected a string, got {other}")),
    }
}

fn optional_string(v: Value) -> Result<Option<String>, String> {
    Ok(match v {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

fn element_id(v: &Value) -> Option<String> {
    v.get(ELEMENT_KEY)?.as_str().map(str::to_owned)
}

/// Standard base64 (RFC 4648, `=` padding, whitespace ignored).
pub fn base64_decode(input: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for (i, c) in input.bytes().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return Err(format!("invalid base64 byte {c:#04x} at {i}")),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// A started browser, or `None` (after printing why) when a browser test
/// should skip: Chromium or chromedriver is not installed. Under CI (`CI`
/// set) with Chromium present, a browser that does not start fails the test.
pub fn start_or_skip() -> Option<Browser> {
    match Browser::start() {
        Ok(b) => Some(b),
        Err(e) if std::env::var_os("CI").is_some() && Path::new(CHROMIUM).exists() => {
            panic!("browser did not start (CI set and {CHROMIUM} present): {e}")
        }
        Err(e) => {
            println!("skipping browser test: {e}");
            None
        }
    }
}

/// Where browser tests leave their screenshots (`target/dashboard-screenshots`).
pub fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}
