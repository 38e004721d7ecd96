//! The process executor as an engine [`Handler`]: a kind maps to a command
//! template (argv, or a shell script when the config asks for one), and
//! ad-hoc command jobs carry their own argv.
//!
//! The child gets the environment of SPEC §6: the payload on stdin and in
//! `REEVE_PAYLOAD`, `REEVE_JOB_ID`, `REEVE_ATTEMPT`, `REEVE_EPOCH` (a fencing
//! token the run may pass on to what it writes to), `REEVE_IDEMPOTENCY_KEY`,
//! `REEVE_QUEUE`, `REEVE_KIND`, `REEVE_URL`, and `REEVE_REPORT_FD` for its
//! JSON-lines reports. Exit 0 is success; any other exit fails with
//! `exit_code`, unless the run reported its own failure reason.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use async_trait::async_trait;
use reeve_core::FailureReason;
use reeve_exec::{ExitOutcome, ProcessSpec, RunLimits, TemplateVars, render_template, run_process};
use reeve_store::Outcome;

use crate::{Handler, Run};

/// How one kind is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTemplate {
    /// argv; elements may hold placeholders (`{payload.FIELD}`, `{job_id}`…).
    pub command: Vec<String>,
    /// Run `command` joined by spaces through `/bin/sh -c` instead.
    pub shell: bool,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
}

/// Runs jobs as child processes.
#[derive(Debug, Clone)]
pub struct ProcessHandler {
    templates: HashMap<String, CommandTemplate>,
    limits: RunLimits,
    daemon_url: String,
    /// Variables of this process's environment that commands never inherit.
    hidden_env: Vec<String>,
}

impl ProcessHandler {
    pub fn new(
        templates: HashMap<String, CommandTemplate>,
        limits: RunLimits,
        daemon_url: String,
    ) -> Self {
        ProcessHandler {
            templates,
            limits,
            daemon_url,
            hidden_env: Vec::new(),
        }
    }

    /// Keeps the variables `names` (the process's own secrets) out of every
    /// command's environment.
    pub fn hiding_env(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.hidden_env.extend(names);
        self
    }

    pub fn kinds(&self) -> impl Iterator<Item = &String> {
        self.templates.keys()
    }

    fn spec(&self, run: &Run, more_env: Vec<(String, String)>) -> Result<ProcessSpec, String> {
        let job = &run.job;
        let (argv, cwd, extra_env) = match (&job.command, self.templates.get(&job.kind)) {
            (Some(argv), _) => (argv.clone(), None, BTreeMap::new()),
            (None, Some(t)) => {
                let vars = TemplateVars {
                    payload: &job.payload,
                    job_id: job.id,
                    attempt: job.attempt,
                    kind: &job.kind,
                    queue: &job.queue,
                };
                let rendered = render_template(&t.command, &vars).map_err(|e| e.to_string())?;
                let argv = if t.shell {
                    vec!["/bin/sh".to_string(), "-c".to_string(), rendered.join(" ")]
                } else {
                    rendered
                };
                (argv, t.cwd.clone(), t.env.clone())
            }
            (None, None) => return Err(format!("no command template for kind {:?}", job.kind)),
        };
        let payload = serde_json::to_string(&job.payload).unwrap_or_else(|_| "{}".into());
        let mut env: Vec<(String, String)> = vec![
            ("REEVE_PAYLOAD".into(), payload.clone()),
            ("REEVE_JOB_ID".into(), job.id.to_string()),
            ("REEVE_ATTEMPT".into(), job.attempt.to_string()),
            ("REEVE_EPOCH".into(), job.epoch.to_string()),
            ("REEVE_IDEMPOTENCY_KEY".into(), job.idempotency_key.clone()),
            ("REEVE_QUEUE".into(), job.queue.clone()),
            ("REEVE_KIND".into(), job.kind.clone()),
            ("REEVE_URL".into(), self.daemon_url.clone()),
        ];
        if let Some(max) = job.max_turns {
            env.push(("REEVE_MAX_TURNS".into(), max.to_string()));
        }
        env.extend(extra_env);
        env.extend(more_env);
        Ok(ProcessSpec {
            argv,
            cwd,
            env,
            env_remove: self.hidden_env.clone(),
            stdin: payload.into_bytes(),
        })
    }
}

#[async_trait]
impl Handler for ProcessHandler {
    async fn run(&self, run: Run) -> Outcome {
        let spec = match self.spec(&run, run.env.clone()) {
            Ok(spec) => spec,
            Err(error) => {
                return Outcome::Failed {
                    reason: FailureReason::SpawnFailed,
                    error: Some(error),
                };
            }
        };
        let exit = run_process(
            spec,
            &self.limits,
            run.output.clone(),
            run.reports.clone(),
            run.stop.clone(),
        )
        .await;
        match exit {
            ExitOutcome::Exited { code: 0 } => Outcome::Succeeded { result: None },
            ExitOutcome::Exited { code } => Outcome::Failed {
                reason: FailureReason::ExitCode,
                error: Some(format!("exited with code {code}")),
            },
            ExitOutcome::Signaled { signal } => Outcome::Failed {
                reason: FailureReason::ExitCode,
                error: Some(format!("killed by signal {signal}")),
            },
            ExitOutcome::Stopped => Outcome::Failed {
                reason: FailureReason::Error,
                error: Some("stopped".into()),
            },
            ExitOutcome::SpawnFailed { error } => Outcome::Failed {
                reason: FailureReason::SpawnFailed,
                error: Some(error),
            },
        }
    }
}
