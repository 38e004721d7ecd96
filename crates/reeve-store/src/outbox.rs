//! The webhook outbox (SPEC §10): deliveries that must never be lost and
//! never block the engine — the types of the [`Store`](crate::Store)
//! methods that keep them, and the bodies the backends write.
//!
//! **What this module owns.** [`WebhookEvent`] is the closed set of events
//! a webhook can subscribe to. [`Subscriptions`] (given to the store at open,
//! in [`StoreConfig`](crate::StoreConfig)) says which webhook wants which.
//! [`NewDelivery`] is one outbox row: one event for one webhook, with its
//! JSON body fixed at write time, so every retry sends the same bytes.
//!
//! **Invariants** (kept by every backend, checked by the conformance suite):
//! - A row is written **in the same transaction** as the change it reports:
//!   the escalation, the auto-pause of a schedule (the settle path of every
//!   terminal transition), the transition to `failed` (finish, reap,
//!   release). A rolled-back change leaves no row; a committed one always
//!   has its rows.
//! - Rows are written only for events some webhook subscribes to: with no
//!   webhooks, nothing is written.
//! - A claim ([`Store::claim_deliveries`](crate::Store::claim_deliveries)) is
//!   one atomic statement that makes the rows it takes not due for the claim
//!   lease and counts the attempt, so concurrent claimers (several daemons)
//!   never hold one row at once; a claimer that dies leaves its rows due
//!   again when the lease passes. Recording the result is fenced on the
//!   attempt number.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use reeve_core::{FailureReason, Job, JobId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::settle::Settlement;

/// What a webhook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// A stalled run stayed without progress for `escalate_after` more.
    Escalation,
    /// Failure streaks paused a schedule.
    ScheduleAutoPaused,
    /// A job reached `failed` (no attempts left, or a final reason).
    JobFailed,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 3] = [
        WebhookEvent::Escalation,
        WebhookEvent::ScheduleAutoPaused,
        WebhookEvent::JobFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Escalation => "escalation",
            WebhookEvent::ScheduleAutoPaused => "schedule_auto_paused",
            WebhookEvent::JobFailed => "job_failed",
        }
    }
}

impl fmt::Display for WebhookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WebhookEvent {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WebhookEvent::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown webhook event {s:?}; expected one of escalation, schedule_auto_paused, job_failed"
                )
            })
    }
}

/// Which webhook (by name) receives which events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscriptions {
    targets: Vec<(String, Vec<WebhookEvent>)>,
}

impl Subscriptions {
    /// No webhook: the store writes no outbox row at all.
    pub fn none() -> Self {
        Subscriptions::default()
    }

    /// Adds a webhook named `target` receiving `events`.
    pub fn with(mut self, target: impl Into<String>, events: &[WebhookEvent]) -> Self {
        self.targets.push((target.into(), events.to_vec()));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.targets.iter().all(|(_, events)| events.is_empty())
    }

    /// Whether some webhook receives `event`.
    pub fn wants(&self, event: WebhookEvent) -> bool {
        self.targets.iter().any(|(_, e)| e.contains(&event))
    }

    /// The webhooks that receive `event`.
    pub fn targets_of(&self, event: WebhookEvent) -> impl Iterator<Item = &str> {
        self.targets
            .iter()
            .filter(move |(_, e)| e.contains(&event))
            .map(|(name, _)| name.as_str())
    }
}

/// One outbox row to write: one event for one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The webhook's name.
    pub target: String,
    pub event: WebhookEvent,
    /// The delivery's id (`X-Reeve-Delivery`), the same on every retry.
    pub delivery: String,
    /// The JSON body, sent as is on every attempt.
    pub body: String,
}

/// A claimed outbox row, to be sent now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub target: String,
    pub event: String,
    pub delivery: String,
    pub body: String,
    /// This attempt's number (1 for the first); results are fenced on it.
    pub attempt: i32,
    pub created_at: Timestamp,
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Try again after `after` (the store's clock).
    Retry { after: Duration, error: String },
    /// No more attempts.
    GiveUp { error: String },
}

/// A fresh delivery id: 32 random hex digits.
pub fn new_delivery_id() -> String {
    use rand::RngExt;
    format!("{:032x}", rand::rng().random::<u128>())
}

/// The part of a job a webhook body carries (not its payload or result,
/// which may be large).
fn job_summary(job: &Job) -> serde_json::Value {
    serde_json::json!({
        "id": job.id,
        "queue": job.queue,
        "kind": job.kind,
        "state": job.state,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "epoch": job.epoch,
        "worker": job.claimed_by,
        "schedule": job.schedule,
        "turns": job.turns,
        "progress": job.progress,
        "failure_reason": job.failure_reason.map(FailureReason::as_str),
        "last_error": job.last_error.as_deref().map(|e| crate::transition::truncate(e, 1000)),
        "claimed_at": job.claimed_at,
        "progress_at": job.progress_at,
        "stalled_at": job.stalled_at,
        "escalated_at": job.escalated_at,
        "finished_at": job.finished_at,
    })
}

/// One row per webhook receiving `event`, each with its own delivery id in
/// its body (`{event, delivery, at, ...fields}`).
fn rows(
    subs: &Subscriptions,
    event: WebhookEvent,
    at: i64,
    fields: serde_json::Map<String, serde_json::Value>,
) -> Vec<NewDelivery> {
    subs.targets_of(event)
        .map(|target| {
            let delivery = new_delivery_id();
            let mut body = serde_json::Map::new();
            body.insert("event".into(), event.as_str().into());
            body.insert("delivery".into(), delivery.clone().into());
            body.insert(
                "at".into(),
                serde_json::to_value(Timestamp(at)).expect("a timestamp serializes"),
            );
            body.extend(fields.clone());
            NewDelivery {
                target: target.to_string(),
                event,
                delivery,
                body: serde_json::Value::Object(body).to_string(),
            }
        })
        .collect()
}

fn fields(
    pairs: impl IntoIterator<Item = (&'static str, serde_json::Value)>,
) -> serde_json::Map<String, serde_json::Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The rows of an escalation of `job` at `at`.
pub fn escalation(subs: &Subscriptions, job: &Job, at: i64) -> Vec<NewDelivery> {
    if !subs.wants(WebhookEvent::Escalation) {
        return Vec::new();
    }
    let silent = crate::supervision::silent_for(job, at);
    rows(
        subs,
        WebhookEvent::Escalation,
        at,
        fields([
            ("job", job_summary(job)),
            ("schedule", job.schedule.clone().into()),
            ("no_progress_seconds", silent.as_secs().into()),
        ]),
    )
}

/// The rows of the terminal transitions of one transaction: `job_failed`
/// for each of `ended` that is now `failed`, and `schedule_auto_paused` for
/// each settlement in `settled` that paused its schedule.
pub fn ended(
    subs: &Subscriptions,
    ended: &[&Job],
    settled: &[(String, Settlement)],
    at: i64,
) -> Vec<NewDelivery> {
    if subs.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    if subs.wants(WebhookEvent::JobFailed) {
        for job in ended
            .iter()
            .filter(|j| j.state == reeve_core::JobState::Failed)
        {
            out.extend(rows(
                subs,
                WebhookEvent::JobFailed,
                at,
                fields([
                    ("job", job_summary(job)),
                    ("schedule", job.schedule.clone().into()),
                ]),
            ));
        }
    }
    if subs.wants(WebhookEvent::ScheduleAutoPaused) {
        for (schedule, s) in settled {
            let Some(reason) = &s.auto_paused else {
                continue;
            };
            let job = ended.iter().find(|j| j.id == s.job_id);
            out.extend(rows(
                subs,
                WebhookEvent::ScheduleAutoPaused,
                at,
                fields([
                    (
                        "schedule",
                        serde_json::json!({
                            "name": schedule,
                            "reason": reason,
                            "generic_streak": s.generic_streak,
                            "budget_streak": s.budget_streak,
                        }),
                    ),
                    (
                        "job",
                        job.map_or(serde_json::Value::Null, |j| job_summary(j)),
                    ),
                ]),
            ));
        }
    }
    out
}

/// The id of the job a row's body names, if any (for log lines and tests).
pub fn body_job_id(body: &str) -> Option<JobId> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()?
        .get("job")?
        .get("id")?
        .as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_round_trip_and_unknown_ones_are_named() {
        for e in WebhookEvent::ALL {
            assert_eq!(e.as_str().parse::<WebhookEvent>(), Ok(e));
        }
        let err = "job_done".parse::<WebhookEvent>().unwrap_err();
        assert!(
            err.contains("job_done") && err.contains("job_failed"),
            "{err}"
        );
    }

    #[test]
    fn rows_go_to_the_subscribers_only() {
        let subs = Subscriptions::none()
            .with("ops", &[WebhookEvent::Escalation, WebhookEvent::JobFailed])
            .with("pager", &[WebhookEvent::Escalation]);
        assert_eq!(
            subs.targets_of(WebhookEvent::Escalation)
                .collect::<Vec<_>>(),
            ["ops", "pager"]
        );
        assert!(!subs.wants(WebhookEvent::ScheduleAutoPaused));
        assert!(Subscriptions::none().is_empty());
        let mut job = crate::transition::with_id(
            crate::transition::materialize(
                &crate::StoreConfig::default(),
                reeve_core::NewJob::new("q", "k"),
                0,
            ),
            7,
        );
        job.state = reeve_core::JobState::Failed;
        let rows = ended(&subs, &[&job], &[], 1_000);
        assert_eq!(rows.len(), 1, "only ops takes job_failed");
        assert_eq!(rows[0].target, "ops");
        let body: serde_json::Value = serde_json::from_str(&rows[0].body).unwrap();
        assert_eq!(body["event"], "job_failed");
        assert_eq!(body["delivery"], rows[0].delivery.as_str());
        assert_eq!(body["job"]["id"], 7);
        assert_eq!(body_job_id(&rows[0].body), Some(7));
        let esc = escalation(&subs, &job, 2_000);
        assert_eq!(esc.len(), 2);
        assert_ne!(esc[0].delivery, esc[1].delivery, "one delivery id per row");
    }
}
