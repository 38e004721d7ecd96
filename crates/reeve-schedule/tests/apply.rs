//! Schedule files as `reeve apply` reads them: shapes, the seed fixture, and
//! error reports that name the file, the schedule and the field.

use std::time::Duration;

use reeve_schedule::apply::{ApplyError, Format, load_all, parse_file};
use reeve_schedule::{Change, MisfirePolicy, OverlapPolicy, ScheduleStatus, diff};

fn errors(path: &str, text: &str, format: Format) -> Vec<ApplyError> {
    parse_file(path, text, format).unwrap_err().0
}

const MANY_TOML: &str = r#"
[[schedule]]
name = "nightly-review"
cron = "30 2 * * *"
timezone = "Europe/Berlin"
overlap = "queue_one"
misfire = { policy = "catch_up", max = 3 }
description = "review yesterday's merges"

[schedule.job]
kind = "review"
queue = "agents"
max_turns = 40
max_run_duration = "45m"
payload = { repo = "reeve", depth = 2 }

[[schedule]]
name = "heartbeat"
every = 3600
jitter = "5m"
status = "paused"
job = { kind = "heartbeat" }
"#;

#[test]
fn toml_many_schedules() {
    let loaded = parse_file("s.toml", MANY_TOML, Format::Toml).unwrap();
    assert_eq!(loaded.len(), 2);
    let review = &loaded[0].schedule;
    assert_eq!(review.name, "nightly-review");
    assert_eq!(review.rule.describe(), "at 02:30 every day, Europe/Berlin");
    assert_eq!(review.overlap, OverlapPolicy::QueueOne);
    assert_eq!(review.misfire, MisfirePolicy::CatchUp { max: 3 });
    assert_eq!(review.job.queue, "agents");
    assert_eq!(review.job.max_turns, Some(40));
    assert_eq!(
        review.job.max_run_duration,
        Some(Duration::from_secs(45 * 60))
    );
    assert_eq!(review.job.payload["depth"], 2);
    assert_eq!(loaded[0].line, Some(2));
    let hb = &loaded[1].schedule;
    assert_eq!(hb.rule.interval(), Some(Duration::from_secs(3600)));
    assert_eq!(hb.rule.jitter(), Some(Duration::from_secs(300)));
    assert_eq!(hb.status, Some(ScheduleStatus::Paused));
}

#[test]
fn toml_single_top_level_schedule() {
    let text = r#"
name = "digest"
cron = "@daily"
misfire = "catch_up"

[job]
kind = "digest"
"#;
    let loaded = parse_file("digest.toml", text, Format::Toml).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(
        loaded[0].schedule.misfire,
        MisfirePolicy::CatchUp { max: 10 }
    );
    assert!(
        parse_file("empty.toml", "# nothing yet\n", Format::Toml)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn json_one_array_and_wrapped() {
    let one = r#"{"name": "a", "cron": "0 * * * *", "job": {"kind": "k"}}"#;
    let array = r#"[{"name": "a", "cron": "0 * * * *", "job": {"kind": "k"}},
                    {"name": "b", "every": "90s", "job": {"kind": "k"}}]"#;
    let wrapped = r#"{"schedules": [{"name": "a", "cron": "0 * * * *", "job": {"kind": "k"}}]}"#;
    assert_eq!(parse_file("1.json", one, Format::Json).unwrap().len(), 1);
    assert_eq!(parse_file("2.json", array, Format::Json).unwrap().len(), 2);
    assert_eq!(
        parse_file("3.json", wrapped, Format::Json).unwrap().len(),
        1
    );
}

#[test]
fn the_seed_fixture_parses() {
    // A named recurring job every 3600 seconds, as the fixture gives it.
    for every in ["\"3600s\"", "3600"] {
        let text = format!(
            r#"{{
  "name": "aibtc-heartbeat",
  "every": {every},
  "job": {{
    "kind": "heartbeat",
    "payload": {{"task": "aibtc-heartbeat", "note": "backstop for the inbox-status liveness path"}}
  }}
}}"#
        );
        let loaded = parse_file(
            "fixtures/aibtc-heartbeat.schedule.json",
            &text,
            Format::Json,
        )
        .unwrap();
        let s = &loaded[0].schedule;
        assert_eq!(s.name, "aibtc-heartbeat");
        assert_eq!(s.rule.interval(), Some(Duration::from_secs(3600)));
        assert_eq!(s.rule.describe(), "every 1h");
        assert_eq!(s.job.kind, "heartbeat");
    }
    // The same in TOML, with the integer form.
    let text = "name = \"aibtc-heartbeat\"\nevery = 3600\n[job]\nkind = \"heartbeat\"\n";
    assert_eq!(parse_file("hb.toml", text, Format::Toml).unwrap().len(), 1);
}

#[test]
fn unknown_field_names_file_schedule_and_field() {
    let text = r#"
[[schedule]]
name = "ok"
cron = "0 * * * *"
job = { kind = "k" }

[[schedule]]
name = "nightly"
cron = "0 3 * * *"

[schedule.job]
kind = "k"
prio = 5
"#;
    let errs = errors("sched/a.toml", text, Format::Toml);
    assert_eq!(errs.len(), 1);
    let e = &errs[0];
    assert_eq!(e.schedule.as_deref(), Some("nightly"));
    assert_eq!(e.field.as_deref(), Some("job.prio"));
    assert_eq!(e.line, Some(13));
    let shown = e.to_string();
    assert!(
        shown.starts_with("sched/a.toml:13: schedule nightly: job.prio: unknown field `prio`"),
        "{shown}"
    );

    let json = r#"{"name": "nightly", "cron": "0 3 * * *", "crn": "x", "job": {"kind": "k"}}"#;
    let e = &errors("b.json", json, Format::Json)[0];
    assert_eq!(
        e.to_string().split(": unknown").next(),
        Some("b.json: schedule nightly: crn")
    );

    let json = r#"{"name": "nightly", "cron": "0 3 * * *", "job": {"kind": "k", "delay": "5s"}}"#;
    let e = &errors("b.json", json, Format::Json)[0];
    assert_eq!(e.field.as_deref(), Some("job.delay"));
}

#[test]
fn invalid_rules_name_the_field() {
    let text = "name = \"n\"\ncron = \"0 25 * * *\"\njob = { kind = \"k\" }\n";
    let e = &errors("c.toml", text, Format::Toml)[0];
    assert_eq!(e.field.as_deref(), Some("cron"));
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("\"25\""), "{e}");
    assert!(
        e.to_string().starts_with("c.toml:2: schedule n: cron: "),
        "{e}"
    );

    let json =
        r#"{"name": "n", "cron": "0 9 * * *", "timezone": "Europe/Berln", "job": {"kind": "k"}}"#;
    let e = &errors("d.json", json, Format::Json)[0];
    assert_eq!(e.field.as_deref(), Some("timezone"));
    assert!(e.message.contains("Europe/Berln"));

    let json = r#"{"name": "n", "every": "1h", "job": {}}"#;
    let e = &errors("d.json", json, Format::Json)[0];
    assert_eq!(e.field.as_deref(), Some("job.kind"), "{e}");

    let json = r#"{"name": "n", "every": 1.5, "job": {"kind": "k"}}"#;
    let e = &errors("d.json", json, Format::Json)[0];
    assert_eq!(e.field.as_deref(), Some("every"), "{e}");
}

#[test]
fn every_error_of_a_file_is_reported() {
    let json = r#"[
        {"name": "a", "cron": "61 * * * *", "job": {"kind": "k"}},
        {"name": "b", "every": "1h", "job": {"kind": "k"}},
        {"cron": "0 * * * *", "job": {"kind": "k"}},
        {"name": "d", "every": "1h", "misfire": "sometimes", "job": {"kind": "k"}}
    ]"#;
    let errs = errors("e.json", json, Format::Json);
    let labels: Vec<_> = errs.iter().map(|e| e.schedule.clone().unwrap()).collect();
    assert_eq!(labels, ["a", "#3", "d"]);
    assert_eq!(errs[1].field.as_deref(), Some("name"));
    assert_eq!(errs[2].field.as_deref(), Some("misfire"));
}

#[test]
fn syntax_errors_carry_lines() {
    let e = &errors("f.toml", "name = \"a\"\ncron = \n", Format::Toml)[0];
    assert_eq!(e.line, Some(2), "{e}");
    let e = &errors("g.json", "{\n  \"name\": \"a\",\n  oops\n}", Format::Json)[0];
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.to_string().starts_with("g.json:3: "), "{e}");
}

#[test]
fn stray_top_level_keys_are_rejected() {
    let text = "version = 2\n[[schedule]]\nname = \"a\"\nevery = \"1h\"\njob = { kind = \"k\" }\n";
    let e = &errors("h.toml", text, Format::Toml)[0];
    assert_eq!(e.field.as_deref(), Some("version"));
    assert_eq!(e.line, Some(1));
    let json = r#"{"version": 2, "schedules": []}"#;
    assert_eq!(
        errors("h.json", json, Format::Json)[0].field.as_deref(),
        Some("version")
    );
}

#[test]
fn load_all_is_all_or_nothing_and_rejects_duplicates() {
    let good = (
        "a.toml",
        "name = \"a\"\nevery = \"1h\"\njob = { kind = \"k\" }\n",
    );
    let other = (
        "b.json",
        r#"{"name": "b", "cron": "@hourly", "job": {"kind": "k"}}"#,
    );
    let loaded = load_all(&[good, other]).unwrap();
    assert_eq!(loaded.len(), 2);

    // One bad file: nothing comes back, and every file's errors do.
    let bad = (
        "c.json",
        r#"{"name": "c", "cron": "* * *", "job": {"kind": "k"}}"#,
    );
    let worse = ("d.toml", "name = \"d\"\n");
    let errs = load_all(&[good, bad, worse, other]).unwrap_err();
    assert_eq!(errs.0.len(), 2, "{errs}");
    assert!(
        errs.0[0]
            .to_string()
            .starts_with("c.json: schedule c: cron:"),
        "{errs}"
    );
    assert!(errs.0[1].to_string().contains("d.toml"), "{errs}");
    assert!(errs.0[1].to_string().contains("job"), "{errs}");

    // The same name in two files.
    let dup = (
        "x/e.json",
        r#"{"name": "a", "every": "2h", "job": {"kind": "k"}}"#,
    );
    let errs = load_all(&[good, dup]).unwrap_err();
    assert_eq!(errs.0.len(), 1);
    let shown = errs.0[0].to_string();
    assert!(
        shown.starts_with("x/e.json: schedule a: name: duplicate"),
        "{shown}"
    );
    assert!(shown.contains("a.toml:1"), "{shown}");

    // Files of another type are refused.
    let errs = load_all(&[("notes.yaml", "")]).unwrap_err();
    assert!(errs.to_string().contains("notes.yaml"));
}

#[test]
fn reapplying_the_same_file_changes_nothing_and_cadence_edits_are_cadence_only() {
    let first = parse_file("s.toml", MANY_TOML, Format::Toml).unwrap();
    let second = parse_file("s.toml", MANY_TOML, Format::Toml).unwrap();
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(diff(&a.schedule, &b.schedule), Change::Unchanged);
    }
    let edited = MANY_TOML.replace("cron = \"30 2 * * *\"", "cron = \"45 2 * * *\"");
    let edited = parse_file("s.toml", &edited, Format::Toml).unwrap();
    assert_eq!(
        diff(&first[0].schedule, &edited[0].schedule),
        Change::Changed {
            fields: vec!["cron"],
            cadence_only: true
        }
    );
}
