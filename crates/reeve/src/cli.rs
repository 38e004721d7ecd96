//! The command line: every command, flag and environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "reeve",
    version,
    about = "A durable scheduler and supervisor for long-running jobs"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every client command shares.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The daemon's URL.
    #[arg(
        long,
        global = true,
        env = "REEVE_URL",
        default_value = "http://127.0.0.1:7433"
    )]
    pub url: String,
    /// Bearer token for the daemon (never printed).
    #[arg(
        long = "token-env-value",
        hide = true,
        env = "REEVE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: engine, process executor and HTTP API.
    Serve(ServeArgs),
    /// Add a job (prints its id; with --json, the job).
    Enqueue(EnqueueArgs),
    /// Inspect and act on jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Inspect and configure queues.
    #[command(subcommand)]
    Queues(QueuesCommand),
    /// Limits that span queues.
    #[command(subcommand)]
    Limits(LimitsCommand),
    /// Running jobs, limits and queue depths.
    Status,
    /// Create or update schedules from TOML or JSON files (all or nothing).
    Apply(ApplyArgs),
    /// Inspect and control schedules.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Pressure signals that defer schedule firings.
    #[command(subcommand)]
    Pressure(PressureCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Simulate the next hours of firings against the caps: predicted slot
    /// waits, overlaps, and offsets that remove them.
    Forecast {
        #[arg(long, default_value_t = 24)]
        hours: u32,
    },
    /// Measure the store: enqueue and processing throughput, idle latency.
    Bench(BenchArgs),
    /// Run a remote worker: claim jobs of some kinds from a daemon and run
    /// them here with the process executor.
    Worker(WorkerArgs),
    /// Registered workers: the fleet.
    #[command(subcommand)]
    Workers(WorkersCommand),
    /// A job's mailbox: operators send, a run reads its own.
    #[command(subcommand)]
    Mail(MailCommand),
    /// Inside a run: save or load the job's checkpoint.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Apply the database migrations and exit (`serve` also applies them).
    Migrate(ServeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Config file (TOML). Default: ./reeve.toml if it exists.
    #[arg(long, env = "REEVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Database URL (`sqlite://PATH`). Overrides the config.
    #[arg(long, env = "REEVE_DB")]
    pub db: Option<String>,
    /// Listen address. Overrides the config.
    #[arg(long, env = "REEVE_LISTEN")]
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct EnqueueArgs {
    #[arg(long, default_value = "default")]
    pub queue: String,
    #[arg(long)]
    pub kind: String,
    /// JSON payload.
    #[arg(long)]
    pub payload: Option<String>,
    /// Lower runs first.
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    #[arg(long)]
    pub max_attempts: Option<i32>,
    #[arg(long)]
    pub unique_key: Option<String>,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// e.g. 20m
    #[arg(long, allow_hyphen_values = true)]
    pub max_run_duration: Option<String>,
    /// e.g. 90s
    #[arg(long, allow_hyphen_values = true)]
    pub heartbeat_timeout: Option<String>,
    /// Run after this long (e.g. 10m).
    #[arg(long, conflicts_with = "run_at", allow_hyphen_values = true)]
    pub delay: Option<String>,
    /// Run at this instant (RFC 3339).
    #[arg(long)]
    pub run_at: Option<String>,
    /// Stop the run when it reports more turns than this.
    #[arg(long)]
    pub max_turns: Option<i64>,
    /// Enqueue a job of this kind when this one succeeds (its payload holds
    /// this job's id and result).
    #[arg(long, value_name = "KIND")]
    pub then_kind: Option<String>,
    /// The follow-up's queue (default: this job's queue).
    #[arg(long, value_name = "QUEUE", requires = "then_kind")]
    pub then_queue: Option<String>,
    /// Run only on a worker with this label, `key=value` (repeatable: a
    /// worker must have all of them).
    #[arg(long = "require", value_name = "KEY=VALUE")]
    pub requires: Vec<String>,
    /// An ad-hoc command to run instead of the kind's template.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Show jobs older than this id (the previous page's last).
        #[arg(long)]
        before: Option<i64>,
    },
    /// One job with its events and output tail.
    Show { id: i64 },
    /// Cancel a job (a running one is stopped first).
    Cancel { id: i64 },
    /// Retry a failed or cancelled job.
    Retry { id: i64 },
    /// A job's output; --follow streams it while the job runs.
    Logs {
        id: i64,
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// A schedule file (.toml or .json) or a directory of them.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Delete schedules that are not in the files.
    #[arg(long)]
    pub prune: bool,
    /// Show what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Schedules with their rule, status and next fire time.
    List,
    /// One schedule with its firing ledger.
    Show { name: String },
    /// Stop firing a schedule.
    Pause { name: String },
    /// Fire a paused schedule again (from its next fire time after now).
    Resume {
        name: String,
        /// Run one canary firing now; the schedule becomes active again only
        /// if it succeeds.
        #[arg(long)]
        probe: bool,
    },
    /// Delete a schedule (its jobs and ledger stay).
    Delete { name: String },
    /// Fire a schedule now, under the caps (exit 3 with the slot ETA when a
    /// cap is full).
    Run {
        name: String,
        /// Run even if a cap is full; writes an audit record.
        #[arg(long)]
        force: bool,
    },
    /// The firing ledger: what happened to each fire time, and why.
    History {
        name: String,
        /// Rows to show (newest first).
        #[arg(long, default_value_t = 30)]
        limit: u32,
        /// Explain one instant (RFC 3339, e.g. 2026-12-01T09:00:00Z): the
        /// ledger row of that fire time and the ones before it.
        #[arg(long)]
        at: Option<String>,
    },
    /// Slot wait, duration and turns (p50 / p95 / max) of recent firings.
    Metrics {
        name: String,
        /// Ledger rows to consider (newest first).
        #[arg(long, default_value_t = 500)]
        limit: u32,
    },
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// The daemon's URL.
    #[arg(long, env = "REEVE_URL", default_value = "http://127.0.0.1:7433")]
    pub url: String,
    /// The environment variable holding this worker's token.
    #[arg(long)]
    pub token_env: Option<String>,
    /// The kinds this worker runs (comma separated); each needs a command
    /// template in `--config`.
    #[arg(long)]
    pub kinds: String,
    /// Concurrent runs.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Claim only from these queues (comma separated).
    #[arg(long)]
    pub queues: Option<String>,
    /// A label for placement, `key=value` (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// A config file whose `[kinds.NAME]` tables give the command templates.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The name shown in the fleet view (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// SIGTERM to a run's process group, then SIGKILL after this.
    #[arg(long, default_value = "10s")]
    pub kill_grace: String,
    /// On SIGTERM, how long running jobs may finish before they are stopped
    /// and released.
    #[arg(long, default_value = "30s")]
    pub drain_grace: String,
}

#[derive(Debug, Subcommand)]
pub enum WorkersCommand {
    /// Registered workers: kinds, slots used / total, last seen, stale ones
    /// marked.
    List,
}

#[derive(Debug, Subcommand)]
pub enum MailCommand {
    /// Send a message to a job's runs.
    Send {
        job: i64,
        #[arg(long)]
        subject: String,
        #[arg(long)]
        body: String,
    },
    /// Inside a run: read this job's mail (`REEVE_JOB_ID`, `REEVE_JOB_TOKEN`).
    Read {
        /// Another job's mail (operators; needs the admin token).
        #[arg(long)]
        job: Option<i64>,
        /// Leave unread messages unread.
        #[arg(long)]
        peek: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Save FILE (or stdin with `-`) as the run's checkpoint.
    Save { file: PathBuf },
    /// Write the job's latest checkpoint to FILE (or stdout without one).
    Load { file: Option<PathBuf> },
}

#[derive(Debug, Subcommand)]
pub enum PressureCommand {
    /// Raise (or renew) a signal that interactive work is going on: due
    /// firings are deferred while any signal is active.
    Raise {
        /// Who raises it (one signal per source).
        source: String,
        /// How long it lasts unless renewed or cleared.
        #[arg(long, default_value = "10m")]
        ttl: String,
    },
    /// Clear a signal.
    Clear { source: String },
    /// The active signals.
    List,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Forced runs, auto-pauses, probes and other recorded actions, newest
    /// first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// Queues with their limits and depths.
    List,
    /// Set a queue's concurrency limit.
    Set {
        queue: String,
        /// Maximum running jobs; `none` removes the limit.
        #[arg(long)]
        concurrency: String,
    },
    /// Stop claiming from a queue.
    Pause { queue: String },
    /// Claim from a queue again.
    Resume { queue: String },
}

#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Show the limits.
    Show,
    /// Set the global concurrency limit.
    Set {
        /// Maximum running jobs in all queues; `none` removes the limit.
        #[arg(long)]
        global: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Database to measure (default: a fresh SQLite file in a temp dir).
    #[arg(long, env = "REEVE_DB")]
    pub db: Option<String>,
    #[arg(long, default_value_t = 20_000)]
    pub jobs: u32,
    /// Concurrent claimers.
    #[arg(long, default_value_t = 4)]
    pub workers: u32,
    /// Idle-latency samples (after 20 warm-up samples).
    #[arg(long, default_value_t = 200)]
    pub samples: u32,
    /// Instead of the throughput figures, measure schedule firing lag over
    /// this many firings of a 1-second schedule on an idle daemon.
    #[arg(long)]
    pub firings: Option<u32>,
    /// Instead, seed `--jobs` jobs (default 20,000; try 100000) with
    /// schedules and a ledger, and time every dashboard page's render.
    #[arg(long)]
    pub dashboard: bool,
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn then_queue_needs_then_kind() {
        let cli = Cli::try_parse_from([
            "reeve",
            "enqueue",
            "--kind",
            "build",
            "--then-kind",
            "review",
            "--then-queue",
            "merge",
        ])
        .unwrap();
        let Command::Enqueue(args) = cli.command else {
            panic!("not an enqueue");
        };
        assert_eq!(
            (args.then_kind.as_deref(), args.then_queue.as_deref()),
            (Some("review"), Some("merge"))
        );
        assert!(
            Cli::try_parse_from(["reeve", "enqueue", "--kind", "b", "--then-queue", "m"]).is_err()
        );
    }

    #[test]
    fn require_is_repeatable() {
        let cli = Cli::try_parse_from([
            "reeve",
            "enqueue",
            "--kind",
            "watch",
            "--require",
            "device=alice-mac",
            "--require",
            "gpu=1",
        ])
        .unwrap();
        let Command::Enqueue(args) = cli.command else {
            panic!("not an enqueue");
        };
        assert_eq!(args.requires, ["device=alice-mac", "gpu=1"]);
    }
}
