//! Property tests of schedule files (`reeve apply`) at the parse/validate
//! level: generated schedules written as TOML and as JSON.
//!
//! - A valid schedule loads from both formats to the same `ValidSchedule`,
//!   equal to validating the spec directly, and `to_spec()` validates back
//!   to it.
//! - The same schedule with one field broken is refused with that field's
//!   path and the file's name, in both formats.
//! - All-or-nothing: a batch of files with one bad file loads nothing, and
//!   the errors name only the bad file.
//! - Arbitrary text never panics either parser, and every error names the
//!   file.

use proptest::prelude::*;
use reeve_schedule::apply::{ApplyErrors, Format, load_all, parse_file};
use serde_json::{Map, Value, json};

const ZONES: &[&str] = &["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"];
const CRONS: &[&str] = &[
    "30 2 * * *",
    "*/15 9-17 * * MON-FRI",
    "0 0 1 * *",
    "@daily",
    "0 */6 * * SAT,SUN",
    "15 4 1-7 JAN,JUL *",
];
const REASONS: &[&str] = &[
    "error",
    "exit_code",
    "timeout",
    "heartbeat_lost",
    "rate_limited",
];

/// A duration as a schedule file may write it: human text or whole seconds.
fn duration_value(min_s: u64, max_s: u64) -> impl Strategy<Value = Value> {
    (min_s..=max_s, any::<bool>()).prop_map(|(s, as_text)| {
        if as_text {
            json!(format!("{s}s"))
        } else {
            json!(s)
        }
    })
}

/// The rule fields: a cron (with an optional zone) or an interval (with an
/// optional jitter no longer than it).
fn rule() -> impl Strategy<Value = Map<String, Value>> {
    let cron = (
        prop::sample::select(CRONS),
        prop::option::of(prop::sample::select(ZONES)),
    )
        .prop_map(|(c, tz)| {
            let mut m = Map::new();
            m.insert("cron".into(), json!(c));
            if let Some(tz) = tz {
                m.insert("timezone".into(), json!(tz));
            }
            m
        });
    let every = (1u64..100_000, prop::option::of(0u32..=100), any::<bool>()).prop_map(
        |(every, jitter_pct, as_text)| {
            let mut m = Map::new();
            m.insert(
                "every".into(),
                if as_text {
                    json!(format!("{every}s"))
                } else {
                    json!(every)
                },
            );
            if let Some(p) = jitter_pct {
                let ms = every * 1000 * u64::from(p) / 100;
                m.insert("jitter".into(), json!(format!("{ms}ms")));
            }
            m
        },
    );
    prop_oneof![cron, every]
}

/// A job table with a random subset of its optional fields, all valid.
fn job() -> impl Strategy<Value = Value> {
    (
        "[a-z][a-z0-9_.-]{0,15}",
        prop::option::of("[a-z][a-z0-9-]{0,10}"),
        prop::option::of(-10_000i32..=10_000),
        prop::option::of(1i32..=1000),
        prop::option::of(duration_value(1, 86_400)),
        prop::option::of(duration_value(1, 3600)),
        prop::option::of(1i64..10_000),
        prop::option::of(prop::collection::vec(prop::sample::select(REASONS), 0..3)),
        prop::collection::vec("[a-z]{1,6}=[a-z0-9-]{1,8}", 0..3),
        prop::option::of(("[a-z]{1,8}", "[ -~]{0,20}", any::<i32>())),
    )
        .prop_map(
            |(kind, queue, priority, attempts, run, heartbeat, turns, retry_on, requires, payload)| {
                let mut m = Map::new();
                m.insert("kind".into(), json!(kind));
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                };
                put("queue", queue.map(Value::from));
                put("priority", priority.map(Value::from));
                put("max_attempts", attempts.map(Value::from));
                put("max_run_duration", run);
                put("heartbeat_timeout", heartbeat);
                put("max_turns", turns.map(Value::from));
                put("retry_on", retry_on.map(|r| json!(r)));
                if !requires.is_empty() {
                    put("requires", Some(json!(requires)));
                }
                put(
                    "payload",
                    payload.map(|(k, s, n)| json!({ format!("p_{k}"): s, "n": n, "nested": {"list": [1, 2]} })),
                );
                Value::Object(m)
            },
        )
}

/// A valid schedule object named `name`.
fn schedule(name: String) -> impl Strategy<Value = Value> {
    (
        rule(),
        job(),
        prop::option::of(prop::sample::select(vec![
            "allow",
            "skip",
            "queue_one",
            "cancel_previous",
        ])),
        prop::option::of(prop_oneof![
            prop::sample::select(vec!["fire_once", "skip", "catch_up"]).prop_map(Value::from),
            (1u32..=1000).prop_map(|max| json!({"policy": "catch_up", "max": max})),
        ]),
        prop::option::of(prop::sample::select(vec!["active", "paused"])),
        prop::option::of("[ -~]{0,40}"),
    )
        .prop_map(move |(rule, job, overlap, misfire, status, description)| {
            let mut m = Map::new();
            m.insert("name".into(), json!(name));
            m.extend(rule);
            m.insert("job".into(), job);
            if let Some(o) = overlap {
                m.insert("overlap".into(), json!(o));
            }
            if let Some(v) = misfire {
                m.insert("misfire".into(), v);
            }
            if let Some(s) = status {
                m.insert("status".into(), json!(s));
            }
            if let Some(d) = description {
                m.insert("description".into(), json!(d));
            }
            Value::Object(m)
        })
}

/// A field broken in one of the ways a person gets it wrong: the path the
/// error must name and the (top-level or `job.`) key and value to write.
fn breakage() -> impl Strategy<Value = (&'static str, Value)> {
    prop::sample::select(vec![
        ("name", json!("has space")),
        ("name", json!("")),
        ("cron", json!("61 * * * *")),
        ("cron", json!("0 0 30 2 *")),
        ("timezone", json!("Mars/Olympus")),
        ("every", json!("-5s")),
        ("every", json!(0)),
        ("every", json!("500us")),
        ("description", json!("bell \u{7}")),
        ("overlap", json!("sometimes")),
        ("misfire", json!({"policy": "catch_up", "max": 0})),
        ("status", json!("asleep")),
        ("job.kind", json!("bad kind")),
        ("job.queue", json!("")),
        ("job.priority", json!(10_001)),
        ("job.max_attempts", json!(0)),
        ("job.max_run_duration", json!("1us")),
        ("job.max_run_duration", json!("876601h")),
        ("job.heartbeat_timeout", json!(0)),
        ("job.max_turns", json!(0)),
        ("job.retry_on", json!(["nope"])),
        ("job.command", json!([])),
        ("job.requires", json!(["device"])),
        ("crn", json!("* * * * *")),
        ("job.prio", json!(1)),
    ])
}

/// Applies a breakage to a valid schedule object. Breaking the rule's
/// `cron`/`every`/`timezone` replaces the rule so exactly one field is wrong.
fn broken(mut schedule: Value, path: &str, value: Value) -> Value {
    let m = schedule.as_object_mut().unwrap();
    match path {
        "cron" | "every" => {
            for k in ["cron", "timezone", "every", "jitter"] {
                m.remove(k);
            }
            m.insert(path.into(), value);
        }
        "timezone" => {
            for k in ["every", "jitter"] {
                m.remove(k);
            }
            m.insert("cron".into(), json!("0 * * * *"));
            m.insert("timezone".into(), value);
        }
        p => match p.strip_prefix("job.") {
            Some(k) => {
                m["job"].as_object_mut().unwrap().insert(k.into(), value);
            }
            None => {
                m.insert(p.into(), value);
            }
        },
    }
    schedule
}

/// The expected field path of an error: `job.requires` errors carry the
/// index (`job.requires[0]`).
fn names_path(field: Option<&str>, path: &str) -> bool {
    field.is_some_and(|f| f == path || f.starts_with(&format!("{path}[")))
}

/// A TOML inline value. JSON string literals are valid TOML basic strings
/// (same escapes, `\uXXXX` included), so strings are written as JSON.
fn toml_value(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{} = {}", Value::from(k.as_str()), toml_value(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(toml_value).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Null => unreachable!("TOML has no null; generated specs have none"),
        other => other.to_string(),
    }
}

/// Schedules as a TOML file: one `[[schedule]]` table each, the job as a
/// sub-table or inline.
fn to_toml(schedules: &[Value], job_as_table: bool) -> String {
    let mut out = String::from("# generated\n");
    for s in schedules {
        out.push_str("\n[[schedule]]\n");
        let m = s.as_object().unwrap();
        for (k, v) in m {
            if k == "job" && job_as_table {
                continue;
            }
            out.push_str(&format!(
                "{} = {}\n",
                Value::from(k.as_str()),
                toml_value(v)
            ));
        }
        if job_as_table && let Some(Value::Object(job)) = m.get("job") {
            out.push_str("\n[schedule.job]\n");
            for (k, v) in job {
                out.push_str(&format!(
                    "{} = {}\n",
                    Value::from(k.as_str()),
                    toml_value(v)
                ));
            }
        }
    }
    out
}

/// Schedules as a JSON file, in one of its three shapes.
fn to_json(schedules: &[Value], shape: u8) -> String {
    match (shape, schedules) {
        (0, [one]) => one.to_string(),
        (1, _) => json!({ "schedules": schedules }).to_string(),
        _ => Value::Array(schedules.to_vec()).to_string(),
    }
}

/// 1–3 valid schedules with distinct names.
fn schedules() -> impl Strategy<Value = Vec<Value>> {
    prop::collection::vec("[a-z][a-z0-9-]{0,12}", 1..=3).prop_flat_map(|names| {
        names
            .into_iter()
            .enumerate()
            .map(|(i, n)| schedule(format!("{n}-{i}")))
            .collect::<Vec<_>>()
    })
}

fn all_errors(
    r: Result<Vec<reeve_schedule::Loaded>, ApplyErrors>,
) -> Vec<reeve_schedule::ApplyError> {
    match r {
        Ok(loaded) => panic!("expected errors, loaded {} schedules", loaded.len()),
        Err(ApplyErrors(e)) => e,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Valid schedules load from TOML and JSON to the same validated
    /// schedules, which validate again from their own spec.
    #[test]
    fn valid_files_load_identically_from_toml_and_json(
        list in schedules(),
        job_as_table in any::<bool>(),
        shape in 0u8..3,
    ) {
        let toml_text = to_toml(&list, job_as_table);
        let json_text = to_json(&list, shape);
        let from_toml = parse_file("s.toml", &toml_text, Format::Toml);
        prop_assert!(from_toml.is_ok(), "{}\n{}", toml_text, from_toml.unwrap_err());
        let from_json = parse_file("s.json", &json_text, Format::Json);
        prop_assert!(from_json.is_ok(), "{}\n{}", json_text, from_json.unwrap_err());
        let (from_toml, from_json) = (from_toml.unwrap(), from_json.unwrap());
        prop_assert_eq!(from_toml.len(), list.len());
        for ((t, j), written) in from_toml.iter().zip(&from_json).zip(&list) {
            prop_assert_eq!(&t.schedule, &j.schedule);
            prop_assert_eq!(&t.schedule.name, written["name"].as_str().unwrap());
            let direct: reeve_schedule::ScheduleSpec = serde_json::from_value(written.clone()).unwrap();
            let direct = direct.validate();
            prop_assert_eq!(direct.as_ref(), Ok(&t.schedule));
            let again = t.schedule.to_spec().validate();
            prop_assert_eq!(again.as_ref(), Ok(&t.schedule));
        }
    }

    /// One broken field is refused with its path and the file's name, in
    /// both formats.
    #[test]
    fn a_broken_field_is_refused_naming_its_path(
        list in schedules(),
        victim in any::<prop::sample::Index>(),
        (path, value) in breakage(),
        job_as_table in any::<bool>(),
    ) {
        let mut list = list;
        let i = victim.index(list.len());
        list[i] = broken(list[i].clone(), path, value);
        for (file, text, format) in [
            ("bad.toml", to_toml(&list, job_as_table), Format::Toml),
            ("bad.json", to_json(&list, 2), Format::Json),
        ] {
            let errors = all_errors(parse_file(file, &text, format));
            prop_assert_eq!(errors.len(), 1, "{}: {:?}", text, errors);
            let e = &errors[0];
            prop_assert_eq!(&e.file, file);
            prop_assert!(names_path(e.field.as_deref(), path), "{} wanted, got {}\n{}", path, e, text);
            prop_assert!(!e.message.is_empty());
        }
    }

    /// All-or-nothing: with one bad file among good ones nothing loads, and
    /// only the bad file is blamed.
    #[test]
    fn a_batch_with_one_bad_file_loads_nothing(
        files in prop::collection::vec((schedules(), any::<bool>()), 2..=4),
        bad in any::<prop::sample::Index>(),
        (path, value) in breakage(),
    ) {
        let bad = bad.index(files.len());
        let mut batch = Vec::new();
        for (n, (list, as_toml)) in files.iter().enumerate() {
            // Names unique across files, as load_all requires.
            let mut list: Vec<Value> = list
                .iter()
                .map(|s| {
                    let mut s = s.clone();
                    let name = format!("f{n}-{}", s["name"].as_str().unwrap());
                    s["name"] = json!(name);
                    s
                })
                .collect();
            if n == bad {
                list[0] = broken(list[0].clone(), path, value.clone());
            }
            let (file, text) = if *as_toml {
                (format!("f{n}.toml"), to_toml(&list, n % 2 == 0))
            } else {
                (format!("f{n}.json"), to_json(&list, 1))
            };
            batch.push((file, text));
        }
        let errors = all_errors(load_all(&batch));
        prop_assert!(!errors.is_empty());
        for e in &errors {
            prop_assert_eq!(&e.file, &batch[bad].0, "{}", e);
        }
        // Without the bad file the rest loads.
        let good: Vec<_> = batch.iter().enumerate().filter(|(n, _)| *n != bad).map(|(_, f)| f.clone()).collect();
        let loaded = load_all(&good);
        prop_assert!(loaded.is_ok(), "{}", loaded.unwrap_err());
    }

    /// Arbitrary text never panics either parser; every error names the
    /// file and says something.
    #[test]
    fn arbitrary_text_never_panics_and_errors_name_the_file(
        text in prop_oneof![
            2 => "(\\[\\[schedule\\]\\]\n)?((name|cron|every|job|kind|jitter|timezone) = (\"[ -~]{0,12}\"|[0-9]{1,4}|\\{ ?kind = \"[a-z ]{0,4}\" ?\\})\n){0,5}",
            1 => "[\\[\\]{}\",: a-z0-9]{0,60}",
            1 => any::<String>(),
        ],
    ) {
        for (file, format) in [("x.toml", Format::Toml), ("x.json", Format::Json)] {
            match parse_file(file, &text, format) {
                Ok(loaded) => {
                    for l in loaded {
                        let again = l.schedule.to_spec().validate();
                        prop_assert_eq!(again.as_ref(), Ok(&l.schedule));
                    }
                }
                Err(ApplyErrors(errors)) => {
                    prop_assert!(!errors.is_empty());
                    for e in errors {
                        prop_assert_eq!(&e.file, file);
                        prop_assert!(!e.message.is_empty(), "{:?}", e);
                    }
                }
            }
        }
    }
}

#[test]
fn the_same_name_in_two_files_is_refused_and_nothing_loads() {
    let one = r#"{"name": "dup", "every": "1h", "job": {"kind": "k"}}"#;
    let other = "name = \"dup\"\ncron = \"@daily\"\njob = { kind = \"k\" }\n";
    let errors = all_errors(load_all(&[("a.json", one), ("b.toml", other)]));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].file, "b.toml");
    assert_eq!(errors[0].field.as_deref(), Some("name"));
    assert!(errors[0].message.contains("a.json"), "{}", errors[0]);
}
