//! Fuzzes the human duration and timestamp parsers of reeve-core.
//!
//! Input: text on the first line (parsed as a duration and as an RFC 3339
//! timestamp); the bytes after give a millisecond count. Asserts: accepted
//! durations are whole milliseconds, at most `MAX_DURATION`, and parse back
//! from their display; every duration in range displays to text that parses
//! back to it; refusals say something; accepted timestamps parse back from
//! their display.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use reeve_core::Timestamp;
use reeve_core::time::{MAX_DURATION, format_duration, parse_duration};

fuzz_target!(|data: &[u8]| {
    let Some((fields, mut numbers)) = reeve_fuzz::split(data, 1) else {
        return;
    };
    let text = fields[0];
    match parse_duration(text) {
        Ok(d) => {
            assert_eq!(d.subsec_nanos() % 1_000_000, 0, "{text:?} -> {d:?}");
            assert!(d <= MAX_DURATION, "{text:?} -> {d:?}");
            let shown = format_duration(d);
            assert_eq!(parse_duration(&shown), Ok(d), "{text:?} shown as {shown:?}");
        }
        Err(message) => assert!(!message.is_empty()),
    }
    let max_ms = MAX_DURATION.as_millis() as u64;
    let d = Duration::from_millis(numbers.i64() as u64 % (max_ms + 1));
    let shown = format_duration(d);
    assert_eq!(parse_duration(&shown), Ok(d), "{shown:?}");

    match Timestamp::parse(text) {
        Ok(t) => {
            let shown = t.to_string();
            assert_eq!(
                Timestamp::parse(&shown),
                Ok(t),
                "{text:?} shown as {shown:?}"
            );
        }
        Err(message) => assert!(!message.is_empty()),
    }
});
