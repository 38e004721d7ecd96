//! Black-box tests of schedules: `reeve apply` (idempotent, all-or-nothing,
//! errors naming file, schedule and field), firing at the due instant, and
//! pause / resume / delete through the CLI.

mod common;

use std::time::Duration;

use common::{Daemon, cli, wait_until};
use serde_json::Value;

#[test]
fn apply_is_idempotent_all_or_nothing_and_schedules_fire() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        "a",
        &dir.path().join("reeve.db"),
        "[executor]\nslots = 2\n",
    );
    let files = dir.path().join("schedules");
    std::fs::create_dir(&files).unwrap();
    // The shape of a recurring-job fixture: a named job every 3600 seconds.
    std::fs::write(
        files.join("heartbeat.json"),
        r#"{"name": "agent-heartbeat", "every": 3600, "job": {"kind": "heartbeat", "command": ["true"], "payload": {"agent": "a1"}}}"#,
    )
    .unwrap();
    std::fs::write(
        files.join("tick.toml"),
        "[[schedule]]\nname = \"tick\"\nevery = \"1s\"\n[schedule.job]\nkind = \"tick\"\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let dir_arg = files.to_str().unwrap();
    let (code, out, err) = cli(&d.url, &["apply", "-f", dir_arg]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("created    agent-heartbeat") && out.contains("created    tick"),
        "{out}"
    );
    let (code, out, _) = cli(&d.url, &["apply", "-f", dir_arg]);
    assert_eq!(code, 0);
    assert!(
        out.contains("unchanged  agent-heartbeat") && out.contains("unchanged  tick"),
        "a second apply changes nothing: {out}"
    );

    // The every-second schedule fires at each due instant, one job per second.
    wait_until("three firings", Duration::from_secs(20), || {
        let (_, body) = d.api("GET", "/v1/jobs?kind=tick&limit=100", None);
        body["items"].as_array().map_or(0, Vec::len) >= 3
    });
    let (_, body) = d.api("GET", "/v1/jobs?kind=tick&limit=100", None);
    let mut keys: Vec<String> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["idempotency_key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        body["items"].as_array().unwrap().len(),
        "one job per fire time"
    );
    assert!(keys.iter().all(|k| k.starts_with("tick@")));

    // A bad file anywhere: nothing at all is applied, and the error names
    // the file, the schedule and the field.
    std::fs::write(
        files.join("bad.toml"),
        "[[schedule]]\nname = \"broken\"\ncron = \"61 * * * *\"\n[schedule.job]\nkind = \"x\"\n",
    )
    .unwrap();
    std::fs::write(files.join("heartbeat.json"), r#"{"name": "agent-heartbeat", "every": 1800, "job": {"kind": "heartbeat", "command": ["true"]}}"#).unwrap();
    let (code, _, err) = cli(&d.url, &["apply", "-f", dir_arg]);
    assert_ne!(code, 0);
    assert!(
        err.contains("bad.toml") && err.contains("broken") && err.contains("cron"),
        "{err}"
    );
    let (_, show) = d.api("GET", "/v1/schedules/agent-heartbeat", None);
    assert_eq!(
        show["schedule"]["spec"]["every"], 3600,
        "unchanged by the refused apply: {show}"
    );
    std::fs::remove_file(files.join("bad.toml")).unwrap();
    let (code, out, _) = cli(&d.url, &["apply", "-f", dir_arg, "--dry-run"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("changed    agent-heartbeat (every, job.payload)"),
        "{out}"
    );

    // Pause, resume, delete.
    assert_eq!(cli(&d.url, &["schedules", "pause", "tick"]).0, 0);
    let (_, out, _) = cli(&d.url, &["schedules", "list", "--json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    let tick = list["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "tick")
        .unwrap()
        .clone();
    assert_eq!(tick["status"], "paused");
    assert_eq!(cli(&d.url, &["schedules", "resume", "tick"]).0, 0);
    let (code, out, _) = cli(&d.url, &["schedules", "show", "tick"]);
    assert_eq!(code, 0);
    assert!(out.contains("every 1s") && out.contains("fired"), "{out}");
    assert_eq!(cli(&d.url, &["schedules", "delete", "tick"]).0, 0);
    let (code, _, err) = cli(&d.url, &["schedules", "show", "tick"]);
    assert_ne!(code, 0);
    assert!(err.contains("tick"), "{err}");
    d.stop();
}
