//! A typed client of the worker protocol: register, long-poll claim,
//! heartbeat, complete, fail, deregister, and the job-token endpoints of a
//! run (checkpoint save and load, mail).
//!
//! **Invariants.** One call is one HTTP request, bounded by the client's
//! timeout (a claim by its wait plus that timeout), and never retried here:
//! retrying is the caller's choice, guided by [`Error::is_transient`]. The
//! worker token goes with the worker endpoints; a run's own writes carry
//! that run's job token, so the daemon can refuse them for any other job or
//! epoch. Tokens are never logged.

use std::time::Duration;

use reeve_core::{Job, JobId};
use reeve_store::{Checkpoint, Mail};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::wire::{
    ClaimRequest, ClaimResponse, ClaimedRun, Complete, Deregistered, Fail, HeartbeatRequest,
    HeartbeatResponse, MailList, Registered, Registration, RunAnswer, RunBeat,
};

/// How long one request may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest long-poll the daemon grants a claim.
pub const MAX_CLAIM_WAIT: Duration = Duration::from_secs(30);

/// A client of one daemon. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Who a request speaks for.
enum Bearer<'a> {
    /// The worker token (if any).
    Worker,
    /// A run's job token.
    Run(&'a str),
}

impl Client {
    /// A client of the daemon at `url` (`http://host:port`), without a
    /// token (for a daemon with auth off).
    pub fn new(url: &str) -> Result<Client, Error> {
        let base = url.trim().trim_end_matches('/');
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
            .ok_or_else(|| {
                Error::invalid("url", format!("must start with http://, got {url:?}"))
            })?;
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(Error::invalid(
                "url",
                format!("must name a host, got {url:?}"),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::invalid("url", format!("cannot build an HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: base.to_string(),
            token: None,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same client, authenticating worker calls with `token` (a worker
    /// token, or the admin token).
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into());
        self
    }

    /// The same client (sharing its connections) with another bound on each
    /// request.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            timeout,
            ..self.clone()
        }
    }

    /// The daemon's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Registers a worker process; every registration gets a fresh id.
    pub async fn register(&self, registration: &Registration) -> Result<Registered, Error> {
        self.json(
            Method::POST,
            "/v1/workers/register",
            Bearer::Worker,
            Some(registration),
            self.timeout,
        )
        .await
    }

    /// Claims up to `limit` (1 to 100) runs of the worker's kinds and queues,
    /// waiting up to `wait` (at most 30 s) for one to become claimable.
    pub async fn claim(
        &self,
        worker: &str,
        limit: u32,
        wait: Duration,
    ) -> Result<Vec<ClaimedRun>, Error> {
        if !(1..=100).contains(&limit) {
            return Err(Error::invalid("limit", "must be between 1 and 100"));
        }
        let wait = wait.min(MAX_CLAIM_WAIT);
        let body = ClaimRequest {
            limit,
            wait_ms: wait.as_millis() as u64,
        };
        let answer: ClaimResponse = self
            .json(
                Method::POST,
                &format!("/v1/workers/{}/claim", segment(worker)?),
                Bearer::Worker,
                Some(&body),
                wait + self.timeout,
            )
            .await?;
        Ok(answer.runs)
    }

    /// Heartbeats the worker and each of `runs` (each fenced on its epoch);
    /// one answer per run.
    pub async fn heartbeat(&self, worker: &str, runs: &[RunBeat]) -> Result<Vec<RunAnswer>, Error> {
        let answer: HeartbeatResponse = self
            .json(
                Method::POST,
                &format!("/v1/workers/{}/heartbeat", segment(worker)?),
                Bearer::Worker,
                Some(&HeartbeatRequest { runs }),
                self.timeout,
            )
            .await?;
        Ok(answer.runs)
    }

    /// Completes the run of `job` at `complete.epoch` with its job token.
    /// [`Error::Conflict`] means it was no longer this run's to complete.
    pub async fn complete(
        &self,
        job: JobId,
        token: &str,
        complete: &Complete,
    ) -> Result<Job, Error> {
        self.json(
            Method::POST,
            &format!("/v1/jobs/{job}/complete"),
            Bearer::Run(token),
            Some(complete),
            self.timeout,
        )
        .await
    }

    /// Fails the run of `job` at `fail.epoch` with its job token.
    pub async fn fail(&self, job: JobId, token: &str, fail: &Fail) -> Result<Job, Error> {
        self.json(
            Method::POST,
            &format!("/v1/jobs/{job}/fail"),
            Bearer::Run(token),
            Some(fail),
            self.timeout,
        )
        .await
    }

    /// Deregisters the worker; the runs it still holds are released at once
    /// for retry (`worker_shutdown`).
    pub async fn deregister(&self, worker: &str) -> Result<Deregistered, Error> {
        self.json::<(), _>(
            Method::POST,
            &format!("/v1/workers/{}/deregister", segment(worker)?),
            Bearer::Worker,
            None,
            self.timeout,
        )
        .await
    }

    /// Saves `data` as the job's checkpoint, fenced on the run's `epoch`
    /// (given explicitly: a daemon with auth off does not read it from the
    /// token).
    pub async fn save_checkpoint(
        &self,
        job: JobId,
        epoch: i64,
        token: &str,
        data: Vec<u8>,
    ) -> Result<Checkpoint, Error> {
        let request = self
            .request(
                Method::PUT,
                &format!("/v1/jobs/{job}/checkpoint?epoch={epoch}"),
                Bearer::Run(token),
                self.timeout,
            )
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(data);
        decode(send(request, "checkpoint").await?)
    }

    /// The job's latest checkpoint, if it has one.
    pub async fn load_checkpoint(&self, job: JobId, token: &str) -> Result<Option<Vec<u8>>, Error> {
        let request = self.request(
            Method::GET,
            &format!("/v1/jobs/{job}/checkpoint"),
            Bearer::Run(token),
            self.timeout,
        );
        match send(request, "checkpoint").await {
            Ok(body) => Ok(Some(body)),
            Err(Error::NotFound(r)) if r.code == "not_found" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The job's mail, oldest first; what was unread is marked read.
    pub async fn read_mail(&self, job: JobId, token: &str) -> Result<Vec<Mail>, Error> {
        let list: MailList = self
            .json::<(), _>(
                Method::GET,
                &format!("/v1/jobs/{job}/mail"),
                Bearer::Run(token),
                None,
                self.timeout,
            )
            .await?;
        Ok(list.mail)
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        bearer: Bearer<'_>,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(timeout);
        match bearer {
            Bearer::Run(token) => request.bearer_auth(token),
            Bearer::Worker => match &self.token {
                Some(token) => request.bearer_auth(token),
                None => request,
            },
        }
    }

    async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        bearer: Bearer<'_>,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, Error> {
        let mut request = self.request(method, path, bearer, timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        decode(send(request, path).await?)
    }
}

/// A worker id as one path segment: ids are `w-` and hex digits, so
/// anything that would need escaping is refused before it is sent.
fn segment(worker: &str) -> Result<&str, Error> {
    if worker.is_empty()
        || !worker
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::invalid(
            "worker",
            format!("not a worker id: {worker:?}"),
        ));
    }
    Ok(worker)
}

/// Sends `request`; a success answer's body, or the error its status means.
async fn send(request: reqwest::RequestBuilder, what: &str) -> Result<Vec<u8>, Error> {
    let response = request
        .send()
        .await
        .map_err(|e| Error::Transient(format!("{what}: {}", with_sources(&e))))?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(|e| {
        Error::Transient(format!("{what}: reading the answer: {}", with_sources(&e)))
    })?;
    if (200..300).contains(&status) {
        Ok(body.to_vec())
    } else {
        Err(Error::from_status(status, &body, what))
    }
}

fn decode<T: DeserializeOwned>(body: Vec<u8>) -> Result<T, Error> {
    serde_json::from_slice(&body).map_err(|e| Error::Protocol(e.to_string()))
}

/// An HTTP error's text with its source chain (connection refused, timed
/// out), which reqwest's own text leaves out.
fn with_sources(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
