//! Property tests of cron rules against an independent brute-force model.
//!
//! The model decides, for each real instant on its own, whether a rule fires
//! there (see `model_fires`): the wall time matches and is not a repeated
//! occurrence (unless the rule selects every hour), or the instant ends a
//! daylight-saving gap that swallowed a matching wall time (fixed-time rules
//! only). `Rule::next_after` walks segments between transitions instead; the
//! two must agree exactly.

use jiff::SignedDuration;
use jiff::tz::{AmbiguousOffset, TimeZone};
use proptest::prelude::*;
use reeve_core::Timestamp;
use reeve_schedule::Rule;
use reeve_schedule::cron::CronExpr;

const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe", // 30-minute shift
    "Pacific/Chatham",     // +12:45 / +13:45
    "Asia/Kolkata",        // no DST
    "America/Santiago",    // southern hemisphere, midnight transitions
    "Europe/London",
];

/// 2026-01-01T00:00:00Z and 2027-01-01T00:00:00Z in seconds.
const YEAR_START: i64 = 1_767_225_600;
const YEAR_END: i64 = 1_798_761_600;

fn field(min: u32, max: u32) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("*".to_string()),
        3 => (min..=max).prop_map(|v| v.to_string()),
        2 => (min..=max, min..=max).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
        2 => (1..=(max - min + 1).min(13)).prop_map(|s| format!("*/{s}")),
        1 => (min..=max, 1u32..=7).prop_map(|(a, s)| format!("{a}/{s}")),
        2 => proptest::collection::vec(min..=max, 2..=4).prop_map(|v| v
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")),
    ]
}

/// Five-field rules biased toward the hours around DST transitions.
fn five_field() -> impl Strategy<Value = String> {
    let hour = prop_oneof![
        3 => field(0, 23),
        2 => (0u32..=4).prop_map(|h| h.to_string()),
        1 => Just("1-3".to_string()),
        1 => Just("2,3".to_string()),
    ];
    (field(0, 59), hour, field(1, 31), field(1, 12), field(0, 7))
        .prop_map(|(mi, h, dom, mon, dow)| format!("{mi} {h} {dom} {mon} {dow}"))
}

fn six_field() -> impl Strategy<Value = String> {
    (field(0, 59), five_field()).prop_map(|(s, rest)| format!("{s} {rest}"))
}

fn parse(expr: &str, zone: &str) -> Option<(Rule, CronExpr, TimeZone)> {
    let rule = Rule::cron(expr, Some(zone)).ok()?;
    let parsed = CronExpr::parse(expr).ok()?;
    Some((rule, parsed, TimeZone::get(zone).unwrap()))
}

fn jts(secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(secs).unwrap()
}

/// The independent model: does the rule fire at instant `t` (whole seconds)?
fn model_fires(expr: &CronExpr, tz: &TimeZone, t: jiff::Timestamp) -> bool {
    let wall = tz.to_datetime(t);
    let follows_real_time = expr.every_hour();
    let amb = tz.to_ambiguous_timestamp(wall);
    let repeated =
        matches!(amb.offset(), AmbiguousOffset::Fold { .. }) && amb.earlier().unwrap() != t;
    if expr.matches(wall) && (follows_real_time || !repeated) {
        return true;
    }
    if follows_real_time {
        return false;
    }
    let before = tz.to_offset(t - SignedDuration::from_nanos(1));
    let now = tz.to_offset(t);
    if before >= now {
        return false;
    }
    // A gap ends at t: did it swallow a matching wall time?
    let mut w = before.to_datetime(t);
    let end = now.to_datetime(t);
    while w < end {
        if expr.matches(w) {
            return true;
        }
        w = w.checked_add(SignedDuration::from_secs(1)).unwrap();
    }
    false
}

/// Whether `t` is a legitimate firing: the wall time matches, or `t` is the
/// documented gap substitute.
fn is_documented_firing(expr: &CronExpr, tz: &TimeZone, t: jiff::Timestamp) -> bool {
    model_fires(expr, tz, t)
}

fn next(rule: &Rule, after: i64) -> Option<i64> {
    rule.next_after(Timestamp::from_millis(after * 1000), None)
        .map(|t| t.millis() / 1000)
}

/// Compares `next_after` with the model over `[from, from + span)`, stepping
/// `step` seconds (60 for five-field rules, whose seconds are 0).
fn check_window(
    expr: &str,
    zone: &str,
    from: i64,
    span: i64,
    step: i64,
) -> Result<(), TestCaseError> {
    let Some((rule, parsed, tz)) = parse(expr, zone) else {
        return Ok(());
    };
    let from = from - from.rem_euclid(step);
    let mut expected = Vec::new();
    let mut t = from;
    while t < from + span {
        if model_fires(&parsed, &tz, jts(t)) {
            expected.push(t);
        }
        t += step;
    }
    let mut actual = Vec::new();
    let mut cur = from - 1;
    while let Some(n) = next(&rule, cur) {
        if n >= from + span {
            break;
        }
        actual.push(n);
        cur = n;
    }
    prop_assert_eq!(actual, expected, "{} in {}", expr, zone);
    Ok(())
}

/// Transition instants of 2026 in `zone`, plus a plain mid-year instant.
fn interesting_instants(zone: &str) -> Vec<i64> {
    let tz = TimeZone::get(zone).unwrap();
    let mut out: Vec<i64> = tz
        .following(jts(YEAR_START))
        .take_while(|tr| tr.timestamp() < jts(YEAR_END))
        .map(|tr| tr.timestamp().as_second())
        .collect();
    out.push(YEAR_START + 180 * 86_400);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Over random rules and start instants across a year: strictly
    /// increasing, and every instant is a documented firing.
    #[test]
    fn sequence_is_increasing_and_matches(
        expr in prop_oneof![3 => five_field(), 1 => six_field()],
        zone in proptest::sample::select(ZONES),
        start in YEAR_START..YEAR_END,
    ) {
        let Some((rule, parsed, tz)) = parse(&expr, zone) else {
            return Ok(());
        };
        let mut cur = start;
        for _ in 0..150 {
            let Some(n) = next(&rule, cur) else {
                prop_assert!(false, "{} in {} stopped after {}", expr, zone, cur);
                unreachable!();
            };
            prop_assert!(n > cur, "{} in {}: {} !> {}", expr, zone, n, cur);
            prop_assert!(
                is_documented_firing(&parsed, &tz, jts(n)),
                "{} in {}: {} is not a firing",
                expr,
                zone,
                jts(n)
            );
            cur = n;
        }
    }

    /// Around every 2026 transition of a zone, minute by minute, the exact set
    /// of five-field firings equals the model's.
    #[test]
    fn five_field_rules_agree_with_the_model_around_transitions(
        expr in five_field(),
        zone in proptest::sample::select(ZONES),
        pick in any::<prop::sample::Index>(),
        lead in 0i64..(2 * 86_400),
    ) {
        let instants = interesting_instants(zone);
        let around = instants[pick.index(instants.len())];
        check_window(&expr, zone, around - lead, 3 * 86_400, 60)?;
    }

    /// The same for six-field rules, second by second, over a few hours.
    #[test]
    fn six_field_rules_agree_with_the_model_around_transitions(
        expr in six_field(),
        zone in proptest::sample::select(ZONES),
        pick in any::<prop::sample::Index>(),
        lead in 0i64..(3 * 3600),
    ) {
        let instants = interesting_instants(zone);
        let around = instants[pick.index(instants.len())];
        check_window(&expr, zone, around - lead, 4 * 3600, 1)?;
    }

    /// Interval rules: nominal times are anchor + k·every, never drifting.
    #[test]
    fn every_rules_never_drift(
        every_ms in 1_000i64..(86_400_000 * 7),
        anchor in -1_000_000_000_000i64..4_000_000_000_000,
        offset in 0i64..1_000_000_000,
    ) {
        let rule = Rule::every(std::time::Duration::from_millis(every_ms as u64), None).unwrap();
        let anchor_ts = Timestamp::from_millis(anchor);
        let after = Timestamp::from_millis(anchor + offset);
        let n = rule.next_after(after, Some(anchor_ts)).unwrap().millis();
        prop_assert!(n > after.millis());
        prop_assert!(n - every_ms <= after.millis());
        prop_assert_eq!((n - anchor).rem_euclid(every_ms), 0);
    }
}

#[test]
fn every_rule_has_no_drift_over_ten_thousand_steps() {
    let every = 3_600_007; // deliberately not a round number
    let rule = Rule::every(std::time::Duration::from_millis(every), None).unwrap();
    let anchor = Timestamp::parse("2026-01-01T00:00:00.123Z").unwrap();
    let mut t = anchor;
    for k in 1..=10_000i64 {
        // The daemon is always a little late; the nominal time does not care.
        let late = Timestamp::from_millis(t.millis() + (k * 7919) % 3_000_000);
        let next = rule.next_after(late, Some(anchor)).unwrap();
        assert_eq!(
            next.millis(),
            anchor.millis() + k * every as i64,
            "step {k}"
        );
        // Anchoring on the last nominal time gives the same answer.
        assert_eq!(rule.next_after(late, Some(t)), Some(next));
        t = next;
    }
}
