//! Write reeve workers in Rust.
//!
//! A worker is a process that claims jobs of some kinds from a reeve daemon
//! over HTTP and runs them (SPEC §6, `docs/api.md` "Remote workers"). This
//! crate owns the Rust side of that protocol:
//!
//! - [`Client`]: one typed call per endpoint of the worker protocol
//!   (register, long-poll claim, heartbeat, complete, fail, deregister) and
//!   of a run's job token (checkpoint save and load, mail), with the API's
//!   JSON as Rust types ([`wire`]) and an [`Error`] that tells a lost run
//!   (`Conflict`) from auth, input and transient failures.
//! - [`Handler`]: the job's code, given a [`JobContext`] (the job, the
//!   previous checkpoint, turn and progress reports, checkpoint saves, mail,
//!   and a cancellation signal).
//! - [`Worker`]: the runner that registers, claims for its free slots,
//!   heartbeats each run at a third of its heartbeat timeout, keeps a local
//!   lease deadline per run, writes outcomes back fenced, retries while the
//!   daemon is away, and drains on shutdown.
//! - [`InProcess`]: the same handler run by the engine inside the daemon.
//!
//! **Invariants** (each kept in one module): a run whose lease was lost is
//! never reported as a success (`runner`); every write of a run carries its
//! job token and epoch, so the daemon fences it (`client`); a handler sees
//! the same context whether it runs remotely or in-process (`context`).
//!
//! # Example
//!
//! ```no_run
//! use reeve_worker::{Client, Handler, JobContext, JobFailure, Worker};
//!
//! struct Echo;
//!
//! #[reeve_worker::async_trait]
//! impl Handler for Echo {
//!     async fn run(&self, ctx: JobContext) -> Result<Option<serde_json::Value>, JobFailure> {
//!         ctx.progress("echoing")?;
//!         Ok(Some(ctx.payload().clone()))
//!     }
//! }
//!
//! # async fn run() -> Result<(), reeve_worker::Error> {
//! let client = Client::new("http://127.0.0.1:7433")?.with_token("worker-token");
//! let worker = Worker::builder(client).name("echo").kinds(["echo"]).slots(4).build(Echo)?;
//! worker.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! A fuller one, a counting worker that checkpoints every step and resumes
//! from its checkpoint on a retry, is `examples/counter.rs`:
//!
//! ```text
//! cargo run -p reeve-worker --example counter -- --url http://127.0.0.1:7433 --token-env REEVE_WORKER_TOKEN
//! ```

mod client;
mod context;
mod error;
mod in_process;
mod runner;
pub mod wire;

/// Implement [`Handler`] with `#[reeve_worker::async_trait]`.
pub use async_trait::async_trait;
pub use client::{Client, DEFAULT_TIMEOUT, MAX_CLAIM_WAIT};
pub use context::{
    FnHandler, Handler, JobContext, JobFailure, MAX_CHECKPOINT_BYTES, MAX_PROGRESS_BYTES,
    StopReason, handler_fn,
};
pub use error::{Error, Refusal};
pub use in_process::InProcess;
pub use reeve_core::{FailureReason, Job, JobId};
pub use reeve_store::{Checkpoint, Mail, WorkerRecord};
pub use runner::{DEFAULT_DRAIN_GRACE, DEFAULT_STOP_GRACE, Worker, WorkerBuilder, WorkerStats};
pub use tokio_util::sync::CancellationToken;
pub use wire::{
    ClaimedRun, Complete, Deregistered, Fail, Registered, Registration, RunAnswer, RunBeat,
    RunStatus,
};
