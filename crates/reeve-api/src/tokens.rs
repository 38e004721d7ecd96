//! Who is calling (SPEC §12): the admin token, worker tokens, and the
//! job-scoped tokens handed to each run.
//!
//! **Invariants.**
//! - A job token names one job and one epoch and is signed
//!   (`rjt_{job}_{epoch}_{HMAC-SHA256}`); it authorizes only that run's own
//!   writes (heartbeat, complete, fail, checkpoint, mail) and only while its
//!   epoch is the one written with. It cannot be forged without the signing
//!   key, and it is useless for any other job or epoch.
//! - The signing key is derived from the admin token, so every daemon that
//!   shares the admin token (several daemons on one PostgreSQL) accepts the
//!   others' job tokens; without an admin token (auth off) it is random per
//!   process.
//! - A worker token authorizes the worker protocol and, for claims, only its
//!   own kinds and queues.
//! - The dashboard's session cookie carries a value derived from the same
//!   key (`rs_{HMAC-SHA256}`), never the admin token.
//! - Tokens are compared in constant time and never logged or echoed.

use hmac::{Hmac, KeyInit, Mac};
use reeve_core::JobId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A worker token from the configuration (the secret by reference there).
#[derive(Clone)]
pub struct WorkerToken {
    /// A name for logs and the fleet view (never the secret).
    pub name: String,
    pub token: String,
    /// Kinds its workers may claim; empty = any.
    pub kinds: Vec<String>,
    /// Queues its workers may claim from; empty = any.
    pub queues: Vec<String>,
}

impl std::fmt::Debug for WorkerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerToken")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("kinds", &self.kinds)
            .field("queues", &self.queues)
            .finish()
    }
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Auth is off (no admin token configured): everyone may do everything.
    Open,
    Admin,
    /// A worker token: the worker protocol, within its kinds and queues.
    Worker {
        name: String,
        kinds: Vec<String>,
        queues: Vec<String>,
    },
    /// A job token: one run's own writes.
    Job {
        job: JobId,
        epoch: i64,
    },
}

/// Signs and checks job tokens.
#[derive(Clone)]
pub struct JobTokens {
    key: [u8; 32],
}

impl std::fmt::Debug for JobTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobTokens(<key>)")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl JobTokens {
    /// The key for `admin_token` (shared by every daemon with the same
    /// token), or a random one without.
    pub fn new(admin_token: Option<&str>) -> Self {
        let key: [u8; 32] = match admin_token {
            Some(t) => {
                let mut h = Sha256::new();
                h.update(b"reeve job tokens\0");
                h.update(t.as_bytes());
                h.finalize().into()
            }
            None => rand::random(),
        };
        JobTokens { key }
    }

    fn mac(&self, job: JobId, epoch: i64) -> String {
        self.mac_of(format!("job:{job}:{epoch}").as_bytes())
    }

    fn mac_of(&self, message: &[u8]) -> String {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("any key length");
        m.update(message);
        hex(&m.finalize().into_bytes())
    }

    /// The value of the dashboard's session cookie: derived from the key, so
    /// every daemon sharing the admin token accepts it, and the cookie (and
    /// the `Set-Cookie` of a login) never carries the admin token itself.
    pub fn session(&self) -> String {
        format!("rs_{}", self.mac_of(b"session"))
    }

    /// The token of the run of `job` at `epoch`.
    pub fn issue(&self, job: JobId, epoch: i64) -> String {
        format!("rjt_{job}_{epoch}_{}", self.mac(job, epoch))
    }

    /// The run a token was issued for, if it is genuine.
    pub fn verify(&self, token: &str) -> Option<(JobId, i64)> {
        let rest = token.strip_prefix("rjt_")?;
        let mut parts = rest.splitn(3, '_');
        let job: JobId = parts.next()?.parse().ok()?;
        let epoch: i64 = parts.next()?.parse().ok()?;
        let mac = parts.next()?;
        let expected = self.mac(job, epoch);
        bool::from(mac.as_bytes().ct_eq(expected.as_bytes())).then_some((job, epoch))
    }
}

/// What a principal may reach: `path` with `method`.
pub(crate) fn allows(p: &Principal, method: &axum::http::Method, path: &str) -> bool {
    match p {
        Principal::Open | Principal::Admin => true,
        Principal::Worker { .. } => {
            (path.starts_with("/v1/workers/") && path != "/v1/workers/")
                || run_write(path).is_some()
                || (method == axum::http::Method::GET && path == "/v1/openapi.json")
        }
        Principal::Job { job, .. } => run_write(path).is_some_and(|id| id == *job),
    }
}

/// The job of a run's own endpoints: `/v1/jobs/{id}/heartbeat | complete |
/// fail | checkpoint | mail`.
pub(crate) fn run_write(path: &str) -> Option<JobId> {
    let rest = path.strip_prefix("/v1/jobs/")?;
    let (id, action) = rest.split_once('/')?;
    matches!(
        action,
        "heartbeat" | "complete" | "fail" | "checkpoint" | "mail"
    )
    .then(|| id.parse().ok())
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn job_tokens_name_one_run() {
        let keys = JobTokens::new(Some("admin"));
        let t = keys.issue(42, 3);
        assert_eq!(keys.verify(&t), Some((42, 3)));
        assert!(!t.contains("admin"));
        let forged = t.replace("rjt_42_3_", "rjt_43_3_");
        assert_eq!(keys.verify(&forged), None, "another job");
        let other_epoch = t.replace("rjt_42_3_", "rjt_42_4_");
        assert_eq!(keys.verify(&other_epoch), None, "another epoch");
        assert_eq!(
            JobTokens::new(Some("other")).verify(&t),
            None,
            "another key"
        );
        assert_eq!(
            JobTokens::new(Some("admin")).verify(&t),
            Some((42, 3)),
            "daemons sharing the admin token agree"
        );
        assert_eq!(keys.verify("rjt_x"), None);
    }

    #[test]
    fn the_session_value_is_shared_by_daemons_and_never_the_admin_token() {
        let keys = JobTokens::new(Some("admin-secret"));
        let session = keys.session();
        assert!(session.starts_with("rs_") && !session.contains("admin-secret"));
        assert_eq!(JobTokens::new(Some("admin-secret")).session(), session);
        assert_ne!(JobTokens::new(Some("other")).session(), session);
        assert_eq!(keys.verify(&session), None, "not a job token");
    }

    #[test]
    fn principals_reach_only_their_routes() {
        let job = Principal::Job { job: 7, epoch: 1 };
        assert!(allows(&job, &Method::POST, "/v1/jobs/7/heartbeat"));
        assert!(allows(&job, &Method::PUT, "/v1/jobs/7/checkpoint"));
        assert!(!allows(&job, &Method::POST, "/v1/jobs/8/heartbeat"));
        assert!(!allows(&job, &Method::GET, "/v1/jobs/7"));
        assert!(!allows(&job, &Method::POST, "/v1/jobs/7/cancel"));
        assert!(!allows(&job, &Method::GET, "/v1/status"));
        let worker = Principal::Worker {
            name: "w".into(),
            kinds: vec![],
            queues: vec![],
        };
        assert!(allows(&worker, &Method::POST, "/v1/workers/register"));
        assert!(allows(&worker, &Method::POST, "/v1/jobs/9/complete"));
        assert!(!allows(&worker, &Method::GET, "/v1/jobs"));
        assert!(!allows(&worker, &Method::POST, "/v1/schedules/x/run"));
        assert!(allows(&Principal::Admin, &Method::GET, "/v1/status"));
    }
}
