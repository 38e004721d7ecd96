//! `reeve-chaos`: breaks a reeve fleet on purpose and checks, from the
//! recorded history, that nothing was lost, run twice unfenced, or run past
//! a cap.
//!
//! - `reeve-chaos run` starts a throwaway PostgreSQL, daemons and workers
//!   ([`fleet`]), runs a workload through a calm and a fault phase ([`run`])
//!   on a seeded plan ([`plan`]), records the [`history`], checks it
//!   ([`check`]) and writes the [`report`]; it exits 1 on any violation.
//! - `reeve-chaos check DIR` checks a recorded `history.json` again.
//! - `reeve-chaos plan` prints the fault plan of a seed.
//!
//! Needs root for the worker network namespaces (it falls back to loopback
//! without the network faults otherwise) and the PostgreSQL server binaries.

mod check;
mod fleet;
mod history;
mod plan;
mod report;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::plan::FaultKind;

#[derive(Debug, Parser)]
#[command(
    name = "reeve-chaos",
    about = "A chaos harness and history checker for reeve"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a fleet under faults, check the history, write the report.
    Run(RunArgs),
    /// Check a recorded history (`DIR/history.json`) again.
    Check {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print the fault plan a seed gives.
    Plan {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "10m", value_parser = duration)]
        duration: Duration,
        #[arg(long)]
        per_kind: Option<u32>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Seeds the fault plan and the workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Length of the fault phase.
    #[arg(long, default_value = "10m", value_parser = duration)]
    duration: Duration,
    /// Length of the calm phase before it (the throughput baseline).
    #[arg(long, default_value = "30s", value_parser = duration)]
    calm: Duration,
    /// Faults of each kind (default: one per 6 s of the fault phase).
    #[arg(long)]
    per_kind: Option<u32>,
    /// Fault kinds (comma separated; default all).
    #[arg(long, value_delimiter = ',')]
    faults: Option<Vec<String>>,
    #[arg(long, default_value_t = 3)]
    workers: usize,
    #[arg(long, default_value_t = 3)]
    daemons: usize,
    /// The runs' heartbeat timeout.
    #[arg(long, default_value = "2s", value_parser = duration)]
    heartbeat_timeout: Duration,
    /// Jobs kept waiting by the workload.
    #[arg(long, default_value_t = 40)]
    backlog: usize,
    /// Most time to wait for every job to end after the faults.
    #[arg(long, default_value = "180s", value_parser = duration)]
    drain_timeout: Duration,
    /// The reeve binary (default: next to this one).
    #[arg(long)]
    reeve: Option<PathBuf>,
    /// Where logs, the history and the report go.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Test-only fault switches for every reeve process (`REEVE_FAULTS`),
    /// obeyed only by builds with the `fault-injection` feature.
    #[arg(long)]
    fault_switches: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Exit 0 even with violations (to show that the checker finds them).
    #[arg(long)]
    expect_violations: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    reeve_core::time::parse_duration(s)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("reeve-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Plan {
            seed,
            duration,
            per_kind,
        } => {
            let p = plan::generate(&plan::PlanParams {
                seed,
                duration_ms: duration.as_millis() as u64,
                workers: 3,
                daemons: 3,
                per_kind: per_kind.unwrap_or((duration.as_secs() / 6).max(1) as u32),
                kinds: FaultKind::ALL.to_vec(),
                heartbeat_timeout_ms: 2000,
            });
            println!("{}", serde_json::to_string_pretty(&p)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { dir, json } => {
            let h = history::History::load(&dir.join("history.json"))?;
            let f = check::check(&h);
            let facts: run::RunFacts = std::fs::read(dir.join("facts.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .map(|v| run::RunFacts {
                    network_namespaces: v["network_namespaces"].as_bool().unwrap_or(false),
                    planned: serde_json::from_value(v["planned"].clone()).unwrap_or_default(),
                    drained: v["drained"].as_bool().unwrap_or(false),
                    enqueued: v["enqueued"].as_u64().unwrap_or(0) as usize,
                })
                .unwrap_or_default();
            let r = report::build(
                0,
                format!("reeve-chaos check {}", dir.display()),
                &h,
                &f,
                &facts,
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", report::table(&r));
            }
            Ok(if r.violations == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Run(a) => run_command(a),
    }
}

fn run_command(a: RunArgs) -> anyhow::Result<ExitCode> {
    let kinds = match &a.faults {
        None => FaultKind::ALL.to_vec(),
        Some(list) => list
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| {
                FaultKind::parse(s).with_context(|| {
                    format!(
                        "--faults: unknown fault {s:?} (known: {})",
                        FaultKind::ALL.map(FaultKind::as_str).join(", ")
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let reeve = match a.reeve.clone() {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("the harness binary has no directory")?
            .join("reeve"),
    };
    anyhow::ensure!(
        reeve.is_file(),
        "--reeve: no reeve binary at {} (build it with `cargo build -p reeve`)",
        reeve.display()
    );
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let options = run::RunOptions {
        seed: a.seed,
        calm: a.calm,
        duration: a.duration,
        per_kind: a.per_kind,
        kinds,
        workers: a.workers,
        daemons: a.daemons,
        heartbeat_timeout: a.heartbeat_timeout,
        backlog: a.backlog,
        drain_timeout: a.drain_timeout,
        reeve: reeve.canonicalize()?,
        repo: repo.canonicalize()?,
        out: a.out.clone(),
        fault_switches: a.fault_switches.clone(),
    };
    let command = std::env::args()
        .map(|s| if s.contains(' ') { format!("'{s}'") } else { s })
        .collect::<Vec<_>>()
        .join(" ");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (history, facts) = runtime.block_on(run::run(&options))?;
    history.save(&a.out.join("history.json"))?;
    std::fs::write(a.out.join("facts.json"), serde_json::to_vec_pretty(&facts)?)?;
    let findings = check::check(&history);
    let r = report::build(a.seed, command, &history, &findings, &facts);
    std::fs::write(a.out.join("report.json"), serde_json::to_vec_pretty(&r)?)?;
    let table = report::table(&r);
    std::fs::write(a.out.join("report.txt"), &table)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{table}");
    }
    let ok = if a.expect_violations {
        r.violations > 0
    } else {
        r.violations == 0 && facts.drained && r.kinds_never_injected().is_empty()
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
