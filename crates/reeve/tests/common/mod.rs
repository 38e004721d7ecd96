//! Helpers shared by the black-box tests: start `reeve serve`, call its API,
//! wait for conditions.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod browser;
pub mod pg;

pub const BIN: &str = env!("CARGO_BIN_EXE_reeve");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Daemon {
    pub child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `reeve serve` on `db` with `config` (TOML text) and waits for it.
    pub fn start(dir: &Path, name: &str, db: &Path, config: &str) -> Daemon {
        Self::start_with(
            dir,
            name,
            &format!("sqlite://{}", db.display()),
            config,
            &[],
        )
    }

    /// Starts `reeve serve` on the database `db_url`, with extra environment
    /// and an optional wrapper program (`faketime`).
    pub fn start_with(
        dir: &Path,
        name: &str,
        db_url: &str,
        config: &str,
        wrapper: &[&str],
    ) -> Daemon {
        let port = free_port();
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .args(["serve", "--config"])
            .arg(&config_path)
            .arg("--db")
            .arg(db_url)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("REEVE_LOG", "info")
            .env_remove("REEVE_ADMIN_TOKEN")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn reeve serve");
        let d = Daemon {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while get(&format!("{}/healthz", d.url)).is_none() {
            assert!(Instant::now() < deadline, "daemon did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// Spawns `reeve serve` on `db_url` with extra environment, without
    /// waiting for it (see [`Daemon::wait_up`]); its stdout goes to
    /// `{name}.log`, its stderr to `{name}.err`.
    pub fn spawn(
        dir: &Path,
        name: &str,
        db_url: &str,
        config: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let port = free_port();
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config_path)
            .arg("--db")
            .arg(db_url)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("REEVE_LOG", "info")
            .env_remove("REEVE_ADMIN_TOKEN")
            .env_remove("REEVE_FAULTS")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
            .spawn()
            .expect("spawn reeve serve");
        Daemon {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Waits until the daemon answers `/healthz` (true) or its process
    /// ended (false).
    pub fn wait_up(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if get(&format!("{}/healthz", self.url)).is_some() {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            assert!(Instant::now() < deadline, "daemon did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    pub fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }

    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        request(method, &format!("{}{path}", self.url), body)
    }

    pub fn enqueue(&self, body: Value) -> i64 {
        let (status, job) = self.api("POST", "/v1/jobs", Some(body));
        assert!(
            status == 201 || status == 200,
            "enqueue answered {status}: {job}"
        );
        job["id"].as_i64().unwrap()
    }

    pub fn job(&self, id: i64) -> Value {
        self.api("GET", &format!("/v1/jobs/{id}"), None).1
    }

    pub fn events(&self, id: i64) -> Vec<Value> {
        self.api("GET", &format!("/v1/jobs/{id}/events"), None).1["events"]
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn request(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    request_as(method, url, None, body)
}

/// A request with an optional bearer token; the answer as JSON (or its text
/// as a JSON string).
pub fn request_as(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut req = client.request(method.parse().unwrap(), url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    })
}

pub fn get(url: &str) -> Option<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = reqwest::Client::new().get(url).send().await.ok()?;
        resp.json().await.ok()
    })
}

pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Runs the `reeve` CLI against `url`: (exit code, stdout, stderr).
/// The CLI with a bearer token (`REEVE_TOKEN`).
pub fn cli_with_token(url: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("REEVE_URL", url)
        .env("REEVE_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("REEVE_URL", url)
        .env_remove("REEVE_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A daemon for the remote-worker tests: the admin and worker tokens by
/// file, a worker token for kind `agent`, a 3 s heartbeat timeout, quick
/// retries, and no ad-hoc commands run by the daemon itself.
pub fn fleet_daemon(dir: &Path, admin: &str, worker: &str) -> Daemon {
    std::fs::write(dir.join("admin"), admin).unwrap();
    std::fs::write(dir.join("worker"), worker).unwrap();
    let config = format!(
        "[server]\nadmin_token_file = \"{0}/admin\"\n\
         [[worker_tokens]]\nname = \"agents\"\ntoken_file = \"{0}/worker\"\nkinds = [\"agent\"]\n\
         [defaults]\nheartbeat_timeout = \"3s\"\n\
         [retry]\nbase = \"200ms\"\nmax = \"1s\"\njitter = 0.0\n\
         [executor]\ncommands = false\n",
        dir.display()
    );
    Daemon::start(dir, "d", &dir.join("reeve.db"), &config)
}

/// A child process (a `reeve worker`, say), killed if the test ends while
/// it runs.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
