//! Fuzzes schedule files (`reeve apply`): the input, as text, is read as a
//! TOML file and as a JSON file.
//!
//! Asserts, beyond "no panic": every error names the file it came from,
//! says something, and any line it gives is inside the file; a file that
//! loads yields schedules whose spec validates to the same schedule, whose
//! `to_spec()` validates back to it, also after a trip through JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reeve_schedule::apply::{ApplyErrors, Format, parse_file};
use reeve_schedule::spec::ScheduleSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count().max(1) + 1;
    for (file, format) in [("fuzz.toml", Format::Toml), ("fuzz.json", Format::Json)] {
        match parse_file(file, text, format) {
            Ok(loaded) => {
                for l in loaded {
                    assert_eq!(l.file, file);
                    assert_eq!(l.spec.validate().as_ref(), Ok(&l.schedule));
                    let spec = l.schedule.to_spec();
                    assert_eq!(spec.validate().as_ref(), Ok(&l.schedule), "{spec:?}");
                    let json = serde_json::to_string(&spec).unwrap();
                    let back: ScheduleSpec =
                        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
                    assert_eq!(back.validate().as_ref(), Ok(&l.schedule), "{json}");
                }
            }
            Err(ApplyErrors(errors)) => {
                assert!(!errors.is_empty());
                for e in errors {
                    assert_eq!(e.file, file, "{e}");
                    assert!(!e.message.is_empty(), "{e:?}");
                    if let Some(line) = e.line {
                        assert!((1..=lines).contains(&line), "{e} ({lines} lines)");
                    }
                    assert!(e.to_string().starts_with(file));
                }
            }
        }
    }
});
