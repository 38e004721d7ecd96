//! Property tests of the human-input parsers in reeve-core: durations
//! (`parse_duration` / `format_duration`) and RFC 3339 timestamps, alone and
//! through the enqueue validation that names the field at fault.
//!
//! Invariants pinned here: no input panics; every accepted duration is whole
//! milliseconds, at most `MAX_DURATION`, and survives a trip through its
//! display; negative, sub-millisecond and absurdly large values are refused
//! with an error naming the field; every accepted timestamp survives a trip
//! through its display.

use std::time::Duration;

use proptest::prelude::*;
use reeve_core::Timestamp;
use reeve_core::job::{Availability, EnqueueRequest};
use reeve_core::time::{MAX_DURATION, format_duration, parse_duration};

/// The duration fields of an enqueue, as the API names them.
const DURATION_FIELDS: [&str; 3] = ["max_run_duration", "heartbeat_timeout", "delay"];

/// Limit on payload size passed to validation; irrelevant to these tests.
const PAYLOAD_LIMIT: usize = 1 << 20;

fn request_with(field: &str, value: &str) -> EnqueueRequest {
    let mut r = EnqueueRequest {
        kind: "k".into(),
        ..EnqueueRequest::default()
    };
    let slot = match field {
        "max_run_duration" => &mut r.max_run_duration,
        "heartbeat_timeout" => &mut r.heartbeat_timeout,
        "delay" => &mut r.delay,
        "run_at" => &mut r.run_at,
        other => panic!("no such field {other}"),
    };
    *slot = Some(value.to_string());
    r
}

/// The error of validating an enqueue whose `field` is `value`; fails the
/// case when it validates.
fn refusal(field: &str, value: &str) -> Result<reeve_core::InputError, TestCaseError> {
    match request_with(field, value).validate("", PAYLOAD_LIMIT) {
        Ok(job) => Err(TestCaseError::fail(format!(
            "{field} = {value:?} was accepted as {job:?}"
        ))),
        Err(e) => Ok(e),
    }
}

/// Text that looks like a duration often enough to reach the deep paths:
/// signs, fractions, unit words, ISO 8601, separators.
fn duration_like() -> impl Strategy<Value = String> {
    let unit = prop::sample::select(vec![
        "h", "m", "s", "ms", "us", "µs", "ns", "hours", "minutes", "secs", "d", "w", "y", "",
    ]);
    let part = (
        prop_oneof![Just(""), Just("-"), Just("+")],
        0u64..5_000_000_000_000,
        prop::option::of(0u32..1_000_000_000),
        unit,
        prop_oneof![Just(""), Just(" "), Just(","), Just(" ago")],
    )
        .prop_map(|(sign, n, frac, unit, sep)| match frac {
            Some(f) => format!("{sign}{n}.{f}{unit}{sep}"),
            None => format!("{sign}{n}{unit}{sep}"),
        });
    prop_oneof![
        3 => prop::collection::vec(part, 1..4).prop_map(|p| p.concat()),
        1 => "P(T)?[0-9]{0,12}(\\.[0-9]{0,10})?[HMS]{0,2}[0-9]{0,6}[HMS]?",
        1 => any::<String>(),
    ]
}

/// Whole-millisecond durations in range, spread over every magnitude.
fn valid_duration() -> impl Strategy<Value = Duration> {
    let max_ms = MAX_DURATION.as_millis() as u64;
    prop_oneof![
        (0u64..1_000).prop_map(Duration::from_millis),
        (0u64..86_400_000).prop_map(Duration::from_millis),
        (0u64..=max_ms).prop_map(Duration::from_millis),
        (0u64..=MAX_DURATION.as_secs()).prop_map(Duration::from_secs),
        Just(MAX_DURATION),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary text never panics; what is accepted is in range and reads
    /// back the same from its display.
    #[test]
    fn accepted_durations_are_in_range_and_round_trip(text in duration_like()) {
        if let Ok(d) = parse_duration(&text) {
            prop_assert_eq!(d.subsec_nanos() % 1_000_000, 0, "{:?} -> {:?}", text, d);
            prop_assert!(d <= MAX_DURATION, "{:?} -> {:?}", text, d);
            let shown = format_duration(d);
            prop_assert_eq!(parse_duration(&shown), Ok(d), "{:?} shown as {:?}", text, shown);
        }
    }

    /// Every duration reeve can hold is displayed in a form that parses back
    /// to itself.
    #[test]
    fn every_valid_duration_round_trips_through_its_display(d in valid_duration()) {
        let shown = format_duration(d);
        prop_assert_eq!(parse_duration(&shown), Ok(d), "{}", shown);
    }

    /// Negative durations are refused, naming the field, in every duration
    /// field of an enqueue.
    #[test]
    fn negative_durations_are_refused_naming_the_field(
        field in prop::sample::select(DURATION_FIELDS.to_vec()),
        n in 1u64..1_000_000,
        unit in prop::sample::select(vec!["ms", "s", "m", "h"]),
        ago in any::<bool>(),
    ) {
        let value = if ago { format!("{n}{unit} ago") } else { format!("-{n}{unit}") };
        let e = refusal(field, &value)?;
        prop_assert_eq!(&e.field, field);
        prop_assert!(e.message.contains("negative"), "{}", e);
    }

    /// Precision below a millisecond is refused, naming the field, instead of
    /// being truncated (a `500us` limit would otherwise become zero).
    #[test]
    fn sub_millisecond_durations_are_refused_naming_the_field(
        field in prop::sample::select(DURATION_FIELDS.to_vec()),
        whole_ms in 0u64..100_000,
        sub_ns in 1u32..1_000_000,
        spelling in 0u8..3,
    ) {
        let value = match spelling {
            0 => format!("{whole_ms}.{sub_ns:06}ms"),
            1 => format!("{}ns", whole_ms * 1_000_000 + u64::from(sub_ns)),
            _ => format!("{whole_ms}ms {sub_ns}ns"),
        };
        let e = refusal(field, &value)?;
        prop_assert_eq!(&e.field, field);
        prop_assert!(e.message.contains("whole milliseconds"), "{}", e);
    }

    /// Durations beyond `MAX_DURATION` are refused, naming the field.
    #[test]
    fn absurdly_large_durations_are_refused_naming_the_field(
        field in prop::sample::select(DURATION_FIELDS.to_vec()),
        extra_secs in 1u64..(i64::MAX as u64 - MAX_DURATION.as_secs()),
    ) {
        let value = format!("{}s", MAX_DURATION.as_secs() + extra_secs);
        let e = refusal(field, &value)?;
        prop_assert_eq!(&e.field, field);
        prop_assert!(e.message.contains("at most"), "{}", e);
    }

    /// A zero limit is refused where a limit must be positive; a zero delay
    /// is fine and means "now".
    #[test]
    fn zero_is_refused_only_where_a_positive_duration_is_needed(
        spelling in prop::sample::select(vec!["0s", "0ms", "0h", "PT0S", "0m0s", "-0s"]),
    ) {
        for field in ["max_run_duration", "heartbeat_timeout"] {
            let e = refusal(field, spelling)?;
            prop_assert_eq!(e.field, field);
            prop_assert!(e.message.contains("greater than zero"), "{}", e.message);
        }
        let job = request_with("delay", spelling).validate("", PAYLOAD_LIMIT);
        prop_assert_eq!(job.map(|j| j.availability), Ok(Availability::After(Duration::ZERO)));
    }

    /// Arbitrary text as a timestamp never panics; what is accepted reads
    /// back the same from its display, and in an enqueue it is `run_at`.
    #[test]
    fn accepted_timestamps_round_trip_and_refusals_name_run_at(
        text in prop_oneof![
            2 => "[0-9+-]{0,7}-[0-9]{1,2}-[0-9]{1,2}[Tt ][0-9]{1,2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?(Z|z|[+-][0-9]{2}:[0-9]{2})?",
            1 => any::<String>(),
        ],
    ) {
        match Timestamp::parse(&text) {
            Ok(t) => {
                prop_assert_eq!(Timestamp::parse(&t.to_string()), Ok(t), "{:?}", text);
                let job = request_with("run_at", &text).validate("", PAYLOAD_LIMIT);
                prop_assert_eq!(job.map(|j| j.availability), Ok(Availability::At(t)));
            }
            Err(message) => {
                prop_assert!(message.contains("RFC 3339"), "{}", message);
                let e = refusal("run_at", &text)?;
                prop_assert_eq!(e.field, "run_at");
            }
        }
    }

    /// Every instant in the displayable range round-trips through RFC 3339.
    #[test]
    fn every_displayable_instant_round_trips(
        ms in jiff::Timestamp::MIN.as_millisecond()..=jiff::Timestamp::MAX.as_millisecond(),
    ) {
        let t = Timestamp::from_millis(ms);
        prop_assert_eq!(Timestamp::parse(&t.to_string()), Ok(t));
    }
}

#[test]
fn a_sub_millisecond_duration_is_refused_naming_the_field() {
    // Before the fix `500us` was accepted, passed the "greater than zero"
    // check and was stored as a 0 ms limit.
    for value in ["500us", "1ns", "1.5ms", "PT0.0001S"] {
        assert!(parse_duration(value).is_err(), "{value}");
        let e = request_with("max_run_duration", value)
            .validate("", PAYLOAD_LIMIT)
            .unwrap_err();
        assert_eq!(e.field, "max_run_duration", "{value}");
        assert!(e.message.contains("whole milliseconds"), "{value}: {e}");
    }
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
}

#[test]
fn an_absurdly_large_duration_is_refused_naming_the_field() {
    // Before the fix `9223372036854775807s` was accepted and every deadline
    // computed from it saturated.
    for value in ["9223372036854775807s", "876601h", "2562047788015215h30m7s"] {
        let e = request_with("heartbeat_timeout", value)
            .validate("", PAYLOAD_LIMIT)
            .unwrap_err();
        assert_eq!(e.field, "heartbeat_timeout", "{value}");
        assert!(e.message.contains("at most 876600h"), "{value}: {e}");
    }
    assert_eq!(parse_duration("876600h"), Ok(MAX_DURATION));
}
