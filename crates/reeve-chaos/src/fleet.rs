//! The fleet under test: a throwaway PostgreSQL, daemons, `reeve worker`s
//! (each in its own network namespace when the harness may create them), and
//! the means to break and heal each of them.
//!
//! **What this module owns.** Every process it starts ([`Proc`]) and every
//! namespace, bridge and veth it creates ([`Network`]). It ends only what it
//! started, by PID, and removes what it created on drop, so a run leaves
//! nothing behind even when it fails.
//!
//! **Invariants.** A process's log is appended to across restarts, so the
//! history keeps every incarnation. A paused process is always continued
//! before it is killed or the fleet is dropped.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A process of the fleet, restartable with the same command.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Wrapper argv (e.g. `ip netns exec NS`) in front of the program.
    prefix: Vec<String>,
    pub log: PathBuf,
    child: Option<Child>,
    pub paused: bool,
    /// How many times it was started.
    pub incarnations: u32,
}

impl Proc {
    pub fn new(
        name: &str,
        program: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
        prefix: Vec<String>,
        log: PathBuf,
    ) -> Proc {
        Proc {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            env,
            prefix,
            log,
            child: None,
            paused: false,
            incarnations: 0,
        }
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        // Never lose the handle of a live incarnation (it would outlive the run).
        if self.alive() {
            self.resume();
            self.kill9();
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = match self.prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("starting {}", self.name))?,
        );
        self.paused = false;
        self.incarnations += 1;
        Ok(())
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    /// Whether it is running (a stopped process counts as running).
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The exit status of an incarnation that ended by itself (not by
    /// [`Proc::kill9`], which drops its handle), reaped now; `None` while it
    /// runs or once it was killed.
    pub fn exited_by_itself(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        self.paused = false;
        Some(status)
    }

    /// `kill -9`, reaped at once.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    pub fn signal(&mut self, s: Signal) -> bool {
        match self.pid() {
            Some(pid) if self.alive() => kill(pid, s).is_ok(),
            _ => false,
        }
    }

    pub fn pause(&mut self) -> bool {
        let ok = self.signal(Signal::SIGSTOP);
        self.paused = ok;
        ok
    }

    pub fn resume(&mut self) {
        if self.paused {
            self.signal(Signal::SIGCONT);
            self.paused = false;
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.resume();
        if self.signal(Signal::SIGTERM) {
            let deadline = Instant::now() + grace;
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill9();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.resume();
        self.kill9();
    }
}

/// Runs a command to completion; an error names it and its stderr.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The worker hosts' network: one namespace per worker, each linked by a
/// veth pair to a bridge on the host that carries the daemons' address.
#[derive(Debug)]
pub struct Network {
    pub bridge_ip: String,
    namespaces: Vec<String>,
    created_bridge: bool,
}

/// A tag of this run (from its process id) in every interface and
/// namespace name and in the subnet, so two runs on one machine never touch
/// each other's network.
fn run_tag() -> u32 {
    std::process::id() % 10_000
}

fn bridge() -> String {
    format!("rc{}br", run_tag())
}

fn subnet() -> String {
    format!("10.213.{}", 20 + run_tag() % 200)
}

impl Network {
    /// The namespace of worker `i`.
    pub fn namespace(i: usize) -> String {
        format!("rc{}w{i}", run_tag())
    }

    fn host_veth(i: usize) -> String {
        format!("rc{}h{i}", run_tag())
    }

    fn ns_veth(i: usize) -> String {
        format!("rc{}n{i}", run_tag())
    }

    /// Whether namespaces can be made here (root and `ip`).
    pub fn available() -> bool {
        nix::unistd::geteuid().is_root()
            && Command::new("ip")
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    /// Creates the bridge and `workers` namespaces (removing leftovers of an
    /// earlier run first).
    pub fn create(workers: usize) -> anyhow::Result<Network> {
        Self::remove_leftovers(workers);
        let mut net = Network {
            bridge_ip: format!("{}.1", subnet()),
            namespaces: Vec::new(),
            created_bridge: false,
        };
        let br = bridge();
        let br = br.as_str();
        sh("ip", &["link", "add", br, "type", "bridge"])?;
        net.created_bridge = true;
        sh(
            "ip",
            &["addr", "add", &format!("{}.1/24", subnet()), "dev", br],
        )?;
        sh("ip", &["link", "set", br, "up"])?;
        for i in 0..workers {
            let ns = Self::namespace(i);
            sh("ip", &["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            let (h, n) = (Self::host_veth(i), Self::ns_veth(i));
            sh(
                "ip",
                &["link", "add", &h, "type", "veth", "peer", "name", &n],
            )?;
            sh("ip", &["link", "set", &n, "netns", &ns])?;
            sh("ip", &["link", "set", &h, "master", br, "up"])?;
            let addr = format!("{}.{}/24", subnet(), 10 + i);
            sh(
                "ip",
                &["netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", &n],
            )?;
            sh("ip", &["netns", "exec", &ns, "ip", "link", "set", &n, "up"])?;
            sh(
                "ip",
                &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"],
            )?;
        }
        Ok(net)
    }

    fn remove_leftovers(workers: usize) {
        for i in 0..workers.max(8) {
            let _ = sh("ip", &["netns", "del", &Self::namespace(i)]);
            let _ = sh("ip", &["link", "del", &Self::host_veth(i)]);
        }
        let _ = sh("ip", &["link", "del", &bridge()]);
    }

    /// The wrapper that runs a program in worker `i`'s namespace.
    pub fn prefix(i: usize) -> Vec<String> {
        ["ip", "netns", "exec"]
            .iter()
            .map(|s| s.to_string())
            .chain([Self::namespace(i)])
            .collect()
    }

    /// Cuts (or restores) worker `i`'s link.
    pub fn set_link(i: usize, up: bool) -> anyhow::Result<()> {
        sh(
            "ip",
            &[
                "link",
                "set",
                &Self::host_veth(i),
                if up { "up" } else { "down" },
            ],
        )
    }

    /// Packet loss on worker `i`'s link (`None` removes it): `tc netem` where
    /// the kernel has it, else a random-drop rule of iptables' `statistic`
    /// match in the worker's namespace (both directions).
    pub fn set_loss(i: usize, percent: Option<u32>) -> anyhow::Result<()> {
        let ns = Self::namespace(i);
        let dev = Self::ns_veth(i);
        let in_ns = |args: &[&str]| -> anyhow::Result<()> {
            let mut all = vec!["netns", "exec", ns.as_str()];
            all.extend_from_slice(args);
            sh("ip", &all)
        };
        match percent {
            Some(p) => {
                let loss = format!("{p}%");
                if in_ns(&[
                    "tc", "qdisc", "replace", "dev", &dev, "root", "netem", "loss", &loss,
                ])
                .is_ok()
                {
                    return Ok(());
                }
                let probability = format!("{:.2}", f64::from(p) / 100.0);
                for chain in ["INPUT", "OUTPUT"] {
                    in_ns(&[
                        "iptables",
                        "-A",
                        chain,
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &probability,
                        "-j",
                        "DROP",
                    ])
                    .context("packet loss needs tc netem or iptables with the statistic match")?;
                }
                Ok(())
            }
            None => {
                let _ = in_ns(&["tc", "qdisc", "del", "dev", &dev, "root"]);
                let _ = in_ns(&["iptables", "-F", "INPUT"]);
                let _ = in_ns(&["iptables", "-F", "OUTPUT"]);
                Ok(())
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = sh("ip", &["netns", "del", ns]);
        }
        for i in 0..self.namespaces.len() {
            let _ = sh("ip", &["link", "del", &Self::host_veth(i)]);
        }
        if self.created_bridge {
            let _ = sh("ip", &["link", "del", &bridge()]);
        }
    }
}

/// A throwaway PostgreSQL server (`scripts/pg-throwaway.sh`), stopped and
/// removed on drop.
#[derive(Debug)]
pub struct Database {
    script: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
    pub down: bool,
}

impl Database {
    pub fn start(script: &Path, dir: &Path, port: u16) -> anyhow::Result<Database> {
        let db = Database {
            script: script.to_path_buf(),
            dir: dir.to_path_buf(),
            port,
            down: false,
        };
        db.run(&["start", &dir.display().to_string(), &port.to_string()])?;
        Ok(db)
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let script = self.script.display().to_string();
        let mut all = vec![script.as_str()];
        all.extend_from_slice(args);
        sh("bash", &all)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (`immediate`: as a crash would, with
    /// recovery at the next start), so that no client can hold it up. It
    /// counts as down even if the stop reports an error.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.down = true;
        self.run(&["stop", &self.dir.display().to_string(), "immediate"])
    }

    /// Starts it again, retrying for up to 20 s: after an immediate stop the
    /// old postmaster may still be ending (seen as "another server might be
    /// running"), and a database left down would stall the whole fleet.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..20 {
            match self.run(&[
                "start",
                &self.dir.display().to_string(),
                &self.port.to_string(),
            ]) {
                Ok(()) => {
                    self.down = false;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        Err(last.expect("twenty attempts"))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = self.run(&["stop", &self.dir.display().to_string()]);
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
