//! Property tests of the rule parsers: cron expressions and interval rules.
//!
//! `cron_props.rs` checks *when* parsed rules fire against a brute-force
//! model; this file checks the parsing itself: arbitrary text never panics,
//! what parses re-parses to the same rule, generated well-formed expressions
//! (values, ranges, steps, lists, names, `?`, aliases, 5 and 6 fields) always
//! parse, and an expression with one field out of range is refused with a
//! message naming the token and the cron field.

use std::time::Duration;

use proptest::prelude::*;
use reeve_core::Timestamp;
use reeve_schedule::Rule;
use reeve_schedule::cron::CronExpr;

const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Asia/Kathmandu",
];

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// One cron field's name in messages and its accepted range.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The value of `names[0]`.
    name_base: u32,
}

const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    name_base: 0,
};
const MINUTE: Field = Field {
    name: "minute",
    ..SECOND
};
const HOUR: Field = Field {
    name: "hour",
    max: 23,
    ..SECOND
};
/// Days 1–28 only, so every generated rule has a real date whatever its
/// months (`0 0 30 2 *` is rightly refused; that is tested separately).
const DAY_OF_MONTH: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 28,
    names: &[],
    name_base: 0,
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &MONTHS,
    name_base: 1,
};
const DAY_OF_WEEK: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &WEEKDAYS,
    name_base: 0,
};

/// A value of `f`, as a number or (when the field has them) a name in any
/// letter case.
fn value(f: Field) -> impl Strategy<Value = (u32, String)> {
    let names = f.names;
    (f.min..=f.max, any::<bool>(), any::<bool>()).prop_map(move |(v, by_name, lower)| {
        let i = v.checked_sub(f.name_base).map(|i| i as usize);
        match i.and_then(|i| names.get(i)) {
            Some(n) if by_name && lower => (v, n.to_ascii_lowercase()),
            Some(n) if by_name => (v, n.to_string()),
            _ => (v, v.to_string()),
        }
    })
}

/// One list item: `*`, `?` (day fields), a value, a range, each with an
/// optional step.
fn item(f: Field) -> impl Strategy<Value = String> {
    let question = f.name.starts_with("day-");
    let step = prop::option::of(1u32..=(f.max - f.min + 2));
    prop_oneof![
        2 => step.clone().prop_map(|s| match s {
            Some(s) => format!("*/{s}"),
            None => "*".into(),
        }),
        1 => Just(if question { "?" } else { "*" }.to_string()),
        3 => value(f).prop_map(|(_, t)| t),
        2 => (value(f), value(f), step.clone()).prop_map(|((a, at), (b, bt), s)| {
            let (lo, hi) = if a <= b { (at, bt) } else { (bt, at) };
            match s {
                Some(s) => format!("{lo}-{hi}/{s}"),
                None => format!("{lo}-{hi}"),
            }
        }),
        1 => (value(f), 1u32..=7).prop_map(|((_, t), s)| format!("{t}/{s}")),
    ]
}

/// A whole field: one item or a comma list of them.
fn field(f: Field) -> impl Strategy<Value = String> {
    prop::collection::vec(item(f), 1..=3).prop_map(|items| items.join(","))
}

/// Well-formed expressions, 5 or 6 fields or an alias, with random spacing.
fn valid_expr() -> impl Strategy<Value = String> {
    let five = || {
        (
            field(MINUTE),
            field(HOUR),
            field(DAY_OF_MONTH),
            field(MONTH),
            field(DAY_OF_WEEK),
        )
            .prop_map(|(a, b, c, d, e)| vec![a, b, c, d, e])
    };
    let fields = prop_oneof![
        4 => five(),
        1 => (field(SECOND), five()).prop_map(|(s, mut rest)| {
            rest.insert(0, s);
            rest
        }),
    ];
    prop_oneof![
        8 => (fields, prop::sample::select(vec![" ", "  ", "\t", " \t "]))
            .prop_map(|(f, sep)| format!(" {} ", f.join(sep))),
        1 => prop::sample::select(vec![
            "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly",
            "@DAILY", "@Hourly",
        ])
        .prop_map(str::to_string),
    ]
}

/// A 5-field expression whose field `position` holds `bad`; the other fields
/// are `*` (or `1` for day-of-month, so the rule stays satisfiable).
fn with_field(position: usize, bad: &str) -> String {
    let mut fields = ["*", "*", "*", "*", "*"].map(str::to_string);
    fields[position] = bad.to_string();
    fields.join(" ")
}

/// Out-of-range values of one 5-field position: (position, field name, text).
fn out_of_range() -> impl Strategy<Value = (usize, &'static str, String)> {
    let above = |pos: usize, name: &'static str, max: u32| {
        ((max + 1)..1000).prop_map(move |v| (pos, name, v.to_string()))
    };
    prop_oneof![
        above(0, "minute", 59),
        above(1, "hour", 23),
        above(2, "day-of-month", 31),
        Just((2, "day-of-month", "0".to_string())),
        above(3, "month", 12),
        Just((3, "month", "0".to_string())),
        above(4, "day-of-week", 7),
    ]
}

fn jts(t: Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(t.millis()).unwrap()
}

/// 2000-01-01 .. 2100-01-01, in milliseconds.
const FROM_MS: i64 = 946_684_800_000;
const UNTIL_MS: i64 = 4_102_444_800_000;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary text never panics the cron parser, and whatever parses
    /// re-parses from its display to the same expression.
    #[test]
    fn arbitrary_text_never_panics_and_parses_stably(
        text in prop_oneof![
            2 => "[0-9*/,?@ a-zA-Z\t-]{0,40}",
            1 => any::<String>(),
        ],
        zone in prop::sample::select(ZONES),
    ) {
        match CronExpr::parse(&text) {
            Ok(expr) => {
                let again = CronExpr::parse(&expr.to_string());
                prop_assert_eq!(again.as_ref(), Ok(&expr), "{:?}", text);
                let rule = Rule::cron(&text, Some(zone));
                prop_assert!(rule.is_ok(), "{:?} in {}: {:?}", text, zone, rule);
            }
            Err(e) => prop_assert_eq!(e.field, "cron"),
        }
    }

    /// Well-formed expressions always parse; their next fire time from a
    /// random instant in a random zone is strictly later, is a whole second,
    /// and (outside a daylight-saving gap, where the documented substitute
    /// fires) its wall time matches the expression.
    #[test]
    fn generated_valid_expressions_parse_and_fire_after_the_start(
        text in valid_expr(),
        zone in prop::sample::select(ZONES),
        start in FROM_MS..UNTIL_MS,
    ) {
        let expr = CronExpr::parse(&text);
        prop_assert!(expr.is_ok(), "{:?}: {:?}", text, expr);
        let expr = expr.unwrap();
        let again = CronExpr::parse(expr.as_str());
        prop_assert_eq!(again.as_ref(), Ok(&expr));
        let rule = Rule::cron(&text, Some(zone)).unwrap();
        let after = Timestamp::from_millis(start);
        let next = rule.next_after(after, None);
        prop_assert!(next.is_some(), "{:?} in {} after {}", text, zone, after);
        let next = next.unwrap();
        prop_assert!(next > after, "{:?} in {}: {} !> {}", text, zone, next, after);
        prop_assert_eq!(next.millis() % 1000, 0);
        let tz = jiff::tz::TimeZone::get(zone).unwrap();
        let wall = tz.to_datetime(jts(next));
        let ends_gap = tz.to_offset(jts(next) - jiff::SignedDuration::from_nanos(1))
            < tz.to_offset(jts(next));
        prop_assert!(
            expr.matches(wall) || ends_gap,
            "{:?} in {}: {} ({}) does not match", text, zone, next, wall
        );
        // Nothing between `after` and `next` was skipped: the wall-clock
        // search from the start's wall time finds no earlier match.
        if !ends_gap && tz.to_offset(jts(after)) == tz.to_offset(jts(next)) {
            let from = tz.to_datetime(jts(after));
            let first = expr.next_match(from, None).unwrap();
            let first = if first == from {
                let later = from.checked_add(jiff::SignedDuration::from_secs(1)).unwrap();
                expr.next_match(later, None).unwrap()
            } else {
                first
            };
            prop_assert_eq!(first, wall, "{:?} in {} after {}", text, zone, after);
        }
    }

    /// One field out of range: refused on the field `cron`, the message
    /// naming the token and the cron field it sits in.
    #[test]
    fn an_out_of_range_field_is_refused_naming_the_token_and_field(
        (position, name, bad) in out_of_range(),
        in_list in any::<bool>(),
        in_range in any::<bool>(),
    ) {
        let written = match (in_list, in_range) {
            (true, _) => format!("1,{bad}"),
            (false, true) if name == "day-of-month" || name == "month" => format!("1-{bad}"),
            (false, true) => format!("0-{bad}"),
            (false, false) => bad.clone(),
        };
        let text = with_field(position, &written);
        let e = CronExpr::parse(&text).unwrap_err();
        prop_assert_eq!(&e.field, "cron");
        prop_assert!(e.message.contains(&format!("{bad:?}")), "{}: {}", text, e.message);
        prop_assert!(e.message.contains(&format!("the {name} field")), "{}: {}", text, e.message);
        prop_assert!(Rule::cron(&text, Some("UTC")).is_err());
    }

    /// Arbitrary `every` / `jitter` text never panics; accepted rules are at
    /// least a second, whole milliseconds, jitter within every, and fire on
    /// `anchor + k·every` strictly after the start.
    #[test]
    fn interval_rules_never_panic_and_fire_on_the_anchor_grid(
        every in prop_oneof![
            3 => "[0-9]{1,7}(\\.[0-9]{1,4})?(ms|s|m|h|us|ns| hours)",
            1 => any::<String>(),
        ],
        jitter in prop::option::of("[0-9]{1,7}(ms|s|m|h)"),
        anchor in FROM_MS..UNTIL_MS,
        lead in -1_000_000_000i64..1_000_000_000,
    ) {
        match Rule::parse(None, None, Some(&every), jitter.as_deref()) {
            Ok(rule) => {
                let e = rule.interval().unwrap();
                prop_assert!(e >= Duration::from_secs(1), "{:?}", every);
                prop_assert_eq!(e.subsec_nanos() % 1_000_000, 0);
                prop_assert!(rule.jitter().is_none_or(|j| j <= e));
                let every_ms = e.as_millis() as i64;
                let after = Timestamp::from_millis(anchor + lead);
                let next = rule.next_after(after, Some(Timestamp::from_millis(anchor))).unwrap();
                prop_assert!(next > after);
                prop_assert_eq!((next.millis() - anchor).rem_euclid(every_ms), 0);
                prop_assert!(next.millis() >= anchor);
                // The rule reads back from its own serialisation.
                let json = serde_json::to_string(&rule).unwrap();
                let back: Rule = serde_json::from_str(&json).unwrap();
                prop_assert_eq!(back, rule);
            }
            Err(e) => prop_assert!(e.field == "every" || e.field == "jitter", "{}", e),
        }
    }

    /// A jitter longer than the interval is refused on `jitter`; an interval
    /// under a second on `every`.
    #[test]
    fn interval_bounds_are_refused_naming_the_field(
        every_s in 1u64..100_000,
        extra_ms in 1u64..100_000,
        short_ms in 0u64..1000,
    ) {
        let every = format!("{every_s}s");
        let jitter = format!("{}ms", every_s * 1000 + extra_ms);
        let e = Rule::parse(None, None, Some(&every), Some(&jitter)).unwrap_err();
        prop_assert_eq!(e.field, "jitter");
        let e = Rule::parse(None, None, Some(&format!("{short_ms}ms")), None).unwrap_err();
        prop_assert_eq!(e.field, "every");
    }
}

#[test]
fn a_day_that_never_happens_is_refused() {
    for text in ["0 0 30 2 *", "0 0 31 2,4 *", "0 0 31 APR *"] {
        let e = CronExpr::parse(text).unwrap_err();
        assert!(e.message.contains("never matches"), "{text}: {e}");
    }
}
