//! A schedule's rule and its nominal fire times.
//!
//! A [`Rule`] is either a cron expression in an IANA time zone or a fixed
//! interval (`every`) with an optional `jitter`. [`Rule::next_after`] is the
//! one function that decides *when* a schedule fires; the engine stores its
//! result as the schedule's `next_fire_at` and the firing's nominal time.
//!
//! # Invariants
//!
//! - `next_after(t)` is strictly after `t`, and for a given rule (and anchor)
//!   the sequence `t₀, next_after(t₀), next_after(next_after(t₀)), …` is
//!   strictly increasing: no instant is ever produced twice.
//! - Interval rules never drift: nominal times are `anchor + k·every`, whatever
//!   the latency of the daemon that computed them.
//! - Jitter is never part of a nominal time. [`Rule::jitter_offset`] is a pure
//!   function of (schedule name, nominal time), so every daemon computes the
//!   same delay and the idempotency key (`name@nominal`) stays stable.
//!
//! # Daylight-saving time (cron rules)
//!
//! Wall times are turned into instants with jiff and the zone's transitions.
//! Two kinds of rule are told apart, as Vixie cron does:
//!
//! - **Rules that select every hour** (hour field `*`, e.g. `0 * * * *`,
//!   `*/5 * * * *`) follow *real* time: in a spring-forward gap the missing
//!   wall times simply do not occur (the next real wall time that matches
//!   fires), and in a fall-back fold the repeated wall times fire at *both*
//!   occurrences. An hourly rule therefore fires every real hour: 23 times on
//!   the short day, 25 on the long one.
//! - **Fixed-time rules** (any other hour field, e.g. `30 2 * * *`):
//!   - *gap*: a wall time that does not exist fires **once, at the first
//!     instant after the gap** (the transition itself: 03:00 CEST for a 02:30
//!     Europe/Berlin rule). Several matching wall times inside one gap, or a
//!     gap match and a real match at the transition, coalesce into that one
//!     firing.
//!   - *fold*: a wall time that occurs twice fires **once, at its first
//!     occurrence** (the daylight-time one). Nothing fires twice.
//!
//! ```
//! use reeve_core::Timestamp;
//! use reeve_schedule::Rule;
//! let rule = Rule::cron("30 2 * * *", Some("Europe/Berlin")).unwrap();
//! // 2026-03-29: 02:30 does not exist in Berlin; the rule fires at 03:00 CEST.
//! let before = Timestamp::parse("2026-03-28T23:00:00Z").unwrap();
//! let fire = rule.next_after(before, None).unwrap();
//! assert_eq!(fire, Timestamp::parse("2026-03-29T01:00:00Z").unwrap());
//! ```

use std::fmt;
use std::time::Duration;

use jiff::SignedDuration;
use jiff::tz::TimeZone;
use reeve_core::InputError;
use reeve_core::Timestamp;
use reeve_core::time::{duration_millis, format_duration, parse_duration};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cron::{ALL_DAYS, ALL_MINUTES, ALL_MONTHS, ALL_WEEKDAYS, CronExpr};

/// Time zone of a cron rule that names none.
pub const DEFAULT_TIMEZONE: &str = "UTC";
/// Shortest interval accepted for `every`.
pub const MIN_EVERY: Duration = Duration::from_secs(1);
/// How many time-zone segments (spans between two transitions, about half a
/// year each) a cron search crosses before giving up.
const MAX_SEGMENTS: usize = 2_000;

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Cron(CronRule),
    Every(EveryRule),
}

/// A cron expression evaluated in an IANA time zone.
#[derive(Clone)]
pub struct CronRule {
    expr: CronExpr,
    /// The zone's IANA name as jiff spells it (`europe/berlin` → `Europe/Berlin`).
    timezone: String,
    tz: TimeZone,
}

impl CronRule {
    pub fn expr(&self) -> &CronExpr {
        &self.expr
    }

    pub fn timezone(&self) -> &str {
        &self.timezone
    }
}

impl PartialEq for CronRule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr && self.timezone == other.timezone
    }
}

impl Eq for CronRule {}

impl fmt::Debug for CronRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronRule")
            .field("expr", &self.expr.as_str())
            .field("timezone", &self.timezone)
            .finish()
    }
}

/// A fixed interval, anchored to nominal times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EveryRule {
    every: Duration,
    jitter: Option<Duration>,
}

impl EveryRule {
    pub fn every(&self) -> Duration {
        self.every
    }

    pub fn jitter(&self) -> Option<Duration> {
        self.jitter
    }
}

impl Rule {
    /// A cron rule; `timezone` defaults to [`DEFAULT_TIMEZONE`].
    pub fn cron(expr: &str, timezone: Option<&str>) -> Result<Rule, InputError> {
        let expr = CronExpr::parse(expr)?;
        let name = timezone.unwrap_or(DEFAULT_TIMEZONE).trim();
        if name.is_empty() {
            return Err(InputError::new(
                "timezone",
                "must not be empty; expected an IANA name like Europe/Berlin or UTC",
            ));
        }
        let tz = TimeZone::get(name).map_err(|_| {
            InputError::new(
                "timezone",
                format!(
                    "unknown time zone {name:?}; expected an IANA name like Europe/Berlin or UTC"
                ),
            )
        })?;
        let timezone = tz.iana_name().unwrap_or(name).to_string();
        Ok(Rule::Cron(CronRule { expr, timezone, tz }))
    }

    /// An interval rule: `every` at least [`MIN_EVERY`] in whole
    /// milliseconds; `jitter`, if any, at most `every`.
    pub fn every(every: Duration, jitter: Option<Duration>) -> Result<Rule, InputError> {
        if every < MIN_EVERY {
            return Err(InputError::new(
                "every",
                format!("must be at least {}", format_duration(MIN_EVERY)),
            ));
        }
        if !every.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(InputError::new("every", "must be whole milliseconds"));
        }
        if duration_millis(every) == i64::MAX {
            return Err(InputError::new("every", "is too large"));
        }
        if let Some(j) = jitter
            && j > every
        {
            return Err(InputError::new(
                "jitter",
                format!("must not exceed every ({})", format_duration(every)),
            ));
        }
        let jitter = jitter.filter(|j| !j.is_zero());
        Ok(Rule::Every(EveryRule { every, jitter }))
    }

    /// The rule from its four optional inputs, as written in a schedule file
    /// or an API body: exactly one of `cron` (with an optional `timezone`) or
    /// `every` (with an optional `jitter`, both human durations like `1h`).
    /// Errors name the field: `cron`, `timezone`, `every` or `jitter`.
    pub fn parse(
        cron: Option<&str>,
        timezone: Option<&str>,
        every: Option<&str>,
        jitter: Option<&str>,
    ) -> Result<Rule, InputError> {
        let duration = |field: &str, v: &str| {
            parse_duration(v).map_err(|m| InputError::new(field.to_string(), m))
        };
        match (cron, every) {
            (Some(_), Some(_)) => Err(InputError::new(
                "every",
                "give either cron or every, not both",
            )),
            (None, None) => Err(InputError::new(
                "cron",
                "a schedule needs a rule: give cron (with an optional timezone) or every (with an optional jitter)",
            )),
            (Some(expr), None) => {
                if jitter.is_some() {
                    return Err(InputError::new("jitter", "applies only to every schedules"));
                }
                Rule::cron(expr, timezone)
            }
            (None, Some(every)) => {
                if timezone.is_some() {
                    return Err(InputError::new(
                        "timezone",
                        "applies only to cron schedules",
                    ));
                }
                let every = duration("every", every)?;
                let jitter = jitter.map(|j| duration("jitter", j)).transpose()?;
                Rule::every(every, jitter)
            }
        }
    }

    /// The next nominal fire time strictly after `after`.
    ///
    /// `anchor` matters only to interval rules: nominal times are
    /// `anchor + k·every` for `k ≥ 0` (pass the schedule's first nominal time,
    /// or its last one); without an anchor they are aligned to the Unix epoch
    /// (so `every 1h` fires on the hour, UTC). Cron rules ignore it.
    ///
    /// `None` when no such instant exists within jiff's range.
    pub fn next_after(&self, after: Timestamp, anchor: Option<Timestamp>) -> Option<Timestamp> {
        match self {
            Rule::Cron(c) => c.next_after(after),
            Rule::Every(e) => e.next_after(after, anchor),
        }
    }

    /// The nominal fire times in `(after, until]`, oldest first, at most
    /// `limit` of them.
    pub fn fire_times(
        &self,
        after: Timestamp,
        until: Timestamp,
        anchor: Option<Timestamp>,
        limit: usize,
    ) -> Vec<Timestamp> {
        let mut out = Vec::new();
        let mut t = after;
        while out.len() < limit {
            match self.next_after(t, anchor) {
                Some(next) if next <= until => {
                    out.push(next);
                    t = next;
                }
                _ => break,
            }
        }
        out
    }

    /// The delay between a firing's nominal time and the moment it is
    /// enqueued: deterministic in (`name`, `nominal`), within `[0, jitter]`.
    /// Zero for cron rules and intervals without jitter.
    pub fn jitter_offset(&self, name: &str, nominal: Timestamp) -> Duration {
        match self {
            Rule::Every(EveryRule {
                jitter: Some(j), ..
            }) => jitter_offset(name, nominal, *j),
            _ => Duration::ZERO,
        }
    }

    /// The rule in words, for people: `every hour at :05, Europe/Berlin`,
    /// `every 1h`, `at 09:30 on Mon–Fri, UTC`. Shapes it does not know fall
    /// back to the expression: `cron "0 0 13 * FRI", UTC`.
    pub fn describe(&self) -> String {
        match self {
            Rule::Every(e) => match e.jitter {
                Some(j) => format!(
                    "every {} (jitter up to {})",
                    format_duration(e.every),
                    format_duration(j)
                ),
                None => format!("every {}", format_duration(e.every)),
            },
            Rule::Cron(c) => match describe_cron(&c.expr) {
                Some(words) => format!("{words}, {}", c.timezone),
                None => format!("cron {:?}, {}", c.expr.as_str(), c.timezone),
            },
        }
    }

    /// The cron expression, if this is a cron rule.
    pub fn cron_expr(&self) -> Option<&str> {
        match self {
            Rule::Cron(c) => Some(c.expr.as_str()),
            Rule::Every(_) => None,
        }
    }

    /// The time zone, if this is a cron rule.
    pub fn timezone(&self) -> Option<&str> {
        match self {
            Rule::Cron(c) => Some(&c.timezone),
            Rule::Every(_) => None,
        }
    }

    /// The interval, if this is an interval rule.
    pub fn interval(&self) -> Option<Duration> {
        match self {
            Rule::Every(e) => Some(e.every),
            Rule::Cron(_) => None,
        }
    }

    /// The jitter bound, if any.
    pub fn jitter(&self) -> Option<Duration> {
        match self {
            Rule::Every(e) => e.jitter,
            Rule::Cron(_) => None,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

fn from_jiff(t: jiff::Timestamp) -> Timestamp {
    Timestamp::from_millis(t.as_millisecond())
}

impl CronRule {
    /// See the module docs for the daylight-saving rules implemented here.
    ///
    /// The zone's timeline is walked one segment at a time (a segment is the
    /// span between two transitions, where the offset is constant, so wall
    /// time and real time move together). Within a segment the first matching
    /// wall time is found with [`CronExpr::next_match`]; at a segment's start
    /// the gap or fold it opens is handled for fixed-time rules.
    fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let follows_real_time = self.expr.every_hour();
        let one_ns = SignedDuration::from_nanos(1);
        // Fire times are whole seconds: the first candidate is the next one.
        let first = after.millis().div_euclid(1000).checked_add(1)?;
        let mut s = jiff::Timestamp::from_second(first).ok()?;
        for _ in 0..MAX_SEGMENTS {
            let offset = self.tz.to_offset(s);
            let end = self.tz.following(s).next().map(|tr| tr.timestamp());
            let start = s
                .checked_add(one_ns)
                .ok()
                .and_then(|probe| self.tz.preceding(probe).next())
                .map(|tr| tr.timestamp());
            let mut lo = offset.to_datetime(s);
            if let Some(at) = start
                && !follows_real_time
                && let Ok(before_at) = at.checked_sub(one_ns)
            {
                let prev = self.tz.to_offset(before_at);
                if prev < offset && at == s {
                    // A gap opens here: wall times in [at+prev, at+offset)
                    // never happen; any match among them fires now, once.
                    let gap_lo = prev.to_datetime(at);
                    let gap_hi = offset.to_datetime(at);
                    if self.expr.next_match(gap_lo, Some(gap_hi)).is_some() {
                        return Some(from_jiff(at));
                    }
                }
                if prev > offset {
                    // A fold: wall times before at+prev already happened
                    // once, in the previous segment; never fire them again.
                    lo = lo.max(prev.to_datetime(at));
                }
            }
            let hi = end.map(|e| offset.to_datetime(e));
            if let Some(wall) = self.expr.next_match(lo, hi) {
                return offset.to_timestamp(wall).ok().map(from_jiff);
            }
            s = end?;
        }
        None
    }
}

impl EveryRule {
    fn next_after(&self, after: Timestamp, anchor: Option<Timestamp>) -> Option<Timestamp> {
        let every = duration_millis(self.every);
        let anchor = anchor.map_or(0, Timestamp::millis);
        if after.millis() < anchor {
            return Some(Timestamp::from_millis(anchor));
        }
        let k = after.millis().checked_sub(anchor)? / every + 1;
        anchor
            .checked_add(k.checked_mul(every)?)
            .map(Timestamp::from_millis)
    }
}

/// A deterministic delay in `[0, jitter]` (millisecond resolution) from a
/// 64-bit FNV-1a hash of the schedule name and the nominal time, mixed by a
/// SplitMix64 finaliser. Stable across processes, platforms and releases: do
/// not change it, or firings in flight during an upgrade would move.
pub fn jitter_offset(name: &str, nominal: Timestamp, jitter: Duration) -> Duration {
    let max = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    if max == 0 {
        return Duration::ZERO;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain(nominal.millis().to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    Duration::from_millis(h % max.saturating_add(1).max(1))
}

// ---- words ----

const WEEKDAY_WORDS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTH_WORDS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn bits(mask: u64, lo: u32, hi: u32) -> Vec<u32> {
    (lo..=hi).filter(|b| mask & (1 << b) != 0).collect()
}

/// `Some(n)` when `values` is exactly `0, n, 2n, …` up to `max` (with `n`
/// dividing `max + 1`): the shape `*/n` writes.
fn even_step(values: &[u32], max: u32) -> Option<u32> {
    let n = *values.get(1)?;
    let expected: Vec<u32> = (0..=max).step_by(n as usize).collect();
    ((max + 1).is_multiple_of(n) && values == expected.as_slice()).then_some(n)
}

fn describe_cron(e: &CronExpr) -> Option<String> {
    let seconds = bits(e.seconds, 0, 59);
    let minutes = bits(e.minutes, 0, 59);
    let hours = bits(u64::from(e.hours), 0, 23);
    let all_minutes = e.minutes == ALL_MINUTES;
    let all_hours = e.every_hour();

    let days = describe_days(e)?;
    let time = if seconds != [0] {
        if !(all_minutes && all_hours) {
            return None;
        }
        if seconds.len() == 60 {
            "every second".to_string()
        } else {
            format!("every {} seconds", even_step(&seconds, 59)?)
        }
    } else if all_hours && all_minutes {
        "every minute".to_string()
    } else if all_hours {
        match minutes.as_slice() {
            [m] => format!("every hour at :{m:02}"),
            _ => format!("every {} minutes", even_step(&minutes, 59)?),
        }
    } else {
        let [m] = minutes.as_slice() else {
            return None;
        };
        let contiguous = hours.windows(2).all(|w| w[1] == w[0] + 1);
        if hours.len() <= 4 {
            let times: Vec<String> = hours.iter().map(|h| format!("{h:02}:{m:02}")).collect();
            format!("at {}", times.join(", "))
        } else if contiguous {
            format!(
                "every hour at :{m:02} from {:02}:{m:02} to {:02}:{m:02}",
                hours[0],
                hours[hours.len() - 1]
            )
        } else {
            return None;
        }
    };
    Some(match days {
        None if time.starts_with("at ") => format!("{time} every day"),
        None => time,
        Some(days) => format!("{time} {days}"),
    })
}

/// The day part: `None` for every day, `Some("on Mon–Fri")` and the like, or
/// an outer `None` for shapes it does not describe.
fn describe_days(e: &CronExpr) -> Option<Option<String>> {
    let all_days = e.days == ALL_DAYS;
    let all_weekdays = e.weekdays == ALL_WEEKDAYS;
    let all_months = e.months == ALL_MONTHS;
    let months = bits(u64::from(e.months), 1, 12);
    let doms = bits(u64::from(e.days), 1, 31);
    // Day-of-month alone or day-of-week alone; anything combining both is
    // left to the expression.
    let dom_only = !all_days && (all_weekdays && e.dow_star);
    let dow_only = !all_weekdays && (all_days && e.dom_star);
    let month_words = || {
        months
            .iter()
            .map(|m| MONTH_WORDS[*m as usize - 1])
            .collect::<Vec<_>>()
            .join(", ")
    };
    let dom_words = || {
        doms.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let out = if all_days && all_weekdays {
        if all_months {
            None
        } else {
            Some(format!("every day in {}", month_words()))
        }
    } else if dow_only {
        let days = weekday_words(e.weekdays);
        if all_months {
            Some(format!("on {days}"))
        } else {
            Some(format!("on {days} in {}", month_words()))
        }
    } else if dom_only {
        let plural = if doms.len() == 1 { "day" } else { "days" };
        if all_months {
            Some(format!("on {plural} {} of the month", dom_words()))
        } else if doms.len() == 1 && months.len() == 1 {
            Some(format!("on {} {}", doms[0], month_words()))
        } else {
            Some(format!("on {plural} {} of {}", dom_words(), month_words()))
        }
    } else {
        return None;
    };
    Some(out)
}

/// `Mon–Fri`, `Mon, Wed, Fri`, `Sat, Sun`: Monday first, runs of three or
/// more joined with a dash.
fn weekday_words(mask: u8) -> String {
    let order = [1u8, 2, 3, 4, 5, 6, 0];
    let selected: Vec<usize> = (0..7).filter(|i| mask & (1 << order[*i]) != 0).collect();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < selected.len() {
        let mut j = i;
        while j + 1 < selected.len() && selected[j + 1] == selected[j] + 1 {
            j += 1;
        }
        let word = |k: usize| WEEKDAY_WORDS[order[selected[k]] as usize];
        if j - i >= 2 {
            parts.push(format!("{}–{}", word(i), word(j)));
        } else {
            parts.extend((i..=j).map(|k| word(k).to_string()));
        }
        i = j + 1;
    }
    parts.join(", ")
}

// ---- serde: the flat shape of a schedule file ----

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    every: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jitter: Option<String>,
}

/// `{"cron": "0 9 * * *", "timezone": "Europe/Berlin"}` or
/// `{"every": "1h", "jitter": "5m"}` — the shape of a schedule file, so a
/// stored rule reads back through the same validation.
impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let repr = match self {
            Rule::Cron(c) => RuleRepr {
                cron: Some(c.expr.as_str().to_string()),
                timezone: Some(c.timezone.clone()),
                every: None,
                jitter: None,
            },
            Rule::Every(e) => RuleRepr {
                cron: None,
                timezone: None,
                every: Some(format_duration(e.every)),
                jitter: e.jitter.map(format_duration),
            },
        };
        repr.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RuleRepr::deserialize(d)?;
        Rule::parse(
            r.cron.as_deref(),
            r.timezone.as_deref(),
            r.every.as_deref(),
            r.jitter.as_deref(),
        )
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    fn cron(expr: &str, tz: &str) -> Rule {
        Rule::cron(expr, Some(tz)).unwrap()
    }

    #[test]
    fn parse_names_the_field() {
        let field = |r: Result<Rule, InputError>| r.unwrap_err().field;
        assert_eq!(field(Rule::parse(None, None, None, None)), "cron");
        assert_eq!(
            field(Rule::parse(Some("* * * * *"), None, Some("1h"), None)),
            "every"
        );
        assert_eq!(field(Rule::parse(Some("nope"), None, None, None)), "cron");
        assert_eq!(
            field(Rule::parse(
                Some("* * * * *"),
                Some("Mars/Olympus"),
                None,
                None
            )),
            "timezone"
        );
        assert_eq!(
            field(Rule::parse(Some("* * * * *"), None, None, Some("5m"))),
            "jitter"
        );
        assert_eq!(
            field(Rule::parse(None, Some("UTC"), Some("1h"), None)),
            "timezone"
        );
        assert_eq!(field(Rule::parse(None, None, Some("-5s"), None)), "every");
        assert_eq!(field(Rule::parse(None, None, Some("0s"), None)), "every");
        assert_eq!(
            field(Rule::parse(None, None, Some("1h"), Some("2h"))),
            "jitter"
        );
        assert_eq!(
            field(Rule::parse(None, None, Some("1h"), Some("soon"))),
            "jitter"
        );
        let msg = Rule::parse(Some("* * * * *"), Some("Mars/Olympus"), None, None)
            .unwrap_err()
            .message;
        assert!(msg.contains("Mars/Olympus"), "{msg}");
    }

    #[test]
    fn timezone_names_are_canonical() {
        assert_eq!(
            cron("0 * * * *", "europe/berlin").timezone(),
            Some("Europe/Berlin")
        );
        assert_eq!(
            Rule::cron("0 * * * *", None).unwrap().timezone(),
            Some("UTC")
        );
    }

    #[test]
    fn every_is_anchored_and_strict() {
        let r = Rule::every(Duration::from_secs(3600), None).unwrap();
        let anchor = ts("2026-01-01T00:10:00Z");
        assert_eq!(
            r.next_after(ts("2026-01-01T05:00:00Z"), Some(anchor)),
            Some(ts("2026-01-01T05:10:00Z"))
        );
        // Strictly after: a nominal time is not its own successor.
        assert_eq!(
            r.next_after(ts("2026-01-01T05:10:00Z"), Some(anchor)),
            Some(ts("2026-01-01T06:10:00Z"))
        );
        // Before the anchor, the anchor itself is next.
        assert_eq!(
            r.next_after(ts("2025-12-31T00:00:00Z"), Some(anchor)),
            Some(anchor)
        );
        // Without an anchor: aligned to the epoch.
        assert_eq!(
            r.next_after(ts("2026-01-01T05:59:59.999Z"), None),
            Some(ts("2026-01-01T06:00:00Z"))
        );
    }

    #[test]
    fn jitter_is_deterministic_and_bounded() {
        let r = Rule::every(Duration::from_secs(3600), Some(Duration::from_secs(300))).unwrap();
        let t = ts("2026-01-01T00:00:00Z");
        assert_eq!(r.jitter_offset("a", t), r.jitter_offset("a", t));
        let offsets: Vec<Duration> = (0..200)
            .map(|k| {
                r.jitter_offset(
                    "nightly",
                    Timestamp::from_millis(t.millis() + k * 3_600_000),
                )
            })
            .collect();
        assert!(offsets.iter().all(|d| *d <= Duration::from_secs(300)));
        // Spread out, not constant.
        let distinct: std::collections::HashSet<_> = offsets.iter().collect();
        assert!(distinct.len() > 150, "{}", distinct.len());
        assert_ne!(r.jitter_offset("a", t), r.jitter_offset("b", t));
        assert_eq!(
            cron("0 * * * *", "UTC").jitter_offset("a", t),
            Duration::ZERO
        );
        // Pinned values: the hash must not change between releases, or
        // firings in flight during an upgrade would move.
        let five_minutes = Duration::from_secs(300);
        assert_eq!(
            jitter_offset("aibtc-heartbeat", t, five_minutes),
            Duration::from_millis(79_148)
        );
        assert_eq!(
            jitter_offset("nightly", t, five_minutes),
            Duration::from_millis(231_792)
        );
    }

    #[test]
    fn describes_common_shapes() {
        assert_eq!(
            cron("5 * * * *", "Europe/Berlin").describe(),
            "every hour at :05, Europe/Berlin"
        );
        assert_eq!(
            cron("30 9 * * 1-5", "UTC").describe(),
            "at 09:30 on Mon–Fri, UTC"
        );
        assert_eq!(cron("@daily", "UTC").describe(), "at 00:00 every day, UTC");
        assert_eq!(cron("@hourly", "UTC").describe(), "every hour at :00, UTC");
        assert_eq!(cron("@weekly", "UTC").describe(), "at 00:00 on Sun, UTC");
        assert_eq!(
            cron("@monthly", "UTC").describe(),
            "at 00:00 on day 1 of the month, UTC"
        );
        assert_eq!(cron("@yearly", "UTC").describe(), "at 00:00 on 1 Jan, UTC");
        assert_eq!(
            cron("*/15 * * * *", "UTC").describe(),
            "every 15 minutes, UTC"
        );
        assert_eq!(cron("* * * * *", "UTC").describe(), "every minute, UTC");
        assert_eq!(
            cron("*/10 * * * * *", "UTC").describe(),
            "every 10 seconds, UTC"
        );
        assert_eq!(
            cron("0 9,17 * * SAT,SUN", "UTC").describe(),
            "at 09:00, 17:00 on Sat, Sun, UTC"
        );
        assert_eq!(
            cron("0 0 * * 1,3,5", "UTC").describe(),
            "at 00:00 on Mon, Wed, Fri, UTC"
        );
        assert_eq!(
            cron("30 8-18 * * *", "UTC").describe(),
            "every hour at :30 from 08:30 to 18:30, UTC"
        );
        assert_eq!(
            cron("0 0 13 * FRI", "UTC").describe(),
            "cron \"0 0 13 * FRI\", UTC"
        );
        assert_eq!(
            Rule::every(Duration::from_secs(3600), None)
                .unwrap()
                .describe(),
            "every 1h"
        );
        assert_eq!(
            Rule::every(Duration::from_secs(3600), Some(Duration::from_secs(300)))
                .unwrap()
                .describe(),
            "every 1h (jitter up to 5m)"
        );
    }

    #[test]
    fn serde_round_trips_through_validation() {
        for rule in [
            cron("30 9 * * MON-FRI", "Europe/Berlin"),
            Rule::every(Duration::from_secs(90), Some(Duration::from_secs(10))).unwrap(),
        ] {
            let json = serde_json::to_string(&rule).unwrap();
            let back: Rule = serde_json::from_str(&json).unwrap();
            assert_eq!(back, rule, "{json}");
        }
        assert!(serde_json::from_str::<Rule>(r#"{"cron":"61 * * * *"}"#).is_err());
    }
}
