//! The cron rule language: parsing an expression and matching *civil*
//! (wall-clock) datetimes against it.
//!
//! This module owns the grammar and nothing about time zones: it answers
//! "does this wall time match?" and "what is the first matching wall time at
//! or after this one?". Turning wall times into instants, with daylight-saving
//! gaps and folds, is [`crate::rule`]'s job and is done with jiff.
//!
//! # Grammar
//!
//! - 5 fields `minute hour day-of-month month day-of-week` (seconds = 0), or
//!   6 fields with `second` first.
//! - Each field is a comma list of items; an item is `*`, a value, or a range
//!   `a-b`, optionally followed by `/step`. `a/step` means from `a` to the
//!   field's end. `?` is accepted as `*` in the two day fields.
//! - Months take `JAN`–`DEC`, weekdays `SUN`–`SAT` (case-insensitive);
//!   weekdays are `0`–`7` where both `0` and `7` are Sunday.
//! - Aliases: `@yearly` = `@annually`, `@monthly`, `@weekly`, `@daily` =
//!   `@midnight`, `@hourly`.
//! - Day matching follows crontab(5): when *both* day fields are restricted
//!   (neither starts with `*` or `?`), a day matches if *either* matches;
//!   otherwise both must match. So `0 0 1 * MON` fires on the 1st and on every
//!   Monday, while `0 0 */2 * MON` fires on odd-numbered days that are Mondays.
//!
//! # Invariants
//!
//! - A parsed [`CronExpr`] matches at least one real date (`0 0 30 2 *` is
//!   rejected at parse time), so a forward search always terminates.
//! - Every parse error is an [`InputError`] on the field `cron` whose message
//!   names the offending token and the cron field it sits in.
//!
//! ```
//! use reeve_schedule::cron::CronExpr;
//! let e = CronExpr::parse("30 9 * * MON-FRI").unwrap();
//! let mon = jiff::civil::date(2026, 3, 2).at(9, 30, 0, 0);
//! assert!(e.matches(mon));
//! assert!(CronExpr::parse("61 * * * *").unwrap_err().message.contains("\"61\""));
//! ```

use jiff::civil::{Date, DateTime};
use reeve_core::InputError;

/// The `InputError` field every cron parse error carries.
const FIELD: &str = "cron";

/// Longest expression accepted.
pub const MAX_EXPR_LEN: usize = 256;

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// One of the six cron fields: its name in messages and its value range.
struct FieldKind {
    name: &'static str,
    min: u8,
    /// Largest value accepted (7 for weekdays: 7 = Sunday).
    max: u8,
    /// Where `*` and `a/step` end (6 for weekdays, so Sunday is not doubled).
    open_max: u8,
    names: &'static [&'static str],
    /// The value of `names[0]`.
    name_base: u8,
    allow_question: bool,
}

const SECOND: FieldKind = FieldKind {
    name: "second",
    min: 0,
    max: 59,
    open_max: 59,
    names: &[],
    name_base: 0,
    allow_question: false,
};
const MINUTE: FieldKind = FieldKind {
    name: "minute",
    ..SECOND
};
const HOUR: FieldKind = FieldKind {
    name: "hour",
    min: 0,
    max: 23,
    open_max: 23,
    names: &[],
    name_base: 0,
    allow_question: false,
};
const DAY_OF_MONTH: FieldKind = FieldKind {
    name: "day-of-month",
    min: 1,
    max: 31,
    open_max: 31,
    names: &[],
    name_base: 0,
    allow_question: true,
};
const MONTH: FieldKind = FieldKind {
    name: "month",
    min: 1,
    max: 12,
    open_max: 12,
    names: &MONTH_NAMES,
    name_base: 1,
    allow_question: false,
};
const DAY_OF_WEEK: FieldKind = FieldKind {
    name: "day-of-week",
    min: 0,
    max: 7,
    open_max: 6,
    names: &WEEKDAY_NAMES,
    name_base: 0,
    allow_question: true,
};

/// A parsed cron expression: one bit set per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronExpr {
    /// The expression as written, whitespace collapsed (aliases lowercased).
    source: String,
    pub(crate) seconds: u64,
    pub(crate) minutes: u64,
    pub(crate) hours: u32,
    /// Bits 1..=31.
    pub(crate) days: u32,
    /// Bits 1..=12.
    pub(crate) months: u16,
    /// Bits 0..=6, Sunday = 0.
    pub(crate) weekdays: u8,
    /// The day-of-month field starts with `*` or `?` (crontab(5) "unrestricted").
    pub(crate) dom_star: bool,
    /// The day-of-week field starts with `*` or `?`.
    pub(crate) dow_star: bool,
}

pub(crate) const ALL_HOURS: u32 = (1 << 24) - 1;
pub(crate) const ALL_MINUTES: u64 = (1 << 60) - 1;
pub(crate) const ALL_DAYS: u32 = !1;
pub(crate) const ALL_MONTHS: u16 = ((1 << 13) - 1) & !1;
pub(crate) const ALL_WEEKDAYS: u8 = (1 << 7) - 1;

impl CronExpr {
    /// Parses a 5- or 6-field expression or an `@alias`.
    pub fn parse(expr: &str) -> Result<CronExpr, InputError> {
        let trimmed = expr.trim();
        if trimmed.is_empty() {
            return Err(err(
                "must not be empty; expected 5 or 6 fields like \"0 9 * * MON-FRI\"",
            ));
        }
        if trimmed.len() > MAX_EXPR_LEN {
            return Err(err(format!("must be at most {MAX_EXPR_LEN} characters")));
        }
        if trimmed.starts_with('@') {
            let alias = trimmed.to_ascii_lowercase();
            let fields = match alias.as_str() {
                "@yearly" | "@annually" => "0 0 0 1 1 *",
                "@monthly" => "0 0 0 1 * *",
                "@weekly" => "0 0 0 * * 0",
                "@daily" | "@midnight" => "0 0 0 * * *",
                "@hourly" => "0 0 * * * *",
                _ => {
                    return Err(err(format!(
                        "unknown alias {trimmed:?}; expected one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"
                    )));
                }
            };
            let mut parsed = Self::parse_fields(&fields.split(' ').collect::<Vec<_>>())?;
            parsed.source = alias;
            return Ok(parsed);
        }
        let parts: Vec<&str> = trimmed.split_whitespace().collect();
        Self::parse_fields(&parts)
    }

    fn parse_fields(parts: &[&str]) -> Result<CronExpr, InputError> {
        let (sec, rest) = match parts.len() {
            5 => ("0", parts),
            6 => (parts[0], &parts[1..]),
            n => {
                return Err(err(format!(
                    "has {n} field{}; expected 5 (minute hour day-of-month month day-of-week) or 6 (second first)",
                    if n == 1 { "" } else { "s" }
                )));
            }
        };
        let (seconds, _) = parse_field(&SECOND, sec)?;
        let (minutes, _) = parse_field(&MINUTE, rest[0])?;
        let (hours, _) = parse_field(&HOUR, rest[1])?;
        let (days, dom_star) = parse_field(&DAY_OF_MONTH, rest[2])?;
        let (months, _) = parse_field(&MONTH, rest[3])?;
        let (weekdays, dow_star) = parse_field(&DAY_OF_WEEK, rest[4])?;
        let expr = CronExpr {
            source: parts.join(" "),
            seconds,
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            dom_star,
            dow_star,
        };
        expr.check_satisfiable()?;
        Ok(expr)
    }

    /// Rejects rules whose days can never happen (`0 0 31 4 *`): only possible
    /// when the day-of-week does not widen the match (see the module docs).
    fn check_satisfiable(&self) -> Result<(), InputError> {
        if !self.dom_star && !self.dow_star {
            return Ok(());
        }
        let possible = (1..=12u8).any(|m| {
            self.months & (1 << m) != 0
                && (1..=max_day_of_month(m)).any(|d| self.days & (1 << d) != 0)
        });
        if possible {
            Ok(())
        } else {
            Err(err(format!(
                "{:?} never matches: no selected month has the selected day of month",
                self.source
            )))
        }
    }

    /// The expression as written (whitespace collapsed).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the expression selects every hour of the day. Such rules follow
    /// real time across daylight-saving changes (see [`crate::rule`]).
    pub fn every_hour(&self) -> bool {
        self.hours == ALL_HOURS
    }

    /// Whether the wall time `dt` (whole seconds) matches.
    pub fn matches(&self, dt: DateTime) -> bool {
        self.month_ok(dt.month())
            && self.day_ok(dt.date())
            && self.hours & (1 << dt.hour()) != 0
            && self.minutes & (1 << dt.minute()) != 0
            && self.seconds & (1 << dt.second()) != 0
    }

    fn month_ok(&self, month: i8) -> bool {
        self.months & (1 << month) != 0
    }

    fn day_ok(&self, date: Date) -> bool {
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first matching wall time `c` with `from <= c` (sub-seconds of
    /// `from` round up) and, when given, `c < limit`. Searches at most 400
    /// years ahead.
    pub fn next_match(&self, from: DateTime, limit: Option<DateTime>) -> Option<DateTime> {
        let mut date = from.date();
        let (mut h, mut m, mut s) = (from.hour(), from.minute(), from.second());
        if from.subsec_nanosecond() > 0 {
            s += 1;
        }
        let year_cap = from.year().saturating_add(400);
        // Normalises (h, m, s) after an increment; `false` when the calendar
        // ends.
        fn carry(date: &mut Date, h: &mut i8, m: &mut i8, s: &mut i8) -> bool {
            if *s >= 60 {
                *s = 0;
                *m += 1;
            }
            if *m >= 60 {
                *m = 0;
                *h += 1;
            }
            if *h >= 24 {
                *h = 0;
                match date.tomorrow() {
                    Ok(d) => *date = d,
                    Err(_) => return false,
                }
            }
            true
        }
        if !carry(&mut date, &mut h, &mut m, &mut s) {
            return None;
        }
        loop {
            if date.year() > year_cap {
                return None;
            }
            if limit.is_some_and(|l| date.at(h, m, s, 0) >= l) {
                return None;
            }
            if !self.month_ok(date.month()) {
                date = self.next_month_start(date)?;
                (h, m, s) = (0, 0, 0);
                continue;
            }
            if !self.day_ok(date) {
                date = date.tomorrow().ok()?;
                (h, m, s) = (0, 0, 0);
                continue;
            }
            match next_bit(u64::from(self.hours), h) {
                None => {
                    date = date.tomorrow().ok()?;
                    (h, m, s) = (0, 0, 0);
                    continue;
                }
                Some(nh) if nh != h => (h, m, s) = (nh, 0, 0),
                Some(_) => {}
            }
            match next_bit(self.minutes, m) {
                None => {
                    (h, m, s) = (h + 1, 0, 0);
                    if !carry(&mut date, &mut h, &mut m, &mut s) {
                        return None;
                    }
                    continue;
                }
                Some(nm) if nm != m => (m, s) = (nm, 0),
                Some(_) => {}
            }
            match next_bit(self.seconds, s) {
                None => {
                    (m, s) = (m + 1, 0);
                    if !carry(&mut date, &mut h, &mut m, &mut s) {
                        return None;
                    }
                    continue;
                }
                Some(ns) => s = ns,
            }
            let found = date.at(h, m, s, 0);
            if limit.is_some_and(|l| found >= l) {
                return None;
            }
            return Some(found);
        }
    }

    /// The first day of the next selected month after `date`'s month.
    fn next_month_start(&self, date: Date) -> Option<Date> {
        let (mut year, mut month) = (date.year(), date.month());
        for _ in 0..13 {
            month += 1;
            if month > 12 {
                month = 1;
                year = year.checked_add(1)?;
            }
            if self.month_ok(month) {
                return Date::new(year, month, 1).ok();
            }
        }
        None
    }
}

impl std::fmt::Display for CronExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

fn err(message: impl Into<String>) -> InputError {
    InputError::new(FIELD, message)
}

/// The smallest set bit `>= from`, if any.
fn next_bit(mask: u64, from: i8) -> Option<i8> {
    let from = u32::try_from(from).ok()?;
    if from >= 64 {
        return None;
    }
    let rest = mask >> from;
    if rest == 0 {
        None
    } else {
        i8::try_from(from + rest.trailing_zeros()).ok()
    }
}

/// The largest day a month can have (29 for February: leap years exist).
pub(crate) fn max_day_of_month(month: u8) -> u8 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses one field into its bit set and whether it starts with `*`/`?`.
fn parse_field(kind: &FieldKind, text: &str) -> Result<(u64, bool), InputError> {
    let star = text.starts_with('*') || (kind.allow_question && text.starts_with('?'));
    let mut bits = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(err(format!(
                "empty list item in the {} field {text:?}",
                kind.name
            )));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let n: u8 = step.parse().map_err(|_| {
                    err(format!(
                        "step {step:?} in the {} field {item:?} is not a whole number",
                        kind.name
                    ))
                })?;
                if n == 0 {
                    return Err(err(format!(
                        "step in the {} field {item:?} must be at least 1",
                        kind.name
                    )));
                }
                (range, Some(n))
            }
            None => (item, None),
        };
        let (lo, hi) = if range == "*" || (kind.allow_question && range == "?") {
            (kind.min, kind.open_max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (lo, hi) = (value(kind, a)?, value(kind, b)?);
            if lo > hi {
                return Err(err(format!(
                    "range {range:?} in the {} field runs backwards; write it as a list instead",
                    kind.name
                )));
            }
            (lo, hi)
        } else {
            let v = value(kind, range)?;
            match step {
                Some(_) => (v, kind.open_max.max(v)),
                None => (v, v),
            }
        };
        let step = usize::from(step.unwrap_or(1));
        for v in (lo..=hi).step_by(step) {
            // 7 is Sunday too.
            let v = if kind.max == 7 && v == 7 { 0 } else { v };
            bits |= 1 << v;
        }
    }
    Ok((bits, star))
}

/// One value of a field: a number in range or a name.
fn value(kind: &FieldKind, token: &str) -> Result<u8, InputError> {
    if token.is_empty() {
        return Err(err(format!("missing value in the {} field", kind.name)));
    }
    if token.bytes().all(|b| b.is_ascii_digit()) {
        let out_of_range = || {
            err(format!(
                "{token:?} in the {} field is out of range {}–{}",
                kind.name, kind.min, kind.max
            ))
        };
        let n: u8 = token.parse().map_err(|_| out_of_range())?;
        if n < kind.min || n > kind.max {
            return Err(out_of_range());
        }
        return Ok(n);
    }
    if let Some(i) = kind
        .names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(token))
    {
        // At most 12 names, so the index fits.
        return Ok(kind.name_base + i as u8);
    }
    let expected = match kind.names.first().zip(kind.names.last()) {
        Some((first, last)) => format!(
            "a number {}–{} or a name {first}–{last}",
            kind.min, kind.max
        ),
        None => format!("a number {}–{}", kind.min, kind.max),
    };
    Err(err(format!(
        "{token:?} in the {} field is not valid; expected {expected}",
        kind.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn p(s: &str) -> CronExpr {
        CronExpr::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn bad(s: &str) -> String {
        let e = CronExpr::parse(s).unwrap_err();
        assert_eq!(e.field, "cron");
        e.message
    }

    #[test]
    fn five_and_six_fields() {
        let e = p("*/15 9-17 * * MON-FRI");
        assert_eq!(e.seconds, 1);
        assert_eq!(e.minutes, 1 | 1 << 15 | 1 << 30 | 1 << 45);
        assert_eq!(e.hours, (9..=17).fold(0, |a, h| a | 1 << h));
        assert_eq!(e.weekdays, 0b0111110);
        let s = p("30 */20 * * * *");
        assert_eq!(s.seconds, 1 << 30);
        assert_eq!(s.minutes, 1 | 1 << 20 | 1 << 40);
        assert_eq!(s.as_str(), "30 */20 * * * *");
    }

    #[test]
    fn names_lists_and_sunday_seven() {
        let e = p("0 0 * jan,Mar-may sun,7,sat");
        assert_eq!(e.months, 1 << 1 | 1 << 3 | 1 << 4 | 1 << 5);
        assert_eq!(e.weekdays, 1 | 1 << 6);
        assert_eq!(p("0 0 * * 5-7").weekdays, 1 | 1 << 5 | 1 << 6);
        assert_eq!(p("0 0 * * 1/2").weekdays, 1 << 1 | 1 << 3 | 1 << 5);
        assert_eq!(p("0 0 ? * ?").days, ALL_DAYS);
        assert_eq!(p("5/20 * * * *").minutes, 1 << 5 | 1 << 25 | 1 << 45);
    }

    #[test]
    fn aliases() {
        assert_eq!(p("@hourly").minutes, 1);
        assert_eq!(p("@hourly").hours, ALL_HOURS);
        assert_eq!(p("@daily"), p("@midnight").with_source("@daily"));
        assert_eq!(p("@weekly").weekdays, 1);
        assert_eq!(p("@monthly").days, 1 << 1);
        assert_eq!(p("@yearly").months, 1 << 1);
        assert_eq!(p("@ANNUALLY").as_str(), "@annually");
        assert!(bad("@reboot").contains("@reboot"));
    }

    impl CronExpr {
        fn with_source(mut self, s: &str) -> Self {
            self.source = s.into();
            self
        }
    }

    #[test]
    fn errors_name_the_token_and_field() {
        let m = bad("61 * * * *");
        assert!(m.contains("\"61\"") && m.contains("minute"), "{m}");
        let m = bad("0 24 * * *");
        assert!(m.contains("\"24\"") && m.contains("hour"), "{m}");
        let m = bad("0 0 0 * *");
        assert!(m.contains("\"0\"") && m.contains("day-of-month"), "{m}");
        let m = bad("0 0 * 13 *");
        assert!(m.contains("\"13\"") && m.contains("month"), "{m}");
        let m = bad("0 0 * * 8");
        assert!(m.contains("\"8\"") && m.contains("day-of-week"), "{m}");
        let m = bad("0 0 * FOO *");
        assert!(m.contains("\"FOO\""), "{m}");
        let m = bad("*/0 * * * *");
        assert!(m.contains("*/0"), "{m}");
        let m = bad("0 0 L * *");
        assert!(m.contains("\"L\""), "{m}");
        let m = bad("5-1 * * * *");
        assert!(m.contains("5-1"), "{m}");
        assert!(bad("* * * *").contains("4 fields"));
        assert!(bad("0 0 0 * * * 2026").contains("7 fields"));
        assert!(bad("1,,2 * * * *").contains("empty"));
        assert!(bad("").contains("empty"));
        assert!(bad("0 ? * * *").contains("\"?\""));
        assert!(bad("0 0 30 2 *").contains("never matches"));
        assert!(bad("0 0 31 4,6,9,11 *").contains("never matches"));
    }

    #[test]
    fn day_fields_follow_crontab_or_rule() {
        // Both restricted: either matches.
        let e = p("0 0 13 * FRI");
        assert!(e.matches(date(2026, 3, 13).at(0, 0, 0, 0))); // Friday 13th
        assert!(e.matches(date(2026, 3, 6).at(0, 0, 0, 0))); // a Friday
        assert!(e.matches(date(2026, 4, 13).at(0, 0, 0, 0))); // a Monday, the 13th
        assert!(!e.matches(date(2026, 4, 14).at(0, 0, 0, 0)));
        // Day-of-month starts with '*': both must match.
        let e = p("0 0 */2 * MON");
        assert!(e.matches(date(2026, 3, 9).at(0, 0, 0, 0))); // Monday 9th
        assert!(!e.matches(date(2026, 3, 2).at(0, 0, 0, 0))); // Monday 2nd
        assert!(!e.matches(date(2026, 3, 11).at(0, 0, 0, 0))); // Wednesday 11th
    }

    #[test]
    fn next_match_crosses_month_and_year_ends() {
        let e = p("0 0 0 1 * *");
        assert_eq!(
            e.next_match(date(2026, 12, 1).at(0, 0, 1, 0), None),
            Some(date(2027, 1, 1).at(0, 0, 0, 0))
        );
        let e = p("0 0 31 * *");
        assert_eq!(
            e.next_match(date(2026, 4, 1).at(0, 0, 0, 0), None),
            Some(date(2026, 5, 31).at(0, 0, 0, 0))
        );
        let e = p("59 59 23 31 12 *");
        assert_eq!(
            e.next_match(date(2026, 1, 1).at(0, 0, 0, 0), None),
            Some(date(2026, 12, 31).at(23, 59, 59, 0))
        );
        // Sub-seconds round up.
        let e = p("* * * * * *");
        assert_eq!(
            e.next_match(date(2026, 1, 1).at(0, 0, 0, 1), None),
            Some(date(2026, 1, 1).at(0, 0, 1, 0))
        );
        // The limit is exclusive.
        let e = p("0 12 * * *");
        assert_eq!(
            e.next_match(
                date(2026, 1, 1).at(0, 0, 0, 0),
                Some(date(2026, 1, 1).at(12, 0, 0, 0))
            ),
            None
        );
    }

    #[test]
    fn feb_29_waits_for_a_leap_year() {
        let e = p("0 0 29 2 *");
        assert_eq!(
            e.next_match(date(2026, 3, 1).at(0, 0, 0, 0), None),
            Some(date(2028, 2, 29).at(0, 0, 0, 0))
        );
        // 2100 is not a leap year.
        assert_eq!(
            e.next_match(date(2096, 3, 1).at(0, 0, 0, 0), None),
            Some(date(2104, 2, 29).at(0, 0, 0, 0))
        );
    }

    #[test]
    fn next_match_agrees_with_a_linear_scan() {
        let cases = [
            ("*/7 3-5 * * *", 60, 40),
            ("15,45 */6 1,15 * *", 60, 40),
            ("0 0 13 * FRI", 60, 40),
            ("10 20 3 * * SAT", 1, 8),
        ];
        for (expr, step_secs, days) in cases {
            let e = p(expr);
            let start = date(2026, 2, 20).at(0, 0, 0, 0);
            let mut t = start;
            let mut expected = None;
            for _ in 0..(days * 86_400 / step_secs) {
                if e.matches(t) {
                    expected = Some(t);
                    break;
                }
                t = t
                    .checked_add(jiff::SignedDuration::from_secs(step_secs))
                    .unwrap();
            }
            assert!(expected.is_some(), "{expr}");
            assert_eq!(e.next_match(start, None), expected, "{expr}");
        }
    }
}
