//! `reeve.toml`: read in two stages. [`RawConfig`] mirrors the file exactly
//! (unknown keys are errors); [`Config::load`] applies `REEVE_*` environment
//! overrides and command-line flags, validates every value, and fails with a
//! message naming the key. Nothing invalid is ever replaced by a default.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use reeve_core::RetryPolicy;
use reeve_core::time::human_duration;
use reeve_engine::process::CommandTemplate;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7433";
pub const DEFAULT_DB: &str = "sqlite://reeve.db";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub executor: RawExecutor,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub queues: BTreeMap<String, RawQueue>,
    #[serde(default)]
    pub kinds: BTreeMap<String, RawKind>,
    #[serde(default)]
    pub postgres: crate::database::RawPostgres,
    #[serde(default)]
    pub schedules: RawSchedules,
    /// Tokens for remote workers, each by reference (`token_env` or
    /// `token_file`), with the kinds and queues it may claim.
    #[serde(default)]
    pub worker_tokens: Vec<RawWorkerToken>,
    #[serde(default)]
    pub supervision: RawSupervision,
    /// Webhooks (`[[webhooks]]`), each with its secret by reference.
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
}

/// `[supervision]`: stall detection and escalation (SPEC §10).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSupervision {
    /// `false` turns stall detection off (default on).
    pub enabled: Option<bool>,
    #[serde(default, with = "human_duration::option")]
    pub stall_after: Option<Duration>,
    #[serde(default, with = "human_duration::option")]
    pub escalate_after: Option<Duration>,
}

/// One `[[webhooks]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// Names the webhook in the outbox and in log lines (default
    /// `webhook-N`, its position from 1).
    pub name: Option<String>,
    pub url: String,
    #[serde(default)]
    pub events: Vec<String>,
    /// The HMAC secret, by reference only: an environment variable…
    pub secret_env: Option<String>,
    /// …or a file.
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkerToken {
    pub name: String,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default)]
    pub queues: Vec<String>,
}

/// `[schedules]`: how firings meet pressure and failure streaks (SPEC §8).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedules {
    #[serde(default, with = "human_duration::option")]
    pub pressure_delay: Option<Duration>,
    #[serde(default, with = "human_duration::option")]
    pub pressure_max_defer: Option<Duration>,
    /// Generic failures in a row that pause a schedule (0 = never).
    pub pause_after_failures: Option<u32>,
    /// Turn-budget breaches in a row that pause a schedule (0 = never).
    pub pause_after_budget_breaches: Option<u32>,
    /// Firing ledger rows older than this are pruned.
    #[serde(default, with = "human_duration::option")]
    pub ledger_retention: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub db: Option<String>,
    /// Name of the environment variable holding the admin token.
    pub admin_token_env: Option<String>,
    /// File holding the admin token.
    pub admin_token_file: Option<PathBuf>,
    pub max_request_bytes: Option<usize>,
    pub max_payload_bytes: Option<usize>,
    /// Schedule files or directories applied at start (like `reeve apply`).
    #[serde(default)]
    pub schedules: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    #[serde(default, with = "human_duration::option")]
    pub max_run_duration: Option<Duration>,
    #[serde(default, with = "human_duration::option")]
    pub heartbeat_timeout: Option<Duration>,
    #[serde(default, with = "human_duration::option")]
    pub cancel_grace: Option<Duration>,
    #[serde(default, with = "human_duration::option")]
    pub retention: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExecutor {
    pub slots: Option<u32>,
    /// Whether ad-hoc command jobs (`reeve enqueue -- CMD`) may run here.
    pub commands: Option<bool>,
    #[serde(default, with = "human_duration::option")]
    pub kill_grace: Option<Duration>,
    pub output_limit_bytes: Option<usize>,
    #[serde(default, with = "human_duration::option")]
    pub shutdown_grace: Option<Duration>,
    /// Placement labels of the in-process executor (`key=value`): it claims
    /// pinned jobs whose requirements are all among them.
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub global: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub concurrency: Option<u32>,
    pub paused: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKind {
    /// argv, or with `shell = true` a one-element script.
    pub command: Vec<String>,
    #[serde(default)]
    pub shell: bool,
    pub cwd: Option<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// The validated configuration of a daemon.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: crate::database::DatabaseConfig,
    pub admin_token: Option<String>,
    pub max_request_bytes: usize,
    pub max_payload_bytes: usize,
    pub store: reeve_store::StoreConfig,
    pub retention: Duration,
    pub slots: u32,
    pub commands: bool,
    pub kill_grace: Duration,
    pub output_limit: usize,
    pub shutdown_grace: Duration,
    /// The in-process executor's placement labels (validated).
    pub labels: Vec<String>,
    pub global_limit: Option<u32>,
    pub queues: BTreeMap<String, RawQueueSettings>,
    pub kinds: HashMap<String, CommandTemplate>,
    /// Schedules applied at start, already parsed and validated.
    pub schedules: Vec<reeve_schedule::ScheduleSpec>,
    pub pressure_delay: Duration,
    pub pressure_max_defer: Duration,
    pub ledger_retention: Duration,
    pub worker_tokens: Vec<reeve_api::tokens::WorkerToken>,
    /// Stall detection and escalation; `None` when `[supervision]` turns
    /// it off.
    pub supervision: Option<reeve_store::SuperviseParams>,
    pub webhooks: Vec<crate::webhooks::Webhook>,
    /// The environment variables that hold this daemon's secrets (the
    /// admin and worker tokens, webhook secrets, the database password):
    /// removed from every command's environment, so a job can never print
    /// them into its output.
    pub secret_env: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct RawQueueSettings {
    pub concurrency: Option<u32>,
    pub paused: Option<bool>,
}

/// Where the values come from, besides the file.
#[derive(Debug, Default)]
pub struct Overrides {
    pub db: Option<String>,
    pub listen: Option<String>,
}

impl Config {
    /// Reads `path` (or `./reeve.toml` if it exists, or nothing), then
    /// applies overrides and validates.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> anyhow::Result<Config> {
        let (raw, origin) = match path {
            Some(p) => (read(p)?, p.display().to_string()),
            None if Path::new("reeve.toml").exists() => {
                (read(Path::new("reeve.toml"))?, "reeve.toml".into())
            }
            None => (RawConfig::default(), "defaults".into()),
        };
        Self::from_raw(raw, overrides).with_context(|| format!("invalid configuration ({origin})"))
    }

    pub fn from_raw(raw: RawConfig, overrides: Overrides) -> anyhow::Result<Config> {
        let listen_text = overrides
            .listen
            .or(raw.server.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_text.parse().with_context(|| {
            format!("server.listen: {listen_text:?} is not an address like 127.0.0.1:7433")
        })?;
        let admin_token = admin_token(&raw.server)?;
        let db = overrides
            .db
            .or(raw.server.db.clone())
            .unwrap_or_else(|| DEFAULT_DB.into());
        let database = crate::database::DatabaseConfig::from_parts(&db, &raw.postgres)?;
        if !listen.ip().is_loopback() && admin_token.is_none() {
            bail!(
                "server.listen: {listen} is not a loopback address; set an admin token \
                 (server.admin_token_env, server.admin_token_file or REEVE_ADMIN_TOKEN) before listening on a network"
            );
        }
        let positive = |key: &str, d: Option<Duration>| -> anyhow::Result<Option<Duration>> {
            if d == Some(Duration::ZERO) {
                bail!("{key}: must be greater than zero");
            }
            Ok(d)
        };
        let mut store = reeve_store::StoreConfig::default();
        if let Some(d) = positive("defaults.max_run_duration", raw.defaults.max_run_duration)? {
            store.default_max_run_duration = d;
        }
        if let Some(d) = positive("defaults.heartbeat_timeout", raw.defaults.heartbeat_timeout)? {
            store.default_heartbeat_timeout = d;
        }
        if let Some(d) = raw.defaults.cancel_grace {
            store.cancel_grace = d;
        }
        if let Some(retry) = raw.retry {
            retry.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            store.retry = retry;
        }
        let retention = positive("defaults.retention", raw.defaults.retention)?
            .unwrap_or(reeve_engine::DEFAULT_RETENTION);
        let pressure_delay = positive("schedules.pressure_delay", raw.schedules.pressure_delay)?
            .unwrap_or(reeve_engine::DEFAULT_PRESSURE_DELAY);
        let pressure_max_defer = raw
            .schedules
            .pressure_max_defer
            .unwrap_or(reeve_engine::DEFAULT_PRESSURE_MAX_DEFER);
        let ledger_retention =
            positive("schedules.ledger_retention", raw.schedules.ledger_retention)?
                .unwrap_or(reeve_engine::DEFAULT_RETENTION);
        if let Some(n) = raw.schedules.pause_after_failures {
            store.streaks.generic_pause_at = n;
        }
        if let Some(n) = raw.schedules.pause_after_budget_breaches {
            store.streaks.budget_pause_at = n;
        }
        let slots = raw.executor.slots.unwrap_or(reeve_engine::DEFAULT_SLOTS);
        if slots == 0 || slots > 10_000 {
            bail!("executor.slots: must be between 1 and 10000");
        }
        for (i, l) in raw.executor.labels.iter().enumerate() {
            reeve_core::placement::label(&format!("executor.labels[{i}]"), l)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let max_payload_bytes = raw
            .server
            .max_payload_bytes
            .unwrap_or(reeve_core::job::DEFAULT_MAX_PAYLOAD_BYTES);
        let max_request_bytes = raw.server.max_request_bytes.unwrap_or(8 * 1024 * 1024);
        if max_payload_bytes == 0 || max_request_bytes < max_payload_bytes {
            bail!(
                "server.max_request_bytes: must be at least server.max_payload_bytes ({max_payload_bytes})"
            );
        }
        for name in raw.queues.keys() {
            reeve_core::validate::name(&format!("queues.{name}"), name)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let kinds = command_templates(raw.kinds)?;
        let schedule_files = crate::schedule_files::read(&raw.server.schedules)
            .map_err(|e| anyhow::anyhow!("server.schedules: {e}"))?;
        let schedules = reeve_schedule::load_all(&schedule_files)
            .map_err(|e| anyhow::anyhow!("server.schedules: {e}"))?
            .into_iter()
            .map(|l| l.spec)
            .collect();
        let worker_tokens = worker_tokens(&raw.worker_tokens, admin_token.as_deref())?;
        let supervision = supervision(&raw.supervision)?;
        let webhooks = webhooks(&raw.webhooks)?;
        let secret_env: Vec<String> = ["REEVE_ADMIN_TOKEN", "REEVE_TOKEN"]
            .into_iter()
            .map(str::to_string)
            .chain(raw.server.admin_token_env.iter().cloned())
            .chain(raw.worker_tokens.iter().filter_map(|w| w.token_env.clone()))
            .chain(raw.webhooks.iter().filter_map(|w| w.secret_env.clone()))
            .chain(raw.postgres.password_env.iter().cloned())
            .collect();
        store.webhooks = webhooks
            .iter()
            .fold(reeve_store::Subscriptions::none(), |subs, hook| {
                subs.with(hook.name.clone(), &hook.events)
            });
        Ok(Config {
            secret_env,
            worker_tokens,
            supervision,
            webhooks,
            schedules,
            pressure_delay,
            pressure_max_defer,
            ledger_retention,
            listen,
            database,
            admin_token,
            max_request_bytes,
            max_payload_bytes,
            store,
            retention,
            slots,
            commands: raw.executor.commands.unwrap_or(true),
            kill_grace: raw.executor.kill_grace.unwrap_or(Duration::from_secs(10)),
            output_limit: raw.executor.output_limit_bytes.unwrap_or(1024 * 1024),
            shutdown_grace: raw
                .executor
                .shutdown_grace
                .unwrap_or(Duration::from_secs(30)),
            labels: raw.executor.labels,
            global_limit: raw.limits.global,
            queues: raw
                .queues
                .into_iter()
                .map(|(k, q)| {
                    (
                        k,
                        RawQueueSettings {
                            concurrency: q.concurrency,
                            paused: q.paused,
                        },
                    )
                })
                .collect(),
            kinds,
        })
    }
}

fn read(path: &Path) -> anyhow::Result<RawConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Kinds' command templates from `[kinds.NAME]` tables (the daemon's, and
/// `reeve worker --config`'s).
pub fn command_templates(
    raw: BTreeMap<String, RawKind>,
) -> anyhow::Result<HashMap<String, CommandTemplate>> {
    let mut kinds = HashMap::new();
    for (name, kind) in raw {
        reeve_core::validate::name(&format!("kinds.{name}"), &name)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if kind.command.is_empty() || kind.command[0].is_empty() {
            bail!("kinds.{name}.command: must name a program");
        }
        if kind.shell && kind.command.len() != 1 {
            bail!("kinds.{name}.command: with shell = true, give the script as one string");
        }
        kinds.insert(
            name,
            CommandTemplate {
                command: kind.command,
                shell: kind.shell,
                cwd: kind.cwd,
                env: kind.env,
            },
        );
    }
    Ok(kinds)
}

/// Reads a config file's `[kinds]` only (for `reeve worker --config`).
pub fn kinds_of_file(path: &Path) -> anyhow::Result<HashMap<String, CommandTemplate>> {
    command_templates(read(path)?.kinds)
}

/// The worker tokens, each read from its reference; they need an admin
/// token (auth on), and none may equal it or another.
fn worker_tokens(
    raw: &[RawWorkerToken],
    admin: Option<&str>,
) -> anyhow::Result<Vec<reeve_api::tokens::WorkerToken>> {
    let mut out: Vec<reeve_api::tokens::WorkerToken> = Vec::new();
    for (i, w) in raw.iter().enumerate() {
        let key = format!("worker_tokens[{i}]");
        if admin.is_none() {
            bail!(
                "{key}: worker tokens need an admin token (server.admin_token_env or server.admin_token_file)"
            );
        }
        reeve_core::validate::name(&format!("{key}.name"), &w.name)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let token = match (&w.token_env, &w.token_file) {
            (Some(var), None) => std::env::var(var)
                .with_context(|| format!("{key}.token_env: the variable {var} is not set"))?,
            (None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("{key}.token_file: cannot read {}", file.display()))?,
            _ => bail!("{key}: give exactly one of token_env or token_file"),
        };
        let token = token.trim().to_string();
        if token.len() < 16 {
            bail!("{key}: the token must be at least 16 characters");
        }
        if Some(token.as_str()) == admin || out.iter().any(|o| o.token == token) {
            bail!("{key}: the token must differ from the admin token and from other worker tokens");
        }
        out.push(reeve_api::tokens::WorkerToken {
            name: w.name.clone(),
            token,
            kinds: w.kinds.clone(),
            queues: w.queues.clone(),
        });
    }
    Ok(out)
}

/// `[supervision]`, validated: durations greater than zero, or off.
fn supervision(raw: &RawSupervision) -> anyhow::Result<Option<reeve_store::SuperviseParams>> {
    let mut params = reeve_store::SuperviseParams::default();
    for (key, value, slot) in [
        (
            "supervision.stall_after",
            raw.stall_after,
            &mut params.stall_after,
        ),
        (
            "supervision.escalate_after",
            raw.escalate_after,
            &mut params.escalate_after,
        ),
    ] {
        match value {
            Some(Duration::ZERO) => bail!(
                "{key}: must be greater than zero (to turn supervision off, set supervision.enabled = false)"
            ),
            Some(d) => *slot = d,
            None => {}
        }
    }
    Ok(raw.enabled.unwrap_or(true).then_some(params))
}

/// The `[[webhooks]]`, each with its secret read from its reference.
fn webhooks(raw: &[RawWebhook]) -> anyhow::Result<Vec<crate::webhooks::Webhook>> {
    let mut out: Vec<crate::webhooks::Webhook> = Vec::new();
    for (i, w) in raw.iter().enumerate() {
        let key = format!("webhooks[{i}]");
        let name = w
            .name
            .clone()
            .unwrap_or_else(|| format!("webhook-{}", i + 1));
        reeve_core::validate::name(&format!("{key}.name"), &name)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if out.iter().any(|o| o.name == name) {
            bail!("{key}.name: another webhook is named {name:?}");
        }
        let url =
            crate::webhooks::parse_url(&w.url).map_err(|e| anyhow::anyhow!("{key}.url: {e}"))?;
        if w.events.is_empty() {
            bail!(
                "{key}.events: name at least one of escalation, schedule_auto_paused, job_failed"
            );
        }
        let mut events = Vec::new();
        for event in &w.events {
            let event: reeve_store::WebhookEvent = event
                .parse()
                .map_err(|e: String| anyhow::anyhow!("{key}.events: {e}"))?;
            if !events.contains(&event) {
                events.push(event);
            }
        }
        let secret = match (&w.secret_env, &w.secret_file) {
            (Some(var), None) => std::env::var(var)
                .with_context(|| format!("{key}.secret_env: the variable {var} is not set"))?,
            (None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("{key}.secret_file: cannot read {}", file.display()))?,
            _ => bail!("{key}: give exactly one of secret_env or secret_file"),
        };
        let secret = secret.trim().to_string();
        if secret.len() < 16 {
            bail!("{key}: the secret must be at least 16 characters");
        }
        out.push(crate::webhooks::Webhook {
            name,
            url,
            events,
            secret: crate::webhooks::Secret::new(secret),
        });
    }
    Ok(out)
}

/// The admin token, by reference only: `REEVE_ADMIN_TOKEN`, the variable
/// named by `server.admin_token_env`, or the file `server.admin_token_file`.
fn admin_token(server: &RawServer) -> anyhow::Result<Option<String>> {
    if server.admin_token_env.is_some() && server.admin_token_file.is_some() {
        bail!("server.admin_token_env: give admin_token_env or admin_token_file, not both");
    }
    // Where the token came from names the key in a complaint about it.
    let (token, source) = if let Some(var) = &server.admin_token_env {
        let token = std::env::var(var)
            .with_context(|| format!("server.admin_token_env: the variable {var} is not set"))?;
        (Some(token), "server.admin_token_env")
    } else if let Some(file) = &server.admin_token_file {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("server.admin_token_file: cannot read {}", file.display()))?
            .trim()
            .to_string();
        (Some(token), "server.admin_token_file")
    } else {
        (std::env::var("REEVE_ADMIN_TOKEN").ok(), "REEVE_ADMIN_TOKEN")
    };
    match token {
        Some(t) if t.len() < 16 => {
            bail!("{source}: the admin token must be at least 16 characters")
        }
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_token_from_both_an_env_and_a_file_is_refused() {
        let server = RawServer {
            admin_token_env: Some("HOME".into()),
            admin_token_file: Some("/dev/null".into()),
            ..Default::default()
        };
        let e = admin_token(&server).unwrap_err().to_string();
        assert!(e.starts_with("server.admin_token_env:"), "{e}");
        assert!(e.contains("not both"), "{e}");
    }

    fn parse(text: &str) -> anyhow::Result<Config> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        Config::from_raw(raw, Overrides::default())
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = parse("").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.database.describe(), DEFAULT_DB);
        assert_eq!(c.store.default_heartbeat_timeout, Duration::from_secs(90));
        assert_eq!(c.store.default_max_run_duration, Duration::from_secs(1200));
        assert_eq!(c.kill_grace, Duration::from_secs(10));
        assert_eq!(c.output_limit, 1024 * 1024);
        assert_eq!(c.max_payload_bytes, 1024 * 1024);
    }

    #[test]
    fn the_example_config_and_schedules_load() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let text = std::fs::read_to_string(format!("{root}/examples/reeve.toml")).unwrap();
        let text = text.replace(
            "\"examples/schedules\"",
            &format!("\"{root}/examples/schedules\""),
        );
        let c = parse(&text).unwrap();
        let names: Vec<&str> = c.schedules.iter().map(|s| s.name.as_str()).collect();
        for expected in [
            "agent-heartbeat",
            "nightly-review",
            "nightly-research",
            "ci-watcher",
        ] {
            assert!(names.contains(&expected), "{expected} in {names:?}");
        }
        assert_eq!(c.queues["review"].concurrency, Some(1));
        assert_eq!(c.pressure_max_defer, Duration::from_secs(600));
        assert_eq!(c.store.streaks.generic_pause_at, 3);
    }

    #[test]
    fn the_placement_example_loads() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/placement");
        let files =
            crate::schedule_files::read(&[PathBuf::from(format!("{root}/watcher.toml"))]).unwrap();
        let loaded = reeve_schedule::load_all(&files).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].spec.job.requires, ["device=alice-mac"]);
        let kinds = kinds_of_file(Path::new(&format!("{root}/worker.toml"))).unwrap();
        assert!(kinds.contains_key("watch"));
    }

    #[test]
    fn schedule_settings_are_checked() {
        let c = parse("[schedules]\npressure_delay = \"5s\"\npause_after_failures = 0\n").unwrap();
        assert_eq!(c.pressure_delay, Duration::from_secs(5));
        assert_eq!(c.store.streaks.generic_pause_at, 0);
        let e = parse("[schedules]\npressure_delay = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("schedules.pressure_delay"), "{e}");
        let e = parse("[schedules]\npause_after = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pause_after"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse("[executor]\nslotz = 3\n").unwrap_err().to_string();
        assert!(e.contains("slotz"), "{e}");
        let e = parse("[server]\nlisten = \"127.0.0.1:1\"\n[nonsense]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nonsense"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse("[defaults]\nheartbeat_timeout = \"-5s\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("heartbeat_timeout") && e.contains("negative"),
            "{e}"
        );
        let e = parse("[defaults]\nmax_run_duration = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("defaults.max_run_duration"), "{e}");
        let e = parse("[executor]\nslots = 0\n").unwrap_err().to_string();
        assert!(e.contains("executor.slots"), "{e}");
        let e = parse("[server]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.listen"), "{e}");
        let e = parse("[kinds.x]\ncommand = []\n").unwrap_err().to_string();
        assert!(e.contains("kinds.x.command"), "{e}");
        let e = parse("[retry]\nfactor = 0.1\n").unwrap_err().to_string();
        assert!(e.contains("retry.factor"), "{e}");
    }

    #[test]
    fn executor_labels_default_to_none_and_are_checked() {
        assert!(parse("").unwrap().labels.is_empty());
        let c = parse("[executor]\nlabels = [\"device=build-box\", \"gpu=1\"]\n").unwrap();
        assert_eq!(c.labels, ["device=build-box", "gpu=1"]);
        let e = parse("[executor]\nlabels = [\"device=a\", \"gpu\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("executor.labels[1]"), "{e}");
    }

    #[test]
    fn a_network_listener_needs_a_token() {
        let e = parse("[server]\nlisten = \"0.0.0.0:7433\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin token"), "{e}");
    }

    #[test]
    fn supervision_defaults_and_bad_values_are_named() {
        let c = parse("").unwrap();
        let s = c.supervision.expect("on by default");
        assert_eq!(
            (s.stall_after, s.escalate_after),
            (Duration::from_secs(1800), Duration::from_secs(1800))
        );
        let c = parse("[supervision]\nstall_after = \"10m\"\nescalate_after = \"1h\"\n").unwrap();
        let s = c.supervision.unwrap();
        assert_eq!(
            (s.stall_after, s.escalate_after),
            (Duration::from_secs(600), Duration::from_secs(3600))
        );
        assert!(
            parse("[supervision]\nenabled = false\n")
                .unwrap()
                .supervision
                .is_none()
        );
        for key in ["stall_after", "escalate_after"] {
            let e = parse(&format!("[supervision]\n{key} = \"0s\"\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("supervision.{key}")), "{e}");
        }
        let e = parse("[supervision]\nstall_after = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("stall_after"), "{e}");
        let e = parse("[supervision]\nstall = \"5m\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("stall"), "{e}");
    }

    #[test]
    fn webhooks_take_their_secret_by_reference_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef-secret\n").unwrap();
        let hook = |extra: &str| {
            format!(
                "[[webhooks]]\nurl = \"http://127.0.0.1:9/hook\"\nsecret_file = {:?}\n{extra}",
                secret.display().to_string()
            )
        };
        let c = parse(&hook("events = [\"escalation\", \"job_failed\"]\n")).unwrap();
        assert_eq!(c.webhooks.len(), 1);
        assert_eq!(c.webhooks[0].name, "webhook-1");
        assert_eq!(
            c.webhooks[0].secret.sign(b"x"),
            crate::webhooks::Secret::new("0123456789abcdef-secret".into()).sign(b"x")
        );
        assert!(
            !format!("{:?}", c.webhooks).contains("0123456789abcdef"),
            "the secret never shows"
        );
        let subs = &c.store.webhooks;
        assert!(subs.wants(reeve_store::WebhookEvent::Escalation));
        assert!(subs.wants(reeve_store::WebhookEvent::JobFailed));
        assert!(!subs.wants(reeve_store::WebhookEvent::ScheduleAutoPaused));
        assert!(
            parse("").unwrap().store.webhooks.is_empty(),
            "no webhooks, no rows"
        );

        let bad = |text: String, key: &str| {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        };
        bad(hook("events = [\"job_done\"]\n"), "webhooks[0].events");
        bad(hook("events = [\"job_done\"]\n"), "job_done");
        bad(hook("events = []\n"), "webhooks[0].events");
        bad(
            hook("events = [\"job_failed\"]\n").replace("http://", "https://"),
            "webhooks[0].url",
        );
        bad(
            "[[webhooks]]\nurl = \"http://h/x\"\nevents = [\"job_failed\"]\n".into(),
            "secret_env or secret_file",
        );
        bad(
            "[[webhooks]]\nurl = \"http://h/x\"\nevents = [\"job_failed\"]\nsecret = \"plain\"\n"
                .into(),
            "secret",
        );
        bad(
            "[[webhooks]]\nurl = \"http://h/x\"\nevents = [\"job_failed\"]\nsecret_env = \"REEVE_TEST_UNSET_WEBHOOK_SECRET\"\n".into(),
            "webhooks[0].secret_env",
        );
        let two = format!(
            "{}name = \"ops\"\n{}name = \"ops\"\n",
            hook("events = [\"job_failed\"]\n"),
            hook("events = [\"job_failed\"]\n")
        );
        bad(two, "webhooks[1].name");
    }

    #[test]
    fn kinds_become_templates() {
        let c = parse("[kinds.echo]\ncommand = [\"echo\", \"{payload.msg}\"]\n[kinds.sh]\ncommand = [\"echo hi\"]\nshell = true\n").unwrap();
        assert_eq!(c.kinds["echo"].command, ["echo", "{payload.msg}"]);
        assert!(c.kinds["sh"].shell);
    }

    #[test]
    fn a_short_admin_token_file_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "short\n").unwrap();
        let text = format!(
            "[server]\nadmin_token_file = {:?}\n",
            file.display().to_string()
        );
        let e = format!("{:#}", parse(&text).unwrap_err());
        assert!(
            e.contains("server.admin_token_file") && e.contains("at least 16 characters"),
            "{e}"
        );
    }

    /// A deterministic pseudo-random source (SplitMix64) for the generated
    /// cases below: the same cases on every run, no extra dependency.
    struct Cases(u64);

    impl Cases {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[(self.next() % from.len() as u64) as usize]
        }

        /// A TOML string literal mixing digits, unit letters, signs and
        /// punctuation, so duration- and address-shaped text comes up often.
        fn string(&mut self) -> String {
            let len = self.next() % 12;
            let text: String = (0..len)
                .map(|_| {
                    self.pick(&[
                        "1", "9", "0", "h", "m", "s", "ms", "us", ".", "-", ":", "=", " ", "x",
                        "é", "\u{7}",
                    ])
                })
                .collect();
            serde_json::Value::from(text).to_string()
        }
    }

    /// Every key of `reeve.toml` a value can be written to: the table header
    /// (with the required keys of its entry, so only the key under test can
    /// be wrong), the key, and the names an error about it may use.
    fn known_keys() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
        let plain = |table: &'static str, keys: &[&'static str]| {
            keys.iter()
                .map(move |k| (table, *k, vec![]))
                .collect::<Vec<_>>()
        };
        let mut out = Vec::new();
        out.extend(plain(
            "[server]",
            &[
                "listen",
                "db",
                "admin_token_env",
                "admin_token_file",
                "max_request_bytes",
                "max_payload_bytes",
                "schedules",
            ],
        ));
        out.extend(plain(
            "[defaults]",
            &[
                "max_run_duration",
                "heartbeat_timeout",
                "cancel_grace",
                "retention",
            ],
        ));
        out.extend(plain("[retry]", &["base", "factor", "max", "jitter"]));
        out.extend(plain(
            "[executor]",
            &[
                "slots",
                "commands",
                "kill_grace",
                "output_limit_bytes",
                "shutdown_grace",
                "labels",
            ],
        ));
        out.extend(plain("[limits]", &["global"]));
        out.extend(plain(
            "[schedules]",
            &[
                "pressure_delay",
                "pressure_max_defer",
                "pause_after_failures",
                "pause_after_budget_breaches",
                "ledger_retention",
            ],
        ));
        out.extend(plain(
            "[supervision]",
            &["enabled", "stall_after", "escalate_after"],
        ));
        out.extend(plain("[queues.q]", &["concurrency", "paused"]));
        for k in ["shell", "cwd", "env"] {
            out.push(("[kinds.k]\ncommand = [\"true\"]", k, vec![]));
        }
        out.push(("[kinds.k]", "command", vec![]));
        // The section is only read with a postgres:// database, and a
        // complaint about it under SQLite names the section.
        for k in ["password_env", "password_file", "max_connections", "schema"] {
            out.push(("[postgres]", k, vec!["postgres:"]));
        }
        for k in ["password_env", "password_file", "max_connections", "schema"] {
            out.push((
                "[server]\ndb = \"postgres://u@127.0.0.1/d\"\n[postgres]",
                k,
                vec![],
            ));
        }
        // Entries of arrays of tables: an error may name the entry.
        for k in ["token_env", "token_file", "kinds", "queues"] {
            out.push((
                "[[worker_tokens]]\nname = \"w\"",
                k,
                vec!["worker_tokens[0]"],
            ));
        }
        out.push(("[[worker_tokens]]", "name", vec!["worker_tokens[0]"]));
        for k in ["name", "events", "secret_env", "secret_file"] {
            out.push((
                "[[webhooks]]\nurl = \"http://127.0.0.1:9/hook\"",
                k,
                vec!["webhooks[0]"],
            ));
        }
        out.push((
            "[[webhooks]]\nevents = [\"job_failed\"]\nsecret_env = \"REEVE_TEST_UNSET\"",
            "url",
            vec!["webhooks[0]"],
        ));
        out
    }

    /// TOML values of every type, valid and invalid for the keys above.
    const VALUES: &[&str] = &[
        "\"\"",
        "\"x\"",
        "\"90s\"",
        "\"0s\"",
        "\"-5s\"",
        "\"500us\"",
        "\"876601h\"",
        "\"9223372036854775807s\"",
        "\"soon\"",
        "\"127.0.0.1:7433\"",
        "\"0.0.0.0:1\"",
        "\"sqlite://never-opened.db\"",
        "\"mysql://h/d\"",
        "\"device=a\"",
        "\"a b\"",
        "\"\\u0007\"",
        "\"/nonexistent/reeve/file\"",
        "0",
        "1",
        "-1",
        "10001",
        "4294967296",
        "9223372036854775807",
        "-9223372036854775808",
        "0.5",
        "-1.0",
        "1e308",
        "nan",
        "inf",
        "true",
        "false",
        "1979-05-27T07:32:00Z",
        "07:32:00",
        "[]",
        "[\"a\"]",
        "[1, \"a\"]",
        "[\"device=a\", \"gpu\"]",
        "[[]]",
        "{}",
        "{ a = 1 }",
    ];

    /// Parses one key set to one value: never panics, and a refusal names
    /// the key (by its leaf name, which the TOML error shows in context,
    /// or its path), or one of the names the key's entry allows.
    fn check_key(header: &str, key: &str, also: &[&str], value: &str) {
        let text = format!("{header}\n{key} = {value}\n");
        if let Err(e) = parse(&text) {
            let message = format!("{e:#}");
            assert!(
                message.contains(key) || also.iter().any(|a| message.contains(a)),
                "the error does not name {key:?}:\n--- config\n{text}--- error\n{message}"
            );
        }
    }

    #[test]
    fn every_known_key_with_any_toml_value_never_panics_and_refusals_name_the_key() {
        let keys = known_keys();
        for (header, key, also) in &keys {
            for value in VALUES {
                check_key(header, key, also, value);
            }
        }
        let mut cases = Cases(0x5EED_C0F1_6000_0001);
        for _ in 0..2_000 {
            let (header, key, also) = &keys[(cases.next() % keys.len() as u64) as usize];
            let value = match cases.next() % 4 {
                0 => cases.string(),
                1 => (cases.next() as i64 >> (cases.next() % 64)).to_string(),
                2 => format!("[{}, {}]", cases.string(), cases.string()),
                _ => cases.pick(VALUES).to_string(),
            };
            check_key(header, key, also, &value);
        }
    }
}
