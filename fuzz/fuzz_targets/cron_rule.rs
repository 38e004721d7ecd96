//! Fuzzes the cron parser and the cron fire-time search.
//!
//! Input: the expression on the first line; the bytes after it pick a zone
//! and a start instant. Asserts, beyond "no panic": errors are on the field
//! `cron`; an accepted expression re-parses from its display to itself and
//! is accepted in every zone; the next fire time is strictly after the start,
//! a whole second, and its wall time matches the expression unless it is the
//! documented substitute at the end of a daylight-saving gap; the one after
//! it is later again; the rule survives its JSON form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reeve_core::Timestamp;
use reeve_schedule::Rule;
use reeve_schedule::cron::CronExpr;

/// 1900-01-01 .. 2300-01-01 in milliseconds: starts where a satisfiable rule
/// must find a next fire time (the search covers 400 years).
const SURE_FROM: i64 = -2_208_988_800_000;
const SURE_UNTIL: i64 = 10_413_792_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((fields, mut numbers)) = reeve_fuzz::split(data, 1) else {
        return;
    };
    let text = fields[0];
    let zone = numbers.zone();
    let start = numbers.instant_millis();
    let expr = match CronExpr::parse(text) {
        Ok(expr) => expr,
        Err(e) => {
            assert_eq!(e.field, "cron", "{text:?}: {e}");
            assert!(!e.message.is_empty());
            assert!(Rule::cron(text, Some(zone)).is_err());
            return;
        }
    };
    assert_eq!(expr.to_string(), expr.as_str());
    assert_eq!(
        CronExpr::parse(expr.as_str()).as_ref(),
        Ok(&expr),
        "{text:?} displayed as {:?}",
        expr.as_str()
    );
    let rule = Rule::cron(text, Some(zone)).unwrap_or_else(|e| panic!("{text:?} in {zone}: {e}"));
    let _ = rule.describe();
    let json = serde_json::to_string(&rule).unwrap();
    let back: Rule = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
    assert_eq!(back, rule, "{json}");

    let after = Timestamp::from_millis(start);
    let Some(next) = rule.next_after(after, None) else {
        assert!(
            !(SURE_FROM..SURE_UNTIL).contains(&start),
            "{text:?} in {zone}: no fire time after {after}"
        );
        return;
    };
    assert!(next > after, "{text:?} in {zone}: {next} !> {after}");
    assert_eq!(next.millis().rem_euclid(1000), 0, "{next}");
    let tz = jiff::tz::TimeZone::get(zone).unwrap();
    let at = jiff::Timestamp::from_millisecond(next.millis()).unwrap();
    let wall = tz.to_datetime(at);
    let ends_gap = at
        .checked_sub(jiff::SignedDuration::from_nanos(1))
        .is_ok_and(|before| tz.to_offset(before) < tz.to_offset(at));
    assert!(
        expr.matches(wall) || ends_gap,
        "{text:?} in {zone}: {next} ({wall}) does not match"
    );
    if let Some(again) = rule.next_after(next, None) {
        assert!(again > next, "{text:?} in {zone}: {again} !> {next}");
    }
});
