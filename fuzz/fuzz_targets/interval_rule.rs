//! Fuzzes interval rules: `every` and `jitter` as written in a schedule.
//!
//! Input: `every` on the first line, `jitter` on the second (an empty line
//! means none); the bytes after pick the anchor and the start. Asserts:
//! errors name `every` or `jitter`; an accepted rule is at least a second,
//! whole milliseconds, with jitter no longer than the interval; the next
//! nominal time is strictly after the start and on the grid `anchor +
//! k·every`; the jitter offset stays within the jitter; the rule survives
//! its JSON form.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use reeve_core::Timestamp;
use reeve_schedule::Rule;

fuzz_target!(|data: &[u8]| {
    let Some((fields, mut numbers)) = reeve_fuzz::split(data, 2) else {
        return;
    };
    let every = fields[0];
    let jitter = Some(fields[1]).filter(|j| !j.is_empty());
    let anchor = numbers.instant_millis();
    let after = numbers.instant_millis();
    let rule = match Rule::parse(None, None, Some(every), jitter) {
        Ok(rule) => rule,
        Err(e) => {
            assert!(
                e.field == "every" || e.field == "jitter",
                "{every:?} {jitter:?}: {e}"
            );
            assert!(!e.message.is_empty());
            return;
        }
    };
    let interval = rule.interval().expect("an every rule has an interval");
    assert!(interval >= Duration::from_secs(1), "{every:?}");
    assert_eq!(interval.subsec_nanos() % 1_000_000, 0, "{every:?}");
    if let Some(j) = rule.jitter() {
        assert!(j <= interval && !j.is_zero(), "{jitter:?}");
    }
    let _ = rule.describe();
    let json = serde_json::to_string(&rule).unwrap();
    let back: Rule = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
    assert_eq!(back, rule, "{json}");

    let every_ms = i64::try_from(interval.as_millis()).unwrap();
    let (anchor_ts, after_ts) = (
        Timestamp::from_millis(anchor),
        Timestamp::from_millis(after),
    );
    // Instants stay within jiff's range and intervals within MAX_DURATION,
    // so the grid point never overflows: there is always a next one.
    let next = rule
        .next_after(after_ts, Some(anchor_ts))
        .unwrap_or_else(|| panic!("{every:?} anchored at {anchor_ts}: nothing after {after_ts}"));
    assert!(next > after_ts, "{next} !> {after_ts}");
    assert!(next >= anchor_ts);
    assert_eq!((next.millis() - anchor) % every_ms, 0);
    assert!(next.millis() - every_ms <= after.max(anchor - every_ms));
    let offset = rule.jitter_offset("fuzz", next);
    assert!(offset <= rule.jitter().unwrap_or(Duration::ZERO));
});
