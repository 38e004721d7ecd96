//! The collision warning of SPEC §8: do schedules pile up in the same
//! minutes and overrun the cap?
//!
//! The model is deliberately simple and the same everywhere it is shown:
//!
//! - Each schedule's **nominal** firings (jitter ignored) in
//!   `[from, from + horizon)` are placed in 5-minute buckets aligned to the
//!   clock (`09:00–09:05`, `09:05–09:10`, … UTC).
//! - Each firing is expected to run for its schedule's expected duration
//!   (typically the observed median) and to occupy `slots` slots while it
//!   does. A zero duration counts as a blip at its start.
//! - A bucket **collides** when at least two different schedules fire in it
//!   *and* the peak load inside the bucket — the largest sum of slots of
//!   firings running at the same instant, counting firings that started
//!   earlier (even before `from`) and still run — exceeds the cap.
//! - Without a cap nothing can exceed it: no collisions.
//!
//! Callers decide which schedules to pass (the active ones sharing a queue
//! or the global cap) and filter with [`Collision::involves`] to warn about
//! the schedule being saved. Per schedule at most [`MAX_FIRINGS`] firings are
//! considered, so an every-second schedule cannot make this slow.
//!
//! ```
//! use std::time::Duration;
//! use reeve_core::Timestamp;
//! use reeve_schedule::{Rule, collision::{Planned, collisions}};
//! let at_nine = |name: &str| Planned {
//!     name: name.to_string(),
//!     rule: Rule::cron("0 9 * * *", None).unwrap(),
//!     anchor: None,
//!     expected_duration: Duration::from_secs(600),
//!     slots: 1,
//! };
//! let from = Timestamp::parse("2026-03-02T00:00:00Z").unwrap();
//! let found = collisions(&[at_nine("a"), at_nine("b")], Some(1), from, Duration::from_secs(86_400));
//! assert_eq!(found.len(), 1);
//! assert_eq!(found[0].schedules, ["a", "b"]);
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use reeve_core::Timestamp;
use reeve_core::time::duration_millis;

use crate::rule::Rule;

/// Bucket width.
pub const BUCKET: Duration = Duration::from_secs(5 * 60);
/// Firings considered per schedule.
pub const MAX_FIRINGS: usize = 10_000;

/// One schedule as the collision check sees it.
#[derive(Debug, Clone)]
pub struct Planned {
    pub name: String,
    pub rule: Rule,
    /// Anchor of an interval rule (see [`Rule::next_after`]).
    pub anchor: Option<Timestamp>,
    pub expected_duration: Duration,
    /// Slots one firing occupies (usually 1).
    pub slots: u32,
}

/// A bucket where schedules pile up beyond the cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub bucket_start: Timestamp,
    /// The schedules firing in the bucket, sorted by name.
    pub schedules: Vec<String>,
    /// The largest number of slots in use at one instant in the bucket.
    pub peak_load: u32,
    pub cap: u32,
}

impl Collision {
    pub fn involves(&self, name: &str) -> bool {
        self.schedules.iter().any(|s| s == name)
    }
}

struct Firing {
    start: i64,
    end: i64,
    slots: u32,
    schedule: usize,
}

/// The buckets of `[from, from + horizon)` that collide, in time order.
pub fn collisions(
    schedules: &[Planned],
    cap: Option<u32>,
    from: Timestamp,
    horizon: Duration,
) -> Vec<Collision> {
    let Some(cap) = cap else {
        return Vec::new();
    };
    let bucket = duration_millis(BUCKET);
    let until = from.millis().saturating_add(duration_millis(horizon));
    let longest = schedules
        .iter()
        .map(|s| duration_millis(s.expected_duration))
        .max()
        .unwrap_or(0);
    // Start early enough to see the firings still running at `from`.
    let lookback = from.millis().saturating_sub(longest);
    let mut firings = Vec::new();
    for (i, s) in schedules.iter().enumerate() {
        let times = s.rule.fire_times(
            Timestamp::from_millis(lookback.saturating_sub(1)),
            Timestamp::from_millis(until.saturating_sub(1)),
            s.anchor,
            MAX_FIRINGS,
        );
        let d = duration_millis(s.expected_duration).max(1);
        firings.extend(times.into_iter().map(|t| Firing {
            start: t.millis(),
            end: t.millis().saturating_add(d),
            slots: s.slots,
            schedule: i,
        }));
    }
    firings.sort_by_key(|f| f.start);

    let mut buckets: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, f) in firings.iter().enumerate() {
        if f.start >= from.millis() {
            buckets
                .entry(f.start.div_euclid(bucket))
                .or_default()
                .push(i);
        }
    }

    let mut out = Vec::new();
    for (b, in_bucket) in buckets {
        let mut names: Vec<&str> = in_bucket
            .iter()
            .map(|i| schedules[firings[*i].schedule].name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        if names.len() < 2 {
            continue;
        }
        let b_start = b * bucket;
        // The load only rises at a firing's start, so its peak within the
        // bucket is at the bucket's start or at one of these starts.
        let points = std::iter::once(b_start).chain(in_bucket.iter().map(|i| firings[*i].start));
        let first = firings.partition_point(|f| f.start < b_start.saturating_sub(longest));
        let peak = points
            .map(|p| {
                firings[first..]
                    .iter()
                    .take_while(|f| f.start <= p)
                    .filter(|f| f.end > p)
                    .map(|f| f.slots)
                    .sum::<u32>()
            })
            .max()
            .unwrap_or(0);
        if peak > cap {
            out.push(Collision {
                bucket_start: Timestamp::from_millis(b_start),
                schedules: names.into_iter().map(str::to_string).collect(),
                peak_load: peak,
                cap,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(name: &str, rule: Rule, minutes: u64) -> Planned {
        Planned {
            name: name.to_string(),
            rule,
            anchor: None,
            expected_duration: Duration::from_secs(minutes * 60),
            slots: 1,
        }
    }

    fn cron(expr: &str) -> Rule {
        Rule::cron(expr, None).unwrap()
    }

    fn day() -> (Timestamp, Duration) {
        (
            Timestamp::parse("2026-03-02T00:00:00Z").unwrap(),
            Duration::from_secs(86_400),
        )
    }

    #[test]
    fn same_bucket_over_the_cap_collides() {
        let (from, horizon) = day();
        let s = [
            planned("a", cron("0 9 * * *"), 10),
            planned("b", cron("2 9 * * *"), 10),
            planned("c", cron("0 14 * * *"), 10),
        ];
        let found = collisions(&s, Some(1), from, horizon);
        assert_eq!(
            found,
            [Collision {
                bucket_start: Timestamp::parse("2026-03-02T09:00:00Z").unwrap(),
                schedules: vec!["a".into(), "b".into()],
                peak_load: 2,
                cap: 1,
            }]
        );
        assert!(found[0].involves("b") && !found[0].involves("c"));
    }

    #[test]
    fn within_the_cap_or_apart_does_not_collide() {
        let (from, horizon) = day();
        let s = [
            planned("a", cron("0 9 * * *"), 10),
            planned("b", cron("2 9 * * *"), 10),
        ];
        // Cap 2 holds both.
        assert!(collisions(&s, Some(2), from, horizon).is_empty());
        // No cap: nothing to exceed.
        assert!(collisions(&s, None, from, horizon).is_empty());
        // Same bucket, but the first is done before the second starts.
        let s = [
            planned("a", cron("0 9 * * *"), 1),
            planned("b", cron("3 9 * * *"), 1),
        ];
        assert!(collisions(&s, Some(1), from, horizon).is_empty());
        // Different buckets.
        let s = [
            planned("a", cron("0 9 * * *"), 10),
            planned("b", cron("30 9 * * *"), 10),
        ];
        assert!(collisions(&s, Some(1), from, horizon).is_empty());
    }

    #[test]
    fn one_schedule_alone_never_collides() {
        let (from, horizon) = day();
        let s = [Planned {
            slots: 5,
            ..planned("a", cron("*/1 * * * *"), 30)
        }];
        assert!(collisions(&s, Some(1), from, horizon).is_empty());
    }

    #[test]
    fn interval_schedules_collide_every_hour() {
        let (from, horizon) = day();
        let every_hour = || Rule::every(Duration::from_secs(3600), None).unwrap();
        let s = [planned("a", every_hour(), 5), planned("b", every_hour(), 5)];
        let found = collisions(&s, Some(1), from, horizon);
        assert_eq!(found.len(), 24);
        // Anchored 30 minutes apart, they do not.
        let s = [
            planned("a", every_hour(), 5),
            Planned {
                anchor: Some(Timestamp::parse("2026-01-01T00:30:00Z").unwrap()),
                ..planned("b", every_hour(), 5)
            },
        ];
        assert!(collisions(&s, Some(1), from, horizon).is_empty());
    }

    #[test]
    fn long_runs_from_before_the_window_count_toward_load() {
        let from = Timestamp::parse("2026-03-02T09:00:00Z").unwrap();
        let s = [
            planned("long", cron("0 8 * * *"), 120),
            planned("a", cron("0 9 * * *"), 5),
            planned("b", cron("1 9 * * *"), 5),
        ];
        let found = collisions(&s, Some(2), from, Duration::from_secs(3600));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].peak_load, 3);
        assert_eq!(found[0].schedules, ["a", "b"]);
    }
}
