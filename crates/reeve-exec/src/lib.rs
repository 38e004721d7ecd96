//! reeve's process executor: it turns a job into a running process and a
//! running process into an [`ExitOutcome`].
//!
//! This crate owns:
//! - [`run_process`]: spawning one command (argv, no shell), feeding its
//!   stdin, capturing its stdout+stderr into a bounded [`OutputBuffer`],
//!   reading its [`Report`]s, stopping it on request, and cleaning up after it;
//! - [`render_template`]: turning a configured command template and a job
//!   into argv;
//! - the report line protocol ([`parse_report_line`]).
//!
//! It knows nothing of the store, the queue or retries: it runs what it is
//! given and says how it ended.
//!
//! **Invariants**
//! - Every child leads its own process group, and signals go to the whole
//!   group: a stop is SIGTERM, then SIGKILL after the grace; a normal exit of
//!   the child is followed by SIGKILL to whatever is left in its group, so no
//!   backgrounded grandchild outlives its run. Dropping the `run_process`
//!   future also SIGKILLs the group.
//! - Output kept per run is bounded (the last `limit` bytes); report lines
//!   are bounded (1 MiB, longer ones are discarded). A child can make reeve
//!   neither grow without bound nor crash: malformed reports are logged and
//!   ignored.
//! - `run_process` returns only after the child is reaped and its pipes are
//!   drained, with a bounded wait ([`DRAIN_TIMEOUT`]) for pipes held open by
//!   something that escaped the group.
//!
//! **Report channel: fd 3.** The child finds `REEVE_REPORT_FD=3` in its
//! environment and fd 3 open as the write end of a pipe; it writes one JSON
//! object per line there (`echo '{"turns":2}' >&3`). The fd is mapped with the
//! `command-fds` crate (its `pre_exec` hook holds the only `unsafe`), so this
//! crate stays under the workspace's `unsafe_code = "forbid"`. No FIFO
//! fallback is used.
//!
//! **Stopping** is signalled with a [`tokio_util::sync::CancellationToken`].

mod output;
mod report;
mod run;
mod template;

pub use output::OutputBuffer;
pub use report::{MAX_REPORT_LINE, Report, parse_report_line};
pub use run::{
    DRAIN_TIMEOUT, ExitOutcome, ProcessSpec, REPORT_FD, REPORT_FD_ENV, RunLimits, run_process,
};
pub use template::{TemplateError, TemplateVars, render_template};
pub use tokio_util::sync::CancellationToken;
