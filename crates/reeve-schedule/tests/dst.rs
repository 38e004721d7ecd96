//! Daylight-saving behaviour of cron rules, pinned on real zones and dates.
//!
//! Europe/Berlin 2026: spring forward 2026-03-29 02:00 CET → 03:00 CEST
//! (01:00Z); fall back 2026-10-25 03:00 CEST → 02:00 CET (01:00Z).
//! America/New_York 2026: spring forward 2026-03-08 02:00 EST → 03:00 EDT
//! (07:00Z); fall back 2026-11-01 02:00 EDT → 01:00 EST (06:00Z).

use reeve_core::Timestamp;
use reeve_schedule::Rule;

fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap()
}

fn cron(expr: &str, tz: &str) -> Rule {
    Rule::cron(expr, Some(tz)).unwrap()
}

/// Every firing in `[from, until)`.
fn firings(rule: &Rule, from: &str, until: &str) -> Vec<Timestamp> {
    let from = ts(from);
    let until = ts(until);
    rule.fire_times(
        Timestamp::from_millis(from.millis() - 1),
        until,
        None,
        100_000,
    )
    .into_iter()
    .filter(|t| *t < until)
    .collect()
}

/// The local day `date` in `tz` as `[start, end)` RFC 3339 instants.
fn local_day(date: &str, tz: &str) -> (String, String) {
    let d: jiff::civil::Date = date.parse().unwrap();
    let start = d
        .to_zoned_datetime(jiff::tz::TimeZone::get(tz).unwrap())
        .unwrap();
    let end = d
        .tomorrow()
        .unwrap()
        .to_zoned_datetime(jiff::tz::TimeZone::get(tz).unwrap())
        .unwrap();
    (start.timestamp().to_string(), end.timestamp().to_string())
}

fn strings(v: &[Timestamp]) -> Vec<String> {
    v.iter()
        .map(|t| {
            jiff::Timestamp::from_millisecond(t.millis())
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn berlin_daily_0230_fires_once_on_both_change_days() {
    let rule = cron("30 2 * * *", "Europe/Berlin");
    // Spring: 02:30 does not exist on the 29th; it fires at 03:00 CEST.
    assert_eq!(
        strings(&firings(
            &rule,
            "2026-03-27T12:00:00Z",
            "2026-03-31T12:00:00Z"
        )),
        [
            "2026-03-28T01:30:00Z", // 02:30 CET
            "2026-03-29T01:00:00Z", // gap → 03:00 CEST
            "2026-03-30T00:30:00Z", // 02:30 CEST
            "2026-03-31T00:30:00Z",
        ]
    );
    // Fall: 02:30 happens twice on the 25th; it fires at the first (CEST).
    assert_eq!(
        strings(&firings(
            &rule,
            "2026-10-23T12:00:00Z",
            "2026-10-27T12:00:00Z"
        )),
        [
            "2026-10-24T00:30:00Z", // 02:30 CEST
            "2026-10-25T00:30:00Z", // 02:30 CEST, first occurrence only
            "2026-10-26T01:30:00Z", // 02:30 CET
            "2026-10-27T01:30:00Z",
        ]
    );
}

#[test]
fn new_york_daily_rules_fire_once_on_both_change_days() {
    let rule = cron("30 2 * * *", "America/New_York");
    assert_eq!(
        strings(&firings(
            &rule,
            "2026-03-07T00:00:00Z",
            "2026-03-10T00:00:00Z"
        )),
        [
            "2026-03-07T07:30:00Z", // 02:30 EST
            "2026-03-08T07:00:00Z", // gap → 03:00 EDT
            "2026-03-09T06:30:00Z", // 02:30 EDT
        ]
    );
    assert_eq!(
        strings(&firings(
            &rule,
            "2026-10-31T00:00:00Z",
            "2026-11-03T00:00:00Z"
        )),
        [
            "2026-10-31T06:30:00Z", // 02:30 EDT
            "2026-11-01T07:30:00Z", // 02:30 EST (02:xx is not repeated in New York)
            "2026-11-02T07:30:00Z",
        ]
    );
    // In New York the repeated hour is 01:xx.
    let rule = cron("30 1 * * *", "America/New_York");
    assert_eq!(
        strings(&firings(
            &rule,
            "2026-10-31T00:00:00Z",
            "2026-11-03T00:00:00Z"
        )),
        [
            "2026-10-31T05:30:00Z", // 01:30 EDT
            "2026-11-01T05:30:00Z", // 01:30 EDT, first occurrence only
            "2026-11-02T06:30:00Z", // 01:30 EST
        ]
    );
}

#[test]
fn hourly_rule_fires_every_real_hour() {
    for (tz, spring, fall) in [
        ("Europe/Berlin", "2026-03-29", "2026-10-25"),
        ("America/New_York", "2026-03-08", "2026-11-01"),
    ] {
        let rule = cron("0 * * * *", tz);
        for (day, expected) in [(spring, 23), (fall, 25), ("2026-06-15", 24)] {
            let (from, until) = local_day(day, tz);
            let fired = firings(&rule, &from, &until);
            assert_eq!(fired.len(), expected, "{tz} {day}: {:?}", strings(&fired));
            for w in fired.windows(2) {
                assert_eq!(w[1].millis() - w[0].millis(), 3_600_000, "{tz} {day}");
            }
        }
        // @hourly is the same rule.
        let (from, until) = local_day(fall, tz);
        assert_eq!(firings(&cron("@hourly", tz), &from, &until).len(), 25);
    }
}

#[test]
fn minutely_and_half_hourly_rules_keep_real_cadence() {
    for tz in ["Europe/Berlin", "America/New_York"] {
        for (expr, step_ms) in [("*/30 * * * *", 1_800_000), ("* * * * *", 60_000)] {
            let rule = cron(expr, tz);
            for window in [
                ("2026-03-07T00:00:00Z", "2026-03-09T12:00:00Z"),
                ("2026-03-28T00:00:00Z", "2026-03-30T00:00:00Z"),
                ("2026-10-24T00:00:00Z", "2026-10-26T00:00:00Z"),
                ("2026-10-31T00:00:00Z", "2026-11-02T12:00:00Z"),
            ] {
                let fired = firings(&rule, window.0, window.1);
                for w in fired.windows(2) {
                    assert_eq!(w[1].millis() - w[0].millis(), step_ms, "{tz} {expr}");
                }
            }
        }
    }
}

#[test]
fn hourly_rule_never_repeats_an_instant_over_a_year() {
    for tz in ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"] {
        let rule = cron("0 * * * *", tz);
        let fired = firings(&rule, "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z");
        assert!(fired.windows(2).all(|w| w[0] < w[1]), "{tz}");
        let unique: std::collections::HashSet<_> = fired.iter().collect();
        assert_eq!(unique.len(), fired.len(), "{tz}");
        // One per real hour, except where Lord Howe's half-hour shift moves
        // the wall clock's :00 by 30 minutes.
        if tz != "Australia/Lord_Howe" {
            assert_eq!(fired.len(), 365 * 24, "{tz}");
        }
    }
}

#[test]
fn fixed_hour_rules_in_a_gap_coalesce_into_one_firing() {
    // Every minute of the missing hour: one firing at the end of the gap.
    let rule = cron("* 2 * * *", "Europe/Berlin");
    let (from, until) = local_day("2026-03-29", "Europe/Berlin");
    assert_eq!(
        strings(&firings(&rule, &from, &until)),
        ["2026-03-29T01:00:00Z"]
    );
    // ... and each minute once, first occurrence only, on the long day.
    let (from, until) = local_day("2026-10-25", "Europe/Berlin");
    let fired = firings(&rule, &from, &until);
    assert_eq!(fired.len(), 60);
    assert_eq!(fired[0], ts("2026-10-25T00:00:00Z"));
    assert_eq!(fired[59], ts("2026-10-25T00:59:00Z"));
    // A gap match and a real match at the same instant fire once.
    let rule = cron("0 2,3 * * *", "Europe/Berlin");
    let (from, until) = local_day("2026-03-29", "Europe/Berlin");
    assert_eq!(
        strings(&firings(&rule, &from, &until)),
        ["2026-03-29T01:00:00Z"]
    );
    let (from, until) = local_day("2026-03-30", "Europe/Berlin");
    assert_eq!(firings(&rule, &from, &until).len(), 2);
}

#[test]
fn fixed_time_rule_with_seconds_in_a_fold_fires_once() {
    let rule = cron("15 30 1 * * *", "America/New_York");
    let (from, until) = local_day("2026-11-01", "America/New_York");
    assert_eq!(
        strings(&firings(&rule, &from, &until)),
        ["2026-11-01T05:30:15Z"]
    );
}

#[test]
fn next_after_inside_the_fold_does_not_go_back() {
    // Asked from inside the second pass of Berlin's repeated hour, a 02:30
    // rule waits for the next day, and an every-hour rule fires at the second
    // 02:30.
    let inside = ts("2026-10-25T01:10:00Z"); // 02:10 CET, second pass
    let daily = cron("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        daily.next_after(inside, None),
        Some(ts("2026-10-26T01:30:00Z"))
    );
    let hourly = cron("30 * * * *", "Europe/Berlin");
    assert_eq!(
        hourly.next_after(inside, None),
        Some(ts("2026-10-25T01:30:00Z"))
    );
}

#[test]
fn utc_and_fixed_zones_have_no_transitions() {
    let rule = cron("0 0 29 2 *", "UTC");
    assert_eq!(
        rule.next_after(ts("2026-01-01T00:00:00Z"), None),
        Some(ts("2028-02-29T00:00:00Z"))
    );
    let rule = cron("0 9 * * *", "Asia/Kolkata");
    assert_eq!(
        rule.next_after(ts("2026-03-29T00:00:00Z"), None),
        Some(ts("2026-03-29T03:30:00Z"))
    );
}

#[test]
fn next_after_crosses_year_end_and_respects_or_days() {
    let rule = cron("0 0 1 1 *", "Europe/Berlin");
    assert_eq!(
        rule.next_after(ts("2026-06-01T00:00:00Z"), None),
        Some(ts("2026-12-31T23:00:00Z"))
    );
    // Friday the 13th OR semantics: the 13th or any Friday.
    let rule = cron("0 12 13 * FRI", "UTC");
    let fired = strings(&rule.fire_times(
        ts("2026-03-01T00:00:00Z"),
        ts("2026-03-31T00:00:00Z"),
        None,
        100,
    ));
    assert_eq!(
        fired,
        [
            "2026-03-06T12:00:00Z",
            "2026-03-13T12:00:00Z",
            "2026-03-20T12:00:00Z",
            "2026-03-27T12:00:00Z",
        ]
    );
    let fired = strings(&rule.fire_times(
        ts("2026-04-01T00:00:00Z"),
        ts("2026-04-14T00:00:00Z"),
        None,
        100,
    ));
    assert_eq!(
        fired,
        [
            "2026-04-03T12:00:00Z",
            "2026-04-10T12:00:00Z",
            "2026-04-13T12:00:00Z"
        ]
    );
}

#[test]
fn sub_second_after_is_handled() {
    let rule = cron("* * * * * *", "UTC");
    assert_eq!(
        rule.next_after(ts("2026-01-01T00:00:00.999Z"), None),
        Some(ts("2026-01-01T00:00:01Z"))
    );
    assert_eq!(
        rule.next_after(ts("2026-01-01T00:00:01Z"), None),
        Some(ts("2026-01-01T00:00:02Z"))
    );
    // Before the epoch too.
    assert_eq!(
        rule.next_after(Timestamp::from_millis(-1500), None),
        Some(Timestamp::from_millis(-1000))
    );
}
