//! A counting worker: for each job of its kind it counts from 1 to the
//! payload's `to`, one number every `step_ms` (default 500), saving the
//! count as a checkpoint after each step, so a retry of the job (after a
//! crash, a lost lease, a released shutdown) resumes where the last
//! attempt stopped. It reports each number as a turn, a progress note
//! along, prints the job's mail as it arrives, and stops at once when the
//! run is cancelled.
//!
//! ```text
//! cargo run -p reeve-worker --example counter -- \
//!     --url http://127.0.0.1:7433 --token-env REEVE_WORKER_TOKEN [--kind count] [--slots 2]
//! reeve enqueue --kind count --payload '{"to": 20}'
//! ```
//!
//! SIGTERM or Ctrl-C drains: no more claims, running counts get
//! `--drain-grace` to finish, and what is left is released for retry.

use std::time::Duration;

use clap::Parser;
use reeve_worker::{Client, Handler, JobContext, JobFailure, Worker};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// The daemon.
    #[arg(long, env = "REEVE_URL", default_value = "http://127.0.0.1:7433")]
    url: String,
    /// The environment variable holding the worker token (none: auth off).
    #[arg(long)]
    token_env: Option<String>,
    /// The kind of job to count for.
    #[arg(long, default_value = "count")]
    kind: String,
    #[arg(long, default_value_t = 1)]
    slots: u32,
    #[arg(long, default_value = "counter")]
    name: String,
    /// Seconds running counts may go on after a shutdown signal.
    #[arg(long, default_value_t = 10)]
    drain_grace: u64,
}

struct Counter;

#[reeve_worker::async_trait]
impl Handler for Counter {
    async fn run(&self, ctx: JobContext) -> Result<Option<Value>, JobFailure> {
        let to = ctx.payload()["to"]
            .as_u64()
            .ok_or_else(|| JobFailure::error("payload.to: give a whole number to count to"))?;
        let step = Duration::from_millis(ctx.payload()["step_ms"].as_u64().unwrap_or(500));
        let resumed_from = match ctx.checkpoint() {
            Some(saved) => std::str::from_utf8(saved)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| JobFailure::error("the checkpoint is not a count"))?,
            None => 0,
        };
        if resumed_from > 0 {
            eprintln!("job {}: resuming at {resumed_from}", ctx.id());
        }
        for n in resumed_from + 1..=to {
            tokio::select! {
                () = tokio::time::sleep(step) => {}
                () = ctx.cancelled() => return Err(JobFailure::cancelled()),
            }
            ctx.save_checkpoint(n.to_string()).await?;
            ctx.report_turns(n);
            ctx.progress(format!("counted {n} of {to}"))?;
            if ctx.unread_mail().unwrap_or(0) > 0 {
                for mail in ctx.read_mail().await? {
                    eprintln!(
                        "job {}: mail from {}: {}",
                        ctx.id(),
                        mail.sender,
                        mail.subject
                    );
                }
            }
        }
        Ok(Some(json!({ "counted": to, "resumed_from": resumed_from })))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("REEVE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let mut client = Client::new(&args.url)?;
    if let Some(var) = &args.token_env {
        let token = std::env::var(var).map_err(|_| format!("--token-env: {var} is not set"))?;
        client = client.with_token(token.trim());
    }
    let worker = Worker::builder(client)
        .name(args.name)
        .kinds([args.kind])
        .slots(args.slots)
        .drain_grace(Duration::from_secs(args.drain_grace))
        .version(env!("CARGO_PKG_VERSION"))
        .build(Counter)?;
    worker.run_until(shutdown_signal()).await?;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("draining: no more claims");
}
