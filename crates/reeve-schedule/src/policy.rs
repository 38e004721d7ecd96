//! Schedule policies (SPEC §7): what happens when a firing overlaps the
//! previous one, what happens to fire times missed while no daemon ran, and
//! whether the schedule fires at all.
//!
//! This module owns the policy vocabularies and their wire names, and
//! [`misfire_plan`]: given the last nominal time a schedule handled and the
//! current instant, which missed nominal times fire and which are recorded as
//! skipped. Enforcing overlap (looking at running jobs) is the engine's job.
//!
//! # Invariants
//!
//! - Wire names are exactly `allow skip queue_one cancel_previous`,
//!   `fire_once skip catch_up`, `active paused`.
//! - A misfire plan fires only nominal times in `(last_nominal, now]`, oldest
//!   first, at most `max` of them for `catch_up`; every missed time is either
//!   fired or inside the reported skipped range, never both.
//! - The cost of planning does not grow with the length of the downtime for
//!   interval rules, and grows only with the few firings it returns for cron
//!   rules (it searches backwards in widening windows).
//!
//! ```
//! use reeve_core::Timestamp;
//! use reeve_schedule::{Rule, policy::{MisfirePolicy, misfire_fire_times}};
//! let hourly = Rule::every(std::time::Duration::from_secs(3600), None).unwrap();
//! let last = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
//! let now = Timestamp::parse("2026-01-01T05:30:00Z").unwrap();
//! let fire = misfire_fire_times(&hourly, last, now, MisfirePolicy::FireOnce);
//! assert_eq!(fire, [Timestamp::parse("2026-01-01T05:00:00Z").unwrap()]);
//! ```

use std::fmt;
use std::str::FromStr;

use reeve_core::Timestamp;
use reeve_core::time::duration_millis;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::rule::Rule;

/// What to do when a schedule falls due while its previous firing still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Fire anyway; firings run concurrently (caps still apply).
    Allow,
    /// Do not fire; the ledger records the fire time as skipped (overlap).
    #[default]
    Skip,
    /// Keep at most one firing waiting behind the running one; further fire
    /// times coalesce into it.
    QueueOne,
    /// Cancel the running firing, then fire.
    CancelPrevious,
}

impl OverlapPolicy {
    pub const ALL: [OverlapPolicy; 4] = [
        OverlapPolicy::Allow,
        OverlapPolicy::Skip,
        OverlapPolicy::QueueOne,
        OverlapPolicy::CancelPrevious,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OverlapPolicy::Allow => "allow",
            OverlapPolicy::Skip => "skip",
            OverlapPolicy::QueueOne => "queue_one",
            OverlapPolicy::CancelPrevious => "cancel_previous",
        }
    }
}

/// What to do with fire times that passed while no daemon was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MisfirePolicy {
    /// Fire the most recent missed time once; the rest are skipped.
    #[default]
    FireOnce,
    /// Fire none of them.
    Skip,
    /// Fire the most recent `max` missed times, oldest first.
    CatchUp { max: u32 },
}

/// Default bound of `catch_up` (SPEC §7).
pub const DEFAULT_CATCH_UP_MAX: u32 = 10;
/// Largest `catch_up` bound accepted.
pub const MAX_CATCH_UP_MAX: u32 = 1000;

impl MisfirePolicy {
    /// `catch_up` with the default bound.
    pub const CATCH_UP: MisfirePolicy = MisfirePolicy::CatchUp {
        max: DEFAULT_CATCH_UP_MAX,
    };

    pub fn as_str(self) -> &'static str {
        match self {
            MisfirePolicy::FireOnce => "fire_once",
            MisfirePolicy::Skip => "skip",
            MisfirePolicy::CatchUp { .. } => "catch_up",
        }
    }
}

impl fmt::Display for MisfirePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MisfirePolicy::CatchUp { max } if *max != DEFAULT_CATCH_UP_MAX => {
                write!(f, "catch_up (max {max})")
            }
            other => f.write_str(other.as_str()),
        }
    }
}

/// Written as a name — `"fire_once"`, `"skip"`, `"catch_up"` (max 10) — or,
/// to bound catch-up differently, as a table `{policy = "catch_up", max = 5}`
/// (JSON `{"policy": "catch_up", "max": 5}`). Serialised the same way: the
/// bare name unless `max` differs from the default.
impl Serialize for MisfirePolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MisfirePolicy::CatchUp { max } if *max != DEFAULT_CATCH_UP_MAX => {
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("policy", "catch_up")?;
                map.serialize_entry("max", max)?;
                map.end()
            }
            other => s.serialize_str(other.as_str()),
        }
    }
}

impl<'de> Deserialize<'de> for MisfirePolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MisfirePolicy;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "\"fire_once\", \"skip\", \"catch_up\" or a table {policy = \"catch_up\", max = N}",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<MisfirePolicy, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MisfirePolicy, A::Error> {
                let mut policy: Option<String> = None;
                let mut max: Option<u32> = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "policy" => policy = Some(map.next_value()?),
                        "max" => max = Some(map.next_value()?),
                        other => return Err(de::Error::unknown_field(other, &["policy", "max"])),
                    }
                }
                let policy = policy.ok_or_else(|| de::Error::missing_field("policy"))?;
                match (
                    policy.parse::<MisfirePolicy>().map_err(de::Error::custom)?,
                    max,
                ) {
                    (MisfirePolicy::CatchUp { .. }, Some(max)) => {
                        if !(1..=MAX_CATCH_UP_MAX).contains(&max) {
                            return Err(de::Error::custom(format!(
                                "max must be between 1 and {MAX_CATCH_UP_MAX}"
                            )));
                        }
                        Ok(MisfirePolicy::CatchUp { max })
                    }
                    (p, None) => Ok(p),
                    (_, Some(_)) => Err(de::Error::custom("max applies only to catch_up")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl FromStr for MisfirePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fire_once" => Ok(MisfirePolicy::FireOnce),
            "skip" => Ok(MisfirePolicy::Skip),
            "catch_up" => Ok(MisfirePolicy::CATCH_UP),
            _ => Err(format!(
                "unknown misfire policy {s:?}; expected one of fire_once, skip, catch_up"
            )),
        }
    }
}

/// Whether a schedule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleStatus {
    #[default]
    Active,
    Paused,
}

impl ScheduleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleStatus::Active => "active",
            ScheduleStatus::Paused => "paused",
        }
    }
}

macro_rules! name_impls {
    ($ty:ty, [$($v:expr),+], $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                [$($v),+]
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| {
                        let names: Vec<&str> = [$($v),+].iter().map(|v| v.as_str()).collect();
                        format!(concat!("unknown ", $what, " {:?}; expected one of {}"), s, names.join(", "))
                    })
            }
        }
    };
}

name_impls!(
    OverlapPolicy,
    [
        OverlapPolicy::Allow,
        OverlapPolicy::Skip,
        OverlapPolicy::QueueOne,
        OverlapPolicy::CancelPrevious
    ],
    "overlap policy"
);
name_impls!(
    ScheduleStatus,
    [ScheduleStatus::Active, ScheduleStatus::Paused],
    "schedule status"
);

/// What to do after downtime: the nominal times to fire now (oldest first)
/// and the range of missed nominal times recorded as skipped (misfire).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MisfirePlan {
    pub fire: Vec<Timestamp>,
    /// First and last skipped nominal time (inclusive); every nominal time of
    /// the rule between them was skipped. One ledger row can hold it.
    pub skipped: Option<(Timestamp, Timestamp)>,
}

/// The missed nominal times that fire, per `policy` — see [`misfire_plan`].
pub fn misfire_fire_times(
    rule: &Rule,
    last_nominal: Timestamp,
    now: Timestamp,
    policy: MisfirePolicy,
) -> Vec<Timestamp> {
    misfire_plan(rule, last_nominal, now, policy).fire
}

/// Plans the nominal times in `(last_nominal, now]` — the ones missed since
/// the schedule last handled `last_nominal`:
///
/// - `fire_once`: fire only the latest; skip the others;
/// - `skip`: fire none; skip all;
/// - `catch_up {max}`: fire the latest `max`, oldest first; skip the older.
///
/// Interval rules are anchored at `last_nominal`. Whether a late fire time
/// counts as a misfire at all (rather than ordinary latency, which simply
/// fires) is the engine's call; the schedule's next fire time afterwards is
/// `rule.next_after(now, Some(last_nominal))`.
pub fn misfire_plan(
    rule: &Rule,
    last_nominal: Timestamp,
    now: Timestamp,
    policy: MisfirePolicy,
) -> MisfirePlan {
    let Some(first) = rule.next_after(last_nominal, Some(last_nominal)) else {
        return MisfirePlan::default();
    };
    if first > now {
        return MisfirePlan::default();
    }
    let fire_count = match policy {
        MisfirePolicy::FireOnce => 1,
        MisfirePolicy::Skip => 0,
        MisfirePolicy::CatchUp { max } => max as usize,
    };
    // One more than we fire, to learn the last skipped one.
    let latest = latest_fire_times(rule, last_nominal, now, fire_count + 1);
    let (skipped_tail, fire) = if latest.len() > fire_count {
        let split = latest.len() - fire_count;
        (Some(latest[split - 1]), latest[split..].to_vec())
    } else {
        (None, latest)
    };
    MisfirePlan {
        fire,
        skipped: skipped_tail.map(|last| (first, last)),
    }
}

/// The latest `n` nominal times in `(floor, now]`, oldest first. For interval
/// rules by arithmetic; for cron rules by scanning backwards from `now` in
/// windows that grow eightfold until `n` are found or `floor` is reached.
fn latest_fire_times(rule: &Rule, floor: Timestamp, now: Timestamp, n: usize) -> Vec<Timestamp> {
    if n == 0 {
        return Vec::new();
    }
    if let Some(every) = rule.interval() {
        let every = duration_millis(every);
        let missed = (now.millis() - floor.millis()) / every;
        let take = missed.min(n as i64);
        return (0..take)
            .rev()
            .map(|i| Timestamp::from_millis(floor.millis() + (missed - i) * every))
            .collect();
    }
    let mut window: i64 = 60_000;
    loop {
        let start = now.millis().saturating_sub(window).max(floor.millis());
        let mut found = std::collections::VecDeque::with_capacity(n);
        let mut t = Timestamp::from_millis(start);
        while let Some(next) = rule.next_after(t, Some(floor)) {
            if next > now {
                break;
            }
            if found.len() == n {
                found.pop_front();
            }
            found.push_back(next);
            t = next;
        }
        if found.len() == n || start == floor.millis() {
            return found.into();
        }
        window = window.saturating_mul(8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    #[test]
    fn wire_names_are_exact() {
        let names: Vec<String> = OverlapPolicy::ALL
            .iter()
            .map(|p| serde_json::to_string(p).unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "\"allow\"",
                "\"skip\"",
                "\"queue_one\"",
                "\"cancel_previous\""
            ]
        );
        assert_eq!(
            serde_json::to_string(&ScheduleStatus::Paused).unwrap(),
            "\"paused\""
        );
        assert_eq!(
            serde_json::to_string(&ScheduleStatus::Active).unwrap(),
            "\"active\""
        );
        for (p, json) in [
            (MisfirePolicy::FireOnce, "\"fire_once\""),
            (MisfirePolicy::Skip, "\"skip\""),
            (MisfirePolicy::CATCH_UP, "\"catch_up\""),
            (
                MisfirePolicy::CatchUp { max: 5 },
                r#"{"policy":"catch_up","max":5}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&p).unwrap(), json);
            assert_eq!(serde_json::from_str::<MisfirePolicy>(json).unwrap(), p);
        }
        assert_eq!(OverlapPolicy::default(), OverlapPolicy::Skip);
        assert_eq!(MisfirePolicy::default(), MisfirePolicy::FireOnce);
        assert_eq!(
            "queue_one".parse::<OverlapPolicy>(),
            Ok(OverlapPolicy::QueueOne)
        );
        assert!(
            "sometimes"
                .parse::<OverlapPolicy>()
                .unwrap_err()
                .contains("cancel_previous")
        );
    }

    #[test]
    fn misfire_tables_are_checked() {
        let bad = |json: &str| {
            serde_json::from_str::<MisfirePolicy>(json)
                .unwrap_err()
                .to_string()
        };
        assert!(bad(r#"{"policy":"catch_up","max":0}"#).contains("max"));
        assert!(bad(r#"{"policy":"skip","max":3}"#).contains("only to catch_up"));
        assert!(bad(r#"{"policy":"catch_up","maxx":3}"#).contains("maxx"));
        assert!(bad(r#""later""#).contains("later"));
        assert_eq!(
            serde_json::from_str::<MisfirePolicy>(r#"{"policy":"catch_up"}"#).unwrap(),
            MisfirePolicy::CATCH_UP
        );
    }

    fn hourly() -> Rule {
        Rule::every(Duration::from_secs(3600), None).unwrap()
    }

    #[test]
    fn fire_once_fires_the_latest_and_skips_the_rest() {
        let plan = misfire_plan(
            &hourly(),
            ts("2026-01-01T00:00:00Z"),
            ts("2026-01-01T05:30:00Z"),
            MisfirePolicy::FireOnce,
        );
        assert_eq!(plan.fire, [ts("2026-01-01T05:00:00Z")]);
        assert_eq!(
            plan.skipped,
            Some((ts("2026-01-01T01:00:00Z"), ts("2026-01-01T04:00:00Z")))
        );
    }

    #[test]
    fn skip_fires_nothing() {
        let plan = misfire_plan(
            &hourly(),
            ts("2026-01-01T00:00:00Z"),
            ts("2026-01-01T05:30:00Z"),
            MisfirePolicy::Skip,
        );
        assert!(plan.fire.is_empty());
        assert_eq!(
            plan.skipped,
            Some((ts("2026-01-01T01:00:00Z"), ts("2026-01-01T05:00:00Z")))
        );
    }

    #[test]
    fn catch_up_fires_the_last_max_oldest_first() {
        let last = ts("2026-01-01T00:00:00Z");
        let now = ts("2026-01-01T05:30:00Z");
        let plan = misfire_plan(&hourly(), last, now, MisfirePolicy::CatchUp { max: 3 });
        assert_eq!(
            plan.fire,
            [
                ts("2026-01-01T03:00:00Z"),
                ts("2026-01-01T04:00:00Z"),
                ts("2026-01-01T05:00:00Z")
            ]
        );
        assert_eq!(
            plan.skipped,
            Some((ts("2026-01-01T01:00:00Z"), ts("2026-01-01T02:00:00Z")))
        );
        // Fewer missed than max: all of them, nothing skipped.
        let plan = misfire_plan(&hourly(), last, now, MisfirePolicy::CATCH_UP);
        assert_eq!(plan.fire.len(), 5);
        assert_eq!(plan.skipped, None);
    }

    #[test]
    fn nothing_missed_plans_nothing() {
        let last = ts("2026-01-01T00:00:00Z");
        for policy in [
            MisfirePolicy::FireOnce,
            MisfirePolicy::Skip,
            MisfirePolicy::CATCH_UP,
        ] {
            let plan = misfire_plan(&hourly(), last, ts("2026-01-01T00:59:59Z"), policy);
            assert_eq!(plan, MisfirePlan::default());
        }
        // A nominal time exactly at `now` is missed (due), and fires.
        let plan = misfire_plan(
            &hourly(),
            last,
            ts("2026-01-01T01:00:00Z"),
            MisfirePolicy::FireOnce,
        );
        assert_eq!(plan.fire, [ts("2026-01-01T01:00:00Z")]);
        assert_eq!(plan.skipped, None);
    }

    #[test]
    fn cron_misfires_after_a_long_downtime_are_cheap_and_exact() {
        // Every second, down for 30 days: 2.6 million missed times.
        let rule = Rule::cron("* * * * * *", None).unwrap();
        let last = ts("2026-01-01T00:00:00Z");
        let now = ts("2026-01-31T00:00:00.500Z");
        let plan = misfire_plan(&rule, last, now, MisfirePolicy::CatchUp { max: 3 });
        assert_eq!(
            plan.fire,
            [
                ts("2026-01-30T23:59:58Z"),
                ts("2026-01-30T23:59:59Z"),
                ts("2026-01-31T00:00:00Z")
            ]
        );
        assert_eq!(
            plan.skipped,
            Some((ts("2026-01-01T00:00:01Z"), ts("2026-01-30T23:59:57Z")))
        );
        // A daily rule, down for a week.
        let rule = Rule::cron("0 9 * * *", Some("Europe/Berlin")).unwrap();
        let plan = misfire_plan(
            &rule,
            ts("2026-03-01T08:00:00Z"),
            ts("2026-03-08T12:00:00Z"),
            MisfirePolicy::FireOnce,
        );
        assert_eq!(plan.fire, [ts("2026-03-08T08:00:00Z")]);
        assert_eq!(
            plan.skipped,
            Some((ts("2026-03-02T08:00:00Z"), ts("2026-03-07T08:00:00Z")))
        );
        let plan = misfire_plan(
            &rule,
            ts("2026-03-01T08:00:00Z"),
            ts("2026-03-08T12:00:00Z"),
            MisfirePolicy::CATCH_UP,
        );
        assert_eq!(plan.fire.len(), 7);
        assert_eq!(plan.skipped, None);
    }
}
