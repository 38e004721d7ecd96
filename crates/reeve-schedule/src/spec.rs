//! The declarative shape of a schedule and its validation.
//!
//! [`ScheduleSpec`] is what a person writes (a `[[schedule]]` table in TOML,
//! an object in JSON, an API body); [`ScheduleSpec::validate`] turns it into
//! a [`ValidSchedule`] whose every field is checked and resolved to its
//! default. [`diff`] compares two valid schedules field by field, which is how
//! `reeve apply` says created / changed / unchanged.
//!
//! # Invariants
//!
//! - Unknown fields are rejected at every level (`deny_unknown_fields`), so a
//!   typo never silently becomes a default.
//! - Every validation error is an [`InputError`] whose `field` is the path as
//!   written in the file: `name`, `cron`, `timezone`, `every`, `jitter`,
//!   `job.kind`, `job.max_run_duration`, `misfire`, ….
//! - The job template is validated by the same code as an enqueue
//!   ([`EnqueueRequest::validate`]), so a schedule can never hold a job the API
//!   would refuse.
//! - `spec.validate()?.to_spec().validate()` gives the same schedule back.
//!
//! ```
//! use reeve_schedule::spec::ScheduleSpec;
//! let spec: ScheduleSpec = serde_json::from_str(
//!     r#"{"name": "aibtc-heartbeat", "every": 3600, "job": {"kind": "heartbeat"}}"#,
//! ).unwrap();
//! let valid = spec.validate().unwrap();
//! assert_eq!(valid.rule.describe(), "every 1h");
//! ```

use std::fmt;
use std::time::Duration;

use reeve_core::job::{Availability, DEFAULT_MAX_PAYLOAD_BYTES, EnqueueRequest, NewJob};
use reeve_core::time::{check_duration, format_duration, human_duration, parse_duration};
use reeve_core::{FailureReason, InputError, Timestamp, validate};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::policy::{MAX_CATCH_UP_MAX, MisfirePolicy, OverlapPolicy, ScheduleStatus};
use crate::rule::Rule;

/// Longest `description` accepted, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1000;

/// A schedule as written in a file or an API body.
///
/// Exactly one of `cron` (with an optional `timezone`, default `UTC`) or
/// `every` (with an optional `jitter`) gives the rule. Durations are human
/// strings (`"1h30m"`) or whole seconds (`3600`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<DurationValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<DurationValue>,
    pub job: JobSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<OverlapPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire: Option<MisfirePolicy>,
    /// `None` = the file does not manage the status: a new schedule starts
    /// active and an existing one keeps its own (so re-applying a file never
    /// resumes a schedule that was paused by hand or by a failure streak).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ScheduleStatus>,
}

/// The job a schedule fires: the fields of an enqueue that make sense for a
/// recurring job (no delay, run-at or keys: the firing sets those).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_run_duration: Option<DurationValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout: Option<DurationValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<i64>,
    /// Ad-hoc argv for the process executor instead of the kind's template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<String>>,
    /// Labels the claimer of every firing must have (`key=value`, SPEC §6):
    /// pins the schedule's work to matching workers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
}

/// A duration as written: a human string (`"90s"`, `"1h30m"`) or a whole
/// number of seconds (`3600`), as fixtures often give intervals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationValue {
    Text(String),
    Seconds(i64),
}

impl DurationValue {
    /// The value in the human form [`parse_duration`] reads (`3600` → `3600s`).
    pub fn to_text(&self) -> String {
        match self {
            DurationValue::Text(s) => s.clone(),
            DurationValue::Seconds(n) => format!("{n}s"),
        }
    }

    /// Parses the value; errors name `field`.
    pub fn to_duration(&self, field: &str) -> Result<Duration, InputError> {
        match self {
            DurationValue::Seconds(n) if *n < 0 => Err(InputError::new(
                field,
                format!("must not be negative, got {n}"),
            )),
            DurationValue::Seconds(n) => {
                check_duration(Duration::from_secs(n.unsigned_abs()), &n.to_string())
                    .map_err(|m| InputError::new(field, m))
            }
            DurationValue::Text(t) => parse_duration(t).map_err(|m| {
                // Range errors (negative, sub-millisecond, too long) say what
                // is wrong; only "not a duration at all" gets the hint.
                if !m.starts_with("expected") {
                    InputError::new(field, m)
                } else {
                    InputError::new(
                        field,
                        format!(
                            "expected a duration like 90s, 20m or 1h30m, or a whole number of seconds; got {t:?}"
                        ),
                    )
                }
            }),
        }
    }
}

impl From<Duration> for DurationValue {
    fn from(d: Duration) -> Self {
        DurationValue::Text(format_duration(d))
    }
}

impl Serialize for DurationValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DurationValue::Text(t) => s.serialize_str(t),
            DurationValue::Seconds(n) => s.serialize_i64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like \"90s\" or \"1h30m\", or a whole number of seconds")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationValue, E> {
                Ok(DurationValue::Text(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationValue, E> {
                Ok(DurationValue::Seconds(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationValue, E> {
                i64::try_from(v)
                    .map(DurationValue::Seconds)
                    .map_err(|_| E::custom("duration is too large"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A validated schedule, every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSchedule {
    pub name: String,
    pub description: Option<String>,
    pub rule: Rule,
    pub job: JobTemplate,
    pub overlap: OverlapPolicy,
    pub misfire: MisfirePolicy,
    /// See [`ScheduleSpec::status`]: `None` leaves the stored status alone.
    pub status: Option<ScheduleStatus>,
}

/// The job each firing enqueues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTemplate {
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub priority: i32,
    pub max_attempts: i32,
    #[serde(with = "human_duration::option", default)]
    pub max_run_duration: Option<Duration>,
    #[serde(with = "human_duration::option", default)]
    pub heartbeat_timeout: Option<Duration>,
    pub max_turns: Option<i64>,
    pub command: Option<Vec<String>>,
    pub retry_on: Option<Vec<FailureReason>>,
    /// Copied into every firing's job (canonical form).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
}

/// The idempotency key of the firing of schedule `name` at `nominal`:
/// `name@2026-03-29T01:00:00.000Z`. One nominal time, one job, whatever number
/// of daemons race to fire it.
pub fn firing_key(name: &str, nominal: Timestamp) -> String {
    format!("{name}@{nominal}")
}

impl JobTemplate {
    /// The job for the firing of schedule `schedule` at `nominal`: the
    /// template with the firing's idempotency key ([`firing_key`]). It is
    /// available at once; the engine may set a later availability (jitter).
    pub fn new_job(&self, schedule: &str, nominal: Timestamp) -> NewJob {
        NewJob {
            queue: self.queue.clone(),
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            priority: self.priority,
            max_attempts: self.max_attempts,
            unique_key: None,
            idempotency_key: Some(firing_key(schedule, nominal)),
            max_run_duration: self.max_run_duration,
            heartbeat_timeout: self.heartbeat_timeout,
            availability: Availability::Now,
            command: self.command.clone(),
            max_turns: self.max_turns,
            retry_on: self.retry_on.clone(),
            schedule: Some(schedule.to_string()),
            nominal_at: Some(nominal),
            on_success: None,
            requires: self.requires.clone(),
        }
    }
}

impl ScheduleSpec {
    /// Validates with the default payload limit (1 MiB).
    pub fn validate(&self) -> Result<ValidSchedule, InputError> {
        self.validate_with_limit(DEFAULT_MAX_PAYLOAD_BYTES)
    }

    /// Validates every field; the first problem is returned, its field named
    /// by its path in the file (`job.kind`).
    pub fn validate_with_limit(
        &self,
        max_payload_bytes: usize,
    ) -> Result<ValidSchedule, InputError> {
        validate::name("name", &self.name)?;
        if let Some(d) = &self.description {
            if d.chars().count() > MAX_DESCRIPTION_CHARS {
                return Err(InputError::new(
                    "description",
                    format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
                ));
            }
            if d.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                return Err(InputError::new(
                    "description",
                    "must not contain control characters",
                ));
            }
        }
        // Check the durations first, so their errors mention whole seconds.
        let every = self
            .every
            .as_ref()
            .map(|v| v.to_duration("every").map(|_| v.to_text()))
            .transpose()?;
        let jitter = self
            .jitter
            .as_ref()
            .map(|v| v.to_duration("jitter").map(|_| v.to_text()))
            .transpose()?;
        let rule = Rule::parse(
            self.cron.as_deref(),
            self.timezone.as_deref(),
            every.as_deref(),
            jitter.as_deref(),
        )?;
        let job = self.job.validate(max_payload_bytes)?;
        if let Some(MisfirePolicy::CatchUp { max }) = self.misfire
            && !(1..=MAX_CATCH_UP_MAX).contains(&max)
        {
            return Err(InputError::new(
                "misfire",
                format!("max must be between 1 and {MAX_CATCH_UP_MAX}"),
            ));
        }
        Ok(ValidSchedule {
            name: self.name.clone(),
            description: self.description.clone(),
            rule,
            job,
            overlap: self.overlap.unwrap_or_default(),
            misfire: self.misfire.unwrap_or_default(),
            status: self.status,
        })
    }
}

impl JobSpec {
    fn validate(&self, max_payload_bytes: usize) -> Result<JobTemplate, InputError> {
        let duration = |field: &str, v: &Option<DurationValue>| {
            v.as_ref()
                .map(|v| v.to_duration(field).map(|_| v.to_text()))
                .transpose()
        };
        let request = EnqueueRequest {
            queue: self.queue.clone(),
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            priority: self.priority,
            max_attempts: self.max_attempts,
            unique_key: None,
            idempotency_key: None,
            max_run_duration: duration("job.max_run_duration", &self.max_run_duration)?,
            heartbeat_timeout: duration("job.heartbeat_timeout", &self.heartbeat_timeout)?,
            delay: None,
            run_at: None,
            command: self.command.clone(),
            max_turns: self.max_turns,
            retry_on: self.retry_on.clone(),
            on_success: None,
            requires: self.requires.clone(),
        };
        let job = request.validate("job.", max_payload_bytes)?;
        Ok(JobTemplate {
            queue: job.queue,
            kind: job.kind,
            payload: job.payload,
            priority: job.priority,
            max_attempts: job.max_attempts,
            max_run_duration: job.max_run_duration,
            heartbeat_timeout: job.heartbeat_timeout,
            max_turns: job.max_turns,
            command: job.command,
            retry_on: job.retry_on,
            requires: job.requires,
        })
    }
}

impl ValidSchedule {
    /// The schedule written back in its declarative shape, every resolved
    /// default explicit. Validating it gives `self` back, so it is what a
    /// store can keep and what `reeve get schedule -o json` can print.
    pub fn to_spec(&self) -> ScheduleSpec {
        let j = &self.job;
        ScheduleSpec {
            name: self.name.clone(),
            description: self.description.clone(),
            cron: self.rule.cron_expr().map(str::to_string),
            timezone: self.rule.timezone().map(str::to_string),
            every: self.rule.interval().map(DurationValue::from),
            jitter: self.rule.jitter().map(DurationValue::from),
            job: JobSpec {
                queue: Some(j.queue.clone()),
                kind: j.kind.clone(),
                payload: Some(j.payload.clone()),
                priority: Some(j.priority),
                max_attempts: Some(j.max_attempts),
                max_run_duration: j.max_run_duration.map(DurationValue::from),
                heartbeat_timeout: j.heartbeat_timeout.map(DurationValue::from),
                max_turns: j.max_turns,
                command: j.command.clone(),
                retry_on: j
                    .retry_on
                    .as_ref()
                    .map(|r| r.iter().map(|f| f.as_str().to_string()).collect()),
                requires: j.requires.clone(),
            },
            overlap: Some(self.overlap),
            misfire: Some(self.misfire),
            status: self.status,
        }
    }
}

/// How a schedule in a file compares to the stored one of the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Changed {
        /// The changed fields, by their path in the file (`cron`, `job.kind`).
        fields: Vec<&'static str>,
        /// Only the rule changed (`cron`, `timezone`, `every`, `jitter`). A
        /// change never resets a schedule's history or counters; this tells
        /// the engine that only the next fire time needs recomputing.
        cadence_only: bool,
    },
}

/// The fields that make up the rule.
pub const CADENCE_FIELDS: [&str; 4] = ["cron", "timezone", "every", "jitter"];

impl Change {
    /// Whether `field` (a path like `job.max_turns`) changed.
    pub fn touches(&self, field: &str) -> bool {
        match self {
            Change::Unchanged => false,
            Change::Changed { fields, .. } => fields.contains(&field),
        }
    }

    /// Whether the rule changed, so the next fire time must be recomputed.
    pub fn cadence_changed(&self) -> bool {
        CADENCE_FIELDS.iter().any(|f| self.touches(f))
    }
}

/// Compares `new` (from a file) against `existing` (stored), field by field.
/// A `new.status` of `None` never counts as a change (the file does not
/// manage it).
pub fn diff(existing: &ValidSchedule, new: &ValidSchedule) -> Change {
    let mut fields = Vec::new();
    let mut check = |changed: bool, field: &'static str| {
        if changed {
            fields.push(field);
        }
    };
    let (a, b) = (&existing.rule, &new.rule);
    check(a.cron_expr() != b.cron_expr(), "cron");
    check(a.timezone() != b.timezone(), "timezone");
    check(a.interval() != b.interval(), "every");
    check(a.jitter() != b.jitter(), "jitter");
    check(existing.description != new.description, "description");
    let (a, b) = (&existing.job, &new.job);
    check(a.queue != b.queue, "job.queue");
    check(a.kind != b.kind, "job.kind");
    check(a.payload != b.payload, "job.payload");
    check(a.priority != b.priority, "job.priority");
    check(a.max_attempts != b.max_attempts, "job.max_attempts");
    check(
        a.max_run_duration != b.max_run_duration,
        "job.max_run_duration",
    );
    check(
        a.heartbeat_timeout != b.heartbeat_timeout,
        "job.heartbeat_timeout",
    );
    check(a.max_turns != b.max_turns, "job.max_turns");
    check(a.command != b.command, "job.command");
    check(a.retry_on != b.retry_on, "job.retry_on");
    check(a.requires != b.requires, "job.requires");
    check(existing.overlap != new.overlap, "overlap");
    check(existing.misfire != new.misfire, "misfire");
    check(
        new.status
            .is_some_and(|s| s != existing.status.unwrap_or_default()),
        "status",
    );
    if fields.is_empty() {
        Change::Unchanged
    } else {
        let cadence_only = fields.iter().all(|f| CADENCE_FIELDS.contains(f));
        Change::Changed {
            fields,
            cadence_only,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> ScheduleSpec {
        serde_json::from_value(v).unwrap()
    }

    fn field_of(v: serde_json::Value) -> String {
        spec(v).validate().unwrap_err().field
    }

    #[test]
    fn the_seed_fixture_shape_is_valid() {
        for every in [json!("3600s"), json!(3600)] {
            let v = spec(json!({
                "name": "aibtc-heartbeat",
                "every": every,
                "job": {"kind": "heartbeat", "payload": {"agent": "spark", "endpoint": "/api/heartbeat"}}
            }))
            .validate()
            .unwrap();
            assert_eq!(v.rule.interval(), Some(Duration::from_secs(3600)));
            assert_eq!(v.job.queue, "default");
            assert_eq!(v.job.payload["agent"], "spark");
            assert_eq!(v.overlap, OverlapPolicy::Skip);
            assert_eq!(v.misfire, MisfirePolicy::FireOnce);
            assert_eq!(v.status, None);
        }
    }

    #[test]
    fn errors_name_the_field_path() {
        let base = || json!({"name": "n", "cron": "0 * * * *", "job": {"kind": "k"}});
        let with = |k: &str, v: serde_json::Value| {
            let mut b = base();
            b[k] = v;
            b
        };
        assert_eq!(field_of(with("name", json!("has space"))), "name");
        assert_eq!(field_of(with("cron", json!("61 * * * *"))), "cron");
        assert_eq!(
            field_of(with("timezone", json!("Nowhere/Special"))),
            "timezone"
        );
        assert_eq!(field_of(with("jitter", json!("5m"))), "jitter");
        assert_eq!(field_of(with("every", json!("1h"))), "every");
        assert_eq!(
            field_of(with("description", json!("x".repeat(1001)))),
            "description"
        );
        assert_eq!(
            field_of(with("job", json!({"kind": "bad kind"}))),
            "job.kind"
        );
        assert_eq!(
            field_of(with("job", json!({"kind": "k", "queue": ""}))),
            "job.queue"
        );
        assert_eq!(
            field_of(with("job", json!({"kind": "k", "max_run_duration": "-1s"}))),
            "job.max_run_duration"
        );
        assert_eq!(
            field_of(with("job", json!({"kind": "k", "heartbeat_timeout": 0}))),
            "job.heartbeat_timeout"
        );
        assert_eq!(
            field_of(with("job", json!({"kind": "k", "max_turns": 0}))),
            "job.max_turns"
        );
        assert_eq!(
            field_of(with("job", json!({"kind": "k", "retry_on": ["nope"]}))),
            "job.retry_on"
        );
        assert_eq!(
            field_of(with("job", json!({"kind": "k", "command": []}))),
            "job.command"
        );
        assert_eq!(
            field_of(with(
                "job",
                json!({"kind": "k", "requires": ["device=a", "device"]})
            )),
            "job.requires[1]"
        );
        let mut no_rule = base();
        no_rule.as_object_mut().unwrap().remove("cron");
        assert_eq!(field_of(no_rule), "cron");
        let every = json!({"name": "n", "every": -5, "job": {"kind": "k"}});
        let e = spec(every).validate().unwrap_err();
        assert_eq!(e.field, "every");
        assert!(e.message.contains("negative"), "{e}");
        let e = spec(json!({"name": "n", "every": "soon", "job": {"kind": "k"}}))
            .validate()
            .unwrap_err();
        assert!(e.message.contains("whole number of seconds"), "{e}");
        let mut s = spec(base());
        s.misfire = Some(MisfirePolicy::CatchUp { max: 0 });
        assert_eq!(s.validate().unwrap_err().field, "misfire");
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level() {
        let e = serde_json::from_value::<ScheduleSpec>(
            json!({"name": "n", "cron": "* * * * *", "job": {"kind": "k"}, "crn": "x"}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("crn"), "{e}");
        let e = serde_json::from_value::<ScheduleSpec>(
            json!({"name": "n", "cron": "* * * * *", "job": {"kind": "k", "prio": 1}}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("prio"), "{e}");
        let e = serde_json::from_value::<ScheduleSpec>(
            json!({"name": "n", "cron": "* * * * *", "job": {"kind": "k", "delay": "1s"}}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("delay"), "{e}");
    }

    #[test]
    fn to_spec_round_trips() {
        for v in [
            json!({"name": "a", "cron": "30 9 * * MON-FRI", "timezone": "europe/berlin",
                   "job": {"kind": "k", "max_turns": 40, "retry_on": ["timeout"], "command": ["echo", "hi"],
                           "max_run_duration": 5400, "heartbeat_timeout": "2m",
                           "requires": ["gpu=1", "device=alice-mac"]},
                   "overlap": "queue_one", "misfire": {"policy": "catch_up", "max": 3}, "status": "paused",
                   "description": "weekday standup"}),
            json!({"name": "b", "every": "90s", "jitter": "10s", "job": {"kind": "k", "priority": -5}}),
        ] {
            let valid = spec(v).validate().unwrap();
            let round = valid.to_spec();
            assert_eq!(round.validate().unwrap(), valid);
            let json = serde_json::to_value(&round).unwrap();
            let back: ScheduleSpec = serde_json::from_value(json).unwrap();
            assert_eq!(back.validate().unwrap(), valid);
        }
    }

    #[test]
    fn diff_reports_unchanged_changed_and_cadence_only() {
        let base = json!({"name": "a", "cron": "0 * * * *", "job": {"kind": "k", "max_turns": 10}});
        let a = spec(base.clone()).validate().unwrap();
        assert_eq!(diff(&a, &a.clone()), Change::Unchanged);
        // Defaults written out are not a change.
        let explicit = spec(json!({"name": "a", "cron": "0 * * * *", "timezone": "UTC",
            "job": {"kind": "k", "max_turns": 10, "queue": "default", "priority": 0},
            "overlap": "skip", "misfire": "fire_once"}))
        .validate()
        .unwrap();
        assert_eq!(diff(&a, &explicit), Change::Unchanged);

        let cadence =
            spec(json!({"name": "a", "every": "30m", "job": {"kind": "k", "max_turns": 10}}))
                .validate()
                .unwrap();
        let change = diff(&a, &cadence);
        assert_eq!(
            change,
            Change::Changed {
                fields: vec!["cron", "timezone", "every"],
                cadence_only: true
            }
        );
        assert!(change.cadence_changed());

        let mut job = a.clone();
        job.job.max_turns = Some(20);
        job.overlap = OverlapPolicy::Allow;
        let change = diff(&a, &job);
        assert_eq!(
            change,
            Change::Changed {
                fields: vec!["job.max_turns", "overlap"],
                cadence_only: false
            }
        );
        assert!(change.touches("job.max_turns"));
        assert!(!change.cadence_changed());

        // Status: only when the file says so.
        let mut stored = a.clone();
        stored.status = Some(ScheduleStatus::Paused);
        assert_eq!(diff(&stored, &a), Change::Unchanged);
        let mut active = a.clone();
        active.status = Some(ScheduleStatus::Active);
        assert!(diff(&stored, &active).touches("status"));
    }

    #[test]
    fn firings_carry_the_idempotency_key() {
        let v = spec(
            json!({"name": "nightly", "cron": "0 3 * * *", "job": {"kind": "k", "max_turns": 7}}),
        )
        .validate()
        .unwrap();
        let nominal = Timestamp::parse("2026-03-29T03:00:00Z").unwrap();
        let job = v.job.new_job(&v.name, nominal);
        assert_eq!(
            job.idempotency_key.as_deref(),
            Some("nightly@2026-03-29T03:00:00.000Z")
        );
        assert_eq!(job.max_turns, Some(7));
        assert!(job.requires.is_empty());
        assert_eq!(firing_key("a", nominal), "a@2026-03-29T03:00:00.000Z");
        let pinned = spec(json!({"name": "watch", "every": "5m",
            "job": {"kind": "watcher", "requires": ["device=alice-mac"]}}))
        .validate()
        .unwrap();
        assert_eq!(
            pinned.job.new_job(&pinned.name, nominal).requires,
            ["device=alice-mac"],
            "every firing carries the requirements"
        );
        let mut moved = pinned.clone();
        moved.job.requires = vec!["device=bob-mac".into()];
        assert!(diff(&pinned, &moved).touches("job.requires"));
    }
}
